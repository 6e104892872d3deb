//! Cutting the ELF `vmlinux` out of an LZ4-compressed bzImage.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::elf::{self, ElfError};

/// The LZ4 legacy frame magic (0x184c2102, little endian).
pub const LZ4_LEGACY_MAGIC: [u8; 4] = [0x02, 0x21, 0x4c, 0x18];

/// Errors extracting a vmlinux.
#[derive(Debug, thiserror::Error)]
pub enum VmlinuxError {
    /// Reading the bzImage or writing the output failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// No LZ4 legacy payload found.
    #[error("{0}: no LZ4 legacy payload (magic 02 21 4c 18) in the bzImage")]
    NoPayload(PathBuf),
    /// `lz4 -dc` produced no usable ELF from any candidate offset.
    #[error("{path}: lz4 -dc gave no ELF with a PVH note (last problem: {detail})")]
    NotElf {
        /// The bzImage.
        path: PathBuf,
        /// What was wrong with the last attempt.
        detail: String,
    },
    /// The extracted ELF is malformed.
    #[error("{path}: {source}")]
    Elf {
        /// The output.
        path: PathBuf,
        /// The cause.
        source: ElfError,
    },
}

/// The compressed payload as the setup header describes it: `(start, len)`, without the
/// 4-byte decompressed size that the kernel build appends to it.
pub fn header_payload(bz: &[u8]) -> Option<(usize, usize)> {
    let le32 = |off: usize| -> Option<u32> {
        bz.get(off..off + 4)?
            .try_into()
            .ok()
            .map(u32::from_le_bytes)
    };
    if bz.get(0x202..0x206)? != b"HdrS" {
        return None;
    }
    let setup_sects = match *bz.get(0x1f1)? {
        0 => 4,
        n => usize::from(n),
    };
    let setup = setup_sects.checked_add(1)?.checked_mul(512)?;
    let start = setup.checked_add(usize::try_from(le32(0x248)?).ok()?)?;
    let len = usize::try_from(le32(0x24c)?).ok()?.checked_sub(4)?;
    let payload = bz.get(start..start.checked_add(len)?)?;
    (payload.get(..4)? == LZ4_LEGACY_MAGIC).then_some((start, len))
}

/// Every offset where the LZ4 legacy magic occurs.
pub fn magic_offsets(bz: &[u8]) -> Vec<usize> {
    bz.windows(4)
        .enumerate()
        .filter(|(_, w)| *w == LZ4_LEGACY_MAGIC)
        .map(|(i, _)| i)
        .collect()
}

/// Extracts `bzimage`'s kernel to `out` (via `lz4 -dc`) and checks it is an ELF with a PVH
/// note. Tries the payload named by the setup header first, then each magic occurrence.
pub fn extract(bzimage: &Path, out: &Path) -> Result<(), VmlinuxError> {
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| VmlinuxError::Io { path, source }
    };
    let bz = std::fs::read(bzimage).map_err(io(bzimage))?;
    let mut candidates: Vec<(usize, usize)> = header_payload(&bz).into_iter().collect();
    candidates.extend(magic_offsets(&bz).into_iter().map(|o| (o, bz.len() - o)));
    if candidates.is_empty() {
        return Err(VmlinuxError::NoPayload(bzimage.to_path_buf()));
    }
    let tmp = out.with_extension("lz4.tmp");
    let mut detail = String::new();
    for (start, len) in candidates {
        let Some(payload) = bz.get(start..start.saturating_add(len)) else {
            continue;
        };
        std::fs::write(&tmp, payload).map_err(io(&tmp))?;
        let file = std::fs::File::create(out).map_err(io(out))?;
        let status = Command::new("lz4")
            .arg("-dc")
            .arg(&tmp)
            .stdout(file)
            .stderr(Stdio::null())
            .status()
            .map_err(io(Path::new("lz4")))?;
        // A magic-search candidate runs into trailing bytes, so lz4 may exit non-zero after
        // writing the whole kernel: the ELF checks below decide.
        match check(out) {
            Ok(()) => {
                let _ = std::fs::remove_file(&tmp);
                return Ok(());
            }
            Err(e) => detail = format!("offset {start:#x}: {e} (lz4 {status})"),
        }
    }
    let _ = std::fs::remove_file(&tmp);
    let _ = std::fs::remove_file(out);
    Err(VmlinuxError::NotElf {
        path: bzimage.to_path_buf(),
        detail,
    })
}

/// Checks that `path` is an ELF64 file with a PVH (Xen PHYS32_ENTRY) note.
pub fn check(path: &Path) -> Result<(), VmlinuxError> {
    let data = std::fs::read(path).map_err(|source| VmlinuxError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let elf_err = |source| VmlinuxError::Elf {
        path: path.to_path_buf(),
        source,
    };
    if elf::has_pvh_note(&data).map_err(elf_err)? {
        Ok(())
    } else {
        Err(VmlinuxError::NotElf {
            path: path.to_path_buf(),
            detail: "ELF without a PVH note".into(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fake_bz(setup_sects: u8, payload_off: u32, payload: &[u8]) -> Vec<u8> {
        let setup = (usize::from(setup_sects) + 1) * 512;
        let mut bz = vec![0u8; setup + payload_off as usize];
        bz[0x1f1] = setup_sects;
        bz[0x202..0x206].copy_from_slice(b"HdrS");
        bz[0x248..0x24c].copy_from_slice(&payload_off.to_le_bytes());
        bz[0x24c..0x250].copy_from_slice(&(payload.len() as u32 + 4).to_le_bytes());
        bz.extend_from_slice(payload);
        bz.extend_from_slice(&[9, 9, 9, 9]);
        bz
    }

    #[test]
    fn payload_from_setup_header() {
        let mut payload = LZ4_LEGACY_MAGIC.to_vec();
        payload.extend_from_slice(b"data");
        let bz = fake_bz(3, 100, &payload);
        let (start, len) = header_payload(&bz).unwrap();
        assert_eq!((start, len), (4 * 512 + 100, 8));
        assert_eq!(magic_offsets(&bz), vec![start]);
    }

    #[test]
    fn bad_headers_give_none() {
        assert_eq!(header_payload(b"short"), None);
        let mut bz = fake_bz(3, 100, b"nomagic!");
        assert_eq!(header_payload(&bz), None);
        bz[0x24c..0x250].copy_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(header_payload(&bz), None);
        bz[0x24c..0x250].copy_from_slice(&2u32.to_le_bytes());
        assert_eq!(header_payload(&bz), None);
    }

    #[test]
    fn extract_without_payload_fails_cleanly() {
        let dir = std::env::temp_dir().join(format!("testbed-vmlinux-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let bz = dir.join("bz");
        std::fs::write(&bz, fake_bz(1, 0, b"xxxxxxxx")).unwrap();
        let err = extract(&bz, &dir.join("vmlinux")).unwrap_err();
        assert!(matches!(err, VmlinuxError::NoPayload(_)), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
