//! An agent's consumer: takes deliveries (within the in-flight bound) and
//! drives each one's handling to its settlement, many at once.

use std::sync::Arc;

use futures::StreamExt as _;
use futures::stream::FuturesUnordered;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tracing::debug;

use super::Dispatcher;
use crate::broker::Consumer;

impl Dispatcher {
    /// Consumes until `shutdown`; a delivery already taken is always
    /// finished (published and settled) before this returns.
    ///
    /// Every delivery's handling is polled in this one task: for the usual
    /// agent (a call of microseconds) that is cheaper than a task per
    /// delivery. An agent whose calls take longer gets each call run in a
    /// task of its own (`AgentPool::call_spread`), so it still uses every core.
    pub async fn run_consumer(
        self: Arc<Self>,
        agent: String,
        mut consumer: Box<dyn Consumer>,
        shutdown: CancellationToken,
    ) {
        let metrics = self.metrics.agent(&agent);
        // A slot per delivery being handled, given back once its output is
        // confirmed: the ack may wait a little longer (acks are gathered to
        // share frames, see `broker::amqp::acks`), but it must not hold up
        // the next delivery (with one slot, that would cap the rate at one
        // message per gather). RabbitMQ's prefetch still bounds the
        // deliveries taken and not yet acked.
        let slots = Arc::new(Semaphore::new(self.config.in_flight_per_consumer.max(1)));
        let mut in_flight = FuturesUnordered::new();
        'consume: loop {
            // Kept while handlings end around it: made anew each time, it
            // would box another `next` future and take a slot again.
            let next = async {
                let slot = slots.clone().acquire_owned().await;
                (slot, consumer.next().await)
            };
            tokio::pin!(next);
            let taken = loop {
                tokio::select! {
                    biased;
                    _ = shutdown.cancelled() => break 'consume,
                    Some(()) = in_flight.next(), if !in_flight.is_empty() => {}
                    taken = &mut next => break taken,
                }
            };
            match taken {
                (Ok(slot), Some(d)) => in_flight.push(self.handle(&agent, &metrics, d, slot)),
                _ => break,
            }
        }
        // Stop taking deliveries, but finish (publish and settle) what was taken.
        while in_flight.next().await.is_some() {}
        consumer.stop().await;
        debug!(agent, "consumer stopped");
    }
}
