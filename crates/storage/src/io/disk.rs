//! An asynchronous disk queue: one thread keeps many guest requests in flight. Requests that
//! map to one contiguous stretch of a host file go to the engine (io_uring); the rest
//! (allocation, copy-on-write, compressed or backing data) run synchronously in the backend.

use std::io;

use std::collections::HashMap;

use super::aligned::AlignedBuf;
use super::buf::{ExternalIov, IoBuf};
use super::engine::{Engine, IoCompletion, IoOp, IoRequest};
use crate::backend::{BlockBackend, BlockError};

/// What a disk request does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DiskOp {
    /// Read `buf.len()` bytes.
    Read,
    /// Write the buffer.
    Write,
    /// Flush: completes after every earlier request has completed and is durable.
    Flush,
    /// Discard this many bytes (after every earlier request has completed).
    Discard(u64),
    /// Write zeroes over this many bytes (after every earlier request has completed).
    WriteZeroes(u64),
}

/// One guest request.
pub struct DiskRequest {
    /// Caller's tag.
    pub id: u64,
    /// Operation.
    pub op: DiskOp,
    /// Guest offset.
    pub offset: u64,
    /// Data (empty for a flush): an owned buffer, or memory the caller keeps mapped (guest
    /// RAM), which the host file is read into or written from directly when the backend maps
    /// the range to one stretch of a host file (and its alignment allows).
    pub buf: IoBuf,
}

/// A finished guest request.
pub struct DiskCompletion {
    /// The request's tag.
    pub id: u64,
    /// Outcome.
    pub result: Result<(), BlockError>,
    /// The request's buffer (read data for a read).
    pub buf: IoBuf,
}

/// A disk with an I/O engine.
pub struct AsyncDisk {
    disk: Box<dyn BlockBackend>,
    engine: Box<dyn Engine>,
    done: Vec<DiskCompletion>,
    raw: Vec<IoCompletion>,
    /// Offsets of the requests in the engine, by id (for error messages).
    offsets: HashMap<u64, u64>,
    /// External buffers whose request went to the engine through an aligned copy (O_DIRECT
    /// with unaligned guest buffers), by id: a read's data is copied into them on completion.
    bounced: HashMap<u64, ExternalIov>,
}

fn bounce_failed(len: usize) -> BlockError {
    BlockError::Io {
        path: std::path::PathBuf::from("<async disk>"),
        offset: 0,
        len: len as u64,
        source: io::Error::new(
            io::ErrorKind::OutOfMemory,
            "cannot allocate a bounce buffer",
        ),
    }
}

/// An aligned copy of `ext` (its bytes for a write, zeroes for a read).
fn bounce(ext: &ExternalIov, write: bool) -> Option<AlignedBuf> {
    let mut b = AlignedBuf::new(ext.len())?;
    if write {
        ext.gather(b.as_mut_slice());
    }
    Some(b)
}

impl AsyncDisk {
    /// Wraps a backend and an engine (see [`super::engine::best_engine`]).
    pub fn new(disk: Box<dyn BlockBackend>, engine: Box<dyn Engine>) -> Self {
        AsyncDisk {
            disk,
            engine,
            done: Vec::new(),
            raw: Vec::new(),
            offsets: HashMap::new(),
            bounced: HashMap::new(),
        }
    }

    /// The engine's name.
    pub fn engine_name(&self) -> &'static str {
        self.engine.name()
    }

    /// The backend.
    pub fn disk(&mut self) -> &mut dyn BlockBackend {
        self.disk.as_mut()
    }

    /// Requests started and not yet returned by [`AsyncDisk::poll`].
    pub fn pending(&self) -> usize {
        self.engine.in_flight() + self.done.len()
    }

    fn io_error(&self, id: u64, e: io::Error) -> BlockError {
        BlockError::Io {
            path: std::path::PathBuf::from("<async disk>"),
            offset: self.offsets.get(&id).copied().unwrap_or(0),
            len: 0,
            source: e,
        }
    }

    /// Starts a request; its completion comes from [`AsyncDisk::poll`]. Errors of the request
    /// itself arrive in the completion.
    pub fn submit(&mut self, req: DiskRequest) -> io::Result<()> {
        let len = req.buf.len() as u64;
        let align = self.disk.alignment();
        let aligned = req.offset.is_multiple_of(align) && len.is_multiple_of(align);
        let direct = match req.op {
            DiskOp::Flush | DiskOp::Discard(_) | DiskOp::WriteZeroes(_) => None,
            op if aligned => match self.disk.host_range(req.offset, len, op == DiskOp::Write) {
                Ok(r) => r,
                Err(e) => {
                    self.done.push(DiskCompletion {
                        id: req.id,
                        result: Err(e),
                        buf: req.buf,
                    });
                    return Ok(());
                }
            },
            _ => None,
        };
        let Some(hr) = direct else {
            self.run_sync(req);
            return Ok(());
        };
        let write = req.op == DiskOp::Write;
        let buf = match req.buf {
            IoBuf::External(ext) if !ext.aligned(align) => {
                let Some(b) = bounce(&ext, write) else {
                    self.done.push(DiskCompletion {
                        id: req.id,
                        result: Err(bounce_failed(ext.len())),
                        buf: IoBuf::External(ext),
                    });
                    return Ok(());
                };
                self.bounced.insert(req.id, ext);
                IoBuf::Owned(b)
            }
            buf => buf,
        };
        self.offsets.insert(req.id, req.offset);
        let op = if write { IoOp::Write } else { IoOp::Read };
        let submitted = self.engine.submit(IoRequest {
            op,
            fd: hr.fd,
            offset: hr.offset,
            buf,
            user_data: req.id,
        });
        if submitted.is_err() {
            self.offsets.remove(&req.id);
            self.bounced.remove(&req.id);
        }
        submitted
    }

    /// Runs a request in the backend (allocation, copy-on-write, compressed or backing data,
    /// flush, discard, write-zeroes), through an aligned copy for external memory.
    fn run_sync(&mut self, mut req: DiskRequest) {
        let result = match (req.op, &mut req.buf) {
            (DiskOp::Read, IoBuf::Owned(b)) => self.disk.read_at(b.as_mut_slice(), req.offset),
            (DiskOp::Write, IoBuf::Owned(b)) => self.disk.write_at(b.as_slice(), req.offset),
            (op @ (DiskOp::Read | DiskOp::Write), IoBuf::External(ext)) => {
                let write = op == DiskOp::Write;
                match bounce(ext, write) {
                    None => Err(bounce_failed(ext.len())),
                    Some(mut b) if !write => {
                        self.disk.read_at(b.as_mut_slice(), req.offset).map(|()| {
                            ext.scatter(b.as_slice());
                        })
                    }
                    Some(b) => self.disk.write_at(b.as_slice(), req.offset),
                }
            }
            (DiskOp::Flush, _) => self.drain().and_then(|()| self.disk.flush()),
            // Drained first: clusters they free must not have engine writes in flight.
            (DiskOp::Discard(n), _) => self.drain().and_then(|()| self.disk.discard(req.offset, n)),
            (DiskOp::WriteZeroes(n), _) => self
                .drain()
                .and_then(|()| self.disk.write_zeroes(req.offset, n)),
        };
        self.done.push(DiskCompletion {
            id: req.id,
            result,
            buf: req.buf,
        });
    }

    /// Waits for everything in the engine (before a flush).
    fn drain(&mut self) -> Result<(), BlockError> {
        let n = self.engine.in_flight();
        self.engine
            .wait(n, &mut self.raw)
            .map_err(|e| self.io_error(0, e))?;
        self.collect();
        Ok(())
    }

    fn collect(&mut self) {
        for c in std::mem::take(&mut self.raw) {
            let result = c
                .result
                .map(|_| ())
                .map_err(|e| self.io_error(c.user_data, e));
            self.offsets.remove(&c.user_data);
            let buf = match (self.bounced.remove(&c.user_data), c.buf) {
                (Some(ext), IoBuf::Owned(b)) => {
                    if result.is_ok() {
                        ext.scatter(b.as_slice());
                    }
                    IoBuf::External(ext)
                }
                (_, buf) => buf,
            };
            self.done.push(DiskCompletion {
                id: c.user_data,
                result,
                buf,
            });
        }
    }

    /// Waits for at least `min` completions (fewer if fewer are pending) and returns all
    /// that are available.
    pub fn poll(&mut self, min: usize) -> io::Result<Vec<DiskCompletion>> {
        let need = min.saturating_sub(self.done.len());
        if need > 0 || self.engine.in_flight() > 0 {
            let need = if need > 0 { need } else { 0 };
            self.engine.wait(need, &mut self.raw)?;
            self.collect();
        }
        Ok(std::mem::take(&mut self.done))
    }
}
