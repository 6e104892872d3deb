//! Network cards in VM definitions through the daemon's HTTP handlers: stored with a MAC the
//! daemon assigns once and keeps (also across a daemon restart), bad cards refused with 400
//! and nothing stored, and the OpenAPI document describing them.

use std::path::PathBuf;
use std::sync::Arc;

use axum::body::Body;
use axum::http::{Method, Request};
use axum::Router;
use daemon::{Config, Daemon};
use http_body_util::BodyExt;
use serde_json::{json, Value};
use tower::ServiceExt;

fn setup(tag: &str) -> (PathBuf, String) {
    let dir = std::env::temp_dir().join(format!("thinvmd-nets-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("images")).unwrap();
    let kernel = dir.join("images/vmlinux");
    std::fs::write(&kernel, b"not really a kernel").unwrap();
    (dir, kernel.display().to_string())
}

fn daemon(dir: &std::path::Path) -> Router {
    let mut cfg = Config::new(dir.join("state"), dir.join("no-such-thinvm"));
    cfg.allowed_dirs = vec![dir.join("images")];
    let d: Arc<Daemon> = Daemon::new(cfg).unwrap();
    daemon::http::router(d)
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

#[tokio::test]
async fn cards_are_stored_with_a_kept_mac() {
    let (dir, kernel) = setup("keep");
    let app = daemon(&dir);
    let body = json!({"name": "web", "kernel": kernel, "nets": [
        {"tap": "tap-web0"},
        {"tap": "tap-web1", "mac": "52:54:00:ab:cd:ef"},
    ]});
    let (s, v) = call(&app, Method::POST, "/v1/vms", &body.to_string()).await;
    assert_eq!(s, 201, "{v}");
    let nets = v["nets"].as_array().unwrap().clone();
    assert_eq!(nets.len(), 2);
    assert_eq!(nets[0]["tap"], "tap-web0");
    let assigned = nets[0]["mac"]
        .as_str()
        .expect("a MAC was assigned")
        .to_string();
    let mac = api::net::parse_mac(&assigned).unwrap();
    assert_eq!(mac[0] & 3, 2, "locally administered unicast: {assigned}");
    assert_eq!(
        nets[1]["mac"], "52:54:00:ab:cd:ef",
        "a given MAC is kept as given"
    );
    // A second VM's card gets its own MAC.
    let other = json!({"name": "db", "kernel": kernel, "nets": [{"tap": "tap-db0"}]});
    let (_, v) = call(&app, Method::POST, "/v1/vms", &other.to_string()).await;
    assert_ne!(v["nets"][0]["mac"].as_str(), Some(assigned.as_str()));
    // The same after the daemon restarts (the definition holds it).
    drop(app);
    let app = daemon(&dir);
    let (_, v) = call(&app, Method::GET, "/v1/vms/web", "").await;
    assert_eq!(v["nets"][0]["mac"].as_str(), Some(assigned.as_str()), "{v}");
    assert_eq!(v["nets"][1]["tap"], "tap-web1");
    // A VM without cards shows none.
    let plain = json!({"name": "plain", "kernel": kernel});
    let (_, v) = call(&app, Method::POST, "/v1/vms", &plain.to_string()).await;
    assert!(v.get("nets").is_none(), "{v}");
    drop(app);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test]
async fn bad_cards_are_400_and_nothing_is_stored() {
    let (dir, kernel) = setup("bad");
    let app = daemon(&dir);
    for (nets, needle) in [
        (
            json!([{"tap": "t0", "mac": "52:54:00:12:34"}]),
            "nets[0].mac",
        ),
        (
            json!([{"tap": "t0", "mac": "zz:54:00:12:34:56"}]),
            "six hex bytes",
        ),
        (
            json!([{"tap": "t0", "mac": "03:00:00:00:00:01"}]),
            "multicast",
        ),
        (json!([{"tap": "0123456789abcdef"}]), "1 to 15"),
        (json!([{"tap": ""}]), "nets[0].tap"),
        (json!([{"tap": "a/b"}]), "nets[0].tap"),
        (json!([{"tap": "a b"}]), "nets[0].tap"),
        (
            json!([{"tap": "t0"}, {"tap": "t1"}, {"tap": "t0"}]),
            "nets[2].tap",
        ),
        (
            json!([{"tap": "t0", "mac": "02:00:00:00:00:09"}, {"tap": "t1", "mac": "02:00:00:00:00:09"}]),
            "nets[1].mac",
        ),
        (json!([{"tap": "t0", "queues": 2}]), "queues"),
        (json!([{"mac": "02:00:00:00:00:01"}]), "tap"),
        (
            json!((0..9)
                .map(|i| json!({"tap": format!("t{i}")}))
                .collect::<Vec<_>>()),
            "at most 8",
        ),
    ] {
        let body = json!({"name": "b", "kernel": kernel, "nets": nets});
        let (s, v) = call(&app, Method::POST, "/v1/vms", &body.to_string()).await;
        assert_eq!(s, 400, "{nets}: {v}");
        let msg = v["message"].as_str().unwrap();
        assert!(msg.contains(needle), "{nets}: {msg}");
    }
    let (_, v) = call(&app, Method::GET, "/v1/vms", "").await;
    assert_eq!(v, json!([]), "nothing stored");
    drop(app);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test]
async fn openapi_describes_the_cards() {
    let (dir, _) = setup("doc");
    let app = daemon(&dir);
    let (_, doc) = call(&app, Method::GET, "/v1/openapi.json", "").await;
    let nets = &doc["components"]["schemas"]["VmSpec"]["properties"]["nets"];
    assert_eq!(nets["items"]["required"], json!(["tap"]), "{nets}");
    assert_eq!(nets["items"]["properties"]["tap"]["maxLength"], 15);
    assert!(nets["items"]["properties"]["mac"]["pattern"].is_string());
    drop(app);
    std::fs::remove_dir_all(&dir).unwrap();
}
