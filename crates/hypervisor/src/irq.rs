//! MSI routing, ioeventfds and MSI irqfds: what virtio-pci devices need from KVM.
//!
//! `KVM_SET_GSI_ROUTING` replaces the whole routing table, so [`Vm::set_msi_routes`] always
//! writes the IOAPIC/PIC pin routes of KVM's default table (GSI 0..23) first and the MSI routes
//! after them; without the pin routes the serial port's IRQ 4 would die at the first MSI route.

use kvm_bindings::{
    kvm_irq_routing_entry, KvmIrqRouting, KVM_IRQCHIP_IOAPIC, KVM_IRQCHIP_PIC_MASTER,
    KVM_IRQCHIP_PIC_SLAVE, KVM_IRQ_ROUTING_IRQCHIP, KVM_IRQ_ROUTING_MSI,
};
use kvm_ioctls::{IoEventAddress, NoDatamatch};
use vmm_sys_util::eventfd::EventFd;

use crate::{Error, Result, Vm};

/// Number of IOAPIC pins, hence of GSIs routed to the irqchips (0..24).
pub const IOAPIC_PINS: u32 = 24;
/// First GSI free for MSI routes.
pub const FIRST_MSI_GSI: u32 = IOAPIC_PINS;
/// KVM's limit on routing entries.
const MAX_ROUTES: usize = 4096;

/// One MSI route: writes to the irqfd of `gsi` deliver the message `address`/`data`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MsiRoute {
    /// The GSI (at least [`FIRST_MSI_GSI`]).
    pub gsi: u32,
    /// The MSI address (0xFEEx_xxxx on x86).
    pub address: u64,
    /// The MSI data (vector, delivery mode).
    pub data: u32,
}

fn irqchip_entry(gsi: u32, chip: u32, pin: u32) -> kvm_irq_routing_entry {
    let mut e = kvm_irq_routing_entry {
        gsi,
        type_: KVM_IRQ_ROUTING_IRQCHIP,
        ..Default::default()
    };
    e.u.irqchip.irqchip = chip;
    e.u.irqchip.pin = pin;
    e
}

fn msi_entry(r: &MsiRoute) -> kvm_irq_routing_entry {
    let mut e = kvm_irq_routing_entry {
        gsi: r.gsi,
        type_: KVM_IRQ_ROUTING_MSI,
        ..Default::default()
    };
    e.u.msi.address_lo = r.address as u32;
    e.u.msi.address_hi = (r.address >> 32) as u32;
    e.u.msi.data = r.data;
    e
}

/// KVM's default routes: GSI 0..15 to the PICs and the IOAPIC, 16..23 to the IOAPIC only.
pub(crate) fn pin_routes() -> Vec<kvm_irq_routing_entry> {
    let mut v = Vec::with_capacity(40);
    for gsi in 0..IOAPIC_PINS {
        if gsi < 8 {
            v.push(irqchip_entry(gsi, KVM_IRQCHIP_PIC_MASTER, gsi));
        } else if gsi < 16 {
            v.push(irqchip_entry(gsi, KVM_IRQCHIP_PIC_SLAVE, gsi - 8));
        }
        v.push(irqchip_entry(gsi, KVM_IRQCHIP_IOAPIC, gsi));
    }
    v
}

/// The full table: pin routes, then `msi`.
pub(crate) fn routing_table(msi: &[MsiRoute]) -> Result<KvmIrqRouting> {
    let mut entries = pin_routes();
    for r in msi {
        if r.gsi < FIRST_MSI_GSI {
            return Err(Error::BadMsiRoute {
                gsi: r.gsi,
                reason: "the GSI belongs to an IOAPIC pin",
            });
        }
        entries.push(msi_entry(r));
    }
    if entries.len() > MAX_ROUTES {
        return Err(Error::BadMsiRoute {
            gsi: msi.last().map_or(0, |r| r.gsi),
            reason: "more routes than KVM allows (4096)",
        });
    }
    let mut table = KvmIrqRouting::new(0).map_err(|_| Error::BadMsiRoute {
        gsi: 0,
        reason: "cannot allocate the routing table",
    })?;
    for e in entries {
        table.push(e).map_err(|_| Error::BadMsiRoute {
            gsi: e.gsi,
            reason: "routing table is full",
        })?;
    }
    Ok(table)
}

impl Vm {
    /// Replaces KVM's whole GSI routing table with the IOAPIC/PIC pin routes (GSI 0..23, as in
    /// KVM's default table) plus `msi`.
    pub fn set_msi_routes(&self, msi: &[MsiRoute]) -> Result<()> {
        let table = routing_table(msi)?;
        self.fd
            .set_gsi_routing(&table)
            .map_err(Error::ioctl("KVM_SET_GSI_ROUTING"))
    }

    /// Makes guest writes (of any size and value) to the MMIO address `addr` signal `evt`
    /// inside KVM, without an exit to the VMM. `datamatch` restricts it to 4-byte writes of
    /// that value.
    pub fn register_ioevent(&self, evt: &EventFd, addr: u64, datamatch: Option<u32>) -> Result<()> {
        let a = IoEventAddress::Mmio(addr);
        match datamatch {
            None => self.fd.register_ioevent(evt, &a, NoDatamatch),
            Some(v) => self.fd.register_ioevent(evt, &a, v),
        }
        .map_err(Error::ioctl("KVM_IOEVENTFD"))
    }

    /// Removes an ioeventfd registered by [`Vm::register_ioevent`] with the same arguments.
    pub fn unregister_ioevent(
        &self,
        evt: &EventFd,
        addr: u64,
        datamatch: Option<u32>,
    ) -> Result<()> {
        let a = IoEventAddress::Mmio(addr);
        match datamatch {
            None => self.fd.unregister_ioevent(evt, &a, NoDatamatch),
            Some(v) => self.fd.unregister_ioevent(evt, &a, v),
        }
        .map_err(Error::ioctl("KVM_IOEVENTFD (deassign)"))
    }

    /// Makes every write to `evt` deliver the MSI routed at `gsi` (set by
    /// [`Vm::set_msi_routes`]; an irqfd on a GSI without a route delivers nothing).
    pub fn register_msi_irqfd(&self, evt: &EventFd, gsi: u32) -> Result<()> {
        if gsi < FIRST_MSI_GSI {
            return Err(Error::BadMsiRoute {
                gsi,
                reason: "the GSI belongs to an IOAPIC pin",
            });
        }
        self.fd
            .register_irqfd(evt, gsi)
            .map_err(Error::ioctl("KVM_IRQFD"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pin_routes_match_kvm_default() {
        let r = pin_routes();
        // 16 PIC routes + 24 IOAPIC routes.
        assert_eq!(r.len(), 40);
        for gsi in 0..IOAPIC_PINS {
            let chips: Vec<(u32, u32)> = r
                .iter()
                .filter(|e| e.gsi == gsi)
                // SAFETY: every entry built by pin_routes is of type IRQCHIP.
                .map(|e| unsafe { (e.u.irqchip.irqchip, e.u.irqchip.pin) })
                .collect();
            assert!(chips.contains(&(KVM_IRQCHIP_IOAPIC, gsi)), "gsi {gsi}");
            let pic = match gsi {
                0..=7 => Some((KVM_IRQCHIP_PIC_MASTER, gsi)),
                8..=15 => Some((KVM_IRQCHIP_PIC_SLAVE, gsi - 8)),
                _ => None,
            };
            assert_eq!(chips.len(), 1 + usize::from(pic.is_some()), "gsi {gsi}");
            if let Some(p) = pic {
                assert!(chips.contains(&p), "gsi {gsi}");
            }
        }
    }

    #[test]
    fn table_keeps_pins_and_appends_msi() {
        let msi = [MsiRoute {
            gsi: 30,
            address: 0x1_fee0_1000,
            data: 0x4041,
        }];
        let t = routing_table(&msi).unwrap();
        let s = t.as_slice();
        assert_eq!(s.len(), 41);
        let last = s[40];
        assert_eq!((last.gsi, last.type_), (30, KVM_IRQ_ROUTING_MSI));
        // SAFETY: the entry was built as an MSI entry.
        let m = unsafe { last.u.msi };
        assert_eq!(
            (m.address_lo, m.address_hi, m.data),
            (0xfee0_1000, 1, 0x4041)
        );
    }

    #[test]
    fn msi_route_on_a_pin_gsi_is_refused() {
        let msi = [MsiRoute {
            gsi: 4,
            address: 0xfee0_0000,
            data: 0,
        }];
        assert!(matches!(
            routing_table(&msi),
            Err(Error::BadMsiRoute { gsi: 4, .. })
        ));
    }

    #[test]
    fn too_many_routes_are_refused() {
        let msi: Vec<MsiRoute> = (0..5000)
            .map(|i| MsiRoute {
                gsi: FIRST_MSI_GSI + i,
                address: 0xfee0_0000,
                data: 0,
            })
            .collect();
        assert!(routing_table(&msi).is_err());
    }
}
