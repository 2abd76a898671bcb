//! CPU time during a run: RabbitMQ's, when the broker is a process on this
//! machine, and the relay's own. On two cores shared by the broker and the
//! relay, msg/s moves by ±10% from run to run; CPU seconds per message move
//! far less, and they say where the time goes: the broker's is what headers
//! and acks in batches change, the relay's what the sandbox path costs.

use std::path::Path;
use std::time::Duration;

/// Linux reports process CPU time in clock ticks of 1/100 s (USER_HZ).
const TICKS_PER_SECOND: f64 = 100.0;

/// The RabbitMQ node listening on a port, found by its process.
pub(super) struct BrokerCpu {
    pid: Option<u32>,
}

impl BrokerCpu {
    /// The local node serving `amqp_url`'s port; none (the figures are
    /// left out) when it is not a process here that can be read.
    pub(super) fn find(amqp_url: &str) -> Self {
        let port = amqp_url
            .parse::<lapin::uri::AMQPUri>()
            .map(|u| u.authority.port)
            .unwrap_or(5672);
        BrokerCpu {
            pid: node_on_port(Path::new("/proc"), port),
        }
    }

    /// CPU seconds (user + system) the node has used so far.
    pub(super) fn seconds(&self) -> Option<f64> {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.pid?)).ok()?;
        cpu_seconds(&stat)
    }

    /// Waits (at most [`QUIET_AT_MOST`]) until the node is idle: after a
    /// run RabbitMQ goes on working for a while (deleting what was acked,
    /// compacting its message store), and a run started meanwhile pays for
    /// its predecessor. Returns at once when the node cannot be read.
    pub(super) async fn quiet(&self) {
        let Some(mut last) = self.seconds() else {
            return;
        };
        let until = tokio::time::Instant::now() + QUIET_AT_MOST;
        while tokio::time::Instant::now() < until {
            tokio::time::sleep(QUIET_SAMPLE).await;
            let Some(now) = self.seconds() else { return };
            if now - last < QUIET_SAMPLE.as_secs_f64() * QUIET_SHARE {
                return;
            }
            last = now;
        }
    }
}

/// How long [`BrokerCpu::quiet`] looks at the node's CPU at a time.
const QUIET_SAMPLE: Duration = Duration::from_millis(300);
/// The share of one core below which the node counts as idle (an idle node
/// uses a few percent; a single clock tick in a sample is 3%).
const QUIET_SHARE: f64 = 0.1;
/// The longest [`BrokerCpu::quiet`] waits.
const QUIET_AT_MOST: Duration = Duration::from_secs(5);

/// CPU seconds (user + system) this process has used so far: the relay's
/// own cost (in the benchmark, warren's host and the raw relay run in it).
pub(super) fn own_seconds() -> Option<f64> {
    cpu_seconds(&std::fs::read_to_string("/proc/self/stat").ok()?)
}

/// CPU seconds (user + system) the calling thread has used so far: what a
/// benchmark's load threads cost, to be taken out of the process's.
pub(super) fn thread_seconds() -> Option<f64> {
    cpu_seconds(&std::fs::read_to_string("/proc/thread-self/stat").ok()?)
}

/// user + system time from a `/proc/PID/stat` line.
fn cpu_seconds(stat: &str) -> Option<f64> {
    // Fields after the command (which may hold spaces) closed by ')'.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) as f64 / TICKS_PER_SECOND)
}

/// The Erlang VM running RabbitMQ (`-s rabbit boot`) whose
/// `RABBITMQ_NODE_PORT` (default 5672) is `port`.
fn node_on_port(proc: &Path, port: u16) -> Option<u32> {
    std::fs::read_dir(proc)
        .ok()?
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .find(|pid| {
            let dir = proc.join(pid.to_string());
            let Ok(cmdline) = std::fs::read(dir.join("cmdline")) else {
                return false;
            };
            let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
            let rabbit = args
                .windows(3)
                .any(|w| w == [&b"-s"[..], b"rabbit", b"boot"]);
            if !rabbit || !args[0].ends_with(b"beam.smp") {
                return false;
            }
            let env = std::fs::read(dir.join("environ")).unwrap_or_default();
            let node_port = env
                .split(|b| *b == 0)
                .filter_map(|kv| kv.strip_prefix(b"RABBITMQ_NODE_PORT="))
                .find_map(|v| std::str::from_utf8(v).ok()?.parse::<u16>().ok())
                .unwrap_or(5672);
            node_port == port
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_user_and_system_time() {
        let stat = "2976 (beam.smp) S 1 2976 2976 0 -1 4194560 1 0 0 0 61400 9900 0 0 20 0 30 0";
        assert_eq!(cpu_seconds(stat), Some(713.0));
    }

    #[test]
    fn finds_the_node_by_its_port() {
        let proc = tempfile::tempdir().unwrap();
        let node = |pid: u32, cmd: &[&str], env: &str| {
            let dir = proc.path().join(pid.to_string());
            std::fs::create_dir(&dir).unwrap();
            std::fs::write(dir.join("cmdline"), cmd.join("\0")).unwrap();
            std::fs::write(dir.join("environ"), env).unwrap();
        };
        let beam = "/usr/lib/erlang/erts/bin/beam.smp";
        node(10, &[beam, "-run", "escript", "rabbitmqctl"], "");
        node(
            11,
            &[beam, "-s", "rabbit", "boot"],
            "RABBITMQ_NODE_PORT=5701\0HOME=/",
        );
        node(12, &[beam, "-s", "rabbit", "boot"], "HOME=/");
        assert_eq!(node_on_port(proc.path(), 5672), Some(12));
        assert_eq!(node_on_port(proc.path(), 5701), Some(11));
        assert_eq!(node_on_port(proc.path(), 5800), None);
    }
}
