//! Publishing: persistent, `mandatory`, confirmed, re-sent across a recovery.

use std::sync::atomic::Ordering;

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
    async fn publish(
        &self,
        exchange: &str,
        routing_key: &str,
        props: BasicProperties,
        body: &[u8],
        route: &Route,
    ) -> Result<()> {
        let deadline = tokio::time::Instant::now() + self.config.recovery_timeout;
        loop {
            let attempt = async {
                self.publish
                    .basic_publish(
                        exchange.into(),
                        routing_key.into(),
                        BasicPublishOptions {
                            mandatory: true,
                            ..Default::default()
                        },
                        body,
                        props.clone(),
                    )
                    .await?
                    .await
            }
            .await;
            let error = match attempt {
                Ok(Confirmation::Ack(None)) | Ok(Confirmation::NotRequested) => return Ok(()),
                Ok(Confirmation::Ack(Some(returned))) => {
                    let ours = returned.delivery.routing_key.as_str() == routing_key
                        && returned.delivery.properties.message_id() == props.message_id();
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
            if tokio::time::Instant::now() >= deadline {
                bail!("publishing to {route} failed and the connection did not recover: {error}");
            }
            warn!("publishing to {route} failed ({error}); waiting for the connection to recover");
            self.wait_for_recovery(&self.publish, error, deadline)
                .await?;
        }
    }

    /// Dead-letters a returned (unroutable) message that lapin attributed
    /// to another publish, into the sending agent's dead-letter queue.
    fn keep_stray_return(
        &self,
        returned: lapin::message::BasicReturnMessage,
    ) -> futures::future::BoxFuture<'_, ()> {
        Box::pin(async move {
            let routing_key = returned.delivery.routing_key.to_string();
            let exchange = returned.delivery.exchange.to_string();
            let (mut env, _) = envelope(&returned.delivery.properties, returned.delivery.data);
            let destination = match routing_key.strip_prefix("agent.") {
                Some(agent) if exchange == self.config.exchange => Route::Agent(agent.into()),
                _ => Route::Queue(routing_key.clone()),
            };
            env.headers
                .insert(HEADER_DESTINATION.to_string(), destination.tag());
            let Some(agent) = env.sender.clone() else {
                tracing::error!(
                    id = env.id,
                    routing_key,
                    "a message sent from outside any agent was unroutable and returned by RabbitMQ; nobody can receive it"
                );
                return;
            };
            let reason = format!("no queue is bound to `{routing_key}`: sent by `{agent}`");
            warn!(agent, id = env.id, "{reason}; dead-lettered");
            let dlq = Route::Queue(names::dead_letter_queue(&agent));
            let extra = Extra {
                reason: Some(&reason),
                ..Default::default()
            };
            if let Err(e) = self.publish_envelope(&dlq, &env, extra).await {
                tracing::error!(
                    agent,
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

    pub(super) async fn publish_envelope(
        &self,
        route: &Route,
        env: &Envelope,
        extra: Extra<'_>,
    ) -> Result<()> {
        let (exchange, routing_key) = match route {
            Route::Agent(a) => (self.config.exchange.as_str(), names::routing_key(a)),
            Route::Queue(q) => ("", q.clone()),
        };
        self.publish(
            exchange,
            &routing_key,
            properties(env, &extra),
            &env.body,
            route,
        )
        .await
    }
}
