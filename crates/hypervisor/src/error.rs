use std::io;

/// What went wrong talking to the hypervisor.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot open /dev/kvm: {0}")]
    OpenKvm(#[source] io::Error),
    #[error("KVM API version {0} is not supported (need 12)")]
    ApiVersion(i32),
    #[error("KVM lacks the capability {0}, which thinvm needs")]
    MissingCapability(&'static str),
    #[error("{op} failed: {source}")]
    Ioctl {
        op: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("{requested} vCPUs requested, but this host's KVM allows at most {max}")]
    TooManyVcpus { requested: usize, max: usize },
    #[error("bad MSI route for GSI {gsi}: {reason}")]
    BadMsiRoute { gsi: u32, reason: &'static str },
}

/// Result alias of this crate.
pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    pub(crate) fn ioctl(op: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> Error {
        move |e| Error::Ioctl {
            op,
            source: io::Error::from_raw_os_error(e.errno()),
        }
    }
}
