//! The runaway lane: CPU fairness for calls that overrun.
//!
//! A message handler normally answers in micro- to milliseconds. A call still
//! running guest code past its agent's `throttle_after` (not counting time
//! spent waiting on outbound HTTP, see `outbound`) is treated as a
//! runaway: from then on it only runs in slices handed out by one lane shared
//! by the whole host, one epoch tick in every [`SLICE_EVERY`]. However many
//! guests spin at once, together they get at most that share of one core
//! while they wait for their deadline; the healthy agents keep the rest.
//! Below the threshold a call just yields to the executor every tick, so a
//! busy guest never holds a worker thread for long.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::EPOCH_TICK;

/// One slice (an epoch tick of guest code) per this many ticks: 5% of a core.
pub const SLICE_EVERY: u32 = 20;

/// Hands out run slices to runaway calls, host-wide.
#[derive(Debug)]
pub struct RunawayLane {
    next_slot: Mutex<Instant>,
    period: Duration,
}

impl Default for RunawayLane {
    fn default() -> Self {
        RunawayLane {
            next_slot: Mutex::new(Instant::now()),
            period: EPOCH_TICK * SLICE_EVERY,
        }
    }
}

impl RunawayLane {
    /// When a runaway call may run its next slice. A slot at or past the
    /// call's deadline is not reserved: the call sleeps until its deadline
    /// and is interrupted at the next tick.
    pub fn next_slice(&self, now: Instant, deadline: Instant) -> Instant {
        let mut next = self.next_slot.lock().unwrap();
        let slot = (*next).max(now);
        if slot >= deadline {
            return deadline;
        }
        *next = slot + self.period;
        slot
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slices_are_spaced_across_all_callers_and_never_past_the_deadline() {
        let lane = RunawayLane::default();
        let now = Instant::now();
        let far = now + Duration::from_secs(10);
        let period = EPOCH_TICK * SLICE_EVERY;
        // Three runaways asking at once get three slots a period apart.
        assert_eq!(lane.next_slice(now, far), now);
        assert_eq!(lane.next_slice(now, far), now + period);
        assert_eq!(lane.next_slice(now, far), now + 2 * period);
        // One whose deadline comes first waits for the deadline, reserving nothing.
        let soon = now + period;
        assert_eq!(lane.next_slice(now, soon), soon);
        assert_eq!(lane.next_slice(now, far), now + 3 * period);
    }
}
