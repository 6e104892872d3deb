//! One KVM vCPU: its configuration, register state, and the run call that turns KVM's exits into
//! the neutral [`VcpuExit`].

use std::cell::Cell;
use std::ptr::null_mut;

use kvm_bindings::{kvm_fpu, kvm_msr_entry, kvm_regs, kvm_run, CpuId, Msrs};
use kvm_ioctls::{VcpuExit as KvmExit, VcpuFd};
use vmm_sys_util::signal::{register_signal_handler, SIGRTMIN};

use crate::{Error, Result};
use arch::{Regs, SRegs, Segment};

/// Why KVM_RUN returned, without any KVM type in it.
#[derive(Debug)]
pub enum VcpuExit<'a> {
    /// The guest read from an I/O port: fill `data`.
    IoIn(u16, &'a mut [u8]),
    /// The guest wrote to an I/O port.
    IoOut(u16, &'a [u8]),
    /// The guest read unbacked physical memory: fill `data`.
    MmioRead(u64, &'a mut [u8]),
    /// The guest wrote unbacked physical memory.
    MmioWrite(u64, &'a [u8]),
    /// The vCPU halted (only without an in-kernel LAPIC).
    Hlt,
    /// The guest triple-faulted (or otherwise caused a shutdown exit).
    Shutdown,
    /// The guest asked for a system reset (KVM_SYSTEM_EVENT_RESET).
    SystemReset,
    /// The guest asked to be powered off (KVM_SYSTEM_EVENT_SHUTDOWN).
    SystemPowerOff,
    /// KVM_RUN was interrupted by a kick or a signal: check for requests and run again.
    Interrupted,
    /// KVM could not handle the guest (e.g. emulation failure, suberror 1).
    InternalError { suberror: u32 },
    /// Entering the guest failed (bad vCPU state).
    FailEntry { reason: u64 },
    /// Any other exit, named for the error message.
    Other(&'static str),
}

thread_local! {
    /// The kvm_run page of the vCPU that runs on this thread, for the kick signal handler.
    static THREAD_KVM_RUN: Cell<*mut kvm_run> = const { Cell::new(null_mut()) };
}

extern "C" fn handle_kick(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {
    THREAD_KVM_RUN.with(|p| {
        let run = p.get();
        if !run.is_null() {
            // SAFETY: the pointer is this thread's vCPU kvm_run mapping, set by `bind_to_thread`
            // and cleared before the vCPU is dropped; a single byte store is async-signal-safe.
            unsafe { (*run).immediate_exit = 1 };
        }
    });
}

/// The signal that kicks a vCPU out of KVM_RUN.
pub fn kick_signal() -> libc::c_int {
    SIGRTMIN()
}

/// Interrupts a vCPU thread: if it is in KVM_RUN, KVM returns at once; if it is about to enter,
/// `immediate_exit` makes the next KVM_RUN return at once.
#[derive(Clone, Copy, Debug)]
pub struct Kicker {
    thread: libc::pthread_t,
}

impl Kicker {
    /// Sends the kick signal to the vCPU's thread. Only call while that thread is alive (the VMM
    /// kicks before it joins).
    pub fn kick(&self) {
        // SAFETY: pthread_kill with a thread id taken from a live (not yet joined) thread and a
        // signal whose handler only stores one byte.
        unsafe { libc::pthread_kill(self.thread, kick_signal()) };
    }
}

/// One vCPU.
pub struct Vcpu {
    fd: VcpuFd,
    index: u8,
    run_ptr: *mut kvm_run,
}

// SAFETY: the raw kvm_run pointer refers to the vCPU fd's own mmap, which moves with the fd;
// a Vcpu is used by one thread at a time (it is moved into its thread).
unsafe impl Send for Vcpu {}

const MSR_IA32_SYSENTER_CS: u32 = 0x174;
const MSR_IA32_SYSENTER_ESP: u32 = 0x175;
const MSR_IA32_SYSENTER_EIP: u32 = 0x176;
const MSR_IA32_TSC: u32 = 0x10;
const MSR_IA32_MISC_ENABLE: u32 = 0x1a0;
const MSR_MTRR_DEF_TYPE: u32 = 0x2ff;
const MSR_STAR: u32 = 0xc000_0081;
const MSR_LSTAR: u32 = 0xc000_0082;
const MSR_CSTAR: u32 = 0xc000_0083;
const MSR_SYSCALL_MASK: u32 = 0xc000_0084;
const MSR_KERNEL_GS_BASE: u32 = 0xc000_0102;

const APIC_LVT0: usize = 0x350;
const APIC_LVT1: usize = 0x360;
const APIC_MODE_NMI: u32 = 0x4;
const APIC_MODE_EXTINT: u32 = 0x7;

impl Vcpu {
    pub(crate) fn new(mut fd: VcpuFd, index: u8) -> Self {
        let run_ptr = fd.get_kvm_run() as *mut kvm_run;
        Vcpu { fd, index, run_ptr }
    }

    /// This vCPU's index (= its APIC ID).
    pub fn index(&self) -> u8 {
        self.index
    }

    pub(crate) fn configure(&self, cpuid: &CpuId) -> Result<()> {
        self.fd
            .set_cpuid2(cpuid)
            .map_err(Error::ioctl("KVM_SET_CPUID2"))?;
        let entries: Vec<kvm_msr_entry> = [
            (MSR_IA32_SYSENTER_CS, 0),
            (MSR_IA32_SYSENTER_ESP, 0),
            (MSR_IA32_SYSENTER_EIP, 0),
            (MSR_STAR, 0),
            (MSR_CSTAR, 0),
            (MSR_KERNEL_GS_BASE, 0),
            (MSR_SYSCALL_MASK, 0),
            (MSR_LSTAR, 0),
            (MSR_IA32_TSC, 0),
            (MSR_IA32_MISC_ENABLE, 1),          // fast strings
            (MSR_MTRR_DEF_TYPE, (1 << 11) | 6), // MTRRs on, default write-back
        ]
        .iter()
        .map(|&(index, data)| kvm_msr_entry {
            index,
            data,
            ..Default::default()
        })
        .collect();
        let msrs = Msrs::from_entries(&entries).map_err(|_| Error::Ioctl {
            op: "building the MSR list",
            source: std::io::Error::from_raw_os_error(libc::E2BIG),
        })?;
        // PVM accepts fewer MSRs than hardware KVM; KVM_SET_MSRS returns how many it took, and
        // the ones it refuses are not needed to boot.
        self.fd
            .set_msrs(&msrs)
            .map_err(Error::ioctl("KVM_SET_MSRS"))?;
        let fpu = kvm_fpu {
            fcw: 0x37f,
            mxcsr: 0x1f80,
            ..Default::default()
        };
        self.fd.set_fpu(&fpu).map_err(Error::ioctl("KVM_SET_FPU"))?;
        self.configure_lapic()
    }

    fn configure_lapic(&self) -> Result<()> {
        let mut lapic = self.fd.get_lapic().map_err(Error::ioctl("KVM_GET_LAPIC"))?;
        for (reg, mode) in [(APIC_LVT0, APIC_MODE_EXTINT), (APIC_LVT1, APIC_MODE_NMI)] {
            let bytes: [u8; 4] = std::array::from_fn(|i| lapic.regs[reg + i] as u8);
            let value = u32::from_le_bytes(bytes);
            let value = (value & !0x700) | (mode << 8);
            for (i, b) in value.to_le_bytes().iter().enumerate() {
                lapic.regs[reg + i] = *b as _;
            }
        }
        self.fd
            .set_lapic(&lapic)
            .map_err(Error::ioctl("KVM_SET_LAPIC"))
    }

    /// Sets the general purpose registers.
    pub fn set_regs(&self, r: &Regs) -> Result<()> {
        let regs = kvm_regs {
            rax: r.rax,
            rbx: r.rbx,
            rcx: r.rcx,
            rdx: r.rdx,
            rsi: r.rsi,
            rdi: r.rdi,
            rsp: r.rsp,
            rbp: r.rbp,
            rip: r.rip,
            rflags: r.rflags,
            ..Default::default()
        };
        self.fd
            .set_regs(&regs)
            .map_err(Error::ioctl("KVM_SET_REGS"))
    }

    /// Reads the general purpose registers.
    pub fn regs(&self) -> Result<Regs> {
        let r = self.fd.get_regs().map_err(Error::ioctl("KVM_GET_REGS"))?;
        Ok(Regs {
            rax: r.rax,
            rbx: r.rbx,
            rcx: r.rcx,
            rdx: r.rdx,
            rsi: r.rsi,
            rdi: r.rdi,
            rsp: r.rsp,
            rbp: r.rbp,
            rip: r.rip,
            rflags: r.rflags,
        })
    }

    /// Sets segment, table and control registers (keeping KVM's APIC base and interrupt bitmap).
    pub fn set_sregs(&self, s: &SRegs) -> Result<()> {
        let mut sregs = self.fd.get_sregs().map_err(Error::ioctl("KVM_GET_SREGS"))?;
        sregs.cs = to_kvm_segment(&s.cs);
        sregs.ds = to_kvm_segment(&s.ds);
        sregs.es = to_kvm_segment(&s.es);
        sregs.fs = to_kvm_segment(&s.fs);
        sregs.gs = to_kvm_segment(&s.gs);
        sregs.ss = to_kvm_segment(&s.ss);
        sregs.tr = to_kvm_segment(&s.tr);
        sregs.ldt = to_kvm_segment(&s.ldt);
        sregs.gdt.base = s.gdt.base;
        sregs.gdt.limit = s.gdt.limit;
        sregs.idt.base = s.idt.base;
        sregs.idt.limit = s.idt.limit;
        sregs.cr0 = s.cr0;
        sregs.cr3 = s.cr3;
        sregs.cr4 = s.cr4;
        sregs.efer = s.efer;
        self.fd
            .set_sregs(&sregs)
            .map_err(Error::ioctl("KVM_SET_SREGS"))
    }

    /// Makes this thread the vCPU's runner: the kick signal handler will find its kvm_run page.
    /// Returns the [`Kicker`] other threads use to interrupt it.
    pub fn bind_to_thread(&self) -> Result<Kicker> {
        register_signal_handler(kick_signal(), handle_kick).map_err(|e| Error::Ioctl {
            op: "installing the vCPU kick signal handler",
            source: std::io::Error::from_raw_os_error(e.errno()),
        })?;
        THREAD_KVM_RUN.with(|p| p.set(self.run_ptr));
        // SAFETY: pthread_self has no preconditions.
        let thread = unsafe { libc::pthread_self() };
        Ok(Kicker { thread })
    }

    /// Runs the guest until the next exit that needs the VMM.
    pub fn run(&mut self) -> Result<VcpuExit<'_>> {
        let run_ptr = self.run_ptr;
        match self.fd.run() {
            Ok(exit) => Ok(match exit {
                KvmExit::IoIn(port, data) => VcpuExit::IoIn(port, data),
                KvmExit::IoOut(port, data) => VcpuExit::IoOut(port, data),
                KvmExit::MmioRead(addr, data) => VcpuExit::MmioRead(addr, data),
                KvmExit::MmioWrite(addr, data) => VcpuExit::MmioWrite(addr, data),
                KvmExit::Hlt => VcpuExit::Hlt,
                KvmExit::Shutdown => VcpuExit::Shutdown,
                KvmExit::Intr => VcpuExit::Interrupted,
                KvmExit::SystemEvent(kind, _) => match kind {
                    kvm_bindings::KVM_SYSTEM_EVENT_SHUTDOWN => VcpuExit::SystemPowerOff,
                    kvm_bindings::KVM_SYSTEM_EVENT_RESET => VcpuExit::SystemReset,
                    _ => VcpuExit::Other("system event"),
                },
                KvmExit::InternalError => {
                    // SAFETY: run_ptr is this vCPU's kvm_run mapping; the exit reason says the
                    // `internal` member of the union is the valid one.
                    let suberror = unsafe { (*run_ptr).__bindgen_anon_1.internal.suberror };
                    VcpuExit::InternalError { suberror }
                }
                KvmExit::FailEntry(reason, _) => VcpuExit::FailEntry { reason },
                KvmExit::Exception => VcpuExit::Other("exception"),
                KvmExit::Debug(_) => VcpuExit::Other("debug"),
                KvmExit::IrqWindowOpen => VcpuExit::Other("irq window open"),
                _ => VcpuExit::Other("unhandled KVM exit"),
            }),
            Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => {
                Ok(VcpuExit::Interrupted)
            }
            Err(e) => Err(Error::Ioctl {
                op: "KVM_RUN",
                source: std::io::Error::from_raw_os_error(e.errno()),
            }),
        }
    }

    /// Clears a pending kick so the next KVM_RUN enters the guest.
    pub fn clear_kick(&mut self) {
        self.fd.set_kvm_immediate_exit(0);
    }
}

impl Drop for Vcpu {
    fn drop(&mut self) {
        THREAD_KVM_RUN.with(|p| {
            if p.get() == self.run_ptr {
                p.set(null_mut());
            }
        });
    }
}

fn to_kvm_segment(s: &Segment) -> kvm_bindings::kvm_segment {
    kvm_bindings::kvm_segment {
        base: s.base,
        limit: s.limit,
        selector: s.selector,
        type_: s.type_,
        present: s.present,
        dpl: s.dpl,
        db: s.db,
        s: s.s,
        l: s.l,
        g: s.g,
        avl: s.avl,
        unusable: s.unusable,
        padding: 0,
    }
}
