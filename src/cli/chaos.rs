//! `warren chaos`: faults injected into a running host mid-backlog, every
//! message counted (see `warren::chaos`).

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context as _, Result, bail};
use clap::Args;

use warren::broker::amqp::QueueType;
use warren::chaos::{ChaosConfig, Fault};

#[derive(Args)]
pub struct Chaos {
    /// The broker (repeat, or a comma-separated list, for a cluster's
    /// nodes). Its vhost gets the queues `agent_chaos_echo_queue` and
    /// `chaos_replies`, emptied before each row and removed after.
    #[arg(
        long,
        env = "WARREN_AMQP_URL",
        hide_env_values = true,
        value_delimiter = ',',
        default_value = "amqp://guest:guest@127.0.0.1:5672/%2f"
    )]
    amqp_url: Vec<String>,
    /// Requests per row.
    #[arg(long, default_value_t = 100_000)]
    messages: usize,
    /// The rows: fault=times, comma-separated. Kinds: close, restart, kill,
    /// swap, node (needs a cluster), freeze.
    #[arg(long, default_value = "close=10,restart=5,kill=3,swap=10,freeze=2")]
    faults: String,
    /// The echo component the host runs (as `chaos_echo`).
    #[arg(long, default_value = "plugins/echo.wasm")]
    echo: PathBuf,
    /// The command that runs rabbitmqctl for this broker (closes, restarts).
    #[arg(long, default_value = "rabbitmqctl")]
    ctl: String,
    /// The command that stops or starts a cluster node; `{action}` (stop or
    /// start), `{n}` (its place among the --amqp-url, from 1), `{host}` and
    /// `{port}` are filled in.
    #[arg(long, default_value = "scripts/rabbitmq-cluster.sh {action} {n}")]
    node_ctl: String,
    /// Queue type of the agent and reply queues (quorum for a cluster).
    #[arg(long, value_enum, default_value_t = QueueType::Classic)]
    queue_type: QueueType,
    /// The host's AMQP heartbeat in seconds; a frozen link lasts three.
    #[arg(long, default_value_t = 10)]
    heartbeat: u16,
    /// Seconds without an answer that end a row.
    #[arg(long, default_value_t = 30)]
    quiet: u64,
    /// More `warren run` options for the host, e.g. --host-arg=--prefetch=64.
    #[arg(long = "host-arg", allow_hyphen_values = true)]
    host_args: Vec<String>,
    /// Also write the table (Markdown) to this file.
    #[arg(long)]
    output: Option<PathBuf>,
}

pub async fn run(c: Chaos) -> Result<()> {
    let config = ChaosConfig {
        urls: c.amqp_url,
        messages: c.messages,
        faults: Fault::parse_list(&c.faults)?,
        warren_exe: std::env::current_exe().context("locating the warren binary")?,
        echo: c.echo,
        ctl: c.ctl,
        node_ctl: c.node_ctl,
        queue_type: c.queue_type,
        heartbeat: c.heartbeat,
        host_args: c.host_args,
        quiet: Duration::from_secs(c.quiet),
    };
    if config.urls.is_empty() {
        bail!("no --amqp-url given");
    }
    let (table, rows) = warren::chaos::run(&config, |row| {
        eprintln!(
            "{}: {} injected, {} of {} answered, {} lost, {} duplicates",
            row.fault.map_or("none", Fault::label),
            row.injected,
            row.answered,
            row.messages,
            row.lost,
            row.duplicates
        );
    })
    .await?;
    println!("{}", table.markdown());
    if let Some(path) = c.output {
        std::fs::write(&path, table.markdown())
            .with_context(|| format!("writing {}", path.display()))?;
    }
    let failed: Vec<&str> = rows
        .iter()
        .filter(|r| !r.ok())
        .map(|r| r.fault.map_or("none", Fault::label))
        .collect();
    if !failed.is_empty() {
        bail!(
            "messages were lost or left unanswered in: {}",
            failed.join(", ")
        );
    }
    Ok(())
}
