//! Conversation traces: what happened to a conversation, hop by hop.
//!
//! Every delivery a host handles leaves one [`Hop`] in that host's
//! [`TraceLog`], a ring bounded by a number of hops and a byte budget
//! (`--trace-hops`; 0 turns it off): the agent and its version, the
//! attempt, how long the message waited and how long the guest ran, what
//! it received and what it sent, and how the delivery ended (handled,
//! retried, dead-lettered). Recording is cheap (the bodies are kept as
//! bytes; masking happens when a trace is read, not on the hot path).
//!
//! Several hosts share an agent's queue on RabbitMQ, so one conversation's
//! hops are spread over their logs. A trace is assembled when asked for:
//! the asking host (or `warren trace`) asks every host on the broker
//! ([`crate::broker::Broker::ask_peers`]) and merges their answers with its
//! own hops, ordered by when each hop began.
//!
//! - `mask` — bodies and headers as a person may see them (secrets out);
//! - `peers` — the question hosts ask each other, and its answer.

pub mod mask;
pub mod peers;

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};

/// Hops a host keeps unless configured (`--trace-hops`).
pub const DEFAULT_CAPACITY: usize = 10_000;

/// How many hops a host keeps for traces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TraceConfig {
    /// 0 turns traces off.
    pub capacity: usize,
}

impl Default for TraceConfig {
    fn default() -> Self {
        TraceConfig {
            capacity: DEFAULT_CAPACITY,
        }
    }
}

/// Bytes of bodies a host keeps at most, whatever the number of hops.
pub const BYTE_BUDGET: usize = 32 << 20;

/// A body larger than this is kept only masked and cut (it is read in a
/// trace, not replayed from it).
pub const KEPT_BODY_BYTES: usize = 16 << 10;

/// How a delivery ended.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Outcome {
    /// The agent answered; everything it sent is published, the input acked.
    Handled,
    /// Delivered again after `delay_ms`.
    Retried { delay_ms: u64, reason: String },
    /// Given up on: in the agent's dead-letter queue.
    DeadLettered { reason: String },
    /// Back to its queue without an attempt used (the agent was unloading).
    Requeued { reason: String },
    /// Settling failed; the broker gives the message back.
    SettleFailed { reason: String },
}

impl Outcome {
    pub fn label(&self) -> &'static str {
        match self {
            Outcome::Handled => "handled",
            Outcome::Retried { .. } => "retried",
            Outcome::DeadLettered { .. } => "dead-lettered",
            Outcome::Requeued { .. } => "requeued",
            Outcome::SettleFailed { .. } => "settle failed",
        }
    }

    pub fn reason(&self) -> Option<&str> {
        match self {
            Outcome::Handled => None,
            Outcome::Retried { reason, .. }
            | Outcome::DeadLettered { reason }
            | Outcome::Requeued { reason }
            | Outcome::SettleFailed { reason } => Some(reason),
        }
    }
}

/// A body as kept: the bytes, or (too large to keep) its masked, cut text.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Body {
    /// The body as received or sent (masked when read: see [`mask`]).
    pub text: String,
    /// Its size on the wire.
    pub bytes: usize,
    /// `text` is already masked and cut (the body was larger than
    /// [`KEPT_BODY_BYTES`]).
    #[serde(default)]
    pub cut: bool,
}

impl Body {
    fn keep(raw: &[u8]) -> Body {
        if raw.len() <= KEPT_BODY_BYTES {
            return Body {
                text: String::from_utf8_lossy(raw).into_owned(),
                bytes: raw.len(),
                cut: false,
            };
        }
        // Masked now: a cut body is no longer JSON, and its secrets could
        // not be found in it later.
        let masked = mask::body(&String::from_utf8_lossy(raw), None);
        Body {
            text: crate::broker::bounded(&masked, KEPT_BODY_BYTES).into_owned(),
            bytes: raw.len(),
            cut: true,
        }
    }
}

/// One message an agent sent in a hop.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SentHop {
    pub id: String,
    /// `agent:NAME` or `queue:NAME` (a reply).
    pub to: String,
    pub body: Body,
}

/// One delivery of one message to one agent, on one host.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Hop {
    /// The host that handled it (`hostname/pid`).
    pub host: String,
    pub conversation_id: String,
    /// The message's id (stable across its attempts).
    pub id: String,
    pub agent: String,
    /// The agent version that ran (none when no call was made).
    pub version: Option<String>,
    pub attempt: u32,
    /// Agent-to-agent hops before this one.
    pub hops: u32,
    /// Who sent the message: an agent, or none for a user.
    pub sender: Option<String>,
    /// When the host took the delivery, ms since the Unix epoch.
    pub received_at_ms: u64,
    /// From the message's first publish to this delivery, in ms (includes
    /// retry delays for a later attempt); none when the publish time is
    /// known to the second only (AMQP's timestamp property).
    pub waited_ms: Option<u64>,
    /// Time in the guest's `on-message`, when it was called.
    pub guest_ms: Option<f64>,
    /// From delivery to settlement (publishing and confirms included).
    pub total_ms: f64,
    pub outcome: Outcome,
    pub received: Body,
    pub sent: Vec<SentHop>,
}

impl Hop {
    /// Bytes of bodies this hop holds (for the budget).
    fn weight(&self) -> usize {
        self.received.text.len() + self.sent.iter().map(|s| s.body.text.len()).sum::<usize>()
    }
}

/// What a [`Hop`] starts from: the delivery as received.
pub struct HopStart {
    conversation_id: String,
    id: String,
    attempt: u32,
    hops: u32,
    sender: Option<String>,
    received_at_ms: u64,
    waited_ms: Option<u64>,
    started: std::time::Instant,
    received: Body,
}

impl HopStart {
    pub fn new(envelope: &crate::broker::Envelope) -> Self {
        let now = crate::dispatch::now_millis();
        HopStart {
            conversation_id: envelope.conversation_id.clone(),
            id: envelope.id.clone(),
            attempt: envelope.attempt,
            hops: envelope.hops,
            sender: envelope.sender.clone(),
            received_at_ms: now,
            // A whole second is what AMQP carries: too coarse to say.
            waited_ms: (envelope.timestamp % 1000 != 0)
                .then(|| now.saturating_sub(envelope.timestamp)),
            started: std::time::Instant::now(),
            received: Body::keep(&envelope.body),
        }
    }
}

/// A finished hop's particulars beside its start.
pub struct HopEnd<'a> {
    pub agent: &'a str,
    pub version: Option<String>,
    pub guest: Option<std::time::Duration>,
    pub outcome: Outcome,
    /// (id, route tag, body) of each message sent.
    pub sent: Vec<(String, String, &'a [u8])>,
}

/// A conversation's summary in the list of recent ones.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Recent {
    pub conversation_id: String,
    /// The agent of its first hop kept here.
    pub first_agent: String,
    pub hops: usize,
    pub last_at_ms: u64,
    /// The latest hop's outcome.
    pub last_outcome: String,
}

/// Guest time percentiles of an agent over its latest hops, in ms.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct GuestTimes {
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub samples: usize,
}

/// One host's ring of hops.
pub struct TraceLog {
    host: String,
    capacity: usize,
    ring: Mutex<Ring>,
}

#[derive(Default)]
struct Ring {
    hops: VecDeque<Arc<Hop>>,
    bytes: usize,
}

impl TraceLog {
    /// A log of at most `capacity` hops (0: nothing is recorded).
    pub fn new(capacity: usize) -> Arc<Self> {
        Arc::new(TraceLog {
            host: host_id(),
            capacity,
            ring: Mutex::default(),
        })
    }

    /// This host's name in traces.
    pub fn host(&self) -> &str {
        &self.host
    }

    pub fn enabled(&self) -> bool {
        self.capacity > 0
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Records a finished hop; the oldest go when the ring is full.
    pub fn record(&self, start: HopStart, end: HopEnd<'_>) {
        if !self.enabled() {
            return;
        }
        let hop = Hop {
            host: self.host.clone(),
            conversation_id: start.conversation_id,
            id: start.id,
            agent: end.agent.to_string(),
            version: end.version,
            attempt: start.attempt,
            hops: start.hops,
            sender: start.sender,
            received_at_ms: start.received_at_ms,
            waited_ms: start.waited_ms,
            guest_ms: end.guest.map(|d| d.as_secs_f64() * 1e3),
            total_ms: start.started.elapsed().as_secs_f64() * 1e3,
            outcome: end.outcome,
            received: start.received,
            sent: end
                .sent
                .into_iter()
                .map(|(id, to, body)| SentHop {
                    id,
                    to,
                    body: Body::keep(body),
                })
                .collect(),
        };
        let weight = hop.weight();
        let mut ring = self.ring.lock().unwrap_or_else(|p| p.into_inner());
        ring.bytes += weight;
        ring.hops.push_back(Arc::new(hop));
        while ring.hops.len() > self.capacity || (ring.bytes > BYTE_BUDGET && ring.hops.len() > 1) {
            if let Some(old) = ring.hops.pop_front() {
                ring.bytes -= old.weight();
            }
        }
    }

    /// Every hop of a conversation kept here, oldest first.
    pub fn conversation(&self, conversation_id: &str) -> Vec<Hop> {
        let ring = self.ring.lock().unwrap_or_else(|p| p.into_inner());
        ring.hops
            .iter()
            .filter(|h| h.conversation_id == conversation_id)
            .map(|h| Hop::clone(h))
            .collect()
    }

    /// The latest conversations, newest first.
    pub fn recent(&self, limit: usize) -> Vec<Recent> {
        let ring = self.ring.lock().unwrap_or_else(|p| p.into_inner());
        let mut order: Vec<String> = Vec::new();
        let mut seen: HashMap<&str, Recent> = HashMap::new();
        for hop in ring.hops.iter().rev() {
            match seen.get_mut(hop.conversation_id.as_str()) {
                Some(r) => {
                    r.hops += 1;
                    r.first_agent = hop.agent.clone();
                }
                None if order.len() < limit => {
                    order.push(hop.conversation_id.clone());
                    seen.insert(
                        &hop.conversation_id,
                        Recent {
                            conversation_id: hop.conversation_id.clone(),
                            first_agent: hop.agent.clone(),
                            hops: 1,
                            last_at_ms: hop.received_at_ms,
                            last_outcome: hop.outcome.label().to_string(),
                        },
                    );
                }
                None => {}
            }
        }
        order
            .iter()
            .filter_map(|c| seen.remove(c.as_str()))
            .collect()
    }

    /// Guest time percentiles per agent over its latest `per_agent` hops.
    pub fn guest_times(&self, per_agent: usize) -> HashMap<String, GuestTimes> {
        let ring = self.ring.lock().unwrap_or_else(|p| p.into_inner());
        let mut samples: HashMap<&str, Vec<f64>> = HashMap::new();
        for hop in ring.hops.iter().rev() {
            if let Some(ms) = hop.guest_ms {
                let s = samples.entry(hop.agent.as_str()).or_default();
                if s.len() < per_agent {
                    s.push(ms);
                }
            }
        }
        samples
            .into_iter()
            .map(|(agent, mut s)| {
                s.sort_by(f64::total_cmp);
                let at = |q: f64| s[((s.len() - 1) as f64 * q).round() as usize];
                let times = GuestTimes {
                    p50_ms: at(0.5),
                    p99_ms: at(0.99),
                    samples: s.len(),
                };
                (agent.to_string(), times)
            })
            .collect()
    }
}

/// Hops of one conversation from several hosts: one copy of each, ordered
/// by when the hop began.
pub fn merge(hops: impl IntoIterator<Item = Hop>) -> Vec<Hop> {
    let mut seen = HashSet::new();
    let mut all: Vec<Hop> = hops
        .into_iter()
        .filter(|h| {
            seen.insert((
                h.host.clone(),
                h.id.clone(),
                h.attempt,
                h.received_at_ms,
                h.agent.clone(),
            ))
        })
        .collect();
    all.sort_by(|a, b| {
        (a.received_at_ms, a.hops, a.attempt).cmp(&(b.received_at_ms, b.hops, b.attempt))
    });
    all
}

/// This process in traces: `hostname/pid`.
fn host_id() -> String {
    let name = std::fs::read_to_string("/etc/hostname")
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "localhost".into());
    format!("{name}/{}", std::process::id())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::broker::Envelope;

    fn envelope(conversation: &str, id: &str, body: &[u8]) -> Envelope {
        Envelope {
            id: id.into(),
            conversation_id: conversation.into(),
            attempt: 1,
            timestamp: crate::dispatch::now_millis(),
            body: body.to_vec(),
            ..Default::default()
        }
    }

    fn handled<'a>(agent: &'a str) -> HopEnd<'a> {
        HopEnd {
            agent,
            version: Some("v1".into()),
            guest: Some(std::time::Duration::from_millis(2)),
            outcome: Outcome::Handled,
            sent: vec![],
        }
    }

    #[test]
    fn the_ring_keeps_the_latest_hops_and_finds_a_conversation() {
        let log = TraceLog::new(3);
        for i in 0..5 {
            let conv = if i % 2 == 0 { "c-even" } else { "c-odd" };
            log.record(
                HopStart::new(&envelope(conv, &format!("m{i}"), b"{}")),
                handled("a"),
            );
        }
        let even: Vec<String> = log
            .conversation("c-even")
            .into_iter()
            .map(|h| h.id)
            .collect();
        assert_eq!(even, ["m2", "m4"], "m0 fell out of the ring of 3");
        let recent = log.recent(10);
        assert_eq!(recent[0].conversation_id, "c-even");
        assert_eq!(recent[0].hops, 2);
        assert_eq!(recent[1].conversation_id, "c-odd");
        let times = log.guest_times(100);
        assert_eq!(times["a"].samples, 3);
        assert!((times["a"].p50_ms - 2.0).abs() < 0.5);
    }

    #[test]
    fn a_log_of_capacity_zero_records_nothing() {
        let log = TraceLog::new(0);
        log.record(HopStart::new(&envelope("c", "m", b"{}")), handled("a"));
        assert!(log.conversation("c").is_empty());
    }

    #[test]
    fn a_large_body_is_kept_masked_and_cut() {
        let big = format!(
            r#"{{"messages":[{{"role":"user","content":"{}"}}],"api_key":"sk-123456"}}"#,
            "x".repeat(KEPT_BODY_BYTES * 2)
        );
        let kept = Body::keep(big.as_bytes());
        assert!(kept.cut);
        assert_eq!(kept.bytes, big.len());
        assert!(kept.text.len() < KEPT_BODY_BYTES + 100);
        assert!(!kept.text.contains("sk-123456"));
    }

    #[test]
    fn merging_orders_hops_and_drops_copies() {
        let log = TraceLog::new(10);
        log.record(HopStart::new(&envelope("c", "m1", b"{}")), handled("a"));
        // The next hop of the conversation, within the same millisecond.
        let mut next = envelope("c", "m2", b"{}");
        next.hops = 1;
        log.record(HopStart::new(&next), handled("b"));
        let mut hops = log.conversation("c");
        hops.reverse();
        let again = hops.clone();
        let merged = merge(hops.into_iter().chain(again));
        let ids: Vec<&str> = merged.iter().map(|h| h.id.as_str()).collect();
        assert_eq!(ids, ["m1", "m2"]);
    }
}
