//! An agent's dead-letter queue: peek, replay, purge.
//!
//! Every operation works on a snapshot: the number of messages in the queue
//! when it starts. A replayed message that fails again is dead-lettered to
//! the tail of the same queue, behind the snapshot, so it is not taken again
//! (a replay of a still-broken agent ends, instead of cycling forever).

use anyhow::{Context as _, Result};
use lapin::options::{BasicAckOptions, BasicGetOptions};

use super::Inner;
use super::headers::{Extra, envelope};
use crate::broker::{DeadLetter, Replayed, Unroutable};
use crate::names;

fn no_dead_letter_queue(agent: &str) -> String {
    format!(
        "agent `{agent}` has no dead-letter queue (`{}` does not exist): is the agent name right, and is this its vhost?",
        names::dead_letter_queue(agent)
    )
}

impl Inner {
    /// Gets the agent's dead letters unacked on a private channel, then
    /// closes it, which puts them all back in order.
    pub(super) async fn peek_dead_letters(&self, agent: &str) -> Result<Vec<DeadLetter>> {
        let dlq = names::dead_letter_queue(agent);
        if self.queue_counts(&dlq).await?.is_none() {
            anyhow::bail!(no_dead_letter_queue(agent));
        }
        let channel = self.connection.create_channel().await?;
        let mut out = Vec::new();
        while let Some(msg) = channel
            .basic_get(dlq.as_str().into(), BasicGetOptions { no_ack: false })
            .await
            .with_context(|| format!("reading `{dlq}`"))?
        {
            let d = msg.delivery;
            let (env, reason) = envelope(&d.properties, d.data);
            out.push(DeadLetter {
                agent: agent.to_string(),
                reason: reason.unwrap_or_default(),
                envelope: env,
            });
        }
        let _ = channel.close(200, "peeked".into()).await;
        Ok(out)
    }

    /// Takes dead letters (the one with `id`, or all) off the agent's
    /// dead-letter queue, among those present when it starts; with `replay`,
    /// each is first published to where it goes (confirmed) and only then
    /// acked off the DLQ. The others, and those whose destination does not
    /// exist, are left unacked and go back when the channel closes.
    pub(super) async fn take_dead_letters(
        &self,
        agent: &str,
        id: Option<&str>,
        replay: bool,
    ) -> Result<Replayed> {
        let dlq = names::dead_letter_queue(agent);
        let snapshot = match self.queue_counts(&dlq).await? {
            Some((ready, _)) => ready,
            None => anyhow::bail!(no_dead_letter_queue(agent)),
        };
        let channel = self.connection.create_channel().await?;
        let mut done = Replayed::default();
        let result = async {
            for _ in 0..snapshot {
                let Some(msg) = channel
                    .basic_get(dlq.as_str().into(), BasicGetOptions { no_ack: false })
                    .await
                    .with_context(|| format!("reading `{dlq}`"))?
                else {
                    break;
                };
                let d = msg.delivery;
                let (env, _reason) = envelope(&d.properties, d.data);
                if id.is_some_and(|id| env.id != id) {
                    continue;
                }
                if replay {
                    let route = env.replay_route(agent);
                    let published = self
                        .publish_envelope(&route, &env.clone().for_replay(), Extra::default())
                        .await;
                    match published {
                        Ok(()) => {}
                        Err(e) if e.downcast_ref::<Unroutable>().is_some() => {
                            // Still nowhere to go: it stays a dead letter.
                            done.undeliverable += 1;
                            continue;
                        }
                        Err(e) => return Err(e),
                    }
                }
                let removed = d
                    .acker
                    .ack(BasicAckOptions::default())
                    .await
                    .with_context(|| format!("removing a message from `{dlq}`"))?;
                if !removed {
                    // The channel went away between the publish and the ack:
                    // the message is back in the DLQ although its copy left.
                    let done_what = if replay { "replayed" } else { "purged" };
                    anyhow::bail!(
                        "message {} was {done_what} but the connection was lost before it left `{dlq}`; \
                         it is still there: check it with `warren dlq show {agent} --id {}`",
                        env.id,
                        env.id
                    );
                }
                done.ids.push(env.id);
                if id.is_some() {
                    break;
                }
            }
            Ok::<_, anyhow::Error>(())
        }
        .await;
        let _ = channel.close(200, "dead letters taken".into()).await;
        result.map(|()| done)
    }
}
