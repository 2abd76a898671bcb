//! The operator's HTTP endpoint: `/metrics` (Prometheus), `/healthz`
//! (the process answers) and `/readyz` (the broker is connected and every
//! plugin file is loaded), each with a JSON body that says what is wrong;
//! and the web console at `/` with its JSON API (see [`crate::console`]).
//!
//! `warren run` binds it before it connects to its broker, so that an
//! orchestrator sees a host that waits for RabbitMQ as alive and not ready
//! (503, with the latest connection error) rather than as a closed port:
//! [`Endpoint`] holds the host once there is one.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use anyhow::{Context as _, Result};
use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Json};
use axum::routing::get;
use tokio_util::sync::CancellationToken;
use tracing::info;

use crate::console::{Console, HostSlot};
use crate::host::{Host, Readiness};

/// What the endpoint serves: the host, or, before there is one, what it
/// waits for.
#[derive(Default)]
pub struct Endpoint {
    host: HostSlot,
    /// The broker being waited for and the latest connection error.
    waiting: Mutex<(String, Option<String>)>,
    /// The console's token for replay and purge from other than loopback.
    console_token: Option<String>,
}

impl Endpoint {
    /// An endpoint whose host is still connecting to `broker` (redacted);
    /// `console_token` lets the console's replay and purge through from
    /// other machines.
    pub fn waiting(broker: impl Into<String>, console_token: Option<String>) -> Arc<Self> {
        let endpoint = Endpoint {
            console_token,
            ..Default::default()
        };
        endpoint.waiting.lock().unwrap().0 = broker.into();
        Arc::new(endpoint)
    }

    /// The latest failed connection attempt, shown by `/readyz` meanwhile.
    pub fn attempt_failed(&self, error: &anyhow::Error) {
        self.waiting.lock().unwrap().1 = Some(format!("{error:#}"));
    }

    /// The host is up: from now on the endpoint serves it.
    pub fn serve(&self, host: Arc<Host>) {
        let _ = self.host.set(host);
    }

    fn readiness(&self) -> Readiness {
        if let Some(host) = self.host.get() {
            return host.readiness();
        }
        let (broker, error) = self.waiting.lock().unwrap().clone();
        Readiness {
            ready: false,
            problems: vec![match error {
                Some(e) => format!("waiting for the broker: {e}"),
                None => format!("connecting to {broker}"),
            }],
            broker,
            broker_connected: false,
            node: None,
            failovers: 0,
            agents: Vec::new(),
        }
    }
}

/// Binds `addr` (port 0 picks a free one) and returns the bound address with
/// the server's future, which runs until `shutdown`.
pub async fn bind(
    host: Arc<Host>,
    addr: SocketAddr,
    shutdown: CancellationToken,
) -> Result<(SocketAddr, impl Future<Output = Result<()>>)> {
    let endpoint = Arc::new(Endpoint::default());
    endpoint.serve(host);
    bind_endpoint(endpoint, addr, shutdown).await
}

/// [`bind`] for an endpoint that may not have its host yet.
pub async fn bind_endpoint(
    endpoint: Arc<Endpoint>,
    addr: SocketAddr,
    shutdown: CancellationToken,
) -> Result<(SocketAddr, impl Future<Output = Result<()>>)> {
    let console = Console::new(endpoint.host.clone(), endpoint.console_token.clone());
    tokio::spawn(console.clone().sample(shutdown.clone()));
    let app = Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .with_state(endpoint)
        .merge(crate::console::router(console));
    let listener = tokio::net::TcpListener::bind(addr).await.with_context(|| {
        format!("binding the HTTP endpoint to {addr} (--http; --no-http turns it off)")
    })?;
    let bound = listener.local_addr()?;
    info!("console on http://{bound}/, metrics on /metrics, health on /healthz and /readyz");
    let serve = async move {
        axum::serve(
            listener,
            app.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .with_graceful_shutdown(shutdown.cancelled_owned())
        .await
        .context("the HTTP endpoint failed")
    };
    Ok((bound, serve))
}

async fn metrics(State(endpoint): State<Arc<Endpoint>>) -> impl IntoResponse {
    let text = match endpoint.host.get() {
        Some(host) => host.metrics_text(),
        // Before the host exists only the connection state is known.
        None => "# HELP warren_broker_connected Whether the broker connection is up.\n\
                 # TYPE warren_broker_connected gauge\n\
                 warren_broker_connected 0\n\
                 # EOF\n"
            .to_string(),
    };
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        text,
    )
}

async fn healthz() -> impl IntoResponse {
    Json(serde_json::json!({ "status": "ok" }))
}

async fn readyz(State(endpoint): State<Arc<Endpoint>>) -> impl IntoResponse {
    let r = endpoint.readiness();
    let code = if r.ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (code, Json(r))
}
