//! Outbound HTTP: the one network capability an agent can be granted.
//!
//! Every agent links `wasi:http/outgoing-handler`, but a request leaves the
//! host only if its origin (scheme, host, port) is on the agent's allow-list,
//! and the default list is empty: no network at all. Granted in the agent's
//! manifest or, with the last word, in the host's config file:
//!
//! ```toml
//! [agents.llm_triage.http]
//! allow = ["http://127.0.0.1:8089", "https://api.openai.com"]
//! timeout_ms = 20000        # the whole exchange, response body included
//! max_response_kb = 1024    # a longer body fails with `HTTP-response-body-size`
//! ```
//! A refused request fails in the guest with `HTTP-request-denied`, and the
//! host logs the agent, the message and the origin it tried ("not allowed").
//! The time a call spends waiting on HTTP does not count towards its
//! runaway threshold (see `throttle`), only towards its deadline.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;
use serde::Deserialize;
use wasmtime_wasi_http::{Error, RequestOptions, WasiBody, WasiHttpHooks};

use super::sandbox::CallTag;

/// Default for the whole exchange, when a grant does not say.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);
/// Default response body limit, when a grant does not say.
const DEFAULT_MAX_RESPONSE: u64 = 1 << 20;

/// What one agent may reach.
#[derive(Debug, Clone, PartialEq)]
pub struct HttpGrant {
    allow: Vec<Origin>,
    pub timeout: Duration,
    pub max_response_bytes: u64,
}

impl Default for HttpGrant {
    fn default() -> Self {
        HttpGrant {
            allow: Vec::new(),
            timeout: DEFAULT_TIMEOUT,
            max_response_bytes: DEFAULT_MAX_RESPONSE,
        }
    }
}

/// An `[http]` section (manifest) or `[agents.NAME.http]` (config file);
/// unset keys keep what was granted before.
#[derive(Debug, Default, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpOverrides {
    pub allow: Option<Vec<String>>,
    pub timeout_ms: Option<u64>,
    pub max_response_kb: Option<u64>,
}

impl HttpGrant {
    /// This grant with `o` applied; an allow-list replaces the one before.
    pub fn with(mut self, o: &HttpOverrides) -> Result<Self> {
        if let Some(allow) = &o.allow {
            self.allow = allow
                .iter()
                .map(|s| Origin::parse(s))
                .collect::<Result<_>>()?;
        }
        if let Some(ms) = o.timeout_ms {
            self.timeout = Duration::from_millis(ms);
        }
        if let Some(kb) = o.max_response_kb {
            self.max_response_bytes = kb << 10;
        }
        Ok(self)
    }

    /// The allowed origins, as written in config (`http://127.0.0.1:8089`).
    pub fn origins(&self) -> impl Iterator<Item = String> + '_ {
        self.allow.iter().map(Origin::to_string)
    }

    fn allows(&self, origin: &Origin) -> bool {
        self.allow.contains(origin)
    }
}

/// Scheme, host and port: what an allow-list entry names and a request is
/// checked against. A missing port is the scheme's default.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Origin {
    scheme: String,
    host: String,
    port: u16,
}

impl Origin {
    fn parse(text: &str) -> Result<Self> {
        let what = || {
            format!(
                "`{text}` is not an origin like `https://api.example.com` or `http://127.0.0.1:8089`"
            )
        };
        let uri: http::Uri = text.parse().with_context(what)?;
        if uri.path_and_query().is_some_and(|p| p.as_str() != "/") {
            bail!("{}: an allow-list entry has no path", what());
        }
        Origin::of(&uri).with_context(what)
    }

    fn of(uri: &http::Uri) -> Result<Self> {
        let scheme = match uri.scheme_str() {
            Some(s @ ("http" | "https")) => s.to_string(),
            Some(other) => bail!("scheme `{other}` is not http or https"),
            None => bail!("no scheme"),
        };
        let host = uri.host().context("no host")?.to_ascii_lowercase();
        let port = uri
            .port_u16()
            .unwrap_or(if scheme == "https" { 443 } else { 80 });
        Ok(Origin { scheme, host, port })
    }
}

impl std::fmt::Display for Origin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}://{}:{}", self.scheme, self.host, self.port)
    }
}

/// Requests of one agent version, for `warren status`.
#[derive(Debug, Default)]
pub struct HttpCounters {
    /// Requests that went out (whatever came back).
    pub sent: AtomicU64,
    /// Requests refused: their origin is not on the allow-list.
    pub denied: AtomicU64,
}

/// The `wasi:http` hooks of one instance: the gate every request passes.
pub(crate) struct HttpGate {
    pub agent: Arc<str>,
    pub grant: Arc<HttpGrant>,
    pub call: CallTag,
    pub counters: Arc<HttpCounters>,
    /// Nanoseconds the running call has spent waiting for responses.
    pub waited: Arc<AtomicU64>,
}

type ResponseFuture = Box<
    dyn Future<
            Output = Result<
                (
                    http::Response<WasiBody>,
                    Box<dyn Future<Output = Result<(), Error>> + Send>,
                ),
                Error,
            >,
        > + Send,
>;

impl WasiHttpHooks for HttpGate {
    fn send_request(
        &mut self,
        request: http::Request<WasiBody>,
        options: Option<RequestOptions>,
        fut: Box<dyn Future<Output = Result<(), Error>> + Send>,
    ) -> ResponseFuture {
        _ = fut;
        let call = self.call.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let (id, conversation) = (call.0.as_str(), call.1.as_str());
        let agent = &*self.agent;
        let origin = match Origin::of(request.uri()) {
            Ok(o) if self.grant.allows(&o) => o,
            refused => {
                self.counters.denied.fetch_add(1, Ordering::Relaxed);
                return refuse(refused, agent, id, conversation);
            }
        };
        self.counters.sent.fetch_add(1, Ordering::Relaxed);
        // The origin only: a path (a bot token) or query may carry a secret.
        tracing::debug!(target: "warren::outbound", agent, id, conversation, host = %origin, "{} request to {origin}", request.method());
        let grant = self.grant.clone();
        let waited = self.waited.clone();
        Box::new(async move {
            let started = Instant::now();
            let deadline = started + grant.timeout;
            let options = clamp(options, grant.timeout);
            let sent = tokio::time::timeout_at(
                deadline.into(),
                wasmtime_wasi_http::default_send_request(request, Some(options)),
            )
            .await;
            waited.fetch_add(started.elapsed().as_nanos() as u64, Ordering::Relaxed);
            let (response, io) = sent.map_err(|_| Error::HttpResponseTimeout)??;
            let limit = grant.max_response_bytes;
            if let Some(len) = response.body().size_hint().exact()
                && len > limit
            {
                return Err(Error::HttpResponseBodySize(Some(len)));
            }
            let response = response.map(|body| {
                Capped {
                    body: body.boxed_unsync(),
                    left: limit,
                    limit,
                    deadline: Box::pin(tokio::time::sleep_until(deadline.into())),
                }
                .boxed_unsync()
            });
            Ok((response, Box::new(io) as Box<dyn Future<Output = _> + Send>))
        })
    }
}

/// Logs why a request may not go out and answers it with
/// `HTTP-request-denied`.
fn refuse(origin: Result<Origin>, agent: &str, id: &str, conversation: &str) -> ResponseFuture {
    match origin {
        Ok(o) => {
            tracing::warn!(target: "warren::outbound", agent, id, conversation, host = %o, "outbound request to {o} not allowed (not on the agent's http allow-list)");
        }
        Err(e) => {
            // Not the URI itself: a path or query may carry a key.
            tracing::warn!(target: "warren::outbound", agent, id, conversation, "outbound request not allowed: {e}");
        }
    }
    Box::new(async { Err(Error::HttpRequestDenied) })
}

/// The guest's own timeouts, never longer than the grant's.
fn clamp(options: Option<RequestOptions>, most: Duration) -> RequestOptions {
    let o = options.unwrap_or_default();
    let cap = |t: Option<Duration>| Some(t.map_or(most, |t| t.min(most)));
    RequestOptions {
        connect_timeout: cap(o.connect_timeout),
        first_byte_timeout: cap(o.first_byte_timeout),
        between_bytes_timeout: cap(o.between_bytes_timeout),
    }
}

/// A response body cut off at the grant's size limit and deadline.
struct Capped {
    body: WasiBody,
    left: u64,
    limit: u64,
    deadline: Pin<Box<tokio::time::Sleep>>,
}

impl Body for Capped {
    type Data = Bytes;
    type Error = Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Error>>> {
        if self.deadline.as_mut().poll(cx).is_ready() {
            return Poll::Ready(Some(Err(Error::HttpResponseTimeout)));
        }
        let frame = match Pin::new(&mut self.body).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => frame,
            other => return other,
        };
        if let Some(data) = frame.data_ref() {
            let len = data.len() as u64;
            if len > self.left {
                let limit = self.limit;
                return Poll::Ready(Some(Err(Error::HttpResponseBodySize(Some(limit)))));
            }
            self.left -= len;
        }
        Poll::Ready(Some(Ok(frame)))
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origins_match_scheme_host_and_port() {
        let grant = HttpGrant::default()
            .with(&HttpOverrides {
                allow: Some(vec![
                    "http://127.0.0.1:8089".into(),
                    "https://API.example.com".into(),
                ]),
                ..Default::default()
            })
            .unwrap();
        let ok = |u: &str| grant.allows(&Origin::of(&u.parse().unwrap()).unwrap());
        assert!(ok("http://127.0.0.1:8089/v1/chat/completions"));
        assert!(ok("https://api.example.com/v1"));
        assert!(ok("https://api.example.com:443/"));
        assert!(!ok("http://127.0.0.1:8090/v1"), "another port");
        assert!(!ok("https://127.0.0.1:8089/v1"), "another scheme");
        assert!(!ok("http://api.example.com/v1"), "http, not https");
        assert!(!ok("https://evil.example.com/"), "another host");
        assert!(
            !HttpGrant::default()
                .allows(&Origin::of(&"http://127.0.0.1/".parse().unwrap()).unwrap())
        );
        for bad in ["ftp://x.org", "127.0.0.1:80", "https://x.org/v1"] {
            let e = HttpGrant::default()
                .with(&HttpOverrides {
                    allow: Some(vec![bad.into()]),
                    ..Default::default()
                })
                .unwrap_err();
            assert!(format!("{e:#}").contains(bad), "{e:#}");
        }
    }

    #[test]
    fn the_guest_timeouts_are_capped_by_the_grant() {
        let most = Duration::from_secs(2);
        let o = clamp(
            Some(RequestOptions {
                connect_timeout: Some(Duration::from_secs(60)),
                first_byte_timeout: Some(Duration::from_millis(500)),
                between_bytes_timeout: None,
            }),
            most,
        );
        assert_eq!(o.connect_timeout, Some(most));
        assert_eq!(o.first_byte_timeout, Some(Duration::from_millis(500)));
        assert_eq!(o.between_bytes_timeout, Some(most));
    }
}
