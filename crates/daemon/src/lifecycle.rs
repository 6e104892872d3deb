//! What happens around a VM's process: stop and kill, the watcher that sees the VMM end, the
//! restart policy with its backoff, and adoption of running VMMs after a daemon restart.

use std::sync::Arc;
use std::time::Duration;

use api::daemon::{State, VmStatus};
use api::ApiError;
use serde::Deserialize;

use crate::db::{should_restart, Change};
use crate::process::{read_if_exists, Proc};
use crate::supervisor::{db_error, Daemon, Slot};

/// The exit file a VMM writes when its VM ends.
#[derive(Debug, Deserialize)]
struct ExitFile {
    reason: String,
    message: String,
}

/// How a VMM ended, as the policy sees it.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The guest powered off, or the VMM was asked to stop.
    Clean(String),
    /// The guest asked for a reboot: start it again.
    Reboot(String),
    /// Panic, triple fault, internal error, or no exit file (SIGKILL or a crash).
    Failure(String),
}

/// Reads the VMM's exit file (absent: the process was killed or crashed).
pub fn outcome(exit_file: Option<&str>) -> Outcome {
    match exit_file.and_then(|s| serde_json::from_str::<ExitFile>(s).ok()) {
        Some(e) if e.reason == "poweroff" || e.reason == "stopped" => Outcome::Clean(e.message),
        Some(e) if e.reason == "reboot" => Outcome::Reboot(e.message),
        Some(e) => Outcome::Failure(e.message),
        None => Outcome::Failure("the VMM ended without an exit reason (killed?)".into()),
    }
}

/// The restart delay after `restarts` restarts: base, doubling, capped.
pub fn backoff(base: Duration, max: Duration, restarts: u32) -> Duration {
    let factor = 1u32
        .checked_shl(restarts.saturating_sub(1))
        .unwrap_or(u32::MAX);
    base.saturating_mul(factor).min(max)
}

impl Daemon {
    /// Asks the guest to power off (ACPI power button); after `timeout` the VMM stops it hard.
    pub async fn stop(
        self: &Arc<Self>,
        name: &str,
        timeout: Option<Duration>,
    ) -> Result<VmStatus, ApiError> {
        let slot = self.slot(name);
        let slot = slot.lock().await;
        let row = self.db.get(name).await.map_err(db_error)?;
        let state = row.status.state;
        if !matches!(state, State::Running | State::Paused | State::Stopping) {
            return Err(ApiError::conflict(format!(
                "cannot stop VM {name:?}: it is {}",
                state.as_str()
            )));
        }
        let mut change = Change::to(State::Stopping, "stopping: power button");
        change.user_stop = Some(true);
        let row = self.record(name, change).await?;
        let client = self.vmm_client(name);
        if state == State::Paused {
            let _ = client
                .call::<serde_json::Value>("PUT", "/api/v1/vm.resume", None)
                .await;
        }
        let _ = client
            .call::<serde_json::Value>("PUT", "/api/v1/vm.power-button", None)
            .await;
        let (generation, proc) = (slot.generation, slot.proc.clone());
        let timeout = timeout.unwrap_or(self.cfg.stop_timeout);
        let me = self.clone();
        let name = name.to_string();
        tokio::spawn(async move {
            tokio::time::sleep(timeout).await;
            me.hard_stop(&name, generation, proc).await;
        });
        Ok(row.status)
    }

    /// Stops the VM (as [`Self::stop`]), waits until its VMM has ended, and starts it again.
    pub async fn restart(
        self: &Arc<Self>,
        name: &str,
        timeout: Option<Duration>,
    ) -> Result<VmStatus, ApiError> {
        let row = self.db.get(name).await.map_err(db_error)?;
        if row.status.state.has_process() {
            self.stop(name, timeout).await?;
            let limit = timeout.unwrap_or(self.cfg.stop_timeout) + Duration::from_secs(15);
            let deadline = tokio::time::Instant::now() + limit;
            while self
                .db
                .get(name)
                .await
                .map_err(db_error)?
                .status
                .state
                .has_process()
            {
                if tokio::time::Instant::now() > deadline {
                    return Err(ApiError::internal(format!(
                        "restart {name:?}: the VM did not stop within {limit:?}"
                    )));
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        self.start(name).await
    }

    /// The stop's second step: `vm.shutdown`, then SIGKILL if the VMM still runs.
    async fn hard_stop(&self, name: &str, generation: u64, proc: Option<Arc<Proc>>) {
        let Some(proc) = proc else { return };
        if proc.has_exited() || self.slot(name).lock().await.generation != generation {
            return;
        }
        tracing::info!(vm = name, "the guest did not power off in time: hard stop");
        let _ = self
            .vmm_client(name)
            .call::<serde_json::Value>("PUT", "/api/v1/vm.shutdown", None)
            .await;
        if tokio::time::timeout(Duration::from_secs(5), proc.exited())
            .await
            .is_err()
        {
            let _ = proc.signal(libc::SIGKILL);
        }
    }

    /// Kills the VMM with SIGKILL (a user kill: no restart).
    pub async fn kill(self: &Arc<Self>, name: &str) -> Result<VmStatus, ApiError> {
        let slot = self.slot(name);
        let slot = slot.lock().await;
        let row = self.db.get(name).await.map_err(db_error)?;
        let Some(proc) = slot.proc.clone().filter(|_| row.status.state.has_process()) else {
            return Err(ApiError::conflict(format!(
                "cannot kill VM {name:?}: it is {}",
                row.status.state.as_str()
            )));
        };
        let mut change = Change::to(State::Stopping, "killing");
        change.user_stop = Some(true);
        let row = self.record(name, change).await?;
        proc.signal(libc::SIGKILL)
            .map_err(|e| ApiError::internal(format!("kill VMM pid {}: {e}", proc.pid)))?;
        Ok(row.status)
    }

    /// Watches `proc` and applies the end when it exits.
    pub(crate) fn watch(self: &Arc<Self>, name: &str, proc: Arc<Proc>, generation: u64) {
        let me = self.clone();
        let name = name.to_string();
        tokio::spawn(async move {
            proc.exited().await;
            let slot = me.slot(&name);
            let mut slot = slot.lock().await;
            if slot.generation != generation {
                return;
            }
            slot.proc = None;
            if let Err(e) = me.ended(&name, &mut slot).await {
                tracing::error!(vm = %name, "recording the VMM's end failed: {e}");
            }
        });
    }

    /// Records that the VM's VMM has ended and applies the restart policy. Holds the VM's lock.
    async fn ended(self: &Arc<Self>, name: &str, slot: &mut Slot) -> Result<(), ApiError> {
        let row = self.db.get(name).await.map_err(db_error)?;
        let file = read_if_exists(&self.vm_dir(name).join("exit.json"));
        let out = outcome(file.as_deref());
        let (state, msg) = match (&out, row.user_stop) {
            (Outcome::Clean(m) | Outcome::Reboot(m) | Outcome::Failure(m), true) => {
                (State::Stopped, format!("stopped by the user: {m}"))
            }
            (Outcome::Clean(m) | Outcome::Reboot(m), false) => (State::Stopped, m.clone()),
            (Outcome::Failure(m), false) => (State::Crashed, m.clone()),
        };
        let mut change = Change::to(state, msg.clone());
        change.process = Some(None);
        change.last_exit = Some(msg);
        self.record(name, change).await?;
        if row.user_stop {
            return Ok(());
        }
        let policy = row.status.spec.restart;
        let restarts = row.status.restarts.saturating_add(1);
        let delay = match out {
            Outcome::Reboot(_) => Duration::ZERO,
            Outcome::Failure(_) if should_restart(policy, true) => {
                backoff(self.cfg.backoff_base, self.cfg.backoff_max, restarts)
            }
            Outcome::Clean(_) if should_restart(policy, false) => {
                backoff(self.cfg.backoff_base, self.cfg.backoff_max, restarts)
            }
            _ => return Ok(()),
        };
        self.schedule_restart(name, slot.generation, restarts, delay);
        Ok(())
    }

    fn schedule_restart(
        self: &Arc<Self>,
        name: &str,
        generation: u64,
        restarts: u32,
        delay: Duration,
    ) {
        tracing::info!(
            vm = name,
            ?delay,
            restarts,
            "restart scheduled by the policy"
        );
        let me = self.clone();
        let name = name.to_string();
        tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            let slot = me.slot(&name);
            let mut slot = slot.lock().await;
            let Ok(row) = me.db.get(&name).await else {
                return;
            };
            // A user start, stop or delete in the meantime wins.
            if slot.generation != generation || row.user_stop || row.status.state.has_process() {
                return;
            }
            if let Err(e) = me.start_locked(&name, &mut slot, restarts).await {
                tracing::warn!(vm = %name, "policy restart failed: {e}");
            }
        });
    }

    /// After a daemon start: adopts the VMMs that still run, settles the ones that ended while
    /// the daemon was away, then starts the autostart VMs.
    pub async fn recover(self: &Arc<Self>) -> Result<(), ApiError> {
        for row in self.db.list().await.map_err(db_error)? {
            let name = row.status.spec.name.clone();
            let slot = self.slot(&name);
            let mut slot = slot.lock().await;
            if row.status.state.has_process() {
                let alive = match (row.status.pid, row.start_time) {
                    (Some(pid), Some(st)) => Proc::adopt(pid, st).map(Arc::new),
                    _ => None,
                };
                match alive {
                    Some(proc) => self.adopt(&name, &mut slot, row.status.state, proc).await?,
                    None => {
                        // A VMM started but not recorded yet may wait on its socket: end it.
                        let _ = self
                            .vmm_client(&name)
                            .call::<serde_json::Value>("PUT", "/api/v1/vmm.shutdown", None)
                            .await;
                        self.ended(&name, &mut slot).await?;
                    }
                }
            } else if row.status.spec.autostart
                && !row.user_stop
                && matches!(row.status.state, State::Defined | State::Stopped)
            {
                if let Err(e) = self.start_locked(&name, &mut slot, 0).await {
                    tracing::warn!(vm = %name, "autostart failed: {e}");
                }
            }
        }
        Ok(())
    }

    async fn adopt(
        self: &Arc<Self>,
        name: &str,
        slot: &mut Slot,
        state: State,
        proc: Arc<Proc>,
    ) -> Result<(), ApiError> {
        tracing::info!(vm = name, pid = proc.pid, "adopting the running VMM");
        slot.generation += 1;
        slot.proc = Some(proc.clone());
        self.watch(name, proc.clone(), slot.generation);
        match state {
            // Interrupted mid-start: the boot may not have happened. Kill it; the policy decides.
            State::Starting => {
                let _ = proc.signal(libc::SIGKILL);
            }
            State::Stopping => {
                let (me, name, generation) = (self.clone(), name.to_string(), slot.generation);
                tokio::spawn(async move { me.hard_stop(&name, generation, Some(proc)).await });
            }
            _ => {
                self.record(
                    name,
                    Change::to(state, format!("adopted VMM pid {}", proc.pid)),
                )
                .await?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_files_map_to_outcomes() {
        let f = |r: &str| format!(r#"{{"reason":"{r}","code":0,"message":"m"}}"#);
        assert_eq!(outcome(Some(&f("poweroff"))), Outcome::Clean("m".into()));
        assert_eq!(outcome(Some(&f("stopped"))), Outcome::Clean("m".into()));
        assert_eq!(outcome(Some(&f("reboot"))), Outcome::Reboot("m".into()));
        assert_eq!(outcome(Some(&f("panic"))), Outcome::Failure("m".into()));
        assert!(matches!(outcome(None), Outcome::Failure(_)));
        assert!(matches!(outcome(Some("garbage{")), Outcome::Failure(_)));
    }

    #[test]
    fn backoff_doubles_to_the_cap() {
        let (b, m) = (Duration::from_secs(1), Duration::from_secs(60));
        let got: Vec<u64> = (1..=9).map(|r| backoff(b, m, r).as_secs()).collect();
        assert_eq!(got, [1, 2, 4, 8, 16, 32, 60, 60, 60]);
        assert_eq!(backoff(b, m, 0).as_secs(), 1);
        assert_eq!(backoff(b, m, u32::MAX), m);
    }
}
