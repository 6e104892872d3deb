//! Deadlines of the muxer's slots (host sockets still sending their CONNECT line, REQUESTs the
//! guest has not answered) and the one timerfd, in the worker's epoll set, armed for the
//! earliest of them. O(log n) to set, cancel or expire a deadline; no thread, no polling.
//!
//! The timerfd is never read: re-arming or disarming it (`timerfd_settime`) clears its
//! expiration count, and [`Deadlines::rearm`] runs after every expiry, so the level-triggered
//! descriptor is readable only while a deadline may be due. Cancelling a deadline leaves the
//! timer as it is: an early wake-up finds nothing due and re-arms for the next one.

use std::collections::{BTreeSet, HashMap};
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::time::{Duration, Instant};

use vmm_sys_util::timerfd::TimerFd;

/// The deadlines of one muxer.
pub struct Deadlines {
    by_time: BTreeSet<(Instant, usize)>,
    of_slot: HashMap<usize, Instant>,
    timer: TimerFd,
    /// When the timer fires, if it is armed.
    armed: Option<Instant>,
}

impl Deadlines {
    /// No deadline, the timer disarmed.
    pub fn new() -> io::Result<Self> {
        Ok(Deadlines {
            by_time: BTreeSet::new(),
            of_slot: HashMap::new(),
            timer: TimerFd::new()?,
            armed: None,
        })
    }

    /// The timer's descriptor (readable when a deadline may be due).
    pub fn fd(&self) -> RawFd {
        self.timer.as_raw_fd()
    }

    /// Slot `slot` expires at `at` (replacing its deadline if it had one); `now` is the time.
    pub fn set(&mut self, slot: usize, at: Instant, now: Instant) {
        self.cancel(slot);
        self.by_time.insert((at, slot));
        self.of_slot.insert(slot, at);
        if self.armed.is_none_or(|a| at < a) {
            self.arm(at, now);
        }
    }

    /// Slot `slot` has no deadline any more.
    pub fn cancel(&mut self, slot: usize) {
        if let Some(at) = self.of_slot.remove(&slot) {
            self.by_time.remove(&(at, slot));
        }
    }

    /// The earliest deadline.
    pub fn next(&self) -> Option<Instant> {
        self.by_time.first().map(|&(at, _)| at)
    }

    /// Removes and returns a slot whose deadline is `now` or earlier, the earliest first.
    pub fn pop_due(&mut self, now: Instant) -> Option<usize> {
        let &(at, slot) = self.by_time.first()?;
        if at > now {
            return None;
        }
        self.by_time.pop_first();
        self.of_slot.remove(&slot);
        Some(slot)
    }

    /// Arms the timer for the earliest deadline, or disarms it (after the due ones were
    /// popped; this also makes the descriptor unreadable).
    pub fn rearm(&mut self, now: Instant) {
        match self.next() {
            Some(at) => self.arm(at, now),
            None => {
                self.armed = None;
                if let Err(e) = self.timer.clear() {
                    tracing::warn!("virtio-vsock: cannot disarm the connection timer: {e}");
                }
            }
        }
    }

    fn arm(&mut self, at: Instant, now: Instant) {
        // A zero duration would disarm the timer: a due deadline fires after 1 ns instead.
        let after = at
            .saturating_duration_since(now)
            .max(Duration::from_nanos(1));
        match self.timer.reset(after, None) {
            Ok(()) => self.armed = Some(at),
            Err(e) => tracing::warn!("virtio-vsock: cannot arm the connection timer: {e}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};

    #[test]
    fn deadlines_pop_in_time_order_and_cancel() {
        let mut d = Deadlines::new().unwrap();
        let t = Instant::now() + Duration::from_secs(3600);
        d.set(7, t + Duration::from_secs(3), t);
        d.set(2, t + Duration::from_secs(1), t);
        d.set(5, t + Duration::from_secs(2), t);
        d.set(9, t + Duration::from_secs(4), t);
        assert_eq!(d.next(), Some(t + Duration::from_secs(1)));
        // Replaced: slot 7 now expires last.
        d.set(7, t + Duration::from_secs(5), t);
        d.cancel(9);
        d.cancel(9);
        assert_eq!(d.pop_due(t), None, "nothing due yet");
        let mut order = Vec::new();
        while let Some(s) = d.pop_due(t + Duration::from_secs(10)) {
            order.push(s);
        }
        assert_eq!(order, [2, 5, 7]);
        assert_eq!(d.next(), None);
        assert!(d.of_slot.is_empty());
    }

    #[test]
    fn the_timer_follows_the_earliest_deadline() {
        let mut d = Deadlines::new().unwrap();
        let now = Instant::now();
        d.set(1, now + Duration::from_secs(60), now);
        assert_eq!(d.armed, Some(now + Duration::from_secs(60)));
        assert!(d.timer.is_armed().unwrap());
        // A later one leaves the timer alone, an earlier one moves it.
        d.set(2, now + Duration::from_secs(90), now);
        assert_eq!(d.armed, Some(now + Duration::from_secs(60)));
        d.set(3, now + Duration::from_secs(30), now);
        assert_eq!(d.armed, Some(now + Duration::from_secs(30)));
        // A deadline already past fires at once (a zero duration would disarm the timer).
        d.set(4, now - Duration::from_secs(1), now);
        let ep = Epoll::new().unwrap();
        let ev = EpollEvent::new(EventSet::IN, 0);
        ep.ctl(ControlOperation::Add, d.fd(), ev).unwrap();
        let mut ready = [EpollEvent::default(); 1];
        assert_eq!(ep.wait(5000, &mut ready).unwrap(), 1, "the timer fired");
        // Re-arming clears the expiration: the descriptor is quiet until the next deadline.
        d.cancel(4);
        d.rearm(now);
        assert_eq!(d.armed, Some(now + Duration::from_secs(30)));
        assert_eq!(
            ep.wait(0, &mut ready).unwrap(),
            0,
            "not readable after re-arming"
        );
        for s in 1..=4 {
            d.cancel(s);
        }
        d.rearm(now);
        assert_eq!(d.armed, None);
        assert!(!d.timer.is_armed().unwrap());
    }
}
