//! The per-instance host state: a WASI context with no ambient authority,
//! memory limits, and the `host` interface (`log`) routed to tracing.
//!
//! A guest gets clocks and randomness and nothing else: no preopened
//! directories, no environment variables, no arguments, no sockets, no name
//! lookups, no stdin. `wasi:http` is linked but gated: a request leaves only
//! for an origin the agent was granted (see `outbound`). Its stdout and stderr are captured line by line into
//! the host's log, tagged with the agent's name.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use tokio::io::AsyncWrite;
use wasmtime::component::ResourceTable;
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::{WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};

use wasmtime_wasi_http::{WasiHttpCtx, WasiHttpCtxView, WasiHttpView};

use super::bindings::{Level, v0_1, v0_2::warren::agent};
use super::manifest::AgentLimits;
use super::outbound::HttpGate;
use super::pool::CallStats;
use super::settings::AgentSettings;

/// Longest captured output line; longer lines are cut (a guest must not be
/// able to make the host buffer without bound).
const MAX_LINE: usize = 4096;
/// Stderr lines of one call kept to explain a trap (a Python traceback
/// fits; the oldest go first).
const KEPT_LINES: usize = 64;
/// Guest log lines (stdout, stderr and `log` together) per second; a burst of
/// twice that is allowed. Beyond it lines are dropped and counted, so a
/// chatty or hostile guest cannot flood the host's log.
const LINES_PER_SEC: f64 = 100.0;
const BURST: f64 = 2.0 * LINES_PER_SEC;

/// A token bucket over one instance's log lines.
pub struct LogBudget {
    tokens: f64,
    refilled: std::time::Instant,
    dropped_since_last: u64,
    dropped_total: Arc<AtomicU64>,
}

impl LogBudget {
    fn new(dropped_total: Arc<AtomicU64>) -> Arc<Mutex<Self>> {
        Arc::new(Mutex::new(LogBudget {
            tokens: BURST,
            refilled: std::time::Instant::now(),
            dropped_since_last: 0,
            dropped_total,
        }))
    }

    /// Whether a line may be logged; with it, how many were dropped before it.
    fn allow(budget: &Mutex<Self>) -> Option<u64> {
        let mut b = budget.lock().unwrap_or_else(|p| p.into_inner());
        let now = std::time::Instant::now();
        let refill = now.duration_since(b.refilled).as_secs_f64() * LINES_PER_SEC;
        b.tokens = (b.tokens + refill).min(BURST);
        b.refilled = now;
        if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            Some(std::mem::take(&mut b.dropped_since_last))
        } else {
            b.dropped_since_last += 1;
            b.dropped_total.fetch_add(1, Ordering::Relaxed);
            None
        }
    }
}

/// Logs a guest line if the budget allows, noting any lines dropped before it.
fn budgeted(budget: &Mutex<LogBudget>, agent: &str, log: impl FnOnce()) {
    match LogBudget::allow(budget) {
        None => {}
        Some(0) => log(),
        Some(dropped) => {
            tracing::warn!(target: "warren::guest", agent, "{dropped} guest log lines dropped (over {LINES_PER_SEC} lines/s)");
            log();
        }
    }
}

/// Everything a store holds for one agent instance.
pub struct AgentState {
    agent: Arc<str>,
    wasi: WasiCtx,
    table: ResourceTable,
    pub(crate) limits: super::limits::Limits,
    log_budget: Arc<Mutex<LogBudget>>,
    /// When the running call (or instantiation) must be interrupted.
    pub(crate) call_deadline: Option<std::time::Instant>,
    /// When the running call becomes a runaway (see `throttle`).
    pub(crate) throttle_from: Option<std::time::Instant>,
    /// Whether the running call became one.
    pub(crate) ran_away: bool,
    /// The guest's last few stderr lines: a panic message lands there just
    /// before the trap, and it is the most useful part of a trap's reason.
    last_stderr: Arc<Mutex<Vec<String>>>,
    call: CallTag,
    settings: Arc<AgentSettings>,
    http: WasiHttpCtx,
    http_gate: HttpGate,
}

impl AgentState {
    pub fn new(agent: Arc<str>, limits: &AgentLimits, stats: &CallStats) -> Self {
        let settings = limits.settings.clone();
        let last_stderr = Arc::new(Mutex::new(Vec::new()));
        let log_budget = LogBudget::new(stats.log_lines_dropped.clone());
        let call = CallTag::default();
        // stdout and stderr share the agent's log budget, message tag and
        // secrets; only stderr keeps its last lines for trap reasons.
        let output = GuestOutput {
            agent: agent.clone(),
            stream: "stderr",
            last: Some(last_stderr.clone()),
            budget: log_budget.clone(),
            call: call.clone(),
            settings: settings.clone(),
        };
        let wasi = WasiCtxBuilder::new()
            .stdout(GuestOutput {
                stream: "stdout",
                last: None,
                ..output.clone()
            })
            .stderr(output)
            .allow_tcp(false)
            .allow_udp(false)
            .allow_ip_name_lookup(false)
            .build();
        AgentState {
            wasi,
            table: ResourceTable::new(),
            limits: super::limits::Limits::new(limits.max_memory, limits.max_table_elements),
            call_deadline: None,
            throttle_from: None,
            ran_away: false,
            log_budget,
            last_stderr,
            http: WasiHttpCtx::new(),
            http_gate: HttpGate {
                agent: agent.clone(),
                grant: limits.http.clone(),
                call: call.clone(),
                counters: stats.http.clone(),
                waited: Arc::default(),
            },
            agent,
            call,
            settings,
        }
    }

    /// How long the running call has waited for HTTP responses; that time
    /// is not guest work, so it moves the runaway threshold back.
    pub(crate) fn http_waited(&self) -> std::time::Duration {
        std::time::Duration::from_nanos(self.http_gate.waited.load(Ordering::Relaxed))
    }

    /// Starts the next call's HTTP wait at zero.
    pub(crate) fn reset_http_waited(&self) {
        self.http_gate.waited.store(0, Ordering::Relaxed);
    }

    /// `text` with the agent's secret values replaced by `***`.
    pub(crate) fn scrub<'a>(&self, text: &'a str) -> std::borrow::Cow<'a, str> {
        self.settings.scrub(text)
    }

    /// Tags the guest's log lines with the message it is handling now.
    pub(crate) fn set_call(&self, id: &str, conversation: &str) {
        let mut call = self.call.lock().unwrap_or_else(|p| p.into_inner());
        call.0.clear();
        call.0.push_str(id);
        call.1.clear();
        call.1.push_str(conversation);
    }

    /// Takes the lines the guest wrote to stderr since the last take (at
    /// most the last `KEPT_LINES`).
    pub fn take_stderr(&self) -> Vec<String> {
        std::mem::take(&mut *self.last_stderr.lock().unwrap_or_else(|p| p.into_inner()))
    }
}

impl WasiView for AgentState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl WasiHttpView for AgentState {
    fn http(&mut self) -> WasiHttpCtxView<'_> {
        WasiHttpCtxView {
            ctx: &mut self.http,
            table: &mut self.table,
            hooks: &mut self.http_gate,
        }
    }
}

impl agent::types::Host for AgentState {}
impl v0_1::warren::agent::types::Host for AgentState {}

impl v0_1::warren::agent::config::Host for AgentState {
    fn get(&mut self, key: String) -> Option<String> {
        agent::config::Host::get(self, key)
    }
}

impl v0_1::warren::agent::host::Host for AgentState {
    fn log(&mut self, level: v0_1::warren::agent::host::Level, text: String) {
        agent::host::Host::log(self, level.into(), text)
    }
}

impl agent::config::Host for AgentState {
    fn get(&mut self, key: String) -> Option<String> {
        self.settings.get(&key)
    }
}

impl agent::host::Host for AgentState {
    fn log(&mut self, level: Level, text: String) {
        let agent = &*self.agent;
        let text = self.settings.scrub(truncate(&text));
        let call = self.call.lock().unwrap_or_else(|p| p.into_inner());
        let (id, conversation) = (&call.0, &call.1);
        budgeted(&self.log_budget, agent, || match level {
            Level::Trace => {
                tracing::trace!(target: "warren::guest", agent, id, conversation, "{text}")
            }
            Level::Debug => {
                tracing::debug!(target: "warren::guest", agent, id, conversation, "{text}")
            }
            Level::Info => {
                tracing::info!(target: "warren::guest", agent, id, conversation, "{text}")
            }
            Level::Warn => {
                tracing::warn!(target: "warren::guest", agent, id, conversation, "{text}")
            }
            Level::Error => {
                tracing::error!(target: "warren::guest", agent, id, conversation, "{text}")
            }
        });
    }
}

fn truncate(text: &str) -> &str {
    if text.len() <= MAX_LINE {
        return text;
    }
    let mut end = MAX_LINE;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

/// The message an instance is handling (id, conversation id), so that every
/// line the guest logs says which message it was about.
pub(crate) type CallTag = Arc<Mutex<(String, String)>>;

/// A guest's stdout or stderr, written to the host log one line at a time.
#[derive(Clone)]
struct GuestOutput {
    agent: Arc<str>,
    stream: &'static str,
    last: Option<Arc<Mutex<Vec<String>>>>,
    budget: Arc<Mutex<LogBudget>>,
    call: CallTag,
    settings: Arc<AgentSettings>,
}

impl IsTerminal for GuestOutput {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for GuestOutput {
    fn async_stream(&self) -> Box<dyn AsyncWrite + Send + Sync> {
        Box::new(LineLogger {
            out: self.clone(),
            line: Vec::new(),
        })
    }
}

struct LineLogger {
    out: GuestOutput,
    line: Vec<u8>,
}

impl LineLogger {
    fn emit(&mut self) {
        let text = String::from_utf8_lossy(&self.line);
        let text = text.trim_end_matches(['\n', '\r']);
        let text = self.out.settings.scrub(truncate(text));
        let (agent, stream) = (&*self.out.agent, self.out.stream);
        budgeted(&self.out.budget, agent, || {
            let call = self.out.call.lock().unwrap_or_else(|p| p.into_inner());
            let (id, conversation) = (&call.0, &call.1);
            tracing::info!(target: "warren::guest", agent, id, conversation, stream, "{text}")
        });
        if let Some(last) = &self.out.last {
            let mut last = last.lock().unwrap_or_else(|p| p.into_inner());
            if last.len() == KEPT_LINES {
                last.remove(0);
            }
            last.push(text.to_string());
        }
        self.line.clear();
    }
}

impl AsyncWrite for LineLogger {
    fn poll_write(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        for &b in buf {
            if b == b'\n' {
                self.emit();
            } else if self.line.len() < MAX_LINE {
                self.line.push(b);
            }
        }
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if !self.line.is_empty() {
            self.emit();
        }
        Poll::Ready(Ok(()))
    }
}

impl Drop for LineLogger {
    fn drop(&mut self) {
        if !self.line.is_empty() {
            self.emit();
        }
    }
}
