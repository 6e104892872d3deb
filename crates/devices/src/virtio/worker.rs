//! The device worker thread: waits on the queue eventfds, and on the descriptors a handler adds
//! to its [`Poller`] (sockets of a backend), and hands each event to a [`QueueHandler`]. Owned
//! by a [`WorkerThread`] whose drop stops and joins it.

use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::Arc;
use std::thread::JoinHandle;

use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

/// Serves the notifications of a device's queues.
pub trait QueueHandler: Send + 'static {
    /// The driver notified queue `queue` (its eventfd was already drained).
    fn handle_queue(&mut self, queue: usize);
    /// A descriptor the handler added to the worker's [`Poller`] with `token` is ready.
    fn handle_fd(&mut self, token: u32, events: EventSet) {
        let _ = (token, events);
    }
}

/// Tokens of handler descriptors carry this bit (queue tokens are their index, the stop token
/// is `u64::MAX`).
const HANDLER_BIT: u64 = 1 << 32;

/// The epoll set of a worker thread, shared with its handler so that the handler can add and
/// remove its own descriptors (a backend's sockets) while it runs.
#[derive(Clone)]
pub struct Poller(Arc<Epoll>);

impl Poller {
    /// A new, empty epoll set.
    pub fn new() -> io::Result<Self> {
        Ok(Poller(Arc::new(Epoll::new()?)))
    }

    /// Watches `fd` for `events`; the handler gets `token` back in [`QueueHandler::handle_fd`].
    pub fn add(&self, fd: RawFd, events: EventSet, token: u32) -> io::Result<()> {
        let ev = EpollEvent::new(events, HANDLER_BIT | u64::from(token));
        self.0.ctl(ControlOperation::Add, fd, ev)
    }

    /// Changes what `fd` is watched for.
    pub fn modify(&self, fd: RawFd, events: EventSet, token: u32) -> io::Result<()> {
        let ev = EpollEvent::new(events, HANDLER_BIT | u64::from(token));
        self.0.ctl(ControlOperation::Modify, fd, ev)
    }

    /// Stops watching `fd` (closing it does that too).
    pub fn remove(&self, fd: RawFd) -> io::Result<()> {
        self.0
            .ctl(ControlOperation::Delete, fd, EpollEvent::default())
    }

    /// Waits up to `timeout_ms` for handler events (for tests that drive a handler by hand;
    /// queue events in the same set are skipped).
    pub fn wait_handler_events(&self, timeout_ms: i32) -> io::Result<Vec<(u32, EventSet)>> {
        let mut ready = [EpollEvent::default(); 32];
        let n = self.0.wait(timeout_ms, &mut ready)?;
        Ok(ready[..n]
            .iter()
            .filter(|e| e.data() & HANDLER_BIT != 0 && e.data() != STOP_TOKEN)
            .map(|e| (e.data() as u32, e.event_set()))
            .collect())
    }

    fn add_raw(&self, fd: RawFd, token: u64) -> io::Result<()> {
        let ev = EpollEvent::new(EventSet::IN, token);
        self.0.ctl(ControlOperation::Add, fd, ev)
    }
}

/// A running worker thread.
pub struct WorkerThread {
    stop: EventFd,
    handle: Option<JoinHandle<()>>,
}

const STOP_TOKEN: u64 = u64::MAX;

impl WorkerThread {
    /// Starts thread `name` serving `events` (index = queue number) with `handler`. Queues
    /// whose eventfd is already signalled are served at once.
    pub fn spawn<H: QueueHandler>(
        name: &str,
        events: Vec<EventFd>,
        handler: H,
    ) -> io::Result<Self> {
        Self::spawn_polled(name, Poller::new()?, events, handler)
    }

    /// As [`WorkerThread::spawn`], waiting also on what the handler added (or adds later) to
    /// `poller`.
    pub fn spawn_polled<H: QueueHandler>(
        name: &str,
        poller: Poller,
        events: Vec<EventFd>,
        handler: H,
    ) -> io::Result<Self> {
        let stop = EventFd::new(EFD_NONBLOCK)?;
        poller.add_raw(stop.as_raw_fd(), STOP_TOKEN)?;
        for (i, e) in events.iter().enumerate() {
            poller.add_raw(e.as_raw_fd(), i as u64)?;
        }
        let stop_clone = stop.try_clone()?;
        let handle = std::thread::Builder::new()
            .name(name.to_string())
            .spawn(move || run(poller, stop_clone, events, handler))?;
        Ok(WorkerThread {
            stop,
            handle: Some(handle),
        })
    }
}

fn run<H: QueueHandler>(poller: Poller, stop: EventFd, events: Vec<EventFd>, mut handler: H) {
    let mut ready = [EpollEvent::default(); 64];
    loop {
        let n = match poller.0.wait(-1, &mut ready) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => {
                tracing::error!("virtio worker: epoll failed: {e}; the device stops serving");
                return;
            }
        };
        for ev in ready.iter().take(n) {
            let token = ev.data();
            if token == STOP_TOKEN {
                let _ = stop.read();
                return;
            }
            if token & HANDLER_BIT != 0 {
                handler.handle_fd(token as u32, ev.event_set());
                continue;
            }
            let Some(evt) = usize::try_from(token).ok().and_then(|i| events.get(i)) else {
                continue;
            };
            // Non-blocking read drains the counter; a spurious wake-up (EAGAIN) is harmless.
            let _ = evt.read();
            handler.handle_queue(token as usize);
        }
    }
}

impl Drop for WorkerThread {
    fn drop(&mut self) {
        if let Err(e) = self.stop.write(1) {
            tracing::error!("cannot signal a virtio worker to stop: {e}");
            return;
        }
        if let Some(h) = self.handle.take() {
            if h.join().is_err() {
                tracing::error!("a virtio worker thread panicked");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc::{channel, Sender};
    use std::time::Duration;

    struct Forward(Sender<usize>);
    impl QueueHandler for Forward {
        fn handle_queue(&mut self, q: usize) {
            self.0.send(q).unwrap();
        }
    }

    #[test]
    fn notifications_reach_the_handler_and_drop_joins() {
        let evts: Vec<EventFd> = (0..2)
            .map(|_| EventFd::new(EFD_NONBLOCK).unwrap())
            .collect();
        let e1 = evts[1].try_clone().unwrap();
        let e0 = evts[0].try_clone().unwrap();
        // Signalled before the thread starts: served at once.
        e0.write(1).unwrap();
        let (tx, rx) = channel();
        let w = WorkerThread::spawn("test-worker", evts, Forward(tx)).unwrap();
        assert_eq!(rx.recv_timeout(Duration::from_secs(5)).unwrap(), 0);
        e1.write(3).unwrap();
        assert_eq!(rx.recv_timeout(Duration::from_secs(5)).unwrap(), 1);
        drop(w);
        // The thread is gone: its sender was dropped with it.
        assert!(rx.recv_timeout(Duration::from_secs(5)).is_err());
    }

    struct Fds(Sender<(u32, bool)>, EventFd);
    impl QueueHandler for Fds {
        fn handle_queue(&mut self, q: usize) {
            self.0.send((q as u32, false)).unwrap();
        }
        fn handle_fd(&mut self, token: u32, events: EventSet) {
            let _ = self.1.read();
            self.0.send((token, events.contains(EventSet::IN))).unwrap();
        }
    }

    #[test]
    fn handler_descriptors_reach_handle_fd() {
        let poller = Poller::new().unwrap();
        let backend = EventFd::new(EFD_NONBLOCK).unwrap();
        // Token 0 and u32::MAX do not collide with queue 0 or the stop token.
        poller.add(backend.as_raw_fd(), EventSet::IN, 0).unwrap();
        let q0 = EventFd::new(EFD_NONBLOCK).unwrap();
        let q0c = q0.try_clone().unwrap();
        let (tx, rx) = channel();
        let h = Fds(tx, backend.try_clone().unwrap());
        let w = WorkerThread::spawn_polled("test-fds", poller.clone(), vec![q0], h).unwrap();
        backend.write(1).unwrap();
        assert_eq!(rx.recv_timeout(Duration::from_secs(5)).unwrap(), (0, true));
        q0c.write(1).unwrap();
        assert_eq!(rx.recv_timeout(Duration::from_secs(5)).unwrap(), (0, false));
        // Added while the worker runs.
        let late = EventFd::new(EFD_NONBLOCK).unwrap();
        poller
            .add(late.as_raw_fd(), EventSet::IN, u32::MAX)
            .unwrap();
        poller.remove(backend.as_raw_fd()).unwrap();
        late.write(1).unwrap();
        assert_eq!(rx.recv_timeout(Duration::from_secs(5)).unwrap().0, u32::MAX);
        drop(w);
    }
}
