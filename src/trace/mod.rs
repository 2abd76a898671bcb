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
mod ring;

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};

/// Hops a host keeps unless configured (`--trace-hops`).
pub const DEFAULT_CAPACITY: usize = 2_000;

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

/// A body as a reader gets it.
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

/// What a [`Hop`] starts from: when and how the delivery came.
pub struct HopStart {
    attempt: u32,
    hops: u32,
    received_at_ms: u64,
    waited_ms: Option<u64>,
    started: std::time::Instant,
}

impl HopStart {
    pub fn new(envelope: &crate::broker::Envelope) -> Self {
        let now = crate::dispatch::now_millis();
        HopStart {
            attempt: envelope.attempt,
            hops: envelope.hops,
            received_at_ms: now,
            // A whole second is what AMQP carries: too coarse to say.
            waited_ms: (envelope.timestamp % 1000 != 0)
                .then(|| now.saturating_sub(envelope.timestamp)),
            started: std::time::Instant::now(),
        }
    }
}

/// What a hop received, kept beside the delivery until it is recorded:
/// moved out of the envelope where the settlement no longer needs it (an
/// ack), copied where it does (a retry or dead letter publishes it again).
#[derive(Default)]
pub struct Received {
    pub body: Vec<u8>,
    pub sender: Option<String>,
}

impl Received {
    pub fn take(envelope: &mut crate::broker::Envelope) -> Self {
        Received {
            body: std::mem::take(&mut envelope.body),
            sender: envelope.sender.take(),
        }
    }

    pub fn copy(envelope: &crate::broker::Envelope) -> Self {
        Received {
            body: envelope.body.clone(),
            sender: envelope.sender.clone(),
        }
    }
}

/// A finished hop's particulars, borrowed from the message path.
pub struct HopEnd<'a> {
    pub conversation_id: &'a str,
    pub id: &'a str,
    pub agent: &'a str,
    pub version: Option<&'a str>,
    pub guest: Option<std::time::Duration>,
    pub outcome: Outcome,
    pub received: &'a Received,
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

/// One host's ring of hops (see `ring`: one buffer, no allocation per
/// hop), in a few shards so that consumers on different threads do not
/// wait for each other: a hop goes to the next shard in turn, or the one
/// after if that is busy.
pub struct TraceLog {
    host: String,
    capacity: usize,
    shards: Vec<Mutex<ring::ByteRing>>,
}

/// Shards of a log.
const SHARDS: usize = 4;

thread_local! {
    /// Where a hop is encoded before it is copied into a shard (outside
    /// its lock).
    static SCRATCH: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// The shard the next hop tries first: round robin, so that every shard
/// holds its share of the latest hops.
static NEXT_SHARD: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// A conversation id's key in the ring.
fn key(conversation_id: &str) -> u64 {
    use std::hash::{Hash as _, Hasher as _};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    conversation_id.hash(&mut h);
    h.finish()
}

impl TraceLog {
    /// A log of at most `capacity` hops (0: nothing is recorded).
    pub fn new(capacity: usize) -> Arc<Self> {
        let per_shard = capacity.div_ceil(SHARDS);
        // Room for about 1 KB per hop (most hops are smaller; larger ones
        // make the ring keep fewer): the buffers stay as small as the hops
        // asked for, and warm.
        // A shard holds at least 64 KiB: one hop's record may carry
        // several bodies of up to KEPT_BODY_BYTES each.
        let bytes = (capacity.saturating_mul(1024) / SHARDS)
            .max(64 << 10)
            .min(BYTE_BUDGET / SHARDS);
        Arc::new(TraceLog {
            host: host_id(),
            capacity,
            shards: (0..SHARDS)
                .map(|_| Mutex::new(ring::ByteRing::new(bytes, per_shard)))
                .collect(),
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

    /// Records a finished hop with what it sent (id, destination, body);
    /// the oldest hops go when the ring is full.
    pub fn record<'a>(
        &self,
        start: HopStart,
        end: HopEnd<'_>,
        sent: impl ExactSizeIterator<Item = (&'a str, &'a crate::broker::Route, &'a [u8])>,
    ) {
        if !self.enabled() {
            return;
        }
        let total_ms = start.started.elapsed().as_secs_f64() * 1e3;
        SCRATCH.with_borrow_mut(|buf| {
            buf.clear();
            let mut w = ring::Writer(buf);
            w.bytes(end.conversation_id.as_bytes());
            w.bytes(end.id.as_bytes());
            w.bytes(end.agent.as_bytes());
            w.opt_str(end.version);
            w.opt_str(end.received.sender.as_deref());
            w.u32(start.attempt);
            w.u32(start.hops);
            w.u64(start.received_at_ms);
            w.opt_u64(start.waited_ms);
            w.opt_f64(end.guest.map(|d| d.as_secs_f64() * 1e3));
            w.f64(total_ms);
            ring::write_outcome(&mut w, &end.outcome);
            w.body(&end.received.body);
            w.u32(sent.len() as u32);
            for (id, to, body) in sent {
                w.bytes(id.as_bytes());
                w.route(to);
                w.body(body);
            }
            let k = key(end.conversation_id);
            let home = NEXT_SHARD.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            for i in 0..SHARDS {
                if let Ok(mut shard) = self.shards[(home + i) % SHARDS].try_lock() {
                    shard.push(k, buf);
                    return;
                }
            }
            self.shards[home % SHARDS]
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(k, buf);
        });
    }

    /// Calls `f` with each shard in turn.
    fn each_shard(&self, mut f: impl FnMut(&ring::ByteRing)) {
        for shard in &self.shards {
            f(&shard.lock().unwrap_or_else(|p| p.into_inner()));
        }
    }

    /// Every hop of a conversation kept here, oldest first.
    pub fn conversation(&self, conversation_id: &str) -> Vec<Hop> {
        let k = key(conversation_id);
        let mut hops = Vec::new();
        self.each_shard(|ring| {
            hops.extend(
                ring.find(k)
                    .filter_map(|r| ring::read_hop(r, &self.host))
                    .filter(|h| h.conversation_id == conversation_id),
            )
        });
        merge(hops)
    }

    /// Every hop's summary, newest first.
    fn summaries(&self) -> Vec<ring::Summary> {
        let mut all = Vec::new();
        self.each_shard(|ring| all.extend(ring.newest_first().filter_map(ring::read_summary)));
        all.sort_by(|a, b| b.received_at_ms.cmp(&a.received_at_ms));
        all
    }

    /// The latest conversations, newest first.
    pub fn recent(&self, limit: usize) -> Vec<Recent> {
        let mut order: Vec<Recent> = Vec::new();
        for s in self.summaries() {
            match order
                .iter()
                .position(|r| r.conversation_id == s.conversation_id)
            {
                Some(i) => {
                    order[i].hops += 1;
                    order[i].first_agent = s.agent;
                }
                None if order.len() < limit => order.push(Recent {
                    conversation_id: s.conversation_id,
                    first_agent: s.agent,
                    hops: 1,
                    last_at_ms: s.received_at_ms,
                    last_outcome: ring::kind_label(s.kind).to_string(),
                }),
                None => {}
            }
        }
        order
    }

    /// Guest time percentiles per agent over its latest `per_agent` hops.
    pub fn guest_times(&self, per_agent: usize) -> HashMap<String, GuestTimes> {
        let mut samples: HashMap<String, Vec<f64>> = HashMap::new();
        for s in self.summaries() {
            if let Some(ms) = s.guest_ms {
                let v = samples.entry(s.agent).or_default();
                if v.len() < per_agent {
                    v.push(ms);
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
                (agent, times)
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

    fn record(log: &TraceLog, conversation: &str, id: &str, hops: u32, agent: &str, body: &[u8]) {
        let mut env = envelope(conversation, id, b"");
        env.hops = hops;
        let received = Received {
            body: body.to_vec(),
            sender: None,
        };
        let end = HopEnd {
            conversation_id: conversation,
            id,
            agent,
            version: Some("v1"),
            guest: Some(std::time::Duration::from_millis(2)),
            outcome: Outcome::Handled,
            received: &received,
        };
        log.record(HopStart::new(&env), end, std::iter::empty());
    }

    #[test]
    fn the_ring_keeps_the_latest_hops_and_finds_a_conversation() {
        let log = TraceLog::new(SHARDS);
        for i in 0..SHARDS + 2 {
            let conv = if i % 2 == 0 { "c-even" } else { "c-odd" };
            record(&log, conv, &format!("m{i}"), 0, "a", b"{}");
            std::thread::sleep(std::time::Duration::from_millis(2));
        }
        let ids =
            |c: &str| -> Vec<String> { log.conversation(c).into_iter().map(|h| h.id).collect() };
        assert_eq!(ids("c-even"), ["m2", "m4"], "m0 fell out of the ring");
        assert_eq!(ids("c-odd"), ["m3", "m5"], "m1 fell out of the ring");
        let recent = log.recent(10);
        assert_eq!(recent[0].conversation_id, "c-odd");
        assert_eq!(recent[0].hops, 2);
        assert_eq!(recent[1].conversation_id, "c-even");
        let times = log.guest_times(100);
        assert_eq!(times["a"].samples, SHARDS);
        assert!((times["a"].p50_ms - 2.0).abs() < 0.5);
    }

    #[test]
    fn a_log_of_capacity_zero_records_nothing() {
        let log = TraceLog::new(0);
        record(&log, "c", "m", 0, "a", b"{}");
        assert!(log.conversation("c").is_empty());
    }

    #[test]
    fn a_large_body_is_kept_masked_and_cut() {
        let big = format!(
            r#"{{"messages":[{{"role":"user","content":"{}"}}],"api_key":"sk-123456"}}"#,
            "x".repeat(KEPT_BODY_BYTES * 2)
        );
        let log = TraceLog::new(10);
        record(&log, "c", "m", 0, "a", big.as_bytes());
        let kept = &log.conversation("c")[0].received;
        assert!(kept.cut);
        assert_eq!(kept.bytes, big.len());
        assert!(kept.text.len() < KEPT_BODY_BYTES + 100);
        assert!(!kept.text.contains("sk-123456"));
    }

    #[test]
    fn merging_orders_hops_and_drops_copies() {
        let log = TraceLog::new(10);
        record(&log, "c", "m1", 0, "a", b"{}");
        // The next hop of the conversation, within the same millisecond.
        record(&log, "c", "m2", 1, "b", b"{}");
        let mut hops = log.conversation("c");
        hops.reverse();
        let again = hops.clone();
        let merged = merge(hops.into_iter().chain(again));
        let ids: Vec<&str> = merged.iter().map(|h| h.id.as_str()).collect();
        assert_eq!(ids, ["m1", "m2"]);
    }
}
