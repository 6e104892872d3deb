//! The default VM's files, and running `thinvm run` inside the nested testbed on hosts whose KVM
//! cannot boot unmodified guests (a PVM).

use std::path::PathBuf;

use anyhow::Context;
use testbed::{images, Assets, GuestSpec, OuterOptions, OuterSpec, Testbed, TestbedConfig};

use crate::run::{Failure, RunArgs};

/// Guest modules of the default VM: the pvpanic driver, so a guest panic is reported as one.
pub const DEFAULT_GUEST_MODULES: &[&str] = &["pvpanic", "pvpanic_mmio"];

/// The default VM: the Debian kernel that setup installed and thinvm's busybox initramfs.
pub struct DefaultVm {
    pub kernel: PathBuf,
    pub initrd: PathBuf,
}

fn guest_spec() -> GuestSpec {
    GuestSpec {
        modules: DEFAULT_GUEST_MODULES
            .iter()
            .map(|m| m.to_string())
            .collect(),
        ..GuestSpec::default()
    }
}

/// Finds (or downloads and builds, once) the default VM's files.
pub fn default_vm() -> anyhow::Result<DefaultVm> {
    let assets = Assets::ensure_default().context("getting Debian's kernel package")?;
    let initrd =
        images::build_guest(&assets, &guest_spec()).context("building the guest initramfs")?;
    Ok(DefaultVm {
        kernel: assets.bzimage,
        initrd,
    })
}

/// `thinvm prepare`: gets the default VM ready and says where its files are.
pub fn prepare() -> anyhow::Result<i32> {
    let vm = default_vm()?;
    println!("kernel: {}", vm.kernel.display());
    println!("initrd: {}", vm.initrd.display());
    Ok(0)
}

/// Runs the default VM inside the nested testbed, with the console on this terminal.
pub fn run_in_testbed(args: &RunArgs) -> Result<i32, Failure> {
    if args.kernel.is_some() || args.initrd.is_some() {
        return Err(anyhow::anyhow!(
            "this host's /dev/kvm is a PVM (kvm_pvm), which cannot boot unmodified Linux kernels; \
             on such a host thinvm runs its default VM inside the nested testbed: run `thinvm run` \
             without --kernel/--initrd"
        )
        .into());
    }
    eprintln!(
        "thinvm: this host's /dev/kvm is a PVM and cannot boot unmodified Linux; running the VM \
         inside the nested testbed (QEMU emulating an AMD-V machine with KVM). This is slow: \
         allow a minute to reach the shell. Ctrl-A x ends the outer machine."
    );
    let exe = std::env::current_exe().context("finding the thinvm binary")?;
    let tb = Testbed::new(&TestbedConfig {
        cache_dir: None,
        guest: guest_spec(),
        outer: OuterSpec {
            thinvm: Some(exe),
            ..OuterSpec::default()
        },
    })
    .context("preparing the nested testbed")?;
    let mem_mib = u32::try_from(args.memory >> 20).unwrap_or(u32::MAX);
    let opts = OuterOptions {
        smp: if args.cpus > 1 { 2 } else { 1 },
        mem_mib: mem_mib.saturating_add(1024).max(2048),
        ..OuterOptions::default()
    };
    let thinvm_args = vec![
        "--testbed".to_string(),
        "never".to_string(),
        "--cpus".to_string(),
        args.cpus.to_string(),
        "--memory".to_string(),
        format!("{}M", mem_mib),
        "--cmdline".to_string(),
        args.cmdline.clone(),
    ];
    match tb.run_interactive(&opts, &thinvm_args) {
        Ok(code) => Ok(code),
        // Ctrl-A x ends QEMU itself, before thinvm can report an exit code.
        Err(testbed::TestbedError::NoExitCode(_)) => {
            eprintln!("thinvm: the outer machine was ended");
            Ok(0)
        }
        Err(e) => Err(Failure {
            code: 5,
            error: e.into(),
        }),
    }
}
