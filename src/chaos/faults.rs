//! The faults `warren chaos` injects, and how each is injected.

use std::process::Command;
use std::time::Duration;

use anyhow::{Context as _, Result, bail};

/// One kind of fault.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Fault {
    /// `rabbitmqctl close_all_connections --vhost V`: every connection of
    /// the vhost is closed by the broker.
    Close,
    /// `rabbitmqctl stop_app` then `start_app`: the broker goes away and
    /// comes back with what it persisted.
    Restart,
    /// The host is killed (SIGKILL) and started again.
    Kill,
    /// A new build of the agent is written over its plugin file (as `cp`
    /// does: in place) while it serves.
    Swap,
    /// The cluster node the host is on is stopped (and started again once
    /// the host serves from another).
    Node,
    /// The host's link to the broker stops carrying anything without being
    /// closed, for three heartbeats, then heals.
    Freeze,
}

impl Fault {
    pub fn label(self) -> &'static str {
        match self {
            Fault::Close => "connection closes",
            Fault::Restart => "broker restarts",
            Fault::Kill => "host kills",
            Fault::Swap => "plugin swaps",
            Fault::Node => "cluster node losses",
            Fault::Freeze => "frozen links",
        }
    }

    /// Parses `close=10,restart=5,...` (a kind alone means once).
    pub fn parse_list(text: &str) -> Result<Vec<(Fault, usize)>> {
        use clap::ValueEnum as _;
        let mut faults = Vec::new();
        for item in text.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            let (name, times) = item.split_once('=').unwrap_or((item, "1"));
            let fault = Fault::from_str(name, true).map_err(|_| {
                anyhow::anyhow!(
                    "unknown fault `{name}` (known: close, restart, kill, swap, node, freeze)"
                )
            })?;
            let times: usize = times
                .parse()
                .with_context(|| format!("`{item}`: the count is not a number"))?;
            faults.push((fault, times));
        }
        Ok(faults)
    }
}

/// Runs a shell command line, failing with its output if it fails.
pub fn shell(line: &str) -> Result<()> {
    let out = Command::new("sh")
        .args(["-c", line])
        .output()
        .with_context(|| format!("running `{line}`"))?;
    if !out.status.success() {
        bail!(
            "`{line}` failed ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout).trim(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// The broker's side of a fault, through `rabbitmqctl` (`ctl` is the
/// command that runs it, e.g. `rabbitmqctl -n rabbit@host`).
pub fn close_connections(ctl: &str, vhost: &str) -> Result<()> {
    shell(&format!(
        "{ctl} close_all_connections --vhost '{vhost}' 'warren chaos: connection close'"
    ))
}

pub async fn restart_broker(ctl: &str) -> Result<()> {
    let ctl = ctl.to_string();
    tokio::task::spawn_blocking(move || {
        shell(&format!("{ctl} stop_app"))?;
        std::thread::sleep(Duration::from_secs(1));
        shell(&format!("{ctl} start_app"))
    })
    .await?
}

/// Fills the node command's template: `{action}` (stop or start), `{n}`
/// (the node's place in the URL list, from 1), `{host}`, `{port}`.
pub fn node_command(template: &str, action: &str, n: usize, addr: &str) -> String {
    let (host, port) = addr.rsplit_once(':').unwrap_or((addr, ""));
    template
        .replace("{action}", action)
        .replace("{n}", &n.to_string())
        .replace("{host}", host)
        .replace("{port}", port)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fault_lists_and_node_commands() {
        assert_eq!(
            Fault::parse_list("close=10, swap,kill=0").unwrap(),
            [(Fault::Close, 10), (Fault::Swap, 1), (Fault::Kill, 0)]
        );
        assert!(Fault::parse_list("melt=1").is_err());
        assert_eq!(
            node_command(
                "scripts/rabbitmq-cluster.sh {action} {n}",
                "stop",
                2,
                "127.0.0.1:5702"
            ),
            "scripts/rabbitmq-cluster.sh stop 2"
        );
        assert_eq!(
            node_command("ssh {host} rabbitmqctl {action}_app", "start", 1, "h1:5672"),
            "ssh h1 rabbitmqctl start_app"
        );
    }
}
