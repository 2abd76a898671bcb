//! Queue types and versions on the real RabbitMQ at 127.0.0.1:5672, each
//! test in a private virtual host: quorum queues, classic queue versions,
//! and queues that exist with other arguments. They fail with a clear
//! message when the broker is absent (never a silent skip).

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::amqp::*;
use common::rabbit::Vhost;
use common::*;
use lapin::types::FieldTable;
use warren::broker::amqp::{AmqpBroker, AmqpConfig, QueueVersion};
use warren::{Broker, client};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quorum_queues_and_idempotent_redeclaration() {
    let vh = Vhost::new();
    let config = AmqpConfig {
        queue_type: warren::broker::amqp::QueueType::Quorum,
        ..AmqpConfig::new(vh.url())
    };
    let quorum: Arc<dyn Broker> = Arc::new(AmqpBroker::connect(config).await.unwrap());
    let t = echo_host(quorum.clone()).await;
    // Declaring again (a restart) is fine.
    quorum.declare_agent("echo").await.unwrap();
    let r = client::send(
        quorum.as_ref(),
        "echo",
        "ping",
        Default::default(),
        Some(Duration::from_secs(20)),
    )
    .await
    .unwrap();
    assert_eq!(r.reply.unwrap().text, "ping");
    // A host configured for classic queues adopts the quorum queue as it is
    // (with a warning), and the agent still answers through it.
    let classic: Arc<dyn Broker> = Arc::new(
        AmqpBroker::connect(AmqpConfig::new(vh.url()))
            .await
            .unwrap(),
    );
    classic.declare_agent("echo").await.unwrap();
    let r = client::send(
        classic.as_ref(),
        "echo",
        "pong",
        Default::default(),
        Some(Duration::from_secs(20)),
    )
    .await
    .unwrap();
    assert_eq!(r.reply.unwrap().text, "pong");
    t.host.shutdown().await;
}

/// Declares `name` (durable) with `args` on a channel of its own (a refused
/// declaration closes its channel); the broker's refusal as text.
async fn declare_with(
    conn: &lapin::Connection,
    name: &str,
    args: &[(&str, lapin::types::AMQPValue)],
) -> Result<(), String> {
    let mut table = FieldTable::default();
    for (k, v) in args {
        table.insert((*k).into(), v.clone());
    }
    let ch = conn.create_channel().await.unwrap();
    ch.queue_declare(
        name.into(),
        lapin::options::QueueDeclareOptions {
            durable: true,
            ..Default::default()
        },
        table,
    )
    .await
    .map(|_| ())
    .map_err(|e| e.to_string())
}

/// Classic queues are made as version 2 unless configured (`--queue-version`);
/// an agent queue that exists as version 1 (an older warren's) is kept as it
/// is and serves the agent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn classic_queues_are_version_2_unless_configured_and_another_version_is_kept() {
    use lapin::types::AMQPValue::{LongInt, LongString};
    let vh = Vhost::new();
    let (conn, _ch) = vh.plain_client().await;
    // warren's dead-lettering of an agent queue into `dlq`.
    let dlx = |dlq: &str| {
        vec![
            ("x-dead-letter-exchange", LongString("".into())),
            ("x-dead-letter-routing-key", LongString(dlq.into())),
        ]
    };
    let version = |v: i32| ("x-queue-version", LongInt(v));
    // What an older warren made: its dead-lettering, RabbitMQ's default version (1).
    let old = dlx("agent_echo_queue.dlq");
    declare_with(&conn, "agent_echo_queue", &old).await.unwrap();
    common::logs::capture("info");
    let t = host(&vh, &["echo"], fast_dispatch()).await;
    let r = client::send(
        t.broker.as_ref(),
        "echo",
        "still served",
        Default::default(),
        Some(Duration::from_secs(20)),
    )
    .await
    .unwrap();
    assert_eq!(r.reply.unwrap().text, "still served");
    // Kept as it was: RabbitMQ still compares against no version argument.
    declare_with(&conn, "agent_echo_queue", &old).await.unwrap();
    // A queue another client made as version 1 explicitly is kept too.
    let mut explicit = dlx("agent_other_queue.dlq");
    explicit.push(version(1));
    declare_with(&conn, "agent_other_queue", &explicit)
        .await
        .unwrap();
    t.broker.declare_agent("other").await.unwrap();
    let text = common::logs::text();
    assert!(
        text.contains("queue `agent_echo_queue` is a classic queue of another version")
            && text.contains("queue-version` policy"),
        "{text}"
    );
    // The dead-letter queue warren made itself is version 2.
    declare_with(&conn, "agent_echo_queue.dlq", &[version(2)])
        .await
        .unwrap();
    let refused = declare_with(&conn, "agent_echo_queue.dlq", &[version(1)])
        .await
        .unwrap_err();
    assert!(refused.contains("x-queue-version"), "{refused}");
    t.host.shutdown().await;

    // `--queue-version 1` and `broker` (no argument: the broker's default
    // and policies decide) declare exactly that.
    for (queue_version, agent, args) in [
        (QueueVersion::V1, "one", vec![version(1)]),
        (QueueVersion::Broker, "plain", vec![]),
    ] {
        let b = AmqpBroker::connect(AmqpConfig {
            queue_version,
            ..AmqpConfig::new(vh.url())
        })
        .await
        .unwrap();
        b.declare_agent(agent).await.unwrap();
        let dlq = format!("agent_{agent}_queue.dlq");
        let mut same = dlx(&dlq);
        same.extend(args.iter().cloned());
        declare_with(&conn, &format!("agent_{agent}_queue"), &same)
            .await
            .unwrap();
        let mut other = dlx(&dlq);
        other.push(version(2));
        let refused = declare_with(&conn, &format!("agent_{agent}_queue"), &other)
            .await
            .unwrap_err();
        assert!(
            refused.contains("x-queue-version"),
            "{queue_version:?}: {refused}"
        );
        warren::Broker::close(&b).await;
    }
}
