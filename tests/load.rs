//! A host under load on the real RabbitMQ (each test in a private vhost):
//! thousands of messages exactly once, acks batched without passing a
//! delivery still being handled, every connection cut mid-run. They fail
//! with a clear message when the broker is absent (never a silent skip).

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::amqp::*;
use common::rabbit::Vhost;
use common::*;
use lapin::BasicProperties;
use lapin::options::{BasicPublishOptions, QueueDeclareOptions};
use lapin::types::FieldTable;
use warren::broker::amqp::{AmqpBroker, AmqpConfig, DEFAULT_PREFETCH};
use warren::dispatch::DispatchConfig;
use warren::names;
use warren::runtime::InstanceMode;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_messages_through_a_to_b_arrive_exactly_once() {
    let vh = Vhost::new();
    let amqp = vh.broker().await;
    let t = start_on(
        amqp.clone(),
        plugins_dir(&["agent_a", "agent_b"]),
        runtime_config(InstanceMode::Reuse),
        DispatchConfig {
            consumers_per_agent: 4,
            ..fast_dispatch()
        },
    )
    .await;
    let (_conn, ch) = vh.plain_client().await;
    Vhost::declare_queue(&ch, "test_replies").await;
    let ids = publish_many(
        &ch,
        "agent_a",
        10_000,
        "test_replies",
        "I want to talk to agent B.",
    )
    .await;
    let seen = collect_replies(&ch, "test_replies", ids.len(), Duration::from_secs(240)).await;
    assert_eq!(seen.len(), ids.len());
    for id in &ids {
        assert_eq!(seen.get(id), Some(&1), "conversation {id}");
    }
    wait_until_empty(&t, &["agent_a", "agent_b"]).await;
    let stats = t.broker.stats().await.unwrap();
    assert!(stats.iter().all(|s| s.dead_letter_count == 0), "{stats:?}");
    // A backlog's acks go out in batches: fewer ack frames than deliveries.
    let (acked, frames) = amqp.ack_counts();
    println!("{acked} deliveries acked in {frames} ack frames");
    assert!(acked >= 20_000, "{acked}");
    assert!(frames < acked, "{frames} frames for {acked} acks");
    t.host.shutdown().await;
}

/// Acks go out in batches (one `multiple` ack for a run of settled
/// deliveries), but a batch never passes a delivery still being handled:
/// while a slow message holds the front of its channel, the quick ones
/// behind it — answered, dead-lettered — are acked (alone, after a short
/// wait), and the slow one stays unacked until it is done. Nothing is acked
/// twice (RabbitMQ would close the channel) and nothing is answered twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batched_acks_never_pass_a_delivery_still_being_handled() {
    let vh = Vhost::new();
    let t = start_on(
        amqp(&vh).await,
        plugins_dir(&["chaos"]),
        warren::runtime::RuntimeConfig {
            deadline: Duration::from_secs(30),
            ..runtime_config(InstanceMode::Reuse)
        },
        DispatchConfig {
            consumers_per_agent: 1,
            in_flight_per_consumer: 64,
            ..fast_dispatch()
        },
    )
    .await;
    let (_conn, ch) = vh.plain_client().await;
    Vhost::declare_queue(&ch, "acks_out").await;
    let publish = async |id: &str, text: &str| {
        let body = format!(r#"{{"messages":[{{"role":"user","content":"{text}"}}]}}"#);
        let props = BasicProperties::default()
            .with_message_id(id.into())
            .with_correlation_id(id.into())
            .with_reply_to("acks_out".into())
            .with_delivery_mode(2);
        ch.basic_publish(
            "agent_exchange".into(),
            "agent.chaos".into(),
            BasicPublishOptions::default(),
            body.as_bytes(),
            props,
        )
        .await
        .unwrap()
        .await
        .unwrap();
    };
    let started = std::time::Instant::now();
    publish("slow", "sleep:8000").await;
    for i in 0..150 {
        if i % 10 == 5 {
            publish(&format!("bad-{i}"), "reject:not wanted").await;
        } else {
            publish(&format!("quick-{i}"), "hello").await;
        }
    }
    // While the slow delivery is still in the guest (8 s), everything behind
    // it is acked, and it is not: RabbitMQ counts exactly one unacked.
    let name = vh.name.clone();
    let snapshot = tokio::task::spawn_blocking(move || {
        let mut queues = common::rabbit::queues_of(&name);
        while started.elapsed() < Duration::from_secs(7) {
            if queues.get("agent_chaos_queue") == Some(&(0, 1))
                && queues.get("agent_chaos_queue.dlq") == Some(&(15, 0))
            {
                break;
            }
            std::thread::sleep(Duration::from_millis(200));
            queues = common::rabbit::queues_of(&name);
        }
        (queues, started.elapsed())
    });
    let seen = collect_replies(&ch, "acks_out", 136, Duration::from_secs(30)).await;
    assert_eq!(seen.len(), 136, "{seen:?}");
    assert!(seen.values().all(|&n| n == 1), "answered twice: {seen:?}");
    assert_eq!(seen.get("slow"), Some(&1));
    let (queues, when) = snapshot.await.unwrap();
    assert!(when < Duration::from_secs(8), "looked too late: {when:?}");
    assert_eq!(
        queues["agent_chaos_queue"],
        (0, 1),
        "{queues:?} after {when:?}"
    );
    assert_eq!(queues["agent_chaos_queue.dlq"], (15, 0), "{queues:?}");
    // Then the slow one is acked too.
    vh.wait_drained("agent_chaos_queue", 5).await;
    t.host.shutdown().await;
}

/// A host with the echo agent on one consumer channel, its acks gathering
/// for `gather`, with this window.
async fn one_echo_consumer(
    vh: &Vhost,
    gather: Duration,
    prefetch: u16,
    in_flight: usize,
) -> (AmqpBroker, TestHost) {
    let amqp = AmqpBroker::connect(AmqpConfig {
        ack_gather: gather,
        prefetch,
        ..AmqpConfig::new(vh.url())
    })
    .await
    .unwrap();
    let t = start_on(
        Arc::new(amqp.clone()),
        plugins_dir(&["echo"]),
        runtime_config(InstanceMode::Reuse),
        DispatchConfig {
            consumers_per_agent: 1,
            in_flight_per_consumer: in_flight,
            ..fast_dispatch()
        },
    )
    .await;
    (amqp, t)
}

/// At a trickle each delivery comes alone, yet their acks share frames: the
/// first to settle gathers the others (`ack_gather`) before the batch goes
/// out. Only the ack waits: every reply arrives, each once, and nothing is
/// left unacked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trickle_of_deliveries_is_acked_in_shared_frames() {
    let vh = Vhost::new();
    // A long gather, so that even a slow machine handles the trickle within it.
    let (amqp, t) = one_echo_consumer(
        &vh,
        Duration::from_secs(2),
        DEFAULT_PREFETCH,
        fast_dispatch().in_flight_per_consumer,
    )
    .await;
    let (_conn, ch) = vh.plain_client().await;
    Vhost::declare_queue(&ch, "trickle_out").await;
    // One at a time, apart: no two arrive together. Confirms are awaited
    // at the end: RabbitMQ confirms a message its consumer holds when it is
    // acked (or written to disk), so one by one they would wait for the
    // gather.
    let mut confirms = Vec::new();
    for i in 0..10 {
        let id = format!("drop-{i}");
        let body = br#"{"messages":[{"role":"user","content":"drop"}]}"#;
        confirms.push(publish_one(&ch, "echo", &id, "trickle_out", body).await);
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
    for c in futures::future::join_all(confirms).await {
        assert!(c.unwrap().is_ack());
    }
    let seen = collect_replies(&ch, "trickle_out", 10, Duration::from_secs(30)).await;
    assert_eq!(seen.len(), 10, "{seen:?}");
    assert!(seen.values().all(|&n| n == 1), "answered twice: {seen:?}");
    vh.wait_drained("agent_echo_queue", 10).await;
    let (acked, frames) = amqp.ack_counts();
    println!("{acked} deliveries acked in {frames} ack frames");
    assert_eq!(acked, 10);
    assert!(frames <= 3, "{frames} frames for a trickle of {acked}");
    t.host.shutdown().await;
}

/// A backlog keeps the channel's window busy, and then acks do not wait for
/// the gather. The first message comes alone, so its ack starts a gather of
/// 15 s while the window is nearly empty; the backlog that follows makes the
/// window busy, which ends that gather: all 200 replies arrive within 12 s
/// of the backlog (had the gather run its course, the window's first 8
/// deliveries would hold the channel for 15 s, and each batch begun low
/// after them again). The tail, once the window is no longer busy, gathers
/// as usual: shutdown waits for those acks.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_busy_channel_acks_without_waiting_for_the_gather() {
    let vh = Vhost::new();
    let (amqp, t) = one_echo_consumer(&vh, Duration::from_secs(15), 8, 8).await;
    let (_conn, ch) = vh.plain_client().await;
    Vhost::declare_queue(&ch, "busy_out").await;
    let body = br#"{"messages":[{"role":"user","content":"busy"}]}"#;
    let mut confirms = vec![publish_one(&ch, "echo", "busy-0", "busy_out", body).await];
    tokio::time::sleep(Duration::from_millis(300)).await;
    // Confirms are awaited at the end: RabbitMQ may confirm a message its
    // consumer holds only once it is acked.
    for i in 1..200 {
        let id = format!("busy-{i}");
        confirms.push(publish_one(&ch, "echo", &id, "busy_out", body).await);
    }
    let seen = collect_replies(&ch, "busy_out", 200, Duration::from_secs(12)).await;
    assert_eq!(seen.len(), 200, "the acks waited for the gather");
    assert!(seen.values().all(|&n| n == 1), "answered twice: {seen:?}");
    for c in futures::future::join_all(confirms).await {
        assert!(c.unwrap().is_ack());
    }
    t.host.shutdown().await;
    let (acked, _) = amqp.ack_counts();
    assert_eq!(acked, 200);
    vh.wait_drained("agent_echo_queue", 10).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_recovers_from_close_all_connections_and_loses_nothing() {
    let vh = Vhost::new();
    let amqp = AmqpBroker::connect(AmqpConfig::new(vh.url()))
        .await
        .unwrap();
    // One consumer with a small window: the host is still mid-run when the
    // 5,000 messages are all published and the cut comes (a faster host
    // could finish first, and there would be nothing to ride out).
    let dispatch = DispatchConfig {
        consumers_per_agent: 1,
        in_flight_per_consumer: 2,
        ..fast_dispatch()
    };
    let t = start_on(
        Arc::new(amqp.clone()),
        plugins_dir(&["agent_a", "agent_b"]),
        runtime_config(InstanceMode::Reuse),
        dispatch,
    )
    .await;
    let (conn, ch) = vh.plain_client().await;
    Vhost::declare_queue(&ch, "test_replies").await;
    let ids = publish_many(
        &ch,
        "agent_a",
        5_000,
        "test_replies",
        "I want to talk to agent B.",
    )
    .await;
    // Cut every connection while the host is mid-run.
    for _ in 0..200 {
        let q = ch
            .queue_declare(
                "test_replies".into(),
                QueueDeclareOptions {
                    passive: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await
            .unwrap();
        if q.message_count() >= 500 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let pending = ch
        .queue_declare(
            names::queue("agent_a").as_str().into(),
            QueueDeclareOptions {
                passive: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap()
        .message_count();
    assert!(
        pending > 0,
        "the host finished before the cut: nothing to ride out"
    );
    vh.close_all_connections();
    drop((ch, conn));
    // A fresh client collects the replies; the host must recover by itself.
    let (_conn, ch) = vh.plain_client().await;
    let seen = collect_replies(&ch, "test_replies", ids.len(), Duration::from_secs(240)).await;
    for id in &ids {
        assert!(seen.contains_key(id), "conversation {id} lost");
    }
    // Duplicates may only be redeliveries of the same id: no unknown ids.
    assert_eq!(seen.len(), ids.len());
    assert!(
        amqp.recoveries() > 0,
        "the cut happened mid-run and the host rode it out"
    );
    wait_until_empty(&t, &["agent_a", "agent_b"]).await;
    let stats = t.broker.stats().await.unwrap();
    assert!(
        stats
            .iter()
            .all(|s| s.consumer_count == 1 && s.dead_letter_count == 0),
        "{stats:?}"
    );
    t.host.shutdown().await;
}
