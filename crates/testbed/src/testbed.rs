//! The testbed: assets and images prepared once, then batches of scenarios per outer boot.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::assets::{Assets, AssetsError};
use crate::cache::{self, CacheError, FileLock};
use crate::images::{self, GuestSpec, ImageError, Script};
use crate::markers::{self, Status};
use crate::outer::{self, LayerScenario, OuterSpec, QEMU_BINARY};
use crate::qemu::{self, OuterOptions, QemuError};

/// Errors of the testbed.
#[derive(Debug, thiserror::Error)]
pub enum TestbedError {
    /// Preparing kernel and host packages failed.
    #[error(transparent)]
    Assets(#[from] AssetsError),
    /// Building an image failed.
    #[error(transparent)]
    Image(#[from] ImageError),
    /// Cache problem.
    #[error(transparent)]
    Cache(#[from] CacheError),
    /// Running the outer QEMU failed.
    #[error(transparent)]
    Qemu(#[from] QemuError),
    /// A file operation failed.
    #[error("{path}: {source}")]
    Io {
        /// The path.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// Two scenarios share a name.
    #[error("scenario name {0:?} is used twice")]
    DuplicateScenario(String),
    /// An interactive run needs the thinvm binary in the outer machine.
    #[error("interactive mode needs a thinvm binary (TestbedConfig.outer.thinvm)")]
    NoThinvm,
    /// The interactive outer machine ended without the `@@THINVM-EXIT rc=N@@` marker.
    #[error(
        "the outer machine ended without reporting the exit code (outer QEMU exit status {0:?})"
    )]
    NoExitCode(Option<i32>),
}

/// What to prepare.
#[derive(Debug, Clone, Default)]
pub struct TestbedConfig {
    /// Cache directory (default: [`cache::default_cache_dir`]).
    pub cache_dir: Option<PathBuf>,
    /// The guest initramfs.
    pub guest: GuestSpec,
    /// The outer machine.
    pub outer: OuterSpec,
}

/// One outer shell script, run with a timeout, under `/bin/sh` in the outer machine. It sees
/// `$THINVM`, `$QEMU`, `$GUEST_BZIMAGE`, `$GUEST_VMLINUX`, `$GUEST_INITRD`, `$KERNEL_RELEASE`
/// and `$SCRATCH_DISK` (if any); its exit code is the scenario's result.
#[derive(Debug, Clone)]
pub struct Scenario {
    /// Name: letters, digits, '.', '_', '-'.
    pub name: String,
    /// The script.
    pub script: String,
    /// Timeout (whole seconds, at least 1).
    pub timeout: Duration,
}

/// The result of one scenario.
#[derive(Debug, Clone)]
pub struct ScenarioResult {
    /// The scenario's name.
    pub name: String,
    /// How it ended.
    pub status: Status,
    /// Its console lines (between its markers).
    pub log: String,
    /// The full console log of the outer boot that produced this result.
    pub console_log: PathBuf,
    /// True if it ran in the retry after a testbed fault.
    pub retried: bool,
}

/// A prepared testbed: kernel assets and initramfs layers.
#[derive(Debug)]
pub struct Testbed {
    assets: Assets,
    guest_initrd: PathBuf,
    layers: Vec<PathBuf>,
    has_thinvm: bool,
}

impl Testbed {
    /// Ensures the assets and builds (or finds cached) the guest and outer images.
    pub fn new(config: &TestbedConfig) -> Result<Self, TestbedError> {
        let cache_dir = match &config.cache_dir {
            Some(d) => d.clone(),
            None => cache::default_cache_dir()?,
        };
        cache::ensure_dir(&cache_dir)?;
        let assets = Assets::ensure(&cache_dir)?;
        let guest_initrd = images::build_guest(&assets, &config.guest)?;
        let mut layers = vec![outer::base_layer(&assets, &config.outer, &guest_initrd)?];
        layers.extend(outer::vmm_layer(&assets, &config.outer)?);
        let has_thinvm = config.outer.thinvm.is_some();
        Ok(Self {
            assets,
            guest_initrd,
            layers,
            has_thinvm,
        })
    }

    /// The kernel assets.
    pub fn assets(&self) -> &Assets {
        &self.assets
    }

    /// The guest initramfs (on the host).
    pub fn guest_initrd(&self) -> &Path {
        &self.guest_initrd
    }

    /// Runs `scenarios` in one outer boot (one at a time, under a file lock). Scenarios left
    /// without a result by a testbed fault are retried once in a second boot.
    pub fn run(
        &self,
        opts: &OuterOptions,
        scenarios: &[Scenario],
    ) -> Result<Vec<ScenarioResult>, TestbedError> {
        for (i, s) in scenarios.iter().enumerate() {
            images::check_name(&s.name)?;
            if scenarios.iter().take(i).any(|o| o.name == s.name) {
                return Err(TestbedError::DuplicateScenario(s.name.clone()));
            }
        }
        let _lock = FileLock::acquire(&self.assets.cache_dir.join("outer.lock"))?;
        let mut results = self.attempt(opts, scenarios, None)?;
        let missing: Vec<Scenario> = scenarios
            .iter()
            .filter(|s| {
                results
                    .iter()
                    .any(|r| r.name == s.name && r.status == Status::NoResult)
            })
            .cloned()
            .collect();
        if !missing.is_empty() {
            let names: Vec<&str> = missing.iter().map(|s| s.name.as_str()).collect();
            let log = results
                .first()
                .map(|r| r.console_log.display().to_string())
                .unwrap_or_default();
            tracing::warn!(
                "testbed fault: no result for {names:?} (see {log}); retrying them once"
            );
            let first = results
                .first()
                .map(|r| r.console_log.clone())
                .unwrap_or_default();
            let retry = self.attempt(opts, &missing, Some(&first))?;
            for r in retry {
                if let Some(slot) = results.iter_mut().find(|o| o.name == r.name) {
                    *slot = r;
                }
            }
        }
        Ok(results)
    }

    fn attempt(
        &self,
        opts: &OuterOptions,
        scenarios: &[Scenario],
        retry_of: Option<&Path>,
    ) -> Result<Vec<ScenarioResult>, TestbedError> {
        let run_dir = self.new_run_dir()?;
        let layer: Vec<LayerScenario> = scenarios
            .iter()
            .map(|s| LayerScenario {
                script: Script::new(&s.name, &s.script),
                timeout_secs: s.timeout.as_secs().max(1),
            })
            .collect();
        let initrd = self.initrd_for(&run_dir, outer::scenario_archive(&layer, None)?)?;
        let total: Duration = scenarios
            .iter()
            .map(|s| s.timeout + Duration::from_secs(15))
            .sum();
        let cmd = qemu::outer_command(Path::new(QEMU_BINARY), &self.assets.bzimage, &initrd, opts);
        let log = run_dir.join("console.log");
        let cap = qemu::run_captured(cmd, &log, opts.boot_allowance + total, opts.echo)?;
        let _ = std::fs::remove_file(&initrd);
        let report = markers::parse_console(&cap.console);
        let fault = fault_note(&report, &cap);
        let mut results = Vec::new();
        for s in scenarios {
            let (status, mut log_text) = match report.scenarios.get(&s.name) {
                Some(l) => (l.status, l.log.clone()),
                None => (Status::NoResult, String::new()),
            };
            if status == Status::NoResult {
                log_text.push_str(&format!("# testbed: no result: {fault}\n"));
            }
            if cap.revived > 0 {
                log_text.push_str(&format!(
                    "# testbed: the outer machine stalled and an NMI revived it {} time(s) \
                     (monitor output in {})\n",
                    cap.revived,
                    log.display()
                ));
            }
            if let Some(first) = retry_of {
                let note = format!(
                    "# testbed: retried after a testbed fault in the first outer boot ({})\n",
                    first.display()
                );
                log_text.insert_str(0, &note);
            }
            results.push(ScenarioResult {
                name: s.name.clone(),
                status,
                log: log_text,
                console_log: log.clone(),
                retried: retry_of.is_some(),
            });
        }
        Ok(results)
    }

    /// Boots the outer machine with its serial console on this terminal, runs
    /// `thinvm run --kernel $GUEST_BZIMAGE --initrd $GUEST_INITRD ARGS...` on the outer console
    /// tty, and returns thinvm's exit code. The outer console is passed through to this
    /// terminal byte by byte (stdin stays the terminal; QEMU's Ctrl-A mux is active: Ctrl-A X
    /// quits) and copied to a console.log; the outer /init prints `@@THINVM-EXIT rc=N@@` when
    /// thinvm exits (the Debian kernel has no /dev/port, so QEMU's isa-debug-exit is out of
    /// reach from a shell), and that marker gives the exit code.
    pub fn run_interactive(
        &self,
        opts: &OuterOptions,
        thinvm_args: &[String],
    ) -> Result<i32, TestbedError> {
        if !self.has_thinvm {
            return Err(TestbedError::NoThinvm);
        }
        self.run_interactive_script(opts, &interactive_script(thinvm_args))
    }

    /// Like [`Testbed::run_interactive`] with any outer script; its exit code is returned.
    pub fn run_interactive_script(
        &self,
        opts: &OuterOptions,
        script: &str,
    ) -> Result<i32, TestbedError> {
        let _lock = FileLock::acquire(&self.assets.cache_dir.join("outer.lock"))?;
        let run_dir = self.new_run_dir()?;
        let initrd = self.initrd_for(&run_dir, outer::scenario_archive(&[], Some(script))?)?;
        let cmd = qemu::outer_command(Path::new(QEMU_BINARY), &self.assets.bzimage, &initrd, opts);
        let log = run_dir.join("console.log");
        let (rc, status) = qemu::run_passthrough(cmd, &log)?;
        let _ = std::fs::remove_file(&initrd);
        rc.ok_or(TestbedError::NoExitCode(status))
    }

    fn new_run_dir(&self) -> Result<PathBuf, TestbedError> {
        let stamp = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis())
            .unwrap_or_default();
        let runs = self.assets.cache_dir.join("runs");
        cache::prune(&runs, "", 30);
        let dir = runs.join(format!("{stamp}-{}", std::process::id()));
        cache::ensure_dir(&dir)?;
        Ok(dir)
    }

    /// Concatenates the cached layers and this run's scenario layer into one initrd.
    fn initrd_for(
        &self,
        run_dir: &Path,
        scenarios: crate::cpio::Archive,
    ) -> Result<PathBuf, TestbedError> {
        let layer = run_dir.join("scenarios.cpio.gz");
        scenarios.write_gz(&layer).map_err(ImageError::from)?;
        let out = run_dir.join("initrd.cpio.gz");
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |source| TestbedError::Io { path, source }
        };
        let mut file = std::fs::File::create(&out).map_err(io(&out))?;
        for part in self.layers.iter().chain(std::iter::once(&layer)) {
            let mut src = std::fs::File::open(part).map_err(io(part))?;
            std::io::copy(&mut src, &mut file).map_err(io(&out))?;
        }
        file.flush().map_err(io(&out))?;
        Ok(out)
    }
}

/// Why an outer boot left scenarios without a result, for the log.
fn fault_note(report: &markers::ConsoleReport, cap: &qemu::Captured) -> String {
    if let Some(e) = &report.outer_error {
        format!("outer machine error: {e}")
    } else if cap.stalled {
        "outer machine stalled (no CPU time; an NMI did not revive it) and was ended".into()
    } else if cap.killed {
        "outer QEMU hit the overall timeout and was killed".into()
    } else if !report.ready {
        format!(
            "outer machine never got ready (QEMU exit {:?})",
            cap.exit_code
        )
    } else {
        format!(
            "outer machine stopped early (QEMU exit {:?})",
            cap.exit_code
        )
    }
}

/// Quotes `s` for a POSIX shell.
pub fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}

/// The outer script of an interactive run.
pub fn interactive_script(thinvm_args: &[String]) -> String {
    let args: Vec<String> = thinvm_args.iter().map(|a| shell_quote(a)).collect();
    format!(
        "#!/bin/sh\nexec \"$THINVM\" run --kernel \"$GUEST_BZIMAGE\" --initrd \"$GUEST_INITRD\" {}\n",
        args.join(" ")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interactive_script_quotes_arguments() {
        let s = interactive_script(&["--cmdline".into(), "console=ttyS0 it's".into()]);
        assert!(
            s.contains("--initrd \"$GUEST_INITRD\" '--cmdline' 'console=ttyS0 it'\\''s'"),
            "{s}"
        );
        let out = std::process::Command::new("sh")
            .args(["-c", &format!("printf '%s|' {}", shell_quote("a b'c$d"))])
            .output()
            .unwrap();
        assert_eq!(String::from_utf8_lossy(&out.stdout), "a b'c$d|");
    }
}
