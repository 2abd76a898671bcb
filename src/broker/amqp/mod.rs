//! The RabbitMQ transport (lapin 4 on tokio).
//!
//! Topology, seed-compatible: a durable topic exchange (default
//! `agent_exchange`); per agent a durable queue `agent_{name}_queue` bound with
//! `agent.{name}`, dead-lettering into a durable dead-letter queue
//! `agent_{name}_queue.dlq` (a queue that already exists with other
//! arguments, e.g. the seed's, is adopted as it is, with a warning).
//!
//! Retries wait in delay queues, not in a consumer: `agent_{name}_queue.retry.{N}ms`
//! holds a message for its per-message expiration, then RabbitMQ dead-letters
//! it back to the agent's queue (`x-dead-letter-exchange` = the default
//! exchange). One delay queue per power-of-two delay bucket keeps a short delay
//! from queueing behind a long one (RabbitMQ only expires a queue's head).
//!
//! Every publish is persistent, `mandatory` and confirmed; confirms are
//! pipelined (each publish awaits only its own confirm). A returned message
//! becomes [`Unroutable`]. Settling a delivery by retry or dead-letter first
//! publishes the copy (confirmed), then acks the original: a crash in between
//! duplicates, never loses. Acks of a channel's settled deliveries go out in
//! batches (one `multiple` ack for a run of them, see `acks`).
//!
//! Recovery is lapin's own (`enable_auto_recover`): the connection, channels,
//! QoS, confirm mode, declarations and consumers are replayed — on another
//! node of the cluster when the one it was on is gone (see `nodes`). Publishes and
//! consumers that fail meanwhile wait for the recovery (bounded by
//! `recovery_timeout`) and carry on; a publish is re-sent with the same id.
//!
//! ## Modules
//!
//! - `url` — the URL and its redaction in every line we print;
//! - `nodes` — several URLs (a cluster's nodes) and failing over between them;
//! - `connection` — connecting (one bounded attempt, or waiting for the broker)
//!   and the backoff of lapin's recovery;
//! - `topology` — queues, delay queues, bindings, queue counts;
//! - `health` — queue counts for `status`, also while the connection recovers;
//! - `publish` — confirmed, `mandatory` publishing that rides out a recovery;
//! - `headers` — an [`Envelope`] to AMQP properties and back;
//! - `consume` — consumers and settling a delivery (ack, retry, dead-letter);
//! - `acks` — acking a channel's settled deliveries in batches (`multiple`);
//! - `dead_letters` — reading, replaying and purging a dead-letter queue;
//! - `peers` — hosts asking each other (traces), off the message path;
//! - `unroutable` — the agent exchange's alternate exchange, and moving what
//!   lands there to a dead-letter queue.

mod acks;
mod connection;
mod consume;
mod dead_letters;
mod headers;
mod health;
mod nodes;
mod peers;
mod publish;
mod topology;
mod unroutable;
mod url;

pub use acks::DEFAULT_GATHER as DEFAULT_ACK_GATHER;
pub(crate) use connection::close as close_connection;
pub use headers::{
    HEADER_ATTEMPT, HEADER_HOPS, HEADER_REASON, HEADER_SENDER, Origin, TYPE_PREFIX, origin,
};
pub use topology::QueueVersion;
pub use unroutable::UNROUTABLE;
pub use url::redact;

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context as _, Result};
use async_trait::async_trait;
use lapin::options::{BasicConsumeOptions, BasicQosOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::{Channel, Connection};
use tracing::{debug, warn};

use self::acks::{AckCounts, AckWindow};
use self::consume::AmqpConsumer;
use self::headers::Extra;
use self::nodes::Nodes;
use super::{Broker, Consumer, DeadLetter, Envelope, QueueStats, Replayed, Route};
use crate::names;

/// The queue type for agent queues.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum QueueType {
    /// RabbitMQ's classic queue (what the seed declares), of the storage
    /// version `AmqpConfig::queue_version` says (2 unless configured).
    #[default]
    Classic,
    /// Replicated quorum queue.
    Quorum,
}

/// Unacknowledged deliveries per consumer unless configured: with
/// [`crate::dispatch::DEFAULT_IN_FLIGHT`] and 2 consumers, chosen from
/// `warren bench --only sweep` and the latency table (BENCHMARKS.md). The
/// window is what hides the broker's confirm latency (fsync of persistent
/// messages): with 8, half the machine sat idle waiting for confirms. The
/// same window of 1,024 on fewer channels drains as fast as 4 × 256 (the raw
/// lapin relay's own fastest shape) with less of RabbitMQ's CPU per message,
/// and a paced p99 at the raw relay's where 4 × 256 stayed above it. It
/// bounds memory (prefetch × consumers bodies per agent) and what one host
/// takes of a queue shared with others: lower it for large bodies or slow
/// agents.
pub const DEFAULT_PREFETCH: u16 = 512;

/// How to reach RabbitMQ and shape the topology.
#[derive(Debug, Clone)]
pub struct AmqpConfig {
    /// `amqp://` or `amqps://` URL, credentials included.
    pub url: String,
    /// More nodes of the same cluster (their host and port are used; the
    /// rest comes from `url`), tried in order after `url`'s (see `nodes`).
    pub more_urls: Vec<String>,
    /// The topic exchange agents are bound to.
    pub exchange: String,
    /// How the exchange is declared when it is missing: durable, with
    /// warren's alternate exchange (the default); or as the original
    /// SwarmRabbitMQ clients declare it, non-durable and without arguments
    /// (RabbitMQ refuses a declare whose durability or arguments differ, so
    /// their start-up fails on anything else).
    pub exchange_durable: bool,
    /// Unacknowledged deliveries per consumer.
    pub prefetch: u16,
    pub queue_type: QueueType,
    /// The storage version classic queues are declared with (see `topology`).
    pub queue_version: QueueVersion,
    /// Longest wait for lapin's recovery before an operation fails.
    pub recovery_timeout: Duration,
    /// Publisher confirms and persistent messages. Only benchmarks turn this
    /// off: without it a broker crash or an unroutable message loses data.
    pub reliable: bool,
    /// Longest wait for one connection attempt: TCP, TLS and the AMQP
    /// handshake together.
    pub connect_timeout: Duration,
    /// AMQP heartbeat asked of the broker, in seconds (a `heartbeat=` in the
    /// URL wins): a link that stays open but carries nothing is noticed
    /// after about twice this.
    pub heartbeat: u16,
    /// Also write an agent output's sender, hops and version as the headers
    /// `x-warren-sender`, `x-warren-hops`, `x-warren-agent-version` (which
    /// hosts before the `app_id` / `type` form read), besides the
    /// properties. Costs the broker a header table per message.
    pub legacy_headers: bool,
    /// How long the first settled delivery of a consumer channel waits for
    /// others to settle, so their acks go out in one frame (see `acks`).
    /// Zero acks each run at once.
    pub ack_gather: Duration,
}

impl AmqpConfig {
    pub fn new(url: impl Into<String>) -> Self {
        AmqpConfig {
            url: url.into(),
            more_urls: Vec::new(),
            exchange: "agent_exchange".into(),
            exchange_durable: true,
            prefetch: DEFAULT_PREFETCH,
            queue_type: QueueType::Classic,
            queue_version: QueueVersion::V2,
            recovery_timeout: Duration::from_secs(120),
            reliable: true,
            connect_timeout: Duration::from_secs(5),
            heartbeat: 10,
            legacy_headers: false,
            ack_gather: acks::DEFAULT_GATHER,
        }
    }
}

/// The RabbitMQ broker. Cheap to clone.
#[derive(Clone)]
pub struct AmqpBroker {
    inner: Arc<Inner>,
}

struct Inner {
    config: AmqpConfig,
    redacted: String,
    /// The cluster's nodes, and which one the connection is on.
    nodes: Arc<Nodes>,
    connection: Connection,
    /// Confirm-mode channel shared by every publish (lapin pipelines them).
    publish: Channel,
    /// Confirm-mode channel for settling copies, one at a time (see
    /// `publish_settling`).
    settle: Channel,
    settle_lock: tokio::sync::Mutex<()>,
    /// Agents this process declared or was told about, for `stats`.
    agents: Mutex<BTreeSet<String>>,
    /// Delay queues already declared by this process.
    delay_queues: Mutex<BTreeSet<String>>,
    /// The agent exchange's shape as found or made: (durable, with the
    /// alternate exchange); none if it is neither of the two warren knows.
    exchange_shape: Mutex<Option<(bool, bool)>>,
    seq: AtomicU64,
    /// Times an operation waited for a connection recovery (and got it).
    recoveries: AtomicU64,
    /// Deliveries settled whose ack was lost, by key: their redelivery is a
    /// duplicate (see `consume`).
    settled: Mutex<HashMap<String, u32>>,
    /// Deliveries being handled, by key (see `consume`).
    in_flight: consume::InFlight,
    /// Deliveries acked, and the ack frames that carried them (see `acks`).
    acks: Arc<AckCounts>,
    /// What the last status counted (see `health`).
    last_counts: health::LastCounts,
}

impl AmqpBroker {
    /// Adds agents to those `stats` reports (e.g. the plugins folder's, when
    /// `warren status` runs in a process that declared nothing).
    pub fn watch_agents<I: IntoIterator<Item = String>>(&self, agents: I) {
        self.inner.agents.lock().unwrap().extend(agents);
    }

    pub fn config(&self) -> &AmqpConfig {
        &self.inner.config
    }

    /// How many times a publish or a consumer rode out a connection recovery.
    pub fn recoveries(&self) -> u64 {
        self.inner.recoveries.load(Ordering::Relaxed)
    }

    /// `(deliveries acked, ack frames sent)` so far: how well acks batch.
    pub fn ack_counts(&self) -> (u64, u64) {
        let acks = &self.inner.acks;
        (
            acks.acked.load(Ordering::Relaxed),
            acks.frames.load(Ordering::Relaxed),
        )
    }
}
#[async_trait]
impl Broker for AmqpBroker {
    fn describe(&self) -> String {
        let node = match self.inner.nodes.current() {
            Some(node) if self.inner.nodes.len() > 1 => format!(", on node {node}"),
            _ => String::new(),
        };
        let state = match self.inner.connection_state() {
            "connected" => String::new(),
            state => format!(" ({state})"),
        };
        format!(
            "RabbitMQ at {} (exchange `{}`){node}{state}",
            self.inner.redacted, self.inner.config.exchange
        )
    }

    fn node(&self) -> Option<String> {
        self.inner.nodes.current()
    }

    fn failovers(&self) -> u64 {
        self.inner.nodes.failovers()
    }

    fn connected(&self) -> bool {
        self.inner.connection.status().connected()
    }

    fn reconnects(&self) -> u64 {
        self.recoveries()
    }

    async fn has_agent(&self, agent: &str) -> Result<bool> {
        Ok(self
            .inner
            .queue_counts(&names::queue(agent))
            .await?
            .is_some())
    }

    async fn keep_unroutable(&self, shutdown: tokio_util::sync::CancellationToken) {
        // A failure (a lost connection beyond recovery) is retried: what
        // waits in the queue is kept meanwhile.
        while !shutdown.is_cancelled() {
            if let Err(e) = self.inner.move_unroutable(shutdown.clone()).await {
                warn!("moving unroutable messages: {e:#}; trying again in 5 s");
                tokio::select! {
                    _ = shutdown.cancelled() => {}
                    _ = tokio::time::sleep(Duration::from_secs(5)) => {}
                }
            }
        }
    }

    async fn ask_peers(&self, question: Vec<u8>, wait: Duration) -> Result<Vec<Vec<u8>>> {
        self.inner.ask_peers(question, wait).await
    }

    async fn answer_peers(
        &self,
        answer: super::PeerAnswers,
        shutdown: tokio_util::sync::CancellationToken,
    ) {
        peers::answer_for_ever(&self.inner, answer, shutdown).await
    }

    async fn declare_agent(&self, agent: &str) -> Result<()> {
        names::validate(agent)?;
        let inner = &self.inner;
        let queue = names::queue(agent);
        let cost = format!(
            "; without warren's x-dead-letter-exchange, a message that expires or reaches a \
             delivery limit in it is dropped by RabbitMQ instead of kept in `{}` (a policy can add \
             it without deleting the queue, see docs/operations.md)",
            names::dead_letter_queue(agent)
        );
        inner
            .declare_queue(&queue, inner.agent_queue_args(agent), &cost)
            .await?;
        let (q, x, rk): (ShortString, ShortString, ShortString) = (
            queue.as_str().into(),
            inner.config.exchange.as_str().into(),
            names::routing_key(agent).into(),
        );
        inner
            .on_temp_channel(|ch| async move {
                ch.queue_bind(q, x, rk, QueueBindOptions::default(), FieldTable::default())
                    .await
            })
            .await
            .with_context(|| format!("binding `{queue}` to `{}`", inner.config.exchange))?;
        inner.declare_dead_letter_queue(agent).await?;
        inner.agents.lock().unwrap().insert(agent.to_string());
        Ok(())
    }

    async fn declare_queue(&self, name: &str) -> Result<()> {
        self.inner
            .declare_queue(name, FieldTable::default(), "")
            .await
    }

    async fn publish(&self, route: &Route, envelope: Envelope) -> Result<()> {
        self.inner
            .publish_envelope(route, &envelope, Extra::default())
            .await
    }

    async fn publish_kept(&self, route: &Route, envelope: &Envelope) -> Result<()> {
        self.inner
            .publish_envelope(route, envelope, Extra::default())
            .await
    }

    async fn consume(&self, agent: &str) -> Result<Box<dyn Consumer>> {
        let inner = &self.inner;
        let channel = inner
            .connection
            .create_channel()
            .await
            .context("opening a consumer channel")?;
        channel
            .basic_qos(inner.config.prefetch, BasicQosOptions::default())
            .await
            .context("setting the prefetch")?;
        let n = inner.seq.fetch_add(1, Ordering::Relaxed);
        let tag = format!("warren-{agent}-{}-{n}", std::process::id());
        let consumer = channel
            .basic_consume(
                names::queue(agent).into(),
                tag.as_str().into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
            .with_context(|| format!("consuming `{}`", names::queue(agent)))?;
        Ok(Box::new(AmqpConsumer {
            inner: self.inner.clone(),
            agent: Some(agent.into()),
            window: Arc::new(AckWindow::new(
                channel.clone(),
                inner.acks.clone(),
                inner.config.ack_gather,
                inner.config.prefetch,
            )),
            channel,
            consumer,
            queue: names::queue(agent),
        }))
    }

    async fn reply_queue(&self) -> Result<(String, Box<dyn Consumer>)> {
        let inner = &self.inner;
        // A client-chosen name (not a server-named one) so that lapin's
        // recovery re-declares the same queue the reply-to points at.
        let name = format!(
            "warren.reply.{}.{}.{}",
            std::process::id(),
            inner.seq.fetch_add(1, Ordering::Relaxed),
            &crate::dispatch::new_id()[2..10]
        );
        // Not exclusive, not auto-delete: RabbitMQ deletes those with the
        // connection (or the consumer), and a reply published before the
        // recovery re-declared it would be unroutable. It expires instead
        // once unused for longer than a recovery may take (a client that
        // died), and is deleted when its consumer stops.
        let mut args = FieldTable::default();
        let expires = inner.config.recovery_timeout + Duration::from_secs(60);
        args.insert(
            "x-expires".into(),
            AMQPValue::LongLongInt(expires.as_millis() as i64),
        );
        let channel = inner.connection.create_channel().await?;
        channel
            .queue_declare(name.as_str().into(), QueueDeclareOptions::default(), args)
            .await
            .context("declaring the reply queue")?;
        let consumer = channel
            .basic_consume(
                name.as_str().into(),
                "".into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
            .context("consuming the reply queue")?;
        let consumer = AmqpConsumer {
            inner: self.inner.clone(),
            agent: None,
            window: Arc::new(AckWindow::new(
                channel.clone(),
                inner.acks.clone(),
                inner.config.ack_gather,
                // No qos on this channel: unlimited.
                0,
            )),
            channel,
            consumer,
            queue: name.clone(),
        };
        Ok((name, Box::new(consumer)))
    }

    async fn dead_letter(&self, agent: &str, envelope: Envelope, reason: &str) -> Result<()> {
        self.inner
            .publish_dead_letter(agent, &envelope, reason)
            .await
    }

    async fn stats(&self) -> Result<Vec<QueueStats>> {
        self.inner.stats().await
    }

    async fn dead_letters(&self, agent: &str) -> Result<Vec<DeadLetter>> {
        // A peek is read-only (everything it took goes back when its channel
        // closes), so one failed attempt is simply made again.
        match self.inner.peek_dead_letters(agent).await {
            Ok(out) => Ok(out),
            Err(e) => {
                debug!(
                    agent,
                    "peeking the dead-letter queue failed, once more: {e:#}"
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
                self.inner.peek_dead_letters(agent).await
            }
        }
    }

    async fn replay_dead_letters(&self, agent: &str, id: Option<&str>) -> Result<Replayed> {
        self.inner.take_dead_letters(agent, id, true).await
    }

    async fn purge_dead_letters(&self, agent: &str, id: Option<&str>) -> Result<u64> {
        let taken = self.inner.take_dead_letters(agent, id, false).await?;
        Ok(taken.ids.len() as u64)
    }

    async fn close(&self) {
        connection::close(&self.inner.connection, "warren shutting down").await;
    }
}
