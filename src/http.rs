//! The operator's HTTP endpoint: `/metrics` (Prometheus), `/healthz`
//! (the process answers) and `/readyz` (the broker is connected and every
//! plugin file is loaded), each with a JSON body that says what is wrong.

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::{Context as _, Result};
use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Json};
use axum::routing::get;
use tokio_util::sync::CancellationToken;
use tracing::info;

use crate::host::Host;

/// Binds `addr` (port 0 picks a free one) and returns the bound address with
/// the server's future, which runs until `shutdown`.
pub async fn bind(
    host: Arc<Host>,
    addr: SocketAddr,
    shutdown: CancellationToken,
) -> Result<(SocketAddr, impl Future<Output = Result<()>>)> {
    let app = Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .with_state(host);
    let listener = tokio::net::TcpListener::bind(addr).await.with_context(|| {
        format!("binding the HTTP endpoint to {addr} (--http; --no-http turns it off)")
    })?;
    let bound = listener.local_addr()?;
    info!("metrics on http://{bound}/metrics, health on /healthz and /readyz");
    let serve = async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(shutdown.cancelled_owned())
            .await
            .context("the HTTP endpoint failed")
    };
    Ok((bound, serve))
}

async fn metrics(State(host): State<Arc<Host>>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        host.metrics_text(),
    )
}

async fn healthz() -> impl IntoResponse {
    Json(serde_json::json!({ "status": "ok" }))
}

async fn readyz(State(host): State<Arc<Host>>) -> impl IntoResponse {
    let r = host.readiness();
    let code = if r.ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (code, Json(r))
}
