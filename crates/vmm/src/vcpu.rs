//! vCPU threads: an explicit state machine (running, paused, finished) driven by requests from
//! the VMM, and a plain exit handler that dispatches port I/O and MMIO to the buses.

use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;

use devices::Bus;
use hypervisor::{Kicker, Vcpu, VcpuExit};

use crate::exit::{ExitReason, ExitSignal};
use crate::Error;

/// What the VMM wants the vCPUs to do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Request {
    Run,
    Pause,
    Stop,
}

/// Lock-free exit counters of one vCPU.
#[derive(Debug, Default)]
pub struct VcpuMetrics {
    pub io_in: AtomicU64,
    pub io_out: AtomicU64,
    pub mmio_read: AtomicU64,
    pub mmio_write: AtomicU64,
    pub unhandled_io: AtomicU64,
    pub kicks: AtomicU64,
}

/// The shared request plus the count of vCPUs that acknowledged a pause. The request is also
/// mirrored in an atomic so the run loop reads it without a lock on every exit.
pub struct Control {
    state: Mutex<(Request, usize)>,
    fast: AtomicU8,
    changed: Condvar,
}

fn encode(r: Request) -> u8 {
    match r {
        Request::Run => 0,
        Request::Pause => 1,
        Request::Stop => 2,
    }
}

fn decode(v: u8) -> Request {
    match v {
        0 => Request::Run,
        1 => Request::Pause,
        _ => Request::Stop,
    }
}

impl Control {
    pub fn new() -> Self {
        Control {
            state: Mutex::new((Request::Run, 0)),
            fast: AtomicU8::new(encode(Request::Run)),
            changed: Condvar::new(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, (Request, usize)> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Sets the request and wakes paused vCPUs.
    pub fn request(&self, r: Request) {
        let mut g = self.lock();
        g.0 = r;
        self.fast.store(encode(r), Ordering::SeqCst);
        drop(g);
        self.changed.notify_all();
    }

    /// The current request.
    pub fn current(&self) -> Request {
        decode(self.fast.load(Ordering::SeqCst))
    }

    /// Waits until `n` vCPUs are parked in the paused state (or the request changed).
    pub fn wait_paused(&self, n: usize) {
        let mut g = self.lock();
        while g.0 == Request::Pause && g.1 < n {
            g = self.changed.wait(g).unwrap_or_else(|p| p.into_inner());
        }
    }

    /// Parks the calling vCPU while the request is Pause; returns the request that ended it.
    fn park(&self) -> Request {
        let mut g = self.lock();
        g.1 += 1;
        self.changed.notify_all();
        while g.0 == Request::Pause {
            g = self.changed.wait(g).unwrap_or_else(|p| p.into_inner());
        }
        g.1 -= 1;
        g.0
    }
}

impl Default for Control {
    fn default() -> Self {
        Self::new()
    }
}

/// What the run loop does after an exit.
#[derive(Debug, PartialEq, Eq)]
pub enum ExitAction {
    Continue,
    Stop(ExitReason),
}

/// Handles one exit. A plain function, unit-tested with synthetic exits.
pub fn handle_exit(exit: VcpuExit<'_>, io: &Bus, mmio: &Bus, m: &VcpuMetrics) -> ExitAction {
    match exit {
        VcpuExit::IoIn(port, data) => {
            m.io_in.fetch_add(1, Ordering::Relaxed);
            if !io.read(u64::from(port), data) {
                m.unhandled_io.fetch_add(1, Ordering::Relaxed);
                data.fill(0xff);
            }
        }
        VcpuExit::IoOut(port, data) => {
            m.io_out.fetch_add(1, Ordering::Relaxed);
            if !io.write(u64::from(port), data) {
                m.unhandled_io.fetch_add(1, Ordering::Relaxed);
            }
        }
        VcpuExit::MmioRead(addr, data) => {
            m.mmio_read.fetch_add(1, Ordering::Relaxed);
            if !mmio.read(addr, data) {
                m.unhandled_io.fetch_add(1, Ordering::Relaxed);
                data.fill(0xff);
            }
        }
        VcpuExit::MmioWrite(addr, data) => {
            m.mmio_write.fetch_add(1, Ordering::Relaxed);
            if !mmio.write(addr, data) {
                m.unhandled_io.fetch_add(1, Ordering::Relaxed);
            }
        }
        VcpuExit::Interrupted => {
            m.kicks.fetch_add(1, Ordering::Relaxed);
        }
        // With the in-kernel LAPIC a halt never reaches us; without it, just run again.
        VcpuExit::Hlt => {}
        VcpuExit::Shutdown => return ExitAction::Stop(ExitReason::TripleFault),
        VcpuExit::SystemPowerOff => return ExitAction::Stop(ExitReason::PowerOff),
        VcpuExit::SystemReset => return ExitAction::Stop(ExitReason::Reboot),
        VcpuExit::InternalError { suberror } => {
            let what = if suberror == 1 {
                " (instruction emulation failed: on a PVM host unmodified guests cannot run)"
            } else {
                ""
            };
            return ExitAction::Stop(ExitReason::Internal(format!(
                "KVM internal error, suberror {suberror}{what}"
            )));
        }
        VcpuExit::FailEntry { reason } => {
            return ExitAction::Stop(ExitReason::Internal(format!(
                "KVM could not enter the guest (hardware reason {reason:#x})"
            )))
        }
        VcpuExit::Other(what) => {
            return ExitAction::Stop(ExitReason::Internal(format!(
                "unexpected vCPU exit: {what}"
            )))
        }
    }
    ExitAction::Continue
}

/// Everything a vCPU thread shares with the VMM.
#[derive(Clone)]
pub struct VcpuContext {
    pub io: Bus,
    pub mmio: Bus,
    pub control: Arc<Control>,
    pub exit: Arc<ExitSignal>,
    pub metrics: Arc<VcpuMetrics>,
}

/// Owns a vCPU thread; dropping it stops and joins the thread.
pub struct VcpuHandle {
    thread: Option<JoinHandle<()>>,
    kicker: Kicker,
    control: Arc<Control>,
}

impl VcpuHandle {
    /// Starts `vcpu` on a thread named `vcpu<N>`.
    pub fn spawn(vcpu: Vcpu, ctx: VcpuContext) -> Result<Self, Error> {
        let (tx, rx) = std::sync::mpsc::channel();
        let control = ctx.control.clone();
        let thread = std::thread::Builder::new()
            .name(format!("vcpu{}", vcpu.index()))
            .spawn(move || run_thread(vcpu, ctx, tx))
            .map_err(Error::Thread)?;
        let kicker = match rx.recv() {
            Ok(Ok(k)) => k,
            Ok(Err(e)) => {
                let _ = thread.join();
                return Err(Error::Hypervisor(e));
            }
            Err(_) => {
                let _ = thread.join();
                return Err(Error::Thread(std::io::Error::other(
                    "vCPU thread died at start",
                )));
            }
        };
        Ok(VcpuHandle {
            thread: Some(thread),
            kicker,
            control,
        })
    }

    /// Interrupts the vCPU so it looks at the current request.
    pub fn kick(&self) {
        if self.thread.as_ref().is_some_and(|t| !t.is_finished()) {
            self.kicker.kick();
        }
    }
}

impl Drop for VcpuHandle {
    fn drop(&mut self) {
        self.control.request(Request::Stop);
        if let Some(t) = self.thread.take() {
            while !t.is_finished() {
                self.kicker.kick();
                std::thread::sleep(std::time::Duration::from_millis(1));
            }
            let _ = t.join();
        }
    }
}

fn run_thread(
    mut vcpu: Vcpu,
    ctx: VcpuContext,
    started: std::sync::mpsc::Sender<hypervisor::Result<Kicker>>,
) {
    match vcpu.bind_to_thread() {
        Ok(k) => {
            let _ = started.send(Ok(k));
        }
        Err(e) => {
            let _ = started.send(Err(e));
            return;
        }
    }
    loop {
        // Clear a pending kick *before* reading the request, so a kick that arrives after the
        // read makes the next KVM_RUN return at once instead of being lost.
        vcpu.clear_kick();
        match ctx.control.current() {
            Request::Stop => break,
            Request::Pause => {
                if ctx.control.park() == Request::Stop {
                    break;
                }
                continue;
            }
            Request::Run => {}
        }
        let action = match vcpu.run() {
            Ok(exit) => handle_exit(exit, &ctx.io, &ctx.mmio, &ctx.metrics),
            Err(e) => ExitAction::Stop(ExitReason::Internal(e.to_string())),
        };
        if let ExitAction::Stop(reason) = action {
            ctx.exit.set(reason);
            break;
        }
    }
}
