//! The legacy devices on one port-I/O bus at the ports of docs/architecture.md, driven the
//! way a guest drives them: through `Bus::read` / `Bus::write` only.

use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use devices::legacy::{
    AcpiPm, Cmos, PvPanic, Serial, CMOS_BASE, CMOS_LEN, I8042, I8042_BASE, I8042_LEN, PM_BASE,
    PM_LEN, PVPANIC_BASE, PVPANIC_LEN, SERIAL_BASE, SERIAL_LEN,
};
use devices::{Bus, GuestEvent, GuestEventSink, Interrupt, IrqLine};

#[derive(Default)]
struct Count(AtomicU64);
impl Interrupt for Count {
    fn trigger(&self) -> std::io::Result<()> {
        self.0.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }
}

#[derive(Default)]
struct Level(Mutex<Option<bool>>);
impl IrqLine for Level {
    fn set_level(&self, high: bool) -> std::io::Result<()> {
        *self.0.lock().unwrap() = Some(high);
        Ok(())
    }
}

#[derive(Default)]
struct Events(Mutex<Vec<GuestEvent>>);
impl GuestEventSink for Events {
    fn notify(&self, event: GuestEvent) {
        self.0.lock().unwrap().push(event);
    }
}

#[derive(Clone, Default)]
struct Out(Arc<Mutex<Vec<u8>>>);
impl Write for Out {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

struct Platform {
    io: Bus,
    events: Arc<Events>,
    sci: Arc<Level>,
    out: Out,
    pm: Arc<Mutex<AcpiPm>>,
}

fn platform() -> Platform {
    let io = Bus::new();
    let events = Arc::new(Events::default());
    let sci = Arc::new(Level::default());
    let out = Out::default();
    let serial = Serial::new(Arc::new(Count::default()), Box::new(out.clone()));
    io.insert(Arc::new(Mutex::new(serial)), SERIAL_BASE, SERIAL_LEN)
        .unwrap();
    let i8042 = I8042::new(Arc::new(Count::default()), events.clone())
        .with_aux_irq(Arc::new(Count::default()));
    io.insert(Arc::new(Mutex::new(i8042)), I8042_BASE, I8042_LEN)
        .unwrap();
    let cmos = Cmos::new(512 << 20, 0);
    io.insert(Arc::new(Mutex::new(cmos)), CMOS_BASE, CMOS_LEN)
        .unwrap();
    let pvpanic = PvPanic::new(events.clone());
    io.insert(Arc::new(Mutex::new(pvpanic)), PVPANIC_BASE, PVPANIC_LEN)
        .unwrap();
    let pm = Arc::new(Mutex::new(AcpiPm::new(sci.clone(), events.clone())));
    io.insert(pm.clone(), PM_BASE, PM_LEN).unwrap();
    Platform {
        io,
        events,
        sci,
        out,
        pm,
    }
}

impl Platform {
    fn inb(&self, port: u64) -> Option<u8> {
        let mut b = [0u8];
        self.io.read(port, &mut b).then_some(b[0])
    }
    fn outb(&self, port: u64, v: u8) -> bool {
        self.io.write(port, &[v])
    }
    fn inw(&self, port: u64) -> Option<u16> {
        let mut b = [0u8; 2];
        self.io.read(port, &mut b).then(|| u16::from_le_bytes(b))
    }
    fn outw(&self, port: u64, v: u16) -> bool {
        self.io.write(port, &v.to_le_bytes())
    }
    fn events(&self) -> Vec<GuestEvent> {
        self.events.0.lock().unwrap().clone()
    }
}

#[test]
fn ports_match_the_architecture_document() {
    assert_eq!((SERIAL_BASE, SERIAL_LEN), (0x3f8, 8));
    assert_eq!((I8042_BASE, I8042_LEN), (0x60, 5));
    assert_eq!((CMOS_BASE, CMOS_LEN), (0x70, 2));
    assert_eq!((PVPANIC_BASE, PVPANIC_LEN), (0x505, 1));
    assert_eq!((PM_BASE, PM_LEN), (0x600, 9));
}

#[test]
fn guest_view_through_the_bus() {
    let p = platform();
    // Serial output.
    for &c in b"ok" {
        assert!(p.outb(0x3f8, c));
    }
    assert_eq!(*p.out.0.lock().unwrap(), b"ok");
    // i8042 self-test.
    assert!(p.outb(0x64, 0xaa));
    assert_eq!(p.inb(0x64).unwrap() & 1, 1);
    assert_eq!(p.inb(0x60), Some(0x55));
    // CMOS register D and A.
    p.outb(0x70, 0x0d);
    assert_eq!(p.inb(0x71), Some(0x80));
    p.outb(0x70, 0x0a);
    assert_eq!(p.inb(0x71).unwrap() & 0x80, 0);
    // pvpanic capabilities.
    assert_eq!(p.inb(0x505), Some(0x03));
    // ACPI: SCI_EN set, power button through the SCI.
    assert_eq!(p.inw(0x604).unwrap() & 1, 1);
    p.outw(0x602, 1 << 8);
    p.pm.lock().unwrap().press_power_button();
    assert_eq!(*p.sci.0.lock().unwrap(), Some(true));
    p.outw(0x600, 1 << 8);
    assert_eq!(*p.sci.0.lock().unwrap(), Some(false));
    // Nothing mapped: the caller answers 0xff.
    assert_eq!(p.inb(0x80), None);
    assert_eq!(p.inb(0x609), None);
    assert_eq!(p.inw(0x3ff), None, "straddles the end of the UART");
    assert!(p.events().is_empty());
}

#[test]
fn guest_events_through_the_bus() {
    let p = platform();
    p.outb(0x64, 0xfe);
    p.outb(0x505, 0x01);
    p.outw(0x604, (5 << 10) | (1 << 13));
    p.outb(0x608, 0x06);
    assert_eq!(
        p.events(),
        vec![
            GuestEvent::Reboot,
            GuestEvent::Panic,
            GuestEvent::PowerOff,
            GuestEvent::Reboot
        ]
    );
}

/// xorshift64*: a small deterministic generator for the access storm.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
}

/// Random sizes, ports and values on every device: nothing may panic, and the bus must
/// answer exactly for accesses that fit in one device's range.
#[test]
fn random_access_storm_never_panics() {
    let p = platform();
    let ranges = [
        (SERIAL_BASE, SERIAL_LEN),
        (I8042_BASE, I8042_LEN),
        (CMOS_BASE, CMOS_LEN),
        (PVPANIC_BASE, PVPANIC_LEN),
        (PM_BASE, PM_LEN),
    ];
    let mut rng = Rng(0x1234_5678_9abc_def1);
    for _ in 0..200_000 {
        let r = rng.next();
        let (base, len) = ranges[(r % 5) as usize];
        let port = (base + (r >> 8) % (len + 2)).saturating_sub(1);
        let size = [0usize, 1, 2, 3, 4, 8][((r >> 16) % 6) as usize];
        let mut data = (r >> 24).to_le_bytes();
        let data = &mut data[..size];
        let fits = size > 0 && port >= base && port + size as u64 <= base + len;
        let handled = if r & (1 << 63) != 0 {
            p.io.write(port, data)
        } else {
            p.io.read(port, data)
        };
        assert_eq!(handled, fits, "port {port:#x} size {size}");
    }
}
