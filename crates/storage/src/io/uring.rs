//! The io_uring engine (no SQPOLL: it would burn a core of two).

use std::io;

use io_uring::{opcode, squeue, types, IoUring};

use super::buf::IoBuf;
use super::engine::{perform_buf, Engine, IoCompletion, IoOp, IoRequest};

struct Slot {
    user_data: u64,
    buf: IoBuf,
    op: IoOp,
}

/// An io_uring instance with the buffers of its requests in flight.
pub struct UringEngine {
    ring: IoUring,
    slots: Vec<Option<Slot>>,
    free: Vec<usize>,
    queued: usize,
    in_flight: usize,
    /// Requests not yet on the ring.
    staged: Vec<IoRequest>,
}

impl UringEngine {
    /// Sets up a ring of `depth` entries; fails where io_uring is missing or forbidden.
    pub fn new(depth: u32) -> io::Result<Self> {
        let ring = IoUring::new(depth.clamp(1, 4096).next_power_of_two())?;
        let mut probe = io_uring::Probe::new();
        ring.submitter().register_probe(&mut probe)?;
        for op in [
            opcode::Read::CODE,
            opcode::Write::CODE,
            opcode::Readv::CODE,
            opcode::Writev::CODE,
            opcode::Fsync::CODE,
        ] {
            if !probe.is_supported(op) {
                return Err(io::Error::other(format!(
                    "io_uring opcode {op} unsupported"
                )));
            }
        }
        Ok(UringEngine {
            ring,
            slots: Vec::new(),
            free: Vec::new(),
            queued: 0,
            in_flight: 0,
            staged: Vec::new(),
        })
    }

    fn entry(slot: usize, req: &mut IoRequest) -> io::Result<squeue::Entry> {
        let fd = types::Fd(req.fd);
        let too_big = || io::Error::new(io::ErrorKind::InvalidInput, "request larger than 4 GiB");
        let len = u32::try_from(req.buf.len()).map_err(|_| too_big())?;
        let e = match (req.op, &mut req.buf) {
            (IoOp::Fsync, _) => opcode::Fsync::new(fd)
                .flags(types::FsyncFlags::DATASYNC)
                .build(),
            (op, IoBuf::Owned(b)) => {
                let ptr = b.as_mut_slice().as_mut_ptr();
                if op == IoOp::Write {
                    opcode::Write::new(fd, ptr, len).offset(req.offset).build()
                } else {
                    opcode::Read::new(fd, ptr, len).offset(req.offset).build()
                }
            }
            (op, IoBuf::External(x)) => {
                let iov = x.iovecs();
                let n = u32::try_from(iov.len())
                    .ok()
                    .filter(|&n| n <= libc::UIO_MAXIOV as u32)
                    .ok_or_else(|| {
                        io::Error::new(io::ErrorKind::InvalidInput, "too many iovecs")
                    })?;
                if op == IoOp::Write {
                    opcode::Writev::new(fd, iov.as_ptr(), n)
                        .offset(req.offset)
                        .build()
                } else {
                    opcode::Readv::new(fd, iov.as_ptr(), n)
                        .offset(req.offset)
                        .build()
                }
            }
        };
        Ok(e.user_data(slot as u64))
    }
}

impl UringEngine {
    /// Puts one request on the ring; on failure the request comes back with the error.
    fn push(&mut self, mut req: IoRequest) -> Result<(), (io::Error, IoRequest)> {
        let slot = self.free.pop().unwrap_or_else(|| {
            self.slots.push(None);
            self.slots.len() - 1
        });
        let entry = match Self::entry(slot, &mut req) {
            Ok(e) => e,
            Err(e) => {
                self.free.push(slot);
                return Err((e, req));
            }
        };
        if self.ring.submission().is_full() {
            if let Err(e) = self.ring.submit() {
                self.free.push(slot);
                return Err((e, req));
            }
            self.queued = 0;
        }
        // SAFETY: the entry points into req.buf (an owned heap buffer, or a heap array of
        // iovecs describing memory the caller keeps mapped), which moves into self.slots and
        // stays alive (unmoved on the heap) until its completion is reaped; the fd is kept open
        // by the caller until then.
        unsafe {
            if self.ring.submission().push(&entry).is_err() {
                self.free.push(slot);
                return Err((io::Error::other("io_uring submission queue full"), req));
            }
        }
        self.slots[slot] = Some(Slot {
            user_data: req.user_data,
            buf: req.buf,
            op: req.op,
        });
        self.queued += 1;
        self.in_flight += 1;
        Ok(())
    }
}

impl Engine for UringEngine {
    fn name(&self) -> &'static str {
        "io_uring"
    }

    /// Stages a request: it goes to the ring at the next `wait`, unless it is then the only
    /// request, which runs at once with preadv/pwritev in this thread (one system call; a ring
    /// round trip for a lone request costs more, most of all where the kernel completes it in
    /// its worker threads, as for tmpfs).
    fn submit(&mut self, req: IoRequest) -> io::Result<()> {
        self.staged.push(req);
        Ok(())
    }

    fn wait(&mut self, min: usize, out: &mut Vec<IoCompletion>) -> io::Result<()> {
        let before = out.len();
        if self.in_flight == 0 && self.staged.len() == 1 {
            if let Some(mut req) = self.staged.pop() {
                let result = perform_buf(req.op, req.fd, req.offset, &mut req.buf);
                out.push(IoCompletion {
                    user_data: req.user_data,
                    result,
                    buf: req.buf,
                });
                return Ok(());
            }
        }
        for req in std::mem::take(&mut self.staged) {
            if let Err((e, req)) = self.push(req) {
                out.push(IoCompletion {
                    user_data: req.user_data,
                    result: Err(e),
                    buf: req.buf,
                });
            }
        }
        let want = min.saturating_sub(out.len() - before).min(self.in_flight);
        loop {
            let ready = self.ring.completion().len();
            match self.ring.submit_and_wait(want.saturating_sub(ready)) {
                Ok(_) => break,
                Err(e) if e.raw_os_error() == Some(libc::EINTR) => continue,
                Err(e) => return Err(e),
            }
        }
        self.queued = 0;
        let cqes: Vec<(u64, i32)> = self
            .ring
            .completion()
            .map(|c| (c.user_data(), c.result()))
            .collect();
        for (slot, res) in cqes {
            let Some(s) = self.slots.get_mut(slot as usize).and_then(Option::take) else {
                continue;
            };
            self.free.push(slot as usize);
            self.in_flight -= 1;
            let mut buf = s.buf;
            let result = if res < 0 {
                Err(io::Error::from_raw_os_error(-res))
            } else {
                let n = res as usize;
                let len = buf.len();
                match s.op {
                    IoOp::Read if n < len => {
                        // Past the end of the file: zeroes, as the synchronous path reads.
                        match &mut buf {
                            IoBuf::Owned(b) => b.as_mut_slice()[n..].fill(0),
                            IoBuf::External(x) => x.zero_from(n),
                        }
                        Ok(len)
                    }
                    IoOp::Write if n < len => {
                        Err(io::Error::new(io::ErrorKind::WriteZero, "short write"))
                    }
                    _ => Ok(n),
                }
            };
            out.push(IoCompletion {
                user_data: s.user_data,
                result,
                buf,
            });
        }
        Ok(())
    }

    fn in_flight(&self) -> usize {
        self.in_flight + self.staged.len()
    }
}
