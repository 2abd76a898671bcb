//! Traces as a host serves them: its own hops, masked, joined with what
//! the other hosts on the broker answer (see [`crate::trace`]).

use std::sync::Arc;
use std::time::Duration;

use anyhow::Result;

use super::Host;
use crate::broker::{Broker, PeerAnswers};
use crate::trace::peers::{Answer, Ask, Question, Trace};
use crate::trace::{Hop, Recent, mask};

impl Host {
    /// A conversation, hop by hop: this host's hops and those of every
    /// host on the broker that answers within `wait`.
    pub async fn trace(&self, conversation_id: &str, wait: Duration) -> Trace {
        let mut hops = self.local_hops(conversation_id);
        let ask = Ask::Trace {
            conversation_id: conversation_id.to_string(),
        };
        let answers = ask_peers(self.broker.as_ref(), self.trace.host(), ask, wait).await;
        let answered = 1 + answers.len();
        hops.extend(answers.into_iter().flat_map(|a| a.hops));
        Trace::assemble(conversation_id, hops, answered)
    }

    /// The latest conversations seen here and by the hosts that answer
    /// within `wait`, newest first.
    pub async fn recent_conversations(&self, limit: usize, wait: Duration) -> Vec<Recent> {
        let mut all = self.trace.recent(limit);
        let ask = Ask::Recent { limit };
        for answer in ask_peers(self.broker.as_ref(), self.trace.host(), ask, wait).await {
            for r in answer.recent {
                match all
                    .iter_mut()
                    .find(|a| a.conversation_id == r.conversation_id)
                {
                    Some(a) => {
                        a.hops += r.hops;
                        if r.last_at_ms > a.last_at_ms {
                            a.last_at_ms = r.last_at_ms;
                            a.last_outcome = r.last_outcome;
                        }
                    }
                    None => all.push(r),
                }
            }
        }
        all.sort_by(|a, b| b.last_at_ms.cmp(&a.last_at_ms));
        all.truncate(limit);
        all
    }

    /// This host's hops of a conversation, masked.
    fn local_hops(&self, conversation_id: &str) -> Vec<Hop> {
        self.trace
            .conversation(conversation_id)
            .into_iter()
            .map(|h| self.masked(h))
            .collect()
    }

    /// A hop as a person may see it: bodies and reasons masked with the
    /// secrets of the agent that handled it.
    fn masked(&self, mut hop: Hop) -> Hop {
        let pool = self.registry.get(&hop.agent);
        let secrets = pool.as_ref().map(|p| p.limits().settings.as_ref());
        if !hop.received.cut {
            hop.received.text = mask::body(&hop.received.text, secrets);
        }
        for s in &mut hop.sent {
            if !s.body.cut {
                s.body.text = mask::body(&s.body.text, secrets);
            }
        }
        hop.outcome = match hop.outcome {
            crate::trace::Outcome::Retried { delay_ms, reason } => crate::trace::Outcome::Retried {
                delay_ms,
                reason: mask::text(&reason, secrets),
            },
            crate::trace::Outcome::DeadLettered { reason } => crate::trace::Outcome::DeadLettered {
                reason: mask::text(&reason, secrets),
            },
            other => other,
        };
        hop
    }
}

/// How this host answers the others' questions. Holds the host weakly: the
/// answering task must not keep it alive.
pub(super) fn answerer(host: &Arc<Host>) -> PeerAnswers {
    let host = Arc::downgrade(host);
    Arc::new(move |bytes: &[u8]| {
        let host = host.upgrade()?;
        let question: Question = serde_json::from_slice(bytes).ok()?;
        if question.from == host.trace.host() {
            return None;
        }
        let mut answer = Answer {
            host: host.trace.host().to_string(),
            ..Default::default()
        };
        match question.ask {
            Ask::Trace { conversation_id } => answer.hops = host.local_hops(&conversation_id),
            Ask::Recent { limit } => answer.recent = host.trace.recent(limit.min(500)),
        }
        serde_json::to_vec(&answer).ok()
    })
}

/// Asks every host on `broker` (a failure to ask is logged: a trace is
/// then what this host knows).
async fn ask_peers(broker: &dyn Broker, from: &str, ask: Ask, wait: Duration) -> Vec<Answer> {
    ask_all(broker, from, ask, wait).await.unwrap_or_else(|e| {
        tracing::warn!("asking the other hosts for their hops: {e:#}");
        Vec::new()
    })
}

async fn ask_all(broker: &dyn Broker, from: &str, ask: Ask, wait: Duration) -> Result<Vec<Answer>> {
    let question = Question {
        from: from.to_string(),
        ask,
    };
    let answers = broker
        .ask_peers(serde_json::to_vec(&question)?, wait)
        .await?;
    Ok(answers
        .iter()
        .filter_map(|a| serde_json::from_slice(a).ok())
        .collect())
}

/// A trace asked of every host on `broker` by a process that hosts nothing
/// (`warren trace` on RabbitMQ).
pub async fn remote_trace(
    broker: &dyn Broker,
    conversation_id: &str,
    wait: Duration,
) -> Result<Trace> {
    let from = format!("warren-trace/{}", std::process::id());
    let ask = Ask::Trace {
        conversation_id: conversation_id.to_string(),
    };
    let answers = ask_all(broker, &from, ask, wait).await?;
    let answered = answers.len();
    let hops = answers.into_iter().flat_map(|a| a.hops).collect();
    Ok(Trace::assemble(conversation_id, hops, answered))
}
