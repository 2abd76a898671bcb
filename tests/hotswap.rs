//! Hot swap: the plugins folder is live. Agents are added, replaced and
//! removed by writing files, under load, and nothing is lost.

mod common;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::rabbit::Vhost;
use common::*;
use futures::StreamExt as _;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, ConfirmSelectOptions,
    QueueDeclareOptions,
};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Connection, ConnectionProperties};
use warren::broker::Route;
use warren::dispatch::{Event, user_envelope};
use warren::runtime::InstanceMode;
use warren::status::AgentStatus;
use warren::watch::{PluginWatcher, watch};
use warren::{Broker, MemoryBroker, client};

/// The same component with a different content hash (a custom section
/// appended): a second version that behaves identically.
fn variant(name: &str, tag: &str) -> Vec<u8> {
    warren::bench::local::distinct_copy(&std::fs::read(guest(name)).unwrap(), tag)
}

fn watched(t: &TestHost) -> PluginWatcher {
    watch(t.host.clone(), t.path()).unwrap()
}

async fn agent_status(t: &TestHost, agent: &str) -> Option<AgentStatus> {
    let status = t.host.status().await.unwrap();
    status.agents.into_iter().find(|a| a.queue.agent == agent)
}

/// Polls until `check` holds (10 s at most).
async fn eventually<F: std::future::Future<Output = bool>>(
    what: &str,
    mut check: impl FnMut() -> F,
) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !check().await {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

fn version_of(t: &TestHost, agent: &str) -> Option<String> {
    t.host
        .registry()
        .get(agent)
        .map(|p| p.version().to_string())
}

async fn answered(t: &TestHost, agent: &str) -> String {
    let r = client::send(
        t.broker.as_ref(),
        agent,
        "ping",
        Default::default(),
        Some(Duration::from_secs(10)),
    )
    .await
    .unwrap_or_else(|e| panic!("{agent} did not answer: {e:#}"));
    r.reply.expect("a reply").text
}

/// Publishes `n` messages to `agent` without waiting for answers.
async fn publish(broker: &dyn Broker, agent: &str, n: usize) {
    for i in 0..n {
        let env = user_envelope(&format!("waiting {i}"), Default::default(), None);
        broker
            .publish(&Route::Agent(agent.into()), env)
            .await
            .unwrap();
    }
}

async fn count_handled(t: &mut TestHost, agent: &str, n: usize) {
    let mut seen = 0;
    while seen < n {
        t.wait_for(|e| matches!(e, Event::Handled { agent: a, .. } if a == agent).then_some(()))
            .await;
        seen += 1;
    }
}

async fn embedded(guests: &[&str]) -> TestHost {
    start_on(
        Arc::new(MemoryBroker::new()),
        plugins_dir(guests),
        runtime_config(InstanceMode::Reuse),
        fast_dispatch(),
    )
    .await
}

async fn rabbit(vh: &Vhost, guests: &[&str]) -> TestHost {
    let broker = vh.broker().await;
    start_on(
        broker,
        plugins_dir(guests),
        runtime_config(InstanceMode::Reuse),
        fast_dispatch(),
    )
    .await
}

/// Adding: a new file's agent starts and drains what waited in its queue.
async fn adding_a_file_starts_the_agent(mut t: TestHost) {
    let _w = watched(&t);
    t.broker.declare_agent("late").await.unwrap();
    publish(t.broker.as_ref(), "late", 50).await;
    assert!(t.host.registry().get("late").is_none());
    std::fs::copy(guest("echo"), t.path().join("late.wasm")).unwrap();
    count_handled(&mut t, "late", 50).await;
    assert_eq!(
        agent_status(&t, "late").await.unwrap().queue.message_count,
        0
    );
}

/// Removing: consumers stop, the queue keeps its messages; putting the file
/// back resumes.
async fn removing_a_file_stops_the_agent_and_keeps_its_queue(mut t: TestHost) {
    let _w = watched(&t);
    answered(&t, "echo").await;
    std::fs::remove_file(t.path().join("echo.wasm")).unwrap();
    eventually("echo's consumers stop", || async {
        agent_status(&t, "echo").await.unwrap().queue.consumer_count == 0
    })
    .await;
    assert!(t.host.registry().get("echo").is_none());
    publish(t.broker.as_ref(), "echo", 20).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let echo = agent_status(&t, "echo").await.unwrap();
    assert_eq!(
        echo.queue.message_count, 20,
        "the queue keeps its messages: {echo:?}"
    );
    assert_eq!(echo.queue.status, "not loaded");
    std::fs::copy(guest("echo"), t.path().join("echo.wasm")).unwrap();
    count_handled(&mut t, "echo", 20).await;
    assert_eq!(
        t.host
            .counters()
            .removals
            .load(std::sync::atomic::Ordering::Relaxed),
        1
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn adding_a_file_starts_the_agent_embedded() {
    adding_a_file_starts_the_agent(embedded(&["echo"]).await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn adding_a_file_starts_the_agent_rabbitmq() {
    let vh = Vhost::new();
    adding_a_file_starts_the_agent(rabbit(&vh, &["echo"]).await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn removing_a_file_stops_the_agent_and_keeps_its_queue_embedded() {
    removing_a_file_stops_the_agent_and_keeps_its_queue(embedded(&["echo"]).await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn removing_a_file_stops_the_agent_and_keeps_its_queue_rabbitmq() {
    let vh = Vhost::new();
    removing_a_file_stops_the_agent_and_keeps_its_queue(rabbit(&vh, &["echo"]).await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_file_over_a_working_agent_leaves_the_old_version_serving() {
    let t = embedded(&["echo"]).await;
    let _w = watched(&t);
    let good = version_of(&t, "echo").unwrap();
    let echo_bytes = std::fs::read(guest("echo")).unwrap();
    let bad: [(&str, Vec<u8>, &str); 4] = [
        (
            "truncated",
            echo_bytes[..echo_bytes.len() / 2].to_vec(),
            "does not compile",
        ),
        (
            "junk",
            b"definitely not wasm".to_vec(),
            "not a WebAssembly file",
        ),
        (
            "core module",
            b"\0asm\x01\x00\x00\x00".to_vec(),
            "a core WebAssembly module",
        ),
        (
            "wrong world",
            b"\0asm\x0d\x00\x01\x00".to_vec(),
            "does not implement world warren:agent/agent@0.2.0",
        ),
    ];
    for (what, bytes, reason) in bad {
        std::fs::write(t.path().join("echo.wasm"), &bytes).unwrap();
        eventually(&format!("the {what} file is refused"), || async {
            agent_status(&t, "echo")
                .await
                .and_then(|a| a.error)
                .is_some_and(|e| e.contains(reason))
        })
        .await;
        let echo = agent_status(&t, "echo").await.unwrap();
        assert_eq!(echo.version.as_deref(), Some(good.as_str()), "{what}");
        assert_eq!(echo.queue.status, "serving; new file refused", "{what}");
        assert!(answered(&t, "echo").await.contains("ping"), "{what}");
        // Back to a good file (an identical one) before the next bad one.
        std::fs::write(t.path().join("echo.wasm"), &echo_bytes).unwrap();
        eventually("the good file clears the error", || async {
            agent_status(&t, "echo").await.unwrap().error.is_none()
        })
        .await;
    }
    // An identical file is no swap at all.
    assert_eq!(
        t.host
            .counters()
            .swaps
            .load(std::sync::atomic::Ordering::Relaxed),
        0
    );
    assert_eq!(
        t.host
            .counters()
            .rejections
            .load(std::sync::atomic::Ordering::Relaxed),
        4
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rollback_guard_swaps_back_a_version_that_rejects_everything() {
    let t = embedded(&["echo"]).await;
    let _w = watched(&t);
    let good = version_of(&t, "echo").unwrap();
    std::fs::copy(guest("grumpy"), t.path().join("echo.wasm")).unwrap();
    eventually("the new version is swapped in", || async {
        version_of(&t, "echo").as_deref() != Some(good.as_str())
    })
    .await;
    let bad = version_of(&t, "echo").unwrap();
    publish(t.broker.as_ref(), "echo", 40).await;
    eventually("the guard rolls back", || async {
        version_of(&t, "echo").as_deref() == Some(good.as_str())
    })
    .await;
    let echo = agent_status(&t, "echo").await.unwrap();
    let error = echo.error.unwrap();
    assert!(
        error.contains(&format!(
            "rolled back to version {good}: version {bad} failed"
        )),
        "{error}"
    );
    assert_eq!(
        t.host
            .counters()
            .rollbacks
            .load(std::sync::atomic::Ordering::Relaxed),
        1
    );
    // Ready: the previous version serves; the rollback is a problem listed,
    // not a reason to take the host out of rotation (docs/operations.md).
    let r = t.host.readiness();
    assert!(r.ready, "{r:?}");
    assert!(
        r.problems
            .iter()
            .any(|p| p.contains("`echo` (still serving)")),
        "{r:?}"
    );
    // The old version serves again; what the bad one rejected is in the
    // dead-letter queue with its reason, nothing vanished.
    assert!(answered(&t, "echo").await.contains("ping"));
    let letters = t.broker.dead_letters("echo").await.unwrap();
    assert!(!letters.is_empty());
    assert!(
        letters
            .iter()
            .all(|l| l.reason.contains("grumpy rejects message"))
    );
    let handled = t
        .host
        .registry()
        .get("echo")
        .unwrap()
        .stats()
        .ok
        .load(std::sync::atomic::Ordering::Relaxed);
    let echo = agent_status(&t, "echo").await.unwrap();
    assert_eq!(
        letters.len() as u64 + handled,
        41,
        "every message was rejected by the bad version or answered by the good one: {echo:?}"
    );
    // The same bad file touched again is not loaded again.
    std::fs::copy(guest("grumpy"), t.path().join("echo.wasm")).unwrap();
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(version_of(&t, "echo").as_deref(), Some(good.as_str()));
    // The bad version's last error is shown until a newer version serves.
    assert!(agent_status(&t, "echo").await.unwrap().last_error.is_some());
    std::fs::copy(guest("chaos"), t.path().join("echo.wasm")).unwrap();
    eventually("a third version serves", || async {
        ![Some(good.as_str()), Some(bad.as_str())].contains(&version_of(&t, "echo").as_deref())
    })
    .await;
    let echo = agent_status(&t, "echo").await.unwrap();
    assert_eq!(echo.last_error, None, "{echo:?}");
}

/// Under a steady load through RabbitMQ, the agent's file is replaced ten
/// times, alternating two versions: every message is answered exactly once,
/// each answer by one of the two versions, nothing lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replacing_an_agent_under_load_loses_nothing() {
    const MESSAGES: usize = 20_000;
    const RATE: usize = 2_500; // per second
    const SWAPS: usize = 10;
    let vh = Vhost::new();
    let t = rabbit(&vh, &["echo"]).await;
    let _w = watched(&t);
    let v1 = std::fs::read(guest("echo")).unwrap();
    let v2 = variant("echo", "v2");
    let versions = [
        version_of(&t, "echo").unwrap(),
        warren::runtime::content_version(&v2),
    ];

    let conn = Connection::connect(&vh.url(), ConnectionProperties::default())
        .await
        .unwrap();
    let ch = conn.create_channel().await.unwrap();
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    let replies = "hotswap_replies";
    ch.queue_declare(
        replies.into(),
        QueueDeclareOptions::default(),
        FieldTable::default(),
    )
    .await
    .unwrap();
    let mut consumer = ch
        .basic_consume(
            replies.into(),
            "hotswap-test".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();

    // The swapper: every 600 ms, the other version's bytes over echo.wasm
    // (a plain write: truncate, then write, as `cp` does).
    let path = t.path().join("echo.wasm");
    let swapper = tokio::spawn(async move {
        for i in 0..SWAPS {
            tokio::time::sleep(Duration::from_millis(600)).await;
            let bytes = if i % 2 == 0 { &v2 } else { &v1 };
            std::fs::write(&path, bytes).unwrap();
        }
    });

    // The load: MESSAGES at RATE, paced in 10 ms steps, confirms pipelined.
    let started = Instant::now();
    let publisher = {
        let ch = ch.clone();
        tokio::spawn(async move {
            let per_step = RATE / 100;
            let mut confirms = Vec::with_capacity(MESSAGES);
            for i in 0..MESSAGES {
                if i % per_step == 0 {
                    let due = started + Duration::from_millis((i / per_step) as u64 * 10);
                    tokio::time::sleep_until(due.into()).await;
                }
                let id = format!("swap-{i}");
                let props = BasicProperties::default()
                    .with_message_id(id.as_str().into())
                    .with_reply_to(replies.into())
                    .with_delivery_mode(2);
                let body = format!(r#"{{"messages":[{{"role":"user","content":"{id}"}}]}}"#);
                confirms.push(
                    ch.basic_publish(
                        "agent_exchange".into(),
                        "agent.echo".into(),
                        BasicPublishOptions::default(),
                        body.as_bytes(),
                        props,
                    )
                    .await
                    .unwrap(),
                );
            }
            for c in futures::future::join_all(confirms).await {
                assert!(c.unwrap().is_ack());
            }
        })
    };

    let mut seen: HashMap<String, usize> = HashMap::new();
    let mut by_version: HashMap<String, usize> = HashMap::new();
    let deadline = Instant::now() + Duration::from_secs(120);
    while seen.len() < MESSAGES {
        let d = tokio::time::timeout_at(deadline.into(), consumer.next())
            .await
            .unwrap_or_else(|_| panic!("only {} of {MESSAGES} answered", seen.len()))
            .unwrap()
            .unwrap();
        let version = match warren::broker::amqp::origin(&d.properties).version {
            Some(v) => v,
            None => panic!("no version: {:?}", d.properties),
        };
        assert!(
            versions.contains(&version),
            "answered by unknown version {version}"
        );
        *by_version.entry(version).or_default() += 1;
        let id = d.properties.correlation_id().clone().unwrap().to_string();
        *seen.entry(id).or_default() += 1;
        d.ack(BasicAckOptions::default()).await.unwrap();
    }
    let elapsed = started.elapsed();
    publisher.await.unwrap();
    swapper.await.unwrap();
    let rate = MESSAGES as f64 / elapsed.as_secs_f64();
    let dups: usize = seen.values().map(|n| n - 1).sum();
    println!(
        "{MESSAGES} messages in {elapsed:?} ({rate:.0}/s) across {SWAPS} swaps: by version {by_version:?}, {dups} duplicates"
    );
    for i in 0..MESSAGES {
        assert!(seen.contains_key(&format!("swap-{i}")), "swap-{i} was lost");
    }
    assert_eq!(dups, 0, "every message answered exactly once");
    assert!(
        by_version.len() == 2,
        "both versions served: {by_version:?}"
    );
    assert!(
        rate >= 2_000.0,
        "the load ran at {rate:.0}/s, below the 2,000/s asked for"
    );
    let swaps = t
        .host
        .counters()
        .swaps
        .load(std::sync::atomic::Ordering::Relaxed);
    assert_eq!(swaps, SWAPS as u64, "each write was one swap");
    assert_eq!(
        t.host
            .counters()
            .rollbacks
            .load(std::sync::atomic::Ordering::Relaxed),
        0
    );
}

/// A swap is visible before it is live: a `compiling` line at once, the
/// agent shown as loading in status, and a replay waits for it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pending_swap_is_visible_and_a_replay_waits_for_it() {
    common::logs::capture("info");
    let t = embedded(&["echo"]).await;
    let _w = watched(&t);
    let good = version_of(&t, "echo").unwrap();
    std::fs::copy(guest("grumpy"), t.path().join("echo.wasm")).unwrap();
    eventually("the new version is swapped in", || async {
        version_of(&t, "echo").as_deref() != Some(good.as_str())
    })
    .await;
    let bad = version_of(&t, "echo").unwrap();
    let logs = common::logs::text();
    assert!(
        logs.contains(&format!(
            "compiling echo (new version {bad}, version {good} keeps serving meanwhile)"
        )),
        "{logs}"
    );
    // While a version compiles, status says so.
    let registry = t.host.registry().clone();
    let loading = registry.start_loading("echo", "0123456789ab");
    let echo = agent_status(&t, "echo").await.unwrap();
    assert_eq!(echo.queue.status, "serving; loading 0123456789ab");
    let brand_new = registry.start_loading("newcomer", "ba9876543210");
    let status = t.host.status().await.unwrap();
    let row = status
        .agents
        .iter()
        .find(|a| a.queue.agent == "newcomer")
        .unwrap();
    assert_eq!(row.queue.status, "loading ba9876543210");
    drop(brand_new);
    // A replay (through the control socket) waits until the swap is done.
    let waiter = {
        let registry = registry.clone();
        tokio::spawn(async move { registry.wait_loaded("echo", Duration::from_secs(10)).await })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(!waiter.is_finished(), "waits while the swap is pending");
    drop(loading);
    assert!(waiter.await.unwrap(), "it waited, and ended with the swap");
    assert_eq!(
        agent_status(&t, "echo").await.unwrap().queue.status,
        "running"
    );
}
