//! Against the 3-node cluster of `scripts/rabbitmq-cluster.sh` (started by
//! the test when it is not up): quorum queues through the loss of a node.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::cluster::{cluster, ctl, vhost};
use common::*;
use warren::broker::amqp::{AmqpBroker, AmqpConfig, QueueType};
use warren::dispatch::{DispatchConfig, Event};
use warren::runtime::InstanceMode;
use warren::{Broker, client};

/// The tests stop and start nodes: never two at once.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// The node (1-3) leading a quorum queue.
fn leader(node: u32, vhost: &str, queue: &str) -> u32 {
    let text = ctl(
        node,
        &[
            "list_queues",
            "-p",
            vhost,
            "--no-table-headers",
            "--quiet",
            "name",
            "leader",
        ],
    );
    let line = text
        .lines()
        .find(|l| l.split_whitespace().next() == Some(queue))
        .unwrap_or_else(|| panic!("no queue {queue}: {text}"));
    let leader = line.split_whitespace().nth(1).unwrap();
    leader
        .trim_start_matches("warren-c")
        .split('@')
        .next()
        .unwrap()
        .parse()
        .unwrap_or_else(|_| panic!("leader {leader}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_waiting_in_quorum_delay_queues_survive_the_loss_of_the_agent_queues_leader() {
    let _serial = SERIAL.lock().await;
    cluster(&["up"]);
    let vhost = vhost("warren-cluster");
    let url = |n: u32| format!("amqp://guest:guest@127.0.0.1:{}/{vhost}", 5700 + n);
    let quorum = |n: u32| AmqpConfig {
        queue_type: QueueType::Quorum,
        ..AmqpConfig::new(url(n))
    };
    // Declare first, then host on a node that does not lead the agent queue.
    let probe = AmqpBroker::connect(quorum(1)).await.unwrap();
    probe.declare_agent("chaos").await.unwrap();
    probe.close().await;
    let lead = leader(1, &vhost, "agent_chaos_queue");
    let home = (1..=3).find(|n| *n != lead).unwrap();
    let broker: Arc<dyn Broker> = Arc::new(AmqpBroker::connect(quorum(home)).await.unwrap());
    let dispatch = DispatchConfig {
        // The first retry waits 2-4 s: long enough to lose a node under it.
        backoff_base: Duration::from_millis(4_000),
        backoff_cap: Duration::from_secs(8),
        max_attempts: 5,
        ..fast_dispatch()
    };
    let mut t = start_on(
        broker.clone(),
        plugins_dir(&["chaos"]),
        runtime_config(InstanceMode::Reuse),
        dispatch,
    )
    .await;
    let n = 20;
    let mut waiting = Vec::new();
    for _ in 0..n {
        let b = broker.clone();
        waiting.push(tokio::spawn(async move {
            client::send(
                b.as_ref(),
                "chaos",
                "flaky:2",
                Default::default(),
                Some(Duration::from_secs(90)),
            )
            .await
        }));
    }
    // Every message asked for its retry: now the leader goes.
    let mut retrying = 0;
    while retrying < n {
        t.wait_for(|e| matches!(e, Event::Retrying { .. }).then_some(()))
            .await;
        retrying += 1;
    }
    let stopped = leader(home, &vhost, "agent_chaos_queue");
    assert_ne!(stopped, home);
    cluster(&["stop", &stopped.to_string()]);
    let mut answered = 0;
    for w in waiting {
        let outcome = w
            .await
            .unwrap()
            .expect("answered after the leader was lost");
        assert_eq!(outcome.reply.unwrap().text, "ok on attempt 2");
        answered += 1;
    }
    assert_eq!(answered, n);
    cluster(&["start", &stopped.to_string()]);
    t.host.shutdown().await;
    ctl(home, &["delete_vhost", &vhost]);
}

/// A host given every node moves to another when its node is lost: the
/// conversations sent before and after all get their answers, and status
/// and /metrics say which node it is on and that it failed over.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_given_several_nodes_fails_over_when_its_node_is_lost() {
    let _serial = SERIAL.lock().await;
    cluster(&["up"]);
    let vhost = vhost("warren-failover");
    let url = |n: u32| format!("amqp://guest:guest@127.0.0.1:{}/{vhost}", 5700 + n);
    // The host prefers node 1, then 2, then 3; the user's side is on node 3.
    let host_broker = AmqpBroker::connect(AmqpConfig {
        queue_type: QueueType::Quorum,
        more_urls: vec![url(2), url(3)],
        ..AmqpConfig::new(url(1))
    })
    .await
    .unwrap();
    assert_eq!(host_broker.node().as_deref(), Some("127.0.0.1:5701"));
    let host_broker: Arc<dyn Broker> = Arc::new(host_broker);
    let t = echo_host(host_broker.clone()).await;
    let user: Arc<dyn Broker> = Arc::new(
        AmqpBroker::connect(AmqpConfig {
            queue_type: QueueType::Quorum,
            ..AmqpConfig::new(url(3))
        })
        .await
        .unwrap(),
    );
    let ask = |i: usize| ask_echo(user.clone(), i);
    let mut waiting: Vec<_> = (0..20).map(ask).collect();
    cluster(&["stop", "1"]);
    waiting.extend((20..40).map(ask));
    expect_echoes(0, waiting).await;
    assert!(host_broker.failovers() >= 1);
    assert_ne!(host_broker.node().as_deref(), Some("127.0.0.1:5701"));
    let status = t.host.status().await.unwrap();
    assert!(
        status.broker.contains("on node 127.0.0.1:570"),
        "{}",
        status.broker
    );
    assert!(status.failovers >= 1);
    // A second recovery can follow the failover (seen in CI: every echo was
    // back and the connection was recovering again); status answers during
    // one, readiness says "not connected" until it ends, so it is read after.
    let connected = std::time::Instant::now();
    while !host_broker.connected() {
        assert!(
            connected.elapsed() < Duration::from_secs(60),
            "the host did not stay connected after failing over"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let readiness = t.host.readiness();
    assert!(
        readiness.broker_connected && readiness.failovers >= 1 && readiness.node.is_some(),
        "{readiness:?}"
    );
    cluster(&["start", "1"]);
    t.host.shutdown().await;
    ctl(2, &["delete_vhost", &vhost]);
}
