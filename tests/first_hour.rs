//! What a new author or operator meets first: `send --wait` ends as soon as
//! its conversation fails, and says where to look.

mod common;

use std::time::{Duration, Instant};

use common::rabbit::Vhost;
use common::*;
use warren::runtime::InstanceMode;
use warren::{Broker, client};

async fn fails_fast(broker: &dyn Broker) {
    for (text, agent, says) in [
        (
            "reject:the ticket is closed",
            "chaos",
            "rejected by agent: the ticket is closed",
        ),
        ("to:ghost", "chaos", "no such agent `ghost`"),
        ("to:grumpy", "grumpy", "grumpy rejects message"),
    ] {
        let started = Instant::now();
        let e = client::send(
            broker,
            "chaos",
            text,
            Default::default(),
            Some(Duration::from_secs(30)),
        )
        .await
        .expect_err("the conversation failed");
        let e = format!("{e:#}");
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "{text}: {:?}",
            started.elapsed()
        );
        assert!(
            e.contains(&format!("`{agent}` dead-lettered message")),
            "{e}"
        );
        assert!(e.contains(says), "{e}");
        assert!(
            e.contains(&format!("warren dlq show {agent} --id m-")),
            "{e}"
        );
    }
    // A conversation that succeeds still answers.
    assert_eq!(answer(broker, "chaos", "sleep:10", 20).await, "slept 10 ms");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn send_wait_ends_at_the_first_dead_letter_embedded() {
    let t = start_with(
        &["chaos", "grumpy"],
        runtime_config(InstanceMode::Reuse),
        fast_dispatch(),
    )
    .await;
    fails_fast(t.broker.as_ref()).await;
    t.host.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn send_wait_ends_at_the_first_dead_letter_rabbitmq() {
    let vh = Vhost::new();
    let t = start_on(
        vh.broker().await,
        plugins_dir(&["chaos", "grumpy"]),
        runtime_config(InstanceMode::Reuse),
        fast_dispatch(),
    )
    .await;
    fails_fast(t.broker.as_ref()).await;
    t.host.shutdown().await;
}
