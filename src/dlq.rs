//! Dead-letter tools (`warren dlq`): list, show, replay and purge an agent's
//! dead letters, on RabbitMQ directly or on a running host's embedded broker
//! (through its control socket).

use std::fmt::Write as _;
use std::time::{Duration, UNIX_EPOCH};

use anyhow::{Result, bail};
use serde::{Deserialize, Serialize};

use crate::broker::{Broker, DeadLetter};

/// What to do with an agent's dead letters.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Op {
    List,
    /// One message (by id) or all, in full.
    Show {
        id: Option<String>,
    },
    /// Back to the agent's queue as first attempts: one (by id) or all.
    Replay {
        id: Option<String>,
    },
    /// Delete: one (by id) or all.
    Purge {
        id: Option<String>,
    },
}

/// One dead letter as an operator sees it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Entry {
    pub id: String,
    pub conversation_id: String,
    pub reason: String,
    /// Deliveries it had before it was dead-lettered.
    pub attempts: u32,
    /// When it first failed (RFC 3339, UTC), if known.
    pub first_failure: Option<String>,
    pub sender: Option<String>,
    pub body: String,
}

impl From<&DeadLetter> for Entry {
    fn from(l: &DeadLetter) -> Self {
        let e = &l.envelope;
        Entry {
            id: e.id.clone(),
            conversation_id: e.conversation_id.clone(),
            reason: l.reason.clone(),
            attempts: e.attempt,
            first_failure: e.first_failure_ms().map(|ms| {
                humantime::format_rfc3339_millis(UNIX_EPOCH + Duration::from_millis(ms)).to_string()
            }),
            sender: e.sender.clone(),
            body: String::from_utf8_lossy(&e.body).into_owned(),
        }
    }
}

/// The result of an operation.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Answer {
    pub agent: String,
    /// The dead letters looked at (list, show).
    pub entries: Vec<Entry>,
    /// How many were replayed or purged.
    pub moved: u64,
    pub op: Op,
}

pub async fn run(broker: &dyn Broker, agent: &str, op: Op) -> Result<Answer> {
    let agent = crate::names::normalise(agent);
    crate::names::validate(&agent)?;
    let (entries, moved) = match &op {
        Op::List => (entries(broker, &agent, None).await?, 0),
        Op::Show { id } => {
            let found = entries(broker, &agent, id.as_deref()).await?;
            if let (Some(id), true) = (id, found.is_empty()) {
                bail!("no dead letter with id `{id}` for agent `{agent}`");
            }
            (found, 0)
        }
        Op::Replay { id } => (
            Vec::new(),
            checked(
                broker.replay_dead_letters(&agent, id.as_deref()).await?,
                id,
                &agent,
            )?,
        ),
        Op::Purge { id } => (
            Vec::new(),
            checked(
                broker.purge_dead_letters(&agent, id.as_deref()).await?,
                id,
                &agent,
            )?,
        ),
    };
    Ok(Answer {
        agent,
        entries,
        moved,
        op,
    })
}

async fn entries(broker: &dyn Broker, agent: &str, id: Option<&str>) -> Result<Vec<Entry>> {
    Ok(broker
        .dead_letters(agent)
        .await?
        .iter()
        .filter(|l| id.is_none_or(|id| l.envelope.id == id))
        .map(Entry::from)
        .collect())
}

fn checked(n: u64, id: &Option<String>, agent: &str) -> Result<u64> {
    match id {
        Some(id) if n == 0 => bail!("no dead letter with id `{id}` for agent `{agent}`"),
        _ => Ok(n),
    }
}

impl Answer {
    /// The human view.
    pub fn text(&self) -> String {
        let mut out = String::new();
        match &self.op {
            Op::List => {
                let _ = writeln!(
                    out,
                    "{} dead letters for agent `{}`",
                    self.entries.len(),
                    self.agent
                );
                for e in &self.entries {
                    let _ = writeln!(
                        out,
                        "{}  attempts {}  first failed {}  {}",
                        e.id,
                        e.attempts,
                        e.first_failure.as_deref().unwrap_or("-"),
                        e.reason
                    );
                }
            }
            Op::Show { .. } => {
                for e in &self.entries {
                    let body = serde_json::from_str::<serde_json::Value>(&e.body)
                        .and_then(|v| serde_json::to_string_pretty(&v))
                        .unwrap_or_else(|_| e.body.clone());
                    let _ = writeln!(out, "id:            {}", e.id);
                    let _ = writeln!(out, "conversation:  {}", e.conversation_id);
                    let _ = writeln!(out, "sender:        {}", e.sender.as_deref().unwrap_or("-"));
                    let _ = writeln!(out, "attempts:      {}", e.attempts);
                    let _ = writeln!(
                        out,
                        "first failure: {}",
                        e.first_failure.as_deref().unwrap_or("-")
                    );
                    let _ = writeln!(out, "reason:        {}", e.reason);
                    let _ = writeln!(out, "body:\n{body}\n");
                }
            }
            Op::Replay { .. } => {
                let _ = writeln!(
                    out,
                    "replayed {} dead letters to agent `{}`",
                    self.moved, self.agent
                );
            }
            Op::Purge { .. } => {
                let _ = writeln!(
                    out,
                    "purged {} dead letters of agent `{}`",
                    self.moved, self.agent
                );
            }
        }
        out
    }
}
