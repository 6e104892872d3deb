//! Many requests in flight: reads and writes of one batch (everything the driver made
//! available) go to the storage crate's [`AsyncDisk`] together (io_uring where the host has
//! it), and complete together; the other request types first complete what is in flight, then
//! run synchronously. In-flight data is bounded by [`MAX_INFLIGHT_BYTES`].

use std::collections::HashMap;

use storage::io::aligned::AlignedBuf;
use storage::io::buf::{ExternalIov, IoBuf};
use storage::io::disk::{AsyncDisk, DiskOp, DiskRequest};
use virtio_bindings::virtio_blk::{
    VIRTIO_BLK_S_IOERR, VIRTIO_BLK_S_OK, VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT,
};
use virtio_queue::desc::split::Descriptor;
use vm_memory::{GuestAddress, GuestMemoryBackend, GuestMemoryMmap};

use super::request::{self, Completion, Request, RequestError, ID_BYTES};

/// Most bytes of data in flight at once (the guest decides how much it asks for).
pub const MAX_INFLIGHT_BYTES: u64 = 64 << 20;

/// A request handed to the disk, waiting for its completion.
struct Pending {
    head: u16,
    status_addr: GuestAddress,
    req: Request,
}

/// A finished chain: its head and what to write back.
pub(crate) struct Done {
    pub head: u16,
    pub completion: Completion,
    pub error: Option<RequestError>,
    /// The data a successful read or write moved (for the counters).
    pub transfer: Option<Transfer>,
}

/// The data of a successful read or write, in bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Transfer {
    Read(u64),
    Write(u64),
}

/// The in-flight state of one queue.
pub(crate) struct Batch {
    pending: HashMap<u64, Pending>,
    next_id: u64,
    inflight_bytes: u64,
}

impl Batch {
    pub(crate) fn new() -> Self {
        Batch {
            pending: HashMap::new(),
            next_id: 0,
            inflight_bytes: 0,
        }
    }

    /// Starts (or, for anything but a plain read or write, runs) one chain. Finished chains are
    /// appended to `done`.
    pub(crate) fn start<I: Iterator<Item = Descriptor>>(
        &mut self,
        mem: &GuestMemoryMmap,
        disk: &mut AsyncDisk,
        head: u16,
        chain: I,
        id: &[u8; ID_BYTES],
        done: &mut Vec<Done>,
    ) {
        let descs = match request::collect(chain) {
            Ok(d) => d,
            Err(e) => return done.push(failed(head, None, e)),
        };
        let Some(status_addr) = request::status_address(mem, &descs) else {
            return done.push(failed(head, None, RequestError::NoStatus));
        };
        let req = match request::parse(mem, &descs) {
            Ok(r) => r,
            Err(e) => return done.push(failed(head, Some(status_addr), e)),
        };
        if !matches!(req.ty, VIRTIO_BLK_T_IN | VIRTIO_BLK_T_OUT) || req.data_len == 0 {
            // Flush, discard, write-zeroes, get-id (and empty transfers): after everything
            // before them.
            self.finish(mem, disk, done);
            let (completion, error) = request::complete(mem, &req, status_addr, disk.disk(), id);
            // An empty read or write is still one completed operation of its kind.
            let transfer = (completion.status == VIRTIO_BLK_S_OK as u8)
                .then_some(req.ty)
                .and_then(|ty| match ty {
                    VIRTIO_BLK_T_IN => Some(Transfer::Read(0)),
                    VIRTIO_BLK_T_OUT => Some(Transfer::Write(0)),
                    _ => None,
                });
            return done.push(Done {
                head,
                completion,
                error,
                transfer,
            });
        }
        if let Err(e) = self.submit(mem, disk, head, status_addr, req, done) {
            done.push(failed(head, Some(status_addr), e));
        }
    }

    fn submit(
        &mut self,
        mem: &GuestMemoryMmap,
        disk: &mut AsyncDisk,
        head: u16,
        status_addr: GuestAddress,
        req: Request,
        done: &mut Vec<Done>,
    ) -> Result<(), RequestError> {
        let capacity = disk.disk().size();
        let offset = req.check_rw(capacity)?;
        let write = req.ty == VIRTIO_BLK_T_OUT;
        if write && disk.disk().read_only() {
            return Err(RequestError::ReadOnly);
        }
        if self.inflight_bytes + req.data_len > MAX_INFLIGHT_BYTES {
            self.finish(mem, disk, done);
        }
        let buf = match guest_iov(mem, &req) {
            Some(ext) => IoBuf::External(ext),
            None => {
                // A buffer that is not inside one memory region: through a copy.
                let len = usize::try_from(req.data_len)
                    .map_err(|_| RequestError::TooLong { len: req.data_len })?;
                let mut buf =
                    AlignedBuf::new(len).ok_or(RequestError::TooLong { len: req.data_len })?;
                if write {
                    req.gather(mem, buf.as_mut_slice())?;
                }
                IoBuf::Owned(buf)
            }
        };
        let id = self.next_id;
        self.next_id = self.next_id.wrapping_add(1);
        let op = if write { DiskOp::Write } else { DiskOp::Read };
        disk.submit(DiskRequest {
            id,
            op,
            offset,
            buf,
        })
        .map_err(|e| RequestError::Backend(e.to_string()))?;
        self.inflight_bytes += req.data_len;
        self.pending.insert(
            id,
            Pending {
                head,
                status_addr,
                req,
            },
        );
        Ok(())
    }

    /// Waits for every request in flight and appends them to `done`.
    pub(crate) fn finish(
        &mut self,
        mem: &GuestMemoryMmap,
        disk: &mut AsyncDisk,
        done: &mut Vec<Done>,
    ) {
        if self.pending.is_empty() {
            return;
        }
        let completions = match disk.poll(self.pending.len()) {
            Ok(c) => c,
            Err(e) => {
                // The engine itself failed: fail everything it held.
                let err = RequestError::Backend(e.to_string());
                for (_, p) in self.pending.drain() {
                    done.push(failed(p.head, Some(p.status_addr), err.clone()));
                }
                self.inflight_bytes = 0;
                return;
            }
        };
        for c in completions {
            let Some(p) = self.pending.remove(&c.id) else {
                continue;
            };
            self.inflight_bytes = self.inflight_bytes.saturating_sub(p.req.data_len);
            let result = c.result.map_err(|e| RequestError::Backend(e.to_string()));
            let result = result.and_then(|()| {
                if p.req.ty == VIRTIO_BLK_T_IN {
                    // External buffers were read into directly; an owned one is copied.
                    if let Some(data) = c.buf.owned() {
                        p.req.scatter(mem, data)?;
                    }
                    Ok((p.req.data_len as u32, Transfer::Read(p.req.data_len)))
                } else {
                    Ok((0, Transfer::Write(p.req.data_len)))
                }
            });
            done.push(match result {
                Ok((n, transfer)) => Done {
                    head: p.head,
                    completion: Completion {
                        status_addr: Some(p.status_addr),
                        status: VIRTIO_BLK_S_OK as u8,
                        used_len: n + 1,
                    },
                    error: None,
                    transfer: Some(transfer),
                },
                Err(e) => failed(p.head, Some(p.status_addr), e),
            });
        }
        if !self.pending.is_empty() {
            // poll returns at least what was asked for; anything left is a bug in the engine.
            let err = RequestError::Backend("the disk lost a request".into());
            for (_, p) in self.pending.drain() {
                done.push(failed(p.head, Some(p.status_addr), err.clone()));
            }
            self.inflight_bytes = 0;
        }
    }
}

/// The request's data buffers as host memory, so the disk reads and writes guest memory
/// directly; `None` if a buffer is not inside one region of guest memory.
fn guest_iov(mem: &GuestMemoryMmap, req: &Request) -> Option<ExternalIov> {
    let mut parts = Vec::with_capacity(req.data.len());
    for &(addr, len) in &req.data {
        let slice = mem.get_slice(addr, len as usize).ok()?;
        parts.push((slice.ptr_guard_mut().as_ptr(), len as usize));
    }
    // SAFETY: every part lies inside a region of `mem`, whose mappings live as long as any
    // clone of the GuestMemoryMmap (the worker holds one). No request outlives them: the
    // worker completes the whole batch (`Batch::finish`, which waits for every pending
    // request) before it returns from serving a notification, and `start` finishes what is
    // in flight before anything else. The guest may change the bytes meanwhile, which only
    // affects its own request's data.
    Some(unsafe { ExternalIov::new(&parts) })
}

fn failed(head: u16, status_addr: Option<GuestAddress>, e: RequestError) -> Done {
    Done {
        head,
        completion: Completion {
            status_addr,
            status: VIRTIO_BLK_S_IOERR as u8,
            used_len: u32::from(status_addr.is_some()),
        },
        error: Some(e),
        transfer: None,
    }
}
