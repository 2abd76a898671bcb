//! What went wrong lately, per agent: the latest reason a message was
//! retried or dead-lettered (status, the console), and failed settlements
//! (`/readyz`, status), kept apart from the loop that records them.

use super::{Dispatcher, SETTLE_TROUBLE_WINDOW};

/// An agent whose messages could not be settled (e.g. its dead-letter
/// queue cannot be declared): loud in status, `/readyz` and `/metrics`.
#[derive(Debug, Clone)]
pub struct SettleTrouble {
    pub count: u64,
    pub reason: String,
    pub at: std::time::Instant,
}

impl Dispatcher {
    /// The latest reason a message of `agent` was retried or dead-lettered.
    pub fn last_error(&self, agent: &str) -> Option<String> {
        self.last_errors.lock().unwrap().get(agent).cloned()
    }

    /// Failed settlements of `agent` within [`SETTLE_TROUBLE_WINDOW`].
    pub fn settle_trouble(&self, agent: &str) -> Option<SettleTrouble> {
        self.settle_failures
            .lock()
            .unwrap()
            .get(agent)
            .filter(|t| t.at.elapsed() < SETTLE_TROUBLE_WINDOW)
            .cloned()
    }

    pub(super) fn note_settle_failure(&self, agent: &str, reason: String) {
        let mut all = self.settle_failures.lock().unwrap();
        let entry = all.entry(agent.to_string()).or_insert(SettleTrouble {
            count: 0,
            reason: String::new(),
            at: std::time::Instant::now(),
        });
        self.settle_trouble_seen
            .store(true, std::sync::atomic::Ordering::Relaxed);
        entry.count += 1;
        entry.reason = reason;
        entry.at = std::time::Instant::now();
    }

    /// A settlement went through: the agent's settling works again. A
    /// failure while the connection was being lost (its deliveries come
    /// back on the new one) thus leaves no trouble once messages flow.
    pub(super) fn note_settle_success(&self, agent: &str) {
        if self
            .settle_trouble_seen
            .load(std::sync::atomic::Ordering::Relaxed)
        {
            let mut all = self.settle_failures.lock().unwrap();
            all.remove(agent);
            if all.is_empty() {
                self.settle_trouble_seen
                    .store(false, std::sync::atomic::Ordering::Relaxed);
            }
        }
    }

    /// Forgets an agent's latest error: a new version serves now, and the
    /// old one's error would only mislead (`status --watch`).
    pub fn clear_last_error(&self, agent: &str) {
        self.last_errors.lock().unwrap().remove(agent);
    }

    pub(super) fn note_error(&self, agent: &str, reason: &str) {
        self.last_errors
            .lock()
            .unwrap()
            .insert(agent.to_string(), reason.to_string());
    }
}
