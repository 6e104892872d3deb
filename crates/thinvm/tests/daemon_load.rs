//! The load test: 200 API calls from 8 concurrent clients (create, start, list, stop, delete)
//! against thinvmd with real VMMs; nothing is lost and the final state is exactly what the
//! calls say.

mod daemon_support;

use std::collections::BTreeSet;
use std::time::Instant;

use daemon_support::{call, have_kvm, scratch, spec, wait_vm, Thinvmd};

const CLIENTS: usize = 8;
const ROUNDS: usize = 5;
const CALLS_PER_ROUND: usize = 5;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_calls_from_eight_clients() {
    if !have_kvm() {
        return;
    }
    let dir = scratch("daemon-load");
    let d = Thinvmd::start(&dir);
    let t0 = Instant::now();
    let mut tasks = Vec::new();
    for i in 0..CLIENTS {
        let c = d.client.clone();
        let dir = dir.clone();
        tasks.push(tokio::spawn(async move {
            let mut calls = 0;
            for j in 0..ROUNDS {
                let name = format!("vm-{i}-{j}");
                let (s, v) = call(
                    &c,
                    "POST",
                    "/v1/vms",
                    Some(&spec(&name, &dir, "idle", "never")),
                )
                .await;
                assert_eq!(s, 201, "{name}: {v}");
                let (s, v) = call(&c, "POST", &format!("/v1/vms/{name}/start"), None).await;
                assert_eq!(
                    (s, v["state"].as_str()),
                    (200, Some("running")),
                    "{name}: {v}"
                );
                let (s, v) = call(&c, "GET", "/v1/vms", None).await;
                assert_eq!(s, 200);
                assert!(v
                    .as_array()
                    .unwrap()
                    .iter()
                    .any(|x| x["name"] == name.as_str()));
                let (s, v) =
                    call(&c, "POST", &format!("/v1/vms/{name}/stop?timeout=0"), None).await;
                assert_eq!(s, 200, "{name}: {v}");
                wait_vm(&c, &name, 30, |v| v["state"] == "stopped").await;
                if j + 1 < ROUNDS {
                    let (s, v) = call(&c, "DELETE", &format!("/v1/vms/{name}"), None).await;
                    assert_eq!(s, 204, "{name}: {v}");
                } else {
                    let (s, _) = call(&c, "GET", &format!("/v1/vms/{name}"), None).await;
                    assert_eq!(s, 200);
                }
                calls += CALLS_PER_ROUND;
            }
            calls
        }));
    }
    let mut total = 0;
    for t in tasks {
        total += t.await.unwrap();
    }
    assert_eq!(total, 200);
    eprintln!("200 calls from 8 clients in {:?}", t0.elapsed());
    let (_, list) = call(&d.client, "GET", "/v1/vms", None).await;
    let got: BTreeSet<String> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|v| {
            assert_eq!(v["state"], "stopped", "{v}");
            assert_eq!(v["pid"], serde_json::Value::Null);
            v["name"].as_str().unwrap().to_string()
        })
        .collect();
    let want: BTreeSet<String> = (0..CLIENTS)
        .map(|i| format!("vm-{i}-{}", ROUNDS - 1))
        .collect();
    assert_eq!(got, want);
    assert!(d.vmm_pids().is_empty(), "no VMM is left running");
    // Every VM's folder but the kept ones is gone.
    let dirs: BTreeSet<String> = std::fs::read_dir(dir.join("state/vms"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(dirs, want);
    // Each VM went defined -> starting -> ... -> stopped, and each deleted one was deleted once.
    let idle = std::time::Duration::from_millis(700);
    let events = daemon_support::read_sse_idle(&d.client, None, usize::MAX, idle).await;
    let deleted = events.iter().filter(|e| e["message"] == "deleted").count();
    assert_eq!(deleted, CLIENTS * (ROUNDS - 1));
    let defined = events.iter().filter(|e| e["state"] == "defined").count();
    assert_eq!(defined, CLIENTS * ROUNDS);
}
