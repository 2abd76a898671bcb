//! Consumers and settling their deliveries.
//!
//! Settling by retry or dead-letter publishes the copy (confirmed) first and
//! acks the original after. Two things can go wrong in between, and neither
//! may hold or double a message:
//!
//! - The copy cannot be published (its delay queue or dead-letter queue was
//!   deleted, the broker refuses it): the queue is declared again and the
//!   copy sent once more; if that fails too, the original is given back to
//!   its queue (nack with requeue) after a pause, never held unacked.
//! - The ack does not reach the broker (its channel was lost in a recovery:
//!   lapin answers `Ok(false)`): RabbitMQ redelivers the original although
//!   its copy exists. The delivery's key and attempt are remembered, and the
//!   redelivery is acked without being handled again. A redelivery can
//!   arrive while the first delivery is still being handled (the channel
//!   was lost mid-call): it waits for the first one's outcome.

use std::collections::HashSet;
use std::hash::{BuildHasher, BuildHasherDefault, Hasher, RandomState};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Result, anyhow};
use async_trait::async_trait;
use futures::StreamExt;
use lapin::Channel;
use lapin::options::{BasicCancelOptions, BasicNackOptions};
use sha2::{Digest, Sha256};
use tokio::sync::Notify;
use tracing::{debug, info, warn};

use super::Inner;
use super::acks::AckWindow;
use super::headers::{Extra, envelope};
use crate::broker::{Acker, Consumer, Delivery, Envelope, Route, Unroutable};
use crate::names;

/// How long a delivery whose copy could not be published waits before it
/// is given back to its queue (so a lasting failure does not spin).
const GIVE_BACK_PAUSE: Duration = Duration::from_secs(1);

/// Most settled-but-unacked deliveries remembered at once.
const MAX_REMEMBERED: usize = 100_000;

pub(super) struct AmqpConsumer {
    pub inner: Arc<Inner>,
    /// The agent whose queue this is; `None` for a reply queue.
    pub agent: Option<Arc<str>>,
    pub channel: Channel,
    pub consumer: lapin::Consumer,
    /// The queue consumed; a reply queue is deleted when its consumer stops.
    pub queue: String,
    /// This channel's outstanding deliveries, acked in batches.
    pub window: Arc<AckWindow>,
}

/// What identifies a delivery across redeliveries: its message id, or for a
/// message without one, its body.
fn delivery_key(props: &lapin::BasicProperties, body: &[u8]) -> String {
    match props.message_id() {
        Some(id) if !id.as_str().is_empty() => id.as_str().to_string(),
        _ => format!("body:{}", hex::encode(Sha256::digest(body))),
    }
}

/// The deliveries being handled, for a redelivery that arrives while the
/// first delivery of its message is still being handled (its channel was
/// lost mid-call) to wait for that one's outcome.
///
/// Every delivery passes through here and almost none is ever waited for,
/// so a delivery costs one hash of its key (kept by the delivery for its
/// end), and an ending one wakes waiters only when there are any. Keys are
/// kept as 64-bit hashes, and the set uses them as they are (hashing a
/// random hash again buys nothing): two keys colliding would only make
/// such a redelivery wait for an unrelated delivery, up to the recovery
/// timeout.
#[derive(Default)]
pub(super) struct InFlight {
    keys: Mutex<HashSet<u64, BuildHasherDefault<Prehashed>>>,
    hasher: RandomState,
    /// Signalled when a delivery ends while `waiting` > 0.
    ended: Notify,
    waiting: AtomicUsize,
}

/// The hasher of a set of hashes: each is its own hash.
#[derive(Default)]
struct Prehashed(u64);

impl Hasher for Prehashed {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        // Only `u64`s are hashed here; anything else still spreads.
        for &b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(b);
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

impl InFlight {
    /// The hash a delivery's key is registered under.
    fn hash(&self, key: &str) -> u64 {
        self.hasher.hash_one(key)
    }

    /// Registers a delivery (by its key's [`InFlight::hash`]) as being
    /// handled; `false` when a delivery with the same key already is (this
    /// one is a redelivery of it).
    fn start(&self, hash: u64) -> bool {
        self.keys.lock().unwrap().insert(hash)
    }

    /// A delivery registered by [`InFlight::start`] was settled or dropped.
    fn end(&self, hash: u64) {
        self.keys.lock().unwrap().remove(&hash);
        // After the removal: a waiter counted before it rechecks the set
        // after counting itself, so it sees the removal or is woken.
        if self.waiting.load(Ordering::SeqCst) > 0 {
            self.ended.notify_waiters();
        }
    }

    /// Waits until no delivery with this key is being handled, at most
    /// `timeout`.
    async fn wait_ended(&self, hash: u64, timeout: Duration) {
        self.waiting.fetch_add(1, Ordering::SeqCst);
        let wait = async {
            loop {
                let ended = self.ended.notified();
                tokio::pin!(ended);
                ended.as_mut().enable();
                if !self.keys.lock().unwrap().contains(&hash) {
                    return;
                }
                ended.await;
            }
        };
        let _ = tokio::time::timeout(timeout, wait).await;
        self.waiting.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Inner {
    /// Remembers that the delivery `key` at `attempt` was settled (its copy
    /// or output published) but its ack was lost.
    fn remember_settled(&self, key: &str, attempt: u32) {
        let mut settled = self.settled.lock().unwrap();
        if settled.len() >= MAX_REMEMBERED {
            warn!(
                "forgetting {} settled deliveries whose ack was lost",
                settled.len()
            );
            settled.clear();
        }
        settled.insert(key.to_string(), attempt);
    }

    /// Publishes a dead-letter copy, declaring the agent's dead-letter
    /// queue again if it was deleted.
    pub(super) async fn publish_dead_letter(
        &self,
        agent: &str,
        envelope: &Envelope,
        reason: &str,
    ) -> Result<()> {
        let route = Route::Queue(names::dead_letter_queue(agent));
        let extra = || Extra {
            reason: Some(reason),
            ..Default::default()
        };
        match self.publish_settling(&route, envelope, extra()).await {
            Err(e) if e.downcast_ref::<Unroutable>().is_some() => {
                warn!(agent, queue = %route, "the dead-letter queue is gone; declaring it again");
                self.declare_dead_letter_queue(agent).await?;
                self.publish_settling(&route, envelope, extra()).await
            }
            other => other,
        }
    }

    /// Whether a redelivery is of a delivery already settled; forgets it.
    fn already_settled(&self, key: &str, attempt: u32) -> bool {
        let mut settled = self.settled.lock().unwrap();
        match settled.get(key) {
            Some(&done) if attempt <= done => {
                settled.remove(key);
                true
            }
            _ => false,
        }
    }
}

#[async_trait]
impl Consumer for AmqpConsumer {
    async fn next(&mut self) -> Option<Delivery> {
        loop {
            match self.consumer.next().await {
                Some(Ok(d)) => {
                    let key = delivery_key(&d.properties, &d.data);
                    let tag = d.delivery_tag;
                    if !self.window.received(tag) {
                        // The channel was recovered: its tags start again.
                        self.window = Arc::new(self.window.renewed());
                        self.window.received(tag);
                    }
                    let (env, _) = envelope(&d.properties, d.data);
                    let key_hash = self.inner.in_flight.hash(&key);
                    let first = self.inner.in_flight.start(key_hash);
                    let acker = AmqpAcker {
                        inner: self.inner.clone(),
                        agent: self.agent.clone(),
                        acker: d.acker,
                        window: self.window.clone(),
                        tag,
                        key,
                        key_hash,
                        redelivered: d.redelivered,
                        first,
                    };
                    return Some(Delivery::new(env, Box::new(acker)));
                }
                Some(Err(e)) => {
                    let what = self.agent.as_deref().unwrap_or("reply queue");
                    warn!(
                        agent = what,
                        "consumer lost its channel ({e}); waiting for recovery"
                    );
                    let deadline = tokio::time::Instant::now() + self.inner.config.recovery_timeout;
                    if let Err(e) = self
                        .inner
                        .wait_for_recovery(&self.channel, e, deadline)
                        .await
                    {
                        tracing::error!(agent = what, "consumer stopped: {e:#}");
                        return None;
                    }
                    info!(agent = what, "consumer recovered");
                    if let Some(agent) = &self.agent
                        && let Err(e) = self.inner.restore_routing(agent).await
                    {
                        warn!(agent = what, "after the reconnect: {e:#}");
                    }
                }
                None => return None,
            }
        }
    }

    async fn stop(self: Box<Self>) {
        let tag = self.consumer.tag();
        if let Err(e) = self
            .channel
            .basic_cancel(tag.clone(), BasicCancelOptions::default())
            .await
        {
            debug!(consumer = %tag, "cancelling the consumer: {e}");
        }
        if self.agent.is_none() {
            let opts = lapin::options::QueueDeleteOptions::default();
            if let Err(e) = self
                .channel
                .queue_delete(self.queue.as_str().into(), opts)
                .await
            {
                debug!(queue = self.queue, "deleting the reply queue: {e}");
            }
        }
        // Closing the channel hands any prefetched, unsettled delivery back.
        if let Err(e) = self.channel.close(200, "consumer stopped".into()).await {
            debug!(consumer = %tag, "closing the consumer channel: {e}");
        }
    }
}

struct AmqpAcker {
    inner: Arc<Inner>,
    agent: Option<Arc<str>>,
    acker: lapin::Acker,
    /// The window of the channel (incarnation) the delivery came on, and its tag.
    window: Arc<AckWindow>,
    tag: u64,
    /// See [`delivery_key`].
    key: String,
    /// The key's hash in `Inner::in_flight`.
    key_hash: u64,
    redelivered: bool,
    /// Registered in `Inner::in_flight` (ended when this is settled or
    /// dropped); `false` when another delivery of the same message was
    /// being handled already (this is a redelivery of it).
    first: bool,
}

impl Drop for AmqpAcker {
    fn drop(&mut self) {
        if self.first {
            self.inner.in_flight.end(self.key_hash);
        }
    }
}

impl AmqpAcker {
    /// Acks the original. When the ack cannot reach the broker, the
    /// redelivery that follows is recognised as already handled.
    async fn ack_original(&self, envelope: &Envelope) -> Result<()> {
        match self.window.ack(self.tag, self.acker.clone()).await {
            Ok(true) => Ok(()),
            Ok(false) => {
                self.inner.remember_settled(&self.key, envelope.attempt);
                Err(anyhow!(
                    "the delivery's channel was lost before its ack; RabbitMQ redelivers it, and the redelivery is acked without being handled again"
                ))
            }
            Err(e) => {
                self.inner.remember_settled(&self.key, envelope.attempt);
                Err(anyhow!(
                    "ack failed ({e}); RabbitMQ redelivers the message, and the redelivery is acked without being handled again"
                ))
            }
        }
    }

    /// Gives the original back to its queue after a pause: its copy could
    /// not be published, and holding it unacked would take a prefetch slot
    /// for good.
    async fn give_back(&self) {
        tokio::time::sleep(GIVE_BACK_PAUSE).await;
        let opts = BasicNackOptions {
            requeue: true,
            ..Default::default()
        };
        match self.window.nack(self.tag, &self.acker, opts).await {
            Ok(true) => {}
            // The channel is gone: RabbitMQ requeues everything it held.
            Ok(false) => debug!("give-back: the delivery's channel is gone; RabbitMQ requeues it"),
            Err(e) => {
                debug!("give-back failed ({e}); RabbitMQ requeues it when the channel closes")
            }
        }
    }

    fn agent(&self) -> Result<&str> {
        self.agent
            .as_deref()
            .ok_or_else(|| anyhow!("replies cannot be retried or dead-lettered"))
    }

    /// Publishes the retry copy into its delay queue, declaring the queue
    /// again if it was deleted.
    async fn publish_retry(&self, agent: &str, envelope: &Envelope, delay: Duration) -> Result<()> {
        let extra = || Extra {
            expiration: Some(delay),
            ..Default::default()
        };
        let queue = self.inner.delay_queue(agent, delay).await?;
        let route = Route::Queue(queue.clone());
        match self.inner.publish_settling(&route, envelope, extra()).await {
            Err(e) if e.downcast_ref::<Unroutable>().is_some() => {
                warn!(agent, queue, "the delay queue is gone; declaring it again");
                self.inner.forget_delay_queue(&queue);
                let queue = self.inner.delay_queue(agent, delay).await?;
                self.inner
                    .publish_settling(&Route::Queue(queue), envelope, extra())
                    .await
            }
            other => other,
        }
    }
}

#[async_trait]
impl Acker for AmqpAcker {
    async fn ack(self: Box<Self>, envelope: Envelope) -> Result<()> {
        self.ack_original(&envelope).await
    }

    async fn retry(
        self: Box<Self>,
        mut envelope: Envelope,
        delay: Duration,
        reason: &str,
    ) -> Result<()> {
        let agent = self.agent()?.to_string();
        let attempt = envelope.attempt;
        envelope.next_attempt(reason);
        if let Err(e) = self.publish_retry(&agent, &envelope, delay).await {
            self.give_back().await;
            return Err(
                e.context("publishing the retry failed; the message went back to its queue")
            );
        }
        envelope.attempt = attempt;
        self.ack_original(&envelope).await
    }

    async fn dead_letter(self: Box<Self>, envelope: Envelope, reason: &str) -> Result<()> {
        let agent = self.agent()?.to_string();
        if let Err(e) = self
            .inner
            .publish_dead_letter(&agent, &envelope, reason)
            .await
        {
            self.give_back().await;
            return Err(e.context("dead-lettering failed; the message went back to its queue"));
        }
        self.ack_original(&envelope).await
    }

    async fn already_handled(&mut self, envelope: &Envelope) -> bool {
        if !self.redelivered {
            return false;
        }
        if !self.first {
            // The first delivery of this message is still being handled
            // here (its channel was lost meanwhile): wait for its outcome.
            let timeout = self.inner.config.recovery_timeout;
            self.inner
                .in_flight
                .wait_ended(self.key_hash, timeout)
                .await;
        }
        self.inner.already_settled(&self.key, envelope.attempt)
    }

    fn abandon(self: Box<Self>, _envelope: Envelope) {
        tokio::spawn(async move {
            let opts = BasicNackOptions {
                requeue: true,
                ..Default::default()
            };
            if let Err(e) = self.window.nack(self.tag, &self.acker, opts).await {
                debug!(
                    "requeue of an abandoned delivery failed ({e}); the broker redelivers it on channel close"
                );
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_delivery_of_a_key_being_handled_is_not_the_first() {
        let f = InFlight::default();
        assert!(f.start(f.hash("m1")));
        assert!(
            !f.start(f.hash("m1")),
            "a redelivery while the first is handled"
        );
        assert!(f.start(f.hash("m2")));
        f.end(f.hash("m1"));
        assert!(f.start(f.hash("m1")), "handled again once the first ended");
    }

    #[tokio::test]
    async fn a_redelivery_waits_for_the_first_to_end() {
        let f = Arc::new(InFlight::default());
        assert!(f.start(f.hash("m1")));
        let waiter = {
            let f = f.clone();
            tokio::spawn(async move { f.wait_ended(f.hash("m1"), Duration::from_secs(30)).await })
        };
        // The waiter is still waiting while the first is being handled.
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished());
        f.end(f.hash("m1"));
        tokio::time::timeout(Duration::from_secs(5), waiter)
            .await
            .expect("woken when the first ended")
            .unwrap();
        // Nothing in flight under that key: no wait at all.
        f.wait_ended(f.hash("m1"), Duration::from_secs(30)).await;
    }

    #[tokio::test]
    async fn a_redelivery_waits_no_longer_than_the_timeout() {
        let f = InFlight::default();
        assert!(f.start(f.hash("m1")));
        let started = tokio::time::Instant::now();
        f.wait_ended(f.hash("m1"), Duration::from_millis(50)).await;
        assert!(started.elapsed() >= Duration::from_millis(50));
        assert_eq!(
            f.waiting.load(Ordering::SeqCst),
            0,
            "no waiter left counted"
        );
    }
}
