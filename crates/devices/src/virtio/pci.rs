//! The virtio-pci modern transport: one PCI function whose BAR 0 holds the common, ISR, device
//! configuration and notification structures plus the MSI-X table and PBA.
//!
//! Only MSI-X interrupts are offered (no INTx pin: thinvm's DSDT has no `_PRT`). Queue
//! notifications normally arrive on the queue eventfds through KVM ioeventfds registered by the
//! VMM at [`notify_address`]; a notification that does reach the BAR (a guest that moved it)
//! signals the same eventfd. Notifications before DRIVER_OK are refused and counted.

use std::sync::atomic::{AtomicU16, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use virtio_queue::{Queue, QueueT};
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::common::{CommonConfig, StatusAction};
use super::{InterruptKind, VirtioDevice, VirtioInterrupt, F_RING_EVENT_IDX, NO_VECTOR};
use crate::legacy::GuestLog;
use crate::pci::{BarInfo, BarKind, ConfigError, MsiSink, Msix, PciConfig, PciDevice, PciIds};

/// The BAR that holds every virtio structure.
pub const VIRTIO_BAR: usize = 0;
/// Size of that BAR.
pub const VIRTIO_BAR_SIZE: u64 = 0x8000;
/// Bytes between the notification addresses of consecutive queues.
pub const NOTIFY_OFF_MULTIPLIER: u32 = 4;
const COMMON: (u64, u64) = (0x0000, 0x38);
const ISR: (u64, u64) = (0x1000, 4);
const DEVICE: (u64, u64) = (0x2000, 0x1000);
const NOTIFY: (u64, u64) = (0x3000, 0x1000);
const MSIX_TABLE: (u64, u64) = (0x4000, 0x2000);
const MSIX_PBA: (u64, u64) = (0x6000, 0x1000);
const VIRTIO_VENDOR: u16 = 0x1af4;
const CAP_VENDOR: u8 = 0x09;

/// Why the transport could not be built (a VMM error, never guest input).
#[derive(Debug, thiserror::Error)]
pub enum VirtioPciError {
    /// Configuration space layout failed.
    #[error("virtio-pci {device}: {source}")]
    Config {
        /// Device name.
        device: &'static str,
        /// The layout error.
        #[source]
        source: ConfigError,
    },
    /// Too many queues for the notify region or the MSI-X table.
    #[error("virtio-pci {device}: {queues} queues do not fit the BAR layout")]
    TooManyQueues {
        /// Device name.
        device: &'static str,
        /// Queue count.
        queues: usize,
    },
    /// An eventfd could not be made.
    #[error("virtio-pci {device}: cannot create a queue eventfd: {source}")]
    EventFd {
        /// Device name.
        device: &'static str,
        /// OS error.
        #[source]
        source: std::io::Error,
    },
}

/// MSI-X vectors a device needs: one per queue plus one for configuration changes.
pub fn msix_vectors(dev: &dyn VirtioDevice) -> u16 {
    (dev.queue_max_sizes().len() + 1).min(usize::from(u16::MAX)) as u16
}

/// Guest address of queue `queue`'s notification register when BAR 0 is at `bar_addr`.
pub fn notify_address(bar_addr: u64, queue: u16) -> u64 {
    bar_addr + NOTIFY.0 + u64::from(queue) * u64::from(NOTIFY_OFF_MULTIPLIER)
}

fn lock<T: ?Sized>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The interrupt path handed to the device: queue/config -> MSI-X vector -> MSI-X state.
struct TransportInterrupt {
    msix: Arc<Mutex<Msix>>,
    msix_config: Arc<AtomicU16>,
    queue_vectors: Arc<[AtomicU16]>,
    isr: Arc<AtomicU8>,
    config_generation: Arc<AtomicU8>,
}

impl VirtioInterrupt for TransportInterrupt {
    fn trigger(&self, kind: InterruptKind) -> std::io::Result<()> {
        let (vector, isr_bit) = match kind {
            InterruptKind::Config => {
                // A configuration change: the driver re-reads fields that span several
                // accesses until the generation stays the same.
                self.config_generation.fetch_add(1, Ordering::SeqCst);
                (self.msix_config.load(Ordering::SeqCst), 2)
            }
            InterruptKind::Queue(q) => {
                let v = self.queue_vectors.get(usize::from(q));
                (v.map_or(NO_VECTOR, |v| v.load(Ordering::SeqCst)), 1)
            }
        };
        self.isr.fetch_or(isr_bit, Ordering::SeqCst);
        if vector != NO_VECTOR {
            lock(&self.msix).trigger(vector);
        }
        Ok(())
    }

    fn irqfd(&self, kind: InterruptKind) -> Option<EventFd> {
        let vector = match kind {
            InterruptKind::Config => self.msix_config.load(Ordering::SeqCst),
            InterruptKind::Queue(q) => self
                .queue_vectors
                .get(usize::from(q))?
                .load(Ordering::SeqCst),
        };
        if vector == NO_VECTOR {
            return None;
        }
        lock(&self.msix).irqfd(vector)
    }
}

/// Counters of the transport.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TransportStats {
    /// Queue notifications refused because the driver had not set DRIVER_OK.
    pub refused_notifies: u64,
    /// Activations that failed (the device was marked NEEDS_RESET).
    pub failed_activations: u64,
}

/// A virtio device on PCI.
pub struct VirtioPciDevice {
    config: PciConfig,
    common: CommonConfig,
    device: Box<dyn VirtioDevice>,
    msix: Arc<Mutex<Msix>>,
    msix_cap: usize,
    events: Vec<EventFd>,
    isr: Arc<AtomicU8>,
    mem: GuestMemoryMmap,
    activated: bool,
    stats: TransportStats,
    log: GuestLog,
}

impl VirtioPciDevice {
    /// Wraps `device`; BAR 0 (64-bit, [`VIRTIO_BAR_SIZE`]) is programmed at `bar_addr`; MSI-X
    /// vectors go to `msi` ([`msix_vectors`] of them).
    pub fn new(
        device: Box<dyn VirtioDevice>,
        mem: GuestMemoryMmap,
        msi: Arc<dyn MsiSink>,
        bar_addr: u64,
    ) -> Result<Self, VirtioPciError> {
        let name = device.name();
        let nq = device.queue_max_sizes().len();
        let vectors = msix_vectors(device.as_ref());
        if nq == 0
            || nq as u64 * u64::from(NOTIFY_OFF_MULTIPLIER) > NOTIFY.1
            || u64::from(vectors) * 16 > MSIX_TABLE.1
        {
            return Err(VirtioPciError::TooManyQueues {
                device: name,
                queues: nq,
            });
        }
        let events = (0..nq)
            .map(|_| EventFd::new(EFD_NONBLOCK))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|source| VirtioPciError::EventFd {
                device: name,
                source,
            })?;
        let msix = Msix::new(vectors, msi);
        let (config, msix_cap) =
            layout(device.as_ref(), &msix, bar_addr).map_err(|source| VirtioPciError::Config {
                device: name,
                source,
            })?;
        let common = CommonConfig::new(device.queue_max_sizes(), device.features(), vectors);
        let mut dev = VirtioPciDevice {
            config,
            common,
            device,
            msix: Arc::new(Mutex::new(msix)),
            msix_cap,
            events,
            isr: Arc::new(AtomicU8::new(0)),
            mem,
            activated: false,
            stats: TransportStats::default(),
            log: GuestLog::default(),
        };
        // The interrupt's parts live as long as the transport (reset only stores into them),
        // so a device may raise configuration changes at any time, even before activation.
        let irq: Arc<dyn VirtioInterrupt> = dev.interrupt();
        dev.device.set_config_interrupt(irq);
        Ok(dev)
    }

    /// The queue eventfds, in queue order (the VMM registers them as ioeventfds).
    pub fn queue_events(&self) -> &[EventFd] {
        &self.events
    }

    /// The transport's counters.
    pub fn stats(&self) -> TransportStats {
        self.stats
    }

    /// The common configuration state (status, features, queues).
    pub fn common(&self) -> &CommonConfig {
        &self.common
    }

    /// The MSI-X state.
    pub fn msix(&self) -> &Arc<Mutex<Msix>> {
        &self.msix
    }

    fn interrupt(&self) -> Arc<TransportInterrupt> {
        Arc::new(TransportInterrupt {
            msix: self.msix.clone(),
            msix_config: self.common.msix_config(),
            queue_vectors: self.common.queue_vectors(),
            isr: self.isr.clone(),
            config_generation: self.common.config_generation(),
        })
    }

    fn reset(&mut self) {
        self.device.reset();
        self.common.reset();
        self.isr.store(0, Ordering::SeqCst);
        self.activated = false;
    }

    fn activate(&mut self) {
        let name = self.device.name();
        let result = self.build_queues().and_then(|(queues, events)| {
            self.device.ack_features(self.common.driver_features());
            let irq: Arc<dyn VirtioInterrupt> = self.interrupt();
            self.device
                .activate(self.mem.clone(), irq, queues, events)
                .map_err(|e| e.to_string())
        });
        match result {
            Ok(()) => self.activated = true,
            Err(e) => {
                self.stats.failed_activations += 1;
                self.log.warn(format_args!(
                    "{name}: activation refused: {e}; device needs reset"
                ));
                self.common.set_needs_reset();
                let _ = self.interrupt().trigger(InterruptKind::Config);
            }
        }
    }

    fn build_queues(&self) -> Result<(Vec<Queue>, Vec<EventFd>), String> {
        let mut queues = Vec::new();
        for (i, q) in self.common.queues().iter().enumerate() {
            if q.ready() && !q.is_valid(&self.mem) {
                return Err(format!(
                    "queue {i} rings are outside guest memory or misaligned"
                ));
            }
            let mut queue = Queue::try_from(q.state()).map_err(|e| format!("queue {i}: {e:?}"))?;
            queue.set_event_idx(self.common.driver_features() & F_RING_EVENT_IDX != 0);
            queues.push(queue);
        }
        let events = self
            .events
            .iter()
            .map(EventFd::try_clone)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| format!("cannot clone a queue eventfd: {e}"))?;
        Ok((queues, events))
    }

    fn notify(&mut self, offset: u64) {
        let q = offset / u64::from(NOTIFY_OFF_MULTIPLIER);
        let evt = usize::try_from(q).ok().and_then(|q| self.events.get(q));
        match evt {
            Some(evt) if self.activated => {
                let _ = evt.write(1);
            }
            _ => {
                self.stats.refused_notifies += 1;
                self.log.warn(format_args!(
                    "{}: notification of queue {q} refused (driver not ready or no such queue)",
                    self.device.name()
                ));
            }
        }
    }
}

fn virtio_cap(cfg_type: u8, (offset, len): (u64, u64), extra: Option<u32>) -> Vec<u8> {
    let cap_len: u8 = if extra.is_some() { 20 } else { 16 };
    let mut c = vec![CAP_VENDOR, 0, cap_len, cfg_type, VIRTIO_BAR as u8, 0, 0, 0];
    c.extend_from_slice(&(offset as u32).to_le_bytes());
    c.extend_from_slice(&(len as u32).to_le_bytes());
    if let Some(x) = extra {
        c.extend_from_slice(&x.to_le_bytes());
    }
    c
}

fn layout(
    dev: &dyn VirtioDevice,
    msix: &Msix,
    bar_addr: u64,
) -> Result<(PciConfig, usize), ConfigError> {
    let ty = dev.device_type();
    let class = match ty {
        super::device_type::BLOCK => 0x01_80_00,
        _ => 0xff_00_00,
    };
    let mut c = PciConfig::new(PciIds {
        vendor: VIRTIO_VENDOR,
        device: 0x1040 + ty as u16,
        revision: 1,
        class,
        subsystem_vendor: VIRTIO_VENDOR,
        subsystem: 0x40,
    });
    let bar = BarInfo {
        size: VIRTIO_BAR_SIZE,
        kind: BarKind::Mem64,
    };
    c.add_bar(VIRTIO_BAR, bar, bar_addr)?;
    let notify_len = dev.queue_max_sizes().len() as u64 * u64::from(NOTIFY_OFF_MULTIPLIER);
    c.add_capability(&virtio_cap(1, COMMON, None), &[])?;
    c.add_capability(
        &virtio_cap(2, (NOTIFY.0, notify_len), Some(NOTIFY_OFF_MULTIPLIER)),
        &[],
    )?;
    c.add_capability(&virtio_cap(3, ISR, None), &[])?;
    c.add_capability(&virtio_cap(4, DEVICE, None), &[])?;
    let (cap, mask) = msix.capability(
        VIRTIO_BAR as u8,
        MSIX_TABLE.0 as u32,
        VIRTIO_BAR as u8,
        MSIX_PBA.0 as u32,
    );
    let msix_cap = c.add_capability(&cap, &mask)?;
    Ok((c, msix_cap))
}

fn within(offset: u64, len: usize, (start, size): (u64, u64)) -> Option<u64> {
    let rel = offset.checked_sub(start)?;
    (rel.checked_add(len as u64)? <= size).then_some(rel)
}

impl PciDevice for VirtioPciDevice {
    fn config(&self) -> &PciConfig {
        &self.config
    }

    fn config_mut(&mut self) -> &mut PciConfig {
        &mut self.config
    }

    fn config_written(&mut self, offset: usize, len: usize) {
        let ctrl = self.msix_cap + 2;
        if offset < ctrl + 2 && offset + len > ctrl {
            let v = self.config.u16_at(ctrl);
            lock(&self.msix).set_control(v);
        }
    }

    fn read_bar(&mut self, bar: usize, offset: u64, data: &mut [u8]) {
        data.fill(0);
        if bar != VIRTIO_BAR {
            return;
        }
        let n = data.len();
        if let Some(rel) = within(offset, n, COMMON) {
            self.common.read(rel, data);
        } else if let Some(rel) = within(offset, n, ISR) {
            if rel == 0 {
                // Reading the ISR clears it.
                data[0] = self.isr.swap(0, Ordering::SeqCst);
            }
        } else if let Some(rel) = within(offset, n, DEVICE) {
            self.device.read_config(rel, data);
        } else if let Some(rel) = within(offset, n, MSIX_TABLE) {
            lock(&self.msix).read_table(rel, data);
        } else if let Some(rel) = within(offset, n, MSIX_PBA) {
            lock(&self.msix).read_pba(rel, data);
        }
    }

    fn write_bar(&mut self, bar: usize, offset: u64, data: &[u8]) {
        if bar != VIRTIO_BAR {
            return;
        }
        let n = data.len();
        if let Some(rel) = within(offset, n, COMMON) {
            match self.common.write(rel, data) {
                StatusAction::Reset => self.reset(),
                StatusAction::Activate => self.activate(),
                StatusAction::None => {}
            }
        } else if let Some(rel) = within(offset, n, DEVICE) {
            self.device.write_config(rel, data);
        } else if let Some(rel) = within(offset, n, NOTIFY) {
            self.notify(rel);
        } else if let Some(rel) = within(offset, n, MSIX_TABLE) {
            lock(&self.msix).write_table(rel, data);
        }
    }
}

#[cfg(test)]
#[path = "pci_tests.rs"]
mod tests;
