//! The balloon's queues and its worker thread (`virtio-balloon`): it waits on the queue
//! eventfds, the VMM's statistics requests and the statistics interval, and is stopped and
//! joined on drop.

use std::io;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use virtio_queue::{Queue, QueueT};
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::chains::{self, MAX_PFN_BYTES, MAX_STATS_BYTES};
use super::control::BalloonShared;
use super::release::{in_memory, inner_pages, release, PfnRuns, PAGE_SIZE};
use super::Role;
use crate::legacy::GuestLog;
use crate::virtio::{InterruptKind, VirtioInterrupt};

const REQUEST: u64 = 10;
const STOP: u64 = 11;
const ROLES: [Role; 4] = [Role::Inflate, Role::Deflate, Role::Stats, Role::Reporting];

/// One warn-once log site per kind of guest mistake.
#[derive(Default)]
struct Logs {
    chain: GuestLog,
    pfn: GuestLog,
    range: GuestLog,
    release: GuestLog,
}

/// What to do with a served chain.
enum Served {
    /// Return it to the driver as used.
    Used,
    /// Keep it (the statistics buffer, returned when fresh figures are wanted).
    Keep,
}

/// The balloon's queues, by role (slot = `Role as usize`), with their transport index.
pub struct BalloonQueues {
    mem: GuestMemoryMmap,
    interrupt: Arc<dyn VirtioInterrupt>,
    shared: Arc<BalloonShared>,
    queues: [Option<(u16, Queue)>; 4],
    pending_stats: Option<u16>,
    logs: Logs,
}

impl BalloonQueues {
    /// Queues by role: inflate, deflate, stats, reporting (each with its transport index).
    pub fn new(
        mem: GuestMemoryMmap,
        interrupt: Arc<dyn VirtioInterrupt>,
        shared: Arc<BalloonShared>,
        queues: [Option<(u16, Queue)>; 4],
    ) -> Self {
        BalloonQueues {
            mem,
            interrupt,
            shared,
            queues,
            pending_stats: None,
            logs: Logs::default(),
        }
    }

    fn role_of(&self, index: u16) -> Option<Role> {
        ROLES
            .into_iter()
            .find(|r| matches!(&self.queues[*r as usize], Some((i, _)) if *i == index))
    }

    /// Serves every chain available on the queue of `role`; returns how many were served.
    pub fn serve(&mut self, role: Role) -> usize {
        let Self {
            mem,
            interrupt,
            shared,
            queues,
            pending_stats,
            logs,
        } = self;
        let Some((index, q)) = queues[role as usize].as_mut() else {
            return 0;
        };
        let (mut used, mut served) = (false, 0);
        loop {
            let mut progress = false;
            while let Some(chain) = q.pop_descriptor_chain(&*mem) {
                progress = true;
                served += 1;
                let head = chain.head_index();
                let result = serve_chain(mem, shared, logs, role, chain);
                if let Served::Keep = result {
                    // One statistics buffer at a time: an older one goes back.
                    if let Some(old) = pending_stats.replace(head) {
                        used |= q.add_used(&*mem, old, 0).is_ok();
                    }
                    continue;
                }
                if let Err(e) = q.add_used(&*mem, head, 0) {
                    logs.chain.warn(format_args!(
                        "virtio-balloon: cannot return descriptor {head}: {e:?}"
                    ));
                }
                used = true;
            }
            // Stop when nothing more is available, or when a bogus avail index makes the ring
            // unservable (no progress): the next notification retries.
            let more = matches!(q.enable_notification(&*mem), Ok(true));
            if !progress || !more {
                break;
            }
        }
        if used && !matches!(q.needs_notification(&*mem), Ok(false)) {
            let _ = interrupt.trigger(InterruptKind::Queue(*index));
        }
        served
    }

    /// Hands the statistics buffer back to the driver, which answers with fresh figures.
    /// Returns whether there was one to hand back.
    pub fn request_stats(&mut self) -> bool {
        let Some((index, q)) = self.queues[Role::Stats as usize].as_mut() else {
            return false;
        };
        let Some(head) = self.pending_stats.take() else {
            return false;
        };
        if q.add_used(&self.mem, head, 0).is_err() {
            return false;
        }
        if !matches!(q.needs_notification(&self.mem), Ok(false)) {
            let _ = self.interrupt.trigger(InterruptKind::Queue(*index));
        }
        true
    }
}

fn count(c: &AtomicU64, n: u64) {
    c.fetch_add(n, Ordering::Relaxed);
}

fn serve_chain<I: Iterator<Item = virtio_queue::desc::split::Descriptor>>(
    mem: &GuestMemoryMmap,
    shared: &BalloonShared,
    logs: &Logs,
    role: Role,
    chain: I,
) -> Served {
    let rules = |writable_ok, max_bytes, in_memory| chains::Rules {
        writable_ok,
        max_bytes,
        in_memory,
    };
    let rules = match role {
        Role::Inflate | Role::Deflate => rules(false, MAX_PFN_BYTES, true),
        Role::Stats => rules(false, MAX_STATS_BYTES, true),
        // Linux adds the reported ranges as device-writable buffers (nothing is written);
        // each range is checked on its own, so one bad range does not lose the others.
        Role::Reporting => rules(true, u64::MAX, false),
    };
    let refuse = |e: chains::ChainError| {
        count(&shared.stats.refused_chains, 1);
        logs.chain
            .warn(format_args!("virtio-balloon: {role:?} chain refused: {e}"));
        Served::Used
    };
    let descs = match chains::descriptors(mem, chain, rules) {
        Ok(d) => d,
        Err(e) => return refuse(e),
    };
    let result = match role {
        Role::Inflate | Role::Deflate => pages(mem, shared, logs, role, &descs),
        Role::Stats => {
            let mut guest = shared.guest();
            chains::read_stats(mem, &descs, &mut guest).map(|_| {
                guest.updated = Some(Instant::now());
                count(&shared.stats.stats_updates, 1);
            })
        }
        Role::Reporting => {
            for d in &descs {
                report(mem, shared, logs, d.addr().0, u64::from(d.len()));
            }
            Ok(())
        }
    };
    match (result, role) {
        (Err(e), _) => refuse(e),
        (Ok(()), Role::Stats) => Served::Keep,
        (Ok(()), _) => Served::Used,
    }
}

/// Inflate: releases each valid page, consecutive ones together. Deflate: counts them.
fn pages(
    mem: &GuestMemoryMmap,
    shared: &BalloonShared,
    logs: &Logs,
    role: Role,
    descs: &[virtio_queue::desc::split::Descriptor],
) -> Result<(), chains::ChainError> {
    let mut runs = PfnRuns::default();
    let flush = |run: Option<(u64, u64)>| {
        let Some((pfn, n)) = run else { return };
        if role == Role::Deflate {
            count(&shared.stats.deflated_pages, n);
            return;
        }
        match release(mem, pfn * PAGE_SIZE, n * PAGE_SIZE) {
            Ok(()) => count(&shared.stats.inflated_pages, n),
            Err(e) => {
                count(&shared.stats.release_errors, 1);
                logs.release
                    .warn(format_args!("virtio-balloon: inflate: {e}"));
            }
        }
    };
    chains::for_each_pfn(mem, descs, |pfn| {
        let addr = u64::from(pfn) * PAGE_SIZE;
        if !in_memory(mem, addr, PAGE_SIZE) {
            count(&shared.stats.bad_pfns, 1);
            logs.pfn.warn(format_args!(
                "virtio-balloon: {role:?}: page frame {pfn:#x} is outside guest memory; skipped"
            ));
            return;
        }
        flush(runs.push(u64::from(pfn)));
    })?;
    flush(runs.finish());
    Ok(())
}

/// Free page reporting: releases one reported range.
fn report(mem: &GuestMemoryMmap, shared: &BalloonShared, logs: &Logs, addr: u64, len: u64) {
    let inner = inner_pages(addr, len).filter(|_| in_memory(mem, addr, len));
    let Some((start, n)) = inner else {
        count(&shared.stats.bad_ranges, 1);
        logs.range.warn(format_args!(
            "virtio-balloon: reported range {addr:#x}+{len:#x} is empty or outside guest memory"
        ));
        return;
    };
    match release(mem, start, n) {
        Ok(()) => count(&shared.stats.reported_bytes, n),
        Err(e) => {
            count(&shared.stats.release_errors, 1);
            logs.release
                .warn(format_args!("virtio-balloon: free page reporting: {e}"));
        }
    }
}

/// The running worker thread; dropping it stops and joins the thread.
pub(super) struct BalloonWorker {
    stop: EventFd,
    handle: Option<JoinHandle<()>>,
}

impl BalloonWorker {
    /// Serves `queues`; `events` are (transport queue index, eventfd) of the queues in use.
    pub(super) fn spawn(
        queues: BalloonQueues,
        events: Vec<(u16, EventFd)>,
        interval: Duration,
    ) -> io::Result<Self> {
        let stop = EventFd::new(EFD_NONBLOCK)?;
        let request = queues.shared.stats_request.try_clone()?;
        let epoll = Epoll::new()?;
        let add = |fd: i32, token: u64| {
            epoll.ctl(
                ControlOperation::Add,
                fd,
                EpollEvent::new(EventSet::IN, token),
            )
        };
        add(stop.as_raw_fd(), STOP)?;
        add(request.as_raw_fd(), REQUEST)?;
        let mut by_role = Vec::new();
        for (index, evt) in events {
            if let Some(role) = queues.role_of(index) {
                add(evt.as_raw_fd(), role as u64)?;
                by_role.push((role, evt));
            }
        }
        let stop_clone = stop.try_clone()?;
        let handle = std::thread::Builder::new()
            .name("virtio-balloon".into())
            .spawn(move || run(epoll, stop_clone, request, by_role, queues, interval))?;
        Ok(BalloonWorker {
            stop,
            handle: Some(handle),
        })
    }
}

fn run(
    epoll: Epoll,
    stop: EventFd,
    request: EventFd,
    events: Vec<(Role, EventFd)>,
    mut queues: BalloonQueues,
    interval: Duration,
) {
    let mut ready = [EpollEvent::default(); 8];
    let has_stats = queues.queues[Role::Stats as usize].is_some();
    let mut next_stats = Instant::now() + interval;
    // Queues the driver filled before the thread started.
    for (role, _) in &events {
        queues.serve(*role);
    }
    loop {
        let timeout = if has_stats {
            let left = next_stats.saturating_duration_since(Instant::now());
            i32::try_from(left.as_millis()).unwrap_or(i32::MAX)
        } else {
            -1
        };
        let n = match epoll.wait(timeout, &mut ready) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => {
                tracing::error!("virtio-balloon: epoll failed: {e}; the device stops serving");
                return;
            }
        };
        for ev in ready.iter().take(n) {
            match ev.data() {
                STOP => {
                    let _ = stop.read();
                    return;
                }
                REQUEST => {
                    let _ = request.read();
                    queues.request_stats();
                }
                token => {
                    let Some((role, evt)) = events.iter().find(|(r, _)| *r as u64 == token) else {
                        continue;
                    };
                    // Non-blocking: a spurious wake-up (EAGAIN) is harmless.
                    let _ = evt.read();
                    queues.serve(*role);
                }
            }
        }
        if has_stats && Instant::now() >= next_stats {
            queues.request_stats();
            next_stats = Instant::now() + interval;
        }
    }
}

impl Drop for BalloonWorker {
    fn drop(&mut self) {
        if let Err(e) = self.stop.write(1) {
            tracing::error!("cannot signal the virtio-balloon worker to stop: {e}");
            return;
        }
        if let Some(h) = self.handle.take() {
            if h.join().is_err() {
                tracing::error!("the virtio-balloon worker thread panicked");
            }
        }
    }
}

/// Fuzzing entry: serves every chain available on `queue` in the role `role` (no worker
/// thread). Returns the number of chains served.
pub fn serve_for_fuzz(
    mem: GuestMemoryMmap,
    queue: Queue,
    role: Role,
    interrupt: Arc<dyn VirtioInterrupt>,
) -> usize {
    let memory = super::release::guest_size(&mem);
    let Ok(shared) = BalloonShared::new(memory) else {
        return 0;
    };
    let mut slots: [Option<(u16, Queue)>; 4] = Default::default();
    slots[role as usize] = Some((0, queue));
    let mut q = BalloonQueues::new(mem, interrupt, Arc::new(shared), slots);
    let n = q.serve(role);
    q.request_stats();
    n
}
