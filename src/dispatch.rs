//! The loop in the middle: delivery → decode → agent → publish every outgoing
//! message → (all confirmed) → ack.
//!
//! Every way a delivery can end is decided here, and each ends in exactly one
//! settlement with a reason a person can read:
//!
//! | outcome                               | settlement                                  |
//! |---------------------------------------|---------------------------------------------|
//! | agent returned outgoing messages      | publish all, then `ack`                     |
//! | `failure::retry`                      | `retry` with backoff; dead-letter at max    |
//! | `failure::reject`                     | dead-letter at once                         |
//! | trap / deadline / memory limit        | retry on a fresh instance `trap_retries` times, then dead-letter |
//! | undecodable body, invalid output      | dead-letter at once (retrying cannot help)  |
//! | more than `max_hops` hops             | dead-letter as a loop                       |
//! | publishing failed (broker trouble)    | `retry`: outgoing ids are deterministic, so a retry re-publishes the same ids |

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, Result, bail};
use futures::StreamExt as _;
use rand::Rng;
use serde::Serialize;
use sha2::{Digest, Sha256};
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::broker::{
    Broker, Consumer, Delivery, Envelope, HEADER_AGENT_VERSION, Route, Unroutable,
};
use crate::metrics::{AgentMetrics, Metrics};
use crate::names;
use crate::registry::Registry;
use crate::runtime::{ChatMessage, Destination, Failure, Message, Outgoing};
use crate::wire::{self, Body};

/// The queue that takes replies of conversations started without a reply-to.
pub const REPLIES_QUEUE: &str = "warren_replies";

/// Retry and loop policy.
#[derive(Debug, Clone)]
pub struct DispatchConfig {
    /// Deliveries of one message before it is dead-lettered (`retry` failures).
    pub max_attempts: u32,
    /// Retries after a trap (on a fresh instance) before dead-lettering.
    /// Traps are usually deterministic, so the default is one: enough to rule
    /// out state left behind by an earlier message in a reused instance.
    pub trap_retries: u32,
    /// Agent-to-agent hops a conversation may take before it counts as a loop.
    pub max_hops: u32,
    /// First retry delay; doubles with each attempt, with jitter.
    pub backoff_base: Duration,
    /// Longest retry delay.
    pub backoff_cap: Duration,
    /// Concurrent consumers per agent.
    pub consumers_per_agent: usize,
    /// Most messages one `on-message` call may return (host-wide default;
    /// an agent's manifest may override it).
    pub max_outgoing: usize,
    /// Largest body accepted in or produced out, in bytes (default, as above).
    pub max_message_bytes: usize,
    /// Deliveries one consumer handles at once. Above 1, publisher confirms
    /// of different deliveries overlap instead of queueing one behind another
    /// (the Wasm calls themselves are bounded by the agent's instance pool).
    pub in_flight_per_consumer: usize,
}

impl Default for DispatchConfig {
    fn default() -> Self {
        DispatchConfig {
            max_attempts: 5,
            trap_retries: 1,
            max_hops: 16,
            backoff_base: Duration::from_millis(200),
            backoff_cap: Duration::from_secs(30),
            consumers_per_agent: 4,
            in_flight_per_consumer: 8,
            max_outgoing: 64,
            max_message_bytes: 1 << 20,
        }
    }
}

/// What happened to a delivery; broadcast for the demo, tests and monitoring.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Event {
    Handled {
        agent: String,
        version: String,
        id: String,
        conversation_id: String,
        attempt: u32,
        outgoing: Vec<Sent>,
    },
    Retrying {
        agent: String,
        id: String,
        attempt: u32,
        delay_ms: u64,
        reason: String,
    },
    DeadLettered {
        agent: String,
        id: String,
        reason: String,
    },
}

/// One message an agent sent.
#[derive(Debug, Clone, Serialize)]
pub struct Sent {
    pub id: String,
    /// `agent.NAME`, or the reply queue.
    pub to: String,
    /// The last chat message's content.
    pub text: String,
}

/// An outgoing message resolved to a route and an envelope, ready to publish.
#[derive(Debug, Clone)]
pub struct Planned {
    pub route: Route,
    pub envelope: Envelope,
    pub body: Body,
}

pub struct Dispatcher {
    broker: Arc<dyn Broker>,
    registry: Arc<Registry>,
    config: DispatchConfig,
    events: broadcast::Sender<Event>,
    metrics: Arc<Metrics>,
    /// Per agent, the latest reason a message was retried or dead-lettered.
    last_errors: std::sync::Mutex<std::collections::HashMap<String, String>>,
}

impl Dispatcher {
    pub fn new(
        broker: Arc<dyn Broker>,
        registry: Arc<Registry>,
        config: DispatchConfig,
        metrics: Arc<Metrics>,
    ) -> Self {
        Dispatcher {
            broker,
            registry,
            config,
            events: broadcast::channel(1024).0,
            metrics,
            last_errors: Default::default(),
        }
    }

    pub fn subscribe(&self) -> broadcast::Receiver<Event> {
        self.events.subscribe()
    }

    pub fn config(&self) -> &DispatchConfig {
        &self.config
    }

    /// The latest reason a message of `agent` was retried or dead-lettered.
    pub fn last_error(&self, agent: &str) -> Option<String> {
        self.last_errors.lock().unwrap().get(agent).cloned()
    }

    fn note_error(&self, agent: &str, reason: &str) {
        self.last_errors
            .lock()
            .unwrap()
            .insert(agent.to_string(), reason.to_string());
    }

    /// Whether anyone listens: events are built only then (hot path).
    fn observed(&self) -> bool {
        self.events.receiver_count() > 0
    }

    fn emit(&self, event: Event) {
        // No subscribers is normal; events are for whoever listens.
        let _ = self.events.send(event);
    }

    /// Consumes until `shutdown`; an in-flight message is always finished
    /// (published and settled) before the worker stops.
    pub async fn run_consumer(
        self: Arc<Self>,
        agent: String,
        mut consumer: Box<dyn Consumer>,
        shutdown: CancellationToken,
    ) {
        let max = self.config.in_flight_per_consumer.max(1);
        let metrics = self.metrics.agent(&agent);
        let mut in_flight = futures::stream::FuturesUnordered::new();
        loop {
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => break,
                Some(()) = in_flight.next(), if !in_flight.is_empty() => {}
                d = consumer.next(), if in_flight.len() < max => match d {
                    Some(d) => in_flight.push(self.handle(&agent, &metrics, d)),
                    None => break,
                },
            }
        }
        // Stop taking deliveries, but finish (publish and settle) what was taken.
        while in_flight.next().await.is_some() {}
        consumer.stop().await;
        debug!(agent, "consumer stopped");
    }

    /// Handles one delivery to its settlement. Never fails: every error ends
    /// in a retry or a dead letter, and a settlement error is logged (the
    /// broker then redelivers the unsettled message).
    pub async fn handle(&self, agent: &str, m: &AgentMetrics, delivery: Delivery) {
        let started = std::time::Instant::now();
        m.received.inc();
        m.in_flight.inc();
        self.handle_inner(agent, m, delivery).await;
        m.in_flight.dec();
        m.processing_seconds
            .observe(started.elapsed().as_secs_f64());
    }

    async fn handle_inner(&self, agent: &str, m: &AgentMetrics, delivery: Delivery) {
        let id = delivery.envelope.id.clone();
        let conversation = delivery.envelope.conversation_id.clone();
        let attempt = delivery.envelope.attempt;
        let verdict = self.decide(agent, m, &delivery.envelope).await;
        let settled = match verdict {
            Verdict::Publish { planned, version } => {
                let conversation_id = delivery.envelope.conversation_id.clone();
                match self.publish_all(agent, m, &planned).await {
                    Ok(()) => {
                        let r = delivery.ack().await;
                        if r.is_ok() {
                            m.acked.inc();
                        }
                        if self.observed() {
                            self.emit(Event::Handled {
                                agent: agent.into(),
                                version,
                                id: id.clone(),
                                conversation_id,
                                attempt,
                                outgoing: planned.iter().map(sent).collect(),
                            });
                        }
                        r
                    }
                    Err(e) => {
                        m.failure("publish");
                        let reason = format!("publishing its output failed: {e:#}");
                        self.retry_or_dead_letter(
                            agent,
                            m,
                            delivery,
                            reason,
                            self.config.max_attempts,
                        )
                        .await
                    }
                }
            }
            Verdict::Retry { reason, budget } => {
                self.retry_or_dead_letter(agent, m, delivery, reason, budget)
                    .await
            }
            Verdict::DeadLetter(reason) => self.dead_letter(agent, m, delivery, reason).await,
        };
        if let Err(e) = settled {
            warn!(
                agent,
                id, conversation, "settling the message failed (it will be redelivered): {e:#}"
            );
        }
    }

    async fn decide(&self, agent: &str, m: &AgentMetrics, env: &Envelope) -> Verdict {
        if env.hops > self.config.max_hops {
            m.failure("hop-limit");
            return Verdict::DeadLetter(format!(
                "hop limit exceeded: {} hops (max {}), the conversation is looping (last sender: {})",
                env.hops,
                self.config.max_hops,
                env.sender.as_deref().unwrap_or("none")
            ));
        }
        let Some(pool) = self.registry.get(agent) else {
            // Unloaded between delivery and now (hot swap): try again later.
            m.failure("not-loaded");
            return Verdict::Retry {
                reason: format!("agent `{agent}` is not loaded"),
                budget: self.config.max_attempts,
            };
        };
        let limits = pool.limits();
        if env.body.len() > limits.max_message_bytes {
            m.failure("too-large");
            return Verdict::DeadLetter(format!(
                "message too large: {} bytes (max {})",
                env.body.len(),
                limits.max_message_bytes
            ));
        }
        let body = match Body::decode(&env.body) {
            Ok(b) => b,
            Err(e) => {
                m.failure("undecodable");
                return Verdict::DeadLetter(format!("undecodable body: {e:#}"));
            }
        };
        let msg = to_message(agent, env, &body);
        let called = std::time::Instant::now();
        let answer = pool.call(&msg).await;
        m.guest_seconds.observe(called.elapsed().as_secs_f64());
        match answer {
            Ok(Ok(outgoing)) if outgoing.len() > limits.max_outgoing => {
                m.failure("invalid-output");
                Verdict::DeadLetter(format!(
                    "invalid output from agent: {} outgoing messages (max {})",
                    outgoing.len(),
                    limits.max_outgoing
                ))
            }
            Ok(Ok(outgoing)) => match plan(agent, pool.version(), env, &body, outgoing)
                .and_then(|p| check_sizes(p, limits.max_message_bytes))
            {
                Ok(planned) => Verdict::Publish {
                    planned,
                    version: pool.version().to_string(),
                },
                Err(e) => {
                    m.failure("invalid-output");
                    Verdict::DeadLetter(format!("invalid output from agent: {e:#}"))
                }
            },
            Ok(Err(Failure::Retry(reason))) => {
                m.failure("retry");
                Verdict::Retry {
                    reason: format!("agent asked to retry: {reason}"),
                    budget: self.config.max_attempts,
                }
            }
            Ok(Err(Failure::Reject(reason))) => {
                m.failure("reject");
                Verdict::DeadLetter(format!("rejected by agent: {reason}"))
            }
            Err(guest) => {
                m.failure(guest.kind.label());
                Verdict::Retry {
                    reason: format!("guest failed: {guest}"),
                    budget: 1 + self.config.trap_retries,
                }
            }
        }
    }

    async fn publish_all(&self, agent: &str, m: &AgentMetrics, planned: &[Planned]) -> Result<()> {
        // All publishes are in flight at once (confirms pipeline); the input
        // is acked only when every one of them is confirmed.
        let results = futures::future::join_all(
            planned
                .iter()
                .map(|p| self.broker.publish(&p.route, p.envelope.clone())),
        )
        .await;
        for (p, result) in planned.iter().zip(results) {
            match result {
                Ok(()) => {
                    m.published.inc();
                }
                Err(e) if e.downcast_ref::<Unroutable>().is_some() => {
                    m.failure("unroutable");
                    m.dead_lettered.inc();
                    // Nobody would ever receive it: keep it, with the reason, in
                    // the sending agent's dead-letter queue instead of losing it.
                    let reason = format!("{e}: sent by `{agent}`");
                    warn!(
                        agent,
                        id = p.envelope.id,
                        conversation = p.envelope.conversation_id,
                        "{reason}; dead-lettered"
                    );
                    self.broker
                        .dead_letter(agent, p.envelope.clone(), &reason)
                        .await?;
                    self.emit(Event::DeadLettered {
                        agent: agent.into(),
                        id: p.envelope.id.clone(),
                        reason,
                    });
                }
                Err(e) => return Err(e).with_context(|| format!("publishing to {}", p.route)),
            }
        }
        Ok(())
    }

    async fn retry_or_dead_letter(
        &self,
        agent: &str,
        m: &AgentMetrics,
        delivery: Delivery,
        reason: String,
        budget: u32,
    ) -> Result<()> {
        let attempt = delivery.envelope.attempt;
        if attempt >= budget {
            let reason = format!("{reason} (gave up after {attempt} attempts)");
            return self.dead_letter(agent, m, delivery, reason).await;
        }
        let delay = backoff(&self.config, attempt);
        let id = delivery.envelope.id.clone();
        info!(
            agent,
            id,
            conversation = delivery.envelope.conversation_id,
            attempt,
            delay_ms = delay.as_millis() as u64,
            "retrying: {reason}"
        );
        delivery.retry(delay, &reason).await?;
        m.retried.inc();
        self.note_error(agent, &reason);
        self.emit(Event::Retrying {
            agent: agent.into(),
            id,
            attempt,
            delay_ms: delay.as_millis() as u64,
            reason,
        });
        Ok(())
    }

    async fn dead_letter(
        &self,
        agent: &str,
        m: &AgentMetrics,
        delivery: Delivery,
        reason: String,
    ) -> Result<()> {
        let id = delivery.envelope.id.clone();
        warn!(
            agent,
            id,
            conversation = delivery.envelope.conversation_id,
            "dead-lettered: {reason}"
        );
        delivery.dead_letter(&reason).await?;
        m.dead_lettered.inc();
        self.note_error(agent, &reason);
        self.emit(Event::DeadLettered {
            agent: agent.into(),
            id,
            reason,
        });
        Ok(())
    }
}

enum Verdict {
    Publish {
        planned: Vec<Planned>,
        version: String,
    },
    /// Retry while `attempt < budget`, then dead-letter.
    Retry {
        reason: String,
        budget: u32,
    },
    DeadLetter(String),
}

fn sent(p: &Planned) -> Sent {
    Sent {
        id: p.envelope.id.clone(),
        to: match &p.route {
            Route::Agent(a) => names::routing_key(a),
            Route::Queue(q) => q.clone(),
        },
        text: p
            .body
            .messages
            .last()
            .map(|m| m.content.clone())
            .unwrap_or_default(),
    }
}

/// The WIT message an agent receives for an envelope.
pub fn to_message(agent: &str, env: &Envelope, body: &Body) -> Message {
    Message {
        id: env.id.clone(),
        conversation_id: env.conversation_id.clone(),
        sender: env.sender.clone().or_else(|| body.from_agent.clone()),
        recipient: agent.to_string(),
        messages: body
            .messages
            .iter()
            .map(|m| ChatMessage {
                role: m.role.clone(),
                content: m.content.clone(),
            })
            .collect(),
        context: serde_json::Value::Object(body.context_variables.clone()).to_string(),
        attempt: env.attempt.max(1),
        hops: env.hops,
    }
}

/// Checks an agent's output and turns it into envelopes: deterministic ids,
/// the conversation and reply-to carried along, hops + 1.
pub fn plan(
    agent: &str,
    version: &str,
    input: &Envelope,
    body: &Body,
    outgoing: Vec<Outgoing>,
) -> Result<Vec<Planned>> {
    outgoing
        .into_iter()
        .enumerate()
        .map(|(i, out)| {
            plan_one(agent, version, input, body, i, out)
                .with_context(|| format!("outgoing message #{i}"))
        })
        .collect()
}

fn plan_one(
    agent: &str,
    version: &str,
    input: &Envelope,
    body: &Body,
    index: usize,
    out: Outgoing,
) -> Result<Planned> {
    let route = match out.to {
        Destination::Agent(name) => {
            let to = names::normalise(&name);
            names::validate(&to).context("bad destination")?;
            Route::Agent(to)
        }
        Destination::Reply => Route::Queue(
            input
                .reply_to
                .clone()
                .unwrap_or_else(|| REPLIES_QUEUE.into()),
        ),
    };
    let context_variables = match out.context {
        Some(text) => wire::parse_context(&text)?,
        None => body.context_variables.clone(),
    };
    let body = Body {
        messages: out
            .messages
            .into_iter()
            .map(|m| wire::ChatMessage {
                role: m.role,
                content: m.content,
            })
            .collect(),
        context_variables,
        from_agent: Some(agent.to_string()),
    };
    let mut headers = std::collections::BTreeMap::new();
    headers.insert(HEADER_AGENT_VERSION.to_string(), version.to_string());
    let envelope = Envelope {
        id: derive_id(&input.id, index),
        conversation_id: input.conversation_id.clone(),
        reply_to: input.reply_to.clone(),
        sender: Some(agent.to_string()),
        hops: input.hops + 1,
        attempt: 1,
        timestamp: now_millis(),
        headers,
        body: body.encode(),
    };
    Ok(Planned {
        route,
        envelope,
        body,
    })
}

fn check_sizes(planned: Vec<Planned>, max: usize) -> Result<Vec<Planned>> {
    for (i, p) in planned.iter().enumerate() {
        if p.envelope.body.len() > max {
            bail!(
                "outgoing message #{i} is too large: {} bytes (max {max})",
                p.envelope.body.len()
            );
        }
    }
    Ok(planned)
}

/// The id of the `index`-th message produced from message `id`: the same
/// input always yields the same ids, so a redelivered input can be told
/// apart from new work downstream.
pub fn derive_id(id: &str, index: usize) -> String {
    let digest = Sha256::digest(format!("{id}/{index}").as_bytes());
    format!("m-{}", &hex::encode(digest)[..24])
}

/// A fresh random message id.
pub fn new_id() -> String {
    format!("m-{:024x}", rand::rng().random::<u128>() >> 32)
}

pub fn now_millis() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Exponential backoff with "equal jitter": half the delay is fixed, half random.
pub fn backoff(config: &DispatchConfig, attempt: u32) -> Duration {
    let exp = config
        .backoff_base
        .saturating_mul(1u32 << attempt.saturating_sub(1).min(20));
    let full = exp.min(config.backoff_cap);
    let half = full / 2;
    half + half.mul_f64(rand::rng().random::<f64>())
}

/// Builds a user's first message, as `warren send` and the seed's `client.run` do.
pub fn user_envelope(
    text: &str,
    context: serde_json::Map<String, serde_json::Value>,
    reply_to: Option<String>,
) -> Envelope {
    let id = new_id();
    Envelope {
        conversation_id: id.clone(),
        id,
        reply_to,
        sender: None,
        hops: 0,
        attempt: 1,
        timestamp: now_millis(),
        headers: Default::default(),
        body: Body::user(text, context).encode(),
    }
}

/// Checks that a routing target exists before a user publishes to it.
pub fn check_agent_name(agent: &str) -> Result<String> {
    let name = names::normalise(agent);
    if let Err(e) = names::validate(&name) {
        bail!("bad agent name `{agent}`: {e}");
    }
    Ok(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_deterministic_and_distinct() {
        assert_eq!(derive_id("a", 0), derive_id("a", 0));
        assert_ne!(derive_id("a", 0), derive_id("a", 1));
        assert_ne!(derive_id("a", 0), derive_id("b", 0));
    }

    #[test]
    fn backoff_grows_and_is_capped() {
        let c = DispatchConfig {
            backoff_base: Duration::from_millis(100),
            backoff_cap: Duration::from_secs(1),
            ..Default::default()
        };
        let d1 = backoff(&c, 1);
        assert!(d1 >= Duration::from_millis(50) && d1 <= Duration::from_millis(100));
        let d3 = backoff(&c, 3);
        assert!(d3 >= Duration::from_millis(200) && d3 <= Duration::from_millis(400));
        assert!(backoff(&c, 30) <= Duration::from_secs(1));
    }
}
