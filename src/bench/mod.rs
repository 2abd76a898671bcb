//! `warren bench`: what warren costs, measured side by side in one run.
//!
//! Every RabbitMQ figure is a ratio against a raw lapin relay written here
//! (persistence, confirms, ack after confirm, no Wasm) at the window that
//! makes it fastest — measured in the same run — while warren runs with
//! its defaults, as a user runs it (or with the settings a user asks to
//! measure, `BenchConfig::warren`); the two alternate over several rounds.
//! The benchmark reports; it asserts nothing.
//!
//! - [`relay`] — the relays: warren hosting the echo agent, the raw lapin relay.
//! - [`throughput`] — throughput on RabbitMQ, warren vs raw, the settings sweep
//!   and the guest languages.
//! - [`latency`] — latency on RabbitMQ at paced rates, steady and while swapping.
//! - [`local`] — Wasm call cost, embedded-broker hops, start-up time and RSS.
//! - `broker_cpu` — RabbitMQ's CPU time per message, read from its process.

mod broker_cpu;
pub mod latency;
pub mod local;
pub mod relay;
pub mod throughput;

use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Result;

use crate::broker::amqp::QueueVersion;

/// What to run, and how big.
#[derive(Debug, Clone)]
pub struct BenchConfig {
    /// RabbitMQ URL (its vhost gets temporary `bench_*` queues, deleted after).
    pub amqp_url: String,
    /// Messages per relay run.
    pub messages: usize,
    /// Alternating warren/raw rounds per relay variant.
    pub rounds: usize,
    /// Offered rates for the latency table, msg/s.
    pub rates: Vec<u32>,
    /// Seconds of load per latency run.
    pub latency_seconds: f64,
    /// The raw relay's candidate shapes: each is measured, and the fastest
    /// is the raw relay warren is compared with (the first one also runs
    /// the latency table).
    pub raw_shapes: Vec<Shape>,
    /// warren's shapes for the sweep table (the comparisons run `warren`).
    pub sweep: Vec<Shape>,
    /// The shape warren runs with in the comparisons (throughput, latency,
    /// languages): its defaults unless a user measures their own settings.
    pub warren: Shape,
    /// How long warren's first settled delivery waits for others to share
    /// its ack frame (`warren run --ack-gather`; its default unless set).
    pub ack_gather: Duration,
    /// The storage version warren declares its classic queues with
    /// (`warren run --queue-version`; its default unless set).
    pub queue_version: QueueVersion,
    /// Where the latency table writes each run's latencies, one CSV file
    /// per run (`--latency-dump`); none unless set.
    pub latency_dump: Option<PathBuf>,
    /// Calls per Wasm cost measurement.
    pub calls: usize,
    /// Agent counts for the scale table.
    pub scale: Vec<usize>,
    /// The echo agent and the folder of guests (one subfolder per language).
    pub plugins: PathBuf,
    /// The `warren` binary, for start-up and RSS measurements.
    pub warren_exe: PathBuf,
    /// Skip what needs RabbitMQ.
    pub skip_rabbitmq: bool,
    /// Only these tables (empty: all).
    pub only: Vec<TableKind>,
    /// Hops warren's hosts keep for traces (warren's default; 0 measures
    /// what recording them costs).
    pub trace_hops: usize,
}

/// The tables `warren bench` can print.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum TableKind {
    /// Wasm cost per message, per guest language.
    Wasm,
    /// Embedded-broker hops per second.
    Hops,
    /// Start-up time and RSS with 1, 10, 100 agents.
    Scale,
    /// RabbitMQ relay throughput: warren at its defaults against the
    /// strongest raw lapin relay (its window chosen by measurement).
    Throughput,
    /// warren's throughput over prefetch / in-flight / consumers settings.
    Sweep,
    /// RabbitMQ latency, steady and while swapping the agent.
    Latency,
    /// RabbitMQ relay throughput with the echo agent in each guest language.
    Languages,
}

/// A relay's shape: consumers, and per consumer the prefetch and the
/// deliveries handled at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shape {
    pub consumers: usize,
    pub prefetch: u16,
    pub in_flight: usize,
}

impl Shape {
    pub const fn new(consumers: usize, prefetch: u16, in_flight: usize) -> Self {
        Shape {
            consumers,
            prefetch,
            in_flight,
        }
    }

    /// What `warren run` uses when given no option.
    pub fn defaults() -> Self {
        let dispatch = crate::dispatch::DispatchConfig::default();
        Shape {
            consumers: dispatch.consumers_per_agent,
            prefetch: crate::broker::amqp::AmqpConfig::new("").prefetch,
            in_flight: dispatch.in_flight_per_consumer,
        }
    }

    pub fn label(&self) -> String {
        format!(
            "{} consumers × {} in flight, prefetch {}",
            self.consumers, self.in_flight, self.prefetch
        )
    }

    /// A host of this shape keeping `trace_hops` (the rest at the defaults).
    pub fn host_config(&self, trace_hops: usize) -> crate::HostConfig {
        let mut config = crate::HostConfig::default();
        config.trace.capacity = trace_hops;
        config.dispatch.consumers_per_agent = self.consumers;
        config.dispatch.in_flight_per_consumer = self.in_flight;
        config.runtime.max_instances = config.runtime.max_instances.max(self.consumers);
        config
    }
}

impl BenchConfig {
    /// The full suite (tens of minutes on a 2-core machine).
    pub fn full(amqp_url: String, plugins: PathBuf, warren_exe: PathBuf) -> Self {
        BenchConfig {
            amqp_url,
            messages: 30_000,
            rounds: 3,
            rates: vec![1_000, 2_000, 5_000],
            latency_seconds: 5.0,
            raw_shapes: vec![
                Shape::new(1, 256, 256),
                Shape::new(4, 256, 256),
                Shape::new(4, 64, 64),
                Shape::new(2, 128, 128),
                Shape::new(1, 512, 512),
                Shape::new(2, 512, 512),
                Shape::new(1, 1024, 1024),
            ],
            sweep: vec![
                Shape::new(1, 64, 64),
                Shape::new(1, 128, 128),
                Shape::new(1, 256, 256),
                Shape::new(1, 512, 512),
                Shape::new(1, 1024, 1024),
                Shape::new(2, 256, 256),
                Shape::new(2, 512, 512),
                Shape::new(4, 64, 64),
                Shape::new(4, 256, 256),
                Shape::new(8, 128, 128),
            ],
            warren: Shape::defaults(),
            ack_gather: crate::broker::amqp::DEFAULT_ACK_GATHER,
            queue_version: Default::default(),
            latency_dump: None,
            calls: 20_000,
            trace_hops: crate::trace::DEFAULT_CAPACITY,
            scale: vec![1, 10, 100],
            plugins,
            warren_exe,
            skip_rabbitmq: false,
            only: Vec::new(),
        }
    }

    /// The host the local tables run: warren's defaults.
    pub fn host_config(&self) -> crate::HostConfig {
        let mut config = crate::HostConfig::default();
        config.trace.capacity = self.trace_hops;
        config
    }

    /// How the tables name warren's settings: "its defaults (…)" when they
    /// are, else the shape, the ack gather and the queue version measured
    /// instead.
    pub fn warren_label(&self) -> String {
        let shape = self.warren.label();
        if self.warren == Shape::defaults()
            && self.ack_gather == crate::broker::amqp::DEFAULT_ACK_GATHER
            && self.queue_version == Default::default()
        {
            format!("its defaults ({shape})")
        } else {
            let gather = self.ack_gather.as_millis();
            let version = match self.queue_version {
                QueueVersion::V1 => ", queue version 1",
                QueueVersion::V2 => "",
                QueueVersion::Broker => ", the broker's queue version",
            };
            format!("{shape}, acks gathered {gather} ms{version} (not its defaults)")
        }
    }

    /// A smoke run (CI): every code path, tiny numbers.
    pub fn quick(mut self) -> Self {
        self.messages = 300;
        self.rounds = 1;
        self.rates = vec![200];
        self.latency_seconds = 0.5;
        self.calls = 200;
        self.scale = vec![1, 3];
        self.raw_shapes.truncate(2);
        self.sweep = vec![self.warren, Shape::new(2, 32, 32)];
        self
    }
}

/// A table: a title, column names, rows; printed as Markdown.
pub struct Table {
    pub title: String,
    pub columns: Vec<String>,
    pub rows: Vec<Vec<String>>,
    pub note: Option<String>,
}

impl Table {
    pub fn new(title: &str, columns: &[&str]) -> Self {
        Table {
            title: title.into(),
            columns: columns.iter().map(|c| c.to_string()).collect(),
            rows: Vec::new(),
            note: None,
        }
    }

    pub fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    pub fn markdown(&self) -> String {
        let mut out = format!("### {}\n\n", self.title);
        let _ = writeln!(out, "| {} |", self.columns.join(" | "));
        let _ = writeln!(out, "|{}", "---|".repeat(self.columns.len()));
        for r in &self.rows {
            let _ = writeln!(out, "| {} |", r.join(" | "));
        }
        if let Some(note) = &self.note {
            let _ = writeln!(out, "\n{note}");
        }
        out
    }
}

/// Runs the suite, printing each table as soon as it is done.
pub async fn run(config: &BenchConfig, mut print: impl FnMut(&Table)) -> Result<Vec<Table>> {
    let mut tables = Vec::new();
    let mut emit = |t: Table, tables: &mut Vec<Table>| {
        print(&t);
        tables.push(t);
    };
    let want = |k: TableKind| config.only.is_empty() || config.only.contains(&k);
    if want(TableKind::Wasm) {
        emit(local::wasm_cost(config).await?, &mut tables);
    }
    if want(TableKind::Hops) {
        emit(local::embedded_hops(config).await?, &mut tables);
    }
    if want(TableKind::Scale) {
        emit(local::scale(config).await?, &mut tables);
    }
    if !config.skip_rabbitmq {
        if want(TableKind::Throughput) {
            for t in throughput::throughput(config).await? {
                emit(t, &mut tables);
            }
        }
        if want(TableKind::Sweep) {
            emit(throughput::sweep(config).await?, &mut tables);
        }
        if want(TableKind::Latency) {
            emit(latency::latency(config).await?, &mut tables);
        }
        if want(TableKind::Languages) {
            emit(throughput::languages(config).await?, &mut tables);
        }
    }
    Ok(tables)
}

/// The order of `n` alternating variants in round `round`: each round
/// starts one further on, so no variant always runs first (on a cold
/// broker) or right after the same other one (and its leftovers).
pub(crate) fn rotation(n: usize, round: usize) -> impl Iterator<Item = usize> {
    (0..n).map(move |k| (round + k) % n.max(1))
}

pub(crate) fn per_sec(n: usize, d: Duration) -> f64 {
    n as f64 / d.as_secs_f64().max(1e-9)
}

pub(crate) fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    if v.is_empty() {
        return 0.0;
    }
    v[v.len() / 2]
}

pub(crate) fn fmt_rate(r: f64) -> String {
    if r >= 10_000.0 {
        format!("{:.0}", r)
    } else {
        format!("{:.1}", r)
    }
}

#[cfg(test)]
mod tests {
    use super::rotation;

    #[test]
    fn each_variant_takes_each_place_once_over_as_many_rounds() {
        let orders: Vec<Vec<usize>> = (0..3).map(|r| rotation(3, r).collect()).collect();
        assert_eq!(orders, vec![vec![0, 1, 2], vec![1, 2, 0], vec![2, 0, 1]]);
        for place in 0..3 {
            let mut firsts: Vec<usize> = orders.iter().map(|o| o[place]).collect();
            firsts.sort();
            assert_eq!(firsts, vec![0, 1, 2], "place {place}");
        }
        assert_eq!(rotation(1, 5).collect::<Vec<_>>(), vec![0]);
    }
}
