//! Entry points for fuzzing the device request parsing and queue handling (the cargo-fuzz
//! targets in crates/devices/fuzz call these; a short mutation run is part of the unit tests).
//!
//! The input is guest memory: a split virtqueue of 16 entries whose descriptor table, avail ring
//! and used ring sit at fixed addresses inside it, so the fuzzer controls every descriptor, index
//! and buffer. The device serves whatever is available; errors are fine, panics are not.

use std::sync::Arc;

use storage::file::MemFile;
use storage::formats::raw::Raw;
use storage::io::engine::SyncEngine;
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::block::serve_for_fuzz;
use super::rng::serve_chain;
use super::{InterruptKind, VirtioInterrupt};

/// Guest memory size of the fuzz targets.
pub const FUZZ_MEM: usize = 0x4_0000;
/// Descriptor table address.
pub const DESC: u64 = 0x0;
/// Avail ring address.
pub const AVAIL: u64 = 0x100;
/// Used ring address.
pub const USED: u64 = 0x200;
/// Queue size.
pub const QUEUE: u16 = 16;
/// Size of the in-memory disk.
pub const DISK: usize = 0x1_0000;

/// An interrupt that goes nowhere.
pub struct NoInterrupt;

impl VirtioInterrupt for NoInterrupt {
    fn trigger(&self, _kind: InterruptKind) -> std::io::Result<()> {
        Ok(())
    }
}

/// Guest memory holding `data` from address 0 (cut to [`FUZZ_MEM`]).
pub fn memory(data: &[u8]) -> GuestMemoryMmap {
    let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), FUZZ_MEM)])
        .expect("a small anonymous mapping");
    let n = data.len().min(FUZZ_MEM);
    mem.write_slice(&data[..n], GuestAddress(0))
        .expect("the data fits the memory");
    mem
}

/// The fuzzed queue, ready.
pub fn queue() -> Queue {
    let mut q = Queue::new(QUEUE).expect("16 is a valid queue size");
    q.set_desc_table_address(Some(DESC as u32), Some(0));
    q.set_avail_ring_address(Some(AVAIL as u32), Some(0));
    q.set_used_ring_address(Some(USED as u32), Some(0));
    q.set_ready(true);
    q
}

/// virtio-blk: serves every available request of the guest memory `data` on a 64 KiB raw
/// disk (read-only when the first byte is odd). Returns the number of requests returned.
pub fn blk_queue(data: &[u8]) -> usize {
    let read_only = data.first().is_some_and(|b| b & 1 == 1);
    let file = MemFile::new(vec![0x33; DISK], "fuzz.raw");
    let Ok(disk) = Raw::from_file(Box::new(file), read_only) else {
        return 0;
    };
    let engine = Box::new(SyncEngine::default());
    serve_for_fuzz(
        memory(data),
        queue(),
        Box::new(disk),
        engine,
        Arc::new(NoInterrupt),
    )
}

/// virtio-balloon: serves every available chain in each role (inflate, deflate, stats, free
/// page reporting; the first byte picks the order). Pages given up are released for real
/// (`MADV_DONTNEED` on this anonymous memory). Returns the number of chains served.
pub fn balloon_queue(data: &[u8]) -> usize {
    use super::balloon::{serve_for_fuzz, Role};
    let roles = [Role::Inflate, Role::Deflate, Role::Stats, Role::Reporting];
    let first = usize::from(data.first().copied().unwrap_or(0) % 4);
    let mut served = 0;
    for i in 0..4 {
        let role = roles[(first + i) % 4];
        served += serve_for_fuzz(memory(data), queue(), role, Arc::new(NoInterrupt));
    }
    served
}

/// Where [`net_queue`] reads its frame lengths (8 bytes) and its mergeable flag (1 byte).
pub const NET_SPEC: usize = 0x300;

/// virtio-net: serves the available chains as the tx queue, then (on a fresh copy of the
/// memory) as the rx queue with frames waiting whose lengths come from the bytes at
/// [`NET_SPEC`] (small, MTU-sized, the largest, one past the largest), with mergeable rx
/// buffers when the byte after them is odd. Returns the chains returned.
pub fn net_queue(data: &[u8]) -> usize {
    net_serve(data).0
}

/// [`net_queue`], also returning the frames the guest got.
fn net_serve(data: &[u8]) -> (usize, u64) {
    use super::net::{serve_for_fuzz, MAX_FRAME};
    let spec = data.get(NET_SPEC..).unwrap_or_default();
    let frames = spec
        .iter()
        .take(8)
        .map(|&b| match b % 4 {
            0 => 14 + usize::from(b),
            1 => 1514 + 12,
            2 => MAX_FRAME,
            _ => MAX_FRAME + 1,
        })
        .collect();
    serve_for_fuzz(
        memory(data),
        queue(),
        memory(data),
        queue(),
        frames,
        spec.get(8).is_some_and(|b| b & 1 == 1),
        Arc::new(NoInterrupt),
    )
}

/// virtio-rng: serves every available request. Returns the number of requests returned.
pub fn rng_queue(data: &[u8]) -> usize {
    let mem = memory(data);
    let mut q = queue();
    let mut served = 0;
    while let Some(chain) = q.pop_descriptor_chain(&mem) {
        let head = chain.head_index();
        let n = serve_chain(&mem, chain).unwrap_or(0);
        let _ = q.add_used(&mem, head, n);
        served += 1;
    }
    served
}

/// virtio-vsock: each available chain with an even head is a tx packet (guest CID 3), checked
/// and handed to one connection over a socket pair (made by the first REQUEST); each chain with
/// an odd head is an rx buffer that gets the connection's next packet for the guest. The host
/// end of the pair reads and writes a little between chains. Returns the chains served.
pub fn vsock_queue(data: &[u8]) -> usize {
    vsock_serve(&memory(data), data)
}

fn vsock_serve(mem: &GuestMemoryMmap, data: &[u8]) -> usize {
    use std::io::{Read, Write};
    use std::os::unix::net::UnixStream;

    use super::vsock::conn::{Action, Conn};
    use super::vsock::packet::{
        chain_len, checked_chain, op, read_tx, write_rx, HDR_LEN, MAX_PAYLOAD,
    };
    use super::vsock::VsockStats;

    let mut q = queue();
    let Ok((guest_end, mut host)) = UnixStream::pair() else {
        return 0;
    };
    let _ = guest_end.set_nonblocking(true);
    let _ = host.set_nonblocking(true);
    let stats = VsockStats::default();
    let mut conn: Option<Conn> = None;
    let (mut payload, mut out) = (Vec::new(), Vec::new());
    let mut served = 0;
    while let Some(chain) = q.pop_descriptor_chain(mem) {
        let head = chain.head_index();
        served += 1;
        let mut used = 0;
        if head % 2 == 1 {
            let descs = checked_chain(mem, chain, true).unwrap_or_default();
            let room = chain_len(&descs).saturating_sub(HDR_LEN);
            let room = room.min(MAX_PAYLOAD as usize);
            if let (Some(c), true) = (conn.as_mut(), chain_len(&descs) >= HDR_LEN) {
                match c.next_rx(room, &mut out, &stats) {
                    Ok(Some(mut h)) => {
                        assert!(out.len() <= room, "a packet larger than its buffer");
                        h.len = out.len() as u32;
                        used = write_rx(mem, &descs, &h, &out).unwrap_or(0);
                    }
                    Ok(None) => {}
                    Err(_) => conn = None,
                }
            }
        } else if let Ok(h) = read_tx(mem, chain, 3, &mut payload) {
            let action = match conn.as_mut() {
                Some(c) => c.on_guest_packet(&h, &payload, &stats),
                None if h.op == op::REQUEST => {
                    conn = guest_end
                        .try_clone()
                        .ok()
                        .map(|s| Conn::from_guest_request(s, &h));
                    Action::Keep
                }
                None => Action::Keep,
            };
            if action != Action::Keep {
                conn = None;
            }
        }
        let _ = host.read(&mut [0u8; 512]);
        let _ = host.write(&data[..data.len().min(usize::from(head) * 8)]);
        let _ = q.add_used(mem, head, used);
    }
    served
}

#[cfg(test)]
#[path = "fuzz_tests.rs"]
mod tests;
