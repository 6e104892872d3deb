//! thinvmd's REST router (the routes of `api::daemon::ROUTES`).

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use api::daemon::{Event, VmSpec, VmStatus};
use api::ApiError;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::sse::{self, Sse};
use axum::response::IntoResponse;
use axum::routing::{get, post};
use axum::{Json, Router};
use futures_util::stream::{self, Stream, StreamExt};
use tokio_stream::wrappers::BroadcastStream;

use crate::Daemon;

type D = State<Arc<Daemon>>;
type Res<T> = Result<T, ApiError>;

/// The router over a daemon.
pub fn router(d: Arc<Daemon>) -> Router {
    Router::new()
        .route("/v1/version", get(version))
        .route("/v1/vms", get(list).post(create))
        .route("/v1/vms/{name}", get(show).delete(delete))
        .route("/v1/vms/{name}/start", post(start))
        .route("/v1/vms/{name}/stop", post(stop))
        .route("/v1/vms/{name}/kill", post(kill))
        .route("/v1/vms/{name}/restart", post(restart))
        .route("/v1/vms/{name}/pause", post(pause))
        .route("/v1/vms/{name}/resume", post(resume))
        .route("/v1/vms/{name}/logs", get(logs))
        .route("/v1/vms/{name}/console", get(console))
        .route("/v1/events", get(events))
        .route(
            "/v1/openapi.json",
            get(|| async { Json(api::daemon::openapi()) }),
        )
        .route("/metrics", get(metrics))
        .fallback(|uri: axum::http::Uri| async move {
            ApiError::not_found(format!("no such route: {uri}"))
        })
        .with_state(d)
}

/// Only `GET /metrics`, for the optional TCP listener.
pub fn metrics_router(d: Arc<Daemon>) -> Router {
    Router::new().route("/metrics", get(metrics)).with_state(d)
}

fn checked(name: &str) -> Res<()> {
    api::daemon::check_name(name).map_err(ApiError::bad_request)
}

async fn version() -> Json<serde_json::Value> {
    Json(serde_json::json!({"version": env!("CARGO_PKG_VERSION"), "api": "v1"}))
}

async fn list(State(d): D) -> Res<Json<Vec<VmStatus>>> {
    d.list().await.map(Json)
}

async fn create(State(d): D, body: Bytes) -> Res<(StatusCode, Json<VmStatus>)> {
    let de = &mut serde_json::Deserializer::from_slice(&body);
    let spec: VmSpec = serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let at = if path == "." {
            String::new()
        } else {
            format!("field `{path}`: ")
        };
        ApiError::bad_request(format!("invalid VM definition: {at}{}", e.inner()))
    })?;
    Ok((StatusCode::CREATED, Json(d.create(spec).await?)))
}

async fn show(State(d): D, Path(name): Path<String>) -> Res<Json<VmStatus>> {
    checked(&name)?;
    d.get(&name).await.map(Json)
}

async fn delete(State(d): D, Path(name): Path<String>) -> Res<StatusCode> {
    checked(&name)?;
    d.delete(&name).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn start(State(d): D, Path(name): Path<String>) -> Res<Json<VmStatus>> {
    checked(&name)?;
    d.start(&name).await.map(Json)
}

async fn stop(
    State(d): D,
    Path(name): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> Res<Json<VmStatus>> {
    checked(&name)?;
    let timeout = stop_timeout(&q)?;
    d.stop(&name, timeout).await.map(Json)
}

async fn restart(
    State(d): D,
    Path(name): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> Res<Json<VmStatus>> {
    checked(&name)?;
    d.restart(&name, stop_timeout(&q)?).await.map(Json)
}

fn stop_timeout(q: &HashMap<String, String>) -> Res<Option<Duration>> {
    q.get("timeout")
        .map(|t| {
            t.parse::<f64>()
                .ok()
                .filter(|s| s.is_finite() && (0.0..=3600.0).contains(s))
                .map(Duration::from_secs_f64)
                .ok_or_else(|| {
                    ApiError::bad_request(format!("timeout={t}: expected seconds in 0..=3600"))
                })
        })
        .transpose()
}

async fn kill(State(d): D, Path(name): Path<String>) -> Res<Json<VmStatus>> {
    checked(&name)?;
    d.kill(&name).await.map(Json)
}

async fn pause(State(d): D, Path(name): Path<String>) -> Res<Json<VmStatus>> {
    checked(&name)?;
    d.pause_resume(&name, true).await.map(Json)
}

async fn resume(State(d): D, Path(name): Path<String>) -> Res<Json<VmStatus>> {
    checked(&name)?;
    d.pause_resume(&name, false).await.map(Json)
}

async fn logs(
    State(d): D,
    Path(name): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> Res<impl IntoResponse> {
    checked(&name)?;
    d.get(&name).await?;
    let tail: Option<u64> =
        match q.get("tail") {
            None => None,
            Some(t) => Some(t.parse().map_err(|_| {
                ApiError::bad_request(format!("tail={t}: expected a number of bytes"))
            })?),
        };
    let path = d.vm_dir(&name).join("console.log");
    let data = std::fs::read(&path).unwrap_or_default();
    let start = match tail {
        Some(t) => data
            .len()
            .saturating_sub(usize::try_from(t).unwrap_or(usize::MAX)),
        None => 0,
    };
    let body = data.get(start..).unwrap_or_default().to_vec();
    Ok(([("content-type", "text/plain; charset=utf-8")], body))
}

fn sse_event(ev: &Event) -> Result<sse::Event, Infallible> {
    Ok(sse::Event::default()
        .id(ev.id.to_string())
        .event("state")
        .data(serde_json::to_string(ev).unwrap_or_default()))
}

/// Server-sent events: the stored events after `Last-Event-ID` (or `?after=`), then live ones.
async fn events(
    State(d): D,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
) -> Res<Sse<impl Stream<Item = Result<sse::Event, Infallible>>>> {
    let raw = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
        .or_else(|| q.get("after").cloned());
    let after: i64 = match raw {
        None => 0,
        Some(s) => s.trim().parse().map_err(|_| {
            ApiError::bad_request(format!("Last-Event-ID {s:?} is not an event id"))
        })?,
    };
    // Subscribe before reading the backlog so nothing falls between the two.
    let live = BroadcastStream::new(d.events.subscribe());
    let backlog =
        d.db.events_after(after, 10_000)
            .await
            .map_err(crate::supervisor::db_error)?;
    let last = backlog.last().map_or(after, |e| e.id);
    let backlog: Vec<_> = backlog.iter().map(sse_event).collect();
    let live = live.filter_map(move |ev| async move {
        match ev {
            Ok(ev) if ev.id > last => Some(sse_event(&ev)),
            _ => None,
        }
    });
    Ok(Sse::new(stream::iter(backlog).chain(live)).keep_alive(sse::KeepAlive::default()))
}

async fn metrics(State(d): D) -> Res<impl IntoResponse> {
    let text = crate::metrics::render(&d).await?;
    Ok(([("content-type", "text/plain; version=0.0.4")], text))
}

/// The protocol name a console client asks for in `Upgrade:`.
pub const CONSOLE_PROTOCOL: &str = "thinvm-console";

/// Attaches to the VM's serial console: an HTTP/1.1 upgrade, then raw bytes both ways between
/// the client and the VMM's console socket.
async fn console(
    State(d): D,
    Path(name): Path<String>,
    mut req: axum::extract::Request,
) -> Res<axum::response::Response> {
    checked(&name)?;
    let vm = d.get(&name).await?;
    if !matches!(
        vm.state,
        api::daemon::State::Running | api::daemon::State::Paused
    ) {
        return Err(ApiError::conflict(format!(
            "cannot attach to {name:?}: it is {}",
            vm.state.as_str()
        )));
    }
    let wants = req
        .headers()
        .get("upgrade")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case(CONSOLE_PROTOCOL));
    if !wants {
        return Err(ApiError::bad_request(format!(
            "the console needs an HTTP/1.1 upgrade to {CONSOLE_PROTOCOL} (use `thinvm vm console`)"
        )));
    }
    let path = d.vm_dir(&name).join("console.sock");
    let mut vmm = tokio::net::UnixStream::connect(&path)
        .await
        .map_err(|e| ApiError::internal(format!("{}: {e}", path.display())))?;
    tokio::spawn(async move {
        match hyper::upgrade::on(&mut req).await {
            Ok(up) => {
                let mut up = hyper_util::rt::TokioIo::new(up);
                let _ = tokio::io::copy_bidirectional(&mut up, &mut vmm).await;
            }
            Err(e) => tracing::warn!("console upgrade failed: {e}"),
        }
    });
    axum::response::Response::builder()
        .status(StatusCode::SWITCHING_PROTOCOLS)
        .header("connection", "upgrade")
        .header("upgrade", CONSOLE_PROTOCOL)
        .body(axum::body::Body::empty())
        .map_err(|e| ApiError::internal(e.to_string()))
}
