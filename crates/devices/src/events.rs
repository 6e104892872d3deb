//! Guest-initiated platform events.

use std::sync::mpsc::Sender;

/// Something the guest asked of the platform, reported by a device to the VMM.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GuestEvent {
    /// ACPI S5 (SLP_TYP 5 with SLP_EN): the guest powered itself off.
    PowerOff,
    /// Reset register or i8042 reset pulse: the guest asked for a reboot.
    Reboot,
    /// pvpanic: the guest kernel panicked.
    Panic,
}

/// Receiver of [`GuestEvent`]s; implemented by the VMM's control loop.
///
/// `notify` is called from a vCPU thread while the device lock is held: it must not block
/// for long and must not access the device that calls it.
pub trait GuestEventSink: Send + Sync {
    /// Reports `event`.
    fn notify(&self, event: GuestEvent);
}

/// A channel sender is a sink; an event sent after the receiver is gone is dropped
/// (the VMM is shutting down already).
impl GuestEventSink for Sender<GuestEvent> {
    fn notify(&self, event: GuestEvent) {
        if self.send(event).is_err() {
            tracing::debug!(?event, "guest event dropped: receiver is gone");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc::channel;

    #[test]
    fn sender_sink_delivers_and_survives_closed_receiver() {
        let (tx, rx) = channel();
        tx.notify(GuestEvent::Reboot);
        tx.notify(GuestEvent::Panic);
        assert_eq!(rx.try_recv(), Ok(GuestEvent::Reboot));
        assert_eq!(rx.try_recv(), Ok(GuestEvent::Panic));
        drop(rx);
        // Must not panic.
        tx.notify(GuestEvent::PowerOff);
    }
}
