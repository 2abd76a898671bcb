//! End-to-end latency on RabbitMQ at paced rates: warren (steady, and
//! while its agent is swapped every 250 ms) against the raw lapin relay.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use futures::StreamExt;
use lapin::options::{BasicConsumeOptions, BasicPublishOptions, ConfirmSelectOptions};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Connection, ConnectionProperties};

use super::broker_cpu::{BrokerCpu, own_seconds, thread_seconds};
use super::local::content;
use super::relay::{
    AGENT, Admin, Mode, OUT, RAW_IN, RAW_IN_V2, RawRelay, WarrenRelay, close, declare_warren,
};
use super::{BenchConfig, Table, median, rotation};
use crate::wire::Body;

/// How often the swapping latency run replaces the agent's file.
const SWAP_EVERY: Duration = Duration::from_millis(250);

/// Replaces the warren relay's agent file every [`SWAP_EVERY`], alternating
/// two versions, through the folder watcher (as an operator would).
struct Swapper {
    _watcher: crate::watch::PluginWatcher,
    task: tokio::task::JoinHandle<()>,
}

impl Swapper {
    fn start(relay: &WarrenRelay) -> Result<Self> {
        let watcher = crate::watch::watch(relay.host.clone(), relay.dir.path())?;
        let path = relay.dir.path().join(format!("{AGENT}.wasm"));
        let v1 = std::fs::read(&path)?;
        let v2 = super::local::distinct_copy(&v1, "swap");
        let task = tokio::spawn(async move {
            for i in 0.. {
                tokio::time::sleep(SWAP_EVERY).await;
                let bytes = if i % 2 == 0 { &v2 } else { &v1 };
                if let Err(e) = std::fs::write(&path, bytes) {
                    tracing::error!("swapping {}: {e}", path.display());
                }
            }
        });
        Ok(Swapper {
            _watcher: watcher,
            task,
        })
    }
}

impl Drop for Swapper {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// One latency run.
struct Run {
    /// The latencies, sorted.
    lat: Vec<Duration>,
    /// How many times the agent was swapped meanwhile (when swapping).
    swaps: u64,
    /// RabbitMQ's CPU per message, in µs (when the broker is a local process).
    broker_us: Option<f64>,
    /// The relay's CPU per message, in µs: the benchmark process's less
    /// the threads that send and receive the load. Their connections' I/O
    /// threads (lapin runs one per connection, named alike) stay in: the
    /// same for every relay, so the figure compares relays, it does not
    /// price one alone.
    relay_us: Option<f64>,
}

/// The relays of the latency table, one row each.
#[derive(Clone, Copy, Debug)]
enum Relay {
    Warren {
        swapping: bool,
    },
    /// The raw relay consuming this queue.
    Raw(&'static str),
}

/// Offers `rate` msg/s for the configured time.
async fn latency_once(
    config: &BenchConfig,
    admin: &Admin,
    broker: &BrokerCpu,
    relay: Relay,
    rate: u32,
) -> Result<Run> {
    let input = match relay {
        Relay::Warren { .. } => admin.fresh_run(true).await?,
        Relay::Raw(queue) => {
            admin.fresh_run(false).await?;
            queue
        }
    };
    let relay_kind = relay;
    tracing::debug!(?relay, "latency run: broker quiet");
    broker.quiet().await;
    tracing::debug!(?relay, "latency run: starting relay");
    let n = ((rate as f64) * config.latency_seconds).max(1.0) as usize;

    enum Running {
        Warren(WarrenRelay),
        Raw(RawRelay),
    }
    let mut swapper = None;
    let relay = match relay {
        Relay::Warren { swapping } => {
            let relay = WarrenRelay::start(config, config.warren, Mode::Reliable).await?;
            if swapping {
                swapper = Some(Swapper::start(&relay)?);
            }
            Running::Warren(relay)
        }
        Relay::Raw(queue) => Running::Raw(
            RawRelay::start(config, queue, config.raw_shapes[0], Mode::Reliable, false).await?,
        ),
    };

    // The load and the clock run on threads of their own (as a client in
    // another process would), not on the relay's executor: each message's
    // confirm reaches the relay the moment its output reaches the receiver,
    // and the relay's work on it must not delay the receiver's timestamp.
    let before = (broker.seconds(), own_seconds());
    let (ready, is_ready) = tokio::sync::oneshot::channel();
    let receiver = apart("bench-receiver", receive(config.amqp_url.clone(), n, ready))?;
    is_ready.await??;
    let sender = apart(
        "bench-sender",
        send(config.amqp_url.clone(), input, n, rate),
    )?;
    let (sent, sender_cpu) = sender.await?;
    tracing::debug!("latency run: sent");
    let (arrived, receiver_cpu) = receiver.await?;
    tracing::debug!("latency run: received");
    let after = (broker.seconds(), own_seconds());
    let (sent, arrived) = (sent?, arrived?);
    let per_message = |seconds: Option<f64>| seconds.map(|s| s * 1e6 / n as f64);
    let broker_us = per_message(after.0.zip(before.0).map(|(a, b)| a - b));
    let relay_us = per_message(
        after
            .1
            .zip(before.1)
            .zip(sender_cpu.zip(receiver_cpu))
            .map(|((a, b), (s, r))| a - b - s - r),
    );
    drop(swapper);
    let swaps = match relay {
        Running::Warren(w) => {
            let swaps = w
                .host
                .counters()
                .swaps
                .load(std::sync::atomic::Ordering::Relaxed);
            tracing::debug!("latency run: host shutdown");
            w.host.shutdown().await;
            tracing::debug!("latency run: host shut down");
            swaps
        }
        Running::Raw(r) => {
            tracing::debug!("latency run: raw stop");
            r.stop().await?;
            tracing::debug!("latency run: raw stopped");
            0
        }
    };
    if arrived.len() < n {
        bail!("latency run lost track: {} of {n} arrived", arrived.len());
    }
    if let Some(dir) = &config.latency_dump {
        dump(dir, relay_kind, rate, &sent, &arrived, n)?;
    }
    let mut lat: Vec<Duration> = arrived
        .iter()
        .filter_map(|(id, at)| sent.get(id).map(|s| at.saturating_duration_since(*s)))
        .collect();
    lat.sort();
    Ok(Run {
        lat,
        swaps,
        broker_us,
        relay_us,
    })
}

/// Writes one run's latencies to `dir` as CSV, one line per message in
/// the order sent: its index, when it was sent (µs after the first) and its
/// latency (µs; empty if it never arrived). Files are numbered in the order
/// the runs ran, so a run's neighbours in time are at hand.
fn dump(
    dir: &std::path::Path,
    relay: Relay,
    rate: u32,
    sent: &HashMap<String, Instant>,
    arrived: &HashMap<String, Instant>,
    n: usize,
) -> Result<()> {
    use std::fmt::Write as _;
    static RUNS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let k = RUNS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let name = match relay {
        Relay::Warren { swapping: false } => "warren",
        Relay::Warren { swapping: true } => "warren-swapping",
        Relay::Raw(RAW_IN_V2) => "raw-v2",
        Relay::Raw(_) => "raw",
    };
    let first = sent.get("lat-0").copied();
    let mut out = String::from("index,sent_us,latency_us\n");
    for i in 0..n {
        let id = format!("lat-{i}");
        let Some(s) = sent.get(&id) else { continue };
        let at = first.map_or(0, |f| s.saturating_duration_since(f).as_micros());
        let latency = arrived
            .get(&id)
            .map(|a| a.saturating_duration_since(*s).as_micros().to_string())
            .unwrap_or_default();
        let _ = writeln!(out, "{i},{at},{latency}");
    }
    std::fs::create_dir_all(dir)?;
    let path = dir.join(format!("{k:03}-{rate}-{name}.csv"));
    std::fs::write(&path, out).with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

/// Runs `fut` on a thread of its own, on a single-threaded runtime; its
/// output comes with the CPU seconds the thread used.
fn apart<T, F>(name: &str, fut: F) -> Result<tokio::sync::oneshot::Receiver<(T, Option<f64>)>>
where
    F: std::future::Future<Output = T> + Send + 'static,
    T: Send + 'static,
{
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name(name.into())
        .spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a runtime for the benchmark's load");
            let out = runtime.block_on(fut);
            // The runtime's tasks (the connection's) ran on this thread too.
            drop(runtime);
            // The caller may be gone (it failed first): nothing to tell.
            let _ = tx.send((out, thread_seconds()));
        })?;
    Ok(rx)
}

/// Consumes the output queue until `n` messages arrived (or none for a
/// minute); the arrival time of each, by correlation id. `ready` once the
/// consumer is registered.
async fn receive(
    url: String,
    n: usize,
    ready: tokio::sync::oneshot::Sender<Result<()>>,
) -> Result<HashMap<String, Instant>> {
    let consumer = async {
        let conn = Connection::connect(&url, ConnectionProperties::default()).await?;
        let rx = conn.create_channel().await?;
        let consumer = rx
            .basic_consume(
                OUT.into(),
                "latency".into(),
                BasicConsumeOptions {
                    no_ack: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await?;
        anyhow::Ok((conn, consumer))
    }
    .await;
    let (conn, mut consumer) = match consumer {
        Ok(c) => {
            let _ = ready.send(Ok(()));
            c
        }
        Err(e) => {
            let _ = ready.send(Err(anyhow::anyhow!("the latency receiver: {e:#}")));
            return Err(e);
        }
    };
    let mut arrived: HashMap<String, Instant> = HashMap::with_capacity(n);
    while arrived.len() < n {
        match tokio::time::timeout(Duration::from_secs(60), consumer.next()).await {
            Ok(Some(Ok(d))) => {
                let id = d
                    .properties
                    .correlation_id()
                    .as_ref()
                    .map(|s| s.as_str().to_string())
                    .unwrap_or_default();
                arrived.entry(id).or_insert_with(Instant::now);
            }
            _ => break,
        }
    }
    close(&conn).await;
    Ok(arrived)
}

/// Publishes `n` messages to `input` at `rate` msg/s (persistent, each
/// confirmed); the time each was sent, by correlation id.
async fn send(
    url: String,
    input: &'static str,
    n: usize,
    rate: u32,
) -> Result<HashMap<String, Instant>> {
    let conn = Connection::connect(&url, ConnectionProperties::default()).await?;
    let ch = conn.create_channel().await?;
    ch.confirm_select(ConfirmSelectOptions::default()).await?;
    let body = Body::user(&content(), Default::default()).encode();
    let mut sent: HashMap<String, Instant> = HashMap::with_capacity(n);
    let mut confirms = Vec::with_capacity(n);
    let start = Instant::now();
    let interval = Duration::from_secs_f64(1.0 / rate as f64);
    for i in 0..n {
        // Blocking this thread (the sender's own) keeps the pace: tokio's
        // timer fires on whole milliseconds, which at 2,000 msg/s sent the
        // messages in pairs once a millisecond instead of one every 500 µs.
        // The thread's timer slack leaves ~50 µs of jitter; the lapin tasks
        // of the sender's connection, on this thread's runtime, wait at most
        // one interval (its socket is written by lapin's own I/O thread).
        let due = start + interval.mul_f64(i as f64);
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
        let id = format!("lat-{i}");
        let props = BasicProperties::default()
            .with_message_id(id.as_str().into())
            .with_correlation_id(id.as_str().into())
            .with_reply_to(OUT.into())
            .with_delivery_mode(2);
        sent.insert(id, Instant::now());
        confirms.push(
            ch.basic_publish(
                "".into(),
                input.into(),
                BasicPublishOptions::default(),
                &body,
                props,
            )
            .await?,
        );
    }
    for c in futures::future::join_all(confirms).await {
        c?;
    }
    close(&conn).await;
    Ok(sent)
}

/// The `p` quantile of `lat`, in ms.
fn pct_ms(lat: &[Duration], p: f64) -> f64 {
    if lat.is_empty() {
        return f64::NAN;
    }
    let i = ((lat.len() as f64 - 1.0) * p).round() as usize;
    lat[i].as_secs_f64() * 1e3
}

pub async fn latency(config: &BenchConfig) -> Result<Table> {
    let admin = Admin::connect(&config.amqp_url).await?;
    let broker = BrokerCpu::find(&config.amqp_url);
    let result = async {
        let mut t = Table::new(
            &format!(
                "RabbitMQ end-to-end latency, persistent + confirms ({} s per run, medians of {} \
                 alternating rounds), ms; warren at {}, raw lapin at {}",
                config.latency_seconds,
                config.rounds.max(1),
                config.warren_label(),
                config.raw_shapes[0].label()
            ),
            &[
                "offered rate",
                "relay",
                "p50",
                "p99",
                "max",
                "swaps",
                "CPU µs per message: RabbitMQ / relay",
            ],
        );
        declare_warren(config).await?;
        admin.queue(OUT, None).await?;
        admin.queue(RAW_IN, None).await?;
        admin.queue(RAW_IN_V2, Some(2)).await?;
        let variants = [
            (Relay::Warren { swapping: false }, "warren"),
            (Relay::Warren { swapping: true }, "warren, swapping"),
            (Relay::Raw(RAW_IN), "raw lapin"),
            (Relay::Raw(RAW_IN_V2), "raw lapin, queue version 2"),
        ];
        for &rate in &config.rates {
            // Alternating rounds, medians: one 5-second run's p99 moves by
            // half on two shared cores.
            let mut runs: Vec<Vec<Run>> = (0..variants.len()).map(|_| Vec::new()).collect();
            for round in 0..config.rounds.max(1) {
                for k in rotation(variants.len(), round) {
                    runs[k].push(latency_once(config, &admin, &broker, variants[k].0, rate).await?);
                }
            }
            for (k, &(relay, label)) in variants.iter().enumerate() {
                let swapping = matches!(relay, Relay::Warren { swapping: true });
                let r = &runs[k];
                let of = |p: f64| {
                    format!(
                        "{:.2}",
                        median(r.iter().map(|x| pct_ms(&x.lat, p)).collect())
                    )
                };
                let max = r.iter().map(|x| pct_ms(&x.lat, 1.0)).fold(0f64, f64::max);
                let cpu = |us: fn(&Run) -> Option<f64>| {
                    let v: Vec<f64> = r.iter().filter_map(us).collect();
                    if v.is_empty() {
                        "-".to_string()
                    } else {
                        format!("{:.0}", median(v))
                    }
                };
                t.row(vec![
                    format!("{rate} msg/s"),
                    label.into(),
                    of(0.5),
                    of(0.99),
                    format!("{max:.2}"),
                    if swapping {
                        r.iter().map(|x| x.swaps).sum::<u64>().to_string()
                    } else {
                        "-".into()
                    },
                    format!("{} / {}", cpu(|x| x.broker_us), cpu(|x| x.relay_us)),
                ]);
            }
        }
        t.note = Some(format!(
            "From just before the publish to arrival at a consumer of the output queue; p50 \
                 and p99 are medians over the rounds, max the highest, swaps the total. \
                 \"swapping\": the agent's file is replaced every {} ms (two versions, \
                 alternating) through the folder watcher while the load runs. CPU per message \
                 (medians over the rounds): RabbitMQ's process, and the relay's (the \
                 benchmark's process less the threads that send and receive the load, but with \
                 the I/O threads of their two connections, the same for every relay: compare \
                 relays by it, do not price one alone); at a paced rate each message finds the \
                 caches cold and the threads asleep, so it costs several times what it does in \
                 the throughput table. \"raw lapin\" consumes a queue declared plainly (a \
                 classic queue of version 1 on RabbitMQ 3.10–3.13), \"queue version 2\" the same \
                 relay on a version-2 queue as warren declares its own (`--queue-version`): a \
                 relay that acks one message at a time costs that version more.",
            SWAP_EVERY.as_millis()
        ));
        Ok(t)
    }
    .await;
    admin.cleanup().await;
    result
}
