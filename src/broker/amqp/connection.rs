//! Connecting: one bounded attempt (the CLI verbs), or waiting for the
//! broker as long as it takes (`warren run`), and lapin's recovery after.

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context as _, Result, bail};
use lapin::options::ConfirmSelectOptions;
use lapin::{Channel, Connection, ConnectionProperties};
use tracing::{info, warn};

use super::nodes::Nodes;
use super::url::{redact, scrub};
use super::{AmqpBroker, AmqpConfig, Inner};

/// A channel to publish on, in confirm mode when `reliable`.
async fn publishing_channel(
    connection: &Connection,
    reliable: bool,
    what: &str,
) -> Result<Channel> {
    let channel = connection
        .create_channel()
        .await
        .with_context(|| format!("opening the {what} channel"))?;
    if reliable {
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .with_context(|| format!("enabling publisher confirms on the {what} channel"))?;
    }
    Ok(channel)
}

/// The delays between connection attempts of `warren run` waiting for its
/// broker: 250 ms doubling to 4 s, with jitter, for ever.
fn reconnect_backoff() -> backon::ExponentialBuilder {
    backon::ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(250))
        .with_max_delay(Duration::from_secs(4))
        .with_jitter()
        .without_max_times()
}

/// lapin's recovery after a lost connection: the same delays, for about an
/// hour (then the connection is given up, and operations fail with it).
fn recovery_backoff() -> backon::ExponentialBuilder {
    reconnect_backoff().with_max_times(900)
}

impl AmqpBroker {
    /// Connects in one attempt bounded by `connect_timeout` (a refused or
    /// failed connection is an error, at once), declares the exchanges and
    /// opens the publishing channel in confirm mode.
    pub async fn connect(config: AmqpConfig) -> Result<Self> {
        let mut urls = vec![config.url.clone()];
        urls.extend(config.more_urls.iter().cloned());
        let (mut uri, nodes) = Nodes::parse(&urls, config.connect_timeout)?;
        let nodes = Arc::new(nodes);
        let redacted = match nodes.len() {
            1 => redact(&config.url),
            n => format!(
                "{} ({n} nodes: {})",
                redact(&config.url),
                nodes.addrs().collect::<Vec<_>>().join(", ")
            ),
        };
        if uri.query.heartbeat.is_none() {
            uri.query.heartbeat = Some(config.heartbeat);
        }
        // lapin retries a failed TCP connection itself, silently, with the
        // same backoff as its recovery: reach a node's port first, so that a
        // refused connection or an unknown host is reported at once, as
        // itself, instead of as a timeout. The first node that answers is
        // the one to connect to.
        let mut causes = Vec::new();
        let mut answered = None;
        for (i, addr) in nodes.addrs().enumerate() {
            let probe = tokio::time::timeout(
                config.connect_timeout,
                tokio::net::TcpStream::connect(addr.as_str()),
            )
            .await;
            match probe {
                Ok(Ok(_)) => {
                    answered = Some(i);
                    break;
                }
                Ok(Err(e)) => causes.push(format!("{addr}: {e}")),
                Err(_) => causes.push(format!(
                    "{addr} did not answer within {:?} (the connect timeout)",
                    config.connect_timeout
                )),
            }
        }
        let Some(first) = answered else {
            bail!(
                "cannot connect to RabbitMQ at {redacted}: {}",
                causes.join("; ")
            );
        };
        nodes.start_at(first);
        // After a connection is lost, lapin's recovery tries again at most
        // 4 s apart for about an hour, through `Nodes::connect`: on the same
        // node, or the next one when it does not answer.
        let props = ConnectionProperties::default()
            .with_connection_name(format!("warren {}", std::process::id()).into())
            .enable_auto_recover()
            .with_backoff(recovery_backoff());
        let runtime = lapin::runtime::default_runtime()?;
        let connector = nodes.clone();
        let attempt = tokio::time::timeout(
            config.connect_timeout,
            Connection::connector(
                uri,
                runtime,
                async move |uri, runtime| connector.connect(&uri, &runtime).await,
                props,
            ),
        )
        .await;
        let connection = match attempt {
            Ok(Ok(connection)) => connection,
            Ok(Err(e)) => bail!(
                "cannot connect to RabbitMQ at {redacted}: {}",
                scrub(&e.to_string(), &config.url)
            ),
            Err(_) => bail!(
                "cannot connect to RabbitMQ at {redacted}: no answer within {:?} (the connect timeout)",
                config.connect_timeout
            ),
        };
        nodes.watch(connection.status().clone());
        if !config.reliable {
            warn!(
                "publisher confirms and persistence are OFF: messages can be lost (benchmark mode)"
            );
        }
        let publish = publishing_channel(&connection, config.reliable, "publish").await?;
        let settle = publishing_channel(&connection, config.reliable, "settling").await?;
        info!(
            "connected to RabbitMQ at {redacted} (exchange `{}`)",
            config.exchange
        );
        let broker = AmqpBroker {
            inner: Arc::new(Inner {
                config,
                redacted,
                nodes,
                connection,
                publish,
                settle,
                settle_lock: tokio::sync::Mutex::new(()),
                agents: Mutex::new(BTreeSet::new()),
                delay_queues: Mutex::new(BTreeSet::new()),
                exchange_shape: Mutex::new(None),
                seq: AtomicU64::new(0),
                recoveries: AtomicU64::new(0),
                settled: Mutex::new(HashMap::new()),
                in_flight: Default::default(),
                acks: Default::default(),
                last_counts: Default::default(),
            }),
        };
        broker.inner.declare_exchanges().await?;
        Ok(broker)
    }

    /// Connects, waiting for the broker as long as it takes: each failed
    /// attempt is logged at WARN with the (redacted) address, the cause and
    /// the delay before the next one, and given to `failed` (e.g. for
    /// `/readyz` to show meanwhile).
    pub async fn connect_waiting(
        config: AmqpConfig,
        failed: impl Fn(&anyhow::Error),
    ) -> Result<Self> {
        let mut delays = backon::BackoffBuilder::build(reconnect_backoff());
        let mut attempt = 1u64;
        loop {
            match Self::connect(config.clone()).await {
                Ok(broker) => {
                    if attempt > 1 {
                        info!("connected after {attempt} attempts");
                    }
                    return Ok(broker);
                }
                // An invalid URL does not get better by waiting.
                Err(e) if e.to_string().starts_with("invalid AMQP URL") => return Err(e),
                Err(e) => {
                    failed(&e);
                    let delay = delays.next().unwrap_or(Duration::from_secs(4));
                    warn!(attempt, "{e:#}; next attempt in {} ms", delay.as_millis());
                    tokio::time::sleep(delay).await;
                    attempt += 1;
                }
            }
        }
    }
}

/// The longest [`close`] waits for RabbitMQ's answer.
const CLOSE_AT_MOST: Duration = Duration::from_secs(5);

/// Closes `conn` as a client should, best effort and bounded: a channel
/// already closing makes lapin refuse (logged at debug), and a connection
/// lapin has already failed may never answer (then it is dropped with a
/// warning), so nothing shutting down waits for it forever.
pub(crate) async fn close(conn: &Connection, reason: &str) {
    match tokio::time::timeout(CLOSE_AT_MOST, conn.close(200, reason.into())).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::debug!("closing the AMQP connection: {e}"),
        Err(_) => warn!(
            "closing the AMQP connection: RabbitMQ did not answer within {CLOSE_AT_MOST:?}; dropping it"
        ),
    }
}
