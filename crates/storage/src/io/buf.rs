//! The data of one request: a buffer the request owns, or memory the caller keeps mapped for
//! it (a guest's RAM), described by iovecs, so the kernel reads and writes guest buffers
//! directly instead of through a copy.

use std::io;

use super::aligned::AlignedBuf;

/// Memory outside the request, as iovecs.
pub struct ExternalIov {
    iov: Vec<libc::iovec>,
    len: usize,
}

// SAFETY: the iovecs point into memory that the creator of the ExternalIov promised (see
// `ExternalIov::new`) stays mapped until the request completes; nothing here dereferences them
// except through that promise, so moving the description to another thread is sound.
unsafe impl Send for ExternalIov {}

impl ExternalIov {
    /// Describes `parts` (pointer, length) as one request's data, in order.
    ///
    /// # Safety
    /// Every part must stay mapped, readable and writable for its whole length until the
    /// request's completion is returned (or the value is dropped unused). Other writers may
    /// change its bytes meanwhile (a guest can): only the data of the request is affected.
    pub unsafe fn new(parts: &[(*mut u8, usize)]) -> Self {
        let iov = parts
            .iter()
            .map(|&(p, n)| libc::iovec {
                iov_base: p.cast(),
                iov_len: n,
            })
            .collect();
        ExternalIov {
            iov,
            len: parts.iter().map(|&(_, n)| n).sum(),
        }
    }

    /// Total length.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True if it describes no bytes.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The iovecs (for preadv/pwritev and io_uring).
    pub fn iovecs(&self) -> &[libc::iovec] {
        &self.iov
    }

    /// True if every part starts at a multiple of `align` and has a length that is one.
    pub fn aligned(&self, align: u64) -> bool {
        let a = align.max(1) as usize;
        self.iov
            .iter()
            .all(|v| (v.iov_base as usize).is_multiple_of(a) && v.iov_len.is_multiple_of(a))
    }

    /// Copies all of its bytes, in order, into `out` (at most `out.len()`).
    pub fn gather(&self, out: &mut [u8]) {
        let mut at = 0;
        for v in &self.iov {
            let n = v.iov_len.min(out.len() - at);
            // SAFETY: the part is mapped and readable for iov_len bytes (`new`'s contract);
            // `out[at..at + n]` is in bounds; the two cannot overlap (out is owned memory).
            unsafe {
                std::ptr::copy_nonoverlapping(v.iov_base.cast::<u8>(), out[at..].as_mut_ptr(), n)
            };
            at += n;
        }
    }

    /// Copies `data`, in order, into its parts.
    pub fn scatter(&self, data: &[u8]) {
        let mut at = 0;
        for v in &self.iov {
            let n = v.iov_len.min(data.len() - at);
            // SAFETY: as in `gather`, with the part as the destination.
            unsafe {
                std::ptr::copy_nonoverlapping(data[at..].as_ptr(), v.iov_base.cast::<u8>(), n)
            };
            at += n;
        }
    }

    /// Zeroes its bytes from `from` on (a read that ended at the end of the file).
    pub fn zero_from(&self, from: usize) {
        let mut at = 0;
        for v in &self.iov {
            let end = at + v.iov_len;
            if end > from {
                let skip = from.saturating_sub(at);
                // SAFETY: `skip < iov_len`, so the range is inside the part, which is mapped
                // and writable (`new`'s contract).
                unsafe {
                    std::ptr::write_bytes(v.iov_base.cast::<u8>().add(skip), 0, v.iov_len - skip)
                };
            }
            at = end;
        }
    }
}

/// The data of a request.
pub enum IoBuf {
    /// A buffer the request owns (aligned, so O_DIRECT can use it).
    Owned(AlignedBuf),
    /// Memory the caller keeps mapped (see [`ExternalIov::new`]).
    External(ExternalIov),
}

impl From<AlignedBuf> for IoBuf {
    fn from(b: AlignedBuf) -> Self {
        IoBuf::Owned(b)
    }
}

impl IoBuf {
    /// The request's length in bytes.
    pub fn len(&self) -> usize {
        match self {
            IoBuf::Owned(b) => b.as_slice().len(),
            IoBuf::External(e) => e.len(),
        }
    }

    /// True for a zero-length request.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The owned buffer's bytes (`None` for external memory).
    pub fn owned(&self) -> Option<&[u8]> {
        match self {
            IoBuf::Owned(b) => Some(b.as_slice()),
            IoBuf::External(_) => None,
        }
    }
}

/// Performs one read or write of `iov` at `offset` of `fd` with preadv/pwritev, to the end:
/// a read past the end of the file zero-fills the rest.
pub fn perform_iov(write: bool, fd: i32, offset: u64, iov: &ExternalIov) -> io::Result<usize> {
    let mut done = 0usize;
    let total = iov.len();
    while done < total {
        // Skip what is done: rebuild the iovec list from the first unfinished byte.
        let mut rest = Vec::with_capacity(iov.iovecs().len());
        let mut skip = done;
        for v in iov.iovecs() {
            if skip >= v.iov_len {
                skip -= v.iov_len;
                continue;
            }
            rest.push(libc::iovec {
                // SAFETY: skip < iov_len: the pointer stays inside the part.
                iov_base: unsafe { v.iov_base.cast::<u8>().add(skip).cast() },
                iov_len: v.iov_len - skip,
            });
            skip = 0;
        }
        let count = rest.len().min(libc::UIO_MAXIOV as usize) as i32;
        let off = i64::try_from(offset + done as u64)
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "offset"))?;
        // SAFETY: the iovecs describe mapped memory (ExternalIov's contract); `count` is at
        // most their number; the fd is the caller's open descriptor.
        let rc = unsafe {
            if write {
                libc::pwritev(fd, rest.as_ptr(), count, off)
            } else {
                libc::preadv(fd, rest.as_ptr(), count, off)
            }
        };
        if rc < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        if rc == 0 {
            if !write {
                iov.zero_from(done);
                return Ok(total);
            }
            return Err(io::Error::new(io::ErrorKind::WriteZero, "short write"));
        }
        done += rc as usize;
    }
    Ok(done)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsRawFd;

    fn parts(bufs: &mut [Vec<u8>]) -> ExternalIov {
        let p: Vec<(*mut u8, usize)> = bufs.iter_mut().map(|b| (b.as_mut_ptr(), b.len())).collect();
        // SAFETY: the vectors outlive the ExternalIov in every test.
        unsafe { ExternalIov::new(&p) }
    }

    #[test]
    fn gather_scatter_zero_and_alignment() {
        let mut bufs = vec![vec![1u8; 3], vec![2u8; 5], vec![3u8; 4]];
        let iov = parts(&mut bufs);
        assert_eq!(iov.len(), 12);
        let mut out = [0u8; 12];
        iov.gather(&mut out);
        assert_eq!(out, [1, 1, 1, 2, 2, 2, 2, 2, 3, 3, 3, 3]);
        iov.scatter(&[9u8; 12]);
        iov.zero_from(6);
        drop(iov);
        assert_eq!(bufs[0], [9, 9, 9]);
        assert_eq!(bufs[1], [9, 9, 9, 0, 0]);
        assert_eq!(bufs[2], [0, 0, 0, 0]);
        let iov = parts(&mut bufs);
        assert!(iov.aligned(1));
        assert!(!iov.aligned(512));
    }

    #[test]
    fn preadv_pwritev_round_trip_and_read_past_end() {
        let f = tempfile_in_tmp();
        let mut src = vec![vec![0xabu8; 4096], vec![0xcdu8; 100]];
        let n = perform_iov(true, f.as_raw_fd(), 10, &parts(&mut src)).unwrap();
        assert_eq!(n, 4196);
        let mut dst = vec![vec![0u8; 50], vec![0u8; 4146], vec![7u8; 30]];
        // 4226 bytes from offset 10: the last 30 are past the end of the file and read as 0.
        let n = perform_iov(false, f.as_raw_fd(), 10, &parts(&mut dst)).unwrap();
        assert_eq!(n, 4226);
        assert!(dst[0].iter().all(|&b| b == 0xab));
        assert!(dst[1][..4046].iter().all(|&b| b == 0xab));
        assert!(dst[1][4046..].iter().all(|&b| b == 0xcd));
        assert!(dst[2].iter().all(|&b| b == 0));
    }

    fn tempfile_in_tmp() -> std::fs::File {
        let path = std::env::temp_dir().join(format!(
            "thinvm-iobuf-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .unwrap();
        let _ = std::fs::remove_file(&path);
        f
    }
}
