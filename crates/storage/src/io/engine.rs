//! I/O engines: many requests on host files in flight from one thread. io_uring when the
//! kernel offers it (probed at run time), a synchronous engine otherwise.

use std::io;
use std::os::unix::io::RawFd;

use super::buf::{perform_iov, IoBuf};

/// What a host request does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IoOp {
    /// pread into the buffer.
    Read,
    /// pwrite from the buffer.
    Write,
    /// fdatasync.
    Fsync,
}

/// One request on a host file descriptor.
pub struct IoRequest {
    /// Operation.
    pub op: IoOp,
    /// Host file descriptor (must stay open until completion).
    pub fd: RawFd,
    /// Offset in the host file.
    pub offset: u64,
    /// Data (its length is the request length).
    pub buf: IoBuf,
    /// Caller's tag, returned in the completion.
    pub user_data: u64,
}

/// A finished request.
pub struct IoCompletion {
    /// The request's tag.
    pub user_data: u64,
    /// Bytes transferred (reads past the end of the file are zero-filled and counted).
    pub result: io::Result<usize>,
    /// The request's buffer, handed back.
    pub buf: IoBuf,
}

/// An I/O engine.
pub trait Engine: Send {
    /// "io_uring" or "sync".
    fn name(&self) -> &'static str;
    /// Queues a request (it may start at once).
    fn submit(&mut self, req: IoRequest) -> io::Result<()>;
    /// Starts queued requests and waits until at least `min` completions are available;
    /// appends every available completion to `out`.
    fn wait(&mut self, min: usize, out: &mut Vec<IoCompletion>) -> io::Result<()>;
    /// Requests submitted and not yet returned by `wait`.
    fn in_flight(&self) -> usize;
}

/// Runs each request at submission with pread/pwrite/fdatasync.
#[derive(Default)]
pub struct SyncEngine {
    done: Vec<IoCompletion>,
}

/// Performs one request synchronously.
pub fn perform(op: IoOp, fd: RawFd, offset: u64, buf: &mut [u8]) -> io::Result<usize> {
    let off =
        i64::try_from(offset).map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "offset"))?;
    let mut done = 0usize;
    while done < buf.len() || op == IoOp::Fsync {
        // SAFETY: fd is open (caller's contract), the pointer/length pair is a live slice and
        // the offset was checked to fit in off_t.
        let rc = unsafe {
            let p = buf.as_mut_ptr().add(done);
            let n = buf.len() - done;
            match op {
                IoOp::Read => libc::pread(fd, p.cast(), n, off + done as i64),
                IoOp::Write => libc::pwrite(fd, p.cast(), n, off + done as i64),
                IoOp::Fsync => libc::fdatasync(fd) as isize,
            }
        };
        if rc < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        if op == IoOp::Fsync {
            return Ok(0);
        }
        if rc == 0 {
            if op == IoOp::Read {
                buf[done..].fill(0);
                return Ok(buf.len());
            }
            return Err(io::Error::new(io::ErrorKind::WriteZero, "short write"));
        }
        done += rc as usize;
    }
    Ok(done)
}

/// Performs one request synchronously on either kind of buffer.
pub fn perform_buf(op: IoOp, fd: RawFd, offset: u64, buf: &mut IoBuf) -> io::Result<usize> {
    match (op, buf) {
        (IoOp::Fsync, _) => perform(op, fd, offset, &mut []),
        (_, IoBuf::Owned(b)) => perform(op, fd, offset, b.as_mut_slice()),
        (_, IoBuf::External(e)) => perform_iov(op == IoOp::Write, fd, offset, e),
    }
}

impl Engine for SyncEngine {
    fn name(&self) -> &'static str {
        "sync"
    }
    fn submit(&mut self, mut req: IoRequest) -> io::Result<()> {
        let result = perform_buf(req.op, req.fd, req.offset, &mut req.buf);
        self.done.push(IoCompletion {
            user_data: req.user_data,
            result,
            buf: req.buf,
        });
        Ok(())
    }
    fn wait(&mut self, _min: usize, out: &mut Vec<IoCompletion>) -> io::Result<()> {
        out.append(&mut self.done);
        Ok(())
    }
    fn in_flight(&self) -> usize {
        self.done.len()
    }
}

/// The best engine for `depth` requests in flight: io_uring if the kernel has it (and
/// `THINVM_NO_IO_URING` is not set), else the synchronous engine.
pub fn best_engine(depth: u32) -> Box<dyn Engine> {
    if std::env::var_os("THINVM_NO_IO_URING").is_none() {
        match super::uring::UringEngine::new(depth) {
            Ok(e) => return Box::new(e),
            Err(e) => tracing::info!("io_uring unavailable ({e}); using synchronous I/O"),
        }
    }
    Box::new(SyncEngine::default())
}
