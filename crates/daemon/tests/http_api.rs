//! The daemon's HTTP handlers against a real SQLite file (no VMM process needed: starts use a
//! VMM binary that does not exist, which must fail cleanly).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::{Method, Request};
use axum::Router;
use daemon::{Config, Daemon};
use http_body_util::BodyExt;
use serde_json::{json, Value};
use tower::ServiceExt;

struct Env {
    dir: PathBuf,
    app: Router,
    kernel: String,
}

impl Drop for Env {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn env(tag: &str) -> Env {
    let dir = std::env::temp_dir().join(format!("thinvmd-http-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let images = dir.join("images");
    std::fs::create_dir_all(&images).unwrap();
    let kernel = images.join("vmlinux");
    std::fs::write(&kernel, b"not really a kernel").unwrap();
    std::fs::write(dir.join("outside"), b"x").unwrap();
    std::os::unix::fs::symlink(dir.join("outside"), images.join("escape")).unwrap();
    let mut cfg = Config::new(dir.join("state"), dir.join("no-such-thinvm"));
    cfg.allowed_dirs = vec![images];
    let d: Arc<Daemon> = Daemon::new(cfg).unwrap();
    Env {
        app: daemon::http::router(d),
        kernel: kernel.display().to_string(),
        dir,
    }
}

async fn call(app: &Router, method: Method, uri: &str, body: &str) -> (u16, Value) {
    let req = Request::builder()
        .method(method)
        .uri(uri)
        .body(Body::from(body.to_string()))
        .unwrap();
    let resp = app.clone().oneshot(req).await.unwrap();
    let status = resp.status().as_u16();
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    let v = serde_json::from_slice(&bytes)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into()));
    (status, v)
}

fn vm(name: &str, kernel: &str) -> String {
    json!({"name": name, "kernel": kernel, "memory": 33554432, "restart": "on-failure"}).to_string()
}

#[tokio::test]
async fn define_list_show_delete() {
    let e = env("crud");
    let (s, v) = call(&e.app, Method::POST, "/v1/vms", &vm("web-1", &e.kernel)).await;
    assert_eq!(s, 201, "{v}");
    assert_eq!(
        (v["state"].as_str(), v["restart"].as_str()),
        (Some("defined"), Some("on-failure"))
    );
    call(&e.app, Method::POST, "/v1/vms", &vm("db", &e.kernel)).await;
    let (s, v) = call(&e.app, Method::GET, "/v1/vms", "").await;
    assert_eq!(s, 200);
    let names: Vec<_> = v
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["db", "web-1"]);
    let (s, v) = call(&e.app, Method::GET, "/v1/vms/web-1", "").await;
    assert_eq!((s, v["memory"].as_u64()), (200, Some(33554432)));
    assert_eq!(
        call(&e.app, Method::DELETE, "/v1/vms/web-1", "").await.0,
        204
    );
    let (s, v) = call(&e.app, Method::GET, "/v1/vms/web-1", "").await;
    assert_eq!((s, v["code"].as_str()), (404, Some("not_found")));
}

#[tokio::test]
async fn bad_input_is_4xx_and_changes_nothing() {
    let e = env("bad");
    call(&e.app, Method::POST, "/v1/vms", &vm("a", &e.kernel)).await;
    let cases: Vec<(String, u16, &str)> = vec![
        ("{not json".into(), 400, "invalid VM definition"),
        (
            json!({"name": "b", "kernel": e.kernel, "net": []}).to_string(),
            400,
            "net",
        ),
        (
            json!({"name": "b", "kernel": e.kernel, "memory": -5}).to_string(),
            400,
            "memory",
        ),
        (
            json!({"name": "b", "kernel": e.kernel, "memory": 1u64 << 50}).to_string(),
            400,
            "memory",
        ),
        (
            json!({"name": "b", "kernel": e.kernel, "cpus": 0}).to_string(),
            400,
            "cpus",
        ),
        (
            json!({"name": "../etc", "kernel": e.kernel}).to_string(),
            400,
            "name",
        ),
        (
            json!({"name": "a/b", "kernel": e.kernel}).to_string(),
            400,
            "name",
        ),
        (
            json!({"name": "Upper", "kernel": e.kernel}).to_string(),
            400,
            "name",
        ),
        (
            json!({"name": "b", "kernel": "/etc/passwd"}).to_string(),
            403,
            "allowed",
        ),
        (
            json!({"name": "b", "kernel": format!("{}/images/../outside", e.dir.display())})
                .to_string(),
            403,
            "allowed",
        ),
        (
            json!({"name": "b", "kernel": e.dir.join("images/escape")}).to_string(),
            403,
            "allowed",
        ),
        (
            json!({"name": "b", "kernel": "relative"}).to_string(),
            400,
            "kernel",
        ),
        (vm("a", &e.kernel), 409, "already exists"),
    ];
    for (body, status, needle) in cases {
        let (s, v) = call(&e.app, Method::POST, "/v1/vms", &body).await;
        assert_eq!(s, status, "{body}: {v}");
        assert!(
            v["message"].as_str().unwrap().contains(needle),
            "{body}: {v}"
        );
        assert!(v["code"].is_string());
    }
    let (_, v) = call(&e.app, Method::GET, "/v1/vms", "").await;
    assert_eq!(v.as_array().unwrap().len(), 1, "{v}");
    // Wrong state: nothing runs.
    for op in ["stop", "kill", "pause", "resume"] {
        let (s, v) = call(&e.app, Method::POST, &format!("/v1/vms/a/{op}"), "").await;
        assert_eq!(
            (s, v["code"].as_str()),
            (409, Some("conflict")),
            "{op}: {v}"
        );
    }
    let (s, _) = call(&e.app, Method::POST, "/v1/vms/a/stop?timeout=-1", "").await;
    assert_eq!(s, 400);
    assert_eq!(
        call(&e.app, Method::POST, "/v1/vms/nope/start", "").await.0,
        404
    );
    assert_eq!(
        call(&e.app, Method::POST, "/v1/vms/..%2Fx/start", "")
            .await
            .0,
        400
    );
    let (_, v) = call(&e.app, Method::GET, "/v1/vms/a", "").await;
    assert_eq!(v["state"], "defined");
}

#[tokio::test]
async fn a_failed_start_is_reported_and_recorded() {
    let e = env("startfail");
    call(&e.app, Method::POST, "/v1/vms", &vm("a", &e.kernel)).await;
    let (s, v) = call(&e.app, Method::POST, "/v1/vms/a/start", "").await;
    assert_eq!((s, v["code"].as_str()), (500, Some("start_failed")), "{v}");
    assert!(
        v["message"].as_str().unwrap().contains("no-such-thinvm"),
        "{v}"
    );
    let (_, v) = call(&e.app, Method::GET, "/v1/vms/a", "").await;
    assert_eq!(v["state"], "stopped");
    assert!(v["last_exit"].as_str().unwrap().contains("start failed"));
    assert_eq!(v["pid"], Value::Null);
}

#[tokio::test]
async fn every_documented_route_is_served() {
    let e = env("routes");
    call(&e.app, Method::POST, "/v1/vms", &vm("r", &e.kernel)).await;
    let (s, doc) = call(&e.app, Method::GET, "/v1/openapi.json", "").await;
    assert_eq!(s, 200);
    assert_eq!(doc, api::daemon::openapi());
    for (path, ops) in doc["paths"].as_object().unwrap() {
        for method in ops.as_object().unwrap().keys() {
            if path == "/v1/events" {
                continue; // an endless stream: checked below
            }
            let uri = path.replace("{name}", "r");
            let m: Method = method.to_uppercase().parse().unwrap();
            let (s, v) = call(&e.app, m, &uri, "").await;
            let unrouted = s == 405
                || (s == 404
                    && v["message"]
                        .as_str()
                        .is_some_and(|m| m.starts_with("no such route")));
            assert!(!unrouted, "{method} {uri}: {s} {v}");
        }
    }
    assert_eq!(call(&e.app, Method::GET, "/v1/nothing", "").await.0, 404);
}

/// Reads SSE frames from the stream until `n` events came or the time is up.
async fn read_events(app: &Router, last_id: Option<&str>, n: usize) -> Vec<Value> {
    let mut req = Request::builder().uri("/v1/events");
    if let Some(id) = last_id {
        req = req.header("last-event-id", id);
    }
    let resp = app
        .clone()
        .oneshot(req.body(Body::empty()).unwrap())
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let mut body = resp.into_body();
    let mut text = String::new();
    let mut out = Vec::new();
    while out.len() < n {
        let frame = tokio::time::timeout(Duration::from_secs(5), body.frame()).await;
        let Ok(Some(Ok(frame))) = frame else { break };
        if let Some(data) = frame.data_ref() {
            text.push_str(&String::from_utf8_lossy(data));
        }
        out = text
            .lines()
            .filter_map(|l| l.strip_prefix("data: "))
            .map(|d| serde_json::from_str(d).unwrap())
            .collect();
    }
    out
}

#[tokio::test]
async fn events_resume_after_last_event_id() {
    let e = env("events");
    for n in ["a", "b", "c"] {
        call(&e.app, Method::POST, "/v1/vms", &vm(n, &e.kernel)).await;
    }
    let all = read_events(&e.app, None, 3).await;
    assert_eq!(all.len(), 3);
    let ids: Vec<i64> = all.iter().map(|v| v["id"].as_i64().unwrap()).collect();
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "{ids:?}");
    let rest = read_events(&e.app, Some(&ids[0].to_string()), 2).await;
    let vms: Vec<_> = rest.iter().map(|v| v["vm"].as_str().unwrap()).collect();
    assert_eq!(vms, ["b", "c"]);
    let (s, _) = call(&e.app, Method::GET, "/v1/events?after=xyz", "").await;
    assert_eq!(s, 400);
}

#[tokio::test]
async fn metrics_show_states() {
    let e = env("metrics");
    call(&e.app, Method::POST, "/v1/vms", &vm("m", &e.kernel)).await;
    let (s, v) = call(&e.app, Method::GET, "/metrics", "").await;
    assert_eq!(s, 200);
    let text = v.as_str().unwrap();
    assert!(
        text.contains("thinvm_vm_state{vm=\"m\",state=\"defined\"} 1"),
        "{text}"
    );
    assert!(
        text.contains("thinvm_vm_state{vm=\"m\",state=\"running\"} 0"),
        "{text}"
    );
}

#[tokio::test]
async fn paths_are_checked_again_at_start() {
    let e = env("restart-path");
    call(&e.app, Method::POST, "/v1/vms", &vm("a", &e.kernel)).await;
    // The kernel is replaced by a symlink that leaves the allowed folder.
    std::fs::remove_file(&e.kernel).unwrap();
    std::os::unix::fs::symlink(e.dir.join("outside"), &e.kernel).unwrap();
    let (s, v) = call(&e.app, Method::POST, "/v1/vms/a/start", "").await;
    assert_eq!(
        (s, v["code"].as_str()),
        (403, Some("path_not_allowed")),
        "{v}"
    );
    let (_, v) = call(&e.app, Method::GET, "/v1/vms/a", "").await;
    assert_eq!(v["state"], "defined");
}

/// A daemon that died while VMs ran: on restart, VMMs that are gone are settled from their exit
/// files (or as crashed when there is none), and no VM is started twice.
#[tokio::test]
async fn recovery_settles_vmms_that_ended_while_the_daemon_was_away() {
    use api::daemon::State;
    use daemon::db::Change;
    let e = env("recover");
    let state = e.dir.join("state2");
    let cfg = |vmm: &str| {
        let mut c = Config::new(state.clone(), e.dir.join(vmm));
        c.allowed_dirs = vec![e.dir.join("images")];
        c
    };
    // The router's daemon is replaced by direct use of the same state folder.
    let d = Daemon::new(cfg("no-such-thinvm")).unwrap();
    for name in ["gone", "clean", "busy"] {
        d.create(serde_json::from_str(&vm(name, &e.kernel)).unwrap())
            .await
            .unwrap();
    }
    // A dead pid: spawn and reap a short process.
    let mut child = std::process::Command::new("/bin/true").spawn().unwrap();
    let dead = child.id() as i32;
    child.wait().unwrap();
    for (name, st) in [
        ("gone", State::Running),
        ("clean", State::Stopping),
        ("busy", State::Running),
    ] {
        let mut c = Change::to(st, "before the crash");
        c.process = Some(Some((dead, 12345)));
        if name == "clean" {
            c.user_stop = Some(true);
        }
        d.db.update(name, c).await.unwrap();
    }
    std::fs::create_dir_all(d.vm_dir("clean")).unwrap();
    std::fs::write(
        d.vm_dir("clean").join("exit.json"),
        r#"{"reason":"poweroff","code":0,"message":"guest powered off"}"#,
    )
    .unwrap();
    // "busy" says running with our own pid but a wrong start time: a recycled pid, not its VMM.
    let mut c = Change::to(State::Running, "recycled pid");
    c.process = Some(Some((std::process::id() as i32, 1)));
    d.db.update("busy", c).await.unwrap();
    drop(d);

    let d = Daemon::new(cfg("no-such-thinvm")).unwrap();
    let second = Daemon::new(cfg("no-such-thinvm"))
        .err()
        .expect("one daemon per state folder");
    assert_eq!(second.code, "conflict", "{second}");
    d.recover().await.unwrap();
    let gone = d.get("gone").await.unwrap();
    // on-failure with a missing VMM binary: the restart fails later; right now it is crashed.
    assert_eq!(gone.state, State::Crashed, "{gone:?}");
    assert!(gone.last_exit.unwrap().contains("without an exit reason"));
    let clean = d.get("clean").await.unwrap();
    assert_eq!(clean.state, State::Stopped);
    assert!(clean.last_exit.unwrap().contains("guest powered off"));
    let busy = d.get("busy").await.unwrap();
    assert_eq!(
        (busy.state, busy.pid),
        (State::Crashed, None),
        "a recycled pid is not adopted"
    );
}

#[tokio::test]
async fn disks_are_confined_and_checked() {
    let e = env("disks");
    let img = e.dir.join("images/disk.img");
    std::fs::write(&img, vec![0u8; 4096]).unwrap();
    let body = |disk: serde_json::Value| {
        json!({"name": "d", "kernel": e.kernel, "memory": 33554432, "disks": [disk]}).to_string()
    };
    let (s, v) = call(
        &e.app,
        Method::POST,
        "/v1/vms",
        &body(json!({"path": e.dir.join("outside")})),
    )
    .await;
    assert_eq!(
        (s, v["code"].as_str()),
        (403, Some("path_not_allowed")),
        "{v}"
    );
    assert!(
        v["message"].as_str().unwrap().contains("disks[0].path"),
        "{v}"
    );
    let (s, v) = call(
        &e.app,
        Method::POST,
        "/v1/vms",
        &body(json!({"path": img, "cache": "none"})),
    )
    .await;
    assert_eq!(s, 400, "{v}");
    assert!(v["message"].as_str().unwrap().contains("cache"), "{v}");
    let (s, v) = call(
        &e.app,
        Method::POST,
        "/v1/vms",
        &body(json!({"path": img, "format": "vhdx"})),
    )
    .await;
    assert_eq!(s, 400, "{v}");
    let (s, v) = call(
        &e.app,
        Method::POST,
        "/v1/vms",
        &body(json!({"path": img, "format": "qcow2", "readonly": true})),
    )
    .await;
    assert_eq!(s, 201, "{v}");
    assert_eq!(v["disks"][0]["format"], "qcow2");
    assert_eq!(v["disks"][0]["readonly"], true);
}
