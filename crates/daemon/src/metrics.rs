//! The Prometheus text endpoint: per-VM state, restarts, and for running VMs the VMM's RSS, CPU
//! time and the counters it reports through its own API (`vm.counters`): the vCPU exit counters,
//! and per disk (`_diskN`) and per network card (`_netN`) the bytes and operations or frames.

use std::fmt::Write;
use std::time::Duration;

use api::ch::VmCounters;
use api::daemon::State;
use api::ApiError;

use crate::process::usage;
use crate::Daemon;

/// The block families: (metric, counter in the `_diskN` group, help).
const BLOCK: [(&str, &str, &str); 4] = [
    (
        "thinvm_vm_block_read_bytes_total",
        "read_bytes",
        "Bytes the guest read from the disk.",
    ),
    (
        "thinvm_vm_block_write_bytes_total",
        "write_bytes",
        "Bytes the guest wrote to the disk.",
    ),
    (
        "thinvm_vm_block_read_ops_total",
        "read_ops",
        "Read requests the disk completed.",
    ),
    (
        "thinvm_vm_block_write_ops_total",
        "write_ops",
        "Write requests the disk completed.",
    ),
];

/// The network families: (metric, counter in the `_netN` group, help).
const NET: [(&str, &str, &str); 4] = [
    (
        "thinvm_vm_net_rx_bytes_total",
        "rx_bytes",
        "Bytes the card delivered to the guest.",
    ),
    (
        "thinvm_vm_net_rx_frames_total",
        "rx_frames",
        "Frames the card delivered to the guest.",
    ),
    (
        "thinvm_vm_net_tx_bytes_total",
        "tx_bytes",
        "Bytes the guest sent through the card.",
    ),
    (
        "thinvm_vm_net_tx_frames_total",
        "tx_frames",
        "Frames the guest sent through the card.",
    ),
];

fn header(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

fn is_device(group: &str) -> bool {
    group.starts_with("_disk") || group.starts_with("_net")
}

/// The families built from each VM's `vm.counters` (VMs in order, devices in the VMM's order).
pub fn counter_families(per_vm: &[(String, VmCounters)]) -> String {
    let mut out = String::new();
    header(
        &mut out,
        "thinvm_vm_counter_total",
        "counter",
        "The VMM's own counters (vm.counters) other than the disks' and network cards'.",
    );
    for (vm, counters) in per_vm {
        for (group, values) in counters.iter().filter(|(g, _)| !is_device(g)) {
            for (counter, v) in values {
                let _ = writeln!(
                    out,
                    "thinvm_vm_counter_total{{vm=\"{vm}\",device=\"{group}\",counter=\"{counter}\"}} {v}"
                );
            }
        }
    }
    for (prefix, label, families) in [("_disk", "disk", &BLOCK), ("_net", "net", &NET)] {
        for (metric, key, help) in families {
            header(&mut out, metric, "counter", help);
            for (vm, counters) in per_vm {
                for (group, values) in counters.iter().filter(|(g, _)| g.starts_with(prefix)) {
                    if let Some(v) = values.get(*key) {
                        let _ = writeln!(out, "{metric}{{vm=\"{vm}\",{label}=\"{group}\"}} {v}");
                    }
                }
            }
        }
    }
    out
}

/// Renders every VM's figures.
pub async fn render(d: &Daemon) -> Result<String, ApiError> {
    let vms = d.list().await?;
    let mut out = String::new();
    header(
        &mut out,
        "thinvm_vm_state",
        "gauge",
        "1 for the VM's current state.",
    );
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
    header(
        &mut out,
        "thinvm_vm_restarts",
        "gauge",
        "Restarts by the policy since the last user start.",
    );
    for vm in &vms {
        let _ = writeln!(
            out,
            "thinvm_vm_restarts{{vm=\"{}\"}} {}",
            vm.spec.name, vm.restarts
        );
    }
    header(
        &mut out,
        "thinvm_vm_memory_bytes",
        "gauge",
        "Guest memory of the VM's definition.",
    );
    for vm in &vms {
        let _ = writeln!(
            out,
            "thinvm_vm_memory_bytes{{vm=\"{}\"}} {}",
            vm.spec.name, vm.spec.memory
        );
    }
    let running: Vec<_> = vms.iter().filter(|v| v.state.has_process()).collect();
    let usage: Vec<_> = running
        .iter()
        .filter_map(|vm| Some((&vm.spec.name, vm.pid.and_then(usage)?)))
        .collect();
    header(
        &mut out,
        "thinvm_vmm_rss_bytes",
        "gauge",
        "Resident memory of the VM's VMM process (VmRSS), guest memory it touched included.",
    );
    for (n, (rss, _)) in &usage {
        let _ = writeln!(out, "thinvm_vmm_rss_bytes{{vm=\"{n}\"}} {rss}");
    }
    header(
        &mut out,
        "thinvm_vmm_cpu_seconds_total",
        "counter",
        "CPU time of the VM's VMM process (user and system, vCPUs included).",
    );
    for (n, (_, cpu)) in &usage {
        let _ = writeln!(out, "thinvm_vmm_cpu_seconds_total{{vm=\"{n}\"}} {cpu:.3}");
    }
    let mut per_vm = Vec::new();
    for vm in &running {
        let client = d.vmm_client(&vm.spec.name);
        let call = client.call::<VmCounters>("GET", "/api/v1/vm.counters", None);
        if let Ok(Ok(c)) = tokio::time::timeout(Duration::from_millis(500), call).await {
            per_vm.push((vm.spec.name.clone(), c));
        }
    }
    out.push_str(&counter_families(&per_vm));
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn group(pairs: &[(&str, u64)]) -> std::collections::BTreeMap<String, u64> {
        pairs.iter().map(|(k, v)| (k.to_string(), *v)).collect()
    }

    #[test]
    fn balloon_and_vsock_groups_are_vmm_counters() {
        let a: VmCounters = [
            ("balloon".to_string(), group(&[("actual_bytes", 4096)])),
            (
                "_vsock2".to_string(),
                group(&[("connect_timeouts", 3), ("to_guest_bytes", 9)]),
            ),
        ]
        .into();
        let text = counter_families(&[("a".into(), a)]);
        for line in [
            "thinvm_vm_counter_total{vm=\"a\",device=\"balloon\",counter=\"actual_bytes\"} 4096",
            "thinvm_vm_counter_total{vm=\"a\",device=\"_vsock2\",counter=\"connect_timeouts\"} 3",
            "thinvm_vm_counter_total{vm=\"a\",device=\"_vsock2\",counter=\"to_guest_bytes\"} 9",
        ] {
            assert!(text.lines().any(|l| l == line), "{line}\n{text}");
        }
    }

    #[test]
    fn device_groups_become_their_own_families() {
        let a: VmCounters = [
            ("vcpu".to_string(), group(&[("io_in", 5)])),
            (
                "_disk0".to_string(),
                group(&[
                    ("read_bytes", 4608),
                    ("read_ops", 2),
                    ("write_bytes", 1536),
                    ("write_ops", 1),
                ]),
            ),
            (
                "_net1".to_string(),
                group(&[
                    ("rx_bytes", 98),
                    ("rx_frames", 1),
                    ("tx_bytes", 42),
                    ("tx_frames", 1),
                ]),
            ),
        ]
        .into();
        let b: VmCounters = [("_disk0".to_string(), group(&[("read_bytes", 7)]))].into();
        let text = counter_families(&[("a".into(), a), ("b".into(), b)]);
        for line in [
            "# TYPE thinvm_vm_block_read_bytes_total counter",
            "thinvm_vm_block_read_bytes_total{vm=\"a\",disk=\"_disk0\"} 4608",
            "thinvm_vm_block_read_bytes_total{vm=\"b\",disk=\"_disk0\"} 7",
            "thinvm_vm_block_write_ops_total{vm=\"a\",disk=\"_disk0\"} 1",
            "# HELP thinvm_vm_net_tx_frames_total Frames the guest sent through the card.",
            "thinvm_vm_net_rx_bytes_total{vm=\"a\",net=\"_net1\"} 98",
            "thinvm_vm_counter_total{vm=\"a\",device=\"vcpu\",counter=\"io_in\"} 5",
        ] {
            assert!(text.lines().any(|l| l == line), "{line}\n{text}");
        }
        assert!(!text.contains("device=\"_disk0\""), "{text}");
        // Each family's samples follow its own TYPE line (the text format wants them grouped).
        let mut current = "";
        for l in text.lines() {
            if let Some(rest) = l.strip_prefix("# TYPE ") {
                current = rest.split(' ').next().unwrap();
            } else if !l.starts_with('#') {
                assert!(l.starts_with(current), "{l} outside {current}");
            }
        }
    }
}
