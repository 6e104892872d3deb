//! thinvmd's Prometheus metrics with a real VMM: a hand-made guest on this host's /dev/kvm
//! drives its virtio-blk disk (one write, two reads), and `/metrics` shows exactly those bytes
//! and operations for `_disk0`, as the VMM's own `vm.counters` does, beside the VMM's RSS.

mod daemon_support;

use std::time::{Duration, Instant};

use daemon_support::{call, have_kvm, scratch, wait_vm, Thinvmd, BLK_IO};
use serde_json::json;

fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn block_counters_reach_the_metrics() {
    if !have_kvm() {
        return;
    }
    let dir = scratch("daemon-metrics");
    let d = Thinvmd::start(&dir);
    let c = d.client.clone();
    let disk = dir.join("images/io.img");
    std::fs::write(&disk, vec![0u8; 1 << 20]).unwrap();
    let spec = json!({
        "name": "io",
        "kernel": dir.join("images/blk"),
        "memory": 32u64 << 20,
        "disks": [{"path": disk}],
    });
    let (s, v) = call(&c, "POST", "/v1/vms", Some(&spec)).await;
    assert_eq!(s, 201, "{v}");
    let (s, v) = call(&c, "POST", "/v1/vms/io/start", None).await;
    assert_eq!(s, 200, "{v}");
    let t0 = Instant::now();
    loop {
        let (_, log) = call(&c, "GET", "/v1/vms/io/logs", None).await;
        if log.as_str().is_some_and(|l| l.contains("blk ok")) {
            break;
        }
        assert!(t0.elapsed() < Duration::from_secs(20), "no blk ok: {log}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let sum = |write: bool| -> (u64, u64) {
        let io = BLK_IO.iter().filter(|(w, _, _)| *w == write);
        (
            io.clone().count() as u64,
            io.map(|(_, _, n)| u64::from(*n)).sum(),
        )
    };
    let ((reads, read_bytes), (writes, write_bytes)) = (sum(false), sum(true));
    assert_eq!((reads, read_bytes, writes, write_bytes), (2, 4608, 1, 1536));

    // The VMM's own API: Cloud Hypervisor's group name and counter names.
    let vmm = api::client::Client::new(dir.join("state/vms/io/api.sock"));
    let (_, counters) = call(&vmm, "GET", "/api/v1/vm.counters", None).await;
    assert_eq!(
        counters["_disk0"],
        json!({"read_bytes": read_bytes, "read_ops": reads,
               "write_bytes": write_bytes, "write_ops": writes}),
        "{counters}"
    );
    assert!(counters["vcpu"]["io_out"].as_u64().unwrap() > 0);

    let (_, m) = call(&c, "GET", "/metrics", None).await;
    let m = m.as_str().unwrap().to_string();
    for (metric, want) in [
        ("read_bytes", read_bytes),
        ("read_ops", reads),
        ("write_bytes", write_bytes),
        ("write_ops", writes),
    ] {
        let series = format!("thinvm_vm_block_{metric}_total{{vm=\"io\",disk=\"_disk0\"}}");
        assert_eq!(sample(&m, &series), Some(want as f64), "{series}\n{m}");
        let name = format!("thinvm_vm_block_{metric}_total");
        assert!(m.contains(&format!("# TYPE {name} counter")), "{m}");
        assert!(m.contains(&format!("# HELP {name} ")), "{m}");
    }
    let rss = sample(&m, "thinvm_vmm_rss_bytes{vm=\"io\"}").expect("an RSS sample");
    assert!(rss > 1e6, "the VMM's RSS is {rss}");
    assert!(m.contains("# TYPE thinvm_vm_net_rx_bytes_total counter"));

    // The write reached the file; the guest powers off on the button.
    let data = std::fs::read(&disk).unwrap();
    assert!(data[8 * 512..8 * 512 + 1536].iter().all(|&b| b == 0x3c));
    assert!(data[..8 * 512].iter().all(|&b| b == 0));
    let (s, _) = call(&c, "POST", "/v1/vms/io/stop?timeout=20", None).await;
    assert_eq!(s, 200);
    let v = wait_vm(&c, "io", 15, |v| v["state"] == "stopped").await;
    assert!(
        v["last_exit"]
            .as_str()
            .unwrap()
            .contains("guest powered off"),
        "{v}"
    );
    let (_, m) = call(&c, "GET", "/metrics", None).await;
    assert!(
        !m.as_str().unwrap().contains("disk=\"_disk0\"}"),
        "a stopped VM has no device samples"
    );
}

/// A card defined in the daemon reaches the VMM by `net` config (TAP name and the MAC the
/// daemon stored), and its counters (`_net1`, after the disk `_disk0`) appear in `/metrics`.
/// Needs root and /dev/net/tun (the VMM creates the TAP); skips otherwise.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_net_card_reaches_the_vmm_and_the_metrics() {
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    if !have_kvm() || !root || !std::path::Path::new("/dev/net/tun").exists() {
        eprintln!("skipped: needs /dev/kvm, root and /dev/net/tun");
        return;
    }
    let dir = scratch("daemon-net");
    let d = Thinvmd::start(&dir);
    let c = d.client.clone();
    let disk = dir.join("images/io.img");
    std::fs::write(&disk, vec![0u8; 1 << 20]).unwrap();
    let tap = format!("thvm{}", std::process::id() % 100_000);
    let spec = json!({
        "name": "netvm",
        "kernel": dir.join("images/button"),
        "memory": 32u64 << 20,
        "disks": [{"path": disk}],
        "nets": [{"tap": tap}],
    });
    let (s, v) = call(&c, "POST", "/v1/vms", Some(&spec)).await;
    assert_eq!(s, 201, "{v}");
    let mac = v["nets"][0]["mac"].as_str().unwrap().to_string();
    let (s, v) = call(&c, "POST", "/v1/vms/netvm/start", None).await;
    assert_eq!(s, 200, "{v}");
    let vmm = api::client::Client::new(dir.join("state/vms/netvm/api.sock"));
    let (_, info) = call(&vmm, "GET", "/api/v1/vm.info", None).await;
    assert_eq!(
        info["config"]["net"],
        json!([{"tap": tap, "mac": mac}]),
        "{info}"
    );
    // The TAP exists while the VM runs, with the guest on the other side.
    assert!(std::path::Path::new(&format!("/sys/class/net/{tap}")).exists());
    let (_, m) = call(&c, "GET", "/metrics", None).await;
    let m = m.as_str().unwrap();
    for metric in ["rx_bytes", "rx_frames", "tx_bytes", "tx_frames"] {
        let series = format!("thinvm_vm_net_{metric}_total{{vm=\"netvm\",net=\"_net1\"}}");
        assert_eq!(sample(m, &series), Some(0.0), "{series}\n{m}");
    }
    assert!(sample(
        m,
        "thinvm_vm_block_read_ops_total{vm=\"netvm\",disk=\"_disk0\"}"
    )
    .is_some());
    let (s, _) = call(&c, "POST", "/v1/vms/netvm/stop?timeout=20", None).await;
    assert_eq!(s, 200);
    wait_vm(&c, "netvm", 15, |v| v["state"] == "stopped").await;
    // The next start gets the same MAC (the definition keeps it).
    let (_, v) = call(&c, "GET", "/v1/vms/netvm", None).await;
    assert_eq!(v["nets"][0]["mac"].as_str(), Some(mac.as_str()));
}
