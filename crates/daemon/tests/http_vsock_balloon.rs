//! The vsock device and the balloon in VM definitions through the daemon's HTTP handlers:
//! stored and shown with the socket the daemon places in the VM's folder (also across a daemon
//! restart), bad input refused with 400 and nothing stored, and the OpenAPI document
//! describing them.

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
    let dir = std::env::temp_dir().join(format!("thinvmd-vsock-{tag}-{}", std::process::id()));
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
async fn vsock_and_balloon_round_trip_and_survive_a_restart() {
    let (dir, kernel) = setup("keep");
    let app = daemon(&dir);
    let body = json!({"name": "web", "kernel": kernel, "memory": 128 << 20,
        "vsock": {"cid": 3},
        "balloon": {"size": 64 << 20, "deflate_on_oom": true, "free_page_reporting": true}});
    let (s, v) = call(&app, Method::POST, "/v1/vms", &body.to_string()).await;
    assert_eq!(s, 201, "{v}");
    let socket = dir.join("state/vms/web/vsock.sock").display().to_string();
    let want = |v: &Value| {
        assert_eq!(v["vsock"], json!({"cid": 3}), "{v}");
        assert_eq!(v["vsock_socket"], json!(socket), "{v}");
        assert_eq!(
            v["balloon"],
            json!({"size": 64 << 20, "deflate_on_oom": true, "free_page_reporting": true})
        );
    };
    want(&v);
    let (_, v) = call(&app, Method::GET, "/v1/vms/web", "").await;
    want(&v);
    drop(app);
    let app = daemon(&dir);
    let (s, v) = call(&app, Method::GET, "/v1/vms/web", "").await;
    assert_eq!(s, 200, "{v}");
    want(&v);
    let (_, v) = call(&app, Method::GET, "/v1/vms", "").await;
    want(&v[0]);
    // Another CID is another VM's; a VM without either shows neither.
    let other = json!({"name": "db", "kernel": kernel, "vsock": {"cid": 4294967294u64}});
    let (s, v) = call(&app, Method::POST, "/v1/vms", &other.to_string()).await;
    assert_eq!(s, 201, "{v}");
    let plain = json!({"name": "plain", "kernel": kernel});
    let (_, v) = call(&app, Method::POST, "/v1/vms", &plain.to_string()).await;
    for key in ["vsock", "vsock_socket", "balloon"] {
        assert!(v.get(key).is_none(), "{key}: {v}");
    }
    // Deleting the first VM frees its CID.
    let (s, _) = call(&app, Method::DELETE, "/v1/vms/web", "").await;
    assert_eq!(s, 204);
    let again = json!({"name": "web2", "kernel": kernel, "vsock": {"cid": 3}});
    let (s, v) = call(&app, Method::POST, "/v1/vms", &again.to_string()).await;
    assert_eq!(s, 201, "{v}");
    drop(app);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test]
async fn bad_vsock_or_balloon_is_400_and_nothing_is_stored() {
    let (dir, kernel) = setup("bad");
    let app = daemon(&dir);
    let first = json!({"name": "first", "kernel": kernel, "vsock": {"cid": 10}});
    let (s, v) = call(&app, Method::POST, "/v1/vms", &first.to_string()).await;
    assert_eq!(s, 201, "{v}");
    for (extra, needle) in [
        (json!({"vsock": {"cid": 0}}), "vsock.cid"),
        (json!({"vsock": {"cid": 1}}), "vsock.cid"),
        (json!({"vsock": {"cid": 2}}), "vsock.cid"),
        (json!({"vsock": {"cid": 4294967295u64}}), "vsock.cid"),
        (json!({"vsock": {"cid": -3}}), "vsock"),
        (json!({"vsock": {"cid": "3"}}), "vsock"),
        (json!({"vsock": {}}), "cid"),
        (json!({"vsock": {"cid": 10}}), "\"first\""),
        (
            json!({"vsock": {"cid": 11, "socket": "/tmp/evil.sock"}}),
            "socket",
        ),
        (
            json!({"balloon": {"size": (512u64 << 20) + 4096}}),
            "balloon.size",
        ),
        (
            json!({"memory": 64 << 20, "balloon": {"size": 128 << 20}}),
            "balloon.size",
        ),
        (json!({"balloon": {"size": 0, "stats": true}}), "stats"),
        (json!({"balloon": {"deflate_on_oom": true}}), "size"),
        (json!({"balloon": {"size": "1G"}}), "balloon"),
    ] {
        let mut body = json!({"name": "b", "kernel": kernel});
        for (k, v) in extra.as_object().unwrap() {
            body[k] = v.clone();
        }
        let (s, v) = call(&app, Method::POST, "/v1/vms", &body.to_string()).await;
        assert_eq!(s, 400, "{extra}: {v}");
        let msg = v["message"].as_str().unwrap();
        assert!(msg.contains(needle), "{extra}: {msg}");
    }
    let (_, v) = call(&app, Method::GET, "/v1/vms", "").await;
    let names: Vec<_> = v.as_array().unwrap().iter().map(|v| &v["name"]).collect();
    assert_eq!(names, [&json!("first")], "nothing else stored");
    assert!(!dir.join("state/vms/b").exists());
    drop(app);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test]
async fn openapi_describes_vsock_and_balloon() {
    let (dir, _) = setup("doc");
    let app = daemon(&dir);
    let (_, doc) = call(&app, Method::GET, "/v1/openapi.json", "").await;
    let props = &doc["components"]["schemas"]["VmSpec"]["properties"];
    let vsock = &props["vsock"];
    assert_eq!(vsock["required"], json!(["cid"]), "{vsock}");
    assert_eq!(vsock["additionalProperties"], false);
    assert_eq!(vsock["properties"]["cid"]["minimum"], 3);
    assert_eq!(vsock["properties"]["cid"]["maximum"], 4294967294u64);
    assert!(vsock["properties"].get("socket").is_none(), "{vsock}");
    let balloon = &props["balloon"];
    assert_eq!(balloon["required"], json!(["size"]), "{balloon}");
    assert_eq!(balloon["additionalProperties"], false);
    for f in ["deflate_on_oom", "free_page_reporting"] {
        assert_eq!(balloon["properties"][f]["type"], "boolean", "{f}");
    }
    drop(app);
    std::fs::remove_dir_all(&dir).unwrap();
}
