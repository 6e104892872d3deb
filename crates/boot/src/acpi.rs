//! ACPI tables for the fixed-feature hardware model of docs/architecture.md: RSDP (rev 2),
//! XSDT, FADT (+ FACS, DSDT) and MADT, written to the [`ACPI_START`] area.

use acpi_tables::aml::{
    AddressSpace as AmlSpace, AddressSpaceCacheable, Device, EISAName, Memory32Fixed, Name,
    Package, Path, ResourceTemplate, Scope, IO,
};
use acpi_tables::facs::FACS;
use acpi_tables::fadt::{FADTBuilder, Flags};
use acpi_tables::gas::{AccessSize, AddressSpace, GAS};
use acpi_tables::madt::{EnabledStatus, IoApic, ProcessorLocalApic};
use acpi_tables::rsdp::Rsdp;
use acpi_tables::sdt::Sdt;
use acpi_tables::xsdt::XSDT;
use acpi_tables::Aml;
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryError};

use crate::layout::{
    ACPI_SIZE, ACPI_START, ECAM_SIZE, ECAM_START, IOAPIC_START, LAPIC_START, PCI_MMIO32_SIZE,
    PCI_MMIO32_START,
};

/// SLP_TYP value of S5 (soft off) in the DSDT's `\_S5` package.
pub const SLP_TYP_S5: u16 = 5;
/// SCI interrupt (ISA IRQ 9, level, active high).
pub const SCI_IRQ: u8 = 9;
/// PM1a event block (PM1_STS, PM1_EN).
pub const PM1A_EVT_PORT: u16 = 0x600;
/// PM1a event block length.
pub const PM1_EVT_LEN: u8 = 4;
/// PM1a control block (SCI_EN, SLP_TYP, SLP_EN).
pub const PM1A_CNT_PORT: u16 = 0x604;
/// PM1a control block length.
pub const PM1_CNT_LEN: u8 = 2;
/// CMOS RAM index of the century byte.
pub const CMOS_CENTURY: u8 = 0x32;
/// ACPI reset register (SystemIO).
pub const RESET_PORT: u16 = 0x608;
/// Value the guest writes to [`RESET_PORT`] to reset.
pub const RESET_VALUE: u8 = 0x06;
/// pvpanic port (`QEMU0001`).
pub const PVPANIC_PORT: u16 = 0x505;
/// PCI configuration mechanism #1 ports (0xCF8 address, 0xCFC data).
pub const PCI_CONFIG_PORT: u16 = 0xcf8;
/// First port of the PCI host bridge's I/O window (everything above the config ports).
pub const PCI_IO_WINDOW_START: u16 = 0x0d00;
/// Most vCPUs: xAPIC IDs 0..=254 (255 is the broadcast ID).
pub const MAX_CPUS: u8 = 254;

/// IAPC_BOOT_ARCH: legacy (LPC/ISA) devices exist.
pub const IAPC_LEGACY_DEVICES: u16 = 1 << 0;
/// IAPC_BOOT_ARCH: an 8042 keyboard controller exists.
pub const IAPC_8042: u16 = 1 << 1;
/// IAPC_BOOT_ARCH: no VGA, do not probe it.
pub const IAPC_VGA_NOT_PRESENT: u16 = 1 << 2;
/// IAPC_BOOT_ARCH: no CMOS RTC (never set by thinvm).
pub const IAPC_CMOS_RTC_NOT_PRESENT: u16 = 1 << 5;

const OEM_ID: [u8; 6] = *b"THINVM";
const OEM_REVISION: u32 = 1;
const MADT_PCAT_COMPAT: u32 = 1;

/// Why the ACPI tables could not be created.
#[derive(Debug, thiserror::Error)]
pub enum AcpiError {
    /// The vCPU count is 0 or above [`MAX_CPUS`].
    #[error("cannot describe {cpus} vCPUs in the MADT (1..={MAX_CPUS})")]
    BadCpuCount {
        /// Requested count.
        cpus: u8,
    },
    /// The tables outgrow their area.
    #[error(
        "ACPI table {signature} ({len} bytes) does not fit in {ACPI_START:#x}..+{ACPI_SIZE:#x}"
    )]
    TooLarge {
        /// The table that did not fit.
        signature: &'static str,
        /// Its length.
        len: usize,
    },
    /// Guest memory write failed.
    #[error("cannot write ACPI table {signature} at {addr:#x}: {source}")]
    Write {
        /// The table.
        signature: &'static str,
        /// Its address.
        addr: u64,
        /// The memory error.
        source: GuestMemoryError,
    },
}

/// Bump allocator over the ACPI area.
struct Area {
    next: u64,
}

impl Area {
    fn alloc(&mut self, signature: &'static str, len: usize, align: u64) -> Result<u64, AcpiError> {
        let too_large = AcpiError::TooLarge { signature, len };
        let addr = self.next.checked_next_multiple_of(align).ok_or(too_large)?;
        let end = addr
            .checked_add(len as u64)
            .filter(|&e| e <= ACPI_START + ACPI_SIZE);
        self.next = end.ok_or(AcpiError::TooLarge { signature, len })?;
        Ok(addr)
    }
}

fn bytes_of(table: &dyn Aml) -> Vec<u8> {
    let mut v = Vec::new();
    table.to_aml_bytes(&mut v);
    v
}

fn write<M: GuestMemoryBackend>(
    mem: &M,
    area: &mut Area,
    signature: &'static str,
    bytes: &[u8],
    align: u64,
) -> Result<u64, AcpiError> {
    let addr = area.alloc(signature, bytes.len(), align)?;
    mem.write_slice(bytes, GuestAddress(addr))
        .map_err(|source| AcpiError::Write {
            signature,
            addr,
            source,
        })?;
    Ok(addr)
}

/// Writes all tables for `cpus` vCPUs; returns the RSDP address (= [`ACPI_START`]).
pub fn create_acpi_tables<M: GuestMemoryBackend>(
    mem: &M,
    cpus: u8,
) -> Result<GuestAddress, AcpiError> {
    if cpus == 0 || cpus > MAX_CPUS {
        return Err(AcpiError::BadCpuCount { cpus });
    }
    let mut area = Area { next: ACPI_START };
    let rsdp_addr = area.alloc("RSDP", Rsdp::len(), 16)?;
    let dsdt = write(mem, &mut area, "DSDT", &dsdt(), 16)?;
    let facs = write(mem, &mut area, "FACS", &bytes_of(&FACS::new()), 64)?;
    let fadt = write(mem, &mut area, "FACP", &bytes_of(&fadt(dsdt, facs)), 16)?;
    let madt = write(mem, &mut area, "APIC", &madt(cpus), 16)?;
    let mcfg = write(mem, &mut area, "MCFG", &mcfg(), 16)?;
    let mut xsdt = XSDT::new(OEM_ID, *b"THINXSDT", OEM_REVISION);
    xsdt.add_entry(fadt);
    xsdt.add_entry(madt);
    xsdt.add_entry(mcfg);
    let xsdt = write(mem, &mut area, "XSDT", &bytes_of(&xsdt), 16)?;
    let rsdp = Rsdp::new(OEM_ID, xsdt);
    mem.write_slice(&bytes_of(&rsdp), GuestAddress(rsdp_addr))
        .map_err(|source| AcpiError::Write {
            signature: "RSDP",
            addr: rsdp_addr,
            source,
        })?;
    Ok(GuestAddress(rsdp_addr))
}

fn io_gas(bits: u8, access: AccessSize, port: u16) -> GAS {
    GAS::new(AddressSpace::SystemIo, bits, 0, access, port.into())
}

fn fadt(dsdt: u64, facs: u64) -> acpi_tables::fadt::FADT {
    let mut f = FADTBuilder::new(OEM_ID, *b"THINFACP", OEM_REVISION)
        .dsdt_64(dsdt)
        .firmware_ctrl_64(facs)
        .flag(Flags::Wbinvd)
        .flag(Flags::ProcC1)
        .flag(Flags::SlpButton) // no sleep button; PwrButton clear = fixed power button
        .flag(Flags::ResetRegSup);
    f.sci_int = u16::from(SCI_IRQ).into();
    f.pm1a_evt_blk = u32::from(PM1A_EVT_PORT).into();
    f.pm1a_cnt_blk = u32::from(PM1A_CNT_PORT).into();
    f.pm1_evt_len = PM1_EVT_LEN;
    f.pm1_cnt_len = PM1_CNT_LEN;
    f.x_pm1a_evt_blk = io_gas(PM1_EVT_LEN * 8, AccessSize::WordAccess, PM1A_EVT_PORT);
    f.x_pm1a_cnt_blk = io_gas(PM1_CNT_LEN * 8, AccessSize::WordAccess, PM1A_CNT_PORT);
    f.iapc_boot_arch = (IAPC_LEGACY_DEVICES | IAPC_8042 | IAPC_VGA_NOT_PRESENT).into();
    f.reset_reg = io_gas(8, AccessSize::ByteAccess, RESET_PORT);
    f.reset_value = RESET_VALUE;
    // CMOS register that holds the century (Linux reads it only when the FADT names it).
    f.century = CMOS_CENTURY;
    f.finalize()
}

/// MADT interrupt source override (type 2): ISA `source` -> `gsi` with MPS INTI `flags`.
fn interrupt_override(source: u8, gsi: u32, flags: u16) -> Vec<u8> {
    let mut v = vec![2, 10, 0, source];
    v.extend_from_slice(&gsi.to_le_bytes());
    v.extend_from_slice(&flags.to_le_bytes());
    v
}

/// MPS INTI flags: active high (polarity 01), level triggered (trigger 11).
const INTI_LEVEL_HIGH: u16 = 0b1101;

fn madt(cpus: u8) -> Vec<u8> {
    let mut madt = Sdt::new(*b"APIC", 44, 5, OEM_ID, *b"THINAPIC", OEM_REVISION);
    madt.write_u32(36, LAPIC_START as u32);
    madt.write_u32(40, MADT_PCAT_COMPAT);
    for id in 0..cpus {
        madt.append_slice(&bytes_of(&ProcessorLocalApic::new(
            id,
            id,
            EnabledStatus::Enabled,
        )));
    }
    madt.append_slice(&bytes_of(&IoApic::new(0, IOAPIC_START as u32, 0)));
    // No override for IRQ0: KVM's in-kernel PIT raises GSI 0, which KVM's default routing sends
    // to IOAPIC pin 0 (not pin 2 as on real chipsets), so the identity mapping is the true one.
    madt.append_slice(&interrupt_override(
        SCI_IRQ,
        u32::from(SCI_IRQ),
        INTI_LEVEL_HIGH,
    ));
    // Local APIC NMI (type 4): all processors (0xff), flags "conforms", LINT1.
    madt.append_slice(&[4, 6, 0xff, 0, 0, 1]);
    madt.as_slice().to_vec()
}

/// MCFG: one ECAM allocation, segment 0, bus 0 only. Naming more buses than exist costs boot
/// time: Linux sets its last PCI bus from MCFG and probes every device slot of every bus up to
/// it (8,160 config reads, each a VM exit, for buses 1..=255: 1.4 s in the nested testbed).
fn mcfg() -> Vec<u8> {
    let mut t = Sdt::new(*b"MCFG", 44, 1, OEM_ID, *b"THINMCFG", OEM_REVISION);
    let mut entry = Vec::with_capacity(16);
    entry.extend_from_slice(&ECAM_START.to_le_bytes());
    entry.extend_from_slice(&0u16.to_le_bytes()); // PCI segment group
    entry.push(0); // start bus
    entry.push(0); // end bus: only bus 0 exists (Linux probes every bus MCFG names)
    entry.extend_from_slice(&[0; 4]);
    t.append_slice(&entry);
    t.as_slice().to_vec()
}

/// The PCI host bridge `\_SB.PCI0` (PCIe `PNP0A08`, compatible `PNP0A03`): bus 0, the config
/// ports, the I/O window above them and the 32-bit MMIO window where the VMM puts BARs. No
/// `_PRT`: thinvm's PCI devices interrupt by MSI-X only. No `_OSC`: Linux then leaves the PCIe
/// native features (hotplug, AER) to the platform, which has none; MSI-X is unaffected.
fn pci_host_bridge(out: &mut Vec<u8>) {
    let hid = Name::new(Path::new("_HID"), &EISAName::new("PNP0A08"));
    let cid = Name::new(Path::new("_CID"), &EISAName::new("PNP0A03"));
    let zero = 0u8;
    let adr = Name::new(Path::new("_ADR"), &zero);
    let seg = Name::new(Path::new("_SEG"), &zero);
    let uid = Name::new(Path::new("_UID"), &zero);
    let bbn = Name::new(Path::new("_BBN"), &zero);
    let buses = AmlSpace::<u16>::new_bus_number(0, 0);
    let cfg_ports = IO::new(PCI_CONFIG_PORT, PCI_CONFIG_PORT, 1, 8);
    let io_window = AmlSpace::<u16>::new_io(PCI_IO_WINDOW_START, 0xffff, None);
    let mmio = AmlSpace::<u32>::new_memory(
        AddressSpaceCacheable::NotCacheable,
        true,
        PCI_MMIO32_START as u32,
        (PCI_MMIO32_START + PCI_MMIO32_SIZE - 1) as u32,
        None,
    );
    let crs = Name::new(
        Path::new("_CRS"),
        &ResourceTemplate::new(vec![&buses, &cfg_ports, &io_window, &mmio]),
    );
    let dev = Device::new(
        Path::new("PCI0"),
        vec![&hid, &cid, &adr, &seg, &uid, &bbn, &crs],
    );
    dev.to_aml_bytes(out);
}

fn dsdt() -> Vec<u8> {
    let s5_type = SLP_TYP_S5 as u8;
    let s5 = Name::new(
        Path::new("_S5_"),
        &Package::new(vec![&s5_type, &s5_type, &0u8, &0u8]),
    );
    let pvpanic_io = IO::new(PVPANIC_PORT, PVPANIC_PORT, 1, 1);
    let pevt_hid = Name::new(Path::new("_HID"), &"QEMU0001");
    let pevt_crs = Name::new(Path::new("_CRS"), &ResourceTemplate::new(vec![&pvpanic_io]));
    let pevt = Device::new(Path::new("PEVT"), vec![&pevt_hid, &pevt_crs]);
    let ecam = Memory32Fixed::new(false, ECAM_START as u32, ECAM_SIZE as u32);
    let mres_hid = Name::new(Path::new("_HID"), &EISAName::new("PNP0C02"));
    let mres_crs = Name::new(Path::new("_CRS"), &ResourceTemplate::new(vec![&ecam]));
    let mres = Device::new(Path::new("MRES"), vec![&mres_hid, &mres_crs]);
    let mut pci0 = Vec::new();
    pci_host_bridge(&mut pci0);
    let pci0 = RawAml(pci0);
    let sb = Scope::new(Path::new("\\_SB_"), vec![&pevt, &mres, &pci0]);
    let mut dsdt = Sdt::new(*b"DSDT", 36, 2, OEM_ID, *b"THINDSDT", OEM_REVISION);
    dsdt.append_slice(&bytes_of(&s5));
    dsdt.append_slice(&bytes_of(&sb));
    dsdt.as_slice().to_vec()
}

/// AML bytes built elsewhere, placed as they are.
struct RawAml(Vec<u8>);

impl Aml for RawAml {
    fn to_aml_bytes(&self, sink: &mut dyn acpi_tables::AmlSink) {
        for b in &self.0 {
            sink.byte(*b);
        }
    }
}

#[cfg(test)]
#[path = "acpi_tests.rs"]
mod tests;
