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
//! | more turns than the body's `max_turns`| dead-letter (the sender's own cap)          |
//! | unreadable hop count header           | dead-letter (counted as over the hop limit) |
//! | agent not loaded (being removed)      | back to its queue, no attempt used          |
//! | publishing failed (broker trouble)    | `retry`: outgoing ids are deterministic, so a retry re-publishes the same ids |
//! | settling failed                       | logged, counted; the transport gives the message back (never held) |
//!
//! Attempts and traps are counted apart: `max_attempts` bounds deliveries
//! that end in `retry` (agent-requested, or publishing trouble); a trap gets
//! its `trap_retries` on a fresh instance whatever the attempt count. The
//! default schedule (`backoff`: 500 ms doubling, equal jitter, 30 s cap,
//! 10 attempts) waits between 61 and 122 s in all before dead-lettering, so
//! an endpoint that rate-limits for a minute does not cost the message.
//!
//! An attempt count set by an outside publisher is trusted only within the
//! configured budget: above `max_attempts + trap_retries` (which warren never
//! produces) it counts as a first attempt, with a warning.

use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use tokio::sync::broadcast;
use tracing::{debug, info, warn};

use crate::broker::{Broker, Delivery, Envelope, HEADER_GUEST_TRACE, Route, bounded};
use crate::metrics::{AgentMetrics, Metrics};
use crate::registry::Registry;
use crate::trace::{HopEnd, HopStart, Outcome, Received, TraceLog};
use crate::wire::Body;

mod consume;
mod decide;
mod plan;
mod settle;
mod trouble;

pub use trouble::SettleTrouble;

pub use crate::contract::to_message;

use decide::{Call, Verdict};
use plan::sent;
pub use plan::{
    backoff, body_envelope, check_agent_name, derive_id, new_id, now_millis, plan, user_envelope,
};

/// The queue that takes replies of conversations started without a reply-to.
pub const REPLIES_QUEUE: &str = "warren_replies";

/// Longest failure reason kept (headers, status, logs); an agent's error
/// text can be any length.
pub const MAX_REASON_BYTES: usize = 4096;

/// How long a delivery for an agent that is being unloaded waits before it
/// goes back to its queue (its consumers are stopping).
const NOT_LOADED_PAUSE: Duration = Duration::from_millis(200);

/// How long after a failed settlement an agent counts as in trouble
/// (`/readyz`, status).
pub const SETTLE_TROUBLE_WINDOW: Duration = Duration::from_secs(60);

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

/// Consumers (channels) per agent unless configured: two, not more (see
/// `broker::amqp::DEFAULT_PREFETCH`); a heavy agent's calls use every core
/// whatever the count (`runtime::spread`).
pub const DEFAULT_CONSUMERS: usize = 2;

/// Deliveries each consumer handles at once unless configured (see
/// `broker::amqp::DEFAULT_PREFETCH`: the two go together).
pub const DEFAULT_IN_FLIGHT: usize = 512;

impl Default for DispatchConfig {
    fn default() -> Self {
        DispatchConfig {
            max_attempts: 10,
            trap_retries: 1,
            max_hops: 16,
            backoff_base: Duration::from_millis(500),
            backoff_cap: Duration::from_secs(30),
            consumers_per_agent: DEFAULT_CONSUMERS,
            in_flight_per_consumer: DEFAULT_IN_FLIGHT,
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
    /// Every delivery's hop, for conversation traces.
    trace: Arc<TraceLog>,
    /// Per agent, the latest reason a message was retried or dead-lettered.
    last_errors: std::sync::Mutex<std::collections::HashMap<String, String>>,
    /// Per agent, failed settlements: how many, the latest reason and when.
    settle_failures: std::sync::Mutex<std::collections::HashMap<String, SettleTrouble>>,
    /// Whether `settle_failures` may hold anything (spares the lock per
    /// message when it does not).
    settle_trouble_seen: std::sync::atomic::AtomicBool,
}

impl Dispatcher {
    pub fn new(
        broker: Arc<dyn Broker>,
        registry: Arc<Registry>,
        config: DispatchConfig,
        metrics: Arc<Metrics>,
        trace: Arc<TraceLog>,
    ) -> Self {
        Dispatcher {
            broker,
            registry,
            config,
            events: broadcast::channel(1024).0,
            metrics,
            trace,
            last_errors: Default::default(),
            settle_failures: Default::default(),
            settle_trouble_seen: Default::default(),
        }
    }

    pub fn subscribe(&self) -> broadcast::Receiver<Event> {
        self.events.subscribe()
    }

    pub fn config(&self) -> &DispatchConfig {
        &self.config
    }

    /// Whether anyone listens: events are built only then (hot path).
    fn observed(&self) -> bool {
        self.events.receiver_count() > 0
    }

    fn emit(&self, event: Event) {
        // No subscribers is normal; events are for whoever listens.
        let _ = self.events.send(event);
    }

    /// Handles one delivery to its settlement. Never fails: every error ends
    /// in a retry or a dead letter, and a settlement error is logged (the
    /// broker then redelivers the unsettled message).
    pub async fn handle(
        &self,
        agent: &str,
        m: &AgentMetrics,
        delivery: Delivery,
        slot: tokio::sync::OwnedSemaphorePermit,
    ) {
        let started = std::time::Instant::now();
        m.received.inc();
        m.in_flight.inc();
        self.handle_inner(agent, m, delivery, slot).await;
        m.in_flight.dec();
        m.processing_seconds
            .observe(started.elapsed().as_secs_f64());
    }

    /// `slot` is the consumer's slot for this delivery: kept until the
    /// outcome is published, given back before the ack.
    async fn handle_inner(
        &self,
        agent: &str,
        m: &AgentMetrics,
        mut delivery: Delivery,
        slot: tokio::sync::OwnedSemaphorePermit,
    ) {
        if delivery.already_handled().await {
            let id = delivery.envelope.id.clone();
            info!(
                agent,
                id,
                "redelivery of a message already handled (its ack was lost in a reconnect): acked, not handled twice"
            );
            if let Err(e) = delivery.ack().await {
                debug!(agent, id, "acking a redelivered duplicate: {e:#}");
            }
            return;
        }
        self.distrust_outside_counts(agent, &mut delivery.envelope);
        let id = delivery.envelope.id.clone();
        let conversation = delivery.envelope.conversation_id.clone();
        let attempt = delivery.envelope.attempt;
        let hop = self
            .trace
            .enabled()
            .then(|| HopStart::new(&delivery.envelope));
        let mut call = Call::default();
        let verdict = self.decide(agent, m, &delivery.envelope, &mut call).await;
        let mut published = Vec::new();
        // The received body for the trace: moved out where the settlement
        // no longer needs it (an ack), copied where it does (a retry or
        // dead letter republishes it; rare).
        let mut received = Received::default();
        let settled = match verdict {
            Verdict::Publish { planned, version } => {
                match self.publish_all(agent, m, &planned).await {
                    Ok(()) => {
                        if hop.is_some() {
                            received = Received::take(&mut delivery.envelope);
                        }
                        drop(slot);
                        let r = delivery.ack().await;
                        if r.is_ok() {
                            m.acked.inc();
                        }
                        if self.observed() {
                            self.emit(Event::Handled {
                                agent: agent.into(),
                                version,
                                id: id.clone(),
                                conversation_id: conversation.clone(),
                                attempt,
                                outgoing: planned.iter().map(sent).collect(),
                            });
                        }
                        published = planned;
                        r.map(|()| Outcome::Handled)
                    }
                    Err(e) => {
                        if hop.is_some() {
                            received = Received::copy(&delivery.envelope);
                        }
                        m.failure("publish");
                        let reason = format!("publishing its output failed: {e:#}");
                        self.retry_or_dead_letter(agent, m, delivery, reason, false)
                            .await
                    }
                }
            }
            Verdict::Retry {
                reason,
                trap,
                trace,
            } => {
                if hop.is_some() {
                    received = Received::copy(&delivery.envelope);
                }
                if let Some(trace) = trace {
                    let trace = bounded(&trace, MAX_REASON_BYTES).into_owned();
                    delivery
                        .envelope
                        .headers
                        .insert(HEADER_GUEST_TRACE.to_string(), trace);
                }
                self.retry_or_dead_letter(agent, m, delivery, reason, trap)
                    .await
            }
            Verdict::Requeue(reason) => {
                if hop.is_some() {
                    received = Received::copy(&delivery.envelope);
                }
                debug!(agent, id, "{reason}: back to the queue");
                tokio::time::sleep(NOT_LOADED_PAUSE).await;
                // Dropped unsettled: the transport gives it back to its queue.
                drop(delivery);
                Ok(Outcome::Requeued { reason })
            }
            Verdict::DeadLetter(reason) => {
                if hop.is_some() {
                    received = Received::copy(&delivery.envelope);
                }
                self.dead_letter(agent, m, delivery, reason).await
            }
        };
        let outcome = match settled {
            Err(e) => {
                let reason = bounded(&format!("{e:#}"), MAX_REASON_BYTES).into_owned();
                warn!(
                    agent,
                    id, conversation, "settling the message failed: {reason}"
                );
                m.failure("settle");
                self.note_settle_failure(agent, reason.clone());
                Outcome::SettleFailed { reason }
            }
            Ok(outcome) => {
                self.note_settle_success(agent);
                outcome
            }
        };
        if let Some(hop) = hop {
            self.trace.record(
                hop,
                HopEnd {
                    conversation_id: &conversation,
                    id: &id,
                    agent,
                    version: call.pool.as_ref().map(|p| p.version()),
                    guest: call.guest,
                    outcome,
                    received: &received,
                },
                published
                    .iter()
                    .map(|p| (p.envelope.id.as_str(), &p.route, p.envelope.body.as_slice())),
            );
        }
    }
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
