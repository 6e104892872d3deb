use super::*;

fn ids() -> PciIds {
    PciIds {
        vendor: 0x1af4,
        device: 0x1042,
        revision: 1,
        class: 0x01_80_00,
        subsystem_vendor: 0x1af4,
        subsystem: 0x40,
    }
}

fn write32(c: &mut PciConfig, off: usize, v: u32) {
    c.write(off, &v.to_le_bytes());
}

#[test]
fn header_fields_and_read_only_ids() {
    let mut c = PciConfig::new(ids());
    assert_eq!(c.u32_at(0), 0x1042_1af4);
    assert_eq!(c.u32_at(0x08), 0x0180_0001);
    write32(&mut c, 0, 0xdead_beef);
    write32(&mut c, 0x08, 0);
    assert_eq!(c.u32_at(0), 0x1042_1af4);
    assert_eq!(c.u32_at(0x08), 0x0180_0001);
    // Command: only I/O, memory, bus master and INTx disable stick.
    c.write(COMMAND, &0xffffu16.to_le_bytes());
    assert_eq!(c.u16_at(COMMAND), 0x0407);
    assert!(c.memory_enabled());
}

#[test]
fn bar32_sizing_and_programming() {
    let mut c = PciConfig::new(ids());
    let info = BarInfo {
        size: 0x4000,
        kind: BarKind::Mem32,
    };
    c.add_bar(1, info, 0xc000_4000).unwrap();
    assert_eq!(c.bar_address(1), Some(0xc000_4000));
    let off = BAR0 + 4;
    write32(&mut c, off, 0xffff_ffff);
    assert_eq!(c.u32_at(off), !(0x4000u32 - 1));
    write32(&mut c, off, 0xd000_0000);
    assert_eq!(c.bar_address(1), Some(0xd000_0000));
    // Unaligned bits are dropped.
    write32(&mut c, off, 0xd000_1234);
    assert_eq!(c.bar_address(1), Some(0xd000_0000));
}

#[test]
fn bar64_sizing_reads_type_and_upper_mask() {
    let mut c = PciConfig::new(ids());
    let info = BarInfo {
        size: 0x1_0000,
        kind: BarKind::Mem64,
    };
    c.add_bar(0, info, 0xc001_0000).unwrap();
    assert_eq!(c.u32_at(BAR0) & 0xf, 0x4, "64-bit memory type");
    write32(&mut c, BAR0, 0xffff_ffff);
    write32(&mut c, BAR0 + 4, 0xffff_ffff);
    assert_eq!(c.u32_at(BAR0), 0xffff_0004);
    assert_eq!(c.u32_at(BAR0 + 4), 0xffff_ffff);
    write32(&mut c, BAR0, 0xe123_0000);
    write32(&mut c, BAR0 + 4, 0x0000_0010);
    assert_eq!(c.bar_address(0), Some(0x10_e123_0000));
    // The upper half is not a BAR of its own.
    assert_eq!(c.bar(1), None);
    assert!(c.add_bar(1, info, 0).is_err());
}

#[test]
fn bad_bars_are_refused() {
    let mut c = PciConfig::new(ids());
    let mem32 = |size| BarInfo {
        size,
        kind: BarKind::Mem32,
    };
    assert!(matches!(
        c.add_bar(6, mem32(0x1000), 0),
        Err(ConfigError::BarSlot { .. })
    ));
    assert!(matches!(
        c.add_bar(0, mem32(0x1800), 0),
        Err(ConfigError::BarSize { .. })
    ));
    assert!(matches!(
        c.add_bar(0, mem32(0x10), 0),
        Err(ConfigError::BarSize { .. })
    ));
    assert!(matches!(
        c.add_bar(0, mem32(0x2000), 0x1000),
        Err(ConfigError::BarAddress { .. })
    ));
    assert!(matches!(
        c.add_bar(0, mem32(0x2000), 0x1_0000_0000),
        Err(ConfigError::BarAddress { .. })
    ));
    let mem64 = BarInfo {
        size: 0x1000,
        kind: BarKind::Mem64,
    };
    assert!(matches!(
        c.add_bar(5, mem64, 0),
        Err(ConfigError::BarSlot { .. })
    ));
    c.add_bar(0, mem32(0x1000), 0).unwrap();
    assert!(matches!(
        c.add_bar(0, mem32(0x1000), 0),
        Err(ConfigError::BarSlot { .. })
    ));
}

#[test]
fn capability_walk_finds_each_in_order() {
    let mut c = PciConfig::new(ids());
    assert_eq!(c.u16_at(STATUS) & STATUS_CAP_LIST, 0);
    let a = c.add_capability(&[0x09, 0xaa, 16, 1], &[]).unwrap();
    let b = c
        .add_capability(&[0x11, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0], &[])
        .unwrap();
    let d = c.add_capability(&[0x09, 0, 16, 2, 0], &[]).unwrap();
    assert_eq!(c.u16_at(STATUS) & STATUS_CAP_LIST, STATUS_CAP_LIST);
    assert_eq!(usize::from(c.u16_at(CAP_PTR) as u8), a);
    assert_eq!(c.find_capabilities(0x09), vec![a, d]);
    assert_eq!(c.find_capabilities(0x11), vec![b]);
    assert!(b.is_multiple_of(4) && d.is_multiple_of(4) && a < b && b < d);
    // The next pointer of the last one is 0; the given one was overwritten.
    let mut next = [0u8];
    c.read(d + 1, &mut next);
    assert_eq!(next[0], 0);
    c.read(a + 1, &mut next);
    assert_eq!(usize::from(next[0]), b);
    // Capabilities are read-only unless the mask says otherwise.
    c.write(a + 3, &[7]);
    c.read(a + 3, &mut next);
    assert_eq!(next[0], 1);
}

#[test]
fn capability_space_runs_out() {
    let mut c = PciConfig::new(ids());
    let big = vec![0x09u8; 90];
    c.add_capability(&big, &[]).unwrap();
    c.add_capability(&big, &[]).unwrap();
    assert!(matches!(
        c.add_capability(&big, &[]),
        Err(ConfigError::CapabilitySpace { len: 90 })
    ));
}

#[test]
fn hostile_accesses_never_panic() {
    let mut c = PciConfig::new(ids());
    let mut buf = [0u8; 4];
    for off in [255, 256, 4092, 4093, 4095, 4096, usize::MAX - 1, usize::MAX] {
        c.read(off, &mut buf);
        c.write(off, &[0xff; 4]);
    }
    c.read(4096, &mut buf);
    assert_eq!(buf, [0xff; 4], "outside the extended space");
    c.read(0x100, &mut buf);
    assert_eq!(buf, [0; 4], "extended space reads zero");
    assert!(!c.write(usize::MAX, &[1]));
    assert_eq!(c.u32_at(0), 0x1042_1af4);
}

#[test]
fn looping_capability_list_ends() {
    let mut c = PciConfig::new(ids());
    let a = c.add_capability(&[0x09, 0, 4, 0], &[]).unwrap();
    // Make the capability point at itself, as a corrupt device might.
    c.set_u16(a, u16::from_le_bytes([0x09, a as u8]));
    assert_eq!(c.find_capabilities(0x09).len(), 48);
}
