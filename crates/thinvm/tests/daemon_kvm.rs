//! thinvmd with real VMM processes running hand-made guests on this host's /dev/kvm: the
//! lifecycle, clean stop, a VMM killed from outside (crashed, then restarted by the policy), the
//! daemon killed and restarted (the running VM is adopted, not started twice), a guest panic,
//! and bad input over the real socket.

mod daemon_support;

use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use daemon_support::{call, have_kvm, scratch, spec, state, wait_vm, Thinvmd};
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lifecycle_stop_crash_restart_and_adoption() {
    if !have_kvm() {
        return;
    }
    let dir = scratch("daemon-life");
    let mut d = Thinvmd::start(&dir);
    let c = d.client.clone();
    let mode = std::fs::metadata(&d.socket).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o660);
    for (name, guest, restart) in [
        ("btn", "button", "never"),
        ("idle", "idle", "on-failure"),
        ("pan", "panic", "never"),
    ] {
        let (s, v) = call(
            &c,
            "POST",
            "/v1/vms",
            Some(&spec(name, &dir, guest, restart)),
        )
        .await;
        assert_eq!(s, 201, "{v}");
    }
    for name in ["btn", "idle"] {
        let (s, v) = call(&c, "POST", &format!("/v1/vms/{name}/start"), None).await;
        assert_eq!((s, state(&v)), (200, "running"), "{v}");
    }
    let (_, list) = call(&c, "GET", "/v1/vms", None).await;
    let running: Vec<_> = list
        .as_array()
        .unwrap()
        .iter()
        .filter(|v| state(v) == "running")
        .collect();
    assert_eq!(running.len(), 2, "{list}");
    assert_eq!(d.vmm_pids().len(), 2);

    // The console reaches the log.
    let t0 = std::time::Instant::now();
    loop {
        let (_, log) = call(&c, "GET", "/v1/vms/btn/logs", None).await;
        if log.as_str().is_some_and(|l| l.contains("hello")) {
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "no console output: {log}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // Pause and resume go through the VMM's own API.
    let (s, v) = call(&c, "POST", "/v1/vms/idle/pause", None).await;
    assert_eq!((s, state(&v)), (200, "paused"), "{v}");
    let vmm = api::client::Client::new(dir.join("state/vms/idle/api.sock"));
    let (_, info) = call(&vmm, "GET", "/api/v1/vm.info", None).await;
    assert_eq!(info["state"], "Paused");
    let (s, v) = call(&c, "POST", "/v1/vms/idle/resume", None).await;
    assert_eq!((s, state(&v)), (200, "running"), "{v}");

    // Restart: the guest powers off on the button, and a new VMM runs it again.
    let before = v_pid(&c, "btn").await;
    let (s, v) = call(&c, "POST", "/v1/vms/btn/restart?timeout=20", None).await;
    assert_eq!((s, state(&v)), (200, "running"), "{v}");
    assert_ne!(v["pid"].as_i64(), Some(i64::from(before)));
    let (s, _) = call(&c, "POST", "/v1/vms/btn/restart?timeout=x", None).await;
    assert_eq!(s, 400);

    // A clean stop: the guest powers itself off on the power button, long before the timeout.
    let (s, v) = call(&c, "POST", "/v1/vms/btn/stop?timeout=20", None).await;
    assert_eq!((s, state(&v)), (200, "stopping"), "{v}");
    let v = wait_vm(&c, "btn", 15, |v| state(v) == "stopped").await;
    assert!(
        v["last_exit"]
            .as_str()
            .unwrap()
            .contains("guest powered off"),
        "{v}"
    );

    // The VMM killed from outside: crashed, then restarted by on-failure.
    let old_pid = v_pid(&c, "idle").await;
    // SAFETY: kill with a pid the daemon reported and a signal number.
    unsafe { libc::kill(old_pid, libc::SIGKILL) };
    let v = wait_vm(&c, "idle", 20, |v| {
        state(v) == "running" && v["restarts"] == 1
    })
    .await;
    let new_pid = v["pid"].as_i64().unwrap() as i32;
    assert_ne!(new_pid, old_pid);
    let (_, evs) = call(&c, "GET", "/metrics", None).await;
    assert!(evs
        .as_str()
        .unwrap()
        .contains("thinvm_vm_restarts{vm=\"idle\"} 1"));

    // The daemon killed: the VMM runs on and the new daemon adopts it.
    d.sigkill();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(d.vmm_pids(), vec![new_pid], "the VMM outlives the daemon");
    d.spawn();
    let v = wait_vm(&c, "idle", 10, |v| state(v) == "running").await;
    assert_eq!(
        v["pid"].as_i64(),
        Some(i64::from(new_pid)),
        "adopted, not restarted"
    );
    assert_eq!(d.vmm_pids(), vec![new_pid], "nothing started twice");
    assert!(d.log().contains("adopting"), "{}", d.log());

    // A user kill: stopped, and the policy does not restart it.
    let (s, _) = call(&c, "POST", "/v1/vms/idle/kill", None).await;
    assert_eq!(s, 200);
    let v = wait_vm(&c, "idle", 10, |v| state(v) == "stopped").await;
    tokio::time::sleep(Duration::from_millis(700)).await;
    let (_, again) = call(&c, "GET", "/v1/vms/idle", None).await;
    assert_eq!(
        (state(&again), &again["restarts"]),
        ("stopped", &v["restarts"])
    );
    assert!(d.vmm_pids().is_empty());

    // A guest panic (pvpanic): crashed, with the reason.
    call(&c, "POST", "/v1/vms/pan/start", None).await;
    let v = wait_vm(&c, "pan", 15, |v| state(v) == "crashed").await;
    assert!(v["last_exit"].as_str().unwrap().contains("panic"), "{v}");

    // The event stream has stored, increasing ids and resumes after Last-Event-ID.
    let all = daemon_support::read_sse(&c, None, 5).await;
    assert_eq!(all.len(), 5);
    let ids: Vec<i64> = all.iter().map(|e| e["id"].as_i64().unwrap()).collect();
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "{ids:?}");
    let rest = daemon_support::read_sse(&c, Some(ids[2]), 2).await;
    assert_eq!(rest, all[3..5]);
}

async fn v_pid(c: &api::client::Client, name: &str) -> i32 {
    let (_, v) = call(c, "GET", &format!("/v1/vms/{name}"), None).await;
    v["pid"].as_i64().unwrap() as i32
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_over_the_socket_changes_nothing() {
    if !have_kvm() {
        return;
    }
    let dir = scratch("daemon-bad");
    let d = Thinvmd::start(&dir);
    let c = d.client.clone();
    call(
        &c,
        "POST",
        "/v1/vms",
        Some(&spec("a", &dir, "idle", "never")),
    )
    .await;
    call(&c, "POST", "/v1/vms/a/start", None).await;
    let (_, before) = call(&c, "GET", "/v1/vms", None).await;
    let raw = |body: &str| c.request("POST", "/v1/vms", Some(body.as_bytes().to_vec()));
    let r = raw("{\"name\": ").await.unwrap();
    assert_eq!(r.status, 400);
    let bad = [
        json!({"name": "b", "kernel": dir.join("images/idle"), "vsock": 3}),
        json!({"name": "a", "kernel": dir.join("images/idle")}),
        json!({"name": "x/../../y", "kernel": dir.join("images/idle")}),
        json!({"name": "b", "kernel": "/etc/hostname"}),
        json!({"name": "b", "kernel": dir.join("images/idle"), "memory": 1}),
    ];
    let mut codes = Vec::new();
    for b in &bad {
        let (s, v) = call(&c, "POST", "/v1/vms", Some(b)).await;
        assert!(v["code"].is_string() && v["message"].is_string(), "{v}");
        codes.push(s);
    }
    assert_eq!(codes, [400, 409, 400, 403, 400]);
    // Wrong state: start a running VM, delete a running VM, resume a running VM.
    for (m, uri) in [
        ("POST", "/v1/vms/a/start"),
        ("DELETE", "/v1/vms/a"),
        ("POST", "/v1/vms/a/resume"),
    ] {
        let (s, v) = call(&c, m, uri, None).await;
        assert_eq!(
            (s, v["code"].as_str()),
            (409, Some("conflict")),
            "{m} {uri}: {v}"
        );
    }
    let (_, after) = call(&c, "GET", "/v1/vms", None).await;
    assert_eq!(before, after);
    assert_eq!(d.vmm_pids().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn autostart_vms_start_with_the_daemon() {
    if !have_kvm() {
        return;
    }
    let dir = scratch("daemon-auto");
    let mut d = Thinvmd::start(&dir);
    let c = d.client.clone();
    let mut auto = spec("auto", &dir, "idle", "never");
    auto["autostart"] = json!(true);
    call(&c, "POST", "/v1/vms", Some(&auto)).await;
    call(
        &c,
        "POST",
        "/v1/vms",
        Some(&spec("manual", &dir, "idle", "never")),
    )
    .await;
    d.sigkill();
    d.spawn();
    let v = wait_vm(&c, "auto", 15, |v| state(v) == "running").await;
    assert!(v["pid"].is_i64());
    let (_, m) = call(&c, "GET", "/v1/vms/manual", None).await;
    assert_eq!(state(&m), "defined");
    assert_eq!(d.vmm_pids().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn console_attaches_both_ways() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    if !have_kvm() {
        return;
    }
    let dir = scratch("daemon-console");
    let d = Thinvmd::start(&dir);
    let c = d.client.clone();
    call(
        &c,
        "POST",
        "/v1/vms",
        Some(&spec("echo", &dir, "echo", "never")),
    )
    .await;
    // Not running yet: refused.
    let e = c
        .upgrade("/v1/vms/echo/console", "thinvm-console")
        .await
        .err()
        .unwrap();
    assert!(e.to_string().contains("defined"), "{e}");
    call(&c, "POST", "/v1/vms/echo/start", None).await;
    let mut io = c
        .upgrade("/v1/vms/echo/console", "thinvm-console")
        .await
        .unwrap();
    io.write_all(b"ping 42\n").await.unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 256];
    // Up to the newline: the log is written line by line, before the clients get the bytes.
    while !String::from_utf8_lossy(&got).contains("ping 42\n") {
        let n = tokio::time::timeout(Duration::from_secs(10), io.read(&mut buf))
            .await
            .expect("echo within 10 s")
            .unwrap();
        assert!(
            n > 0,
            "console closed; got {:?}",
            String::from_utf8_lossy(&got)
        );
        got.extend_from_slice(&buf[..n]);
    }
    drop(io);
    // The echoed text is in the log too.
    let (_, log) = call(&c, "GET", "/v1/vms/echo/logs", None).await;
    assert!(log.as_str().unwrap().contains("hello\nping 42"), "{log}");
    // A plain GET (no upgrade) is a clear 400.
    let (s, v) = call(&c, "GET", "/v1/vms/echo/console", None).await;
    assert_eq!(s, 400, "{v}");
    call(&c, "POST", "/v1/vms/echo/kill", None).await;
    wait_vm(&c, "echo", 10, |v| state(v) == "stopped").await;
}
