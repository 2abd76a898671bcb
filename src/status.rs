//! Queue monitoring: the seed's `debug_queues` view (queue, message_count,
//! consumer_count, routing_key, status) joined with each agent's version and
//! call counters, as a table or JSON.

use std::fmt::Write as _;
use std::sync::atomic::Ordering;
use std::time::UNIX_EPOCH;

use serde::{Deserialize, Serialize};

use crate::broker::QueueStats;
use crate::names;
use crate::registry::PluginError;
use crate::runtime::AgentPool;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Status {
    pub broker: String,
    /// The cluster node the connection is on (RabbitMQ), and how many
    /// times it moved to another node.
    #[serde(default)]
    pub node: Option<String>,
    #[serde(default)]
    pub failovers: u64,
    pub agents: Vec<AgentStatus>,
    /// Read from the broker by a process that hosts none of the agents:
    /// versions, calls and errors are known only to the hosts running them.
    #[serde(default)]
    pub remote: bool,
    /// The embedded broker's bounded queue of replies nobody waits for.
    #[serde(default)]
    pub unclaimed_replies: Option<crate::broker::UnclaimedReplies>,
}

/// Guest errors by kind (see [`crate::runtime::GuestErrorKind`]).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct GuestErrors {
    pub trap: u64,
    pub deadline: u64,
    pub memory_limit: u64,
    pub stack_overflow: u64,
    #[serde(default)]
    pub fuel: u64,
    pub instantiate: u64,
}

impl GuestErrors {
    pub fn total(&self) -> u64 {
        self.trap
            + self.deadline
            + self.memory_limit
            + self.stack_overflow
            + self.fuel
            + self.instantiate
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AgentStatus {
    #[serde(flatten)]
    pub queue: QueueStats,
    /// The queue's name again, under the key the original `debug_queues()` uses.
    #[serde(default)]
    pub queue_name: String,
    /// Content hash of the loaded version; none when no version is loaded.
    pub version: Option<String>,
    /// The contract the loaded version was built against (`0.1.0`, `0.2.0`).
    #[serde(default)]
    pub contract: Option<String>,
    pub file: Option<String>,
    /// Seconds since the Unix epoch.
    pub loaded_at: Option<u64>,
    pub calls: u64,
    /// Calls that returned a `failure` (retry or reject).
    pub failures: u64,
    /// Calls that ended without an answer, by kind.
    pub guest_errors: GuestErrors,
    pub guest_ms: f64,
    /// The largest linear memory an instance reached, in bytes.
    pub peak_memory_bytes: u64,
    /// Calls that ran guest code past `throttle_after` (the runaway lane).
    #[serde(default)]
    pub runaway_calls: u64,
    /// Outbound HTTP requests sent, and refused as not allowed.
    #[serde(default)]
    pub http_requests: u64,
    #[serde(default)]
    pub http_denied: u64,
    /// Guest log lines dropped by the rate limit.
    pub log_lines_dropped: u64,
    /// Why the plugin file could not be (re)loaded, if it could not.
    pub error: Option<String>,
    /// The latest reason a message of this agent was retried or dead-lettered.
    #[serde(default)]
    pub last_error: Option<String>,
}

impl AgentStatus {
    pub fn new(
        mut queue: QueueStats,
        pool: Option<&AgentPool>,
        error: Option<PluginError>,
    ) -> Self {
        if pool.is_none() {
            queue.status = "not loaded".into();
        }
        if error.is_some() {
            // With a version loaded, the error is about a newer file (refused,
            // or rolled back): the loaded version keeps serving.
            queue.status = if pool.is_some() {
                "serving; new file refused".into()
            } else {
                "plugin error".into()
            };
        }
        let stats = pool.map(|p| p.stats());
        let counter = |f: fn(&crate::runtime::CallStats) -> &std::sync::atomic::AtomicU64| {
            stats.map(|s| f(s).load(Ordering::Relaxed)).unwrap_or(0)
        };
        AgentStatus {
            queue_name: queue.queue.clone(),
            version: pool.map(|p| p.version().to_string()),
            contract: pool.map(|p| p.module().contract.to_string()),
            file: pool.map(|p| p.module().source.display().to_string()),
            loaded_at: pool
                .and_then(|p| p.module().loaded_at.duration_since(UNIX_EPOCH).ok())
                .map(|d| d.as_secs()),
            calls: counter(|s| &s.calls),
            failures: counter(|s| &s.failures),
            guest_errors: GuestErrors {
                trap: counter(|s| &s.traps),
                deadline: counter(|s| &s.deadlines),
                memory_limit: counter(|s| &s.memory_limits),
                stack_overflow: counter(|s| &s.stack_overflows),
                fuel: counter(|s| &s.fuel_exhausted),
                instantiate: counter(|s| &s.instantiate_failures),
            },
            guest_ms: counter(|s| &s.guest_nanos) as f64 / 1e6,
            peak_memory_bytes: counter(|s| &s.peak_memory),
            runaway_calls: counter(|s| &s.runaways),
            http_requests: counter(|s| &s.http.sent),
            http_denied: counter(|s| &s.http.denied),
            log_lines_dropped: stats
                .map(|s| s.log_lines_dropped.load(Ordering::Relaxed))
                .unwrap_or(0),
            error: error.map(|e| e.reason),
            last_error: None,
            queue,
        }
    }

    /// A queue seen from outside any host (RabbitMQ, `warren status`).
    pub fn remote(queue: QueueStats) -> Self {
        AgentStatus {
            queue_name: queue.queue.clone(),
            queue,
            version: None,
            contract: None,
            file: None,
            loaded_at: None,
            calls: 0,
            failures: 0,
            guest_errors: GuestErrors::default(),
            guest_ms: 0.0,
            peak_memory_bytes: 0,
            runaway_calls: 0,
            http_requests: 0,
            http_denied: 0,
            log_lines_dropped: 0,
            error: None,
            last_error: None,
        }
    }

    /// A plugin that never loaded and so has no queue yet.
    pub fn failed(error: PluginError) -> Self {
        let queue = no_queue(&error.agent, "plugin error");
        let mut s = AgentStatus::new(queue, None, Some(error.clone()));
        s.file = Some(error.file.display().to_string());
        s
    }

    /// A new agent whose first version is still compiling.
    pub fn loading(agent: &str, version: &str) -> Self {
        let mut s = AgentStatus::remote(no_queue(agent, &format!("loading {version}")));
        s.queue_name = names::queue(agent);
        s
    }
}

/// The row of an agent that has no queue yet.
fn no_queue(agent: &str, status: &str) -> QueueStats {
    QueueStats {
        queue: names::queue(agent),
        routing_key: names::routing_key(agent),
        dead_letter_queue: names::dead_letter_queue(agent),
        agent: agent.to_string(),
        message_count: 0,
        consumer_count: 0,
        unacked: 0,
        delayed: 0,
        dead_letter_count: 0,
        status: status.into(),
    }
}

impl Status {
    /// The `--watch` view: per agent, calls per second since `previous`
    /// (taken `secs` earlier), queue depth, consumers, version, last error.
    pub fn watch_table(&self, previous: Option<&Status>, secs: f64) -> String {
        let header = [
            "agent",
            "calls/s",
            "ready",
            "consumers",
            "dead",
            "version",
            "status",
            "last error",
        ];
        let rows: Vec<Vec<String>> = self
            .agents
            .iter()
            .map(|a| {
                let before = previous
                    .and_then(|p| p.agents.iter().find(|b| b.queue.agent == a.queue.agent))
                    .map(|b| b.calls);
                let rate = match before {
                    Some(b) if secs > 0.0 => {
                        format!("{:.1}", a.calls.saturating_sub(b) as f64 / secs)
                    }
                    _ => "-".into(),
                };
                let mut last = a
                    .error
                    .clone()
                    .or_else(|| a.last_error.clone())
                    .unwrap_or_default();
                if last.len() > 60 {
                    let mut end = 60;
                    while !last.is_char_boundary(end) {
                        end -= 1;
                    }
                    last.truncate(end);
                    last.push('…');
                }
                vec![
                    a.queue.agent.clone(),
                    rate,
                    a.queue.message_count.to_string(),
                    a.queue.consumer_count.to_string(),
                    a.queue.dead_letter_count.to_string(),
                    a.version.clone().unwrap_or_else(|| "-".into()),
                    a.queue.status.clone(),
                    last,
                ]
            })
            .collect();
        format!("broker: {}\n{}", self.broker, grid(&header, &rows))
    }

    /// The human view: one row per agent, then any plugin errors in full.
    pub fn table(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(out, "broker: {}", self.broker);
        if self.failovers > 0 {
            let _ = writeln!(
                out,
                "failovers: {} (moved to another node of the cluster)",
                self.failovers
            );
        }
        let header = [
            "queue",
            "routing_key",
            "message_count",
            "consumer_count",
            "unacked",
            "delayed",
            "dead",
            "version",
            "contract",
            "calls",
            "errors",
            "peak_mem",
            "status",
        ];
        let rows: Vec<Vec<String>> = self
            .agents
            .iter()
            .map(|a| {
                vec![
                    a.queue.queue.clone(),
                    a.queue.routing_key.clone(),
                    a.queue.message_count.to_string(),
                    a.queue.consumer_count.to_string(),
                    a.queue.unacked.to_string(),
                    a.queue.delayed.to_string(),
                    a.queue.dead_letter_count.to_string(),
                    a.version.clone().unwrap_or_else(|| "-".into()),
                    a.contract.clone().unwrap_or_else(|| "-".into()),
                    self.local(a.calls.to_string()),
                    self.local((a.failures + a.guest_errors.total()).to_string()),
                    if a.peak_memory_bytes > 0 {
                        format!("{:.1}M", a.peak_memory_bytes as f64 / (1 << 20) as f64)
                    } else {
                        "-".into()
                    },
                    a.queue.status.clone(),
                ]
            })
            .collect();
        out.push_str(&grid(&header, &rows));
        if self.agents.is_empty() {
            let _ = writeln!(out, "(no agents)");
        }
        if self.remote {
            let _ = writeln!(
                out,
                "(read from the broker: version, calls, errors and peak_mem are known only to the \
                 hosts running the agents: see their /metrics; unacked and delayed are not visible over AMQP)"
            );
        }
        if let Some(r) = self
            .unclaimed_replies
            .as_ref()
            .filter(|r| r.queued > 0 || r.dropped > 0)
        {
            let _ = writeln!(
                out,
                "unclaimed replies: {} queued ({} bytes, limit {}), {} oldest dropped",
                r.queued, r.bytes, r.limit_bytes, r.dropped
            );
        }
        for a in self.agents.iter().filter(|a| a.error.is_some()) {
            let _ = writeln!(
                out,
                "error in {}: {}",
                a.queue.agent,
                a.error.as_deref().unwrap_or_default()
            );
        }
        out
    }
}

/// One queue as the original client's `debug_queues()` reports it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DebugQueue {
    pub queue_name: String,
    pub message_count: u64,
    pub consumer_count: u32,
    pub routing_key: String,
    /// `active` (someone consumes), `inactive` (nobody does) or `missing`.
    pub status: String,
}

impl Status {
    /// The original client's `debug_queues()` object, keyed by agent name,
    /// so a script written for it reads warren's output unchanged.
    pub fn debug_queues(&self) -> std::collections::BTreeMap<String, DebugQueue> {
        self.agents
            .iter()
            .map(|a| {
                let status = match (a.queue.status.as_str(), a.queue.consumer_count) {
                    ("missing", _) => "missing",
                    (_, 0) => "inactive",
                    _ => "active",
                };
                let q = DebugQueue {
                    queue_name: a.queue.queue.clone(),
                    message_count: a.queue.message_count,
                    consumer_count: a.queue.consumer_count,
                    routing_key: a.queue.routing_key.clone(),
                    status: status.into(),
                };
                (a.queue.agent.clone(), q)
            })
            .collect()
    }

    /// The JSON of `warren status --json`: every field, plus `debug_queues`.
    pub fn to_json(&self) -> serde_json::Value {
        let mut v = serde_json::to_value(self).expect("a status always serialises");
        v["debug_queues"] = serde_json::to_value(self.debug_queues()).expect("serialises");
        v
    }

    /// A value only this host knows: `-` when read from the broker.
    fn local(&self, value: String) -> String {
        if self.remote { "-".into() } else { value }
    }
}

/// Left-aligned columns, two spaces apart.
fn grid(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for r in rows {
        for (w, c) in widths.iter_mut().zip(r) {
            *w = (*w).max(c.chars().count());
        }
    }
    let line = |cells: &mut dyn Iterator<Item = &str>| {
        let mut l = String::new();
        for (i, (c, w)) in cells.zip(&widths).enumerate() {
            if i > 0 {
                l.push_str("  ");
            }
            let _ = write!(l, "{c:<w$}");
        }
        l.trim_end().to_string()
    };
    let mut out = String::new();
    let _ = writeln!(out, "{}", line(&mut header.iter().copied()));
    for r in rows {
        let _ = writeln!(out, "{}", line(&mut r.iter().map(String::as_str)));
    }
    out
}
