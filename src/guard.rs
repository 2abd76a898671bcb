//! The rollback guard: a freshly swapped-in version on probation.
//!
//! After a replace, the guard watches the new version's first calls. If more
//! than a set share of them fail (the guest traps, times out, or answers with
//! `retry` / `reject`), the previous version is swapped back, the reason is
//! logged and kept for `warren status`, and the bad file is not loaded again
//! until it changes. Messages the bad version asked to retry are then handled
//! by the old one.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::registry::{PluginError, Registry};
use crate::runtime::AgentPool;

/// When a new version is rolled back.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GuardConfig {
    /// Calls the new version is judged on; 0 turns the guard off.
    pub first_calls: u64,
    /// Roll back if more than this share of them failed.
    pub max_failure_share: f64,
}

impl Default for GuardConfig {
    fn default() -> Self {
        GuardConfig {
            first_calls: 20,
            max_failure_share: 0.5,
        }
    }
}

/// What the guard decided about a version.
#[derive(Debug, PartialEq)]
pub enum Verdict {
    /// Still on probation.
    Undecided,
    Keep,
    RollBack {
        failed: u64,
        calls: u64,
    },
}

impl GuardConfig {
    /// Judges a version from its counters (read while it runs, so `calls`
    /// may already be past `first_calls`). It is rolled back as soon as its
    /// failures alone exceed the allowed share of `first_calls`, or if more
    /// than the share of all its calls so far failed once it has had them.
    pub fn judge(&self, calls: u64, failed: u64) -> Verdict {
        if calls >= self.first_calls {
            if failed as f64 > calls as f64 * self.max_failure_share {
                Verdict::RollBack { failed, calls }
            } else {
                Verdict::Keep
            }
        } else if failed as f64 > self.first_calls as f64 * self.max_failure_share {
            Verdict::RollBack { failed, calls }
        } else {
            Verdict::Undecided
        }
    }
}

/// Watches `new` until it is judged; rolls back to `previous` if it fails.
/// Returns true if it rolled back.
pub async fn watch(
    config: GuardConfig,
    registry: Arc<Registry>,
    new: Arc<AgentPool>,
    previous: Arc<AgentPool>,
    shutdown: CancellationToken,
) -> bool {
    let agent = new.name().to_string();
    loop {
        let stats = new.stats();
        let calls = stats.calls.load(Ordering::Relaxed);
        let failed = stats.failures.load(Ordering::Relaxed) + stats.guest_errors();
        match config.judge(calls, failed) {
            Verdict::Undecided => {}
            Verdict::Keep => {
                info!(
                    agent,
                    version = new.version(),
                    "new version passed its first {calls} calls"
                );
                return false;
            }
            Verdict::RollBack { failed, calls } => {
                if !registry.replace_if_current(&new, previous.clone()) {
                    return false; // replaced again meanwhile: nothing to roll back
                }
                new.release_idle();
                let reason = format!(
                    "rolled back to version {}: version {} failed {failed} of its first {calls} calls (more than {:.0}% of {})",
                    previous.version(),
                    new.version(),
                    config.max_failure_share * 100.0,
                    config.first_calls
                );
                warn!(agent, "{reason}");
                registry.mark_rolled_back(&agent, new.version());
                registry.record_error(PluginError {
                    agent: agent.clone(),
                    file: new.module().source.clone(),
                    reason,
                });
                return true;
            }
        }
        tokio::select! {
            _ = shutdown.cancelled() => return false,
            _ = tokio::time::sleep(Duration::from_millis(20)) => {}
        }
        // Replaced or removed meanwhile: this version is no one's concern now.
        if !registry.get(&agent).is_some_and(|p| Arc::ptr_eq(&p, &new)) {
            return false;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn judges_on_the_share_of_failures_in_the_first_calls() {
        let g = GuardConfig {
            first_calls: 20,
            max_failure_share: 0.5,
        };
        assert_eq!(g.judge(5, 3), Verdict::Undecided);
        assert_eq!(g.judge(20, 10), Verdict::Keep, "exactly half is allowed");
        assert_eq!(
            g.judge(12, 11),
            Verdict::RollBack {
                failed: 11,
                calls: 12
            }
        );
        assert_eq!(g.judge(40, 10), Verdict::Keep);
    }
}
