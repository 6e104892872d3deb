//! One VM: builds memory, the in-kernel platform, devices and vCPUs, then runs until the guest
//! (or the VMM's owner) ends it.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use devices::Bus;
use hypervisor::{Hypervisor, Regs, SRegs, Vcpu};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use crate::devices::{self as dm, PlatformDevices};
use crate::exit::{ExitReason, ExitSignal};
use crate::pci::PciBus;
use crate::vcpu::{Control, Request, VcpuContext, VcpuHandle, VcpuMetrics};
use crate::{memory, Error};

/// What the guest boots.
#[derive(Clone, Debug)]
pub enum Payload {
    /// An unmodified Linux kernel (bzImage or ELF vmlinux), optional initrd, command line.
    Linux {
        kernel: PathBuf,
        initrd: Option<PathBuf>,
        cmdline: String,
    },
    /// A hand-made program copied to `load_addr` and entered with the given registers (tests and
    /// exit-path benchmarks on hosts that cannot boot Linux).
    Raw {
        code: Vec<u8>,
        load_addr: u64,
        regs: Box<Regs>,
        sregs: Box<SRegs>,
    },
}

/// A VM's shape.
#[derive(Clone, Debug)]
pub struct VmConfig {
    pub payload: Payload,
    pub cpus: usize,
    pub memory: u64,
}

/// A built VM, ready to start.
pub struct Vm {
    /// Kept for the VM's lifetime: devices' interrupt lines and the vCPUs belong to it.
    _vm: Arc<hypervisor::Vm>,
    mem: GuestMemoryMmap,
    io_bus: Bus,
    mmio_bus: Bus,
    devices: PlatformDevices,
    pci: PciBus,
    exit: Arc<ExitSignal>,
    control: Arc<Control>,
    metrics: Arc<VcpuMetrics>,
    pending: Vec<Vcpu>,
    running: Vec<VcpuHandle>,
}

impl Vm {
    /// Builds the VM: memory, KVM platform, devices, the payload and the vCPUs' entry state.
    /// `console` receives everything the guest writes to its serial port.
    pub fn new(cfg: &VmConfig, console: Box<dyn Write + Send>) -> Result<Self, Error> {
        let hv = Hypervisor::new()?;
        let max = hv.max_vcpus().min(usize::from(u8::MAX));
        if cfg.cpus == 0 || cfg.cpus > max {
            return Err(Error::Cpus {
                requested: cfg.cpus,
                max,
            });
        }
        // Open the payload before allocating anything, so bad paths fail fast.
        let files = open_payload(&cfg.payload)?;
        let mem = memory::create_guest_memory(cfg.memory)?;
        let vm = Arc::new(hv.create_vm(cfg.cpus)?);
        for (slot, region) in memory::regions(&mem).into_iter().enumerate() {
            // SAFETY: the regions are mappings owned by `mem`, which this Vm keeps alive for as
            // long as the KVM VM (field order: `vm` is dropped before `mem`... and KVM only
            // touches the memory while vCPUs run, which stop before either is dropped).
            unsafe { vm.map_memory(slot as u32, region)? };
        }
        vm.setup_platform()?;
        let exit = Arc::new(ExitSignal::new().map_err(Error::GuestMemory)?);
        let io_bus = Bus::new();
        let mmio_bus = Bus::new();
        let (below, above) = memory::split_at_4g(&mem);
        let devices = dm::create(&vm, &io_bus, exit.clone(), console, below, above)?;
        let pci = PciBus::new(vm.clone(), mem.clone(), &io_bus, &mmio_bus)?;
        let (regs, sregs) = load_payload(&mem, &cfg.payload, files, cfg.cpus)?;
        let mut pending = Vec::with_capacity(cfg.cpus);
        for index in 0..cfg.cpus {
            let vcpu = vm.create_vcpu(index as u8)?;
            if index == 0 {
                vcpu.set_sregs(&sregs)?;
                vcpu.set_regs(&regs)?;
            }
            pending.push(vcpu);
        }
        Ok(Vm {
            _vm: vm,
            mem,
            io_bus,
            mmio_bus,
            devices,
            pci,
            exit,
            control: Arc::new(Control::new()),
            metrics: Arc::new(VcpuMetrics::default()),
            pending,
            running: Vec::new(),
        })
    }

    /// The port I/O bus (tests add their own devices here).
    pub fn io_bus(&self) -> &Bus {
        &self.io_bus
    }

    /// The MMIO bus.
    pub fn mmio_bus(&self) -> &Bus {
        &self.mmio_bus
    }

    /// The PCI bus: add virtio devices here before [`Vm::start`].
    pub fn pci(&mut self) -> &mut PciBus {
        &mut self.pci
    }

    /// Guest memory.
    pub fn memory(&self) -> &GuestMemoryMmap {
        &self.mem
    }

    /// The devices' counters (`_diskN`, `_netN`), live: clone it before [`Vm::start`] or after.
    pub fn device_counters(&self) -> crate::DeviceCounters {
        self.pci.counters()
    }

    /// Exit counters of all vCPUs together.
    pub fn metrics(&self) -> &Arc<VcpuMetrics> {
        &self.metrics
    }

    /// Where the VM's end is reported.
    pub fn exit_signal(&self) -> &Arc<ExitSignal> {
        &self.exit
    }

    /// The serial port, to feed it console input.
    pub fn serial(&self) -> &Arc<Mutex<devices::legacy::Serial>> {
        &self.devices.serial
    }

    /// Starts one thread per vCPU.
    pub fn start(&mut self) -> Result<(), Error> {
        let ctx = VcpuContext {
            io: self.io_bus.clone(),
            mmio: self.mmio_bus.clone(),
            control: self.control.clone(),
            exit: self.exit.clone(),
            metrics: self.metrics.clone(),
        };
        for vcpu in self.pending.drain(..) {
            self.running.push(VcpuHandle::spawn(vcpu, ctx.clone())?);
        }
        Ok(())
    }

    /// Blocks until the VM ends and says why.
    pub fn wait(&self) -> ExitReason {
        loop {
            if let Some(reason) = self.exit.get() {
                return self.finish_reason(reason);
            }
            let _ = wait_readable(self.exit.eventfd(), None);
        }
    }

    fn finish_reason(&self, reason: ExitReason) -> ExitReason {
        match reason {
            ExitReason::Panic(None) => ExitReason::Panic(self.devices.panic_line()),
            // A guest without the pvpanic driver loaded resets after a panic (panic=-1): the
            // panic line on its console tells the two apart.
            ExitReason::Reboot => match self.devices.panic_line() {
                Some(line) => ExitReason::Panic(Some(line)),
                None => ExitReason::Reboot,
            },
            other => other,
        }
    }

    /// Stops every vCPU at its next exit and waits until all are parked.
    pub fn pause(&self) {
        self.control.request(Request::Pause);
        for v in &self.running {
            v.kick();
        }
        self.control.wait_paused(self.running.len());
    }

    /// Lets paused vCPUs run again.
    pub fn resume(&self) {
        self.control.request(Request::Run);
    }

    /// Presses the ACPI power button: a guest that listens shuts down cleanly.
    pub fn press_power_button(&self) {
        self.devices
            .acpi_pm
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .press_power_button();
    }

    /// Asks the VM to stop now (the vCPUs are stopped and joined when the Vm is dropped).
    pub fn request_stop(&self) {
        self.exit.set(ExitReason::Stopped);
    }
}

impl Drop for Vm {
    fn drop(&mut self) {
        self.control.request(Request::Stop);
        // Dropping the handles kicks and joins every vCPU thread.
        self.running.clear();
    }
}

/// Waits until `fd` is readable, or the timeout passes.
pub(crate) fn wait_readable(fd: &impl std::os::fd::AsRawFd, timeout_ms: Option<i32>) -> bool {
    let mut pfd = libc::pollfd {
        fd: fd.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd, count 1.
    let n = unsafe { libc::poll(&mut pfd, 1, timeout_ms.unwrap_or(-1)) };
    n > 0
}

struct PayloadFiles {
    kernel: Option<File>,
    initrd: Option<File>,
}

fn open(path: &Path) -> Result<File, Error> {
    File::open(path).map_err(|source| Error::Open {
        path: path.to_path_buf(),
        source,
    })
}

fn open_payload(p: &Payload) -> Result<PayloadFiles, Error> {
    Ok(match p {
        Payload::Linux { kernel, initrd, .. } => PayloadFiles {
            kernel: Some(open(kernel)?),
            initrd: initrd.as_deref().map(open).transpose()?,
        },
        Payload::Raw { .. } => PayloadFiles {
            kernel: None,
            initrd: None,
        },
    })
}

fn load_payload(
    mem: &GuestMemoryMmap,
    p: &Payload,
    files: PayloadFiles,
    cpus: usize,
) -> Result<(Regs, SRegs), Error> {
    match (p, files) {
        (
            Payload::Linux { cmdline, .. },
            PayloadFiles {
                kernel: Some(mut kernel),
                mut initrd,
            },
        ) => {
            let entry = boot::load(
                mem,
                boot::BootConfig {
                    kernel: &mut kernel,
                    initrd: initrd.as_mut(),
                    cmdline,
                    cpus: cpus as u8,
                },
            )?;
            Ok((entry.regs, entry.sregs))
        }
        (
            Payload::Raw {
                code,
                load_addr,
                regs,
                sregs,
            },
            _,
        ) => {
            mem.write_slice(code, GuestAddress(*load_addr))
                .map_err(|e| Error::MapMemory(format!("cannot copy the guest program: {e}")))?;
            Ok((**regs, **sregs))
        }
        _ => unreachable!("open_payload opens a kernel for every Linux payload"),
    }
}
