//! The chaos run's own side of the broker: preloads the requests, watches
//! the reply queue fill, and reads it at the end. Its connection is closed
//! and restarted by the faults like the host's, so every operation opens a
//! new one when the last is gone.

use std::collections::HashMap;
use std::time::Duration;

use anyhow::{Context as _, Result, anyhow};
use lapin::options::{
    BasicAckOptions, BasicGetOptions, ConfirmSelectOptions, QueueDeclareOptions,
    QueueDeleteOptions, QueuePurgeOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties};

use crate::broker::amqp::{QueueType, redact};
use crate::wire::Body;

/// The correlation id of request `i`.
pub fn request_id(i: usize) -> String {
    format!("chaos-{i}")
}

pub struct Ledger {
    /// The broker's nodes (each a whole URL); the one that last answered
    /// first.
    urls: Vec<String>,
    queue_type: QueueType,
    channel: Option<(Connection, Channel)>,
}

impl Ledger {
    pub fn new(urls: &[String], queue_type: QueueType) -> Self {
        Ledger {
            urls: urls.to_vec(),
            queue_type,
            channel: None,
        }
    }

    /// A channel in confirm mode on a live connection.
    async fn channel(&mut self) -> Result<Channel> {
        if let Some((conn, ch)) = &self.channel
            && conn.status().connected()
            && ch.status().connected()
        {
            return Ok(ch.clone());
        }
        self.channel = None;
        // A lost node is expected (the node fault): the next one is tried.
        let mut errors = Vec::new();
        let mut connected = None;
        for _ in 0..self.urls.len() {
            let url = self.urls[0].clone();
            let connect = Connection::connect(&url, ConnectionProperties::default());
            match tokio::time::timeout(Duration::from_secs(5), connect).await {
                Ok(Ok(conn)) => {
                    connected = Some(conn);
                    break;
                }
                Ok(Err(e)) => errors.push(format!("{}: {e}", redact(&url))),
                Err(_) => errors.push(format!("{}: no answer within 5 s", redact(&url))),
            }
            self.urls.rotate_left(1);
        }
        let conn = connected.ok_or_else(|| anyhow!("cannot connect: {}", errors.join("; ")))?;
        let ch = conn.create_channel().await?;
        ch.confirm_select(ConfirmSelectOptions::default()).await?;
        self.channel = Some((conn, ch.clone()));
        Ok(ch)
    }

    /// The reply queue, declared (durable, of the run's queue type) and empty.
    pub async fn fresh_queue(&mut self, name: &str) -> Result<()> {
        let ch = self.channel().await?;
        let mut args = FieldTable::default();
        args.insert(
            "x-queue-type".into(),
            AMQPValue::LongString(
                match self.queue_type {
                    QueueType::Classic => "classic",
                    QueueType::Quorum => "quorum",
                }
                .into(),
            ),
        );
        ch.queue_declare(
            name.into(),
            QueueDeclareOptions {
                durable: true,
                ..Default::default()
            },
            args,
        )
        .await
        .with_context(|| format!("declaring `{name}`"))?;
        ch.queue_purge(name.into(), QueuePurgeOptions::default())
            .await?;
        Ok(())
    }

    pub async fn purge(&mut self, queue: &str) -> Result<()> {
        let ch = self.channel().await?;
        ch.queue_purge(queue.into(), QueuePurgeOptions::default())
            .await?;
        Ok(())
    }

    pub async fn delete(&mut self, queue: &str) {
        if let Ok(ch) = self.channel().await {
            let _ = ch
                .queue_delete(queue.into(), QueueDeleteOptions::default())
                .await;
        }
    }

    /// Publishes requests `0..n` to `queue` as a plain AMQP client would:
    /// persistent, confirmed, with a correlation id and a reply-to and no
    /// warren headers.
    pub async fn preload(&mut self, queue: &str, n: usize, reply_to: &str) -> Result<()> {
        let ch = self.channel().await?;
        let messages = (0..n).map(|i| {
            let id = request_id(i);
            let props = BasicProperties::default()
                .with_message_id(id.as_str().into())
                .with_correlation_id(id.as_str().into())
                .with_reply_to(reply_to.into())
                .with_delivery_mode(2);
            (Body::user(&id, Default::default()).encode(), props)
        });
        crate::bench::relay::publish_pipelined(&ch, queue, messages).await
    }

    /// Messages ready in `queue`; none while the broker cannot say.
    pub async fn count(&mut self, queue: &str) -> Option<usize> {
        self.state(queue).await.map(|(ready, _)| ready)
    }

    /// Messages ready in `queue` and its consumers (a connection the broker
    /// has not given up on yet still counts); none while the broker cannot say.
    pub async fn state(&mut self, queue: &str) -> Option<(usize, u32)> {
        let result = async {
            let ch = self.channel().await?;
            let q = ch
                .queue_declare(
                    queue.into(),
                    QueueDeclareOptions {
                        passive: true,
                        ..Default::default()
                    },
                    FieldTable::default(),
                )
                .await?;
            anyhow::Ok((q.message_count() as usize, q.consumer_count()))
        }
        .await;
        if result.is_err() {
            self.channel = None;
        }
        result.ok()
    }

    /// Takes every message of `queue`: how many times each correlation id
    /// came.
    pub async fn drain(&mut self, queue: &str) -> Result<HashMap<String, usize>> {
        let ch = self.channel().await?;
        let mut seen = HashMap::new();
        while let Some(message) = ch
            .basic_get(queue.into(), BasicGetOptions::default())
            .await?
        {
            let id = message
                .properties
                .correlation_id()
                .as_ref()
                .map(|c| c.as_str().to_string())
                .unwrap_or_default();
            *seen.entry(id).or_insert(0) += 1;
            message.ack(BasicAckOptions::default()).await?;
        }
        Ok(seen)
    }
}
