//! Queues and their arguments: agent queues, dead-letter and delay queues.
//!
//! An agent's queue dead-letters into the agent's dead-letter queue
//! (`x-dead-letter-exchange` = the default exchange, routing key = the DLQ),
//! so a message whose TTL passes while queued, or that a quorum queue's
//! delivery limit gives up on, is kept with RabbitMQ's reason, not dropped.
//! A queue that already exists with other arguments (made by another client,
//! or by an older warren) is adopted as it is, with a warning that says what
//! that costs. On quorum queues, dead-lettering is `at-least-once` (which
//! RabbitMQ allows only with `x-overflow: reject-publish`): the default,
//! at-most-once, drops a retry whose target has no leader when it expires.
//!
//! Classic queues are declared as version 2 (`x-queue-version: 2`, RabbitMQ
//! 3.10 to 3.13; 4.x has no other version and ignores the argument) unless
//! configured ([`QueueVersion`]: 1, or none so that the broker's default
//! and its operator's policies decide). Measured on RabbitMQ 3.10
//! (BENCHMARKS.md): version 1, the default there, now and then stops
//! delivering and confirming on a busy queue for ~0.4 s on some machines;
//! on others it costs the broker less CPU per message than version 2 and
//! drains about as fast. A queue that exists with another version (made by
//! an older warren, or another client) is kept as it is, with a note on how
//! to convert it.

use anyhow::{Result, anyhow};
use lapin::Channel;
use lapin::options::QueueDeclareOptions;
use lapin::types::{AMQPValue, FieldTable, ShortString};
use tracing::{info, warn};

use super::{Inner, QueueType};
use crate::names;

fn text(v: &str) -> AMQPValue {
    AMQPValue::LongString(v.into())
}

/// The classic queue's storage version (see the module's doc).
const QUEUE_VERSION: &str = "x-queue-version";

/// The storage version classic queues are declared with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum QueueVersion {
    /// `x-queue-version: 1`.
    #[value(name = "1")]
    V1,
    /// `x-queue-version: 2`.
    #[default]
    #[value(name = "2")]
    V2,
    /// No version argument: the broker's default (1 before RabbitMQ 4.0)
    /// and its `queue-version` policies decide.
    Broker,
}

impl QueueVersion {
    /// The `x-queue-version` argument, if one is declared.
    fn argument(self) -> Option<i32> {
        match self {
            QueueVersion::V1 => Some(1),
            QueueVersion::V2 => Some(2),
            QueueVersion::Broker => None,
        }
    }
}

/// `args` with the queue version `version` instead of theirs (none: without).
fn with_version(args: &FieldTable, version: Option<i32>) -> FieldTable {
    let mut table: FieldTable = args
        .inner()
        .iter()
        .filter(|(k, _)| k.as_str() != QUEUE_VERSION)
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect::<std::collections::BTreeMap<_, _>>()
        .into();
    if let Some(v) = version {
        table.insert(QUEUE_VERSION.into(), AMQPValue::LongInt(v));
    }
    table
}

impl Inner {
    fn type_args(&self) -> FieldTable {
        let mut args = FieldTable::default();
        match self.config.queue_type {
            QueueType::Quorum => {
                args.insert("x-queue-type".into(), text("quorum"));
            }
            QueueType::Classic => {
                if let Some(v) = self.config.queue_version.argument() {
                    args.insert(QUEUE_VERSION.into(), AMQPValue::LongInt(v));
                }
            }
        }
        args
    }

    /// Arguments of a queue that dead-letters into `target` (a queue name,
    /// through the default exchange).
    fn dead_lettering_args(&self, target: &str) -> FieldTable {
        let mut args = self.type_args();
        args.insert("x-dead-letter-exchange".into(), text(""));
        args.insert("x-dead-letter-routing-key".into(), text(target));
        if self.config.queue_type == QueueType::Quorum {
            args.insert("x-dead-letter-strategy".into(), text("at-least-once"));
            args.insert("x-overflow".into(), text("reject-publish"));
        }
        args
    }

    /// An agent's queue: dead-letters into the agent's DLQ.
    pub(super) fn agent_queue_args(&self, agent: &str) -> FieldTable {
        self.dead_lettering_args(&names::dead_letter_queue(agent))
    }

    /// Plain queues (dead-letter queues, the replies queue).
    pub(super) fn plain_queue_args(&self) -> FieldTable {
        self.type_args()
    }

    /// Runs `op` on a channel of its own: a refused declaration (404/406)
    /// closes the channel it ran on, and must not take a shared one with it.
    pub(super) async fn on_temp_channel<T, F, Fut>(&self, op: F) -> Result<T, lapin::Error>
    where
        F: FnOnce(Channel) -> Fut,
        Fut: std::future::Future<Output = Result<T, lapin::Error>>,
    {
        // While lapin recovers the connection a new channel is refused; what
        // runs here (declares, binds, counts) waits for it like a publish.
        if !self.connection.status().connected() {
            self.wait_connected(self.config.recovery_timeout).await;
        }
        let channel = self.connection.create_channel().await?;
        let result = op(channel.clone()).await;
        if channel.status().connected() {
            let _ = channel.close(200, "done".into()).await;
        }
        result
    }

    async fn declare(
        &self,
        name: &str,
        args: FieldTable,
        passive: bool,
    ) -> Result<(), lapin::Error> {
        let name_s: ShortString = name.into();
        self.on_temp_channel(|ch| async move {
            ch.queue_declare(
                name_s,
                QueueDeclareOptions {
                    durable: true,
                    passive,
                    ..Default::default()
                },
                args,
            )
            .await
            .map(|_| ())
        })
        .await
    }

    /// Declares a durable queue with `args`; one that exists with other
    /// arguments is used as it is, with a warning naming `cost`: what is
    /// lost without warren's arguments.
    pub(super) async fn declare_queue(
        &self,
        name: &str,
        args: FieldTable,
        cost: &str,
    ) -> Result<()> {
        let mut error = match self.declare(name, args.clone(), false).await {
            Ok(()) => return Ok(()),
            Err(e) => e.to_string(),
        };
        if error.contains(QUEUE_VERSION) {
            // Made with another version argument than this host's (an older
            // warren gave none; other clients none, 1 or 2), maybe with
            // warren's other arguments: keep it.
            let asked = self.config.queue_version.argument();
            for version in [None, Some(1), Some(2)].into_iter().filter(|v| *v != asked) {
                match self
                    .declare(name, with_version(&args, version), false)
                    .await
                {
                    Ok(()) => {
                        info!(
                            queue = name,
                            "queue `{name}` is a classic queue of another version than this \
                             host declares ({error}); kept as it is (a `queue-version` policy \
                             converts it, see docs/operations.md)"
                        );
                        return Ok(());
                    }
                    Err(e) => error = e.to_string(),
                }
                if !error.contains(QUEUE_VERSION) {
                    break;
                }
            }
        }
        if !(error.contains("PRECONDITION_FAILED") || error.contains("inequivalent")) {
            return Err(anyhow!("declaring queue `{name}`: {error}"));
        }
        // It exists, with other arguments: adopt it.
        match self.declare(name, FieldTable::default(), true).await {
            Ok(()) => {
                warn!(
                    queue = name,
                    "queue `{name}` already exists with other arguments than warren's ({error}); using it as it is{cost}"
                );
                Ok(())
            }
            Err(e) => Err(anyhow!(
                "queue `{name}` exists with other arguments ({error}) and cannot be used: {e}"
            )),
        }
    }

    /// Declares an agent's dead-letter queue (again, if it was deleted).
    pub(super) async fn declare_dead_letter_queue(&self, agent: &str) -> Result<()> {
        self.declare_queue(
            &names::dead_letter_queue(agent),
            self.plain_queue_args(),
            "",
        )
        .await
    }

    /// The delay queue for `delay`: one per power-of-two bucket of milliseconds.
    pub(super) async fn delay_queue(
        &self,
        agent: &str,
        delay: std::time::Duration,
    ) -> Result<String> {
        let ms = (delay.as_millis() as u64).max(1);
        let bucket = ms.next_power_of_two();
        let name = format!("{}.retry.{bucket}ms", names::queue(agent));
        if self.delay_queues.lock().unwrap().contains(&name) {
            return Ok(name);
        }
        let args = self.dead_lettering_args(&names::queue(agent));
        self.declare_queue(
            &name,
            args,
            "; a retry waiting in it may not come back if it is not a delay queue of warren's",
        )
        .await?;
        self.delay_queues.lock().unwrap().insert(name.clone());
        Ok(name)
    }

    /// Forgets that a delay queue was declared (it was deleted): the next
    /// retry through it declares it again.
    pub(super) fn forget_delay_queue(&self, name: &str) {
        self.delay_queues.lock().unwrap().remove(name);
    }

    /// `(ready messages, consumers)` of a queue; `None` if it does not exist.
    pub(super) async fn queue_counts(&self, name: &str) -> Result<Option<(u64, u32)>> {
        let name_s: ShortString = name.into();
        let result = self
            .on_temp_channel(|ch| async move {
                ch.queue_declare(
                    name_s,
                    QueueDeclareOptions {
                        passive: true,
                        ..Default::default()
                    },
                    FieldTable::default(),
                )
                .await
            })
            .await;
        match result {
            Ok(q) => Ok(Some((q.message_count() as u64, q.consumer_count()))),
            Err(e) if e.to_string().contains("NOT_FOUND") => Ok(None),
            Err(e) => Err(anyhow!("inspecting queue `{name}`: {e}")),
        }
    }
}
