//! The Prometheus text endpoint: per-VM state, restarts, and for running VMs the VMM's RSS, CPU
//! time and the exit counters it reports through its own API (`vm.counters`).

use std::fmt::Write;
use std::time::Duration;

use api::ch::VmCounters;
use api::daemon::State;
use api::ApiError;

use crate::process::usage;
use crate::Daemon;

/// Renders every VM's figures.
pub async fn render(d: &Daemon) -> Result<String, ApiError> {
    let vms = d.list().await?;
    let mut out = String::new();
    let _ = writeln!(out, "# HELP thinvm_vm_state 1 for the VM's current state.");
    let _ = writeln!(out, "# TYPE thinvm_vm_state gauge");
    for vm in &vms {
        for s in State::ALL {
            let v = u8::from(vm.state == s);
            let _ = writeln!(
                out,
                "thinvm_vm_state{{vm=\"{}\",state=\"{}\"}} {v}",
                vm.spec.name,
                s.as_str()
            );
        }
    }
    let _ = writeln!(out, "# TYPE thinvm_vm_restarts gauge");
    for vm in &vms {
        let _ = writeln!(
            out,
            "thinvm_vm_restarts{{vm=\"{}\"}} {}",
            vm.spec.name, vm.restarts
        );
    }
    let _ = writeln!(out, "# TYPE thinvm_vm_memory_bytes gauge");
    for vm in &vms {
        let _ = writeln!(
            out,
            "thinvm_vm_memory_bytes{{vm=\"{}\"}} {}",
            vm.spec.name, vm.spec.memory
        );
    }
    let running: Vec<_> = vms.iter().filter(|v| v.state.has_process()).collect();
    let _ = writeln!(out, "# TYPE thinvm_vmm_rss_bytes gauge");
    let _ = writeln!(out, "# TYPE thinvm_vmm_cpu_seconds_total counter");
    for vm in &running {
        if let Some((rss, cpu)) = vm.pid.and_then(usage) {
            let n = &vm.spec.name;
            let _ = writeln!(out, "thinvm_vmm_rss_bytes{{vm=\"{n}\"}} {rss}");
            let _ = writeln!(out, "thinvm_vmm_cpu_seconds_total{{vm=\"{n}\"}} {cpu:.3}");
        }
    }
    let _ = writeln!(out, "# TYPE thinvm_vm_counter_total counter");
    for vm in &running {
        let client = d.vmm_client(&vm.spec.name);
        let call = client.call::<VmCounters>("GET", "/api/v1/vm.counters", None);
        let Ok(Ok(counters)) = tokio::time::timeout(Duration::from_millis(500), call).await else {
            continue;
        };
        for (group, values) in counters {
            for (counter, v) in values {
                let _ = writeln!(
                    out,
                    "thinvm_vm_counter_total{{vm=\"{}\",device=\"{group}\",counter=\"{counter}\"}} {v}",
                    vm.spec.name
                );
            }
        }
    }
    Ok(out)
}
