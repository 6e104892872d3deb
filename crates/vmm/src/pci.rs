//! The PCI side of a VM: the root bus (ports 0xCF8 and ECAM), BAR and GSI allocation, and the
//! virtio devices with their KVM plumbing (an ioeventfd per queue at its notify address, an
//! irqfd per MSI-X vector bound to an MSI route).
//!
//! Devices are added after [`crate::Vm::new`] and before [`crate::Vm::start`]; each gets the
//! next free slot, so the slot order is the order of the command line.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use boot::layout::{ECAM_SIZE, ECAM_START, PCI_MMIO32_SIZE, PCI_MMIO32_START};
use devices::pci::{
    MsiMessage, MsiSink, PciConfigIo, PciConfigMmio, PciRoot, CONFIG_IO_BASE, CONFIG_IO_LEN,
};
use devices::virtio::balloon::{Balloon, BalloonHandle, BalloonOptions};
use devices::virtio::block::Block;
use devices::virtio::net::{mac_from_seed, Net, Tap, VHOST_NET_PATH};
use devices::virtio::rng::Rng;
use devices::virtio::vsock::Vsock;
use devices::virtio::{
    msix_vectors, notify_address, VirtioDevice, VirtioPciDevice, VIRTIO_BAR_SIZE,
};
use devices::Bus;
use hypervisor::{MsiRoute, FIRST_MSI_GSI};
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use crate::{DeviceCounters, Error};

/// A disk for virtio-blk.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DiskConfig {
    /// The image file.
    pub path: PathBuf,
    /// Its format, as given by the user (never probed).
    pub format: storage::Format,
    /// Open read-only and offer VIRTIO_BLK_F_RO.
    pub read_only: bool,
    /// What GET_ID answers (at most 20 bytes); the file name when `None`.
    pub serial: Option<String>,
}

/// A network card for virtio-net: exactly one of `tap` and `fd`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NetConfig {
    /// A TAP to open, or to create (which needs CAP_NET_ADMIN).
    pub tap: Option<String>,
    /// An inherited TAP descriptor (opened with IFF_VNET_HDR), owned by the device from then on.
    pub fd: Option<std::os::fd::RawFd>,
    /// The guest's MAC; when `None`, a locally administered one derived from the TAP's name.
    pub mac: Option<[u8; 6]>,
    /// Let the kernel's vhost-net serve the rings (`/dev/vhost-net` must exist); the card's
    /// frames are then not counted.
    pub vhost: bool,
}

/// A virtio-vsock device bridged to Unix sockets on the host.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VsockConfig {
    /// The guest's CID: 3 to 4294967294 (0, 1, 2 and 4294967295 are reserved).
    pub cid: u64,
    /// The Unix socket the VMM listens on (host connections send `CONNECT <port>\n`); guest
    /// connections to port P go to `PATH_P`.
    pub socket: PathBuf,
}

/// A virtio-balloon device.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BalloonConfig {
    /// Initial balloon size in bytes (at most the guest's memory).
    pub size: u64,
    /// Offer VIRTIO_BALLOON_F_DEFLATE_ON_OOM: the guest takes pages back when it runs short.
    pub deflate_on_oom: bool,
    /// Offer VIRTIO_BALLOON_F_FREE_PAGE_REPORTING: the guest reports its free memory, which is
    /// given back to the host.
    pub free_page_reporting: bool,
}

fn lock<T: ?Sized>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn dev_err(name: &'static str) -> impl FnOnce(String) -> Error {
    move |reason| Error::Device { name, reason }
}

/// The VM's MSI routes; every change rewrites KVM's whole table (pin routes first).
struct RouteTable {
    vm: Arc<hypervisor::Vm>,
    routes: Mutex<BTreeMap<u32, MsiRoute>>,
}

impl RouteTable {
    fn set(&self, route: MsiRoute) -> std::io::Result<()> {
        let mut routes = lock(&self.routes);
        routes.insert(route.gsi, route);
        let all: Vec<MsiRoute> = routes.values().copied().collect();
        self.vm.set_msi_routes(&all).map_err(std::io::Error::other)
    }
}

/// One device's MSI-X vectors: vector i is GSI `gsis[i]`, raised through `irqfds[i]`.
struct KvmMsi {
    table: Arc<RouteTable>,
    gsis: Vec<u32>,
    irqfds: Vec<EventFd>,
}

fn no_vector(v: u16) -> std::io::Error {
    std::io::Error::other(format!("MSI-X vector {v} does not exist"))
}

impl MsiSink for KvmMsi {
    fn set_route(&self, vector: u16, msg: MsiMessage) -> std::io::Result<()> {
        let gsi = *self
            .gsis
            .get(usize::from(vector))
            .ok_or_else(|| no_vector(vector))?;
        self.table.set(MsiRoute {
            gsi,
            address: msg.address,
            data: msg.data,
        })
    }

    fn fire(&self, vector: u16) -> std::io::Result<()> {
        self.irqfds
            .get(usize::from(vector))
            .ok_or_else(|| no_vector(vector))?
            .write(1)
    }

    /// The vector's irqfd itself: a vhost back-end writes it and KVM injects the MSI without
    /// the VMM. While the guest masks the vector such writes are still delivered (on the route
    /// the vector had when it was last unmasked), not held in the pending-bit array.
    fn irqfd(&self, vector: u16) -> Option<EventFd> {
        let evt = self.irqfds.get(usize::from(vector))?;
        match evt.try_clone() {
            Ok(e) => Some(e),
            Err(e) => {
                tracing::warn!("cannot duplicate the irqfd of MSI-X vector {vector}: {e}");
                None
            }
        }
    }
}

impl Drop for PciBus {
    /// The root holds the MMIO bus, which holds the ECAM device, which holds the root: break
    /// that cycle so the devices are dropped with the VM (their workers joined, their disks
    /// flushed and closed, their image locks released).
    fn drop(&mut self) {
        self.io.remove(CONFIG_IO_BASE);
        self.mmio.remove(ECAM_START);
    }
}

/// The PCI root bus of a VM and the devices on it.
pub struct PciBus {
    vm: Arc<hypervisor::Vm>,
    mem: GuestMemoryMmap,
    root: Arc<Mutex<PciRoot>>,
    routes: Arc<RouteTable>,
    next_gsi: u32,
    next_bar: u64,
    devices: Vec<Arc<Mutex<VirtioPciDevice>>>,
    has_vsock: bool,
    counters: DeviceCounters,
    io: Bus,
    mmio: Bus,
}

impl PciBus {
    /// The root bus with its host bridge, reachable through ports 0xCF8..0xD00 on `io` and
    /// the ECAM window on `mmio`.
    pub(crate) fn new(
        vm: Arc<hypervisor::Vm>,
        mem: GuestMemoryMmap,
        io: &Bus,
        mmio: &Bus,
    ) -> Result<Self, Error> {
        let root = Arc::new(Mutex::new(PciRoot::new(mmio.clone())));
        let cf8 = Arc::new(Mutex::new(PciConfigIo::new(root.clone())));
        io.insert(cf8, CONFIG_IO_BASE, CONFIG_IO_LEN)
            .map_err(|e| dev_err("pci")(e.to_string()))?;
        let ecam = Arc::new(Mutex::new(PciConfigMmio::new(root.clone())));
        mmio.insert(ecam, ECAM_START, ECAM_SIZE)
            .map_err(|e| dev_err("pci")(e.to_string()))?;
        let routes = Arc::new(RouteTable {
            vm: vm.clone(),
            routes: Mutex::new(BTreeMap::new()),
        });
        Ok(PciBus {
            vm,
            mem,
            root,
            routes,
            next_gsi: FIRST_MSI_GSI,
            next_bar: PCI_MMIO32_START,
            devices: Vec::new(),
            has_vsock: false,
            counters: DeviceCounters::default(),
            io: io.clone(),
            mmio: mmio.clone(),
        })
    }

    /// Adds a virtio-blk device serving `disk`.
    pub fn add_disk(&mut self, disk: &DiskConfig) -> Result<(), Error> {
        let opts = storage::OpenOptions {
            writable: !disk.read_only,
            ..Default::default()
        };
        let backend = storage::open_image(&disk.path, disk.format, &opts).map_err(|e| {
            dev_err("virtio-blk")(format!("cannot open {}: {e}", disk.path.display()))
        })?;
        let serial = disk.serial.clone().unwrap_or_else(|| {
            disk.path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default()
        });
        let block = Block::new(backend, &serial);
        let stats = block.stats();
        self.add_virtio(Box::new(block))?;
        self.counters.add_block(stats);
        Ok(())
    }

    /// Adds a virtio-rng device.
    pub fn add_rng(&mut self) -> Result<(), Error> {
        self.add_virtio(Box::new(Rng::new()))
    }

    /// Adds a virtio-net device on the TAP of `net`.
    pub fn add_net(&mut self, net: &NetConfig) -> Result<(), Error> {
        let err = dev_err("virtio-net");
        let tap = match (&net.tap, net.fd) {
            (Some(name), None) => Tap::open(name),
            // SAFETY: the caller hands over `fd` (an inherited descriptor given on the command
            // line, checked to be above stderr and given once) to the device, which owns it.
            (None, Some(fd)) => unsafe { Tap::from_fd(fd) },
            _ => return Err(err("give exactly one of tap=NAME and fd=N".into())),
        }
        .map_err(|e| dev_err("virtio-net")(e.to_string()))?;
        let mac = net
            .mac
            .unwrap_or_else(|| mac_from_seed(tap.name().as_bytes()));
        let dev = if net.vhost {
            Net::with_vhost(Box::new(tap), mac, Path::new(VHOST_NET_PATH))
                .map_err(|e| dev_err("virtio-net")(e.to_string()))?
        } else {
            Net::new(Box::new(tap), mac)
        };
        // The kernel moves a vhost card's frames: the VMM has no counts to report for it.
        let stats = (!net.vhost).then(|| dev.stats());
        self.add_virtio(Box::new(dev))?;
        self.counters.add_net(stats);
        Ok(())
    }

    /// The counters of the disks, network cards and vsock device (`_diskN`, `_netN`,
    /// `_vsockN`), live.
    pub fn counters(&self) -> DeviceCounters {
        self.counters.clone()
    }

    /// Adds a virtio-vsock device; its socket is listening when this returns.
    pub fn add_vsock(&mut self, cfg: &VsockConfig) -> Result<(), Error> {
        if self.has_vsock {
            return Err(dev_err("virtio-vsock")(
                "a VM has at most one vsock device".into(),
            ));
        }
        let dev =
            Vsock::new(cfg.cid, &cfg.socket).map_err(|e| dev_err("virtio-vsock")(e.to_string()))?;
        let stats = dev.stats();
        self.add_virtio(Box::new(dev))?;
        self.counters.add_vsock(stats);
        self.has_vsock = true;
        Ok(())
    }

    /// Adds a virtio-balloon device; the handle sets its target at run time.
    pub fn add_balloon(&mut self, cfg: &BalloonConfig) -> Result<BalloonHandle, Error> {
        let opts = BalloonOptions {
            size: cfg.size,
            deflate_on_oom: cfg.deflate_on_oom,
            free_page_reporting: cfg.free_page_reporting,
            ..BalloonOptions::default()
        };
        let balloon = Balloon::new(&opts, crate::memory::total(&self.mem))
            .map_err(|e| Error::BadBalloon(e.to_string()))?;
        let handle = balloon.handle();
        self.add_virtio(Box::new(balloon))?;
        Ok(handle)
    }

    /// Number of virtio devices added.
    pub fn device_count(&self) -> usize {
        self.devices.len()
    }

    /// MSI-X counters of virtio device `index` (in the order added).
    pub fn msix_stats(&self, index: usize) -> Option<devices::pci::MsixStats> {
        let dev = self.devices.get(index)?;
        let stats = lock(lock(dev).msix()).stats();
        Some(stats)
    }

    fn alloc_bar(&mut self, size: u64) -> Result<u64, Error> {
        let addr = self.next_bar.next_multiple_of(size);
        let end = addr
            .checked_add(size)
            .filter(|&e| e <= PCI_MMIO32_START + PCI_MMIO32_SIZE);
        self.next_bar =
            end.ok_or_else(|| dev_err("pci")("the 32-bit MMIO window is full".into()))?;
        Ok(addr)
    }

    fn msi(&mut self, name: &'static str, vectors: u16) -> Result<KvmMsi, Error> {
        let mut gsis = Vec::new();
        let mut irqfds = Vec::new();
        for _ in 0..vectors {
            let gsi = self.next_gsi;
            self.next_gsi += 1;
            let evt = EventFd::new(EFD_NONBLOCK).map_err(|e| dev_err(name)(e.to_string()))?;
            self.vm.register_msi_irqfd(&evt, gsi)?;
            gsis.push(gsi);
            irqfds.push(evt);
        }
        Ok(KvmMsi {
            table: self.routes.clone(),
            gsis,
            irqfds,
        })
    }

    fn add_virtio(&mut self, dev: Box<dyn VirtioDevice>) -> Result<(), Error> {
        let name = dev.name();
        let sink = Arc::new(self.msi(name, msix_vectors(dev.as_ref()))?);
        let bar = self.alloc_bar(VIRTIO_BAR_SIZE)?;
        let pci = VirtioPciDevice::new(dev, self.mem.clone(), sink, bar)
            .map_err(|e| dev_err(name)(e.to_string()))?;
        for (q, evt) in pci.queue_events().iter().enumerate() {
            self.vm
                .register_ioevent(evt, notify_address(bar, q as u16), None)?;
        }
        let pci = Arc::new(Mutex::new(pci));
        let slot = lock(&self.root)
            .add_device(pci.clone())
            .map_err(|e| dev_err(name)(e.to_string()))?;
        tracing::info!("{name} at PCI 00:{slot:02x}.0, BAR 0 at {bar:#x}");
        self.devices.push(pci);
        Ok(())
    }
}
