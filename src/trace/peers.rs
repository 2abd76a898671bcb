//! What hosts ask each other for a trace, and a trace as assembled from
//! their answers (for the console and `warren trace`).

use std::fmt::Write as _;

use serde::{Deserialize, Serialize};

use super::{Hop, Recent};

/// A question to every host on the broker.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Question {
    /// The asking host (it answers itself from its own log, not over the broker).
    pub from: String,
    pub ask: Ask,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Ask {
    /// Every hop of a conversation.
    Trace { conversation_id: String },
    /// The latest conversations.
    Recent { limit: usize },
}

/// One host's answer.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Answer {
    pub host: String,
    #[serde(default)]
    pub hops: Vec<Hop>,
    #[serde(default)]
    pub recent: Vec<Recent>,
}

/// A conversation, hop by hop, as far as the hosts that answered keep it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Trace {
    pub conversation_id: String,
    /// The hosts whose hops are in it.
    pub hosts: Vec<String>,
    /// Hosts asked that answered (this one included).
    pub answered: usize,
    pub hops: Vec<Step>,
}

/// A hop with what is known only from the whole trace.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Step {
    #[serde(flatten)]
    pub hop: Hop,
    /// Who sent the message: `user` or the agent.
    pub from: String,
    /// From the sending hop's settlement (its publish is just before) to
    /// this delivery, in ms (0 when the delivery came first); for a user's
    /// message or a retry, from its first publish, where that is known to
    /// the millisecond.
    pub queued_ms: Option<f64>,
}

impl Trace {
    /// Orders and joins the hops of one conversation.
    pub fn assemble(conversation_id: &str, hops: Vec<Hop>, answered: usize) -> Trace {
        let hops = super::merge(hops);
        let mut hosts: Vec<String> = Vec::new();
        for h in &hops {
            if !hosts.contains(&h.host) {
                hosts.push(h.host.clone());
            }
        }
        let steps = hops
            .iter()
            .map(|hop| {
                let parent = hops.iter().find(|p| {
                    matches!(p.outcome, super::Outcome::Handled)
                        && p.sent.iter().any(|s| s.id == hop.id)
                });
                let queued_ms = match parent {
                    Some(p) if hop.attempt <= 1 => Some(
                        (hop.received_at_ms as f64 - (p.received_at_ms as f64 + p.total_ms))
                            .max(0.0),
                    ),
                    _ => hop.waited_ms.map(|w| w as f64),
                };
                Step {
                    from: hop.sender.clone().unwrap_or_else(|| "user".into()),
                    queued_ms,
                    hop: hop.clone(),
                }
            })
            .collect();
        Trace {
            conversation_id: conversation_id.to_string(),
            hosts,
            answered,
            hops: steps,
        }
    }

    /// The human view: one line per hop, in order, with timings.
    pub fn table(&self) -> String {
        let mut out = String::new();
        if self.hops.is_empty() {
            let _ = writeln!(
                out,
                "no hop of conversation `{}` is kept by the {} host(s) that answered (a host keeps its latest --trace-hops hops)",
                self.conversation_id, self.answered
            );
            return out;
        }
        let _ = writeln!(
            out,
            "conversation {}: {} hops on {} host(s)",
            self.conversation_id,
            self.hops.len(),
            self.hosts.len()
        );
        let _ = writeln!(
            out,
            "{:<3} {:<12} {:<16} {:<10} {:>3} {:>9} {:>9} {:>9}  {:<14} {:<22} path",
            "#", "time", "agent", "version", "try", "queued", "guest", "total", "outcome", "host"
        );
        for (i, s) in self.hops.iter().enumerate() {
            let h = &s.hop;
            let to = if h.sent.is_empty() {
                "-".to_string()
            } else {
                h.sent
                    .iter()
                    .map(|x| x.to.clone())
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            let _ = writeln!(
                out,
                "{:<3} {:<12} {:<16} {:<10} {:>3} {:>9} {:>9} {:>9}  {:<14} {:<22} {} → {} → {}",
                i + 1,
                clock(h.received_at_ms),
                h.agent,
                h.version
                    .as_deref()
                    .map(|v| &v[..v.len().min(10)])
                    .unwrap_or("-"),
                h.attempt,
                ms(s.queued_ms),
                ms(h.guest_ms),
                ms(Some(h.total_ms)),
                h.outcome.label(),
                h.host,
                s.from,
                h.agent,
                to
            );
            if let Some(reason) = h.outcome.reason() {
                let _ = writeln!(out, "    reason: {reason}");
            }
        }
        out
    }
}

fn ms(v: Option<f64>) -> String {
    match v {
        Some(v) if v >= 1000.0 => format!("{:.2} s", v / 1000.0),
        Some(v) => format!("{v:.1} ms"),
        None => "-".into(),
    }
}

/// `HH:MM:SS.mmm` (UTC) of a time in ms since the Unix epoch.
fn clock(at_ms: u64) -> String {
    let t = humantime::format_rfc3339_millis(
        std::time::UNIX_EPOCH + std::time::Duration::from_millis(at_ms),
    )
    .to_string();
    t.get(11..23).unwrap_or(&t).to_string()
}
