//! The device worker thread: waits on the queue eventfds and hands each notification to a
//! [`QueueHandler`]. Owned by a [`WorkerThread`] whose drop stops and joins it.

use std::io;
use std::os::fd::AsRawFd;
use std::thread::JoinHandle;

use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

/// Serves the notifications of a device's queues.
pub trait QueueHandler: Send + 'static {
    /// The driver notified queue `queue` (its eventfd was already drained).
    fn handle_queue(&mut self, queue: usize);
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
        let stop = EventFd::new(EFD_NONBLOCK)?;
        let epoll = Epoll::new()?;
        epoll.ctl(
            ControlOperation::Add,
            stop.as_raw_fd(),
            EpollEvent::new(EventSet::IN, STOP_TOKEN),
        )?;
        for (i, e) in events.iter().enumerate() {
            epoll.ctl(
                ControlOperation::Add,
                e.as_raw_fd(),
                EpollEvent::new(EventSet::IN, i as u64),
            )?;
        }
        let stop_clone = stop.try_clone()?;
        let handle = std::thread::Builder::new()
            .name(name.to_string())
            .spawn(move || run(epoll, stop_clone, events, handler))?;
        Ok(WorkerThread {
            stop,
            handle: Some(handle),
        })
    }
}

fn run<H: QueueHandler>(epoll: Epoll, stop: EventFd, events: Vec<EventFd>, mut handler: H) {
    let mut ready = vec![EpollEvent::default(); events.len() + 1];
    loop {
        let n = match epoll.wait(-1, &mut ready) {
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
}
