//! Messages no agent queue took, whoever published them.
//!
//! warren's own publishes are `mandatory`, but an outside publisher (the
//! seed's client, a script) that omits it would lose a message to a missing
//! agent without trace. So the agent exchange is declared with an
//! `alternate-exchange`: the fanout exchange `warren_unroutable`, whose
//! durable queue of the same name keeps every such message. A host consumes
//! that queue and moves each message to a dead-letter queue with its
//! reason and destination, where `warren dlq` shows and replays it:
//!
//! - sent by an agent (a handoff to an agent that does not exist): the
//!   sender's dead-letter queue, as a returned `mandatory` publish would;
//! - from outside: the dead-letter queue of the agent it was meant for
//!   (`warren dlq replay NAME --all` delivers it once the agent exists);
//! - if that agent's queue appeared meanwhile: delivered to it.
//!
//! With `--exchange-durable false` warren declares a missing exchange as the
//! original SwarmRabbitMQ clients do — non-durable and without arguments —
//! because RabbitMQ refuses their `exchange_declare` against an exchange
//! whose durability or arguments differ. An exchange that already exists is
//! used as it is, with a warning that says what differs and what that costs:
//! a policy can add the alternate exchange without redeclaring it
//! (docs/operations.md).

use anyhow::{Context as _, Result};
use futures::StreamExt as _;
use lapin::ExchangeKind;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicQosOptions, ExchangeDeclareOptions,
    QueueBindOptions, QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use super::Inner;
use super::headers::envelope;
use crate::broker::{HEADER_DESTINATION, Route, Unroutable};
use crate::names;

/// The alternate exchange of the agent exchange, and its queue.
pub const UNROUTABLE: &str = "warren_unroutable";

impl Inner {
    /// Declares the alternate exchange and its queue, then the agent
    /// exchange pointing at it (or adopts an existing agent exchange).
    pub(super) async fn declare_exchanges(&self) -> Result<()> {
        let durable = ExchangeDeclareOptions {
            durable: true,
            ..Default::default()
        };
        self.on_temp_channel(|ch| async move {
            ch.exchange_declare(
                UNROUTABLE.into(),
                ExchangeKind::Fanout,
                durable,
                FieldTable::default(),
            )
            .await?;
            ch.queue_declare(
                UNROUTABLE.into(),
                QueueDeclareOptions {
                    durable: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await?;
            ch.queue_bind(
                UNROUTABLE.into(),
                UNROUTABLE.into(),
                "".into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
        })
        .await
        .with_context(|| format!("declaring `{UNROUTABLE}` (alternate exchange and queue)"))?;
        let exchange = self.config.exchange.clone();
        let ours = self.config.exchange_durable;
        let declared = self.declare_agent_exchange(ours, ours).await;
        let error = match declared {
            Ok(()) => {
                *self.exchange_shape.lock().unwrap() = Some((ours, ours));
                return Ok(());
            }
            Err(e) => e.to_string(),
        };
        if !error.contains("PRECONDITION_FAILED") {
            anyhow::bail!("declaring exchange `{exchange}`: {error}");
        }
        // It exists with other settings. Try the usual other shape (the
        // original clients': non-durable, no arguments, or the reverse) to say
        // what differs; a declare that matches changes nothing.
        let cost = if self.declare_agent_exchange(!ours, !ours).await.is_ok() {
            *self.exchange_shape.lock().unwrap() = Some((!ours, !ours));
            if ours {
                format!(
                    "it is not durable: RabbitMQ forgets it and its bindings when it restarts, until a client \
                     declares them again (warren does when it reconnects; an original client when it starts), \
                     and what is published to it meanwhile is refused (warren retries it); it has no alternate exchange `{UNROUTABLE}`, \
                     so a message published without `mandatory` for an agent that does not exist is dropped \
                     (a policy can add one, see docs/operations.md)"
                )
            } else {
                "it is durable, with warren's alternate exchange (warren was told --exchange-durable false): \
                 the original clients' own declare (non-durable, no arguments) fails against it"
                    .to_string()
            }
        } else {
            self.on_temp_channel(|ch| {
                let name = exchange.clone();
                async move {
                    ch.exchange_declare(
                        name.as_str().into(),
                        ExchangeKind::Topic,
                        ExchangeDeclareOptions {
                            passive: true,
                            ..Default::default()
                        },
                        FieldTable::default(),
                    )
                    .await
                }
            })
            .await
            .with_context(|| {
                format!("exchange `{exchange}` exists but cannot be used ({error})")
            })?;
            format!(
                "without its alternate exchange `{UNROUTABLE}`, a message published without `mandatory` to an \
                 agent that does not exist is dropped by RabbitMQ (a policy can add it, see docs/operations.md)"
            )
        };
        warn!(
            exchange,
            "exchange `{exchange}` already exists with other settings than warren's ({error}); using it as it is: {cost}"
        );
        Ok(())
    }

    /// After a reconnect: declares the agent exchange again in the shape it
    /// had, and binds `agent`'s queue to it again. A durable exchange
    /// survives a broker restart and this changes nothing; a non-durable one
    /// (the original clients') is gone with its bindings, and messages to
    /// the agent would have nowhere to go until someone declared them.
    pub(super) async fn restore_routing(&self, agent: &str) -> Result<()> {
        let shape = *self.exchange_shape.lock().unwrap();
        if let Some((durable, alternate)) = shape {
            self.declare_agent_exchange(durable, alternate)
                .await
                .with_context(|| format!("declaring exchange `{}` again", self.config.exchange))?;
        }
        let (q, x, rk) = (
            names::queue(agent),
            self.config.exchange.clone(),
            names::routing_key(agent),
        );
        self.on_temp_channel(|ch| async move {
            ch.queue_bind(
                q.as_str().into(),
                x.as_str().into(),
                rk.as_str().into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
        })
        .await
        .with_context(|| format!("binding the queue of `{agent}` again"))
    }

    /// Declares the agent exchange: topic, `durable` or not, with warren's
    /// alternate exchange or without arguments.
    async fn declare_agent_exchange(&self, durable: bool, alternate: bool) -> Result<()> {
        let mut args = FieldTable::default();
        if alternate {
            args.insert(
                "alternate-exchange".into(),
                AMQPValue::LongString(UNROUTABLE.into()),
            );
        }
        let name = self.config.exchange.clone();
        self.on_temp_channel(|ch| async move {
            ch.exchange_declare(
                name.as_str().into(),
                ExchangeKind::Topic,
                ExchangeDeclareOptions {
                    durable,
                    ..Default::default()
                },
                args,
            )
            .await
        })
        .await
        .map_err(Into::into)
    }

    /// Moves what arrives in `warren_unroutable` to where it is kept (see
    /// the module doc), until `shutdown`.
    pub(super) async fn move_unroutable(&self, shutdown: CancellationToken) -> Result<()> {
        let channel = self.connection.create_channel().await?;
        channel.basic_qos(16, BasicQosOptions::default()).await?;
        let mut consumer = channel
            .basic_consume(
                UNROUTABLE.into(),
                "".into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
            .with_context(|| format!("consuming `{UNROUTABLE}`"))?;
        loop {
            let next = tokio::select! {
                _ = shutdown.cancelled() => break,
                next = consumer.next() => next,
            };
            let d = match next {
                Some(Ok(d)) => d,
                Some(Err(e)) => {
                    let deadline = tokio::time::Instant::now() + self.config.recovery_timeout;
                    self.wait_for_recovery(&channel, e, deadline).await?;
                    continue;
                }
                None => break,
            };
            let routing_key = d.routing_key.to_string();
            let (mut env, _) = envelope(&d.properties, d.data);
            let target = routing_key
                .strip_prefix("agent.")
                .filter(|a| names::validate(a).is_ok())
                .map(str::to_string);
            let moved = async {
                if let Some(target) = &target {
                    // It may exist by now (an agent loaded meanwhile).
                    if self.queue_counts(&names::queue(target)).await?.is_some() {
                        let route = Route::Queue(names::queue(target));
                        self.publish_envelope(&route, &env, Default::default())
                            .await?;
                        info!(
                            agent = target,
                            id = env.id,
                            "a message that was unroutable is delivered: its agent exists now"
                        );
                        return Ok::<_, anyhow::Error>(());
                    }
                }
                let missing = match &target {
                    Some(t) => Unroutable(Route::Agent(t.clone())).to_string(),
                    None => format!("no queue is bound to `{routing_key}`"),
                };
                let (keeper, reason) = match (&env.sender, &target) {
                    (Some(sender), _) if names::validate(sender).is_ok() => {
                        (sender.clone(), format!("{missing}: sent by `{sender}`"))
                    }
                    (_, Some(target)) => (
                        target.clone(),
                        format!("{missing}: published from outside warren, without `mandatory`"),
                    ),
                    _ => {
                        error!(
                            id = env.id,
                            routing_key,
                            "an unroutable message for no agent stays in `{UNROUTABLE}`.dlq"
                        );
                        let route = Route::Queue(format!("{UNROUTABLE}.dlq"));
                        self.declare_queue(&format!("{UNROUTABLE}.dlq"), FieldTable::default(), "")
                            .await?;
                        return self
                            .publish_envelope(&route, &env, Default::default())
                            .await;
                    }
                };
                if let Some(t) = &target {
                    env.headers.insert(
                        HEADER_DESTINATION.to_string(),
                        Route::Agent(t.clone()).tag(),
                    );
                }
                warn!(agent = keeper, id = env.id, "{reason}; dead-lettered");
                self.publish_dead_letter(&keeper, &env, &reason).await?;
                if let Some((route, notice)) = env.dead_letter_notice(&keeper, &reason)
                    && let Err(e) = self
                        .publish_envelope(&route, &notice, Default::default())
                        .await
                {
                    tracing::debug!(
                        id = env.id,
                        "the dead-letter notice was not delivered: {e:#}"
                    );
                }
                Ok(())
            }
            .await;
            match moved {
                Ok(()) => {
                    let _ = d.acker.ack(BasicAckOptions::default()).await;
                }
                Err(e) => {
                    // Left unacked: it goes back to the queue with the channel.
                    error!(id = env.id, "moving an unroutable message failed: {e:#}");
                    let _ = channel.close(200, "retry later".into()).await;
                    return Err(e);
                }
            }
        }
        let _ = channel.close(200, "done".into()).await;
        Ok(())
    }
}
