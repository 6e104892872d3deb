//! The kernel command line at [`CMDLINE_START`], NUL-terminated.

use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryError};

use crate::layout::{CMDLINE_MAX_SIZE, CMDLINE_START};

/// Why the command line could not be written.
#[derive(Debug, thiserror::Error)]
pub enum CmdlineError {
    /// Longer than the kernel or the memory map allows (`max` excludes the NUL).
    #[error("the command line is {len} bytes long, the limit is {max}")]
    TooLong {
        /// Command line length.
        len: usize,
        /// Longest accepted length, without the terminating NUL.
        max: usize,
    },
    /// A NUL byte would end the command line early.
    #[error("the command line contains a NUL byte at offset {offset}")]
    ContainsNul {
        /// Offset of the first NUL.
        offset: usize,
    },
    /// Guest memory write failed.
    #[error("cannot write the command line at {CMDLINE_START:#x}: {0}")]
    Write(#[source] GuestMemoryError),
}

/// Longest command line (without NUL) for a kernel whose setup header says `kernel_max`
/// (`cmdline_size`; 0 when unknown).
pub fn max_len(kernel_max: u32) -> usize {
    let ours = CMDLINE_MAX_SIZE - 1;
    match usize::try_from(kernel_max) {
        Ok(k) if k > 0 => k.min(ours),
        _ => ours,
    }
}

/// Writes `cmdline` and its NUL at [`CMDLINE_START`]; returns the length written with the NUL.
pub fn write_cmdline<M: GuestMemoryBackend>(
    mem: &M,
    cmdline: &str,
    max: usize,
) -> Result<usize, CmdlineError> {
    let bytes = cmdline.as_bytes();
    if let Some(offset) = bytes.iter().position(|&b| b == 0) {
        return Err(CmdlineError::ContainsNul { offset });
    }
    if bytes.len() > max {
        return Err(CmdlineError::TooLong {
            len: bytes.len(),
            max,
        });
    }
    let mut buf = Vec::with_capacity(bytes.len() + 1);
    buf.extend_from_slice(bytes);
    buf.push(0);
    mem.write_slice(&buf, GuestAddress(CMDLINE_START))
        .map_err(CmdlineError::Write)?;
    Ok(buf.len())
}
