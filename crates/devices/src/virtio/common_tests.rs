use super::*;

fn w(c: &mut CommonConfig, off: u64, v: u64, len: usize) -> StatusAction {
    c.write(off, &v.to_le_bytes()[..len])
}

fn r(c: &CommonConfig, off: u64, len: usize) -> u64 {
    let mut b = [0u8; 8];
    c.read(off, &mut b[..len]);
    u64::from_le_bytes(b)
}

#[test]
fn device_features_are_read_by_word() {
    let c = CommonConfig::new(&[8, 16], F_VERSION_1 | 0x6, 3);
    assert_eq!(r(&c, 0x04, 4), 0x6);
    let mut c = c;
    w(&mut c, 0x00, 1, 4);
    assert_eq!(r(&c, 0x04, 4), 1);
    w(&mut c, 0x00, 2, 4);
    assert_eq!(r(&c, 0x04, 4), 0);
    assert_eq!(r(&c, 0x12, 2), 2);
    w(&mut c, 0x16, 1, 2);
    assert_eq!(r(&c, 0x18, 2), 16, "queue size starts at its maximum");
    assert_eq!(r(&c, 0x1e, 2), 1, "notify offset is the queue index");
}

#[test]
fn status_state_machine() {
    let mut c = CommonConfig::new(&[8], F_VERSION_1, 2);
    assert_eq!(w(&mut c, 0x14, 1, 1), StatusAction::None);
    assert_eq!(w(&mut c, 0x14, 3, 1), StatusAction::None);
    w(&mut c, 0x08, 1, 4);
    w(&mut c, 0x0c, 1, 4);
    w(&mut c, 0x14, 0xb, 1);
    assert_eq!(c.status(), 0xb);
    // Clearing a bit is refused.
    w(&mut c, 0x14, 0x9, 1);
    assert_eq!(c.status(), 0xb);
    assert_eq!(w(&mut c, 0x14, 0xf, 1), StatusAction::Activate);
    assert!(c.driver_ok());
    // Setting DRIVER_OK again does not activate twice.
    assert_eq!(w(&mut c, 0x14, 0xf, 1), StatusAction::None);
    assert_eq!(w(&mut c, 0x14, 0, 1), StatusAction::Reset);
    c.reset();
    assert_eq!(c.status(), 0);
    assert_eq!(c.driver_features(), 0);
}

#[test]
fn vectors_beyond_the_table_read_as_no_vector() {
    let mut c = CommonConfig::new(&[8], F_VERSION_1, 2);
    w(&mut c, 0x10, 1, 2);
    assert_eq!(r(&c, 0x10, 2), 1);
    w(&mut c, 0x10, 2, 2);
    assert_eq!(r(&c, 0x10, 2), u64::from(NO_VECTOR));
    w(&mut c, 0x1a, 5, 2);
    assert_eq!(r(&c, 0x1a, 2), u64::from(NO_VECTOR));
    w(&mut c, 0x1a, 0, 2);
    assert_eq!(c.queue_vectors()[0].load(Ordering::SeqCst), 0);
}

#[test]
fn bad_queue_size_and_odd_accesses_are_refused() {
    let mut c = CommonConfig::new(&[8], F_VERSION_1, 2);
    w(&mut c, 0x18, 3, 2); // not a power of two
    w(&mut c, 0x18, 16, 2); // above the maximum
    assert_eq!(r(&c, 0x18, 2), 8);
    w(&mut c, 0x18, 0x1234, 1); // wrong size
    w(&mut c, 0x99, 1, 4); // unknown register
    assert_eq!(c.stats().refused_writes, 4);
    assert_eq!(r(&c, 0x14, 2), 0, "wrong-size read answers zero");
}
