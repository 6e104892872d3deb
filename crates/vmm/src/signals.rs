//! SIGTERM, SIGINT and SIGHUP end the VM cleanly (the terminal is restored, the exit reason is
//! "stopped by request"): they are blocked in every thread and taken by one watcher thread.

use std::sync::Arc;

use crate::exit::{ExitReason, ExitSignal};
use crate::Error;

fn stop_signals() -> libc::sigset_t {
    // SAFETY: sigemptyset/sigaddset fill a sigset we own.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGTERM);
        libc::sigaddset(&mut set, libc::SIGINT);
        libc::sigaddset(&mut set, libc::SIGHUP);
        set
    }
}

/// Blocks the stop signals in the calling thread and every thread it starts afterwards.
/// Call first thing in `main`.
pub fn block_stop_signals() {
    let set = stop_signals();
    // SAFETY: a valid sigset; the old mask is not needed.
    unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) };
}

/// Starts the thread that turns a stop signal into [`ExitReason::Stopped`]. It lives as long as
/// the process (it sleeps in sigwait), like a signal handler would.
pub fn watch_stop_signals(exit: Arc<ExitSignal>) -> Result<(), Error> {
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || loop {
            let set = stop_signals();
            let mut sig = 0;
            // SAFETY: a valid sigset and an int to receive the signal number.
            if unsafe { libc::sigwait(&set, &mut sig) } == 0 {
                tracing::info!(signal = sig, "stop signal received");
                exit.set(ExitReason::Stopped);
            }
        })
        .map_err(Error::Thread)?;
    Ok(())
}
