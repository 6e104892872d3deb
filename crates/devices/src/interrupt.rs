//! Interrupt traits used by devices.
//!
//! Devices raise interrupts through these traits only; what sits underneath (an irqfd, a
//! `KVM_IRQ_LINE` ioctl, an MSI route) is the business of the `vmm` crate.

use vmm_sys_util::eventfd::EventFd;

/// An edge-triggered interrupt (an irqfd underneath).
pub trait Interrupt: Send + Sync {
    /// Raises the interrupt once.
    fn trigger(&self) -> std::io::Result<()>;
}

/// A level-triggered line (`KVM_IRQ_LINE` underneath).
pub trait IrqLine: Send + Sync {
    /// Drives the line high (asserted) or low (deasserted).
    fn set_level(&self, high: bool) -> std::io::Result<()>;
}

impl Interrupt for EventFd {
    /// Signals the eventfd by adding 1 to its counter (what an irqfd expects).
    fn trigger(&self) -> std::io::Result<()> {
        self.write(1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vmm_sys_util::eventfd::EFD_NONBLOCK;

    #[test]
    fn eventfd_trigger_adds_one_per_call() {
        let evt = EventFd::new(EFD_NONBLOCK).unwrap();
        evt.trigger().unwrap();
        evt.trigger().unwrap();
        assert_eq!(evt.read().unwrap(), 2);
        // Drained: a non-blocking read now fails with EAGAIN.
        assert!(evt.read().is_err());
    }
}
