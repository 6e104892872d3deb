//! How a VM ends, and the sink through which devices and vCPUs report it.

use std::sync::Mutex;

use devices::{GuestEvent, GuestEventSink};
use vmm_sys_util::eventfd::EventFd;

/// Why the VM stopped running.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ExitReason {
    /// The guest powered itself off (ACPI S5 or a KVM system event).
    PowerOff,
    /// The guest asked for a reboot (i8042 reset, ACPI reset register, or a KVM system event).
    Reboot,
    /// The guest kernel panicked (pvpanic); the console line that said why, when seen.
    Panic(Option<String>),
    /// The guest triple-faulted.
    TripleFault,
    /// KVM or the VMM could not go on; the message says what happened.
    Internal(String),
    /// The VMM was asked to stop (a signal, the console escape, or an API call).
    Stopped,
}

impl ExitReason {
    /// The exit code of `thinvm run` for this reason (docs/architecture.md).
    pub fn exit_code(&self) -> i32 {
        match self {
            ExitReason::PowerOff | ExitReason::Stopped => 0,
            ExitReason::Reboot => 3,
            ExitReason::Panic(_) => 4,
            ExitReason::TripleFault | ExitReason::Internal(_) => 5,
        }
    }

    /// A one-line description for stderr.
    pub fn describe(&self) -> String {
        match self {
            ExitReason::PowerOff => "guest powered off".into(),
            ExitReason::Reboot => "guest rebooted".into(),
            ExitReason::Panic(Some(line)) => format!("guest kernel panic: {line}"),
            ExitReason::Panic(None) => "guest kernel panic".into(),
            ExitReason::TripleFault => "guest triple fault (vCPU shutdown)".into(),
            ExitReason::Internal(msg) => format!("internal error: {msg}"),
            ExitReason::Stopped => "stopped by request".into(),
        }
    }
}

/// Records the first reason the VM should end and wakes the control loop. Later reasons are
/// ignored: a panicking guest with `panic=-1` reports the panic, then resets; the panic wins.
pub struct ExitSignal {
    reason: Mutex<Option<ExitReason>>,
    evt: EventFd,
}

impl ExitSignal {
    /// A new, unsignalled exit.
    pub fn new() -> std::io::Result<Self> {
        Ok(ExitSignal {
            reason: Mutex::new(None),
            evt: EventFd::new(libc::EFD_NONBLOCK)?,
        })
    }

    /// Sets the reason if none is set yet, and wakes whoever waits.
    pub fn set(&self, reason: ExitReason) {
        let mut guard = self.reason.lock().unwrap_or_else(|p| p.into_inner());
        if guard.is_none() {
            *guard = Some(reason);
        }
        drop(guard);
        let _ = self.evt.write(1);
    }

    /// The reason, once set.
    pub fn get(&self) -> Option<ExitReason> {
        self.reason
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// The eventfd that becomes readable when a reason is set.
    pub fn eventfd(&self) -> &EventFd {
        &self.evt
    }
}

impl GuestEventSink for ExitSignal {
    fn notify(&self, event: GuestEvent) {
        self.set(match event {
            GuestEvent::PowerOff => ExitReason::PowerOff,
            GuestEvent::Reboot => ExitReason::Reboot,
            GuestEvent::Panic => ExitReason::Panic(None),
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_reason_wins() {
        let s = ExitSignal::new().unwrap();
        s.notify(GuestEvent::Panic);
        s.notify(GuestEvent::Reboot);
        assert_eq!(s.get(), Some(ExitReason::Panic(None)));
        assert_eq!(s.get().unwrap().exit_code(), 4);
        assert_eq!(s.eventfd().read().unwrap(), 2);
    }

    #[test]
    fn exit_codes_follow_the_platform_contract() {
        assert_eq!(ExitReason::PowerOff.exit_code(), 0);
        assert_eq!(ExitReason::Reboot.exit_code(), 3);
        assert_eq!(ExitReason::Panic(Some("x".into())).exit_code(), 4);
        assert_eq!(ExitReason::TripleFault.exit_code(), 5);
        assert_eq!(ExitReason::Internal("x".into()).exit_code(), 5);
    }
}
