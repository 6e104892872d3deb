use super::*;
use std::sync::Mutex;

#[derive(Default)]
struct Recorder {
    routes: Mutex<Vec<(u16, MsiMessage)>>,
    fired: Mutex<Vec<u16>>,
}

impl MsiSink for Recorder {
    fn set_route(&self, vector: u16, msg: MsiMessage) -> std::io::Result<()> {
        self.routes.lock().unwrap().push((vector, msg));
        Ok(())
    }
    fn fire(&self, vector: u16) -> std::io::Result<()> {
        self.fired.lock().unwrap().push(vector);
        Ok(())
    }
}

fn setup(n: u16) -> (Msix, Arc<Recorder>) {
    let rec = Arc::new(Recorder::default());
    (Msix::new(n, rec.clone()), rec)
}

fn w32(m: &mut Msix, off: u64, v: u32) {
    assert!(m.write_table(off, &v.to_le_bytes()));
}

fn program(m: &mut Msix, vector: u16, data: u32) {
    let base = u64::from(vector) * MSIX_ENTRY_SIZE;
    w32(m, base, 0xfee0_0000);
    w32(m, base + 4, 0);
    w32(m, base + 8, data);
}

#[test]
fn capability_layout() {
    let (m, _) = setup(3);
    let (cap, mask) = m.capability(0, 0x8000, 0, 0x9000);
    assert_eq!(cap.len(), MSIX_CAP_LEN);
    assert_eq!(cap[0], MSIX_CAP_ID);
    assert_eq!(u16::from_le_bytes([cap[2], cap[3]]), 2, "table size - 1");
    assert_eq!(u32::from_le_bytes(cap[4..8].try_into().unwrap()), 0x8000);
    assert_eq!(u32::from_le_bytes(cap[8..12].try_into().unwrap()), 0x9000);
    assert_eq!(mask[3], 0xc0);
    assert_eq!(m.table_size(), 48);
    assert_eq!(m.pba_size(), 8);
}

#[test]
fn disabled_msix_drops_and_unmasked_vector_fires() {
    let (mut m, rec) = setup(2);
    program(&mut m, 1, 0x41);
    m.trigger(1);
    assert_eq!(m.stats().dropped, 1);
    m.set_control(0x8000);
    w32(&mut m, 16 + 12, 0); // unmask vector 1
    m.trigger(1);
    assert_eq!(*rec.fired.lock().unwrap(), vec![1]);
    let routes = rec.routes.lock().unwrap().clone();
    assert_eq!(
        routes.last(),
        Some(&(
            1,
            MsiMessage {
                address: 0xfee0_0000,
                data: 0x41
            }
        ))
    );
}

#[test]
fn masked_vector_sets_pba_and_fires_on_unmask() {
    let (mut m, rec) = setup(2);
    m.set_control(0x8000);
    program(&mut m, 0, 0x30);
    m.trigger(0); // masked at reset
    assert!(m.pending(0));
    assert!(rec.fired.lock().unwrap().is_empty());
    let mut pba = [0u8; 8];
    m.read_pba(0, &mut pba);
    assert_eq!(u64::from_le_bytes(pba), 1);
    w32(&mut m, 12, 0); // unmask
    assert!(!m.pending(0));
    assert_eq!(*rec.fired.lock().unwrap(), vec![0]);
    m.read_pba(0, &mut pba);
    assert_eq!(u64::from_le_bytes(pba), 0);
}

#[test]
fn function_mask_holds_every_vector() {
    let (mut m, rec) = setup(2);
    m.set_control(0x8000);
    for v in 0..2 {
        program(&mut m, v, 0x40 + u32::from(v));
        w32(&mut m, u64::from(v) * 16 + 12, 0);
    }
    m.set_control(0xc000); // enabled + function mask
    m.trigger(0);
    m.trigger(1);
    assert!(m.pending(0) && m.pending(1));
    assert!(rec.fired.lock().unwrap().is_empty());
    m.set_control(0x8000);
    let mut fired = rec.fired.lock().unwrap().clone();
    fired.sort();
    assert_eq!(fired, vec![0, 1]);
}

#[test]
fn message_change_while_masked_is_routed_at_unmask_only() {
    let (mut m, rec) = setup(1);
    m.set_control(0x8000);
    program(&mut m, 0, 0x50);
    assert!(
        rec.routes.lock().unwrap().is_empty(),
        "masked: no route yet"
    );
    w32(&mut m, 12, 0);
    assert_eq!(rec.routes.lock().unwrap().len(), 1);
    w32(&mut m, 12, 1);
    w32(&mut m, 8, 0x51);
    assert_eq!(rec.routes.lock().unwrap().len(), 1);
    w32(&mut m, 12, 0);
    let r = rec.routes.lock().unwrap().clone();
    assert_eq!(r.len(), 2);
    assert_eq!(r[1].1.data, 0x51);
}

#[test]
fn table_reads_and_bad_accesses() {
    let (mut m, _) = setup(2);
    program(&mut m, 1, 0x77);
    let mut b4 = [0u8; 4];
    m.read_table(16 + 8, &mut b4);
    assert_eq!(u32::from_le_bytes(b4), 0x77);
    m.read_table(16 + 12, &mut b4);
    assert_eq!(u32::from_le_bytes(b4), 1, "masked at reset");
    let mut b8 = [0u8; 8];
    m.read_table(16, &mut b8);
    assert_eq!(u64::from_le_bytes(b8), 0xfee0_0000);
    // Outside the table, unaligned or odd sizes: all ones, writes ignored.
    for (off, len) in [(32u64, 4usize), (2, 4), (0, 2), (4, 8), (u64::MAX - 3, 4)] {
        let mut b = vec![0u8; len];
        m.read_table(off, &mut b);
        assert!(b.iter().all(|&x| x == 0xff), "{off:#x}/{len}");
        assert!(!m.write_table(off, &b));
    }
    m.read_pba(8, &mut b8);
    assert_eq!(b8, [0xff; 8]);
    m.read_pba(u64::MAX, &mut b4);
    assert_eq!(b4, [0xff; 4]);
    // Vector beyond the table: dropped.
    m.set_control(0x8000);
    m.trigger(9);
    assert_eq!(m.stats().dropped, 1);
}

/// A sink with one eventfd per vector, as the VMM's irqfds.
struct WithIrqfds {
    rec: Recorder,
    fds: Vec<EventFd>,
}

impl MsiSink for WithIrqfds {
    fn set_route(&self, vector: u16, msg: MsiMessage) -> std::io::Result<()> {
        self.rec.set_route(vector, msg)
    }
    fn fire(&self, vector: u16) -> std::io::Result<()> {
        self.rec.fire(vector)
    }
    fn irqfd(&self, vector: u16) -> Option<EventFd> {
        self.fds.get(usize::from(vector))?.try_clone().ok()
    }
}

#[test]
fn irqfd_is_the_sinks_and_its_route_is_pushed_first() {
    let sink = Arc::new(WithIrqfds {
        rec: Recorder::default(),
        fds: (0..2).map(|_| EventFd::new(0).unwrap()).collect(),
    });
    let mut m = Msix::new(2, sink.clone());
    // A sink without eventfds has none to give.
    assert!(setup(2).0.irqfd(0).is_none());
    assert!(m.irqfd(2).is_none(), "no such vector");
    program(&mut m, 1, 0x42);
    m.set_control(0x8000);
    // Masked: the eventfd is given, but no route yet (it is pushed on unmask).
    let fd = m.irqfd(1).unwrap();
    assert!(sink.rec.routes.lock().unwrap().is_empty());
    w32(&mut m, 16 + 12, 0);
    assert_eq!(sink.rec.routes.lock().unwrap().len(), 1);
    fd.write(1).unwrap();
    assert_eq!(
        sink.fds[1].read().unwrap(),
        1,
        "the same eventfd as the sink's"
    );
    // Writing the eventfd does not pass through the MSI-X state.
    assert_eq!(m.stats().fired, 0);
}
