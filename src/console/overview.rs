//! The console's view of the host and its agents, and the short history
//! behind each agent's sparklines (sampled every [`SAMPLE_EVERY`] for the
//! last [`SAMPLES`] samples, whether or not anyone watches).

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::Duration;

use serde::Serialize;

use crate::host::Host;
use crate::status::AgentStatus;

pub const SAMPLE_EVERY: Duration = Duration::from_secs(5);
/// Five minutes of samples.
pub const SAMPLES: usize = 60;

/// The host as the console shows it.
#[derive(Debug, Serialize)]
pub struct HostView {
    /// This host in traces (`hostname/pid`).
    pub id: String,
    /// The broker, password masked.
    pub broker: String,
    pub connected: bool,
    pub node: Option<String>,
    pub failovers: u64,
    pub uptime_secs: u64,
    pub version: &'static str,
    /// Contracts (`warren:agent` WIT versions) this build runs.
    pub contracts: &'static str,
    pub ready: bool,
    pub problems: Vec<String>,
    pub trace_hops: usize,
}

/// One agent's row.
#[derive(Debug, Serialize)]
pub struct AgentView {
    pub name: String,
    /// running, loading, rolled back, missing (a queue, no plugin), error.
    pub state: &'static str,
    /// The status column of `warren status`.
    pub status: String,
    pub contract: Option<String>,
    pub version: Option<String>,
    pub file: Option<String>,
    pub consumers: u32,
    pub queued: u64,
    pub unacked: u64,
    pub delayed: u64,
    pub dead_letters: u64,
    pub calls: u64,
    pub errors: u64,
    /// Calls and errors per second, oldest first, one per sample.
    pub calls_per_sec: Vec<f64>,
    pub errors_per_sec: Vec<f64>,
    pub p50_ms: Option<f64>,
    pub p99_ms: Option<f64>,
    pub peak_memory_bytes: u64,
    /// Why the latest message failed, or why the plugin file was refused.
    pub last_error: Option<String>,
}

/// Everything `/api/overview` answers.
#[derive(Debug, Serialize)]
pub struct Overview {
    pub host: HostView,
    pub agents: Vec<AgentView>,
    pub sample_secs: u64,
    /// An error reading the broker's queues (the rows then lack counts).
    pub error: Option<String>,
}

/// Counts per agent at each sample.
#[derive(Default)]
pub struct History {
    samples: Mutex<HashMap<String, VecDeque<(u64, u64)>>>,
}

impl History {
    /// Takes one sample of every agent's call and error counts.
    pub fn sample(&self, host: &Host) {
        let mut all = self.samples.lock().unwrap_or_else(|p| p.into_inner());
        let agents = host.registry().agents();
        all.retain(|name, _| agents.iter().any(|p| p.name() == name));
        for pool in agents {
            let s = pool.stats();
            let calls = s.calls.load(std::sync::atomic::Ordering::Relaxed);
            let errors = s.failures.load(std::sync::atomic::Ordering::Relaxed) + s.guest_errors();
            let series = all.entry(pool.name().to_string()).or_default();
            series.push_back((calls, errors));
            while series.len() > SAMPLES + 1 {
                series.pop_front();
            }
        }
    }

    /// Per-second rates between samples, oldest first. A version swap
    /// starts counts again at 0: that step counts as 0, not negative.
    fn rates(&self, agent: &str) -> (Vec<f64>, Vec<f64>) {
        let all = self.samples.lock().unwrap_or_else(|p| p.into_inner());
        let Some(series) = all.get(agent) else {
            return (Vec::new(), Vec::new());
        };
        let per_sec = |a: u64, b: u64| b.saturating_sub(a) as f64 / SAMPLE_EVERY.as_secs_f64();
        let pairs = series.iter().zip(series.iter().skip(1));
        pairs
            .map(|(a, b)| (per_sec(a.0, b.0), per_sec(a.1, b.1)))
            .unzip()
    }
}

fn state(a: &AgentStatus) -> &'static str {
    let error = a.error.as_deref().unwrap_or("");
    if a.queue.status.contains("loading") {
        "loading"
    } else if error.starts_with("rolled back") {
        "rolled back"
    } else if a.version.is_none() && !error.is_empty() {
        "error"
    } else if a.version.is_none() {
        "missing"
    } else {
        "running"
    }
}

/// The host and every agent, as the console shows them.
pub async fn overview(host: &Host, history: &History) -> Overview {
    let readiness = host.readiness();
    let (agents, error) = match host.status().await {
        Ok(s) => (s.agents, None),
        Err(e) => (Vec::new(), Some(format!("{e:#}"))),
    };
    let times = host.trace_log().guest_times(1000);
    let agents = agents
        .into_iter()
        .map(|a| {
            let (calls_per_sec, errors_per_sec) = history.rates(&a.queue.agent);
            let t = times.get(&a.queue.agent);
            AgentView {
                name: a.queue.agent.clone(),
                state: state(&a),
                status: a.queue.status.clone(),
                contract: a.contract.clone(),
                version: a.version.clone(),
                file: a.file.clone(),
                consumers: a.queue.consumer_count,
                queued: a.queue.message_count,
                unacked: a.queue.unacked,
                delayed: a.queue.delayed,
                dead_letters: a.queue.dead_letter_count,
                calls: a.calls,
                errors: a.failures + a.guest_errors.total(),
                calls_per_sec,
                errors_per_sec,
                p50_ms: t.map(|t| t.p50_ms),
                p99_ms: t.map(|t| t.p99_ms),
                peak_memory_bytes: a.peak_memory_bytes,
                last_error: a.last_error.clone().or(a.error.clone()),
            }
        })
        .collect();
    Overview {
        host: HostView {
            id: host.trace_log().host().to_string(),
            broker: readiness.broker,
            connected: readiness.broker_connected,
            node: readiness.node,
            failovers: readiness.failovers,
            uptime_secs: host.uptime().as_secs(),
            version: env!("CARGO_PKG_VERSION"),
            contracts: "warren:agent@0.2.0, 0.1.0",
            ready: readiness.ready,
            problems: readiness.problems,
            trace_hops: host.trace_log().capacity(),
        },
        agents,
        sample_secs: SAMPLE_EVERY.as_secs(),
        error,
    }
}
