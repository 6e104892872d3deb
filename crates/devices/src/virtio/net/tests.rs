use std::collections::VecDeque;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicU32, Ordering};

use virtio_queue::QueueT;

use vm_memory::{Bytes, GuestAddress};
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
}

struct Fake {
    state: Arc<Mutex<FakeState>>,
    fd: EventFd,
}

impl NetBackend for Fake {
    fn read_frame(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let f = self.state.lock().unwrap().incoming.pop_front();
        let f = f.ok_or_else(|| io::Error::from(io::ErrorKind::WouldBlock))?;
        let n = f.len().min(buf.len());
        buf[..n].copy_from_slice(&f[..n]);
        Ok(n)
    }
    fn write_frame(&mut self, frame: &[u8]) -> io::Result<()> {
        self.state.lock().unwrap().sent.push(frame.to_vec());
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
        pending: None,
        buf: vec![0; MAX_FRAME],
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

#[test]
fn tx_gathers_a_chain_into_one_frame() {
    let mut s = setup();
    let frame = pattern(12 + 100, 3);
    s.tx.mem
        .write_slice(&frame[..12], GuestAddress(0x10000))
        .unwrap();
    s.tx.mem
        .write_slice(&frame[12..50], GuestAddress(0x20000))
        .unwrap();
    s.tx.mem
        .write_slice(&frame[50..], GuestAddress(0x30000))
        .unwrap();
    s.tx.desc(0, 0x10000, 12, NEXT, 1);
    s.tx.desc(1, 0x20000, 38, NEXT, 2);
    s.tx.desc(2, 0x30000, 62, 0, 0);
    s.tx.push(0);
    s.q.process_tx();
    assert_eq!(s.state.lock().unwrap().sent, vec![frame]);
    assert_eq!(s.tx.used_idx(), 1);
    assert_eq!(s.tx.used(0), (0, 0));
    assert_eq!(s.q.stats.tx_frames.load(Ordering::Relaxed), 1);
    assert_eq!(s.q.stats.tx_bytes.load(Ordering::Relaxed), 100);
    assert_eq!(s.irq.1.load(Ordering::SeqCst), 1);
}

#[test]
fn hostile_tx_chains_are_dropped_and_returned() {
    let mut s = setup();
    s.tx.desc(0, 0x10000, 64, WRITE, 0); // device-writable on tx
    s.tx.desc(1, MEM_SIZE - 8, 64, 0, 0); // outside memory
    s.tx.desc(2, 0x10000, 64, NEXT, 2); // loop
    s.tx.desc(3, 0x10000, 40000, NEXT, 4); // 80000 bytes: too big
    s.tx.desc(4, 0x20000, 40000, 0, 0);
    s.tx.desc(5, 0x10000, 11, 0, 0); // shorter than the header
    s.tx.desc(6, 0x10000, 64, NEXT, 200); // link out of the table
    for h in [0, 1, 2, 3, 5, 6] {
        s.tx.push(h);
    }
    s.q.process_tx();
    assert!(s.state.lock().unwrap().sent.is_empty());
    assert_eq!(s.tx.used_idx(), 6);
    assert_eq!(s.q.stats.tx_drops.load(Ordering::Relaxed), 6);
    assert_eq!(s.q.stats.tx_frames.load(Ordering::Relaxed), 0);
}

#[test]
fn rx_scatters_a_frame_and_sets_num_buffers() {
    let mut s = setup();
    let mut frame = pattern(12 + 1000, 9);
    s.state.lock().unwrap().incoming.push_back(frame.clone());
    s.rx.desc(0, 0x10000, 600, WRITE | NEXT, 1);
    s.rx.desc(1, 0x20000, 1500, WRITE, 0);
    s.rx.push(0);
    assert!(!s.q.process_rx());
    frame[10..12].copy_from_slice(&1u16.to_le_bytes());
    let mut got = vec![0; 1012];
    s.rx.mem
        .read_slice(&mut got[..600], GuestAddress(0x10000))
        .unwrap();
    s.rx.mem
        .read_slice(&mut got[600..], GuestAddress(0x20000))
        .unwrap();
    assert_eq!(got, frame);
    assert_eq!(s.rx.used(0), (0, 1012));
    assert_eq!(s.q.stats.rx_frames.load(Ordering::Relaxed), 1);
    assert_eq!(s.q.stats.rx_bytes.load(Ordering::Relaxed), 1000);
    assert_eq!(s.irq.0.load(Ordering::SeqCst), 1);
}

#[test]
fn rx_waits_for_buffers_then_delivers() {
    let mut s = setup();
    let frame = pattern(60, 1);
    s.state.lock().unwrap().incoming.push_back(frame.clone());
    assert!(s.q.process_rx(), "the frame waits for buffers");
    assert_eq!(s.rx.used_idx(), 0);
    s.rx.desc(0, 0x10000, 2048, WRITE, 0);
    s.rx.push(0);
    assert!(!s.q.process_rx());
    assert_eq!(s.rx.used(0), (0, 60));
    let mut got = vec![0; 60];
    s.rx.mem
        .read_slice(&mut got, GuestAddress(0x10000))
        .unwrap();
    assert_eq!(got[12..], frame[12..]);
}

#[test]
fn rx_drops_what_does_not_fit_and_bad_chains() {
    let mut s = setup();
    let big = pattern(2000, 2);
    let small = pattern(100, 4);
    let third = pattern(80, 5);
    for f in [&big, &small, &third] {
        s.state.lock().unwrap().incoming.push_back(f.clone());
    }
    s.rx.desc(0, 0x10000, 1500, WRITE, 0); // too small for `big`
    s.rx.desc(1, 0x20000, 1500, 0, 0); // driver-readable: refused
    s.rx.desc(2, 0x30000, 1500, WRITE, 0);
    for h in [0, 1, 2] {
        s.rx.push(h);
    }
    s.q.process_rx();
    assert_eq!(s.rx.used(0), (0, 0));
    assert_eq!(s.rx.used(1), (1, 0));
    assert_eq!(s.rx.used(2), (2, 80));
    assert_eq!(s.q.stats.rx_drops.load(Ordering::Relaxed), 2);
    assert_eq!(s.q.stats.rx_frames.load(Ordering::Relaxed), 1);
    assert_eq!(s.rx.mem.read_obj::<u8>(GuestAddress(0x10000)).unwrap(), 0);
}

#[test]
fn device_config_features_and_mac() {
    let (b, _) = fake();
    let mac = mac_from_seed(b"tap0");
    assert_eq!(mac, mac_from_seed(b"tap0"));
    assert_ne!(mac, mac_from_seed(b"tap1"));
    assert_eq!(mac[0] & 0x03, 0x02, "locally administered unicast");
    let n = Net::new(b, mac);
    assert_eq!(n.device_type(), 1);
    assert_eq!(n.queue_max_sizes().len(), 2);
    let f = n.features();
    assert_ne!(f & F_VERSION_1, 0);
    assert_eq!(
        f & (F_MAC | F_STATUS | OFFLOAD_FEATURES),
        F_MAC | F_STATUS | OFFLOAD_FEATURES
    );
    let mut cfg = [0u8; 12];
    n.read_config(0, &mut cfg);
    assert_eq!(cfg[..6], mac);
    assert_eq!(u16::from_le_bytes([cfg[6], cfg[7]]), S_LINK_UP);
    assert_eq!(cfg[10..], [0, 0], "past the end reads zero");
}

fn activate(n: &mut Net, queues: Vec<Queue>, events: usize) -> Result<(), ActivateError> {
    let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM_SIZE as usize)]).unwrap();
    let ev = (0..events)
        .map(|_| EventFd::new(EFD_NONBLOCK).unwrap())
        .collect();
    n.activate(mem, Arc::new(Irq::default()), queues, ev)
}

#[test]
fn activation_sets_the_accepted_offloads_only() {
    let (b, state) = fake();
    let mut n = Net::new(b, [2, 0, 0, 0, 0, 1]);
    n.ack_features(F_VERSION_1 | F_GUEST_CSUM | (1 << 40));
    assert_eq!(state.lock().unwrap().offload, None, "not before activation");
    let q = || Queue::new(16).unwrap();
    assert!(matches!(
        activate(&mut n, vec![q()], 1),
        Err(ActivateError::QueueCount { got: 1, .. })
    ));
    activate(&mut n, vec![q(), q()], 2).unwrap();
    assert_eq!(
        state.lock().unwrap().offload,
        Some(F_VERSION_1 | F_GUEST_CSUM)
    );
    n.reset();
}

fn wait_for(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while !done() {
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
}

#[test]
fn the_worker_thread_serves_both_directions() {
    let (b, state, readable) = fake_with_fd();
    let mut n = Net::new(b, [2, 0, 0, 0, 0, 2]);
    let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM_SIZE as usize)]).unwrap();
    let (mut rx, mut tx) = (Ring::new(&mem, 0x1000), Ring::new(&mem, 0x4000));
    let events: Vec<EventFd> = (0..2)
        .map(|_| EventFd::new(EFD_NONBLOCK).unwrap())
        .collect();
    let kicks: Vec<EventFd> = events.iter().map(|e| e.try_clone().unwrap()).collect();
    let irq = Arc::new(Irq::default());
    n.activate(
        mem.clone(),
        irq.clone(),
        vec![rx.queue(), tx.queue()],
        events,
    )
    .unwrap();
    // Host to guest: a frame arrives, then the guest posts a buffer and kicks.
    let frame = pattern(90, 6);
    state.lock().unwrap().incoming.push_back(frame.clone());
    readable.write(1).unwrap();
    rx.desc(0, 0x10000, 2048, WRITE, 0);
    rx.push(0);
    kicks[0].write(1).unwrap();
    wait_for("the rx frame", || rx.used_idx() == 1);
    assert_eq!(rx.used(0), (0, 90));
    let mut got = vec![0; 90];
    mem.read_slice(&mut got, GuestAddress(0x10000)).unwrap();
    assert_eq!(got[12..], frame[12..]);
    // A second frame while a buffer waits: the backend's readiness alone delivers it.
    rx.desc(1, 0x11000, 2048, WRITE, 0);
    rx.push(1);
    kicks[0].write(1).unwrap();
    state.lock().unwrap().incoming.push_back(pattern(70, 8));
    readable.write(1).unwrap();
    wait_for("the second rx frame", || rx.used_idx() == 2);
    // Guest to host.
    let out = pattern(64, 7);
    mem.write_slice(&out, GuestAddress(0x20000)).unwrap();
    tx.desc(0, 0x20000, 64, 0, 0);
    tx.push(0);
    kicks[1].write(1).unwrap();
    wait_for("the tx frame", || !state.lock().unwrap().sent.is_empty());
    assert_eq!(state.lock().unwrap().sent, vec![out]);
    wait_for("the tx used entry", || tx.used_idx() == 1);
    assert!(irq.0.load(Ordering::SeqCst) >= 1 && irq.1.load(Ordering::SeqCst) >= 1);
    let stats = n.stats();
    assert_eq!(stats.rx_frames.load(Ordering::Relaxed), 2);
    assert_eq!(stats.tx_frames.load(Ordering::Relaxed), 1);
    n.reset();
}

/// Random rings (seeded): descriptors anywhere (also past the end of memory), any length, flags
/// and link, any avail index. Nothing panics and every returned chain is counted once.
#[test]
fn random_rings_never_panic_and_every_chain_is_counted() {
    let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    for _ in 0..200 {
        let mut s = setup();
        for ring in [&s.rx, &s.tx] {
            for i in 0..SIZE {
                let r = next();
                let addr = match r % 4 {
                    0 => MEM_SIZE - (r >> 8) % 64,
                    1 => r >> 4,
                    _ => 0x10000 + (r >> 8) % 0x30_0000,
                };
                let len = match (r >> 40) % 3 {
                    0 => (r >> 16) as u32,
                    _ => ((r >> 16) % 70000) as u32,
                };
                let flags = ((r >> 50) % 4) as u16; // NEXT and WRITE
                ring.desc(i, addr, len, flags, ((r >> 56) % 20) as u16);
            }
        }
        for _ in 0..(next() % 24) {
            // Heads in the table (a head past it cannot be returned: see the test below); links
            // may point anywhere.
            s.rx.push((next() % u64::from(SIZE)) as u16);
            s.tx.push((next() % u64::from(SIZE)) as u16);
        }
        for _ in 0..(next() % 4) {
            let len = (next() % 70000) as usize;
            s.state.lock().unwrap().incoming.push_back(pattern(len, 1));
        }
        s.q.process_tx();
        s.q.process_rx();
        let st = &s.q.stats;
        let tx = st.tx_frames.load(Ordering::Relaxed) + st.tx_drops.load(Ordering::Relaxed);
        assert_eq!(tx, u64::from(s.tx.used_idx()));
        let rx = st.rx_frames.load(Ordering::Relaxed) + st.rx_drops.load(Ordering::Relaxed);
        assert_eq!(rx, u64::from(s.rx.used_idx()));
        assert_eq!(
            s.state.lock().unwrap().sent.len() as u64,
            st.tx_frames.load(Ordering::Relaxed)
        );
    }
}

#[test]
fn heads_past_the_table_are_dropped_without_panic() {
    let mut s = setup();
    s.tx.push(SIZE + 3);
    s.rx.push(SIZE + 1);
    s.rx.desc(0, 0x10000, 2048, WRITE, 0);
    s.rx.push(0);
    s.state.lock().unwrap().incoming.push_back(pattern(40, 1));
    s.state.lock().unwrap().incoming.push_back(pattern(50, 2));
    s.q.process_tx();
    s.q.process_rx();
    assert_eq!(s.q.stats.tx_drops.load(Ordering::Relaxed), 1);
    assert_eq!(
        s.tx.used_idx(),
        0,
        "an index past the table cannot be returned"
    );
    assert_eq!(s.q.stats.rx_drops.load(Ordering::Relaxed), 1);
    assert_eq!(s.q.stats.rx_frames.load(Ordering::Relaxed), 1);
    assert_eq!(s.rx.used(0), (0, 50));
}
