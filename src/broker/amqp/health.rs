//! Queue health for `status`, through a connection recovery.
//!
//! Counts come from passive declares, which need the connection. While
//! lapin's recovery runs (a lost link, a node failing over) a new channel is
//! refused ("invalid connection state: Reconnecting"), and a status that
//! failed then would hide the one thing worth seeing. So a status waits a
//! little for the recovery ([`STATUS_WAIT`]); a connection still down after
//! that is reported, not raised: each queue shows the counts of the last
//! status that got them, with a status that says they are not current.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use anyhow::Result;

use super::Inner;
use crate::broker::QueueStats;
use crate::names;

/// Longest a status waits for the connection to come back before it answers
/// from the last counts it had.
pub(super) const STATUS_WAIT: Duration = Duration::from_secs(5);

/// The counts of the last status that reached the broker, and when.
#[derive(Default)]
pub(super) struct LastCounts {
    rows: std::sync::Mutex<HashMap<String, (QueueStats, Instant)>>,
}

impl Inner {
    /// Whether lapin is recovering the connection (not closed for good).
    pub(super) fn recovering(&self) -> bool {
        let status = self.connection.status();
        status.reconnecting() || status.connecting()
    }

    /// The connection's state in a word for people: `connected`,
    /// `reconnecting` (lapin's recovery, in any of its steps), `closed`,
    /// `failed`.
    pub(super) fn connection_state(&self) -> &'static str {
        let status = self.connection.status();
        if status.connected() {
            "connected"
        } else if self.recovering() {
            "reconnecting"
        } else if status.errored() {
            "failed"
        } else {
            "closed"
        }
    }

    /// Waits up to `bound` for the connection to be usable; false if it is
    /// not (still recovering, or closed).
    pub(super) async fn wait_connected(&self, bound: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + bound;
        loop {
            if self.connection.status().connected() {
                return true;
            }
            if !self.recovering() || tokio::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Every known agent's queue counts; from the last status that had them
    /// when the connection is down for longer than [`STATUS_WAIT`].
    pub(super) async fn stats(&self) -> Result<Vec<QueueStats>> {
        let agents: Vec<String> = self.agents.lock().unwrap().iter().cloned().collect();
        let asked = tokio::time::timeout(STATUS_WAIT, async {
            let mut rows = Vec::new();
            for agent in &agents {
                rows.push(self.queue_stats(agent).await?);
            }
            anyhow::Ok(rows)
        })
        .await;
        let why = match asked {
            Ok(Ok(rows)) => {
                let now = Instant::now();
                let mut last = self.last_counts.rows.lock().unwrap();
                for row in &rows {
                    last.insert(row.agent.clone(), (row.clone(), now));
                }
                return Ok(rows);
            }
            Ok(Err(e)) if self.connection.status().connected() => return Err(e),
            Ok(Err(e)) => format!("{e:#}"),
            Err(_) => format!("no answer within {STATUS_WAIT:?}"),
        };
        let state = self.connection_state();
        tracing::warn!(
            "RabbitMQ connection to {} is {state} ({why}): status shows the last counts known",
            self.redacted
        );
        let last = self.last_counts.rows.lock().unwrap();
        Ok(agents
            .iter()
            .map(|agent| match last.get(agent) {
                Some((row, at)) => QueueStats {
                    status: format!(
                        "broker {state}; counts from {}s ago",
                        at.elapsed().as_secs()
                    ),
                    ..row.clone()
                },
                None => QueueStats {
                    status: format!("broker {state}; counts unknown"),
                    ..unknown(agent)
                },
            })
            .collect())
    }

    /// One agent's row: its queue's and dead-letter queue's counts.
    async fn queue_stats(&self, agent: &str) -> Result<QueueStats> {
        let main = self.queue_counts(&names::queue(agent)).await?;
        let dead = self.queue_counts(&names::dead_letter_queue(agent)).await?;
        let (message_count, consumer_count) = main.unwrap_or((0, 0));
        let status = match (main, consumer_count) {
            (None, _) => "missing",
            (Some(_), 0) => "idle",
            _ => "active",
        };
        Ok(QueueStats {
            message_count,
            consumer_count,
            dead_letter_count: dead.map(|d| d.0).unwrap_or(0),
            status: status.into(),
            ..unknown(agent)
        })
    }
}

/// A row with the names only: no counts.
fn unknown(agent: &str) -> QueueStats {
    QueueStats {
        agent: agent.to_string(),
        queue: names::queue(agent),
        routing_key: names::routing_key(agent),
        dead_letter_queue: names::dead_letter_queue(agent),
        message_count: 0,
        consumer_count: 0,
        // Not visible over AMQP (the management API has it).
        unacked: 0,
        delayed: 0,
        dead_letter_count: 0,
        status: String::new(),
    }
}
