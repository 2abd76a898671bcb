//! Settling a delivery once its verdict is known: publishing what the
//! agent sent (all confirmed before the input is acked), retrying with
//! backoff, dead-lettering, and telling a waiting sender of a dead letter.

use anyhow::{Context as _, Result};
use tracing::{debug, info, warn};

use super::{Dispatcher, MAX_REASON_BYTES, Planned, backoff};
use crate::broker::{
    Delivery, Envelope, HEADER_DESTINATION, HEADER_TRAPS, Route, Unroutable, bounded,
};
use crate::dispatch::Event;
use crate::metrics::AgentMetrics;
use crate::trace::Outcome;

impl Dispatcher {
    pub(super) async fn publish_all(
        &self,
        agent: &str,
        m: &AgentMetrics,
        planned: &[Planned],
    ) -> Result<()> {
        // All publishes are in flight at once (confirms pipeline); the input
        // is acked only when every one of them is confirmed. One output (the
        // usual answer) is awaited as it is: join_all would cost two
        // allocations per message for nothing.
        if let [p] = planned {
            let result = self.broker.publish_kept(&p.route, &p.envelope).await;
            return self.published(agent, m, p, result).await;
        }
        let results = futures::future::join_all(
            planned
                .iter()
                .map(|p| self.broker.publish_kept(&p.route, &p.envelope)),
        )
        .await;
        for (p, result) in planned.iter().zip(results) {
            self.published(agent, m, p, result).await?;
        }
        Ok(())
    }

    /// What one output's publish came to: counted; an unroutable one kept
    /// in the sender's dead-letter queue; any other failure returned.
    async fn published(
        &self,
        agent: &str,
        m: &AgentMetrics,
        p: &Planned,
        result: Result<()>,
    ) -> Result<()> {
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
                // Remembered so that a replay goes where it was going.
                let mut kept = p.envelope.clone();
                kept.headers
                    .insert(HEADER_DESTINATION.to_string(), p.route.tag());
                let notice = kept.dead_letter_notice(agent, &reason);
                self.broker.dead_letter(agent, kept, &reason).await?;
                self.send_notice(agent, notice).await;
                self.emit(Event::DeadLettered {
                    agent: agent.into(),
                    id: p.envelope.id.clone(),
                    reason,
                });
            }
            Err(e) => return Err(e).with_context(|| format!("publishing to {}", p.route)),
        }
        Ok(())
    }

    pub(super) async fn retry_or_dead_letter(
        &self,
        agent: &str,
        m: &AgentMetrics,
        mut delivery: Delivery,
        reason: String,
        trap: bool,
    ) -> Result<Outcome> {
        let reason = bounded(&reason, MAX_REASON_BYTES).into_owned();
        let attempt = delivery.envelope.attempt;
        if trap {
            let traps = delivery
                .envelope
                .headers
                .get(HEADER_TRAPS)
                .and_then(|t| t.parse::<u32>().ok())
                .unwrap_or(0)
                + 1;
            if traps > self.config.trap_retries {
                let reason =
                    format!("{reason} (gave up after {attempt} attempts, {traps} of them traps)");
                return self.dead_letter(agent, m, delivery, reason).await;
            }
            delivery
                .envelope
                .headers
                .insert(HEADER_TRAPS.to_string(), traps.to_string());
        } else if attempt >= self.config.max_attempts {
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
            reason: reason.clone(),
        });
        Ok(Outcome::Retried {
            delay_ms: delay.as_millis() as u64,
            reason,
        })
    }

    pub(super) async fn dead_letter(
        &self,
        agent: &str,
        m: &AgentMetrics,
        delivery: Delivery,
        reason: String,
    ) -> Result<Outcome> {
        let reason = bounded(&reason, MAX_REASON_BYTES).into_owned();
        let id = delivery.envelope.id.clone();
        let notice = delivery.envelope.dead_letter_notice(agent, &reason);
        warn!(
            agent,
            id,
            conversation = delivery.envelope.conversation_id,
            "dead-lettered: {reason}"
        );
        delivery.dead_letter(&reason).await?;
        self.send_notice(agent, notice).await;
        m.dead_lettered.inc();
        self.note_error(agent, &reason);
        self.emit(Event::DeadLettered {
            agent: agent.into(),
            id,
            reason: reason.clone(),
        });
        Ok(Outcome::DeadLettered { reason })
    }
}

impl Dispatcher {
    /// Tells a waiting `warren send` that its conversation ended in a dead
    /// letter. Best effort: the dead letter itself is already kept.
    async fn send_notice(&self, agent: &str, notice: Option<(Route, Envelope)>) {
        if let Some((route, notice)) = notice
            && let Err(e) = self.broker.publish(&route, notice).await
        {
            debug!(
                agent,
                "the dead-letter notice to {route} was not delivered: {e:#}"
            );
        }
    }
}
