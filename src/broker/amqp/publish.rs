//! Publishing: persistent, `mandatory`, confirmed, re-sent across a recovery.

use std::sync::atomic::Ordering;
use std::time::Duration;

use anyhow::{Result, bail};
use lapin::options::BasicPublishOptions;
use lapin::{BasicProperties, Channel, Confirmation};
use tracing::warn;

use super::Inner;
use super::headers::{Extra, envelope, properties};
use crate::broker::{Envelope, HEADER_DESTINATION, Route, Unroutable};
use crate::names;

impl Inner {
    /// Publishes with `mandatory` and waits for the confirm, riding out a
    /// connection recovery (the same message, same id, is sent again).
    /// `props` builds the properties for each attempt: lapin takes them by
    /// value, and building them is cheaper than keeping a spare to clone
    /// (a clone and a drop per message, for a retry that rarely comes).
    async fn publish(
        &self,
        exchange: &str,
        routing_key: &str,
        props: &(dyn Fn() -> BasicProperties + Sync),
        body: &[u8],
        route: &Route,
    ) -> Result<()> {
        self.publish_on(&self.publish, exchange, routing_key, props, body, route)
            .await
    }

    async fn publish_on(
        &self,
        channel: &Channel,
        exchange: &str,
        routing_key: &str,
        props: &(dyn Fn() -> BasicProperties + Sync),
        body: &[u8],
        route: &Route,
    ) -> Result<()> {
        // Counted from the first failure: a publish that succeeds (nearly
        // all of them) reads no clock for it.
        let mut deadline = None;
        loop {
            let attempt = async {
                channel
                    .basic_publish(
                        exchange.into(),
                        routing_key.into(),
                        BasicPublishOptions {
                            mandatory: true,
                            ..Default::default()
                        },
                        body,
                        props(),
                    )
                    .await?
                    .await
            }
            .await;
            let error = match attempt {
                Ok(Confirmation::Ack(None)) | Ok(Confirmation::NotRequested) => return Ok(()),
                Ok(Confirmation::Ack(Some(returned))) => {
                    let ours = returned.delivery.routing_key.as_str() == routing_key
                        && returned.delivery.properties.message_id() == props().message_id();
                    if ours {
                        return Err(Unroutable(route.clone()).into());
                    }
                    // When RabbitMQ confirms several publishes with one
                    // `multiple` ack, lapin hands a returned message to
                    // whichever of them it resolves first: this one was
                    // routed, the returned one belongs to another publish
                    // (which saw a plain ack). Keep it here, not nowhere.
                    self.keep_stray_return(returned).await;
                    return Ok(());
                }
                Ok(Confirmation::Nack(_)) => {
                    // The broker could not take it (e.g. a queue's limit): transient.
                    bail!("RabbitMQ refused (nacked) the message to {route}")
                }
                Err(e) => e,
            };
            let now = tokio::time::Instant::now();
            let deadline = *deadline.get_or_insert(now + self.config.recovery_timeout);
            if now >= deadline {
                bail!("publishing to {route} failed and the connection did not recover: {error}");
            }
            warn!("publishing to {route} failed ({error}); waiting for the connection to recover");
            self.wait_for_recovery(channel, error, deadline).await?;
        }
    }

    /// Keeps a returned (unroutable) message that lapin attributed to
    /// another publish (whose caller saw a plain ack and went on):
    ///
    /// - a settling copy (retry or dead letter) whose queue was deleted:
    ///   the queue is declared again and the copy sent again;
    /// - an agent's output: into that agent's dead-letter queue;
    /// - a user's message to an agent that does not exist: into the
    ///   dead-letter queue of the agent it was for.
    fn keep_stray_return(
        &self,
        returned: lapin::message::BasicReturnMessage,
    ) -> futures::future::BoxFuture<'_, ()> {
        Box::pin(async move {
            let routing_key = returned.delivery.routing_key.to_string();
            let exchange = returned.delivery.exchange.to_string();
            let props = returned.delivery.properties.clone();
            if exchange.is_empty()
                && let Some((agent, delay)) = settling_queue(&routing_key)
            {
                let declared = match delay {
                    Some(ms) => {
                        self.forget_delay_queue(&routing_key);
                        self.delay_queue(agent, Duration::from_millis(ms))
                            .await
                            .map(|_| ())
                    }
                    None => self.declare_dead_letter_queue(agent).await,
                };
                let route = Route::Queue(routing_key.clone());
                let sent = match declared {
                    Ok(()) => {
                        self.publish(
                            "",
                            &routing_key,
                            &|| props.clone(),
                            &returned.delivery.data,
                            &route,
                        )
                        .await
                    }
                    Err(e) => Err(e),
                };
                match sent {
                    Ok(()) => {
                        warn!(
                            agent,
                            queue = routing_key,
                            "a settling copy found its queue deleted; declared it again and sent it again"
                        );
                        return;
                    }
                    Err(e) => tracing::error!(
                        agent,
                        queue = routing_key,
                        "sending a settling copy again failed: {e:#}; keeping it in the dead-letter queue"
                    ),
                }
            }
            let (mut env, _) = envelope(&props, returned.delivery.data);
            if env.is_dead_letter_notice() {
                // A copy for information; its dead letter is kept.
                tracing::debug!(id = env.id, "a dead-letter notice had nowhere to go");
                return;
            }
            let destination = match routing_key.strip_prefix("agent.") {
                Some(agent) if exchange == self.config.exchange => Route::Agent(agent.into()),
                _ => Route::Queue(routing_key.clone()),
            };
            env.headers
                .insert(HEADER_DESTINATION.to_string(), destination.tag());
            let (keeper, reason) = match (&env.sender, &destination) {
                (Some(sender), _) => (
                    sender.clone(),
                    format!("no queue is bound to `{routing_key}`: sent by `{sender}`"),
                ),
                (None, Route::Agent(target)) if names::validate(target).is_ok() => (
                    target.clone(),
                    format!(
                        "{}: sent from outside any agent",
                        Unroutable(destination.clone())
                    ),
                ),
                (None, _) => match settling_queue(&routing_key) {
                    Some((agent, _)) => (
                        agent.to_string(),
                        format!(
                            "its queue `{routing_key}` was deleted and could not be declared again"
                        ),
                    ),
                    None => {
                        tracing::error!(
                            id = env.id,
                            routing_key,
                            "a message sent from outside any agent was unroutable and returned by RabbitMQ; nobody can receive it"
                        );
                        return;
                    }
                },
            };
            warn!(agent = keeper, id = env.id, "{reason}; dead-lettered");
            if let Err(e) = self.publish_dead_letter(&keeper, &env, &reason).await {
                tracing::error!(
                    agent = keeper,
                    id = env.id,
                    "dead-lettering a returned message failed: {e:#}"
                );
            }
        })
    }

    pub(super) async fn wait_for_recovery(
        &self,
        channel: &Channel,
        error: lapin::Error,
        deadline: tokio::time::Instant,
    ) -> Result<()> {
        match tokio::time::timeout_at(deadline, channel.wait_for_recovery(error)).await {
            Ok(Ok(())) => {
                self.recoveries.fetch_add(1, Ordering::Relaxed);
                Ok(())
            }
            Ok(Err(e)) => bail!(
                "RabbitMQ connection to {} lost and not recoverable: {e}",
                self.redacted
            ),
            Err(_) => bail!(
                "RabbitMQ connection to {} did not recover within {:?}",
                self.redacted,
                self.config.recovery_timeout
            ),
        }
    }

    /// Publishes a settling copy (a retry into its delay queue, a dead
    /// letter) on a channel of its own, one at a time. Alone in flight, a
    /// returned copy is always reported to its own publish (on the shared
    /// channel, RabbitMQ's `multiple` acks let lapin hand a return to
    /// another publish), so that a copy whose queue is gone is never taken
    /// for delivered, and its original is never acked on the strength of it.
    pub(super) async fn publish_settling(
        &self,
        route: &Route,
        env: &Envelope,
        extra: Extra<'_>,
    ) -> Result<()> {
        let Route::Queue(queue) = route else {
            anyhow::bail!("settling copies go to a queue, not to {route}");
        };
        let _alone = self.settle_lock.lock().await;
        self.publish_on(
            &self.settle,
            "",
            queue,
            &|| self.properties(env, &extra),
            &env.body,
            route,
        )
        .await
    }

    /// What a message is sent with: persistent, unless the host runs
    /// without confirms (`reliable: false`, benchmark mode) — then nothing
    /// is kept on disk either, as the warning at connect says.
    fn properties(&self, env: &Envelope, extra: &Extra<'_>) -> BasicProperties {
        let props = properties(env, extra, self.config.legacy_headers);
        if self.config.reliable {
            props
        } else {
            props.with_delivery_mode(1)
        }
    }

    pub(super) async fn publish_envelope(
        &self,
        route: &Route,
        env: &Envelope,
        extra: Extra<'_>,
    ) -> Result<()> {
        let (exchange, routing_key) = match route {
            Route::Agent(a) => (
                self.config.exchange.as_str(),
                std::borrow::Cow::Owned(names::routing_key(a)),
            ),
            Route::Queue(q) => ("", std::borrow::Cow::Borrowed(q.as_str())),
        };
        self.publish(
            exchange,
            &routing_key,
            &|| self.properties(env, &extra),
            &env.body,
            route,
        )
        .await
    }
}

/// The agent and delay (`None`: the dead-letter queue) of a queue that
/// settling publishes to: `agent_{a}_queue.retry.{n}ms` or `agent_{a}_queue.dlq`.
fn settling_queue(name: &str) -> Option<(&str, Option<u64>)> {
    let rest = name.strip_prefix("agent_")?;
    if let Some(agent) = rest.strip_suffix("_queue.dlq") {
        return Some((agent, None));
    }
    let (agent, delay) = rest.split_once("_queue.retry.")?;
    let ms = delay.strip_suffix("ms")?.parse().ok()?;
    Some((agent, Some(ms)))
}

#[cfg(test)]
mod tests {
    use super::settling_queue;

    #[test]
    fn settling_queues_are_recognised() {
        assert_eq!(settling_queue("agent_a_b_queue.dlq"), Some(("a_b", None)));
        assert_eq!(
            settling_queue("agent_x_queue.retry.64ms"),
            Some(("x", Some(64)))
        );
        assert_eq!(settling_queue("agent_x_queue"), None);
        assert_eq!(settling_queue("warren.reply.1.2.ab"), None);
    }
}
