//! RabbitMQ helpers for tests that push load through a host: a host on a
//! private vhost, many messages published with pipelined confirms, the
//! replies counted by correlation id.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use lapin::BasicProperties;
use lapin::options::{BasicAckOptions, BasicConsumeOptions, BasicPublishOptions};
use lapin::types::FieldTable;
use warren::Broker;
use warren::broker::amqp::{AmqpBroker, AmqpConfig};
use warren::dispatch::DispatchConfig;
use warren::runtime::InstanceMode;

use super::rabbit::Vhost;
use super::{TestHost, plugins_dir, runtime_config, start_on};

pub async fn amqp(vh: &Vhost) -> Arc<dyn Broker> {
    Arc::new(
        AmqpBroker::connect(AmqpConfig::new(vh.url()))
            .await
            .unwrap(),
    )
}

pub async fn host(vh: &Vhost, guests: &[&str], dispatch: DispatchConfig) -> TestHost {
    start_on(
        amqp(vh).await,
        plugins_dir(guests),
        runtime_config(InstanceMode::Reuse),
        dispatch,
    )
    .await
}

/// Publishes `n` user messages to `agent` (pipelined confirms); returns their ids.
pub async fn publish_many(
    ch: &lapin::Channel,
    agent: &str,
    n: usize,
    reply_to: &str,
    text: &str,
) -> Vec<String> {
    let body = format!(
        r#"{{"messages":[{{"role":"user","content":"{text}"}}],"context_variables":{{"user":"u"}}}}"#
    );
    let mut confirms = Vec::with_capacity(n);
    let mut ids = Vec::with_capacity(n);
    for i in 0..n {
        let id = format!("load-{i}");
        confirms.push(publish_one(ch, agent, &id, reply_to, body.as_bytes()).await);
        ids.push(id);
    }
    for c in futures::future::join_all(confirms).await {
        assert!(c.unwrap().is_ack());
    }
    ids
}

/// Publishes one persistent message to `agent` (id and correlation id
/// `id`); returns its confirm, for the caller to await (pipelined).
pub async fn publish_one(
    ch: &lapin::Channel,
    agent: &str,
    id: &str,
    reply_to: &str,
    body: &[u8],
) -> lapin::PublisherConfirm {
    let props = BasicProperties::default()
        .with_message_id(id.into())
        .with_correlation_id(id.into())
        .with_reply_to(reply_to.into())
        .with_delivery_mode(2);
    ch.basic_publish(
        "agent_exchange".into(),
        format!("agent.{agent}").as_str().into(),
        BasicPublishOptions::default(),
        body,
        props,
    )
    .await
    .unwrap()
}

/// Consumes `queue` until every id in `expected` has been seen; returns how
/// often each correlation id arrived.
pub async fn collect_replies(
    ch: &lapin::Channel,
    queue: &str,
    expected: usize,
    timeout: Duration,
) -> HashMap<String, usize> {
    let mut consumer = ch
        .basic_consume(
            queue.into(),
            "".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    async fn record(seen: &mut HashMap<String, usize>, d: lapin::message::Delivery) {
        let cid = d
            .properties
            .correlation_id()
            .as_ref()
            .unwrap()
            .as_str()
            .to_string();
        *seen.entry(cid).or_default() += 1;
        d.ack(BasicAckOptions::default()).await.unwrap();
    }
    let mut seen: HashMap<String, usize> = HashMap::new();
    let deadline = tokio::time::Instant::now() + timeout;
    while seen.len() < expected {
        let d = match tokio::time::timeout_at(deadline, consumer.next()).await {
            Ok(Some(Ok(d))) => d,
            Ok(other) => panic!("reply consumer ended: {other:?}"),
            Err(_) => panic!("timed out: {} of {expected} replies", seen.len()),
        };
        record(&mut seen, d).await;
    }
    // Let stragglers (duplicates) arrive before counting.
    while let Ok(Some(Ok(d))) =
        tokio::time::timeout(Duration::from_millis(500), consumer.next()).await
    {
        record(&mut seen, d).await;
    }
    seen
}

pub async fn wait_until_empty(t: &TestHost, agents: &[&str]) {
    for _ in 0..100 {
        let stats = t.broker.stats().await.unwrap();
        if agents
            .iter()
            .all(|a| stats.iter().any(|s| s.agent == *a && s.message_count == 0))
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!(
        "queues did not drain: {:?}",
        t.broker.stats().await.unwrap()
    );
}
