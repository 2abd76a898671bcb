//! `warren bench`: the benchmark tables.

use std::path::PathBuf;

use anyhow::{Context as _, Result};
use clap::Args;

use warren::bench::BenchConfig;

#[derive(Args)]
pub struct Bench {
    /// RabbitMQ to measure against (temporary `bench_*` queues in its vhost).
    #[arg(
        long,
        env = "WARREN_AMQP_URL",
        hide_env_values = true,
        default_value = "amqp://guest:guest@127.0.0.1:5672/%2f"
    )]
    amqp_url: String,
    /// A smoke run with tiny numbers (what CI runs).
    #[arg(long)]
    quick: bool,
    /// Messages per relay run (default 100000).
    #[arg(long)]
    messages: Option<usize>,
    /// Alternating warren/raw rounds (default 3).
    #[arg(long)]
    rounds: Option<usize>,
    /// Offered rates of the latency table, msg/s (repeatable or
    /// comma-separated; default 1000, 2000, 5000).
    #[arg(long, value_delimiter = ',', value_parser = clap::value_parser!(u32).range(1..))]
    rate: Vec<u32>,
    /// Skip the RabbitMQ tables.
    #[arg(long)]
    no_rabbitmq: bool,
    /// Folder with echo.wasm (and <lang>/echo.wasm per guest language).
    #[arg(long, default_value = "plugins")]
    plugins: PathBuf,
    /// Only these tables (repeatable; default: all).
    #[arg(long, value_enum)]
    only: Vec<warren::bench::TableKind>,
    /// Hops warren keeps for traces while measured (default: warren's
    /// default; 0 shows what keeping them costs).
    #[arg(long, default_value_t = warren::trace::DEFAULT_CAPACITY)]
    trace_hops: usize,
    /// warren's consumers per agent while measured (default: warren's
    /// default). With the three below, the comparisons (throughput,
    /// latency, languages) measure these settings instead of the defaults.
    #[arg(long, value_parser = super::args::at_least_one())]
    consumers: Option<usize>,
    /// warren's prefetch per consumer while measured (default: warren's).
    #[arg(long, value_parser = clap::value_parser!(u16).range(1..))]
    prefetch: Option<u16>,
    /// warren's deliveries handled at once per consumer while measured
    /// (default: warren's).
    #[arg(long, value_parser = super::args::at_least_one())]
    in_flight: Option<usize>,
    /// warren's ack gather in milliseconds while measured (default: warren's).
    #[arg(long, value_name = "MS", value_parser = clap::value_parser!(u64).range(0..=1000))]
    ack_gather: Option<u64>,
    /// The storage version of warren's classic queues while measured
    /// (default: warren's).
    #[arg(long, value_enum)]
    queue_version: Option<warren::broker::amqp::QueueVersion>,
    /// Write each latency run's per-message latencies to this folder (CSV:
    /// index, sent µs, latency µs; one file per run, in the order run).
    #[arg(long, value_name = "DIR")]
    latency_dump: Option<PathBuf>,
    /// Also write the tables (Markdown) to this file.
    #[arg(long)]
    output: Option<PathBuf>,
}

pub async fn run(c: Bench) -> Result<()> {
    let exe = std::env::current_exe().context("locating the warren binary")?;
    let mut config = BenchConfig::full(c.amqp_url, c.plugins, exe);
    let defaults = config.warren;
    config.warren = warren::bench::Shape::new(
        c.consumers.unwrap_or(defaults.consumers),
        c.prefetch.unwrap_or(defaults.prefetch),
        c.in_flight.unwrap_or(defaults.in_flight),
    );
    if let Some(ms) = c.ack_gather {
        config.ack_gather = std::time::Duration::from_millis(ms);
    }
    if let Some(v) = c.queue_version {
        config.queue_version = v;
    }
    config.latency_dump = c.latency_dump;
    if c.quick {
        config = config.quick();
    }
    config.messages = c.messages.unwrap_or(config.messages);
    config.rounds = c.rounds.unwrap_or(config.rounds);
    if !c.rate.is_empty() {
        config.rates = c.rate;
    }
    config.skip_rabbitmq = c.no_rabbitmq;
    config.only = c.only;
    config.trace_hops = c.trace_hops;
    let tables = warren::bench::run(&config, |t| println!("{}", t.markdown())).await?;
    if let Some(path) = c.output {
        let text: Vec<String> = tables.iter().map(|t| t.markdown()).collect();
        std::fs::write(&path, text.join("\n"))
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}
