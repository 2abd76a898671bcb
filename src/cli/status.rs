//! `warren status`: each agent's queue, once or as a live view.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Result;
use clap::Args;

use super::args::RemoteArgs;
use warren::Broker as _;
use warren::broker::amqp::AmqpBroker;
use warren::status::{AgentStatus, Status};
use warren::{control, names, registry};

#[derive(Args)]
pub struct StatusCmd {
    /// Print JSON instead of a table (every field, plus `debug_queues`).
    #[arg(long)]
    json: bool,
    /// Print only the original client's `debug_queues()` object: per agent,
    /// queue_name, message_count, consumer_count, routing_key, status.
    #[arg(long, conflicts_with_all = ["json", "watch"])]
    debug_queues: bool,
    #[command(flatten)]
    remote: RemoteArgs,
    /// With RabbitMQ: report the agents of this plugins folder...
    #[arg(long, env = "WARREN_PLUGINS", default_value = "plugins")]
    plugins: PathBuf,
    /// ...and these agents (repeatable).
    #[arg(long = "agent")]
    agents: Vec<String>,
    /// Refresh every N seconds (a live view: calls/s, queue depth,
    /// consumers, version, last error) until Ctrl-C.
    #[arg(long, value_name = "SECONDS", num_args = 0..=1, default_missing_value = "2")]
    watch: Option<f64>,
    /// Wait up to SECONDS for a host that is starting: until it answers and
    /// every agent has a version loaded and a consumer (for scripts, after
    /// `warren run ... &`); exits non-zero if that does not happen in time.
    #[arg(long, value_name = "SECONDS", conflicts_with = "watch")]
    wait_ready: Option<f64>,
}

/// Whether every agent of `status` is loaded (nothing still compiling) and consumed.
fn all_ready(status: &Status) -> bool {
    !status.agents.is_empty()
        && status.agents.iter().all(|a| {
            a.queue.consumer_count > 0
                && !a.queue.status.contains("loading")
                && (status.remote || a.version.is_some())
        })
}

pub async fn run(c: StatusCmd) -> Result<()> {
    let RemoteArgs { control, broker } = c.remote;
    let amqp = broker.connect().await?;
    let fetch = || async {
        match &amqp {
            Some(amqp) => amqp_status(amqp, &c.plugins, &c.agents).await,
            None => control::status(&control).await,
        }
    };
    if let Some(secs) = c.wait_ready {
        let deadline =
            std::time::Instant::now() + Duration::from_secs_f64(secs.clamp(0.0, 86_400.0));
        let last = loop {
            let status = fetch().await;
            let done = matches!(&status, Ok(s) if all_ready(s));
            if done || std::time::Instant::now() >= deadline {
                break status;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        };
        if let Some(amqp) = &amqp {
            amqp.close().await;
        }
        let status = last.map_err(|e| e.context(format!("no host ready within {secs} s")))?;
        print!("{}", status.table());
        if !all_ready(&status) {
            anyhow::bail!("not every agent is loaded and consuming after {secs} s (see the table)");
        }
        return Ok(());
    }
    if let Some(secs) = c.watch {
        let every = Duration::from_secs_f64(if secs.is_finite() {
            secs.clamp(0.2, 3600.0)
        } else {
            2.0
        });
        let mut previous: Option<(Status, std::time::Instant)> = None;
        loop {
            let status = fetch().await?;
            let now = std::time::Instant::now();
            let elapsed = previous
                .as_ref()
                .map(|(_, at)| now.duration_since(*at).as_secs_f64())
                .unwrap_or(0.0);
            // Clear the screen, then the table.
            print!(
                "\x1b[2J\x1b[H{}",
                status.watch_table(previous.as_ref().map(|(s, _)| s), elapsed)
            );
            previous = Some((status, now));
            tokio::select! {
                _ = tokio::signal::ctrl_c() => break,
                _ = tokio::time::sleep(every) => {}
            }
        }
        if let Some(amqp) = &amqp {
            amqp.close().await;
        }
        return Ok(());
    }
    let status = fetch().await;
    if let Some(amqp) = &amqp {
        amqp.close().await;
    }
    let status = status?;
    if c.debug_queues {
        println!("{}", serde_json::to_string_pretty(&status.debug_queues())?);
    } else if c.json {
        println!("{}", serde_json::to_string_pretty(&status.to_json())?);
    } else {
        print!("{}", status.table());
    }
    Ok(())
}

/// Queue health straight from RabbitMQ, for the agents of a plugins folder
/// plus any named ones (AMQP cannot list queues).
async fn amqp_status(amqp: &AmqpBroker, plugins: &Path, agents: &[String]) -> Result<Status> {
    let mut names_seen: Vec<String> = agents.iter().map(|a| names::normalise(a)).collect();
    if plugins.is_dir() {
        for file in registry::plugin_files(plugins)? {
            if let Ok(name) = names::from_path(&file) {
                names_seen.push(name);
            }
        }
    }
    if names_seen.is_empty() {
        anyhow::bail!("no agents to report: pass --plugins DIR or --agent NAME");
    }
    amqp.watch_agents(names_seen);
    Ok(Status {
        broker: amqp.describe(),
        node: amqp.node(),
        failovers: amqp.failovers(),
        agents: amqp
            .stats()
            .await?
            .into_iter()
            .map(AgentStatus::remote)
            .collect(),
        remote: true,
        unclaimed_replies: None,
    })
}
