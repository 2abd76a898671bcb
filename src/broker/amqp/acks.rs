//! Acknowledging in batches: one `basic.ack` with `multiple = true` for a
//! run of settled deliveries.
//!
//! RabbitMQ numbers deliveries per channel (1, 2, 3, ...), and an ack with
//! `multiple` settles every unacked delivery up to its tag. A run of settled
//! deliveries at the front of a consumer channel's outstanding ones therefore
//! costs one frame, one hand-off to lapin's I/O loop and one ack in the
//! broker instead of one each. Under load most deliveries settle in about
//! the order they came, so runs are long.
//!
//! At a steady, modest rate the deliveries of a channel come one at a time
//! and each would be acked alone: a frame, a wake-up of the I/O thread and
//! an ack in the broker per message, on a machine the broker already keeps
//! busy. So the first delivery to settle *gathers* for a short while
//! ([`DEFAULT_GATHER`], `AmqpConfig::ack_gather`) before it sends the
//! front run, and those that settle meanwhile ride in the same frame. Only
//! the ack waits: the output was published (and confirmed) before, so a
//! message's latency does not change; a crash in the wait redelivers what
//! was not acked yet, as it always could.
//!
//! Under load there is nothing to gather for, and the wait would cost: the
//! confirms come in bursts that settle many deliveries at once, and while
//! half the channel's prefetch or more is outstanding, RabbitMQ's next
//! deliveries wait on these acks (the window is what the rate is made of:
//! gathering there cost 2–5% of throughput at the defaults, BENCHMARKS.md).
//! Then the first to settle only lets the others woken with it settle (one
//! yield) before it sends the run, and a gather under way ends as soon as
//! the window becomes busy (deliveries arriving or settling while it waits):
//! otherwise one begun when the window was briefly low would hold a full
//! window's acks, and with them the channel's next deliveries, for the
//! whole gather.
//!
//! What keeps it safe:
//! - A batch never passes a delivery that is not settled by an ack: one still
//!   being handled, or one whose nack (give-back) is under way, ends the run.
//!   Passing it would ack a message nobody handled (lost) or race its nack.
//! - The batch's tag is always one of the deliveries being acked: RabbitMQ
//!   closes the channel on a tag it does not know.
//! - One batch at a time per channel, and a lone ack or nack blocks the run
//!   until it has been sent, so no frame can overtake another and ack a tag
//!   twice.
//! - A settled delivery behind one that takes long (a slow LLM call) is not
//!   held for it: after the gather and [`LINGER`] it is acked alone, so it does not keep a
//!   prefetch slot or risk a second handling after a crash for longer.
//! - A recovered channel counts tags from 1 again: the consumer starts a new
//!   window when a tag is not above the last one (lapin poisons the old
//!   window's ackers, so their acks report the loss as before).
//!
//! Acks go straight onto the channel ([`Channel::basic_ack`]), not through
//! the delivery's [`Acker`]: lapin sends an `Acker`'s ack to its internal
//! RPC task, which spawns a task of its own to put the frame on the channel
//! and resolves the ack's promise from there: a spawned task and two more
//! task wake-ups per frame, 7k of the 141k instructions per relayed message
//! (callgrind, BENCHMARKS.md). The acker still decides
//! whether the ack may be sent: one from a lost channel incarnation
//! (poisoned) or one lapin invalidated is not, as lapin's own path decides.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use lapin::options::{BasicAckOptions, BasicNackOptions};
use lapin::{Acker, Channel};
use tokio::sync::{Notify, oneshot};

/// How long a settled delivery waits for the deliveries before it to settle
/// (so it can join their batch) before it is acked alone (after the gather).
pub(super) const LINGER: Duration = Duration::from_millis(10);

/// How long the first delivery of a batch waits for others to settle
/// before sending the batch, unless configured. Measured at a paced 2,000
/// msg/s (4 consumers: one delivery per channel every 2 ms), 5 ms puts a
/// few deliveries in each frame (BENCHMARKS.md); it is short beside the
/// redelivery a crash causes anyway.
pub const DEFAULT_GATHER: Duration = Duration::from_millis(5);

/// Why an ack's outcome is unknown: the task sending its batch was dropped.
const DROPPED: &str = "the batch carrying the ack was dropped";

/// What sending an ack came to: `Ok(true)` sent; `Ok(false)` the channel was
/// lost first (lapin's answer for a poisoned acker); `Err` the reason sending
/// failed.
pub(super) type Sent = Result<bool, String>;

/// Deliveries acked and the frames that carried them, for a connection.
#[derive(Default)]
pub(super) struct AckCounts {
    pub acked: AtomicU64,
    pub frames: AtomicU64,
}

impl AckCounts {
    fn sent(&self, deliveries: usize) {
        self.acked.fetch_add(deliveries as u64, Ordering::Relaxed);
        self.frames.fetch_add(1, Ordering::Relaxed);
    }
}

/// The outstanding deliveries of one consumer channel (one incarnation of
/// it: see the module docs).
pub(super) struct AckWindow {
    /// The channel the deliveries came on (the same object across its
    /// recoveries; each incarnation has a window of its own).
    channel: Channel,
    state: Mutex<State>,
    counts: Arc<AckCounts>,
    /// See [`DEFAULT_GATHER`].
    gather: Duration,
    /// From this many outstanding deliveries on, the channel is busy: no
    /// gather (see the module docs).
    busy: usize,
    /// Ends the gather under way: the window became busy. A wake-up with
    /// nobody gathering is kept and ends the next gather early, which costs
    /// a frame at most.
    busy_now: Notify,
}

#[derive(Default)]
struct State {
    /// Every delivery not yet acked or nacked, by tag.
    outstanding: BTreeMap<u64, Slot>,
    /// The highest tag received.
    last_tag: u64,
    /// A batch is being sent.
    flushing: bool,
    /// A settled delivery is gathering others before it sends the front run.
    gathering: bool,
}

impl State {
    /// See [`AckWindow::received`].
    fn receive(&mut self, tag: u64) -> bool {
        if tag <= self.last_tag {
            return false;
        }
        self.last_tag = tag;
        self.outstanding.insert(tag, Slot::Handling);
        true
    }
}

enum Slot {
    /// Received, not settled yet.
    Handling,
    /// Settled by an ack; waits to be sent in a batch.
    Settled {
        acker: Acker,
        done: oneshot::Sender<Sent>,
    },
    /// A lone ack or nack is being sent.
    Sending,
}

/// Clears `flushing` however the batch ends (also if its task is dropped
/// mid-send), so acks never stop for the channel.
struct Flushing<'a>(&'a AckWindow);

impl Drop for Flushing<'_> {
    fn drop(&mut self) {
        self.0.state.lock().unwrap().flushing = false;
    }
}

/// Clears `gathering` however the wait ends (also if its task is dropped
/// mid-wait), so another delivery can lead the next batch.
struct Gathering<'a>(&'a AckWindow);

impl Drop for Gathering<'_> {
    fn drop(&mut self) {
        self.0.state.lock().unwrap().gathering = false;
    }
}

impl AckWindow {
    /// A window for a channel with this `prefetch` (0: unlimited, which is
    /// never busy).
    pub(super) fn new(
        channel: Channel,
        counts: Arc<AckCounts>,
        gather: Duration,
        prefetch: u16,
    ) -> Self {
        let busy = match prefetch {
            0 => usize::MAX,
            p => usize::from(p).div_ceil(2),
        };
        Self::empty(channel, counts, gather, busy)
    }

    /// An empty window for the same channel's next incarnation.
    pub(super) fn renewed(&self) -> Self {
        Self::empty(
            self.channel.clone(),
            self.counts.clone(),
            self.gather,
            self.busy,
        )
    }

    fn empty(channel: Channel, counts: Arc<AckCounts>, gather: Duration, busy: usize) -> Self {
        AckWindow {
            channel,
            state: Mutex::default(),
            counts,
            gather,
            busy,
            busy_now: Notify::new(),
        }
    }

    /// Registers a delivery; `false` when its tag is not above the last one
    /// (the channel was recovered: the caller starts a new window).
    pub(super) fn received(&self, tag: u64) -> bool {
        let mut state = self.state.lock().unwrap();
        if !state.receive(tag) {
            return false;
        }
        self.wake_if_busy(&state);
        true
    }

    /// Acks delivery `tag`: in a batch with the settled deliveries around it
    /// when it is (or, within the gather and [`LINGER`], becomes) part of the
    /// front run, alone after that otherwise.
    pub(super) async fn ack(&self, tag: u64, acker: Acker) -> Sent {
        let (done, mut result) = oneshot::channel();
        let (alone, lead, busy) = {
            let mut state = self.state.lock().unwrap();
            let busy = state.outstanding.len() >= self.busy;
            match state.outstanding.get_mut(&tag) {
                Some(slot @ Slot::Handling) => {
                    *slot = Slot::Settled { acker, done };
                    // The first to settle leads the batch; the others
                    // settling while it gathers are sent with it.
                    // Without a gather every delivery sends what it can.
                    let lead = self.gather.is_zero() || !state.gathering;
                    if !lead {
                        self.wake_if_busy(&state);
                    }
                    state.gathering = true;
                    (None, lead, busy)
                }
                // Not in this window (cannot happen: every delivery is
                // registered): ack it alone.
                _ => (Some(acker), false, busy),
            }
        };
        if let Some(acker) = alone {
            return self.send_ack(&acker, tag, 1).await;
        }
        if lead {
            let gathering = Gathering(self);
            if busy {
                tokio::task::yield_now().await;
            } else if !self.gather.is_zero() {
                tokio::select! {
                    _ = tokio::time::sleep(self.gather) => {}
                    _ = self.busy_now.notified() => {}
                }
            }
            // Cleared before the flush: a delivery settling from now on
            // leads a batch of its own instead of being left behind.
            drop(gathering);
            self.flush().await;
            // Usually sent by now (this task sent the batch): no timer then.
            match result.try_recv() {
                Ok(r) => return r,
                Err(oneshot::error::TryRecvError::Closed) => return Err(DROPPED.into()),
                Err(oneshot::error::TryRecvError::Empty) => {}
            }
        }
        if let Ok(r) = tokio::time::timeout(self.gather + LINGER, &mut result).await {
            return r.unwrap_or_else(|_| Err(DROPPED.into()));
        }
        // Still waiting behind an unsettled delivery: ack alone, unless a
        // batch took it meanwhile.
        let acker = {
            let mut state = self.state.lock().unwrap();
            match state.outstanding.get_mut(&tag) {
                Some(slot @ Slot::Settled { .. }) => match std::mem::replace(slot, Slot::Sending) {
                    Slot::Settled { acker, .. } => Some(acker),
                    _ => unreachable!("matched as settled"),
                },
                _ => None,
            }
        };
        match acker {
            Some(acker) => {
                let r = self.send_ack(&acker, tag, 1).await;
                self.sent_alone(tag).await;
                r
            }
            None => result.await.unwrap_or_else(|_| Err(DROPPED.into())),
        }
    }

    /// Ends the gather under way if the window is busy now.
    fn wake_if_busy(&self, state: &State) {
        if state.gathering && state.outstanding.len() >= self.busy {
            self.busy_now.notify_one();
        }
    }

    /// Nacks delivery `tag` alone; the run stops at it until the nack has
    /// been sent.
    pub(super) async fn nack(&self, tag: u64, acker: &Acker, options: BasicNackOptions) -> Sent {
        let registered = {
            let mut state = self.state.lock().unwrap();
            match state.outstanding.get_mut(&tag) {
                Some(slot) => {
                    *slot = Slot::Sending;
                    true
                }
                None => false,
            }
        };
        let r = sent(acker.nack(options).await);
        if registered {
            self.sent_alone(tag).await;
        }
        r
    }

    /// A lone ack or nack was sent: the delivery is no longer outstanding,
    /// which may free the run behind it.
    async fn sent_alone(&self, tag: u64) {
        self.state.lock().unwrap().outstanding.remove(&tag);
        self.flush().await;
    }

    /// Acks `deliveries` deliveries up to and including `tag` (one frame,
    /// `multiple` when more than one) on the channel; `acker` is `tag`'s.
    /// Answers as `Acker::ack` would: `Ok(false)` when the delivery's
    /// channel incarnation was lost (before the frame, or while sending it).
    async fn send_ack(&self, acker: &Acker, tag: u64, deliveries: usize) -> Sent {
        if !acker.usable() {
            return Ok(false);
        }
        self.counts.sent(deliveries);
        let options = BasicAckOptions {
            multiple: deliveries > 1,
        };
        match self.channel.basic_ack(tag, options).await {
            Ok(()) => Ok(true),
            Err(_) if acker.poisoned() => Ok(false),
            Err(e) => Err(e.to_string()),
        }
    }

    /// Sends the settled run at the front, one batch after another, unless
    /// a batch is already being sent (its sender goes on with the next).
    async fn flush(&self) {
        loop {
            let batch = {
                let mut state = self.state.lock().unwrap();
                if state.flushing {
                    return;
                }
                // The settled run at the front, taken off in one pass.
                let mut run = Vec::new();
                while let Some(entry) = state.outstanding.first_entry() {
                    if !matches!(entry.get(), Slot::Settled { .. }) {
                        break;
                    }
                    let (tag, slot) = entry.remove_entry();
                    if let Slot::Settled { acker, done } = slot {
                        run.push((tag, acker, done));
                    }
                }
                if run.is_empty() {
                    return;
                }
                state.flushing = true;
                run
            };
            let _flushing = Flushing(self);
            let Some((top, acker, _)) = batch.last() else {
                continue;
            };
            let r = self.send_ack(acker, *top, batch.len()).await;
            for (_, _, done) in batch {
                // Its waiter may be gone (a dropped task): nothing to tell.
                let _ = done.send(r.clone());
            }
        }
    }
}

fn sent(r: lapin::Result<bool>) -> Sent {
    r.map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tag_not_above_the_last_starts_a_new_window() {
        let mut w = State::default();
        assert!(w.receive(1));
        assert!(w.receive(2));
        assert!(!w.receive(1), "tags restart after a channel recovery");
        assert!(!w.receive(2));
        assert!(w.receive(3));
    }
}
