//! The RabbitMQ throughput tables: warren at its defaults against the
//! strongest raw relay (alternating rounds, with each side's CPU per
//! message), the sweep of warren's settings, and the relay by guest
//! language. The relays themselves are in [`super::relay`].

use std::time::{Duration, Instant};

use anyhow::Result;

use super::broker_cpu::{BrokerCpu, own_seconds};
use super::relay::{Admin, Mode, OUT, RAW_IN, RawRelay, WarrenRelay, declare_warren};
use super::{BenchConfig, Shape, Table, fmt_rate, median, per_sec, rotation};

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
    broker.quiet().await;
    let before = (broker.seconds(), own_seconds());
    let rate = if warren {
        let echo = config.plugins.join("echo.wasm");
        warren_drains(config, admin, shape, mode, &echo).await?
    } else {
        let relay =
            RawRelay::start(config, RAW_IN, shape, mode, relay == Relay::RawStamped).await?;
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
                "RabbitMQ relay by guest language: {} messages, warren at {}, persistent + confirms, median of {} rounds",
                config.messages,
                config.warren_label(),
                config.rounds
            ),
            &["echo agent in", "msg/s", "/ Rust"],
        );
        let mut rates: Vec<Vec<f64>> = vec![Vec::new(); langs.len()];
        let broker = BrokerCpu::find(&config.amqp_url);
        for round in 0..config.rounds {
            for i in rotation(langs.len(), round) {
                let echo = &langs[i].1;
                if echo.exists() {
                    let input = admin.fresh_run(true).await?;
                    admin.preload(input, config.messages, Mode::Reliable).await?;
                    broker.quiet().await;
                    let shape = config.warren;
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
        admin.queue(OUT, None).await?;
        admin.queue(RAW_IN, None).await?;
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
        let warren = config.warren;
        let mut t = Table::new(
            &format!(
                "RabbitMQ relay throughput: {} messages, 256-byte content; warren at {}, raw lapin at its fastest ({})",
                config.messages,
                config.warren_label(),
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
            let relays = [Relay::Warren, Relay::Raw, Relay::RawStamped];
            for round in 0..config.rounds {
                for i in rotation(relays.len(), round) {
                    let relay = relays[i];
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
        for round in 0..config.rounds {
            for i in rotation(config.sweep.len(), round) {
                let shape = config.sweep[i];
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
