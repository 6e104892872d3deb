//! `thinvm vmm --api-socket`: the per-VM API (Cloud Hypervisor's /api/v1 subset) driving a real
//! VMM process with hand-made guests on /dev/kvm.

mod daemon_support;

use std::os::unix::fs::PermissionsExt;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use api::client::Client;
use daemon_support::{call, have_kvm, scratch, THINVM};
use serde_json::json;

async fn state(c: &Client) -> String {
    let (_, v) = call(c, "GET", "/api/v1/vm.info", None).await;
    v["state"].as_str().unwrap_or("none").to_string()
}

async fn wait_state(c: &Client, want: &str) {
    let t0 = Instant::now();
    while state(c).await != want {
        assert!(
            t0.elapsed() < Duration::from_secs(15),
            "never reached {want}"
        );
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
}

/// Kills the VMM if the test fails half-way.
struct KillOnDrop(i32);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if std::thread::panicking() {
            // SAFETY: kill with the VMM's pid and a signal number.
            unsafe { libc::kill(self.0, libc::SIGKILL) };
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_vm_api_drives_a_vmm() {
    if !have_kvm() {
        return;
    }
    let dir = scratch("vmm-api");
    let sock = dir.join("api.sock");
    let mut child = Command::new(THINVM)
        .arg("vmm")
        .arg("--api-socket")
        .arg(&sock)
        .arg("--exit-file")
        .arg(dir.join("exit.json"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let pid = child.id() as i32;
    let _guard = KillOnDrop(pid);
    let t0 = Instant::now();
    while !sock.exists() {
        assert!(t0.elapsed() < Duration::from_secs(10));
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(
        std::fs::metadata(&sock).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let c = Client::new(&sock);
    let (s, v) = call(&c, "GET", "/api/v1/vmm.ping", None).await;
    assert_eq!((s, v["pid"].as_i64()), (200, Some(i64::from(child.id()))));
    assert_eq!(call(&c, "GET", "/api/v1/vm.info", None).await.0, 404);
    assert_eq!(call(&c, "PUT", "/api/v1/vm.boot", None).await.0, 404);

    // Refused configs change nothing.
    let kernel = dir.join("images/button");
    for (bad, field) in [
        (
            json!({"payload": {"kernel": kernel}, "net": [{"tap": "t0", "vhost_user": true}]}),
            "net[0].vhost_user",
        ),
        (
            json!({"payload": {"kernel": kernel}, "memory": {"size": 1 << 30, "hugepages": true}}),
            "memory.hugepages",
        ),
        (json!({"payload": {"kernel": kernel}, "bogus": 1}), "bogus"),
        (
            json!({"payload": {"kernel": dir.join("nope")}}),
            "payload.kernel",
        ),
    ] {
        let (s, v) = call(&c, "PUT", "/api/v1/vm.create", Some(&bad)).await;
        assert_eq!(s, 400, "{v}");
        assert!(
            v["message"].as_str().unwrap().contains(field),
            "{field}: {v}"
        );
    }
    assert_eq!(call(&c, "GET", "/api/v1/vm.info", None).await.0, 404);

    let cfg = json!({
        "cpus": {"boot_vcpus": 1, "max_vcpus": 1},
        "memory": {"size": 32 << 20, "shared": false},
        "payload": {"kernel": kernel, "cmdline": "x"},
        "serial": {"mode": "File", "file": dir.join("console.log")},
        "console": {"mode": "Off"},
        "rng": {"src": "/dev/urandom"},
        "disks": [],
        "balloon": {"size": 0, "free_page_reporting": true},
    });
    assert_eq!(
        call(&c, "PUT", "/api/v1/vm.create", Some(&cfg)).await.0,
        204
    );
    assert_eq!(
        call(&c, "PUT", "/api/v1/vm.create", Some(&cfg)).await.0,
        409
    );
    assert_eq!(state(&c).await, "Created");
    assert_eq!(call(&c, "PUT", "/api/v1/vm.pause", None).await.0, 405);
    assert_eq!(call(&c, "PUT", "/api/v1/vm.boot", None).await.0, 204);
    assert_eq!(state(&c).await, "Running");
    // The balloon's target through vm.resize (this guest has no driver: actual stays 0).
    let resize = json!({"desired_balloon": 8 << 20, "desired_ram": 32 << 20});
    assert_eq!(
        call(&c, "PUT", "/api/v1/vm.resize", Some(&resize)).await.0,
        204
    );
    let (_, counters) = call(&c, "GET", "/api/v1/vm.counters", None).await;
    assert_eq!(counters["balloon"]["target_bytes"], 8 << 20, "{counters}");
    assert_eq!(counters["balloon"]["actual_bytes"], 0, "{counters}");
    let (_, info) = call(&c, "GET", "/api/v1/vm.info", None).await;
    assert_eq!(info["config"]["balloon"]["size"], 8 << 20);
    for (bad, field) in [
        (json!({"desired_ram": 64 << 20}), "desired_ram"),
        (json!({"desired_balloon": 64 << 20}), "desired_balloon"),
    ] {
        let (s, v) = call(&c, "PUT", "/api/v1/vm.resize", Some(&bad)).await;
        assert_eq!(s, 400, "{v}");
        assert!(v["message"].as_str().unwrap().contains(field), "{v}");
    }
    assert_eq!(call(&c, "PUT", "/api/v1/vm.pause", None).await.0, 204);
    assert_eq!(state(&c).await, "Paused");
    let (_, counters) = call(&c, "GET", "/api/v1/vm.counters", None).await;
    let seen = counters["vcpu"]["io_in"].as_u64().unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let (_, counters) = call(&c, "GET", "/api/v1/vm.counters", None).await;
    assert_eq!(
        counters["vcpu"]["io_in"].as_u64().unwrap(),
        seen,
        "paused vCPUs make no exits"
    );
    assert_eq!(call(&c, "PUT", "/api/v1/vm.resume", None).await.0, 204);
    assert_eq!(call(&c, "PUT", "/api/v1/vm.reboot", None).await.0, 501);
    // The graceful stop: the guest sees the button and powers off.
    assert_eq!(
        call(&c, "PUT", "/api/v1/vm.power-button", None).await.0,
        204
    );
    wait_state(&c, "Shutdown").await;
    let exit = std::fs::read_to_string(dir.join("exit.json")).unwrap();
    assert!(exit.contains("\"poweroff\""), "{exit}");
    assert!(std::fs::read_to_string(dir.join("console.log"))
        .unwrap()
        .contains("hello"));
    // Booting again after a shutdown builds the VM anew; vm.shutdown is the hard stop.
    assert_eq!(call(&c, "PUT", "/api/v1/vm.boot", None).await.0, 204);
    assert_eq!(state(&c).await, "Running");
    assert_eq!(call(&c, "PUT", "/api/v1/vm.shutdown", None).await.0, 204);
    assert_eq!(state(&c).await, "Shutdown");
    assert!(std::fs::read_to_string(dir.join("exit.json"))
        .unwrap()
        .contains("\"stopped\""));
    assert_eq!(call(&c, "PUT", "/api/v1/vm.delete", None).await.0, 204);
    assert_eq!(call(&c, "GET", "/api/v1/vm.info", None).await.0, 404);
    assert_eq!(call(&c, "PUT", "/api/v1/vmm.shutdown", None).await.0, 204);
    let status = child.wait().unwrap();
    assert!(status.success(), "{status}");
    assert!(!sock.exists(), "the socket is removed");
    let _ = std::fs::remove_dir_all(&dir);
}
