//! Exit-path micro-benchmarks on the host's own /dev/kvm: thinvm's full path (vCPU thread, state
//! machine, bus dispatch, device lock) against a bare loop that calls KVM_RUN and ignores the exit
//! (the floor any VMM can reach on this host).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use devices::BusDevice;
use hypervisor::{Hypervisor, VcpuExit};

use crate::exit::ExitReason;
use crate::memory;
use crate::{Error, Payload, Vm, VmConfig};

/// Which kind of exit the guest loop makes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExitKind {
    Pio,
    Mmio,
}

/// The port and MMIO address the guest loop writes to.
pub const LOOP_PORT: u16 = 0x2200;
pub const LOOP_MMIO: u32 = 0xd000_0000;

/// A guest program (flat 32-bit protected mode, CPL0, at `LOAD_ADDR`) that writes to the loop
/// port or MMIO address forever.
pub fn loop_program(kind: ExitKind) -> Vec<u8> {
    let mut code = Vec::new();
    match kind {
        ExitKind::Pio => {
            code.extend([0x66, 0xba]); // mov dx, LOOP_PORT
            code.extend(LOOP_PORT.to_le_bytes());
            code.extend([0xee, 0xeb, 0xfd]); // out dx, al; jmp back to the out
        }
        ExitKind::Mmio => {
            code.push(0xa2); // mov [LOOP_MMIO], al
            code.extend(LOOP_MMIO.to_le_bytes());
            code.extend([0xeb, 0xf9]); // jmp back to the mov
        }
    }
    code
}

/// Where the benchmark guest is loaded.
pub const LOAD_ADDR: u64 = 0x1000;

/// Flat 32-bit protected mode entry state at `LOAD_ADDR`.
pub fn flat_protected_mode() -> (hypervisor::Regs, hypervisor::SRegs) {
    let seg = |selector: u16, type_: u8| hypervisor::Segment {
        base: 0,
        limit: 0xffff_ffff,
        selector,
        type_,
        present: 1,
        db: 1,
        s: 1,
        g: 1,
        ..Default::default()
    };
    let data = seg(0x10, 0x3);
    let sregs = hypervisor::SRegs {
        cs: seg(0x08, 0xb),
        ds: data,
        es: data,
        fs: data,
        gs: data,
        ss: data,
        tr: hypervisor::Segment {
            selector: 0x18,
            type_: 0xb,
            present: 1,
            limit: 0x67,
            ..Default::default()
        },
        ldt: hypervisor::Segment {
            type_: 0x2,
            present: 1,
            unusable: 1,
            ..Default::default()
        },
        cr0: 0x11,
        ..Default::default()
    };
    let regs = hypervisor::Regs {
        rip: LOAD_ADDR,
        rsp: 0x8000,
        rflags: 0x2,
        ..Default::default()
    };
    (regs, sregs)
}

/// Counts writes and stamps the times at which the warm-up ended and the measured run finished.
struct Stopwatch {
    count: u64,
    warmup: u64,
    total: u64,
    started: Option<Instant>,
    result: Arc<Mutex<Option<Duration>>>,
    done: Arc<AtomicU64>,
}

impl BusDevice for Stopwatch {
    fn read(&mut self, _: u64, data: &mut [u8]) {
        data.fill(0);
    }
    fn write(&mut self, _: u64, _: &[u8]) {
        self.count += 1;
        if self.count == self.warmup {
            self.started = Some(Instant::now());
        } else if self.count == self.warmup + self.total {
            if let Some(t) = self.started {
                *self.result.lock().unwrap_or_else(|p| p.into_inner()) = Some(t.elapsed());
            }
            self.done.store(1, Ordering::Release);
        }
    }
}

/// Time per exit through thinvm's full exit path, over `exits` exits after a warm-up.
pub fn thinvm_round_trip(kind: ExitKind, exits: u64) -> Result<Duration, Error> {
    let (regs, sregs) = flat_protected_mode();
    let cfg = VmConfig {
        payload: Payload::Raw {
            code: loop_program(kind),
            load_addr: LOAD_ADDR,
            regs: Box::new(regs),
            sregs: Box::new(sregs),
        },
        cpus: 1,
        memory: 32 << 20,
    };
    let mut vm = Vm::new(&cfg, Box::new(std::io::sink()))?;
    let result = Arc::new(Mutex::new(None));
    let done = Arc::new(AtomicU64::new(0));
    let watch = Stopwatch {
        count: 0,
        warmup: exits / 10 + 1,
        total: exits,
        started: None,
        result: result.clone(),
        done: done.clone(),
    };
    let dev = Arc::new(Mutex::new(watch));
    let inserted = match kind {
        ExitKind::Pio => vm.io_bus().insert(dev, u64::from(LOOP_PORT), 1),
        ExitKind::Mmio => vm.mmio_bus().insert(dev, u64::from(LOOP_MMIO), 8),
    };
    inserted.map_err(|e| Error::Device {
        name: "bench stopwatch",
        reason: e.to_string(),
    })?;
    vm.start()?;
    while done.load(Ordering::Acquire) == 0 {
        if let Some(reason) = vm.exit_signal().get() {
            return Err(Error::Device {
                name: "bench guest",
                reason: format!("ended early: {}", reason.describe()),
            });
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    vm.request_stop();
    let _ = vm.wait();
    let total = result
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .take()
        .unwrap_or_default();
    Ok(total / exits.max(1) as u32)
}

/// Time per exit of a bare loop: the same guest and VM set-up (in-kernel irqchip, PIT), with
/// KVM_RUN called back to back on the calling thread and each exit ignored.
pub fn bare_round_trip(kind: ExitKind, exits: u64) -> Result<Duration, Error> {
    let hv = Hypervisor::new()?;
    let mem = memory::create_guest_memory(32 << 20)?;
    let vm = hv.create_vm(1)?;
    for (slot, region) in memory::regions(&mem).into_iter().enumerate() {
        // SAFETY: `mem` outlives `vm` and every vCPU in this function.
        unsafe { vm.map_memory(slot as u32, region)? };
    }
    vm.setup_platform()?;
    use vm_memory::Bytes;
    mem.write_slice(&loop_program(kind), vm_memory::GuestAddress(LOAD_ADDR))
        .map_err(|e| Error::MapMemory(e.to_string()))?;
    let mut vcpu = vm.create_vcpu(0)?;
    let (regs, sregs) = flat_protected_mode();
    vcpu.set_sregs(&sregs)?;
    vcpu.set_regs(&regs)?;
    let warmup = exits / 10 + 1;
    let mut start = Instant::now();
    for i in 0..warmup + exits {
        if i == warmup {
            start = Instant::now();
        }
        match vcpu.run()? {
            VcpuExit::IoOut(..) | VcpuExit::MmioWrite(..) | VcpuExit::Interrupted => {}
            other => {
                return Err(Error::Device {
                    name: "bare loop",
                    reason: format!("unexpected exit {other:?}"),
                })
            }
        }
    }
    Ok(start.elapsed() / exits.max(1) as u32)
}

/// Builds the smallest VM and returns when its first exit arrives: what `thinvm` does between
/// process start and running the guest. `at_exit` runs as soon as the exit is known, before the
/// VM is torn down. Used by `thinvm bench-startup`.
pub fn first_exit(at_exit: impl FnOnce()) -> Result<ExitReason, Error> {
    let (regs, sregs) = flat_protected_mode();
    // out dx, al to the ACPI PM1a control port with S5: the first exit powers the VM off.
    let mut code = vec![0x66, 0xba, 0x04, 0x06, 0x66, 0xb8];
    code.extend(((5u16 << 10) | (1 << 13)).to_le_bytes());
    code.extend([0x66, 0xef, 0xeb, 0xfe]);
    let cfg = VmConfig {
        payload: Payload::Raw {
            code,
            load_addr: LOAD_ADDR,
            regs: Box::new(regs),
            sregs: Box::new(sregs),
        },
        cpus: 1,
        memory: 32 << 20,
    };
    let mut vm = Vm::new(&cfg, Box::new(std::io::sink()))?;
    vm.start()?;
    let reason = vm.wait();
    at_exit();
    Ok(reason)
}
