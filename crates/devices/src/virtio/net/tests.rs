//! Unit tests of the virtio-net device against a fake backend and split rings in shared memory:
//! the fixtures are here, the tests in ring_tests.rs (the queues) and device_tests.rs (the
//! device and its worker).

use std::collections::VecDeque;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicU32, Ordering};

use virtio_queue::QueueT;

use vm_memory::{Bytes, GuestAddress, VolatileSlice};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::worker::NetQueues;
use super::*;
use crate::virtio::testmem::{MEM_SIZE, NEXT, WRITE};
use crate::virtio::InterruptKind;

/// A split ring at `base` (descriptors, avail at +0x1000, used at +0x2000) in shared memory.
struct Ring {
    mem: GuestMemoryMmap,
    base: u64,
    avail: u16,
}

const SIZE: u16 = 16;

impl Ring {
    fn new(mem: &GuestMemoryMmap, base: u64) -> Self {
        Ring {
            mem: mem.clone(),
            base,
            avail: 0,
        }
    }
    fn queue(&self) -> Queue {
        let mut q = Queue::new(SIZE).unwrap();
        let a = |o: u64| Some((self.base + o) as u32);
        q.set_desc_table_address(a(0), Some(0));
        q.set_avail_ring_address(a(0x1000), Some(0));
        q.set_used_ring_address(a(0x2000), Some(0));
        q.set_ready(true);
        q
    }
    fn desc(&self, i: u16, addr: u64, len: u32, flags: u16, next: u16) {
        let at = self.base + u64::from(i) * 16;
        let m = &self.mem;
        m.write_obj(addr, GuestAddress(at)).unwrap();
        m.write_obj(len, GuestAddress(at + 8)).unwrap();
        m.write_obj(flags, GuestAddress(at + 12)).unwrap();
        m.write_obj(next, GuestAddress(at + 14)).unwrap();
    }
    fn push(&mut self, head: u16) {
        let slot = self.base + 0x1004 + u64::from(self.avail % SIZE) * 2;
        self.mem.write_obj(head, GuestAddress(slot)).unwrap();
        self.avail = self.avail.wrapping_add(1);
        let idx = GuestAddress(self.base + 0x1002);
        self.mem.write_obj(self.avail, idx).unwrap();
    }
    fn used_idx(&self) -> u16 {
        self.mem.read_obj(GuestAddress(self.base + 0x2002)).unwrap()
    }
    fn used(&self, i: u16) -> (u32, u32) {
        let at = self.base + 0x2004 + u64::from(i % SIZE) * 8;
        let id = self.mem.read_obj(GuestAddress(at)).unwrap();
        (id, self.mem.read_obj(GuestAddress(at + 4)).unwrap())
    }
}

#[derive(Default)]
struct FakeState {
    incoming: VecDeque<Vec<u8>>,
    sent: Vec<Vec<u8>>,
    offload: Option<u64>,
    /// The buffers (how many, room) each read was given.
    rooms: Vec<(usize, usize)>,
}

struct Fake {
    state: Arc<Mutex<FakeState>>,
    fd: EventFd,
}

impl NetBackend for Fake {
    /// As tun does: the frame's bytes from the start, cut at the buffers' end, and the bytes
    /// read; the header's `num_buffers` (bytes 10..12) is left alone. Records the buffers given.
    fn read_frame(&mut self, bufs: &[VolatileSlice<'_>]) -> io::Result<usize> {
        let mut st = self.state.lock().unwrap();
        let f = st.incoming.pop_front();
        let f = f.ok_or_else(|| io::Error::from(io::ErrorKind::WouldBlock))?;
        st.rooms
            .push((bufs.len(), bufs.iter().map(|b| b.len()).sum()));
        let mut at = 0;
        for b in bufs {
            for i in 0..b.len() {
                if at >= f.len() {
                    return Ok(at);
                }
                if !(10..12).contains(&at) {
                    b.write_slice(&[f[at]], i).unwrap();
                }
                at += 1;
            }
        }
        Ok(at)
    }
    fn write_frame(&mut self, bufs: &[VolatileSlice<'_>]) -> io::Result<()> {
        let mut frame = Vec::new();
        for b in bufs {
            let mut part = vec![0; b.len()];
            b.copy_to(&mut part[..]);
            frame.extend_from_slice(&part);
        }
        self.state.lock().unwrap().sent.push(frame);
        Ok(())
    }
    fn raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
    fn set_offload(&mut self, features: u64) -> io::Result<()> {
        self.state.lock().unwrap().offload = Some(features);
        Ok(())
    }
}

#[derive(Default)]
struct Irq(AtomicU32, AtomicU32);
impl VirtioInterrupt for Irq {
    fn trigger(&self, kind: InterruptKind) -> io::Result<()> {
        match kind {
            InterruptKind::Queue(0) => self.0.fetch_add(1, Ordering::SeqCst),
            _ => self.1.fetch_add(1, Ordering::SeqCst),
        };
        Ok(())
    }
}

struct Setup {
    q: NetQueues,
    rx: Ring,
    tx: Ring,
    state: Arc<Mutex<FakeState>>,
    irq: Arc<Irq>,
}

fn fake() -> (Box<dyn NetBackend>, Arc<Mutex<FakeState>>) {
    let (b, state, _) = fake_with_fd();
    (b, state)
}

/// A fake backend, its state and its "readable" eventfd.
fn fake_with_fd() -> (Box<dyn NetBackend>, Arc<Mutex<FakeState>>, EventFd) {
    let state = Arc::new(Mutex::new(FakeState::default()));
    let fd = EventFd::new(EFD_NONBLOCK).unwrap();
    let readable = fd.try_clone().unwrap();
    let b = Fake {
        state: state.clone(),
        fd,
    };
    (Box::new(b), state, readable)
}

fn setup() -> Setup {
    let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM_SIZE as usize)]).unwrap();
    let (rx, tx) = (Ring::new(&mem, 0x1000), Ring::new(&mem, 0x4000));
    let (backend, state) = fake();
    let irq = Arc::new(Irq::default());
    let q = NetQueues {
        mem,
        rx: rx.queue(),
        tx: tx.queue(),
        backend: Arc::new(Mutex::new(backend)),
        interrupt: irq.clone(),
        stats: Arc::default(),
        mergeable: false,
        held: Default::default(),
        bounce: vec![0; MAX_FRAME + 1],
        pending: None,
        log: crate::legacy::GuestLog::default(),
    };
    Setup {
        q,
        rx,
        tx,
        state,
        irq,
    }
}

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len).map(|i| (i as u8).wrapping_mul(7) ^ seed).collect()
}

#[path = "device_tests.rs"]
mod device;
#[path = "ring_tests.rs"]
mod ring;
#[path = "rx_tests.rs"]
mod rx;
