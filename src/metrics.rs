//! Prometheus metrics: what each agent received, published, acked, retried
//! and dead-lettered, its failures by kind, guest time and end-to-end
//! processing time, plus the host's plugin lifecycle and broker connection.
//!
//! Dispatch counts on the hot path through [`AgentMetrics`], a set of handles
//! fetched once per consumer (an increment is one atomic add, no label
//! lookup). Values that already live elsewhere (instance pools, plugin
//! counters, the broker's reconnects) are read when scraped. Counts kept by
//! an agent version's pool (its outbound HTTP requests) are labelled with
//! the version too: each version's series only grows, and a swapped-out
//! version's stays at its last value, so `sum by (agent)` is the total.

use std::sync::atomic::{AtomicU64, Ordering};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::broker::Broker;

/// Plugin lifecycle counts, host-wide.
#[derive(Debug, Default)]
pub struct PluginCounters {
    /// Agents loaded where none was.
    pub loads: AtomicU64,
    /// Versions replaced by a new one.
    pub swaps: AtomicU64,
    /// New versions the guard swapped back out.
    pub rollbacks: AtomicU64,
    /// Plugin files refused (invalid, wrong world, bad manifest, ...).
    pub rejections: AtomicU64,
    pub removals: AtomicU64,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AgentLabel {
    pub agent: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FailureLabels {
    pub agent: String,
    /// trap, deadline, memory-limit, stack-overflow, fuel, instantiate,
    /// retry, reject, invalid-output, too-large, undecodable, hop-limit, max-turns,
    /// unroutable, not-loaded, publish.
    pub kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct VersionLabels {
    pub agent: String,
    pub version: String,
}

type Histograms = Family<AgentLabel, Histogram, fn() -> Histogram>;

fn seconds_histogram() -> Histogram {
    // 10 µs .. ~42 s: a reused Rust instance's call up to a deadline.
    Histogram::new(exponential_buckets(1e-5, 2.0, 23))
}

/// The host's metrics registry.
pub struct Metrics {
    registry: Registry,
    received: Family<AgentLabel, Counter>,
    published: Family<AgentLabel, Counter>,
    acked: Family<AgentLabel, Counter>,
    retried: Family<AgentLabel, Counter>,
    dead_lettered: Family<AgentLabel, Counter>,
    failures: Family<FailureLabels, Counter>,
    guest_seconds: Histograms,
    processing_seconds: Histograms,
    in_flight: Family<AgentLabel, Gauge>,
    instances: Family<AgentLabel, Gauge>,
    http_requests: Family<VersionLabels, Counter>,
    http_denied: Family<VersionLabels, Counter>,
    connected: Gauge,
    reconnects: Counter,
    failovers: Counter,
    loads: Counter,
    swaps: Counter,
    rollbacks: Counter,
    rejections: Counter,
    removals: Counter,
}

/// One agent's hot-path handles.
#[derive(Clone)]
pub struct AgentMetrics {
    agent: String,
    failures: Family<FailureLabels, Counter>,
    pub received: Counter,
    pub published: Counter,
    pub acked: Counter,
    pub retried: Counter,
    pub dead_lettered: Counter,
    pub guest_seconds: Histogram,
    pub processing_seconds: Histogram,
    pub in_flight: Gauge,
}

impl AgentMetrics {
    /// Counts a failure of `kind` (rare: the label lookup is fine here).
    pub fn failure(&self, kind: &str) {
        self.failures
            .get_or_create(&FailureLabels {
                agent: self.agent.clone(),
                kind: kind.to_string(),
            })
            .inc();
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("warren");
        let m = Metrics {
            received: Family::default(),
            published: Family::default(),
            acked: Family::default(),
            retried: Family::default(),
            dead_lettered: Family::default(),
            failures: Family::default(),
            guest_seconds: Family::new_with_constructor(seconds_histogram),
            processing_seconds: Family::new_with_constructor(seconds_histogram),
            in_flight: Family::default(),
            instances: Family::default(),
            http_requests: Family::default(),
            http_denied: Family::default(),
            connected: Gauge::default(),
            reconnects: Counter::default(),
            failovers: Counter::default(),
            loads: Counter::default(),
            swaps: Counter::default(),
            rollbacks: Counter::default(),
            rejections: Counter::default(),
            removals: Counter::default(),
            registry: Registry::default(),
        };
        let r = &mut registry;
        r.register(
            "messages_received",
            "Deliveries taken from the agent's queue",
            m.received.clone(),
        );
        r.register(
            "messages_published",
            "Messages the agent produced, confirmed by the broker",
            m.published.clone(),
        );
        r.register(
            "messages_acked",
            "Deliveries handled and acknowledged",
            m.acked.clone(),
        );
        r.register(
            "messages_retried",
            "Deliveries scheduled for a later retry",
            m.retried.clone(),
        );
        r.register(
            "messages_dead_lettered",
            "Deliveries moved to the agent's dead-letter queue",
            m.dead_lettered.clone(),
        );
        r.register("failures", "Failed handlings by kind", m.failures.clone());
        r.register(
            "guest_seconds",
            "Time spent in the agent's on-message call",
            m.guest_seconds.clone(),
        );
        r.register(
            "processing_seconds",
            "From delivery to settlement (publish confirmed, ack sent; acks wait up to --ack-gather ms to share a frame)",
            m.processing_seconds.clone(),
        );
        r.register(
            "in_flight",
            "Deliveries being handled now",
            m.in_flight.clone(),
        );
        r.register(
            "instances_idle",
            "Idle instances kept for reuse",
            m.instances.clone(),
        );
        r.register(
            "http_requests",
            "Outbound HTTP requests the agent sent (to origins it was granted)",
            m.http_requests.clone(),
        );
        r.register(
            "http_denied",
            "Outbound HTTP requests refused: origin not on the agent's allow-list",
            m.http_denied.clone(),
        );
        r.register(
            "broker_connected",
            "1 while the broker connection is up",
            m.connected.clone(),
        );
        r.register(
            "broker_failovers",
            "Times the connection moved to another node of the cluster",
            m.failovers.clone(),
        );
        r.register(
            "broker_recoveries",
            "Times a publish or consumer waited out a connection recovery",
            m.reconnects.clone(),
        );
        r.register(
            "plugin_loads",
            "Agents loaded where none was",
            m.loads.clone(),
        );
        r.register(
            "plugin_swaps",
            "Agent versions replaced by a new one",
            m.swaps.clone(),
        );
        r.register(
            "plugin_rollbacks",
            "New versions swapped back out by the rollback guard",
            m.rollbacks.clone(),
        );
        r.register(
            "plugin_rejections",
            "Plugin files refused",
            m.rejections.clone(),
        );
        r.register(
            "plugin_removals",
            "Agents unloaded because their file went away",
            m.removals.clone(),
        );
        Metrics { registry, ..m }
    }

    /// The hot-path handles for `agent`.
    pub fn agent(&self, agent: &str) -> AgentMetrics {
        let l = AgentLabel {
            agent: agent.to_string(),
        };
        AgentMetrics {
            agent: agent.to_string(),
            failures: self.failures.clone(),
            received: self.received.get_or_create(&l).clone(),
            published: self.published.get_or_create(&l).clone(),
            acked: self.acked.get_or_create(&l).clone(),
            retried: self.retried.get_or_create(&l).clone(),
            dead_lettered: self.dead_lettered.get_or_create(&l).clone(),
            guest_seconds: self.guest_seconds.get_or_create(&l).clone(),
            processing_seconds: self.processing_seconds.get_or_create(&l).clone(),
            in_flight: self.in_flight.get_or_create(&l).clone(),
        }
    }

    /// Brings the values read at scrape time up to date, then renders the
    /// Prometheus text format.
    pub fn render(
        &self,
        broker: &dyn Broker,
        plugins: &PluginCounters,
        pools: &[std::sync::Arc<crate::runtime::AgentPool>],
    ) -> String {
        self.connected.set(i64::from(broker.connected()));
        catch_up(&self.reconnects, broker.reconnects());
        catch_up(&self.failovers, broker.failovers());
        let get = |c: &std::sync::atomic::AtomicU64| c.load(Ordering::Relaxed);
        catch_up(&self.loads, get(&plugins.loads));
        catch_up(&self.swaps, get(&plugins.swaps));
        catch_up(&self.rollbacks, get(&plugins.rollbacks));
        catch_up(&self.rejections, get(&plugins.rejections));
        catch_up(&self.removals, get(&plugins.removals));
        self.instances.clear();
        for pool in pools {
            self.instances
                .get_or_create(&AgentLabel {
                    agent: pool.name().to_string(),
                })
                .set(pool.idle_instances() as i64);
            let version = VersionLabels {
                agent: pool.name().to_string(),
                version: pool.version().to_string(),
            };
            let http = &pool.stats().http;
            catch_up(&self.http_requests.get_or_create(&version), get(&http.sent));
            catch_up(&self.http_denied.get_or_create(&version), get(&http.denied));
        }
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("writing to a String cannot fail");
        out
    }
}

/// Raises a counter mirrored from a monotonic source to the source's value.
fn catch_up(counter: &Counter, value: u64) {
    let have = counter.get();
    if value > have {
        counter.inc_by(value - have);
    }
}
