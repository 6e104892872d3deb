//! The platform's legacy devices, on the port I/O bus, with their interrupts wired to KVM.

use std::io::Write;
use std::sync::{Arc, Mutex};

use devices::legacy::{AcpiPm, Cmos, PvPanic, Serial, I8042};
use devices::{Bus, BusDevice, GuestEventSink, Interrupt, IrqLine};
use vmm_sys_util::eventfd::EventFd;

use crate::console::PanicCatcher;
use crate::exit::ExitSignal;
use crate::Error;

const SERIAL_BASE: u64 = 0x3f8;
const SERIAL_IRQ: u32 = 4;
const I8042_BASE: u64 = 0x60;
const I8042_IRQ: u32 = 1;
const I8042_AUX_IRQ: u32 = 12;
const CMOS_BASE: u64 = 0x70;
const PVPANIC_PORT: u64 = 0x505;
const ACPI_PM_BASE: u64 = 0x600;
const ACPI_SCI_IRQ: u32 = 9;

/// The devices the VMM talks to after boot.
pub struct PlatformDevices {
    pub serial: Arc<Mutex<Serial>>,
    pub acpi_pm: Arc<Mutex<AcpiPm>>,
    panic: PanicCatcher,
}

impl PlatformDevices {
    /// The console line in which the guest kernel said why it panicked, if one was seen.
    pub fn panic_line(&self) -> Option<String> {
        self.panic.line()
    }
}

/// A level-triggered IOAPIC pin driven with KVM_IRQ_LINE.
struct KvmIrqLine {
    vm: Arc<hypervisor::Vm>,
    gsi: u32,
}

impl IrqLine for KvmIrqLine {
    fn set_level(&self, high: bool) -> std::io::Result<()> {
        self.vm
            .set_irq_line(self.gsi, high)
            .map_err(std::io::Error::other)
    }
}

/// An edge interrupt: an eventfd registered as KVM irqfd for `gsi`.
fn irqfd(vm: &hypervisor::Vm, gsi: u32) -> Result<Arc<dyn Interrupt>, Error> {
    let evt = EventFd::new(libc::EFD_NONBLOCK).map_err(|e| Error::Device {
        name: "irqfd",
        reason: e.to_string(),
    })?;
    vm.register_irqfd(&evt, gsi)?;
    Ok(Arc::new(evt))
}

fn insert<D: BusDevice + 'static>(
    bus: &Bus,
    name: &'static str,
    dev: Arc<Mutex<D>>,
    base: u64,
    len: u64,
) -> Result<(), Error> {
    bus.insert(dev, base, len).map_err(|e| Error::Device {
        name,
        reason: e.to_string(),
    })
}

/// Creates the UART, i8042, CMOS RTC, pvpanic and ACPI PM block on `io`.
pub fn create(
    vm: &Arc<hypervisor::Vm>,
    io: &Bus,
    exit: Arc<ExitSignal>,
    console: Box<dyn Write + Send>,
    mem_below_4g: u64,
    mem_above_4g: u64,
) -> Result<PlatformDevices, Error> {
    let events: Arc<dyn GuestEventSink> = exit;
    let panic = PanicCatcher::default();
    let out = Box::new(panic.wrap(console));
    let serial = Arc::new(Mutex::new(Serial::new(irqfd(vm, SERIAL_IRQ)?, out)));
    insert(io, "serial", serial.clone(), SERIAL_BASE, 8)?;
    let i8042 =
        I8042::new(irqfd(vm, I8042_IRQ)?, events.clone()).with_aux_irq(irqfd(vm, I8042_AUX_IRQ)?);
    let i8042 = Arc::new(Mutex::new(i8042));
    insert(io, "i8042", i8042, I8042_BASE, 5)?;
    let cmos = Arc::new(Mutex::new(Cmos::new(mem_below_4g, mem_above_4g)));
    insert(io, "cmos", cmos, CMOS_BASE, 2)?;
    let pvpanic = Arc::new(Mutex::new(PvPanic::new(events.clone())));
    insert(io, "pvpanic", pvpanic, PVPANIC_PORT, 1)?;
    let sci: Arc<dyn IrqLine> = Arc::new(KvmIrqLine {
        vm: vm.clone(),
        gsi: ACPI_SCI_IRQ,
    });
    let acpi_pm = Arc::new(Mutex::new(AcpiPm::new(sci, events)));
    insert(io, "acpi-pm", acpi_pm.clone(), ACPI_PM_BASE, 9)?;
    Ok(PlatformDevices {
        serial,
        acpi_pm,
        panic,
    })
}
