//! Where a guest call runs: in the task that handles its delivery, or in a
//! task of its own.
//!
//! A consumer polls all the deliveries it handles in one task
//! (`Dispatcher::run_consumer`), and a guest call runs inside whichever task
//! polls it: an agent whose calls burn CPU would then run on one core,
//! however many the host has. A task per call lets tokio spread the calls
//! over its workers, but costs a few microseconds: as much as the whole
//! call of a small agent. So the pool keeps a running average of its calls'
//! time, and only an agent whose calls average [`HEAVY_CALL`] or more gets
//! a task per call (its cost then under 1%).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use super::bindings::{Failure, Message, Outgoing};
use super::pool::{AgentPool, GuestError, GuestErrorKind};

/// Calls averaging this long or more run in a task of their own.
pub const HEAVY_CALL: Duration = Duration::from_millis(1);

/// A running average of an agent's call times (wall clock, guest code and
/// the host calls it waits in alike), weighting the latest call by 1/8.
#[derive(Debug, Default)]
pub struct CallWeight {
    nanos: AtomicU64,
    /// Calls run in a task of their own.
    spread: AtomicU64,
}

impl CallWeight {
    /// Adds one call's time. Concurrent calls may overwrite each other's
    /// update: an average that misses a sample now and then is still an
    /// average, and no lock is taken per call.
    pub fn note(&self, took: Duration) {
        let sample = u64::try_from(took.as_nanos()).unwrap_or(u64::MAX);
        let old = self.nanos.load(Ordering::Relaxed);
        let new = old - old / 8 + sample / 8;
        self.nanos.store(new, Ordering::Relaxed);
    }

    /// The average call time so far.
    pub fn average(&self) -> Duration {
        Duration::from_nanos(self.nanos.load(Ordering::Relaxed))
    }

    pub fn heavy(&self) -> bool {
        self.average() >= HEAVY_CALL
    }

    /// How many calls ran in a task of their own.
    pub fn spread_calls(&self) -> u64 {
        self.spread.load(Ordering::Relaxed)
    }
}

impl AgentPool {
    /// Runs `on-message` like [`AgentPool::call`], in a task of its own
    /// when this agent's calls are heavy (see the module doc).
    pub async fn call_spread(
        self: &Arc<Self>,
        msg: Message,
    ) -> Result<Result<Vec<Outgoing>, Failure>, GuestError> {
        // Decided once the call may run: deliveries taken in a burst all
        // wait here, and by their turn the first calls have been timed.
        let turn = self.turn().await;
        if !self.weight().heavy() {
            return self.call_in_turn(turn, &msg).await;
        }
        self.weight().spread.fetch_add(1, Ordering::Relaxed);
        let pool = self.clone();
        match tokio::spawn(async move { pool.call_in_turn(turn, &msg).await }).await {
            Ok(answer) => answer,
            // A panic in the host's own code during the call: the message
            // is retried like after a trap, and the host keeps running.
            Err(e) => Err(GuestError {
                kind: GuestErrorKind::Trap,
                message: format!("the call's task ended abnormally: {e}"),
                detail: None,
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_few_slow_calls_make_an_agent_heavy_and_quick_ones_light_again() {
        let w = CallWeight::default();
        assert!(!w.heavy());
        for _ in 0..100 {
            w.note(Duration::from_micros(20));
        }
        assert!(!w.heavy(), "{:?}", w.average());
        for _ in 0..3 {
            w.note(Duration::from_millis(30));
        }
        assert!(w.heavy(), "{:?}", w.average());
        for _ in 0..60 {
            w.note(Duration::from_micros(20));
        }
        assert!(!w.heavy(), "{:?}", w.average());
    }
}
