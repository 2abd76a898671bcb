//! The embedded, in-process broker: the demo, `warren run` without RabbitMQ,
//! and fast tests.
//!
//! It keeps RabbitMQ's semantics where dispatch can see them — named durable
//! queues per agent, unroutable publishes refused, redelivery of unsettled
//! messages, delayed retries that hold no consumer, a dead-letter queue per
//! agent — but nothing survives the process.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use anyhow::{Result, anyhow};
use async_trait::async_trait;
use tokio::sync::Notify;

use super::{
    Acker, Broker, Consumer, DeadLetter, Delivery, Envelope, QueueStats, Replayed, Route,
    Unroutable,
};
use crate::names;

/// The embedded broker. Cheap to clone; clones share the queues.
#[derive(Clone, Default)]
pub struct MemoryBroker {
    inner: Arc<Inner>,
}

#[derive(Default)]
struct Inner {
    /// By queue name.
    queues: RwLock<HashMap<String, Arc<Queue>>>,
    reply_seq: AtomicU64,
}

/// The bound on the embedded broker's queue of unclaimed replies
/// (conversations started without a reply-to, e.g. `send` without `--wait`):
/// nobody consumes it, so it keeps the newest replies up to this size and
/// drops the oldest, counting them (`warren status`).
pub const REPLIES_LIMIT_BYTES: usize = 8 << 20;
/// ... and at most this many replies.
pub const REPLIES_LIMIT_COUNT: usize = 10_000;

struct Queue {
    /// The agent this queue belongs to; `None` for reply queues.
    agent: Option<String>,
    /// Drop-oldest bound `(bytes, messages)`; `None`: unbounded.
    limit: Option<(usize, usize)>,
    state: Mutex<QueueState>,
    ready: Notify,
}

#[derive(Default)]
struct QueueState {
    ready: VecDeque<Envelope>,
    /// Body bytes of `ready`, kept only for bounded queues.
    ready_bytes: usize,
    /// Messages dropped by the bound.
    dropped: u64,
    unacked: u64,
    delayed: u64,
    consumers: u32,
    dead: Vec<DeadLetter>,
}

impl Queue {
    fn new(agent: Option<String>) -> Arc<Self> {
        Self::bounded(agent, None)
    }

    fn bounded(agent: Option<String>, limit: Option<(usize, usize)>) -> Arc<Self> {
        Arc::new(Queue {
            agent,
            limit,
            state: Mutex::new(QueueState::default()),
            ready: Notify::new(),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, QueueState> {
        // A panic while holding this lock cannot leave the state half-written
        // (every critical section is a few field updates), so poison is ignored.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn push(&self, env: Envelope) {
        {
            let mut st = self.lock();
            if let Some((max_bytes, max_count)) = self.limit {
                st.ready_bytes += env.body.len();
                st.ready.push_back(env);
                let mut dropped = 0;
                while st.ready.len() > 1
                    && (st.ready_bytes > max_bytes || st.ready.len() > max_count)
                {
                    let old = st.ready.pop_front().expect("not empty");
                    st.ready_bytes -= old.body.len();
                    dropped += 1;
                }
                if dropped > 0 {
                    st.dropped += dropped;
                    if st.dropped == dropped || st.dropped % 1000 < dropped {
                        tracing::warn!(
                            dropped = st.dropped,
                            "the embedded broker's queue of unclaimed replies is full ({max_bytes} bytes / {max_count} replies): \
                             dropping the oldest (start conversations with `send --wait` to receive their replies)"
                        );
                    }
                }
            } else {
                st.ready.push_back(env);
            }
        }
        self.ready.notify_one();
    }

    /// Returns an unsettled delivery to the head of the queue, as AMQP does.
    fn requeue_front(&self, env: Envelope) {
        {
            let mut st = self.lock();
            st.unacked = st.unacked.saturating_sub(1);
            if self.limit.is_some() {
                st.ready_bytes += env.body.len();
            }
            st.ready.push_front(env);
        }
        self.ready.notify_one();
    }
}

impl MemoryBroker {
    pub fn new() -> Self {
        Self::default()
    }

    /// Messages ready in queue `name` (`None`: no such queue), e.g. replies
    /// left to pile up while something else is measured.
    pub fn ready(&self, name: &str) -> Option<usize> {
        self.queue(name).map(|q| q.lock().ready.len())
    }

    fn queue(&self, name: &str) -> Option<Arc<Queue>> {
        self.inner.queues.read().unwrap().get(name).cloned()
    }

    fn agent_queue(&self, agent: &str) -> Result<Arc<Queue>> {
        self.queue(&names::queue(agent))
            .ok_or_else(|| anyhow!("queue {} is not declared", names::queue(agent)))
    }
}

#[async_trait]
impl Broker for MemoryBroker {
    fn describe(&self) -> String {
        "embedded in-process broker (nothing survives a restart)".into()
    }

    async fn declare_agent(&self, agent: &str) -> Result<()> {
        names::validate(agent)?;
        self.inner
            .queues
            .write()
            .unwrap()
            .entry(names::queue(agent))
            .or_insert_with(|| Queue::new(Some(agent.to_string())));
        Ok(())
    }

    async fn declare_queue(&self, name: &str) -> Result<()> {
        let limit = (name == crate::dispatch::REPLIES_QUEUE)
            .then_some((REPLIES_LIMIT_BYTES, REPLIES_LIMIT_COUNT));
        self.inner
            .queues
            .write()
            .unwrap()
            .entry(name.to_string())
            .or_insert_with(|| Queue::bounded(None, limit));
        Ok(())
    }

    fn unclaimed_replies(&self) -> Option<super::UnclaimedReplies> {
        let queue = self.queue(crate::dispatch::REPLIES_QUEUE)?;
        let st = queue.lock();
        Some(super::UnclaimedReplies {
            queued: st.ready.len() as u64,
            bytes: st.ready_bytes as u64,
            dropped: st.dropped,
            limit_bytes: REPLIES_LIMIT_BYTES as u64,
        })
    }

    async fn publish(&self, route: &Route, envelope: Envelope) -> Result<()> {
        let name = match route {
            Route::Agent(a) => names::queue(a),
            Route::Queue(q) => q.clone(),
        };
        let queue = self.queue(&name).ok_or_else(|| Unroutable(route.clone()))?;
        queue.push(envelope);
        Ok(())
    }

    async fn consume(&self, agent: &str) -> Result<Box<dyn Consumer>> {
        let queue = self.agent_queue(agent)?;
        queue.lock().consumers += 1;
        Ok(Box::new(MemoryConsumer { queue }))
    }

    async fn reply_queue(&self) -> Result<(String, Box<dyn Consumer>)> {
        let n = self.inner.reply_seq.fetch_add(1, Ordering::Relaxed);
        let name = format!("warren.reply.{}.{n}", std::process::id());
        let queue = Queue::new(None);
        queue.lock().consumers += 1;
        self.inner
            .queues
            .write()
            .unwrap()
            .insert(name.clone(), queue.clone());
        let consumer = ReplyConsumer {
            inner: MemoryConsumer { queue },
            broker: self.clone(),
            name: name.clone(),
        };
        Ok((name, Box::new(consumer)))
    }

    async fn dead_letter(&self, agent: &str, envelope: Envelope, reason: &str) -> Result<()> {
        let queue = self.agent_queue(agent)?;
        queue.lock().dead.push(DeadLetter {
            agent: agent.to_string(),
            reason: reason.to_string(),
            envelope,
        });
        Ok(())
    }

    async fn stats(&self) -> Result<Vec<QueueStats>> {
        let queues = self.inner.queues.read().unwrap();
        let mut rows: Vec<QueueStats> = queues
            .iter()
            .filter_map(|(name, q)| {
                let agent = q.agent.clone()?;
                let st = q.lock();
                Some(QueueStats {
                    queue: name.clone(),
                    routing_key: names::routing_key(&agent),
                    dead_letter_queue: names::dead_letter_queue(&agent),
                    message_count: st.ready.len() as u64,
                    consumer_count: st.consumers,
                    unacked: st.unacked,
                    delayed: st.delayed,
                    dead_letter_count: st.dead.len() as u64,
                    status: if st.consumers > 0 {
                        "running".into()
                    } else {
                        "no consumers".into()
                    },
                    agent,
                })
            })
            .collect();
        rows.sort_by(|a, b| a.agent.cmp(&b.agent));
        Ok(rows)
    }

    async fn dead_letters(&self, agent: &str) -> Result<Vec<DeadLetter>> {
        Ok(self.agent_queue(agent)?.lock().dead.clone())
    }

    async fn replay_dead_letters(&self, agent: &str, id: Option<&str>) -> Result<Replayed> {
        // The snapshot: what is taken now; failures of the replays come
        // back to the (now shorter) dead-letter list and are not taken again.
        let taken = self.take_dead_letters(agent, id)?;
        let mut done = Replayed::default();
        let mut undeliverable = Vec::new();
        for letter in taken {
            let route = letter.envelope.replay_route(agent);
            let id = letter.envelope.id.clone();
            match self
                .publish(&route, letter.envelope.clone().for_replay())
                .await
            {
                Ok(()) => done.ids.push(id),
                Err(e) if e.downcast_ref::<Unroutable>().is_some() => undeliverable.push(letter),
                Err(e) => return Err(e),
            }
        }
        if !undeliverable.is_empty() {
            done.undeliverable = undeliverable.len() as u64;
            let queue = self.agent_queue(agent)?;
            let mut st = queue.lock();
            // Back at the head, where they were.
            undeliverable.append(&mut st.dead);
            st.dead = undeliverable;
        }
        Ok(done)
    }

    async fn purge_dead_letters(&self, agent: &str, id: Option<&str>) -> Result<u64> {
        Ok(self.take_dead_letters(agent, id)?.len() as u64)
    }
}

impl MemoryBroker {
    fn take_dead_letters(&self, agent: &str, id: Option<&str>) -> Result<Vec<DeadLetter>> {
        let queue = self.agent_queue(agent)?;
        let mut st = queue.lock();
        let (taken, kept) = std::mem::take(&mut st.dead)
            .into_iter()
            .partition(|l| id.is_none_or(|id| l.envelope.id == id));
        st.dead = kept;
        Ok(taken)
    }
}

struct MemoryConsumer {
    queue: Arc<Queue>,
}

#[async_trait]
impl Consumer for MemoryConsumer {
    async fn next(&mut self) -> Option<Delivery> {
        loop {
            // `notify_one` leaves a permit when nobody waits, so a push between
            // this check and the await below is never missed.
            if let Some(env) = {
                let mut st = self.queue.lock();
                let env = st.ready.pop_front();
                if let Some(env) = &env {
                    st.unacked += 1;
                    st.ready_bytes = st.ready_bytes.saturating_sub(env.body.len());
                }
                env
            } {
                // Several consumers share one Notify: pass the wake-up on if
                // more is waiting, so no consumer sleeps on a non-empty queue.
                if !self.queue.lock().ready.is_empty() {
                    self.queue.ready.notify_one();
                }
                let acker = MemoryAcker {
                    queue: self.queue.clone(),
                };
                return Some(Delivery::new(env, Box::new(acker)));
            }
            self.queue.ready.notified().await;
        }
    }
}

impl Drop for MemoryConsumer {
    fn drop(&mut self) {
        let mut st = self.queue.lock();
        st.consumers = st.consumers.saturating_sub(1);
    }
}

/// A reply queue lives as long as its consumer (AMQP: exclusive, auto-delete).
struct ReplyConsumer {
    inner: MemoryConsumer,
    broker: MemoryBroker,
    name: String,
}

#[async_trait]
impl Consumer for ReplyConsumer {
    async fn next(&mut self) -> Option<Delivery> {
        self.inner.next().await
    }
}

impl Drop for ReplyConsumer {
    fn drop(&mut self) {
        self.broker.inner.queues.write().unwrap().remove(&self.name);
    }
}

struct MemoryAcker {
    queue: Arc<Queue>,
}

impl MemoryAcker {
    fn settle(&self) {
        let mut st = self.queue.lock();
        st.unacked = st.unacked.saturating_sub(1);
    }
}

#[async_trait]
impl Acker for MemoryAcker {
    async fn ack(self: Box<Self>, _envelope: Envelope) -> Result<()> {
        self.settle();
        Ok(())
    }

    async fn retry(
        self: Box<Self>,
        mut envelope: Envelope,
        delay: Duration,
        reason: &str,
    ) -> Result<()> {
        envelope.next_attempt(reason);
        {
            let mut st = self.queue.lock();
            st.unacked = st.unacked.saturating_sub(1);
            st.delayed += 1;
        }
        // The delay is a timer, not a held consumer: the worker is free at once.
        let queue = self.queue;
        tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            queue.lock().delayed -= 1;
            queue.push(envelope);
        });
        Ok(())
    }

    async fn dead_letter(self: Box<Self>, envelope: Envelope, reason: &str) -> Result<()> {
        let mut st = self.queue.lock();
        st.unacked = st.unacked.saturating_sub(1);
        st.dead.push(DeadLetter {
            agent: self.queue.agent.clone().unwrap_or_default(),
            reason: reason.to_string(),
            envelope,
        });
        Ok(())
    }

    fn abandon(self: Box<Self>, envelope: Envelope) {
        self.queue.requeue_front(envelope);
    }
}

#[cfg(test)]
mod tests {
    use super::super::HEADER_LAST_ERROR;
    use super::*;

    fn env(id: &str) -> Envelope {
        Envelope {
            id: id.into(),
            attempt: 1,
            ..Default::default()
        }
    }

    #[tokio::test]
    async fn unroutable_publish_is_refused() {
        let b = MemoryBroker::new();
        let err = b
            .publish(&Route::Agent("ghost".into()), env("1"))
            .await
            .unwrap_err();
        assert!(err.downcast_ref::<Unroutable>().is_some());
        assert!(err.to_string().contains("no such agent `ghost`"));
    }

    #[tokio::test]
    async fn settle_retry_deadletter_and_abandon() {
        let b = MemoryBroker::new();
        b.declare_agent("a").await.unwrap();
        b.declare_agent("a").await.unwrap(); // idempotent
        let mut c = b.consume("a").await.unwrap();
        b.publish(&Route::Agent("a".into()), env("1"))
            .await
            .unwrap();

        // Dropped unsettled: redelivered.
        drop(c.next().await.unwrap());
        let d = c.next().await.unwrap();
        assert_eq!(d.envelope.id, "1");

        d.retry(Duration::from_millis(10), "busy").await.unwrap();
        assert_eq!(b.stats().await.unwrap()[0].delayed, 1);
        let d = c.next().await.unwrap();
        assert_eq!(d.envelope.attempt, 2);
        assert_eq!(d.envelope.headers[HEADER_LAST_ERROR], "busy");

        d.dead_letter("gave up").await.unwrap();
        let dl = b.dead_letters("a").await.unwrap();
        assert_eq!(dl.len(), 1);
        assert_eq!(dl[0].reason, "gave up");
        let s = &b.stats().await.unwrap()[0];
        assert_eq!((s.message_count, s.unacked, s.dead_letter_count), (0, 0, 1));
        assert_eq!(s.consumer_count, 1);
        drop(c);
        assert_eq!(b.stats().await.unwrap()[0].consumer_count, 0);
    }
}
