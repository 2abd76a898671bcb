//! Hosts asking each other (for traces): a question goes to every host on
//! the broker through a fanout exchange, `{exchange}.peers`; each host has
//! its own queue (`{exchange}.peers.{random}`) bound to it and answers to
//! the asker's direct reply-to (`amq.rabbitmq.reply-to`). Nothing of it is
//! durable or confirmed: a question is asked again by whoever needs the
//! answer, and costs the message path nothing.

use std::time::Duration;

use anyhow::{Context as _, Result, bail};
use futures::StreamExt as _;
use lapin::options::{
    BasicConsumeOptions, BasicPublishOptions, ExchangeDeclareOptions, QueueBindOptions,
    QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Channel, ExchangeKind};
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use super::Inner;
use crate::broker::PeerAnswers;

/// RabbitMQ's direct reply-to pseudo-queue.
const REPLY_TO: &str = "amq.rabbitmq.reply-to";

/// How long an unanswered question waits in a host's queue.
const QUESTION_TTL_MS: i64 = 10_000;

/// How long a host's question queue outlives its last use.
const QUEUE_EXPIRES: Duration = Duration::from_secs(60);

impl Inner {
    fn peers_exchange(&self) -> String {
        format!("{}.peers", self.config.exchange)
    }

    async fn peers_channel(&self) -> Result<Channel> {
        let channel = self
            .connection
            .create_channel()
            .await
            .context("opening a channel to the other hosts")?;
        channel
            .exchange_declare(
                self.peers_exchange().as_str().into(),
                ExchangeKind::Fanout,
                ExchangeDeclareOptions::default(),
                FieldTable::default(),
            )
            .await
            .with_context(|| format!("declaring exchange `{}`", self.peers_exchange()))?;
        Ok(channel)
    }

    /// Asks every host and gathers the answers that come within `wait`.
    pub(super) async fn ask_peers(
        &self,
        question: Vec<u8>,
        wait: Duration,
    ) -> Result<Vec<Vec<u8>>> {
        let channel = self.peers_channel().await?;
        let mut answers = consume_unacked(&channel, REPLY_TO)
            .await
            .context("consuming direct replies")?;
        channel
            .basic_publish(
                self.peers_exchange().as_str().into(),
                "".into(),
                BasicPublishOptions::default(),
                &question,
                BasicProperties::default()
                    .with_reply_to(REPLY_TO.into())
                    .with_expiration(QUESTION_TTL_MS.to_string().as_str().into()),
            )
            .await
            .context("asking the other hosts")?;
        let deadline = tokio::time::Instant::now() + wait;
        let mut got = Vec::new();
        while let Ok(Some(next)) = tokio::time::timeout_at(deadline, answers.next()).await {
            match next {
                Ok(d) => got.push(d.data),
                Err(e) => {
                    debug!("reading answers from the other hosts: {e}");
                    break;
                }
            }
        }
        let _ = channel.close(200, "asked".into()).await;
        Ok(got)
    }

    /// Answers questions until `shutdown`, or fails with the channel.
    pub(super) async fn answer_peers(
        &self,
        answer: &PeerAnswers,
        shutdown: &CancellationToken,
    ) -> Result<()> {
        let channel = self.peers_channel().await?;
        let mut args = FieldTable::default();
        args.insert(
            "x-message-ttl".into(),
            AMQPValue::LongLongInt(QUESTION_TTL_MS),
        );
        args.insert("x-max-length".into(), AMQPValue::LongLongInt(100));
        args.insert(
            "x-expires".into(),
            AMQPValue::LongLongInt(QUEUE_EXPIRES.as_millis() as i64),
        );
        // A client-chosen name, not exclusive: lapin's recovery declares the
        // channel's queues again by name, and RabbitMQ refuses a server-made
        // `amq.gen-*` name (403) or another connection's exclusive queue
        // (405, the old connection not given up on yet). One channel whose
        // recovery fails puts the whole connection, consumers and all, in
        // error. Auto-delete goes with this host's consumer; `x-expires`
        // with a host that died between declaring and consuming.
        let queue = format!(
            "{}.{}",
            self.peers_exchange(),
            &crate::dispatch::new_id()[2..18]
        );
        channel
            .queue_declare(
                queue.as_str().into(),
                QueueDeclareOptions {
                    auto_delete: true,
                    ..Default::default()
                },
                args,
            )
            .await
            .context("declaring this host's question queue")?;
        channel
            .queue_bind(
                queue.as_str().into(),
                self.peers_exchange().as_str().into(),
                "".into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
            .context("binding this host's question queue")?;
        let mut questions = consume_unacked(&channel, &queue)
            .await
            .context("consuming this host's question queue")?;
        loop {
            let next = tokio::select! {
                _ = shutdown.cancelled() => return Ok(()),
                next = questions.next() => next,
            };
            let d = match next {
                Some(Ok(d)) => d,
                Some(Err(e)) => return Err(e).context("reading questions"),
                None => bail!("the question queue's consumer ended"),
            };
            let Some(reply_to) = d.properties.reply_to().clone() else {
                continue;
            };
            if let Some(bytes) = answer(&d.data) {
                channel
                    .basic_publish(
                        "".into(),
                        reply_to.as_str().into(),
                        BasicPublishOptions::default(),
                        &bytes,
                        BasicProperties::default(),
                    )
                    .await
                    .context("answering a question")?;
            }
        }
    }
}

/// Consumes `queue` without acknowledgements (nothing here is kept).
async fn consume_unacked(channel: &Channel, queue: &str) -> lapin::Result<lapin::Consumer> {
    channel
        .basic_consume(
            queue.into(),
            "".into(),
            BasicConsumeOptions {
                no_ack: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
}

/// The answering loop of a host: a failure (a lost connection) is retried.
pub(super) async fn answer_for_ever(
    inner: &Inner,
    answer: PeerAnswers,
    shutdown: CancellationToken,
) {
    while !shutdown.is_cancelled() {
        if let Err(e) = inner.answer_peers(&answer, &shutdown).await {
            warn!("answering the other hosts' trace questions: {e:#}; again in 5 s");
            tokio::select! {
                _ = shutdown.cancelled() => {}
                _ = tokio::time::sleep(Duration::from_secs(5)) => {}
            }
        }
    }
}
