//! Deciding a delivery's verdict: the checks before the agent runs (hop
//! limit, size, decoding, the sender's turn cap), the guest call, and what
//! its answer means (publish, retry, requeue or dead-letter). Settling the
//! verdict is `settle`'s job.

use std::sync::Arc;
use std::time::Duration;

use tracing::warn;

use super::plan::{check_sizes, plan};
use super::{Dispatcher, Planned, to_message};
use crate::broker::{Envelope, HEADER_BAD, HEADER_TRAPS};
use crate::metrics::AgentMetrics;
use crate::runtime::Failure;
use crate::wire::Body;

impl Dispatcher {
    /// Counts an outside publisher may have set, checked: an attempt count
    /// beyond what warren ever produces is a first attempt; a trap count
    /// beyond the budget is capped to it.
    pub(super) fn distrust_outside_counts(&self, agent: &str, env: &mut Envelope) {
        let most = self.config.max_attempts.max(1) + self.config.trap_retries;
        if env.attempt > most {
            warn!(
                agent,
                id = env.id,
                "x-warren-attempt {} is beyond what this host produces (max {most}): counted as a first attempt",
                env.attempt
            );
            env.attempt = 1;
        }
        if let Some(traps) = env.headers.get(HEADER_TRAPS) {
            let traps = traps
                .parse::<u32>()
                .unwrap_or(0)
                .min(self.config.trap_retries + 1);
            env.headers
                .insert(HEADER_TRAPS.to_string(), traps.to_string());
        }
    }

    /// The verdict on one delivery: the checks that need no agent first
    /// (a bad hop header, the hop limit, the size, the body, the sender's
    /// turn cap), then the guest call; `call` keeps what the trace needs.
    pub(super) async fn decide(
        &self,
        agent: &str,
        m: &AgentMetrics,
        env: &Envelope,
        call: &mut Call,
    ) -> Verdict {
        if let Some(bad) = env.headers.get(HEADER_BAD) {
            m.failure("bad-header");
            return Verdict::DeadLetter(format!(
                "bad header: {bad} is not a hop count (a whole number 0..=4294967295); counted as over the hop limit"
            ));
        }
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
            return Verdict::Requeue(format!("agent `{agent}` is not loaded"));
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
        let mut body = match Body::decode(&env.body) {
            Ok(b) => b,
            Err(e) => {
                m.failure("undecodable");
                return Verdict::DeadLetter(format!("undecodable body: {e:#}"));
            }
        };
        if let Some(max) = body.max_turns()
            && u64::from(env.hops) >= max
        {
            m.failure("max-turns");
            return Verdict::DeadLetter(format!(
                "max_turns reached: this would be turn {} of a conversation its sender capped at max_turns = {max}",
                u64::from(env.hops) + 1
            ));
        }
        let msg = to_message(agent, env, &mut body);
        let called = std::time::Instant::now();
        let answer = pool.call_spread(msg).await;
        let guest = called.elapsed();
        m.guest_seconds.observe(guest.as_secs_f64());
        call.guest = Some(guest);
        call.pool = Some(pool.clone());
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
                    trap: false,
                    trace: None,
                }
            }
            Ok(Err(Failure::Reject(reason))) => {
                m.failure("reject");
                Verdict::DeadLetter(format!("rejected by agent: {reason}"))
            }
            Err(guest) => {
                m.failure(guest.kind.label());
                if let Some(trace) = &guest.detail {
                    warn!(
                        agent,
                        id = env.id,
                        "guest failed: {guest}; its stderr:\n{trace}"
                    );
                }
                Verdict::Retry {
                    reason: format!("guest failed: {guest}"),
                    trap: true,
                    trace: guest.detail,
                }
            }
        }
    }
}

/// What a delivery's guest call was, for its trace.
#[derive(Default)]
pub(super) struct Call {
    /// The version that ran (its pool: no copy of its name per message).
    pub(super) pool: Option<Arc<crate::runtime::AgentPool>>,
    pub(super) guest: Option<Duration>,
}

pub(super) enum Verdict {
    Publish {
        planned: Vec<Planned>,
        version: String,
    },
    /// Retry while the budget lasts (`max_attempts`, or for a trap
    /// `trap_retries`), then dead-letter.
    Retry {
        reason: String,
        trap: bool,
        /// The guest's stderr of the failed call, kept on the message.
        trace: Option<String>,
    },
    /// Back to the queue without using an attempt.
    Requeue(String),
    DeadLetter(String),
}
