//! The web console, served by the host's HTTP endpoint at `/`: the agents
//! (state, queue, rates, guest time, last error), their dead letters
//! (open, replay, purge), conversation traces and the host itself.
//!
//! No build step and nothing from a CDN: one HTML page, one script and one
//! style sheet, compiled into the binary (`assets/`), polling the JSON API
//! below. The page's Content-Security-Policy allows nothing but them.
//!
//! | route                            | what                                    |
//! |----------------------------------|-----------------------------------------|
//! | `GET /api/overview`              | host and agents ([`overview`])          |
//! | `GET /api/dlq/{agent}`           | an agent's dead letters, masked         |
//! | `POST /api/dlq/{agent}/replay`   | `{"id": ...}` one, or all without an id |
//! | `POST /api/dlq/{agent}/purge`    | the same, deleting                      |
//! | `GET /api/conversations`         | the latest conversations (all hosts)    |
//! | `GET /api/trace/{conversation}`  | one conversation, hop by hop            |
//!
//! Replay and purge change what is kept, so they are refused unless the
//! request comes from a loopback address or carries the operator's token
//! (`--console-token`, as `Authorization: Bearer ...`), and only with the
//! `X-Warren-Console` header, which a page of another site cannot send
//! without the browser asking first (and this endpoint never agrees).

pub mod overview;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use axum::Router;
use axum::extract::{ConnectInfo, Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Json, Response};
use axum::routing::{get, post};
use serde::{Deserialize, Serialize};

use crate::broker::{DeadLetter, HEADER_GUEST_TRACE, HEADER_REPLAYS};
use crate::host::Host;
use crate::trace::mask;

/// Where the host will be once it is up (shared with the endpoint).
pub type HostSlot = Arc<OnceLock<Arc<Host>>>;

/// How long a trace waits for other hosts' answers.
const PEER_WAIT: Duration = Duration::from_millis(400);

/// The header the console page sends with every mutating request.
pub const MUTATION_HEADER: &str = "x-warren-console";

const INDEX: &str = include_str!("assets/index.html");
const SCRIPT: &str = include_str!("assets/app.js");
const STYLE: &str = include_str!("assets/style.css");

/// The console's state.
pub struct Console {
    host: HostSlot,
    history: overview::History,
    /// Lets replay and purge through from other than loopback.
    token: Option<String>,
}

impl Console {
    pub fn new(host: HostSlot, token: Option<String>) -> Arc<Self> {
        Arc::new(Console {
            host,
            history: Default::default(),
            token: token.filter(|t| !t.is_empty()),
        })
    }

    /// Samples the agents' counters for the sparklines until `shutdown`.
    pub async fn sample(self: Arc<Self>, shutdown: tokio_util::sync::CancellationToken) {
        let mut every = tokio::time::interval(overview::SAMPLE_EVERY);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = every.tick() => {}
            }
            if let Some(host) = self.host.get() {
                self.history.sample(host);
            }
        }
    }

    fn host(&self) -> Result<&Arc<Host>, Response> {
        self.host.get().ok_or_else(|| {
            failure(
                StatusCode::SERVICE_UNAVAILABLE,
                "the host is still connecting to its broker (see /readyz)",
            )
        })
    }

    /// Whether a replay or purge may go through (see the module doc).
    fn may_change(&self, peer: SocketAddr, headers: &HeaderMap) -> Result<(), Response> {
        if !headers.contains_key(MUTATION_HEADER) {
            return Err(failure(
                StatusCode::FORBIDDEN,
                "replay and purge need the X-Warren-Console header (the console page sends it)",
            ));
        }
        let bearer = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        let token_ok = matches!((&self.token, bearer), (Some(t), Some(b)) if constant_eq(t, b));
        if peer.ip().to_canonical().is_loopback() || token_ok {
            return Ok(());
        }
        Err(failure(
            StatusCode::FORBIDDEN,
            "replay and purge are allowed from this machine only, or with the operator's token (--console-token)",
        ))
    }
}

/// Compares without stopping at the first difference.
fn constant_eq(a: &str, b: &str) -> bool {
    a.len() == b.len() && a.bytes().zip(b.bytes()).fold(0, |d, (x, y)| d | (x ^ y)) == 0
}

fn failure(code: StatusCode, message: impl Into<String>) -> Response {
    (code, Json(serde_json::json!({ "error": message.into() }))).into_response()
}

/// The console's routes.
pub fn router(console: Arc<Console>) -> Router {
    Router::new()
        .route("/", get(index))
        .route("/console/app.js", get(script))
        .route("/console/style.css", get(style))
        .route("/api/overview", get(overview_json))
        .route("/api/dlq/{agent}", get(dead_letters))
        .route("/api/dlq/{agent}/{action}", post(change_dead_letters))
        .route("/api/conversations", get(conversations))
        .route("/api/trace/{conversation}", get(trace))
        .with_state(console)
}

async fn index() -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (
                header::CONTENT_SECURITY_POLICY,
                "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; frame-ancestors 'none'",
            ),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        ],
        INDEX,
    )
}

async fn script() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/javascript; charset=utf-8")],
        SCRIPT,
    )
}

async fn style() -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "text/css; charset=utf-8")], STYLE)
}

async fn overview_json(State(c): State<Arc<Console>>) -> Response {
    match c.host() {
        Ok(host) => Json(overview::overview(host, &c.history).await).into_response(),
        Err(r) => r,
    }
}

/// A dead letter as the console shows it: body, reason, attempts, first
/// failure and headers, masked.
#[derive(Debug, Serialize)]
struct Letter {
    id: String,
    conversation_id: String,
    sender: Option<String>,
    reason: String,
    attempts: u32,
    /// ms since the Unix epoch.
    first_failure_ms: Option<u64>,
    replays: u32,
    body: String,
    headers: BTreeMap<String, String>,
    guest_trace: Option<String>,
}

fn letter(host: &Host, l: DeadLetter) -> Letter {
    let pool = host.registry().get(&l.agent);
    let secrets = pool.as_ref().map(|p| p.limits().settings.as_ref());
    let e = l.envelope;
    let headers = e
        .headers
        .iter()
        .map(|(k, v)| {
            let v = if mask::secret_key(k) {
                "***".to_string()
            } else {
                mask::text(v, secrets)
            };
            (k.clone(), v)
        })
        .collect();
    Letter {
        first_failure_ms: e.first_failure_ms(),
        replays: e
            .headers
            .get(HEADER_REPLAYS)
            .and_then(|r| r.parse().ok())
            .unwrap_or(0),
        guest_trace: e
            .headers
            .get(HEADER_GUEST_TRACE)
            .map(|t| mask::text(t, secrets)),
        id: e.id,
        conversation_id: e.conversation_id,
        sender: e.sender,
        reason: mask::text(&l.reason, secrets),
        attempts: e.attempt,
        body: mask::body(&String::from_utf8_lossy(&e.body), secrets),
        headers,
    }
}

async fn dead_letters(State(c): State<Arc<Console>>, Path(agent): Path<String>) -> Response {
    let host = match c.host() {
        Ok(h) => h,
        Err(r) => return r,
    };
    let agent = crate::names::normalise(&agent);
    if let Err(e) = crate::names::validate(&agent) {
        return failure(StatusCode::BAD_REQUEST, format!("{e:#}"));
    }
    match host.broker().dead_letters(&agent).await {
        Ok(all) => {
            let letters: Vec<Letter> = all.into_iter().map(|l| letter(host, l)).collect();
            Json(serde_json::json!({ "agent": agent, "letters": letters })).into_response()
        }
        Err(e) => failure(StatusCode::BAD_GATEWAY, format!("{e:#}")),
    }
}

/// One dead letter (by id) or all.
#[derive(Debug, Default, Deserialize)]
struct Which {
    #[serde(default)]
    id: Option<String>,
}

async fn change(
    c: Arc<Console>,
    peer: SocketAddr,
    headers: HeaderMap,
    agent: String,
    op: crate::dlq::Op,
) -> Response {
    if let Err(r) = c.may_change(peer, &headers) {
        return r;
    }
    let host = match c.host() {
        Ok(h) => h,
        Err(r) => return r,
    };
    tracing::info!(agent, from = %peer, "console: {op:?}");
    match host.dlq(&agent, op).await {
        Ok(answer) => Json(serde_json::json!({
            "agent": answer.agent,
            "moved": answer.moved,
            "undeliverable": answer.undeliverable,
            "message": answer.text().trim_end(),
        }))
        .into_response(),
        Err(e) => failure(StatusCode::BAD_REQUEST, format!("{e:#}")),
    }
}

/// `POST /api/dlq/{agent}/{replay|purge}`.
async fn change_dead_letters(
    State(c): State<Arc<Console>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Path((agent, action)): Path<(String, String)>,
    body: Option<Json<Which>>,
) -> Response {
    let id = body.and_then(|b| b.0.id);
    let op = match action.as_str() {
        "replay" => crate::dlq::Op::Replay { id, wait: None },
        "purge" => crate::dlq::Op::Purge { id },
        _ => return failure(StatusCode::NOT_FOUND, "the actions are replay and purge"),
    };
    change(c, peer, headers, agent, op).await
}

async fn conversations(State(c): State<Arc<Console>>) -> Response {
    match c.host() {
        Ok(host) => {
            let recent = host.recent_conversations(30, PEER_WAIT).await;
            Json(serde_json::json!({ "conversations": recent })).into_response()
        }
        Err(r) => r,
    }
}

async fn trace(State(c): State<Arc<Console>>, Path(conversation): Path<String>) -> Response {
    match c.host() {
        Ok(host) => Json(host.trace(&conversation, PEER_WAIT).await).into_response(),
        Err(r) => r,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, v.parse().unwrap());
        }
        h
    }

    #[test]
    fn changes_need_the_header_and_loopback_or_the_token() {
        let console = Console::new(HostSlot::default(), Some("s3cret-token".into()));
        let local: SocketAddr = "127.0.0.1:5000".parse().unwrap();
        let mapped: SocketAddr = "[::ffff:127.0.0.1]:5000".parse().unwrap();
        let remote: SocketAddr = "10.1.2.3:5000".parse().unwrap();
        let page = (MUTATION_HEADER, "1");
        assert!(
            console.may_change(local, &headers(&[])).is_err(),
            "no header"
        );
        assert!(console.may_change(local, &headers(&[page])).is_ok());
        assert!(console.may_change(mapped, &headers(&[page])).is_ok());
        assert!(console.may_change(remote, &headers(&[page])).is_err());
        let wrong = ("authorization", "Bearer s3cret-tokem");
        assert!(
            console
                .may_change(remote, &headers(&[page, wrong]))
                .is_err()
        );
        let right = ("authorization", "Bearer s3cret-token");
        assert!(console.may_change(remote, &headers(&[page, right])).is_ok());
        assert!(
            console.may_change(remote, &headers(&[right])).is_err(),
            "no header"
        );
        let no_token = Console::new(HostSlot::default(), None);
        assert!(
            no_token
                .may_change(remote, &headers(&[page, right]))
                .is_err()
        );
    }
}
