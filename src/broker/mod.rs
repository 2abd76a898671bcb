//! The transport seam: one [`Broker`] trait between dispatch and the wire.
//!
//! Dispatch speaks only in [`Envelope`]s, [`Route`]s and [`Delivery`]s; it never
//! sees AMQP frames or the embedded broker's queues. Every implementation
//! honours the same semantics:
//!
//! - `publish` returns only once the broker has the message (for RabbitMQ: a
//!   publisher confirm), and fails with [`Unroutable`] when no queue would take it;
//! - a [`Delivery`] is settled exactly once: `ack`, `retry` (redelivered after a
//!   delay with `attempt + 1`, without holding a consumer) or `dead_letter`
//!   (kept in the agent's dead-letter queue with the reason);
//! - a delivery dropped unsettled (a crashed worker) goes back to its queue.

pub mod amqp;
pub mod memory;

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use anyhow::Result;
use async_trait::async_trait;
use serde::{Deserialize, Serialize};

/// A message in transit: the body plus everything carried beside it
/// (AMQP properties and headers).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Envelope {
    /// Unique id; stable across redeliveries and retries.
    pub id: String,
    /// Shared by all messages of a conversation (AMQP correlation id).
    pub conversation_id: String,
    /// Where `reply` outgoing messages go: a queue name (AMQP reply-to).
    pub reply_to: Option<String>,
    /// The agent that produced it; none for a user's message.
    pub sender: Option<String>,
    /// Agents that handled the conversation before this message.
    pub hops: u32,
    /// 1 on first delivery; incremented by every retry.
    pub attempt: u32,
    /// Milliseconds since the Unix epoch at first publish.
    pub timestamp: u64,
    /// Other headers (`x-warren-*`): producing agent version, last error, ...
    pub headers: BTreeMap<String, String>,
    /// The JSON body (see [`crate::wire::Body`]).
    pub body: Vec<u8>,
}

impl Envelope {
    /// Turns this envelope into its own next delivery after a failed
    /// attempt: `attempt + 1`, with the reason recorded in a header.
    pub fn next_attempt(&mut self, reason: &str) {
        self.attempt += 1;
        self.headers
            .insert(HEADER_LAST_ERROR.to_string(), reason.to_string());
    }

    /// Notes when this message first failed (once: later failures keep it).
    pub fn mark_first_failure(&mut self) {
        self.headers
            .entry(HEADER_FIRST_FAILURE.to_string())
            .or_insert_with(|| now_ms().to_string());
    }

    /// When this message first failed, in ms since the Unix epoch.
    pub fn first_failure_ms(&self) -> Option<u64> {
        self.headers.get(HEADER_FIRST_FAILURE)?.parse().ok()
    }

    /// The notice for whoever waits on this conversation's reply queue
    /// that `agent` dead-lettered this message, if anyone asked for it
    /// ([`HEADER_NOTIFY`]). A notice is a copy for information: the message
    /// itself is in the dead-letter queue, so a notice that cannot be
    /// delivered is simply dropped.
    pub fn dead_letter_notice(&self, agent: &str, reason: &str) -> Option<(Route, Envelope)> {
        self.headers.get(HEADER_NOTIFY)?;
        let reply_to = self.reply_to.clone()?;
        let mut headers = BTreeMap::new();
        headers.insert(HEADER_DEAD_LETTERED_BY.to_string(), agent.to_string());
        headers.insert(HEADER_DEAD_LETTER_ID.to_string(), self.id.clone());
        headers.insert(HEADER_LAST_ERROR.to_string(), reason.to_string());
        let notice = Envelope {
            id: format!("{}.dead-letter-notice", self.id),
            conversation_id: self.conversation_id.clone(),
            reply_to: None,
            sender: Some(agent.to_string()),
            hops: self.hops,
            attempt: 1,
            timestamp: now_ms(),
            headers,
            body: br#"{"messages":[]}"#.to_vec(),
        };
        Some((Route::Queue(reply_to), notice))
    }

    /// Whether this is a dead-letter notice (see [`Envelope::dead_letter_notice`]).
    pub fn is_dead_letter_notice(&self) -> bool {
        self.headers.contains_key(HEADER_DEAD_LETTERED_BY)
    }

    /// Where a dead letter goes when replayed: where it was going if it
    /// never got there (an unroutable output), else back to `agent`.
    pub fn replay_route(&self, agent: &str) -> Route {
        self.headers
            .get(HEADER_DESTINATION)
            .and_then(|t| Route::from_tag(t))
            .unwrap_or_else(|| Route::Agent(agent.to_string()))
    }

    /// Makes a dead letter new again for a replay: first attempt, no
    /// failure history, one more in its replay count.
    pub fn for_replay(mut self) -> Self {
        self.attempt = 1;
        self.headers.remove(HEADER_LAST_ERROR);
        self.headers.remove(HEADER_FIRST_FAILURE);
        self.headers.remove(HEADER_TRAPS);
        self.headers.remove(HEADER_DESTINATION);
        self.headers.remove(HEADER_BAD);
        let replays = self
            .headers
            .get(HEADER_REPLAYS)
            .and_then(|v| v.parse::<u32>().ok())
            .unwrap_or(0);
        self.headers
            .insert(HEADER_REPLAYS.to_string(), (replays + 1).to_string());
        self
    }
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Header: when the message first failed (ms since the Unix epoch).
pub const HEADER_FIRST_FAILURE: &str = "x-warren-first-failure";
/// Header: how many times the message was replayed from a dead-letter queue.
pub const HEADER_REPLAYS: &str = "x-warren-replays";

/// Header naming why the previous attempt failed.
pub const HEADER_LAST_ERROR: &str = "x-warren-last-error";
/// Header carrying the content hash of the agent version that produced a message.
pub const HEADER_AGENT_VERSION: &str = "x-warren-agent-version";
/// Header: how many of the message's attempts ended in a guest trap (traps
/// have their own budget, `trap_retries`, apart from `max_attempts`).
pub const HEADER_TRAPS: &str = "x-warren-traps";
/// What the guest wrote to stderr in the call that failed (a traceback),
/// on retries and dead letters after a guest error.
pub const HEADER_GUEST_TRACE: &str = "x-warren-guest-trace";
/// Header on a dead letter that never reached its destination (an
/// unroutable output): where it was going, as [`Route::tag`]. Replay sends
/// it there, not back to the agent that produced it.
pub const HEADER_DESTINATION: &str = "x-warren-destination";
/// Header: a header of the message that could not be read, and its value.
pub const HEADER_BAD: &str = "x-warren-bad-header";
/// Header set by `warren send --wait` and carried along the conversation:
/// whoever waits on the reply queue wants to hear of a dead letter at once.
pub const HEADER_NOTIFY: &str = "x-warren-notify";
/// Header of a dead-letter notice sent to a waiting reply queue: the agent
/// that dead-lettered the message (`x-warren-dead-letter-id`: which one;
/// `x-warren-last-error`: why).
pub const HEADER_DEAD_LETTERED_BY: &str = "x-warren-dead-lettered-by";
/// Header of a dead-letter notice: the id of the message dead-lettered.
pub const HEADER_DEAD_LETTER_ID: &str = "x-warren-dead-letter-id";

/// `text` cut to at most about `max` bytes (on a character boundary), with a
/// marker saying how long it was. Header values and reasons are bounded so
/// that a long error text cannot break a frame or a log line.
pub fn bounded(text: &str, max: usize) -> std::borrow::Cow<'_, str> {
    if text.len() <= max {
        return text.into();
    }
    let mut cut = max;
    while !text.is_char_boundary(cut) {
        cut -= 1;
    }
    format!("{}… [cut: {} bytes in all]", &text[..cut], text.len()).into()
}

/// Where a message is published.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Route {
    /// An agent's queue, through routing key `agent.{name}`.
    Agent(String),
    /// A queue by name (replies).
    Queue(String),
}

impl Route {
    /// The route as text for a header: `agent:NAME` or `queue:NAME`.
    pub fn tag(&self) -> String {
        match self {
            Route::Agent(a) => format!("agent:{a}"),
            Route::Queue(q) => format!("queue:{q}"),
        }
    }

    /// The inverse of [`Route::tag`].
    pub fn from_tag(tag: &str) -> Option<Route> {
        match tag.split_once(':')? {
            ("agent", a) if crate::names::validate(a).is_ok() => Some(Route::Agent(a.into())),
            ("queue", q) if !q.is_empty() => Some(Route::Queue(q.into())),
            _ => None,
        }
    }
}

impl fmt::Display for Route {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Route::Agent(a) => write!(f, "agent `{a}`"),
            Route::Queue(q) => write!(f, "queue `{q}`"),
        }
    }
}

/// Publishing failed because no queue would take the message.
#[derive(Debug, Clone)]
pub struct Unroutable(pub Route);

impl fmt::Display for Unroutable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.0 {
            Route::Agent(a) => write!(f, "no such agent `{a}` (nothing is bound to agent.{a})"),
            Route::Queue(q) => write!(f, "no such queue `{q}`"),
        }
    }
}

impl std::error::Error for Unroutable {}

/// The seed's queue health view, one row per agent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct QueueStats {
    pub agent: String,
    pub queue: String,
    pub routing_key: String,
    /// Messages ready for delivery.
    pub message_count: u64,
    pub consumer_count: u32,
    /// Delivered, not yet settled.
    pub unacked: u64,
    /// Waiting out a retry delay.
    pub delayed: u64,
    pub dead_letter_queue: String,
    pub dead_letter_count: u64,
    pub status: String,
}

/// A message that was given up on, with the reason.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeadLetter {
    pub agent: String,
    pub reason: String,
    pub envelope: Envelope,
}

/// The embedded broker's queue of unclaimed replies (`warren_replies`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct UnclaimedReplies {
    pub queued: u64,
    pub bytes: u64,
    /// The oldest replies dropped to stay under the limit.
    pub dropped: u64,
    pub limit_bytes: u64,
}

/// What a replay did.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Replayed {
    /// Ids of the dead letters published again.
    pub ids: Vec<String>,
    /// Dead letters left in place: their destination still does not exist.
    pub undeliverable: u64,
}

/// A message handed to a consumer; settle it exactly once.
pub struct Delivery {
    pub envelope: Envelope,
    acker: Option<Box<dyn Acker>>,
}

impl Delivery {
    pub fn new(envelope: Envelope, acker: Box<dyn Acker>) -> Self {
        Delivery {
            envelope,
            acker: Some(acker),
        }
    }

    fn take(&mut self) -> (Envelope, Box<dyn Acker>) {
        let acker = self.acker.take().expect("a delivery is settled once");
        (std::mem::take(&mut self.envelope), acker)
    }

    /// Whether this delivery is a redelivery of one this process already
    /// handled (its copy or output is out, only its ack was lost): then it
    /// is to be acked, not handled again. Waits for a first delivery of the
    /// same message that is still being handled.
    pub async fn already_handled(&mut self) -> bool {
        match &mut self.acker {
            Some(acker) => acker.already_handled(&self.envelope).await,
            None => false,
        }
    }

    /// Done: remove the message from its queue.
    pub async fn ack(mut self) -> Result<()> {
        let (env, acker) = self.take();
        acker.ack(env).await
    }

    /// Deliver again after `delay` with `attempt + 1`, recording `reason`.
    pub async fn retry(mut self, delay: Duration, reason: &str) -> Result<()> {
        let (mut env, acker) = self.take();
        env.mark_first_failure();
        acker.retry(env, delay, reason).await
    }

    /// Give up: move the message to the agent's dead-letter queue.
    pub async fn dead_letter(mut self, reason: &str) -> Result<()> {
        let (mut env, acker) = self.take();
        env.mark_first_failure();
        acker.dead_letter(env, reason).await
    }
}

impl Drop for Delivery {
    fn drop(&mut self) {
        if self.acker.is_some() {
            let (env, acker) = self.take();
            acker.abandon(env);
        }
    }
}

/// The transport's side of settling one delivery.
#[async_trait]
pub trait Acker: Send {
    async fn ack(self: Box<Self>, envelope: Envelope) -> Result<()>;
    async fn retry(
        self: Box<Self>,
        envelope: Envelope,
        delay: Duration,
        reason: &str,
    ) -> Result<()>;
    async fn dead_letter(self: Box<Self>, envelope: Envelope, reason: &str) -> Result<()>;
    /// The delivery was dropped unsettled: give it back to the queue.
    fn abandon(self: Box<Self>, envelope: Envelope);
    /// See [`Delivery::already_handled`].
    async fn already_handled(&mut self, _envelope: &Envelope) -> bool {
        false
    }
}

/// A stream of deliveries from one queue.
#[async_trait]
pub trait Consumer: Send {
    /// The next delivery; `None` once the consumer is closed for good.
    async fn next(&mut self) -> Option<Delivery>;

    /// Stops consuming for good, once every delivery taken is settled. A
    /// delivery the broker sent ahead (prefetch) goes back to the queue.
    async fn stop(self: Box<Self>) {}
}

/// How a host answers another's question: the answer's bytes, or none
/// (not a question for it).
pub type PeerAnswers = std::sync::Arc<dyn Fn(&[u8]) -> Option<Vec<u8>> + Send + Sync>;

/// The transport as dispatch sees it.
#[async_trait]
pub trait Broker: Send + Sync + 'static {
    /// A one-line description for logs (never includes a password).
    fn describe(&self) -> String;

    /// Whether the connection to the broker is up now.
    fn connected(&self) -> bool {
        true
    }

    /// How many times the connection was lost and recovered.
    fn reconnects(&self) -> u64 {
        0
    }

    /// The node of a cluster the connection is on (`host:port`), if the
    /// broker has nodes.
    fn node(&self) -> Option<String> {
        None
    }

    /// How many times the connection moved to another node of the cluster.
    fn failovers(&self) -> u64 {
        0
    }

    /// The queue of replies nobody waits for, where the broker bounds it.
    fn unclaimed_replies(&self) -> Option<UnclaimedReplies> {
        None
    }

    /// Whether an agent's queue exists (something can receive its messages).
    async fn has_agent(&self, _agent: &str) -> Result<bool> {
        Ok(true)
    }

    /// Keeps what no queue took (see [`amqp::UNROUTABLE`]) in the right
    /// dead-letter queue, until `shutdown`. A host runs it.
    async fn keep_unroutable(&self, shutdown: tokio_util::sync::CancellationToken) {
        shutdown.cancelled().await
    }

    /// Asks every host on this broker `question` (for traces, see
    /// [`crate::trace`]) and returns the answers that came within `wait`.
    /// Hosts share nothing on the embedded broker: no one to ask.
    async fn ask_peers(&self, _question: Vec<u8>, _wait: Duration) -> Result<Vec<Vec<u8>>> {
        Ok(Vec::new())
    }

    /// Answers other hosts' questions with `answer` until `shutdown`. A host
    /// runs it.
    async fn answer_peers(
        &self,
        _answer: PeerAnswers,
        shutdown: tokio_util::sync::CancellationToken,
    ) {
        shutdown.cancelled().await
    }

    /// Declares an agent's queue, binding and dead-letter queue. Idempotent.
    async fn declare_agent(&self, agent: &str) -> Result<()>;

    /// Declares a durable plain queue by name (e.g. for replies). Idempotent.
    async fn declare_queue(&self, name: &str) -> Result<()>;

    /// Publishes and waits until the broker has the message.
    /// Fails with [`Unroutable`] when no queue takes it.
    async fn publish(&self, route: &Route, envelope: Envelope) -> Result<()>;

    /// [`Broker::publish`] for a message the caller keeps (an agent's
    /// output, kept for its trace): a broker that only reads the message
    /// (AMQP) spares the copy; one that stores it takes one.
    async fn publish_kept(&self, route: &Route, envelope: &Envelope) -> Result<()> {
        self.publish(route, envelope.clone()).await
    }

    /// Starts consuming an agent's queue.
    async fn consume(&self, agent: &str) -> Result<Box<dyn Consumer>>;

    /// Declares a private, temporary queue for replies and consumes it.
    async fn reply_queue(&self) -> Result<(String, Box<dyn Consumer>)>;

    /// Puts a message straight into an agent's dead-letter queue.
    async fn dead_letter(&self, agent: &str, envelope: Envelope, reason: &str) -> Result<()>;

    /// Queue health, one row per declared agent.
    async fn stats(&self) -> Result<Vec<QueueStats>>;

    /// The messages in an agent's dead-letter queue (oldest first), left in place.
    async fn dead_letters(&self, agent: &str) -> Result<Vec<DeadLetter>>;

    /// Moves dead letters (the one with `id`, or all) back as first attempts,
    /// each to [`Envelope::replay_route`]. Each is published (confirmed)
    /// before it leaves the dead-letter queue: interrupted, a replay
    /// duplicates at worst, never loses. Only the dead letters present when
    /// it starts are looked at, each once: a replay that fails again and
    /// comes back is not replayed again. One whose destination still does
    /// not exist stays in the dead-letter queue.
    async fn replay_dead_letters(&self, agent: &str, id: Option<&str>) -> Result<Replayed>;

    /// Deletes dead letters (the one with `id`, or all); returns how many.
    async fn purge_dead_letters(&self, agent: &str, id: Option<&str>) -> Result<u64>;

    /// Closes the connection cleanly, once in-flight work is settled.
    async fn close(&self) {}
}
