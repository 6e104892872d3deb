//! Running VMs inside the nested testbed, and the default VM's files.

use std::path::PathBuf;

use crate::run::{Failure, RunArgs};

/// The default VM: the Debian kernel that setup installed and thinvm's busybox initramfs.
pub struct DefaultVm {
    pub kernel: PathBuf,
    pub initrd: PathBuf,
}

/// Finds (or builds) the default VM's files.
pub fn default_vm() -> anyhow::Result<DefaultVm> {
    anyhow::bail!("the default VM is not available yet")
}

/// Runs `thinvm run` with the same arguments inside the nested testbed.
pub fn run_in_testbed(_args: &RunArgs) -> Result<i32, Failure> {
    Err(anyhow::anyhow!("the nested testbed is not available yet").into())
}
