use super::rtc::*;
use super::*;
use std::sync::atomic::{AtomicU64, Ordering};

fn rd(c: &mut Cmos, reg: u8) -> u8 {
    c.write(0, &[reg]);
    let mut b = [0u8];
    c.read(1, &mut b);
    b[0]
}

fn wr(c: &mut Cmos, reg: u8, v: u8) {
    c.write(0, &[reg]);
    c.write(1, &[v]);
}

fn from_bcd(v: u8) -> u64 {
    u64::from(v >> 4) * 10 + u64::from(v & 0x0f)
}

/// Days since 1970-01-01 of a civil date (the inverse direction of the device's
/// conversion, written independently as a cumulative day count).
fn days_from_civil(year: u64, month: u64, day: u64) -> u64 {
    let leap = |y: u64| (y.is_multiple_of(4) && !y.is_multiple_of(100)) || y.is_multiple_of(400);
    let mut days = (1970..year)
        .map(|y| if leap(y) { 366 } else { 365 })
        .sum::<u64>();
    let mdays = [
        31,
        if leap(year) { 29 } else { 28 },
        31,
        30,
        31,
        30,
        31,
        31,
        30,
        31,
        30,
        31,
    ];
    days += mdays.iter().take((month - 1) as usize).sum::<u64>();
    days + day - 1
}

/// A clock the test moves by hand.
fn fake_clock(start: u64) -> (Arc<AtomicU64>, CmosClock) {
    let t = Arc::new(AtomicU64::new(start));
    let t2 = t.clone();
    (
        t,
        Box::new(move || Duration::from_secs(t2.load(Ordering::SeqCst))),
    )
}

/// Reads the RTC date and time as seconds since the epoch, as Linux does: read all
/// fields, and read again if the seconds changed meanwhile.
fn read_rtc_secs(c: &mut Cmos) -> (u64, u64) {
    loop {
        let sec = rd(c, REG_SECONDS);
        let min = from_bcd(rd(c, REG_MINUTES));
        let hour = from_bcd(rd(c, REG_HOURS));
        let day = from_bcd(rd(c, REG_DAY));
        let month = from_bcd(rd(c, REG_MONTH));
        let year = from_bcd(rd(c, REG_CENTURY)) * 100 + from_bcd(rd(c, REG_YEAR));
        let weekday = u64::from(rd(c, REG_WEEKDAY));
        if rd(c, REG_SECONDS) == sec {
            let days = days_from_civil(year, month, day);
            let secs = days * 86_400 + hour * 3600 + min * 60 + from_bcd(sec);
            // 1970-01-01 was a Thursday, 5 with Sunday = 1.
            assert_eq!(weekday, (days + 4) % 7 + 1);
            return (secs, weekday);
        }
    }
}

#[test]
fn bcd_time_is_close_to_host_time() {
    let mut c = Cmos::new(256 * MIB, 0);
    let before = host_clock().as_secs();
    let (secs, _) = read_rtc_secs(&mut c);
    let after = host_clock().as_secs();
    assert!(
        (before..=after).contains(&secs),
        "rtc {secs} outside host [{before}, {after}]"
    );
    // Every byte is valid BCD.
    for reg in [
        REG_SECONDS,
        REG_MINUTES,
        REG_HOURS,
        REG_DAY,
        REG_MONTH,
        REG_YEAR,
    ] {
        let v = rd(&mut c, reg);
        assert!(v >> 4 <= 9 && v & 0xf <= 9, "register {reg:#x} = {v:#04x}");
    }
}

#[test]
fn fixed_clock_in_bcd_binary_and_12h() {
    // 2024-02-29 13:05:09 UTC, a Thursday.
    let (_, clock) = fake_clock(1_709_211_909);
    let mut c = Cmos::new(256 * MIB, 0).with_clock(clock);
    let fields = [
        REG_SECONDS,
        REG_MINUTES,
        REG_HOURS,
        REG_WEEKDAY,
        REG_DAY,
        REG_MONTH,
        REG_YEAR,
        REG_CENTURY,
    ];
    let bcd: Vec<u8> = fields.iter().map(|&r| rd(&mut c, r)).collect();
    assert_eq!(bcd, [0x09, 0x05, 0x13, 0x05, 0x29, 0x02, 0x24, 0x20]);
    wr(&mut c, REG_B, B_24H | B_DM_BINARY);
    let bin: Vec<u8> = fields.iter().map(|&r| rd(&mut c, r)).collect();
    assert_eq!(bin, [9, 5, 13, 5, 29, 2, 24, 20]);
    wr(&mut c, REG_B, 0); // BCD, 12-hour.
    assert_eq!(rd(&mut c, REG_HOURS), HOURS_PM | 0x01);
}

#[test]
fn ram_writes_stick_and_status_is_read_only() {
    let mut c = Cmos::new(256 * MIB, 0);
    wr(&mut c, 0x01, 0x30); // Seconds alarm: plain RAM.
    assert_eq!(rd(&mut c, 0x01), 0x30);
    wr(&mut c, 0x50, 0xab);
    assert_eq!(rd(&mut c, 0x50), 0xab);
    // Bit 7 of the index (NMI mask) is ignored.
    assert_eq!(rd(&mut c, 0x80 | 0x50), 0xab);
    wr(&mut c, REG_D, 0);
    assert_eq!(rd(&mut c, REG_D), D_VRT);
}

/// Reads the whole date and time in BCD: [sec, min, hour, day, month, year, century].
fn bcd_fields(c: &mut Cmos) -> [u8; 7] {
    [
        REG_SECONDS,
        REG_MINUTES,
        REG_HOURS,
        REG_DAY,
        REG_MONTH,
        REG_YEAR,
        REG_CENTURY,
    ]
    .map(|r| rd(c, r))
}

#[test]
fn guest_sets_clock_with_set_bit_and_it_keeps_running() {
    // Host: 2024-02-29 13:05:09 UTC.
    let (t, clock) = fake_clock(1_709_211_909);
    let mut c = Cmos::new(256 * MIB, 0).with_clock(clock);
    // Linux's sequence: raise SET, write the fields, drop SET.
    wr(&mut c, REG_B, B_24H | B_SET);
    for (reg, v) in [
        (REG_YEAR, 0x31),
        (REG_MONTH, 0x12),
        (REG_DAY, 0x31),
        (REG_HOURS, 0x23),
        (REG_MINUTES, 0x59),
        (REG_SECONDS, 0x58),
        (REG_CENTURY, 0x20),
    ] {
        wr(&mut c, reg, v);
    }
    // While SET is up the registers show the latched time and do not run.
    t.fetch_add(5, Ordering::SeqCst);
    assert_eq!(
        bcd_fields(&mut c),
        [0x58, 0x59, 0x23, 0x31, 0x12, 0x31, 0x20]
    );
    wr(&mut c, REG_B, B_24H);
    assert_eq!(
        bcd_fields(&mut c),
        [0x58, 0x59, 0x23, 0x31, 0x12, 0x31, 0x20]
    );
    // Two seconds later the clock has rolled into 2032.
    t.fetch_add(2, Ordering::SeqCst);
    assert_eq!(
        bcd_fields(&mut c),
        [0x00, 0x00, 0x00, 0x01, 0x01, 0x32, 0x20]
    );
    // 2032-01-01 is a Thursday (5).
    assert_eq!(rd(&mut c, REG_WEEKDAY), 5);
    // The offset is part of the state and survives a restore.
    let st = c.state();
    let (_, clock2) = fake_clock(1_709_211_909 + 7);
    let mut d = Cmos::new(0, 0).with_clock(clock2);
    d.set_state(&st);
    assert_eq!(
        bcd_fields(&mut d),
        [0x00, 0x00, 0x00, 0x01, 0x01, 0x32, 0x20]
    );
}

#[test]
fn field_write_without_set_takes_effect_at_once() {
    let (_, clock) = fake_clock(1_709_211_909); // 13:05:09
    let mut c = Cmos::new(256 * MIB, 0).with_clock(clock);
    wr(&mut c, REG_MINUTES, 0x45);
    assert_eq!(bcd_fields(&mut c)[..3], [0x09, 0x45, 0x13]);
    // 12-hour binary mode: 3 AM.
    wr(&mut c, REG_B, B_DM_BINARY);
    wr(&mut c, REG_HOURS, 3);
    assert_eq!(rd(&mut c, REG_HOURS), 3);
    wr(&mut c, REG_HOURS, HOURS_PM | 12); // 12 PM = noon.
    wr(&mut c, REG_B, B_24H | B_DM_BINARY);
    assert_eq!(rd(&mut c, REG_HOURS), 12);
    assert_eq!(rd(&mut c, REG_MINUTES), 45);
}

#[test]
fn invalid_times_are_not_committed() {
    let (_, clock) = fake_clock(1_709_211_909);
    let mut c = Cmos::new(256 * MIB, 0).with_clock(clock);
    let before = bcd_fields(&mut c);
    wr(&mut c, REG_SECONDS, 0x5a); // Not BCD.
    wr(&mut c, REG_HOURS, 0x24); // No hour 24.
    wr(&mut c, REG_DAY, 0x30); // February 30th.
    wr(&mut c, REG_MONTH, 0x13);
    wr(&mut c, REG_CENTURY, 0x19); // 1924: before the epoch.
    wr(&mut c, REG_B, 0); // 12-hour mode: hour 0 does not exist.
    wr(&mut c, REG_HOURS, 0x00);
    wr(&mut c, REG_B, B_24H);
    assert_eq!(bcd_fields(&mut c), before);
    // Same through the latch.
    wr(&mut c, REG_B, B_24H | B_SET);
    wr(&mut c, REG_DAY, 0x31);
    wr(&mut c, REG_B, B_24H);
    assert_eq!(bcd_fields(&mut c), before);
    assert_eq!(c.state().clock_offset_secs, 0);
}

#[test]
fn status_registers_a_b_d() {
    let mut c = Cmos::new(256 * MIB, 0);
    assert_eq!(rd(&mut c, REG_A), A_DEFAULT);
    assert_eq!(rd(&mut c, REG_B), B_24H);
    assert_eq!(rd(&mut c, REG_D), D_VRT);
    wr(&mut c, REG_A, 0xff);
    assert_eq!(rd(&mut c, REG_A) & A_UIP, 0, "UIP never reads set");
}

#[test]
fn register_c_sets_uf_per_second_and_clears_on_read() {
    let (t, clock) = fake_clock(1_000_000);
    let mut c = Cmos::new(256 * MIB, 0).with_clock(clock);
    assert_eq!(rd(&mut c, REG_C), 0);
    t.fetch_add(1, Ordering::SeqCst);
    assert_eq!(rd(&mut c, REG_C), C_UF);
    assert_eq!(rd(&mut c, REG_C), 0, "read clears");
    wr(&mut c, REG_B, B_24H | 0x10); // UIE
    t.fetch_add(5, Ordering::SeqCst);
    assert_eq!(rd(&mut c, REG_C), C_UF | C_IRQF);
    assert_eq!(rd(&mut c, REG_C), 0);
}

#[test]
fn memory_size_registers() {
    let below = 3 * 1024 * MIB; // 3 GiB
    let above = 5 * 1024 * MIB + 64 * KIB; // 5 GiB + 64 KiB
    let mut c = Cmos::new(below, above);
    let w = |c: &mut Cmos, r: u8| u64::from(rd(c, r)) | u64::from(rd(c, r + 1)) << 8;
    assert_eq!(w(&mut c, 0x34), (below - 16 * MIB) / (64 * KIB));
    assert_eq!(w(&mut c, 0x15), 640);
    assert_eq!(w(&mut c, 0x30), 0xffff);
    assert_eq!(w(&mut c, 0x17), 0xffff);
    let high = w(&mut c, 0x5b) | u64::from(rd(&mut c, 0x5d)) << 16;
    assert_eq!(high, above / (64 * KIB));

    let mut small = Cmos::new(8 * MIB, 0);
    assert_eq!(w(&mut small, 0x34), 0);
    assert_eq!(w(&mut small, 0x30), 7 * 1024);
    // Huge sizes saturate instead of wrapping.
    let mut huge = Cmos::new(u64::MAX, u64::MAX);
    assert_eq!(w(&mut huge, 0x34), 0xffff);
    assert_eq!(
        w(&mut huge, 0x5b) | u64::from(rd(&mut huge, 0x5d)) << 16,
        0xff_ffff
    );
}

#[test]
fn bad_accesses_are_ignored_and_counted() {
    let mut c = Cmos::new(256 * MIB, 0);
    wr(&mut c, 0x40, 0x11);
    c.write(0, &[0x40, 0x41]);
    c.write(1, &[0x22, 0x22]);
    c.write(2, &[0x22]);
    let mut two = [0u8; 2];
    c.read(0, &mut two);
    assert_eq!(two, [0xff, 0xff]);
    let mut one = [0u8];
    c.read(5, &mut one);
    assert_eq!(one, [0xff]);
    c.read(0, &mut one);
    assert_eq!(one, [0xff], "index register is write-only");
    assert_eq!(rd(&mut c, 0x40), 0x11);
    assert_eq!(c.metrics().bad_access_count(), 5);
}

#[test]
fn state_round_trip() {
    let mut c = Cmos::new(256 * MIB, 0);
    wr(&mut c, 0x40, 0x99);
    let st = c.state();
    let mut d = Cmos::new(0, 0);
    d.set_state(&CmosState {
        index: 0xc0,
        ..st.clone()
    });
    assert_eq!(d.state().index, 0x40);
    assert_eq!(rd(&mut d, 0x40), 0x99);
    assert_eq!(d.state().ram, st.ram);
}
