//! The relays `warren bench` compares on RabbitMQ (the tables are in
//! [`super::throughput`]).
//!
//! Both relays consume an input queue, publish each message to `bench_out`
//! (persistent + confirmed, or transient without confirms), and ack the
//! input only after the output is confirmed. The raw relay runs at the
//! shape (consumers, window) that measured fastest among its candidates;
//! warren runs with its defaults. warren additionally decodes the JSON
//! body, calls the Wasm echo agent and encodes its output; the raw relay
//! forwards bytes.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use futures::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
    ConfirmSelectOptions, ExchangeDeleteOptions, QueueDeclareOptions, QueueDeleteOptions,
    QueuePurgeOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties};
use tokio_util::sync::CancellationToken;

use super::local::content;
use super::{BenchConfig, Shape};
use crate::broker::amqp::{AmqpBroker, AmqpConfig};
use crate::host::Host;
use crate::wire::Body;

pub(super) const OUT: &str = "bench_out";
pub(super) const RAW_IN: &str = "bench_raw_in";
/// The raw relay's input as a classic queue of version 2, as warren
/// declares its own by default (the latency table's last row).
pub(super) const RAW_IN_V2: &str = "bench_raw_in_v2";
pub(super) const AGENT: &str = "bench_echo";
pub(super) const EXCHANGE: &str = "warren_bench";

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(super) enum Mode {
    /// Persistent messages, publisher confirms, ack after confirm.
    Reliable,
    /// Transient messages, no confirms.
    Transient,
}

impl Mode {
    pub(super) fn label(self) -> &'static str {
        match self {
            Mode::Reliable => "persistent + confirms",
            Mode::Transient => "transient, no confirms",
        }
    }
}

/// The benchmark's own connection: declares, preloads, counts, cleans up.
pub(super) struct Admin {
    conn: Connection,
    pub(super) ch: Channel,
}

impl Admin {
    pub(super) async fn connect(url: &str) -> Result<Self> {
        let conn = Connection::connect(url, ConnectionProperties::default())
            .await
            .map_err(|e| {
                anyhow::anyhow!(
                    "cannot connect to RabbitMQ at {}: {e}",
                    crate::broker::amqp::redact(url)
                )
            })?;
        let ch = conn.create_channel().await?;
        ch.confirm_select(ConfirmSelectOptions::default()).await?;
        Ok(Admin { conn, ch })
    }

    /// Declares one of the benchmark's own queues, empty and durable: a
    /// plain declaration, as a hand-written relay makes (a classic queue of
    /// version 1 on RabbitMQ 3.10–3.13), or of the classic queue `version`
    /// asked for.
    pub(super) async fn queue(&self, name: &str, version: Option<i32>) -> Result<()> {
        // A leftover of an interrupted run may have other arguments.
        self.ch
            .queue_delete(name.into(), QueueDeleteOptions::default())
            .await?;
        let mut args = FieldTable::default();
        if let Some(v) = version {
            args.insert("x-queue-version".into(), AMQPValue::LongInt(v));
        }
        self.ch
            .queue_declare(
                name.into(),
                QueueDeclareOptions {
                    durable: true,
                    ..Default::default()
                },
                args,
            )
            .await?;
        Ok(())
    }

    pub(super) async fn count(&self, name: &str) -> Result<u32> {
        let q = self
            .ch
            .queue_declare(
                name.into(),
                QueueDeclareOptions {
                    passive: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await?;
        Ok(q.message_count())
    }

    /// Publishes `n` echo requests to `queue` (confirms pipelined).
    pub(super) async fn preload(&self, queue: &str, n: usize, mode: Mode) -> Result<()> {
        let body = Body::user(&content(), Default::default()).encode();
        let messages = (0..n).map(|i| {
            let id = format!("bench-{i}");
            let props = BasicProperties::default()
                .with_message_id(id.as_str().into())
                .with_correlation_id(id.as_str().into())
                .with_reply_to(OUT.into())
                .with_delivery_mode(if mode == Mode::Reliable { 2 } else { 1 });
            (body.clone(), props)
        });
        publish_pipelined(&self.ch, queue, messages).await
    }

    pub(super) async fn wait_for(&self, queue: &str, n: usize, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            let c = self.count(queue).await? as usize;
            if c >= n {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("relay stalled: {c} of {n} messages in {queue}");
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Empties the output queue for a new run; returns the relay's input queue.
    pub(super) async fn fresh_run(&self, warren: bool) -> Result<&'static str> {
        self.ch
            .queue_purge(OUT.into(), QueuePurgeOptions::default())
            .await?;
        Ok(if warren {
            "agent_bench_echo_queue"
        } else {
            RAW_IN
        })
    }

    /// Deletes what the benchmark declared, then closes the connection.
    pub(super) async fn cleanup(self) {
        for q in [
            OUT,
            RAW_IN,
            RAW_IN_V2,
            "agent_bench_echo_queue",
            "agent_bench_echo_queue.dlq",
        ] {
            let _ = self
                .ch
                .queue_delete(q.into(), QueueDeleteOptions::default())
                .await;
        }
        let _ = self
            .ch
            .exchange_delete(EXCHANGE.into(), ExchangeDeleteOptions::default())
            .await;
        // The channel before the connection (see `RawRelay::stop`).
        let _ = self.ch.close(200, "done".into()).await;
        close(&self.conn).await;
    }
}

/// Publishes each message to `queue` through the default exchange on `ch`
/// (in confirm mode), waiting for the confirms a thousand at a time.
pub(crate) async fn publish_pipelined(
    ch: &Channel,
    queue: &str,
    messages: impl Iterator<Item = (Vec<u8>, BasicProperties)>,
) -> Result<()> {
    let mut pending = Vec::new();
    for (body, props) in messages {
        pending.push(
            ch.basic_publish(
                "".into(),
                queue.into(),
                BasicPublishOptions::default(),
                &body,
                props,
            )
            .await?,
        );
        if pending.len() >= 1000 {
            for confirm in futures::future::join_all(pending.drain(..)).await {
                confirm?;
            }
        }
    }
    for confirm in futures::future::join_all(pending).await {
        confirm?;
    }
    Ok(())
}

/// The raw relay: C consumers, prefetch P, publish → confirm → ack.
pub(super) struct RawRelay {
    stop: CancellationToken,
    tasks: Vec<tokio::task::JoinHandle<Result<()>>>,
    publish: Channel,
    conn: Connection,
}

impl RawRelay {
    /// The relay of `shape` consuming `input`.
    pub(super) async fn start(
        config: &BenchConfig,
        input: &'static str,
        shape: Shape,
        mode: Mode,
        stamped: bool,
    ) -> Result<Self> {
        let conn = Connection::connect(&config.amqp_url, ConnectionProperties::default()).await?;
        let publish = conn.create_channel().await?;
        if mode == Mode::Reliable {
            publish
                .confirm_select(ConfirmSelectOptions::default())
                .await?;
        }
        let stop = CancellationToken::new();
        let mut tasks = Vec::new();
        for i in 0..shape.consumers {
            let ch = conn.create_channel().await?;
            ch.basic_qos(shape.prefetch, BasicQosOptions::default())
                .await?;
            let mut consumer = ch
                .basic_consume(
                    input.into(),
                    format!("raw-{i}").as_str().into(),
                    BasicConsumeOptions::default(),
                    FieldTable::default(),
                )
                .await?;
            let publish = publish.clone();
            let stop = stop.clone();
            let max = shape.in_flight.max(1);
            tasks.push(tokio::spawn(async move {
                // Up to `max` deliveries in flight (their publishes and
                // confirms pipelined), each acked after its own confirm.
                let mut in_flight = futures::stream::FuturesUnordered::new();
                loop {
                    tokio::select! {
                        biased;
                        _ = stop.cancelled() => break,
                        Some(r) = in_flight.next(), if !in_flight.is_empty() => r?,
                        d = consumer.next(), if in_flight.len() < max => match d {
                            Some(d) => in_flight.push(relay_one(publish.clone(), d?, mode, stamped)),
                            None => break,
                        },
                    }
                }
                while let Some(r) = in_flight.next().await {
                    r?;
                }
                // Closed before the connection (see `close`).
                let _ = ch.close(200, "done".into()).await;
                Ok(())
            }));
        }
        Ok(RawRelay {
            stop,
            tasks,
            publish,
            conn,
        })
    }

    pub(super) async fn stop(self) -> Result<()> {
        self.stop.cancel();
        for t in self.tasks {
            t.await??;
        }
        // Closed here, not left to lapin: a channel whose last handle drops
        // is closed by lapin in the background, and when that close meets
        // the connection's own, lapin fails the connection (RabbitMQ logs
        // an unexpected close) and may leave the connection's close
        // waiting forever.
        let _ = self.publish.close(200, "done".into()).await;
        close(&self.conn).await;
        Ok(())
    }
}

/// Closes a benchmark connection as a client should: one dropped unclosed
/// leaves RabbitMQ logging an unexpected close and a channel supervisor's
/// crash report after every run, work the next run's broker would share.
pub(super) async fn close(conn: &Connection) {
    crate::broker::amqp::close_connection(conn, "done").await;
}

/// Forwards one delivery: publish → confirm → ack.
async fn relay_one(
    publish: Channel,
    d: lapin::message::Delivery,
    mode: Mode,
    stamped: bool,
) -> Result<()> {
    let props = BasicProperties::default()
        .with_message_id(d.properties.message_id().clone().unwrap_or_default())
        .with_correlation_id(d.properties.correlation_id().clone().unwrap_or_default())
        .with_content_type("application/json".into())
        .with_delivery_mode(if mode == Mode::Reliable { 2 } else { 1 });
    let mut props = props;
    if stamped {
        // What warren puts on an agent's output: its sender, hops and
        // version (as `app_id` and `type`, see `broker::amqp::headers`),
        // and the timestamp.
        props = props
            .with_app_id(AGENT.into())
            .with_type(format!("{}1/d80f4de5104c", crate::broker::amqp::TYPE_PREFIX).into())
            .with_timestamp(1);
    }
    let reply_to = d
        .properties
        .reply_to()
        .clone()
        .unwrap_or_else(|| OUT.into());
    publish
        .basic_publish(
            "".into(),
            reply_to,
            BasicPublishOptions {
                mandatory: true,
                ..Default::default()
            },
            &d.data,
            props,
        )
        .await?
        .await?;
    d.ack(BasicAckOptions::default()).await?;
    Ok(())
}

/// warren as the relay: a host with the echo agent as `bench_echo`.
pub(super) struct WarrenRelay {
    pub(super) host: Arc<Host>,
    /// The agent's plugins folder (the latency run swaps its file).
    pub(super) dir: tempfile::TempDir,
}

impl WarrenRelay {
    pub(super) async fn start(config: &BenchConfig, shape: Shape, mode: Mode) -> Result<Self> {
        Self::start_with(config, shape, mode, &config.plugins.join("echo.wasm")).await
    }

    /// The relay with another echo component (another guest language).
    pub(super) async fn start_with(
        config: &BenchConfig,
        shape: Shape,
        mode: Mode,
        echo: &std::path::Path,
    ) -> Result<Self> {
        let dir = tempfile::tempdir()?;
        std::fs::copy(echo, dir.path().join(format!("{AGENT}.wasm")))
            .with_context(|| format!("copying {}", echo.display()))?;
        let amqp = AmqpBroker::connect(AmqpConfig {
            exchange: EXCHANGE.into(),
            prefetch: shape.prefetch,
            reliable: mode == Mode::Reliable,
            ack_gather: config.ack_gather,
            queue_version: config.queue_version,
            ..AmqpConfig::new(config.amqp_url.clone())
        })
        .await?;
        let host = Host::new(shape.host_config(config.trace_hops), Arc::new(amqp))?;
        let loaded = host.load_dir(dir.path()).await?;
        if loaded.is_empty() {
            bail!("the echo agent did not load");
        }
        Ok(WarrenRelay { host, dir })
    }
}

/// Declares warren's topology once (with consumers stopped) so messages can be preloaded.
pub(super) async fn declare_warren(config: &BenchConfig) -> Result<()> {
    let amqp = AmqpBroker::connect(AmqpConfig {
        exchange: EXCHANGE.into(),
        queue_version: config.queue_version,
        ..AmqpConfig::new(config.amqp_url.clone())
    })
    .await?;
    crate::Broker::declare_agent(&amqp, AGENT).await?;
    crate::Broker::close(&amqp).await;
    Ok(())
}
