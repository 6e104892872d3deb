//! The VMM's console socket: every connected client receives what the guest writes to its
//! serial port from then on, and what a client sends is fed to the serial port as input.
//! The socket is created with mode 0600; slow clients lose output rather than stall the guest.

use std::io::{self, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::sync::{Arc, Mutex};

use anyhow::Context;
use vmm::console::ConsoleInput;
use vmm::Vm;

type InputFactory = Box<dyn Fn(&UnixStream) -> Option<ConsoleInput> + Send>;

/// The console socket's clients and the running VM's input.
#[derive(Default)]
pub struct ConsoleHub {
    clients: Mutex<Vec<UnixStream>>,
    input: Mutex<Option<InputFactory>>,
    /// One input pump per client while a VM runs (dropped pumps stop and join).
    pumps: Mutex<Vec<(UnixStream, ConsoleInput)>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl ConsoleHub {
    /// Binds `path` (replacing a stale file) and accepts clients on a thread.
    pub fn start(path: &Path) -> anyhow::Result<Arc<Self>> {
        let _ = std::fs::remove_file(path);
        let listener = UnixListener::bind(path)
            .with_context(|| format!("binding the console socket {}", path.display()))?;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
            .with_context(|| format!("chmod {}", path.display()))?;
        let hub = Arc::new(ConsoleHub::default());
        let h = hub.clone();
        std::thread::Builder::new()
            .name("console-accept".into())
            .spawn(move || {
                for conn in listener.incoming() {
                    match conn {
                        Ok(c) => h.add(c),
                        Err(e) => tracing::warn!("console accept: {e}"),
                    }
                }
            })
            .context("starting the console thread")?;
        Ok(hub)
    }

    fn add(&self, client: UnixStream) {
        let Ok(out) = client.try_clone() else { return };
        let _ = out.set_nonblocking(true);
        lock(&self.clients).push(out);
        if let Some(make) = lock(&self.input).as_ref() {
            if let Some(pump) = make(&client) {
                lock(&self.pumps).push((client, pump));
            }
        }
    }

    /// Feeds clients' input to `vm`'s serial port from now on (until [`Self::detach`]).
    pub fn attach(&self, vm: &Vm) {
        let (serial, exit) = (vm.serial().clone(), vm.exit_signal().clone());
        let make: InputFactory = Box::new(move |c: &UnixStream| {
            ConsoleInput::start(c.as_raw_fd(), serial.clone(), exit.clone(), false).ok()
        });
        let clients: Vec<UnixStream> = lock(&self.clients)
            .iter()
            .filter_map(|c| c.try_clone().ok())
            .collect();
        let mut pumps = lock(&self.pumps);
        for c in clients {
            if let Some(p) = make(&c) {
                pumps.push((c, p));
            }
        }
        *lock(&self.input) = Some(make);
    }

    /// Stops feeding input (the VM has ended).
    pub fn detach(&self) {
        *lock(&self.input) = None;
        lock(&self.pumps).clear();
    }

    /// Wraps the console writer so clients get a copy.
    pub fn tee(self: &Arc<Self>, inner: Box<dyn Write + Send>) -> Box<dyn Write + Send> {
        Box::new(Tee {
            inner,
            hub: self.clone(),
        })
    }
}

struct Tee {
    inner: Box<dyn Write + Send>,
    hub: Arc<ConsoleHub>,
}

impl Write for Tee {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.inner.write_all(buf)?;
        // A client that is gone (or errs) is dropped; a full one loses this chunk.
        lock(&self.hub.clients).retain_mut(|c| match c.write(buf) {
            Ok(_) => true,
            Err(e) => e.kind() == io::ErrorKind::WouldBlock,
        });
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}
