use std::sync::Mutex;

use axum::body::Body;
use axum::http::{Method, Request};
use http_body_util::BodyExt;
use serde_json::{json, Value};
use tower::ServiceExt;

use super::*;
use crate::ch::{VmResize, VmState};

/// A controller with Cloud Hypervisor's state rules and no VM behind it.
#[derive(Default)]
struct Fake {
    vm: Mutex<Option<(VmConfig, VmState)>>,
    log: Mutex<Vec<VmAction>>,
}

impl Controller for Fake {
    fn ping(&self) -> VmmPingResponse {
        VmmPingResponse {
            build_version: "test".into(),
            version: "0.1.0".into(),
            pid: 7,
            features: vec![],
        }
    }
    fn create(&self, config: VmConfig) -> Result<(), ApiError> {
        let mut vm = self.vm.lock().unwrap();
        if vm.is_some() {
            return Err(ApiError::conflict("a VM is already created"));
        }
        *vm = Some((config, VmState::Created));
        Ok(())
    }
    fn info(&self) -> Result<VmInfo, ApiError> {
        let vm = self.vm.lock().unwrap();
        let (config, state) = vm.as_ref().ok_or_else(|| ApiError::not_found("no VM"))?;
        Ok(VmInfo {
            config: config.clone(),
            state: *state,
            memory_actual_size: config.memory.size,
        })
    }
    fn counters(&self) -> Result<VmCounters, ApiError> {
        let mut c = VmCounters::new();
        c.entry("vcpu".into())
            .or_default()
            .insert("io_out".into(), 3);
        Ok(c)
    }
    fn resize(&self, resize: VmResize) -> Result<(), ApiError> {
        let mut vm = self.vm.lock().unwrap();
        let (config, _) = vm.as_mut().ok_or_else(|| ApiError::not_found("no VM"))?;
        if let Some(size) = resize.balloon_for(config)? {
            config
                .balloon
                .as_mut()
                .expect("checked by balloon_for")
                .size = size;
        }
        Ok(())
    }
    fn action(&self, action: VmAction) -> Result<(), ApiError> {
        self.log.lock().unwrap().push(action);
        let mut vm = self.vm.lock().unwrap();
        let state = &mut vm.as_mut().ok_or_else(|| ApiError::not_found("no VM"))?.1;
        *state = match (action, *state) {
            (VmAction::Boot, VmState::Created) => VmState::Running,
            (VmAction::Pause, VmState::Running) => VmState::Paused,
            (VmAction::Resume, VmState::Paused) => VmState::Running,
            (VmAction::Reboot, _) => return Err(ApiError::not_supported("no reboot")),
            _ => return Err(ApiError::wrong_state("wrong state")),
        };
        Ok(())
    }
}

async fn call(app: &Router, method: Method, path: &str, body: &str) -> (u16, Value) {
    let req = Request::builder()
        .method(method)
        .uri(path)
        .header("content-type", "application/json")
        .body(Body::from(body.to_string()))
        .unwrap();
    let resp = app.clone().oneshot(req).await.unwrap();
    let status = resp.status().as_u16();
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    let v = if bytes.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&bytes).unwrap()
    };
    (status, v)
}

#[tokio::test]
async fn lifecycle_through_the_router() {
    let app = router(Arc::new(Fake::default()));
    let (s, v) = call(&app, Method::GET, "/api/v1/vmm.ping", "").await;
    assert_eq!((s, v["pid"].as_i64()), (200, Some(7)));
    let (s, _) = call(&app, Method::GET, "/api/v1/vm.info", "").await;
    assert_eq!(s, 404);
    let cfg = json!({"payload": {"kernel": "/k"}, "memory": {"size": 33554432}}).to_string();
    assert_eq!(
        call(&app, Method::PUT, "/api/v1/vm.create", &cfg).await.0,
        204
    );
    let (s, v) = call(&app, Method::GET, "/api/v1/vm.info", "").await;
    assert_eq!((s, v["state"].as_str()), (200, Some("Created")));
    assert_eq!(v["config"]["memory"]["size"], 33554432);
    assert_eq!(call(&app, Method::PUT, "/api/v1/vm.boot", "").await.0, 204);
    assert_eq!(call(&app, Method::PUT, "/api/v1/vm.pause", "").await.0, 204);
    let (_, v) = call(&app, Method::GET, "/api/v1/vm.info", "").await;
    assert_eq!(v["state"], "Paused");
    assert_eq!(call(&app, Method::PUT, "/api/v1/vm.pause", "").await.0, 405);
    assert_eq!(
        call(&app, Method::PUT, "/api/v1/vm.resume", "").await.0,
        204
    );
    let (s, v) = call(&app, Method::PUT, "/api/v1/vm.reboot", "").await;
    assert_eq!((s, v["code"].as_str()), (501, Some("not_supported")));
    let (s, v) = call(&app, Method::GET, "/api/v1/vm.counters", "").await;
    assert_eq!((s, v["vcpu"]["io_out"].as_u64()), (200, Some(3)));
}

#[tokio::test]
async fn bad_requests_are_400_and_change_nothing() {
    let fake = Arc::new(Fake::default());
    let app = router(fake.clone());
    let (s, v) = call(&app, Method::PUT, "/api/v1/vm.create", "{not json").await;
    assert_eq!(s, 400);
    assert!(v["message"].as_str().unwrap().contains("not valid JSON"));
    let body = json!({"payload": {"kernel": "/k"}, "net": [{"tap": "t0", "num_queues": 4}]});
    let (s, v) = call(&app, Method::PUT, "/api/v1/vm.create", &body.to_string()).await;
    assert_eq!(s, 400);
    assert!(
        v["message"]
            .as_str()
            .unwrap()
            .contains("`net[0].num_queues`"),
        "{v}"
    );
    let body = json!({"payload": {"kernel": "/k"}, "colour": "blue"}).to_string();
    let (s, v) = call(&app, Method::PUT, "/api/v1/vm.create", &body).await;
    assert_eq!(s, 400);
    assert!(v["message"].as_str().unwrap().contains("`colour`"), "{v}");
    assert!(fake.vm.lock().unwrap().is_none());
    let (s, _) = call(&app, Method::GET, "/api/v1/vm.nonsense", "").await;
    assert_eq!(s, 404);
    // The wrong method on a known path.
    let (s, _) = call(&app, Method::GET, "/api/v1/vm.boot", "").await;
    assert_eq!(s, 405);
    assert!(fake.log.lock().unwrap().is_empty());
}

#[tokio::test]
async fn balloon_in_create_and_resize() {
    let app = router(Arc::new(Fake::default()));
    let put = |path: &'static str, body: Value| {
        let app = app.clone();
        async move { call(&app, Method::PUT, path, &body.to_string()).await }
    };
    let mib = 1u64 << 20;
    // Larger than memory, unknown balloon field, wrong type: refused, naming the field.
    for (balloon, field) in [
        (json!({"size": 64 * mib}), "balloon.size"),
        (json!({"size": 0, "id": "b0"}), "balloon.id"),
        (
            json!({"size": 0, "deflate_on_oom": "yes"}),
            "balloon.deflate_on_oom",
        ),
        (json!({"deflate_on_oom": true}), "balloon.size"),
    ] {
        let body =
            json!({"payload": {"kernel": "/k"}, "memory": {"size": 32 * mib}, "balloon": balloon});
        let (s, v) = put("/api/v1/vm.create", body).await;
        assert_eq!(s, 400, "{v}");
        assert!(
            v["message"].as_str().unwrap().contains(field),
            "{field}: {v}"
        );
    }
    // Resize of a VM without a balloon.
    let body = json!({"payload": {"kernel": "/k"}, "memory": {"size": 32 * mib}});
    assert_eq!(put("/api/v1/vm.create", body).await.0, 204);
    let (s, v) = put("/api/v1/vm.resize", json!({"desired_balloon": mib})).await;
    assert_eq!(s, 400);
    assert!(v["message"].as_str().unwrap().contains("no balloon"), "{v}");
    let fake = Arc::new(Fake::default());
    let app = router(fake.clone());
    let put = |path: &'static str, body: Value| {
        let app = app.clone();
        async move { call(&app, Method::PUT, path, &body.to_string()).await }
    };
    let body = json!({
        "payload": {"kernel": "/k"}, "cpus": {"boot_vcpus": 2, "max_vcpus": 2},
        "memory": {"size": 32 * mib},
        "balloon": {"size": mib, "deflate_on_oom": true, "free_page_reporting": true}
    });
    assert_eq!(put("/api/v1/vm.create", body).await.0, 204);
    let (_, v) = call(&app, Method::GET, "/api/v1/vm.info", "").await;
    assert_eq!(v["config"]["balloon"]["size"], mib);
    assert_eq!(v["config"]["balloon"]["free_page_reporting"], true);
    // Unchanged vCPUs and RAM are accepted beside the balloon.
    let ok = json!({"desired_balloon": 8 * mib, "desired_vcpus": 2, "desired_ram": 32 * mib});
    assert_eq!(put("/api/v1/vm.resize", ok).await.0, 204);
    let (_, v) = call(&app, Method::GET, "/api/v1/vm.info", "").await;
    assert_eq!(v["config"]["balloon"]["size"], 8 * mib);
    for (body, field) in [
        (json!({"desired_vcpus": 4}), "desired_vcpus"),
        (
            json!({"desired_ram": 64 * mib, "desired_balloon": 0}),
            "desired_ram",
        ),
        (json!({"desired_balloon": 33 * mib}), "desired_balloon"),
        (json!({"desired_balloon": -1}), "desired_balloon"),
        (json!({"desired_balloon": "1G"}), "desired_balloon"),
        (json!({"desired_disks": 1}), "desired_disks"),
        (json!([1]), "expected an object"),
    ] {
        let (s, v) = put("/api/v1/vm.resize", body.clone()).await;
        assert_eq!(s, 400, "{body}: {v}");
        assert!(
            v["message"].as_str().unwrap().contains(field),
            "{body}: {v}"
        );
    }
    let (s, _) = call(&app, Method::PUT, "/api/v1/vm.resize", "{nope").await;
    assert_eq!(s, 400);
    let (_, v) = call(&app, Method::GET, "/api/v1/vm.info", "").await;
    assert_eq!(
        v["config"]["balloon"]["size"],
        8 * mib,
        "refused calls changed nothing"
    );
}
