use std::io;
use std::path::PathBuf;

/// Why a VM could not be built or run.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("guest memory of {size} bytes is too small: thinvm needs at least {min} bytes")]
    MemoryTooSmall { size: u64, min: u64 },
    #[error("guest memory of {0} bytes is not a multiple of 4 KiB")]
    MemoryNotAligned(u64),
    #[error(
        "guest memory of {size} bytes is more than this host has ({host} bytes of RAM and swap)"
    )]
    MemoryTooLarge { size: u64, host: u64 },
    #[error("cannot create guest memory: {0}")]
    GuestMemory(#[source] io::Error),
    #[error("cannot map guest memory: {0}")]
    MapMemory(String),
    #[error("cannot open {path}: {source}")]
    Open {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("--cpus must be between 1 and {max}, not {requested}")]
    Cpus { requested: usize, max: usize },
    #[error(transparent)]
    Hypervisor(#[from] hypervisor::Error),
    #[error("cannot load the kernel: {0}")]
    Boot(#[from] boot::Error),
    #[error("cannot set up device {name}: {reason}")]
    Device { name: &'static str, reason: String },
    #[error("virtio-balloon: {0}")]
    BadBalloon(String),
    #[error("cannot start a thread: {0}")]
    Thread(#[source] io::Error),
    #[error("cannot set up the console: {0}")]
    Console(#[source] io::Error),
}

impl Error {
    /// True when the error is the user's input or the host, not thinvm's fault (exit code 2).
    pub fn is_bad_input(&self) -> bool {
        !matches!(self, Error::Thread(_))
    }
}
