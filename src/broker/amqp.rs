//! The RabbitMQ transport (lapin 4 on tokio).
//!
//! Topology, seed-compatible: a durable topic exchange (default
//! `agent_exchange`); per agent a durable queue `agent_{name}_queue` bound with
//! `agent.{name}` (declared without extra arguments, so a queue the seed
//! already made is accepted as it is), and a durable dead-letter queue
//! `agent_{name}_queue.dlq`.
//!
//! Retries wait in delay queues, not in a consumer: `agent_{name}_queue.retry.{N}ms`
//! holds a message for its per-message expiration, then RabbitMQ dead-letters
//! it back to the agent's queue (`x-dead-letter-exchange` = the default
//! exchange). One delay queue per power-of-two delay bucket keeps a short delay
//! from queueing behind a long one (RabbitMQ only expires a queue's head).
//!
//! Every publish is persistent, `mandatory` and confirmed; confirms are
//! pipelined (each publish awaits only its own confirm). A returned message
//! becomes [`Unroutable`]. Settling a delivery by retry or dead-letter first
//! publishes the copy (confirmed), then acks the original: a crash in between
//! duplicates, never loses.
//!
//! Recovery is lapin's own (`enable_auto_recover`): the connection, channels,
//! QoS, confirm mode, declarations and consumers are replayed. Publishes and
//! consumers that fail meanwhile wait for the recovery (bounded by
//! `recovery_timeout`) and carry on; a publish is re-sent with the same id.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context as _, Result, anyhow, bail};
use async_trait::async_trait;
use futures::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicGetOptions, BasicNackOptions,
    BasicPublishOptions, BasicQosOptions, ConfirmSelectOptions, ExchangeDeclareOptions,
    QueueBindOptions, QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::{
    BasicProperties, Channel, Confirmation, Connection, ConnectionProperties, ExchangeKind,
};
use sha2::{Digest, Sha256};
use tracing::{debug, info, warn};

use super::{
    Acker, Broker, Consumer, DeadLetter, Delivery, Envelope, QueueStats, Route, Unroutable,
};
use crate::names;

/// Header: the agent that produced the message.
pub const HEADER_SENDER: &str = "x-warren-sender";
/// Header: agent hops so far.
pub const HEADER_HOPS: &str = "x-warren-hops";
/// Header: delivery attempt, 1 on the first delivery.
pub const HEADER_ATTEMPT: &str = "x-warren-attempt";
/// Header on a dead letter: why it was given up on.
pub const HEADER_REASON: &str = "x-warren-reason";

/// The queue type for agent queues.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum QueueType {
    /// RabbitMQ's classic queue (what the seed declares).
    #[default]
    Classic,
    /// Replicated quorum queue.
    Quorum,
}

/// How to reach RabbitMQ and shape the topology.
#[derive(Debug, Clone)]
pub struct AmqpConfig {
    /// `amqp://` or `amqps://` URL, credentials included.
    pub url: String,
    /// The topic exchange agents are bound to.
    pub exchange: String,
    /// Unacknowledged deliveries per consumer.
    pub prefetch: u16,
    pub queue_type: QueueType,
    /// Longest wait for lapin's recovery before an operation fails.
    pub recovery_timeout: Duration,
    /// Publisher confirms and persistent messages. Only benchmarks turn this
    /// off: without it a broker crash or an unroutable message loses data.
    pub reliable: bool,
}

impl AmqpConfig {
    pub fn new(url: impl Into<String>) -> Self {
        AmqpConfig {
            url: url.into(),
            exchange: "agent_exchange".into(),
            prefetch: 8,
            queue_type: QueueType::Classic,
            recovery_timeout: Duration::from_secs(120),
            reliable: true,
        }
    }
}

/// The URL with its password replaced by `***`, for every log line and error.
pub fn redact(url: &str) -> String {
    let Some(scheme_end) = url.find("://").map(|i| i + 3) else {
        return url.to_string();
    };
    let rest = &url[scheme_end..];
    let authority_end = rest.find('/').unwrap_or(rest.len());
    match rest[..authority_end].rfind('@') {
        Some(at) => {
            let userinfo = &rest[..at];
            let user = userinfo.split(':').next().unwrap_or("");
            let masked = if userinfo.contains(':') {
                format!("{user}:***")
            } else {
                user.to_string()
            };
            format!("{}{masked}{}", &url[..scheme_end], &rest[at..])
        }
        None => url.to_string(),
    }
}

/// The RabbitMQ broker. Cheap to clone.
#[derive(Clone)]
pub struct AmqpBroker {
    inner: Arc<Inner>,
}

struct Inner {
    config: AmqpConfig,
    redacted: String,
    connection: Connection,
    /// Confirm-mode channel shared by every publish (lapin pipelines them).
    publish: Channel,
    /// Agents this process declared or was told about, for `stats`.
    agents: Mutex<BTreeSet<String>>,
    /// Delay queues already declared by this process.
    delay_queues: Mutex<BTreeSet<String>>,
    seq: AtomicU64,
    /// Times an operation waited for a connection recovery (and got it).
    recoveries: AtomicU64,
}

impl AmqpBroker {
    /// Connects (retrying with backoff), declares the exchange and opens the
    /// publishing channel in confirm mode.
    pub async fn connect(config: AmqpConfig) -> Result<Self> {
        let redacted = redact(&config.url);
        let props = ConnectionProperties::default()
            .with_connection_name(format!("warren {}", std::process::id()).into())
            .enable_auto_recover();
        let connection = Connection::connect(&config.url, props).await.map_err(|e| {
            anyhow!(
                "cannot connect to RabbitMQ at {redacted}: {}",
                scrub(&e.to_string(), &config.url)
            )
        })?;
        let publish = connection
            .create_channel()
            .await
            .context("opening the publish channel")?;
        if config.reliable {
            publish
                .confirm_select(ConfirmSelectOptions::default())
                .await
                .context("enabling publisher confirms")?;
        } else {
            warn!(
                "publisher confirms and persistence are OFF: messages can be lost (benchmark mode)"
            );
        }
        publish
            .exchange_declare(
                config.exchange.as_str().into(),
                ExchangeKind::Topic,
                ExchangeDeclareOptions {
                    durable: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await
            .with_context(|| format!("declaring exchange `{}`", config.exchange))?;
        info!(
            "connected to RabbitMQ at {redacted} (exchange `{}`)",
            config.exchange
        );
        Ok(AmqpBroker {
            inner: Arc::new(Inner {
                config,
                redacted,
                connection,
                publish,
                agents: Mutex::new(BTreeSet::new()),
                delay_queues: Mutex::new(BTreeSet::new()),
                seq: AtomicU64::new(0),
                recoveries: AtomicU64::new(0),
            }),
        })
    }

    /// Adds agents to those `stats` reports (e.g. the plugins folder's, when
    /// `warren status` runs in a process that declared nothing).
    pub fn watch_agents<I: IntoIterator<Item = String>>(&self, agents: I) {
        self.inner.agents.lock().unwrap().extend(agents);
    }

    pub fn config(&self) -> &AmqpConfig {
        &self.inner.config
    }

    /// How many times a publish or a consumer rode out a connection recovery.
    pub fn recoveries(&self) -> u64 {
        self.inner.recoveries.load(Ordering::Relaxed)
    }
}

impl Inner {
    fn queue_args(&self) -> FieldTable {
        let mut args = FieldTable::default();
        if self.config.queue_type == QueueType::Quorum {
            args.insert(
                "x-queue-type".into(),
                AMQPValue::LongString("quorum".into()),
            );
        }
        args
    }

    /// Runs `op` on a channel of its own: a refused declaration (404/406)
    /// closes the channel it ran on, and must not take a shared one with it.
    async fn on_temp_channel<T, F, Fut>(&self, op: F) -> Result<T, lapin::Error>
    where
        F: FnOnce(Channel) -> Fut,
        Fut: std::future::Future<Output = Result<T, lapin::Error>>,
    {
        let channel = self.connection.create_channel().await?;
        let result = op(channel.clone()).await;
        if channel.status().connected() {
            let _ = channel.close(200, "done".into()).await;
        }
        result
    }

    async fn declare_queue(&self, name: &str, args: FieldTable) -> Result<()> {
        let name_s: ShortString = name.into();
        self.on_temp_channel(|ch| async move {
            ch.queue_declare(
                name_s,
                QueueDeclareOptions {
                    durable: true,
                    ..Default::default()
                },
                args,
            )
            .await
            .map(|_| ())
        })
        .await
        .map_err(|e| {
            let text = e.to_string();
            if text.contains("PRECONDITION_FAILED") || text.contains("inequivalent") {
                anyhow!(
                    "queue `{name}` already exists with other arguments ({text}); \
                     delete it or match its type with --queue-type"
                )
            } else {
                anyhow!("declaring queue `{name}`: {text}")
            }
        })
    }

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
            let (env, _) = envelope(&returned.delivery.properties, returned.delivery.data);
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

    async fn wait_for_recovery(
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

    async fn publish_envelope(
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

    /// The delay queue for `delay`: one per power-of-two bucket of milliseconds.
    async fn delay_queue(&self, agent: &str, delay: Duration) -> Result<String> {
        let ms = (delay.as_millis() as u64).max(1);
        let bucket = ms.next_power_of_two();
        let name = format!("{}.retry.{bucket}ms", names::queue(agent));
        if self.delay_queues.lock().unwrap().contains(&name) {
            return Ok(name);
        }
        let mut args = self.queue_args();
        args.insert(
            "x-dead-letter-exchange".into(),
            AMQPValue::LongString("".into()),
        );
        args.insert(
            "x-dead-letter-routing-key".into(),
            AMQPValue::LongString(names::queue(agent).into()),
        );
        self.declare_queue(&name, args).await?;
        self.delay_queues.lock().unwrap().insert(name.clone());
        Ok(name)
    }

    /// Gets every message of an agent's dead-letter queue unacked on a
    /// private channel, then closes it, which puts them all back in order.
    async fn peek_dead_letters(&self, agent: &str) -> Result<Vec<DeadLetter>> {
        let dlq = names::dead_letter_queue(agent);
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
    /// dead-letter queue; with `replay`, each is first published back to
    /// the agent's queue (confirmed) and only then acked off the DLQ. The
    /// others are left unacked and go back when the channel closes.
    async fn take_dead_letters(&self, agent: &str, id: Option<&str>, replay: bool) -> Result<u64> {
        let dlq = names::dead_letter_queue(agent);
        let channel = self.connection.create_channel().await?;
        let mut n = 0;
        let result = async {
            while let Some(msg) = channel
                .basic_get(dlq.as_str().into(), BasicGetOptions { no_ack: false })
                .await
                .with_context(|| format!("reading `{dlq}`"))?
            {
                let d = msg.delivery;
                let (env, _reason) = envelope(&d.properties, d.data);
                if id.is_some_and(|id| env.id != id) {
                    continue;
                }
                if replay {
                    let route = Route::Agent(agent.to_string());
                    self.publish_envelope(&route, &env.for_replay(), Extra::default())
                        .await?;
                }
                d.acker
                    .ack(BasicAckOptions::default())
                    .await
                    .with_context(|| format!("removing a message from `{dlq}`"))?;
                n += 1;
            }
            Ok::<_, anyhow::Error>(())
        }
        .await;
        let _ = channel.close(200, "dead letters taken".into()).await;
        result.map(|()| n)
    }

    async fn queue_counts(&self, name: &str) -> Result<Option<(u64, u32)>> {
        let name_s: ShortString = name.into();
        let result = self
            .on_temp_channel(|ch| async move {
                ch.queue_declare(
                    name_s,
                    QueueDeclareOptions {
                        passive: true,
                        ..Default::default()
                    },
                    FieldTable::default(),
                )
                .await
            })
            .await;
        match result {
            Ok(q) => Ok(Some((q.message_count() as u64, q.consumer_count()))),
            Err(e) if e.to_string().contains("NOT_FOUND") => Ok(None),
            Err(e) => Err(anyhow!("inspecting queue `{name}`: {e}")),
        }
    }
}

/// Extra properties for a copy made while settling.
#[derive(Default)]
struct Extra<'a> {
    expiration: Option<Duration>,
    reason: Option<&'a str>,
}

fn properties(env: &Envelope, extra: &Extra<'_>) -> BasicProperties {
    let mut headers = FieldTable::default();
    for (k, v) in &env.headers {
        headers.insert(k.as_str().into(), AMQPValue::LongString(v.as_str().into()));
    }
    if let Some(sender) = &env.sender {
        headers.insert(
            HEADER_SENDER.into(),
            AMQPValue::LongString(sender.as_str().into()),
        );
    }
    // Defaults (hops 0, attempt 1) are left out: every header costs the
    // broker on every message (see BENCHMARKS.md), and absent means default.
    if env.hops > 0 {
        headers.insert(HEADER_HOPS.into(), AMQPValue::LongLongInt(env.hops as i64));
    }
    if env.attempt > 1 {
        headers.insert(
            HEADER_ATTEMPT.into(),
            AMQPValue::LongLongInt(env.attempt as i64),
        );
    }
    if let Some(reason) = extra.reason {
        headers.insert(HEADER_REASON.into(), AMQPValue::LongString(reason.into()));
    }
    let mut props = BasicProperties::default()
        .with_delivery_mode(2)
        .with_content_type("application/json".into())
        .with_message_id(env.id.as_str().into())
        .with_correlation_id(env.conversation_id.as_str().into())
        .with_timestamp(env.timestamp / 1000)
        .with_headers(headers);
    if let Some(reply_to) = &env.reply_to {
        props = props.with_reply_to(reply_to.as_str().into());
    }
    if let Some(delay) = extra.expiration {
        props = props.with_expiration(delay.as_millis().max(1).to_string().into());
    }
    props
}

fn header_str(v: &AMQPValue) -> Option<String> {
    match v {
        AMQPValue::LongString(s) => Some(String::from_utf8_lossy(s.as_bytes()).into_owned()),
        AMQPValue::ShortString(s) => Some(s.as_str().to_string()),
        _ => None,
    }
}

fn header_u32(v: &AMQPValue) -> Option<u32> {
    match v {
        AMQPValue::LongLongInt(n) => u32::try_from(*n).ok(),
        AMQPValue::LongInt(n) => u32::try_from(*n).ok(),
        AMQPValue::LongUInt(n) => Some(*n),
        AMQPValue::ShortInt(n) => u32::try_from(*n).ok(),
        AMQPValue::ShortUInt(n) => Some(*n as u32),
        AMQPValue::ShortShortInt(n) => u32::try_from(*n).ok(),
        AMQPValue::ShortShortUInt(n) => Some(*n as u32),
        other => header_str(other).and_then(|s| s.parse().ok()),
    }
}

/// An envelope from an AMQP message. A message from a plain client (the
/// seed) has no id: it gets one derived from its body, so that a redelivery
/// keeps the same id and produces the same outgoing ids.
fn envelope(props: &BasicProperties, body: Vec<u8>) -> (Envelope, Option<String>) {
    let mut env = Envelope {
        id: props
            .message_id()
            .as_ref()
            .map(|s| s.as_str().to_string())
            .unwrap_or_default(),
        attempt: 1,
        ..Default::default()
    };
    if env.id.is_empty() {
        env.id = format!("m-{}", &hex::encode(Sha256::digest(&body))[..24]);
    }
    env.conversation_id = props
        .correlation_id()
        .as_ref()
        .map(|s| s.as_str().to_string())
        .unwrap_or_else(|| env.id.clone());
    env.reply_to = props.reply_to().as_ref().map(|s| s.as_str().to_string());
    env.timestamp = props.timestamp().map(|t| t * 1000).unwrap_or(0);
    let mut reason = None;
    if let Some(headers) = props.headers() {
        for (k, v) in headers.inner() {
            match k.as_str() {
                HEADER_SENDER => env.sender = header_str(v),
                HEADER_HOPS => env.hops = header_u32(v).unwrap_or(0),
                HEADER_ATTEMPT => env.attempt = header_u32(v).unwrap_or(1).max(1),
                HEADER_REASON => reason = header_str(v),
                k if k.starts_with("x-warren-") => {
                    if let Some(s) = header_str(v) {
                        env.headers.insert(k.to_string(), s);
                    }
                }
                _ => {}
            }
        }
    }
    env.body = body;
    (env, reason)
}

/// Removes the URL (and so the password) from a lapin error message.
fn scrub(text: &str, url: &str) -> String {
    text.replace(url, &redact(url))
}

#[async_trait]
impl Broker for AmqpBroker {
    fn describe(&self) -> String {
        format!(
            "RabbitMQ at {} (exchange `{}`)",
            self.inner.redacted, self.inner.config.exchange
        )
    }

    fn connected(&self) -> bool {
        self.inner.connection.status().connected()
    }

    fn reconnects(&self) -> u64 {
        self.recoveries()
    }

    async fn declare_agent(&self, agent: &str) -> Result<()> {
        names::validate(agent)?;
        let inner = &self.inner;
        let queue = names::queue(agent);
        inner.declare_queue(&queue, inner.queue_args()).await?;
        let (q, x, rk): (ShortString, ShortString, ShortString) = (
            queue.as_str().into(),
            inner.config.exchange.as_str().into(),
            names::routing_key(agent).into(),
        );
        inner
            .on_temp_channel(|ch| async move {
                ch.queue_bind(q, x, rk, QueueBindOptions::default(), FieldTable::default())
                    .await
            })
            .await
            .with_context(|| format!("binding `{queue}` to `{}`", inner.config.exchange))?;
        inner
            .declare_queue(&names::dead_letter_queue(agent), inner.queue_args())
            .await?;
        inner.agents.lock().unwrap().insert(agent.to_string());
        Ok(())
    }

    async fn declare_queue(&self, name: &str) -> Result<()> {
        self.inner.declare_queue(name, FieldTable::default()).await
    }

    async fn publish(&self, route: &Route, envelope: Envelope) -> Result<()> {
        self.inner
            .publish_envelope(route, &envelope, Extra::default())
            .await
    }

    async fn consume(&self, agent: &str) -> Result<Box<dyn Consumer>> {
        let inner = &self.inner;
        let channel = inner
            .connection
            .create_channel()
            .await
            .context("opening a consumer channel")?;
        channel
            .basic_qos(inner.config.prefetch, BasicQosOptions::default())
            .await
            .context("setting the prefetch")?;
        let n = inner.seq.fetch_add(1, Ordering::Relaxed);
        let tag = format!("warren-{agent}-{}-{n}", std::process::id());
        let consumer = channel
            .basic_consume(
                names::queue(agent).into(),
                tag.as_str().into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
            .with_context(|| format!("consuming `{}`", names::queue(agent)))?;
        Ok(Box::new(AmqpConsumer {
            inner: self.inner.clone(),
            agent: Some(agent.to_string()),
            channel,
            consumer,
        }))
    }

    async fn reply_queue(&self) -> Result<(String, Box<dyn Consumer>)> {
        let inner = &self.inner;
        // A client-chosen name (not a server-named one) so that lapin's
        // recovery re-declares the same queue the reply-to points at.
        let name = format!(
            "warren.reply.{}.{}.{}",
            std::process::id(),
            inner.seq.fetch_add(1, Ordering::Relaxed),
            &crate::dispatch::new_id()[2..10]
        );
        let channel = inner.connection.create_channel().await?;
        channel
            .queue_declare(
                name.as_str().into(),
                QueueDeclareOptions {
                    exclusive: true,
                    auto_delete: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await
            .context("declaring the reply queue")?;
        let consumer = channel
            .basic_consume(
                name.as_str().into(),
                "".into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
            .context("consuming the reply queue")?;
        let consumer = AmqpConsumer {
            inner: self.inner.clone(),
            agent: None,
            channel,
            consumer,
        };
        Ok((name, Box::new(consumer)))
    }

    async fn dead_letter(&self, agent: &str, envelope: Envelope, reason: &str) -> Result<()> {
        let route = Route::Queue(names::dead_letter_queue(agent));
        let extra = Extra {
            reason: Some(reason),
            ..Default::default()
        };
        self.inner.publish_envelope(&route, &envelope, extra).await
    }

    async fn stats(&self) -> Result<Vec<QueueStats>> {
        let agents: Vec<String> = self.inner.agents.lock().unwrap().iter().cloned().collect();
        let mut rows = Vec::new();
        for agent in agents {
            let queue = names::queue(&agent);
            let dlq = names::dead_letter_queue(&agent);
            let main = self.inner.queue_counts(&queue).await?;
            let dead = self.inner.queue_counts(&dlq).await?;
            let (message_count, consumer_count) = main.unwrap_or((0, 0));
            let status = match (main, consumer_count) {
                (None, _) => "missing",
                (Some(_), 0) => "idle",
                _ => "active",
            };
            rows.push(QueueStats {
                routing_key: names::routing_key(&agent),
                dead_letter_queue: dlq,
                message_count,
                consumer_count,
                // Not visible over AMQP (the management API has it).
                unacked: 0,
                delayed: 0,
                dead_letter_count: dead.map(|d| d.0).unwrap_or(0),
                status: status.into(),
                agent,
                queue,
            });
        }
        Ok(rows)
    }

    async fn dead_letters(&self, agent: &str) -> Result<Vec<DeadLetter>> {
        // A peek is read-only (everything it took goes back when its channel
        // closes), so one failed attempt is simply made again.
        match self.inner.peek_dead_letters(agent).await {
            Ok(out) => Ok(out),
            Err(e) => {
                debug!(
                    agent,
                    "peeking the dead-letter queue failed, once more: {e:#}"
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
                self.inner.peek_dead_letters(agent).await
            }
        }
    }

    async fn replay_dead_letters(&self, agent: &str, id: Option<&str>) -> Result<u64> {
        self.inner.take_dead_letters(agent, id, true).await
    }

    async fn purge_dead_letters(&self, agent: &str, id: Option<&str>) -> Result<u64> {
        self.inner.take_dead_letters(agent, id, false).await
    }

    async fn close(&self) {
        if let Err(e) = self
            .inner
            .connection
            .close(200, "warren shutting down".into())
            .await
        {
            debug!("closing the AMQP connection: {e}");
        }
    }
}

struct AmqpConsumer {
    inner: Arc<Inner>,
    /// The agent whose queue this is; `None` for a reply queue.
    agent: Option<String>,
    channel: Channel,
    consumer: lapin::Consumer,
}

#[async_trait]
impl Consumer for AmqpConsumer {
    async fn next(&mut self) -> Option<Delivery> {
        loop {
            match self.consumer.next().await {
                Some(Ok(d)) => {
                    let (env, _) = envelope(&d.properties, d.data);
                    let acker = AmqpAcker {
                        inner: self.inner.clone(),
                        agent: self.agent.clone(),
                        acker: d.acker,
                    };
                    return Some(Delivery::new(env, Box::new(acker)));
                }
                Some(Err(e)) => {
                    let what = self.agent.as_deref().unwrap_or("reply queue");
                    warn!(
                        agent = what,
                        "consumer lost its channel ({e}); waiting for recovery"
                    );
                    let deadline = tokio::time::Instant::now() + self.inner.config.recovery_timeout;
                    if let Err(e) = self
                        .inner
                        .wait_for_recovery(&self.channel, e, deadline)
                        .await
                    {
                        tracing::error!(agent = what, "consumer stopped: {e:#}");
                        return None;
                    }
                    info!(agent = what, "consumer recovered");
                }
                None => return None,
            }
        }
    }

    async fn stop(self: Box<Self>) {
        let tag = self.consumer.tag();
        if let Err(e) = self
            .channel
            .basic_cancel(tag.clone(), BasicCancelOptions::default())
            .await
        {
            debug!(consumer = %tag, "cancelling the consumer: {e}");
        }
        // Closing the channel hands any prefetched, unsettled delivery back.
        if let Err(e) = self.channel.close(200, "consumer stopped".into()).await {
            debug!(consumer = %tag, "closing the consumer channel: {e}");
        }
    }
}

struct AmqpAcker {
    inner: Arc<Inner>,
    agent: Option<String>,
    acker: lapin::Acker,
}

impl AmqpAcker {
    async fn ack_original(&self) -> Result<()> {
        self.acker
            .ack(BasicAckOptions::default())
            .await
            .map(|_| ())
            .map_err(|e| anyhow!("ack failed ({e}); RabbitMQ will redeliver the message"))
    }

    fn agent(&self) -> Result<&str> {
        self.agent
            .as_deref()
            .ok_or_else(|| anyhow!("replies cannot be retried or dead-lettered"))
    }
}

#[async_trait]
impl Acker for AmqpAcker {
    async fn ack(self: Box<Self>, _envelope: Envelope) -> Result<()> {
        self.ack_original().await
    }

    async fn retry(
        self: Box<Self>,
        mut envelope: Envelope,
        delay: Duration,
        reason: &str,
    ) -> Result<()> {
        let agent = self.agent()?;
        envelope.next_attempt(reason);
        let queue = self.inner.delay_queue(agent, delay).await?;
        let extra = Extra {
            expiration: Some(delay),
            ..Default::default()
        };
        self.inner
            .publish_envelope(&Route::Queue(queue), &envelope, extra)
            .await?;
        self.ack_original().await
    }

    async fn dead_letter(self: Box<Self>, envelope: Envelope, reason: &str) -> Result<()> {
        let agent = self.agent()?.to_string();
        let route = Route::Queue(names::dead_letter_queue(&agent));
        let extra = Extra {
            reason: Some(reason),
            ..Default::default()
        };
        self.inner
            .publish_envelope(&route, &envelope, extra)
            .await?;
        self.ack_original().await
    }

    fn abandon(self: Box<Self>, _envelope: Envelope) {
        tokio::spawn(async move {
            let opts = BasicNackOptions {
                requeue: true,
                ..Default::default()
            };
            if let Err(e) = self.acker.nack(opts).await {
                debug!(
                    "requeue of an abandoned delivery failed ({e}); the broker redelivers it on channel close"
                );
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    #[test]
    fn passwords_are_redacted() {
        assert_eq!(
            redact("amqp://guest:secret@127.0.0.1:5672/%2f"),
            "amqp://guest:***@127.0.0.1:5672/%2f"
        );
        assert_eq!(redact("amqps://u:p@a@host/vh"), "amqps://u:***@host/vh");
        assert_eq!(redact("amqp://127.0.0.1:5672"), "amqp://127.0.0.1:5672");
        assert_eq!(redact("amqp://user@host"), "amqp://user@host");
    }

    #[test]
    fn envelope_round_trips_through_properties() {
        let mut headers = BTreeMap::new();
        headers.insert("x-warren-agent-version".to_string(), "abc".to_string());
        let env = Envelope {
            id: "m-1".into(),
            conversation_id: "c-1".into(),
            reply_to: Some("q".into()),
            sender: Some("agent_a".into()),
            hops: 3,
            attempt: 2,
            timestamp: 1_700_000_000_000,
            headers,
            body: b"{}".to_vec(),
        };
        let props = properties(
            &env,
            &Extra {
                reason: Some("why"),
                ..Default::default()
            },
        );
        let (back, reason) = envelope(&props, b"{}".to_vec());
        assert_eq!(back, env);
        assert_eq!(reason.as_deref(), Some("why"));
        // A seed message (no properties) gets a stable id from its body.
        let (a, _) = envelope(&BasicProperties::default(), b"{\"messages\":[]}".to_vec());
        let (b, _) = envelope(&BasicProperties::default(), b"{\"messages\":[]}".to_vec());
        assert_eq!(a.id, b.id);
        assert_eq!(a.conversation_id, a.id);
        assert_eq!(a.attempt, 1);
    }
}
