//! Dead-letter tools (`warren dlq`): list, show, replay and purge an agent's
//! dead letters, on RabbitMQ directly or on a running host's embedded broker
//! (through its control socket).

use std::fmt::Write as _;
use std::time::{Duration, UNIX_EPOCH};

use anyhow::{Result, bail};
use serde::{Deserialize, Serialize};

use crate::broker::{Broker, DeadLetter, Replayed};

/// What to do with an agent's dead letters.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Op {
    List,
    /// One message (by id) or all, in full.
    Show {
        id: Option<String>,
    },
    /// Back to where they were going, as first attempts: one (by id) or
    /// all present when it starts, each once. With `wait`, then waits up to
    /// that many seconds and counts those that failed again.
    Replay {
        id: Option<String>,
        #[serde(default)]
        wait: Option<f64>,
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
    /// What the guest wrote to stderr when it failed (a traceback), if it did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub guest_trace: Option<String>,
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
            guest_trace: e.headers.get(crate::broker::HEADER_GUEST_TRACE).cloned(),
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
    /// Replay: dead letters left in place (their destination does not exist).
    #[serde(default)]
    pub undeliverable: u64,
    /// Replay with `wait`: how many of those replayed are back in the
    /// dead-letter queue when the wait ended.
    #[serde(default)]
    pub still_failing: Option<u64>,
    pub op: Op,
}

pub async fn run(broker: &dyn Broker, agent: &str, op: Op) -> Result<Answer> {
    let agent = crate::names::normalise(agent);
    crate::names::validate(&agent)?;
    let mut undeliverable = 0;
    let mut still_failing = None;
    let (entries, moved) = match &op {
        Op::List => (entries(broker, &agent, None).await?, 0),
        Op::Show { id } => {
            let found = entries(broker, &agent, id.as_deref()).await?;
            if let (Some(id), true) = (id, found.is_empty()) {
                bail!("no dead letter with id `{id}` for agent `{agent}`");
            }
            (found, 0)
        }
        Op::Replay { id, wait } => {
            let replayed = broker.replay_dead_letters(&agent, id.as_deref()).await?;
            undeliverable = replayed.undeliverable;
            let n = replayed.ids.len() as u64;
            if n == 0 && undeliverable == 0 {
                checked(0, id, &agent)?;
            }
            if let Some(secs) = wait {
                still_failing = Some(failing_again(broker, &agent, &replayed, *secs).await?);
            }
            (Vec::new(), n)
        }
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
        undeliverable,
        still_failing,
        op,
    })
}

/// Waits up to `secs` for the replayed dead letters to be handled, and
/// returns how many of them are back in the dead-letter queue. Ends early
/// once all of them are back (the agent is still broken).
async fn failing_again(
    broker: &dyn Broker,
    agent: &str,
    replayed: &Replayed,
    secs: f64,
) -> Result<u64> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs_f64(secs.clamp(0.0, 86_400.0));
    loop {
        let back = broker
            .dead_letters(agent)
            .await?
            .iter()
            .filter(|l| replayed.ids.contains(&l.envelope.id))
            .count() as u64;
        if back as usize >= replayed.ids.len() || tokio::time::Instant::now() >= deadline {
            return Ok(back);
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
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
                    if let Some(trace) = &e.guest_trace {
                        let _ = writeln!(out, "guest stderr:\n{trace}");
                    }
                    let _ = writeln!(out, "body:\n{body}\n");
                }
            }
            Op::Replay { .. } => {
                let _ = write!(
                    out,
                    "replayed {} dead letters to agent `{}`",
                    self.moved, self.agent
                );
                match self.still_failing {
                    Some(m) => {
                        let _ = writeln!(out, ", still failing {m}");
                    }
                    None => out.push('\n'),
                }
                if self.undeliverable > 0 {
                    let _ = writeln!(
                        out,
                        "{} left in place: where they were going still does not exist",
                        self.undeliverable
                    );
                }
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
