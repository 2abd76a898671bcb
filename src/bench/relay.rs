//! warren against a raw lapin relay on RabbitMQ, in the same run.
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
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties};
use tokio_util::sync::CancellationToken;

use super::broker_cpu::{BrokerCpu, own_seconds};
use super::local::content;
use super::{BenchConfig, Shape, Table, fmt_rate, median, per_sec};
use crate::broker::amqp::{AmqpBroker, AmqpConfig};
use crate::host::Host;
use crate::wire::Body;

pub(super) const OUT: &str = "bench_out";
pub(super) const RAW_IN: &str = "bench_raw_in";
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
    fn label(self) -> &'static str {
        match self {
            Mode::Reliable => "persistent + confirms",
            Mode::Transient => "transient, no confirms",
        }
    }
}

/// The benchmark's own connection: declares, preloads, counts, cleans up.
pub(super) struct Admin {
    _conn: Connection,
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
        Ok(Admin { _conn: conn, ch })
    }

    pub(super) async fn queue(&self, name: &str, durable: bool) -> Result<()> {
        self.ch
            .queue_declare(
                name.into(),
                QueueDeclareOptions {
                    durable,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await?;
        self.ch
            .queue_purge(name.into(), QueuePurgeOptions::default())
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

    pub(super) async fn cleanup(&self) {
        for q in [
            OUT,
            RAW_IN,
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
    _conn: Connection,
}

impl RawRelay {
    pub(super) async fn start(
        config: &BenchConfig,
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
                    RAW_IN.into(),
                    format!("raw-{i}").as_str().into(),
                    BasicConsumeOptions::default(),
                    FieldTable::default(),
                )
                .await?;
            let publish = publish.clone();
            let stop = stop.clone();
            let max = shape.in_flight.max(1);
            tasks.push(tokio::spawn(async move {
                let _ch = ch;
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
                Ok(())
            }));
        }
        Ok(RawRelay {
            stop,
            tasks,
            _conn: conn,
        })
    }

    pub(super) async fn stop(self) -> Result<()> {
        self.stop.cancel();
        for t in self.tasks {
            t.await??;
        }
        Ok(())
    }
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
    async fn start_with(
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
        ..AmqpConfig::new(config.amqp_url.clone())
    })
    .await?;
    crate::Broker::declare_agent(&amqp, AGENT).await?;
    crate::Broker::close(&amqp).await;
    Ok(())
}

/// Which relay drains the queue.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Relay {
    Warren,
    Raw,
    /// The raw relay stamping each output as warren does (sender, hops,
    /// version as properties).
    RawStamped,
}

/// One drain of the preloaded queue.
struct Drain {
    rate: f64,
    /// RabbitMQ's CPU time per 1,000 messages relayed, in ms (when the
    /// broker is a local process).
    broker_ms: Option<f64>,
    /// The relay's own CPU time per 1,000 messages, in ms.
    relay_ms: Option<f64>,
}

async fn relay_once(
    config: &BenchConfig,
    admin: &Admin,
    relay: Relay,
    shape: Shape,
    mode: Mode,
) -> Result<Drain> {
    let n = config.messages;
    let warren = relay == Relay::Warren;
    let input = admin.fresh_run(warren).await?;
    admin.preload(input, n, mode).await?;
    let broker = BrokerCpu::find(&config.amqp_url);
    let before = (broker.seconds(), own_seconds());
    let rate = if warren {
        let echo = config.plugins.join("echo.wasm");
        warren_drains(config, admin, shape, mode, &echo).await?
    } else {
        let relay = RawRelay::start(config, shape, mode, relay == Relay::RawStamped).await?;
        let started = Instant::now();
        admin.wait_for(OUT, n, Duration::from_secs(600)).await?;
        let elapsed = started.elapsed();
        relay.stop().await?;
        per_sec(n, elapsed)
    };
    let per_k = |a: Option<f64>, b: Option<f64>| Some((b? - a?) * 1000.0 * 1000.0 / n as f64);
    Ok(Drain {
        rate,
        broker_ms: per_k(before.0, broker.seconds()),
        relay_ms: per_k(before.1, own_seconds()),
    })
}

/// warren, hosting `echo`, drains the preloaded input queue.
async fn warren_drains(
    config: &BenchConfig,
    admin: &Admin,
    shape: Shape,
    mode: Mode,
    echo: &std::path::Path,
) -> Result<f64> {
    let n = config.messages;
    let relay = WarrenRelay::start_with(config, shape, mode, echo).await?;
    let started = Instant::now();
    admin.wait_for(OUT, n, Duration::from_secs(600)).await?;
    let elapsed = started.elapsed();
    relay.host.shutdown().await;
    Ok(per_sec(n, elapsed))
}

/// warren at its defaults relaying with the echo agent written in each
/// guest language (persistent + confirms), against the Rust one.
pub async fn languages(config: &BenchConfig) -> Result<Table> {
    let langs = [
        ("Rust", config.plugins.join("echo.wasm")),
        (
            "Python (componentize-py)",
            config.plugins.join("python/echo.wasm"),
        ),
        (
            "JavaScript (jco, QuickJS)",
            config.plugins.join("js/echo.wasm"),
        ),
    ];
    with_queues(config, async |admin: &Admin| {
        let mut t = Table::new(
            &format!(
                "RabbitMQ relay by guest language: {} messages, warren at its defaults, persistent + confirms, median of {} rounds",
                config.messages, config.rounds
            ),
            &["echo agent in", "msg/s", "/ Rust"],
        );
        let mut rates: Vec<Vec<f64>> = vec![Vec::new(); langs.len()];
        for _ in 0..config.rounds {
            for (i, (_, echo)) in langs.iter().enumerate() {
                if echo.exists() {
                    let input = admin.fresh_run(true).await?;
                    admin.preload(input, config.messages, Mode::Reliable).await?;
                    let shape = Shape::defaults();
                    rates[i].push(warren_drains(config, admin, shape, Mode::Reliable, echo).await?);
                }
            }
        }
        let rust = median(rates[0].clone());
        for ((name, echo), r) in langs.iter().zip(rates) {
            if r.is_empty() {
                t.row(vec![name.to_string(), format!("{} not built", echo.display()), "-".into()]);
                continue;
            }
            let m = median(r);
            t.row(vec![name.to_string(), fmt_rate(m), format!("{:.2}×", m / rust)]);
        }
        t.note = Some(
            "The same relay as the throughput table, the agent's language changed: what a guest \
             language costs once the broker's round trip is paid. Goal: ≥ 0.9× Rust."
                .into(),
        );
        Ok(t)
    })
    .await
}

/// Runs `body` with the benchmark's queues declared, cleaning up after.
async fn with_queues<T>(
    config: &BenchConfig,
    body: impl AsyncFnOnce(&Admin) -> Result<T>,
) -> Result<T> {
    let admin = Admin::connect(&config.amqp_url).await?;
    let result = async {
        declare_warren(config).await?;
        admin.queue(OUT, true).await?;
        admin.queue(RAW_IN, true).await?;
        body(&admin).await
    }
    .await;
    admin.cleanup().await;
    result
}

/// The raw relay's candidates, one run each (persistent + confirms): the
/// table, and the fastest shape.
async fn strongest_raw(config: &BenchConfig, admin: &Admin) -> Result<(Table, Shape)> {
    let mut t = Table::new(
        &format!(
            "Raw lapin relay: its window, measured ({} messages, persistent + confirms)",
            config.messages
        ),
        &["raw relay shape", "msg/s"],
    );
    let mut best = (0.0, config.raw_shapes[0]);
    for &shape in &config.raw_shapes {
        let rate = relay_once(config, admin, Relay::Raw, shape, Mode::Reliable)
            .await?
            .rate;
        t.row(vec![shape.label(), fmt_rate(rate)]);
        if rate > best.0 {
            best = (rate, shape);
        }
    }
    t.note = Some(format!(
        "The fastest, {}, is the raw relay of the throughput table.",
        best.1.label()
    ));
    Ok((t, best.1))
}

pub async fn throughput(config: &BenchConfig) -> Result<Vec<Table>> {
    with_queues(config, async |admin: &Admin| {
        let (sweep, raw) = strongest_raw(config, admin).await?;
        let warren = Shape::defaults();
        let mut t = Table::new(
            &format!(
                "RabbitMQ relay throughput: {} messages, 256-byte content; warren at its defaults ({}), raw lapin at its fastest ({})",
                config.messages,
                warren.label(),
                raw.label()
            ),
            &[
                "variant",
                "warren msg/s",
                "raw lapin msg/s",
                "warren / raw",
                "raw, stamped as warren msg/s",
                "warren / (raw, stamped)",
                "RabbitMQ CPU ms per 1,000 msgs: warren / raw / raw stamped",
                "relay's own CPU ms per 1,000 msgs: warren / raw / raw stamped",
            ],
        );
        for mode in [Mode::Reliable, Mode::Transient] {
            let mut runs: [Vec<Drain>; 3] = Default::default();
            for _ in 0..config.rounds {
                for (i, relay) in [Relay::Warren, Relay::Raw, Relay::RawStamped]
                    .into_iter()
                    .enumerate()
                {
                    let shape = if relay == Relay::Warren { warren } else { raw };
                    runs[i].push(relay_once(config, admin, relay, shape, mode).await?);
                }
            }
            let rate = |i: usize| median(runs[i].iter().map(|d| d.rate).collect());
            let cpu = |i: usize, of: fn(&Drain) -> Option<f64>| {
                let ms: Vec<f64> = runs[i].iter().filter_map(of).collect();
                if ms.is_empty() {
                    "-".to_string()
                } else {
                    format!("{:.0}", median(ms))
                }
            };
            let cpus = |of: fn(&Drain) -> Option<f64>| {
                format!("{} / {} / {}", cpu(0, of), cpu(1, of), cpu(2, of))
            };
            let (mw, mr, mh) = (rate(0), rate(1), rate(2));
            t.row(vec![
                mode.label().into(),
                fmt_rate(mw),
                fmt_rate(mr),
                format!("{:.2}×", mw / mr),
                fmt_rate(mh),
                format!("{:.2}×", mw / mh),
                cpus(|d| d.broker_ms),
                cpus(|d| d.relay_ms),
            ]);
        }
        t.note = Some(format!(
            "Medians of {} alternating rounds; a queue is preloaded, then the relay drains it. \
             Target: warren at its defaults ≥ 1.0× the strongest raw relay (persistent + confirms). \
             The raw relay acks each message alone; warren acks runs of settled messages with one \
             `multiple` ack. \"raw, stamped\" is the raw relay putting on each output what warren \
             does (sender, hops, version as `app_id` / `type`, a timestamp): it separates what \
             that costs the broker from what the sandbox costs. CPU times are read from /proc \
             around each drain: RabbitMQ's process, and the relay's (warren's host or the raw \
             relay, both in the benchmark's process).",
            config.rounds
        ));
        Ok(vec![sweep, t])
    })
    .await
}

/// warren's throughput over its settings (persistent + confirms), to choose
/// the defaults by measurement.
pub async fn sweep(config: &BenchConfig) -> Result<Table> {
    with_queues(config, async |admin: &Admin| {
        let defaults = Shape::defaults();
        let mut t = Table::new(
            &format!(
                "warren's settings, swept ({} messages, persistent + confirms, median of {} rounds)",
                config.messages, config.rounds
            ),
            &["consumers", "prefetch", "in flight", "msg/s", ""],
        );
        let mut rates: Vec<Vec<f64>> = vec![Vec::new(); config.sweep.len()];
        for _ in 0..config.rounds {
            for (i, &shape) in config.sweep.iter().enumerate() {
                rates[i].push(relay_once(config, admin, Relay::Warren, shape, Mode::Reliable).await?.rate);
            }
        }
        for (shape, rates) in config.sweep.iter().zip(rates) {
            t.row(vec![
                shape.consumers.to_string(),
                shape.prefetch.to_string(),
                shape.in_flight.to_string(),
                fmt_rate(median(rates)),
                if *shape == defaults { "the defaults".into() } else { String::new() },
            ]);
        }
        Ok(t)
    })
    .await
}
