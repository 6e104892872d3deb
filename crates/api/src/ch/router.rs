//! The per-VM router: Cloud Hypervisor's paths over a [`Controller`] that the VMM implements.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::{get, put};
use axum::{Json, Router};

use super::types::{VmConfig, VmCounters, VmInfo, VmResize, VmmPingResponse};
use super::{parse_vm_config, PREFIX};
use crate::ApiError;

/// The actions that take no body and answer 204.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VmAction {
    /// `vm.boot`: start the created VM.
    Boot,
    /// `vm.shutdown`: stop the VM now (the hard stop).
    Shutdown,
    /// `vm.reboot`: an in-process reboot.
    Reboot,
    /// `vm.power-button`: press the ACPI power button (the graceful stop).
    PowerButton,
    /// `vm.pause`: park every vCPU.
    Pause,
    /// `vm.resume`: let paused vCPUs run.
    Resume,
    /// `vm.delete`: forget the VM (stopping it first if it runs).
    Delete,
    /// `vmm.shutdown`: end the VMM process.
    ShutdownVmm,
}

/// What the per-VM API drives. Methods may block (they run on a blocking thread); errors carry
/// their HTTP status (404 no VM, 405 wrong state, 400 bad config, 501 not supported).
pub trait Controller: Send + Sync + 'static {
    /// `vmm.ping`.
    fn ping(&self) -> VmmPingResponse;
    /// `vm.create` with an already validated config.
    fn create(&self, config: VmConfig) -> Result<(), ApiError>;
    /// `vm.info`.
    fn info(&self) -> Result<VmInfo, ApiError>;
    /// `vm.counters`.
    fn counters(&self) -> Result<VmCounters, ApiError>;
    /// `vm.resize` with a parsed body (only the balloon can change; see
    /// [`VmResize::balloon_for`]).
    fn resize(&self, resize: VmResize) -> Result<(), ApiError>;
    /// Every body-less action.
    fn action(&self, action: VmAction) -> Result<(), ApiError>;
}

type Ctl = Arc<dyn Controller>;

async fn blocking<T: Send + 'static>(
    ctl: Ctl,
    f: impl FnOnce(&dyn Controller) -> Result<T, ApiError> + Send + 'static,
) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(move || f(ctl.as_ref()))
        .await
        .map_err(|e| ApiError::internal(format!("controller task failed: {e}")))?
}

async fn ping(State(ctl): State<Ctl>) -> Result<Json<VmmPingResponse>, ApiError> {
    blocking(ctl, |c| Ok(c.ping())).await.map(Json)
}

async fn create(State(ctl): State<Ctl>, body: Bytes) -> Result<StatusCode, ApiError> {
    let value: serde_json::Value = serde_json::from_slice(&body).map_err(|e| {
        ApiError::bad_request(format!("vm.create: the body is not valid JSON: {e}"))
    })?;
    let config =
        parse_vm_config(&value).map_err(|e| ApiError::bad_request(format!("vm.create: {e}")))?;
    blocking(ctl, move |c| c.create(config)).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn info(State(ctl): State<Ctl>) -> Result<Json<VmInfo>, ApiError> {
    blocking(ctl, |c| c.info()).await.map(Json)
}

async fn counters(State(ctl): State<Ctl>) -> Result<Json<VmCounters>, ApiError> {
    blocking(ctl, |c| c.counters()).await.map(Json)
}

async fn resize(State(ctl): State<Ctl>, body: Bytes) -> Result<StatusCode, ApiError> {
    let r = super::parse_resize(&body)?;
    blocking(ctl, move |c| c.resize(r)).await?;
    Ok(StatusCode::NO_CONTENT)
}

fn action_route(action: VmAction) -> axum::routing::MethodRouter<Ctl> {
    put(move |State(ctl): State<Ctl>| async move {
        blocking(ctl, move |c| c.action(action)).await?;
        Ok::<_, ApiError>(StatusCode::NO_CONTENT)
    })
}

/// The per-VM router, paths under `/api/v1`.
pub fn router(ctl: Arc<dyn Controller>) -> Router {
    let p = |s: &str| format!("{PREFIX}/{s}");
    Router::new()
        .route(&p("vmm.ping"), get(ping))
        .route(&p("vmm.shutdown"), action_route(VmAction::ShutdownVmm))
        .route(&p("vm.create"), put(create))
        .route(&p("vm.boot"), action_route(VmAction::Boot))
        .route(&p("vm.info"), get(info))
        .route(&p("vm.counters"), get(counters))
        .route(&p("vm.resize"), put(resize))
        .route(&p("vm.shutdown"), action_route(VmAction::Shutdown))
        .route(&p("vm.reboot"), action_route(VmAction::Reboot))
        .route(&p("vm.power-button"), action_route(VmAction::PowerButton))
        .route(&p("vm.pause"), action_route(VmAction::Pause))
        .route(&p("vm.resume"), action_route(VmAction::Resume))
        .route(&p("vm.delete"), action_route(VmAction::Delete))
        .fallback(|uri: axum::http::Uri| async move {
            ApiError::not_found(format!("no such API call: {uri}"))
        })
        .with_state(ctl)
}

#[cfg(test)]
#[path = "router_tests.rs"]
mod tests;
