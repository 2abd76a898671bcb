//! `warren chaos`: faults injected into a running host in the middle of a
//! backlog, and every message accounted for, the way Jepsen's queue tests
//! count.
//!
//! One row per kind of fault: N requests are preloaded for an echo agent
//! (plain AMQP messages with a correlation id and a reply queue), `warren
//! run` is started as a child process, the fault is injected K times spread
//! over the backlog (each after the host recovered from the one before), the
//! run waits until the answers stop coming, stops the host and reads the
//! reply queue and the dead-letter queue: every request must be answered or
//! dead-lettered (**lost** otherwise); answers beyond one per request are
//! **duplicates** (at-least-once delivery: at most the host's in-flight
//! window per fault); an answer to no request is **unexpected**.
//!
//! - [`faults`]: the kinds and how each is injected (`rabbitmqctl`, signals,
//!   plugin files, cluster nodes, the proxy).
//! - [`ledger`]: the run's own connection: preload, progress, the final count.
//! - [`host`]: the host as a child process.
//! - [`proxy`]: a TCP proxy that freezes a link without closing it.

pub mod faults;
mod host;
mod ledger;
mod proxy;

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};

pub use faults::Fault;
pub use proxy::Proxy;

use crate::bench::Table;
use crate::bench::local::distinct_copy;
use crate::broker::Broker as _;
use crate::broker::amqp::{AmqpBroker, AmqpConfig, QueueType};
use crate::names;
use host::HostProcess;
use ledger::{Ledger, request_id};

/// The agent every request goes to (the echo component under this name).
pub const AGENT: &str = "chaos_echo";
/// Where its answers go.
pub const REPLIES: &str = "chaos_replies";

pub struct ChaosConfig {
    /// The broker's nodes (one for a single broker); the first gives the
    /// user, password and vhost.
    pub urls: Vec<String>,
    /// Requests per row.
    pub messages: usize,
    /// The rows: each kind of fault and how many times it is injected.
    pub faults: Vec<(Fault, usize)>,
    /// The `warren` binary run as the host.
    pub warren_exe: PathBuf,
    /// The echo component.
    pub echo: PathBuf,
    /// How to run `rabbitmqctl` against the broker (closes, restarts).
    pub ctl: String,
    /// How to stop and start a cluster node: `{action}`, `{n}`, `{host}`,
    /// `{port}` are filled in.
    pub node_ctl: String,
    pub queue_type: QueueType,
    /// The host's AMQP heartbeat (a frozen link is noticed after ~2×).
    pub heartbeat: u16,
    /// Extra `warren run` options (e.g. `--prefetch 64`).
    pub host_args: Vec<String>,
    /// A row ends when no answer came for this long.
    pub quiet: Duration,
}

/// One row's count.
#[derive(Debug, Default, Clone)]
pub struct Row {
    pub fault: Option<Fault>,
    pub injected: usize,
    pub messages: usize,
    pub answered: usize,
    pub lost: usize,
    pub duplicates: usize,
    pub unexpected: usize,
    pub dead_lettered: usize,
    /// Still in the agent queue when the row ended.
    pub pending: usize,
    /// From each injection to the first answer after it was over (and
    /// 200 ms more, so that answers already on their way are not counted).
    pub recoveries: Vec<Duration>,
}

impl Row {
    pub fn ok(&self) -> bool {
        self.lost == 0 && self.pending == 0 && self.unexpected == 0
    }
}

fn vhost_of(url: &str) -> String {
    let uri: Result<lapin::uri::AMQPUri, _> = url.parse();
    uri.map(|u| u.vhost).unwrap_or_else(|_| "/".into())
}

/// Runs every row, printing each as it ends; the table of all of them.
pub async fn run(config: &ChaosConfig, mut print: impl FnMut(&Row)) -> Result<(Table, Vec<Row>)> {
    let mut rows = Vec::new();
    for (fault, times) in &config.faults {
        let row = run_row(config, *fault, *times)
            .await
            .with_context(|| format!("the {} row", fault.label()))?;
        print(&row);
        rows.push(row);
    }
    Ok((table(config, &rows), rows))
}

pub fn table(config: &ChaosConfig, rows: &[Row]) -> Table {
    let mut t = Table::new(
        &format!(
            "Chaos: {} requests per row, echo agent, {} queues",
            config.messages,
            match config.queue_type {
                QueueType::Classic => "classic",
                QueueType::Quorum => "quorum",
            }
        ),
        &[
            "fault",
            "injected",
            "messages",
            "answered",
            "lost",
            "duplicates",
            "dead-lettered",
            "unexpected",
            "recovery (median / max)",
        ],
    );
    for r in rows {
        let mut rec = r.recoveries.clone();
        rec.sort();
        let recovery = match (rec.get(rec.len() / 2), rec.last()) {
            (Some(m), Some(x)) => format!("{:.1} s / {:.1} s", m.as_secs_f64(), x.as_secs_f64()),
            _ => "-".into(),
        };
        let lost = if r.pending > 0 {
            format!("{} ({} still queued)", r.lost, r.pending)
        } else {
            r.lost.to_string()
        };
        t.row(vec![
            r.fault.map_or("none", Fault::label).to_string(),
            r.injected.to_string(),
            r.messages.to_string(),
            r.answered.to_string(),
            lost,
            r.duplicates.to_string(),
            r.dead_lettered.to_string(),
            r.unexpected.to_string(),
            recovery,
        ]);
    }
    t.note = Some(
        "lost: a request neither answered nor dead-lettered; duplicates: answers beyond one \
         per request (at-least-once: a fault can repeat at most the host's unacknowledged \
         window, consumers × in-flight); recovery: from the start of the fault (its own length \
         included: a restart's stop and start, a freeze's three heartbeats, a killed host's \
         restart) to the first answer after it"
            .into(),
    );
    t
}

/// What the host's side of a row needs.
struct Setup {
    dir: tempfile::TempDir,
    plugin: PathBuf,
    echo: Vec<u8>,
    proxy: Option<Proxy>,
}

async fn run_row(config: &ChaosConfig, fault: Fault, times: usize) -> Result<Row> {
    let url = &config.urls[0];
    let vhost = vhost_of(url);
    let queue = names::queue(AGENT);
    let dlq = names::dead_letter_queue(AGENT);
    let mut ledger = Ledger::new(&config.urls, config.queue_type);

    // The agent's queues as the host declares them, empty; the reply queue.
    let admin = AmqpBroker::connect(AmqpConfig {
        more_urls: config.urls[1..].to_vec(),
        queue_type: config.queue_type,
        ..AmqpConfig::new(url.clone())
    })
    .await?;
    admin.declare_agent(AGENT).await?;
    admin.close().await;
    ledger.purge(&queue).await?;
    ledger.purge(&dlq).await?;
    ledger.fresh_queue(REPLIES).await?;
    // The host's side first: a missing component fails before the preload.
    let setup = setup(config, fault).await?;
    ledger.preload(&queue, config.messages, REPLIES).await?;

    let mut host_urls = config.urls.clone();
    if let Some(proxy) = &setup.proxy {
        let uri: lapin::uri::AMQPUri = url.parse().map_err(|e: String| anyhow::anyhow!(e))?;
        let direct = format!("{}:{}", uri.authority.host, uri.authority.port);
        host_urls[0] = url.replacen(&direct, &proxy.addr.to_string(), 1);
    }
    let mut args = vec![
        "--plugins".to_string(),
        setup.dir.path().display().to_string(),
    ];
    for u in &host_urls {
        args.extend(["--amqp-url".to_string(), u.clone()]);
    }
    args.extend([
        "--queue-type".to_string(),
        match config.queue_type {
            QueueType::Classic => "classic",
            QueueType::Quorum => "quorum",
        }
        .to_string(),
        "--heartbeat".to_string(),
        config.heartbeat.to_string(),
        "--control".to_string(),
        setup.dir.path().join("control.sock").display().to_string(),
        "--log".to_string(),
        "warn".to_string(),
    ]);
    args.extend(config.host_args.iter().cloned());
    let log = setup.dir.path().join("host.log");
    let mut host = HostProcess::new(&config.warren_exe, args, &log)?;
    host.start()?;
    host.wait_ready(Duration::from_secs(120)).await?;
    // The host's own consumers: more means a connection the broker still
    // holds deliveries for.
    let consumers = ledger.state(&queue).await.map_or(0, |(_, c)| c);

    let mut row = Row {
        fault: Some(fault),
        messages: config.messages,
        ..Default::default()
    };
    let mut progress = Progress::new();
    let mut stopped_node = None;
    let result = async {
        for k in 0..times {
            // Spread over the backlog: the k-th when (k+1)/(times+1) of it is answered.
            let mark = config.messages * (k + 1) / (times + 1);
            while progress.answered < mark {
                progress.poll(&mut ledger, &mut host).await?;
                if progress.quiet_for(config.quiet) {
                    bail!(
                        "no answer for {:?} before fault {} ({} of {} answered); the host's log is {}",
                        config.quiet,
                        k + 1,
                        progress.answered,
                        config.messages,
                        log.display()
                    );
                }
            }
            let injected = Instant::now();
            inject(config, fault, k, &mut host, &setup, &vhost, &mut stopped_node).await?;
            // Answers the host published just before the fault may land
            // after it: progress counts from a moment later.
            tokio::time::sleep(Duration::from_millis(200)).await;
            progress.poll(&mut ledger, &mut host).await?;
            let over = progress.answered;
            row.injected += 1;
            // Recovered: answers come again (or there is nothing left to answer).
            loop {
                progress.poll(&mut ledger, &mut host).await?;
                if progress.answered > over || progress.answered >= config.messages {
                    row.recoveries.push(injected.elapsed());
                    break;
                }
                if injected.elapsed() > config.quiet + Duration::from_secs(60) {
                    bail!(
                        "no answer within {:?} after fault {}; the host's log is {}",
                        injected.elapsed(),
                        k + 1,
                        log.display()
                    );
                }
            }
            // A lost node comes back once the host serves from another.
            if let Some((n, addr)) = stopped_node.take() {
                faults::shell(&faults::node_command(&config.node_ctl, "start", n, &addr))?;
            }
        }
        // The rest of the backlog, until every request is answered or the
        // answers stop.
        while progress.answered < config.messages && !progress.quiet_for(config.quiet) {
            progress.poll(&mut ledger, &mut host).await?;
        }
        // Deliveries held by a connection the broker has not given up on
        // yet (a frozen link: until its heartbeats are missed) come back
        // only when it does, to be handled again: wait for that (only the
        // host's consumers left, nothing ready) before counting what is left.
        let deadline = Instant::now() + config.quiet + Duration::from_secs(60);
        while Instant::now() < deadline {
            match ledger.state(&queue).await {
                Some((0, c)) if c <= consumers => break,
                _ => progress.poll(&mut ledger, &mut host).await?,
            }
        }
        anyhow::Ok(())
    }
    .await;
    // Late duplicates (a redelivery after the last recovery) have arrived by now.
    tokio::time::sleep(Duration::from_secs(1)).await;
    host.stop();
    if let Some((n, addr)) = stopped_node.take() {
        let _ = faults::shell(&faults::node_command(&config.node_ctl, "start", n, &addr));
    }
    if let Err(e) = result {
        let kept = setup.dir.keep();
        return Err(e.context(format!("the host's folder is kept: {}", kept.display())));
    }

    let seen = ledger.drain(REPLIES).await?;
    let admin = AmqpBroker::connect(AmqpConfig {
        more_urls: config.urls[1..].to_vec(),
        queue_type: config.queue_type,
        ..AmqpConfig::new(url.clone())
    })
    .await?;
    let dead: std::collections::HashSet<String> = admin
        .dead_letters(AGENT)
        .await?
        .into_iter()
        .map(|d| d.envelope.conversation_id)
        .collect();
    admin.close().await;
    row.pending = ledger.count(&queue).await.unwrap_or(0);
    count(&mut row, &seen, &dead);
    ledger.purge(&queue).await?;
    ledger.purge(&dlq).await?;
    ledger.delete(REPLIES).await;
    if !row.ok() || std::env::var_os("WARREN_CHAOS_KEEP").is_some() {
        // Kept for a look: the folder holds the host's log.
        let kept = setup.dir.keep();
        tracing::warn!(
            "{}: {} lost, {} still queued; the host's log is {}",
            fault.label(),
            row.lost,
            row.pending,
            kept.join("host.log").display()
        );
    }
    Ok(row)
}

/// Fills the row's counts from the answers seen and the dead letters.
fn count(row: &mut Row, seen: &HashMap<String, usize>, dead: &std::collections::HashSet<String>) {
    let expected: std::collections::HashSet<String> = (0..row.messages).map(request_id).collect();
    row.answered = expected.iter().filter(|id| seen.contains_key(*id)).count();
    row.duplicates = seen
        .iter()
        .filter(|(id, _)| expected.contains(*id))
        .map(|(_, n)| n - 1)
        .sum();
    row.unexpected = seen
        .iter()
        .filter(|(id, _)| !expected.contains(*id))
        .map(|(_, n)| n)
        .sum();
    row.dead_lettered = expected
        .iter()
        .filter(|id| !seen.contains_key(*id) && dead.contains(*id))
        .count();
    row.lost = (row.messages - row.answered - row.dead_lettered).saturating_sub(row.pending);
}

async fn setup(config: &ChaosConfig, fault: Fault) -> Result<Setup> {
    let dir = tempfile::Builder::new().prefix("warren-chaos-").tempdir()?;
    let echo = std::fs::read(&config.echo)
        .with_context(|| format!("reading the echo component {}", config.echo.display()))?;
    let plugin = dir.path().join(format!("{AGENT}.wasm"));
    std::fs::write(&plugin, &echo)?;
    let proxy = match fault {
        Fault::Freeze => {
            let uri: lapin::uri::AMQPUri = config.urls[0]
                .parse()
                .map_err(|e: String| anyhow::anyhow!(e))?;
            let upstream =
                tokio::net::lookup_host((uri.authority.host.as_str(), uri.authority.port))
                    .await?
                    .next()
                    .context("resolving the broker's address")?;
            Some(Proxy::start(upstream).await?)
        }
        _ => None,
    };
    Ok(Setup {
        dir,
        plugin,
        echo,
        proxy,
    })
}

async fn inject(
    config: &ChaosConfig,
    fault: Fault,
    k: usize,
    host: &mut HostProcess,
    setup: &Setup,
    vhost: &str,
    stopped_node: &mut Option<(usize, String)>,
) -> Result<()> {
    match fault {
        Fault::Close => faults::close_connections(&config.ctl, vhost),
        Fault::Restart => faults::restart_broker(&config.ctl).await,
        Fault::Kill => {
            host.kill();
            host.start()?;
            // Over when the new host serves: answers counted before that
            // were published by the killed one.
            host.wait_ready(Duration::from_secs(120)).await
        }
        Fault::Swap => {
            // In place, as `cp` writes: the watcher sees a partial file first.
            let copy = distinct_copy(&setup.echo, &format!("chaos swap {k}"));
            std::fs::write(&setup.plugin, copy)
                .with_context(|| format!("writing {}", setup.plugin.display()))
        }
        Fault::Node => {
            let node = host
                .readiness()
                .await
                .and_then(|r| r.node)
                .context("the host does not say which node it is on (/readyz)")?;
            let n = config
                .urls
                .iter()
                .position(|u| {
                    u.parse::<lapin::uri::AMQPUri>().is_ok_and(|uri| {
                        format!("{}:{}", uri.authority.host, uri.authority.port) == node
                    })
                })
                .context("the host's node is not one of the URLs given")?
                + 1;
            faults::shell(&faults::node_command(&config.node_ctl, "stop", n, &node))?;
            *stopped_node = Some((n, node));
            Ok(())
        }
        Fault::Freeze => {
            let proxy = setup.proxy.as_ref().expect("a proxy for the freeze row");
            proxy.freeze();
            tokio::time::sleep(Duration::from_secs(3 * u64::from(config.heartbeat))).await;
            proxy.thaw();
            Ok(())
        }
    }
}

/// The reply queue's fill, polled.
struct Progress {
    answered: usize,
    last_change: Instant,
}

impl Progress {
    fn new() -> Self {
        Progress {
            answered: 0,
            last_change: Instant::now(),
        }
    }

    async fn poll(&mut self, ledger: &mut Ledger, host: &mut HostProcess) -> Result<()> {
        host.check_alive()?;
        tokio::time::sleep(Duration::from_millis(50)).await;
        if let Some(n) = ledger.count(REPLIES).await
            && n != self.answered
        {
            self.answered = n;
            self.last_change = Instant::now();
        }
        Ok(())
    }

    fn quiet_for(&self, quiet: Duration) -> bool {
        self.last_change.elapsed() > quiet
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_by_correlation_id() {
        let mut row = Row {
            messages: 5,
            ..Default::default()
        };
        let seen: HashMap<String, usize> = [
            (request_id(0), 1),
            (request_id(1), 3),
            (request_id(2), 1),
            ("stray".to_string(), 1),
        ]
        .into_iter()
        .collect();
        let dead = [request_id(3)].into_iter().collect();
        count(&mut row, &seen, &dead);
        assert_eq!(
            (
                row.answered,
                row.duplicates,
                row.unexpected,
                row.dead_lettered,
                row.lost
            ),
            (3, 2, 1, 1, 1)
        );
        assert!(!row.ok());
    }
}
