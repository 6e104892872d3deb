use super::*;
use std::thread;

/// Records the last access and answers reads with `tag + offset + i`.
#[derive(Default)]
struct Probe {
    tag: u8,
    writes: Vec<(u64, Vec<u8>)>,
    reads: Vec<(u64, usize)>,
}

impl BusDevice for Probe {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        self.reads.push((offset, data.len()));
        for (i, b) in data.iter_mut().enumerate() {
            *b = self.tag.wrapping_add(offset as u8).wrapping_add(i as u8);
        }
    }
    fn write(&mut self, offset: u64, data: &[u8]) {
        self.writes.push((offset, data.to_vec()));
    }
}

fn probe(tag: u8) -> Arc<Mutex<Probe>> {
    Arc::new(Mutex::new(Probe {
        tag,
        ..Default::default()
    }))
}

#[test]
fn insert_rejects_zero_len_overflow_and_overlaps() {
    let bus = Bus::new();
    assert_eq!(
        bus.insert(probe(0), 0x10, 0),
        Err(BusError::ZeroLength { base: 0x10 })
    );
    assert!(matches!(
        bus.insert(probe(0), u64::MAX, 2),
        Err(BusError::Overflow { .. })
    ));
    bus.insert(probe(0), 0x100, 0x10).unwrap();
    for (base, len) in [
        (0x100, 1),
        (0xf8, 0x9),
        (0x10f, 1),
        (0x104, 4),
        (0x0, 0x1000),
    ] {
        let err = bus.insert(probe(0), base, len).unwrap_err();
        assert_eq!(
            err,
            BusError::Overlap {
                base,
                len,
                other_base: 0x100,
                other_len: 0x10
            },
            "{base:#x}+{len:#x}"
        );
    }
    // Adjacent ranges on both sides are fine.
    bus.insert(probe(0), 0xf0, 0x10).unwrap();
    bus.insert(probe(0), 0x110, 0x10).unwrap();
    // The last byte of the address space can be mapped.
    bus.insert(probe(0), u64::MAX - 1, 1).unwrap();
}

#[test]
fn dispatch_goes_to_right_device_with_relative_offset() {
    let bus = Bus::new();
    let a = probe(0x10);
    let b = probe(0x80);
    bus.insert(a.clone(), 0x3f8, 8).unwrap();
    bus.insert(b.clone(), 0x600, 9).unwrap();

    let mut data = [0u8; 2];
    assert!(bus.read(0x602, &mut data));
    assert_eq!(data, [0x82, 0x83]);
    assert!(bus.write(0x3fd, &[7]));
    assert_eq!(a.lock().unwrap().writes, vec![(5, vec![7])]);
    assert_eq!(b.lock().unwrap().reads, vec![(2, 2)]);
    assert!(a.lock().unwrap().reads.is_empty());
    assert!(b.lock().unwrap().writes.is_empty());
}

#[test]
fn unmapped_and_straddling_accesses_go_nowhere() {
    let bus = Bus::new();
    let a = probe(1);
    bus.insert(a.clone(), 0x60, 5).unwrap();
    bus.insert(probe(2), 0x65, 5).unwrap();
    let mut data = [0xaa; 4];
    assert!(!bus.read(0x5f, &mut data[..1]));
    assert!(!bus.read(0x63, &mut data)); // 0x63..0x67 straddles two devices.
    assert!(!bus.write(0x69, &[0, 0])); // Straddles the end of the last range.
    assert!(!bus.read(0x60, &mut [])); // Empty access.
    assert!(!bus.read(u64::MAX, &mut data)); // Would wrap.
    assert_eq!(data, [0xaa; 4], "a failed read leaves the buffer alone");
    assert!(a.lock().unwrap().reads.is_empty());
    // The full range in one access works.
    assert!(bus.read(0x60, &mut [0; 5]));
}

#[test]
fn remove_unmaps_and_clones_share_the_map() {
    let bus = Bus::new();
    let clone = bus.clone();
    clone.insert(probe(0), 0x70, 2).unwrap();
    assert!(bus.write(0x71, &[1]));
    assert!(bus.remove(0x71).is_none());
    assert!(bus.remove(0x70).is_some());
    assert!(!clone.write(0x71, &[1]));
    clone.insert(probe(0), 0x70, 2).unwrap();
}

struct Panicker;
impl BusDevice for Panicker {
    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        data.fill(0x42);
    }
    fn write(&mut self, _offset: u64, _data: &[u8]) {
        panic!("device bug");
    }
}

#[test]
fn poisoned_device_mutex_does_not_panic_callers() {
    let bus = Bus::new();
    bus.insert(Arc::new(Mutex::new(Panicker)), 0x505, 1)
        .unwrap();
    let b2 = bus.clone();
    let r = thread::spawn(move || b2.write(0x505, &[1])).join();
    assert!(r.is_err(), "the write panicked inside the device");
    let mut data = [0u8];
    assert!(bus.read(0x505, &mut data));
    assert_eq!(data, [0x42]);
    // The first recovery cleared the poison flag.
    let dev = bus.remove(0x505).unwrap();
    assert!(!dev.is_poisoned());
}

/// Counts every byte written at offset 0.
struct Counter(u64);
impl BusDevice for Counter {
    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        data.copy_from_slice(&self.0.to_le_bytes()[..data.len().min(8)]);
    }
    fn write(&mut self, _offset: u64, _data: &[u8]) {
        self.0 += 1;
    }
}

#[test]
fn concurrent_access_from_several_threads() {
    let bus = Bus::new();
    let counters: Vec<_> = (0..4).map(|_| Arc::new(Mutex::new(Counter(0)))).collect();
    for (i, c) in counters.iter().enumerate() {
        bus.insert(c.clone(), 0x1000 * i as u64, 8).unwrap();
    }
    let threads: Vec<_> = (0..4)
        .map(|t| {
            let bus = bus.clone();
            thread::spawn(move || {
                for n in 0..1000u64 {
                    let dev = (n + t) % 4;
                    assert!(bus.write(0x1000 * dev, &[1]));
                    let mut d = [0u8; 8];
                    assert!(bus.read(0x1000 * dev, &mut d));
                    // Inserting while others dispatch; these all overlap and fail.
                    assert!(bus.insert(probe(0), 0x1000 * dev + 4, 1).is_err());
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let total: u64 = counters.iter().map(|c| c.lock().unwrap().0).sum();
    assert_eq!(total, 4000);
    for c in &counters {
        assert_eq!(c.lock().unwrap().0, 1000);
    }
}
