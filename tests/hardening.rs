//! Hardening: bad input, odd headers, broken topology and operator
//! mistakes. Each test here failed before its fix (see the issue's list).

mod common;

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use common::rabbit::Vhost;
use common::*;
use futures::StreamExt as _;
use lapin::BasicProperties;
use lapin::options::{BasicPublishOptions, QueueDeleteOptions};
use lapin::types::{AMQPValue, FieldArray, FieldTable};
use warren::broker::amqp::{AmqpBroker, AmqpConfig};
use warren::broker::{Envelope, Route};
use warren::dispatch::{DispatchConfig, Event, derive_id, user_envelope};
use warren::dlq::Op;
use warren::runtime::InstanceMode;
use warren::{Broker, MemoryBroker, client};

/// `fast_dispatch`, with bodies up to 1 MiB.
fn dispatch() -> DispatchConfig {
    DispatchConfig {
        max_message_bytes: 1 << 20,
        ..fast_dispatch()
    }
}

async fn amqp_host(vh: &Vhost, dir: tempfile::TempDir) -> TestHost {
    let broker: Arc<dyn Broker> = Arc::new(
        // A small window, so that "more than the window" is a few dozen
        // messages (e.g. a stall after consumers × prefetch).
        AmqpBroker::connect(AmqpConfig {
            prefetch: 8,
            ..AmqpConfig::new(vh.url())
        })
        .await
        .unwrap(),
    );
    start_on(broker, dir, runtime_config(InstanceMode::Reuse), dispatch()).await
}

async fn embedded_host(dir: tempfile::TempDir) -> TestHost {
    start_in(dir, runtime_config(InstanceMode::Reuse), dispatch()).await
}

/// A plugins folder with `name.wasm` copied from each `(name, guest)`.
fn folder(files: &[(&str, &str)]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for (name, g) in files {
        std::fs::copy(guest(g), dir.path().join(format!("{name}.wasm"))).unwrap();
    }
    dir
}

async fn dead_count(broker: &dyn Broker, agent: &str) -> u64 {
    // Reading is refused while a connection recovers: look again.
    let stats = loop {
        match broker.stats().await {
            Ok(stats) => break stats,
            Err(e) => {
                eprintln!("stats: {e:#}; again");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    };
    stats
        .iter()
        .find(|s| s.agent == agent)
        .map(|s| s.dead_letter_count)
        .unwrap_or(0)
}

/// Waits (up to `secs`) until `agent` has `n` dead letters.
async fn wait_dead(broker: &dyn Broker, agent: &str, n: u64, secs: u64) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    loop {
        let now = dead_count(broker, agent).await;
        if now == n {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{agent}: {now} dead letters, expected {n}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn publish_raw(
    ch: &lapin::Channel,
    exchange: &str,
    routing_key: &str,
    mandatory: bool,
    props: BasicProperties,
    body: &[u8],
) {
    let confirm = ch
        .basic_publish(
            exchange.into(),
            routing_key.into(),
            BasicPublishOptions {
                mandatory,
                ..Default::default()
            },
            body,
            props.with_delivery_mode(2),
        )
        .await
        .unwrap()
        .await
        .unwrap();
    assert!(confirm.is_ack(), "{confirm:?}");
}

async fn declare_queue(ch: &lapin::Channel, name: &str) {
    Vhost::declare_queue(ch, name).await
}

// ---- 1. A replay of a still-broken agent ends ----

async fn replay_of_a_still_broken_agent_ends(t: TestHost) {
    let mut ids = Vec::new();
    for i in 0..20 {
        let env = user_envelope(&format!("job {i}"), Default::default(), None);
        ids.push(env.id.clone());
        t.host.publish("worker", env).await.unwrap();
    }
    wait_dead(t.broker.as_ref(), "worker", 20, 30).await;
    let replay = Op::Replay {
        id: None,
        wait: Some(20.0),
    };
    let answer = tokio::time::timeout(
        Duration::from_secs(60),
        warren::dlq::run(t.broker.as_ref(), "worker", replay),
    )
    .await
    .expect("a replay of a still-broken agent ends")
    .unwrap();
    assert_eq!(answer.moved, 20);
    assert_eq!(answer.still_failing, Some(20));
    assert!(
        answer
            .text()
            .contains("replayed 20 dead letters to agent `worker`, still failing 20"),
        "{}",
        answer.text()
    );
    // Each was replayed exactly once, and nothing more is going on.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let letters = t.broker.dead_letters("worker").await.unwrap();
    assert_eq!(letters.len(), 20);
    for l in &letters {
        assert_eq!(
            l.envelope.headers["x-warren-replays"], "1",
            "{}",
            l.envelope.id
        );
    }
    assert_eq!(
        letters
            .iter()
            .map(|l| l.envelope.id.clone())
            .collect::<HashSet<_>>(),
        ids.iter().cloned().collect()
    );
    // One by id: replayed once.
    let one = Op::Replay {
        id: Some(ids[0].clone()),
        wait: Some(20.0),
    };
    let answer = tokio::time::timeout(
        Duration::from_secs(60),
        warren::dlq::run(t.broker.as_ref(), "worker", one),
    )
    .await
    .expect("a replay by id ends")
    .unwrap();
    assert_eq!((answer.moved, answer.still_failing), (1, Some(1)));
    let again = t.broker.dead_letters("worker").await.unwrap();
    let first = again.iter().find(|l| l.envelope.id == ids[0]).unwrap();
    assert_eq!(first.envelope.headers["x-warren-replays"], "2");
    assert_eq!(again.len(), 20);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_of_a_still_broken_agent_ends_embedded() {
    replay_of_a_still_broken_agent_ends(embedded_host(folder(&[("worker", "grumpy")])).await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_of_a_still_broken_agent_ends_rabbitmq() {
    let vh = Vhost::new();
    replay_of_a_still_broken_agent_ends(amqp_host(&vh, folder(&[("worker", "grumpy")])).await)
        .await;
}

// ---- 2 and 14. Deleted dead-letter and delay queues ----

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_dead_letter_queue_is_declared_again_and_nothing_stalls() {
    let vh = Vhost::new();
    let t = amqp_host(&vh, folder(&[("worker", "grumpy"), ("echo", "echo")])).await;
    let (_conn, ch) = vh.plain_client().await;
    ch.queue_delete(
        "agent_worker_queue.dlq".into(),
        QueueDeleteOptions::default(),
    )
    .await
    .unwrap();
    // More bad messages than consumers × prefetch (2 × 8): with the DLQ
    // gone and no fix, the agent stalls after 16.
    for i in 0..40 {
        let env = user_envelope(&format!("bad {i}"), Default::default(), None);
        t.host.publish("worker", env).await.unwrap();
    }
    wait_dead(t.broker.as_ref(), "worker", 40, 30).await;
    let queues = vh.queues();
    assert_eq!(queues["agent_worker_queue"], (0, 0), "{queues:?}");
    assert_eq!(queues["agent_worker_queue.dlq"], (40, 0), "{queues:?}");
    // Good messages of other agents were never held up.
    assert_eq!(
        answer(t.broker.as_ref(), "echo", "still here", 20).await,
        "still here"
    );
    t.host.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_delay_queue_is_declared_again_and_nothing_is_held() {
    let vh = Vhost::new();
    let t = amqp_host(&vh, folder(&[("chaos", "chaos")])).await;
    let ask = |text: &'static str| {
        let broker = t.broker.clone();
        async move { answer(broker.as_ref(), "chaos", text, 20).await }
    };
    assert_eq!(ask("flaky:2").await, "ok on attempt 2");
    let (_conn, ch) = vh.plain_client().await;
    let delay_queues: Vec<String> = vh
        .queues()
        .into_keys()
        .filter(|q| q.starts_with("agent_chaos_queue.retry."))
        .collect();
    assert!(!delay_queues.is_empty());
    for q in &delay_queues {
        ch.queue_delete(q.as_str().into(), QueueDeleteOptions::default())
            .await
            .unwrap();
    }
    let answers = futures::future::join_all((0..20).map(|_| ask("flaky:2"))).await;
    assert!(
        answers.iter().all(|a| a == "ok on attempt 2"),
        "{answers:?}"
    );
    let queues = vh.queues();
    assert_eq!(queues["agent_chaos_queue"], (0, 0), "{queues:?}");
    assert!(
        queues
            .keys()
            .any(|q| q.starts_with("agent_chaos_queue.retry.")),
        "the delay queue was declared again: {queues:?}"
    );
    t.host.shutdown().await;
}

// ---- 11. A long failure reason ----

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_200kb_reason_reaches_the_dead_letter_queue_without_a_connection_reset() {
    let vh = Vhost::new();
    let broker = Arc::new(
        AmqpBroker::connect(AmqpConfig::new(vh.url()))
            .await
            .unwrap(),
    );
    let t = start_on(
        broker.clone(),
        folder(&[("chaos", "chaos")]),
        runtime_config(InstanceMode::Reuse),
        dispatch(),
    )
    .await;
    let long = "x".repeat(200_000);
    let mut ids = Vec::new();
    for verb in ["retry", "reject"] {
        let env = user_envelope(&format!("{verb}:{long}"), Default::default(), None);
        ids.push(env.id.clone());
        t.host.publish("chaos", env).await.unwrap();
    }
    wait_dead(t.broker.as_ref(), "chaos", 2, 30).await;
    for l in t.broker.dead_letters("chaos").await.unwrap() {
        assert!(l.reason.len() < 5_000, "{}", l.reason.len());
        assert!(
            l.reason.contains("[cut: "),
            "{}",
            &l.reason[l.reason.len() - 80..]
        );
    }
    assert_eq!(broker.recoveries(), 0, "the connection was reset");
    assert_eq!(
        answer(t.broker.as_ref(), "chaos", "still fine", 20).await,
        "attempt 1 hops 0"
    );
    t.host.shutdown().await;
}

// ---- 12. A replayed undeliverable output goes where it was going ----

async fn replayed_output_reaches_its_recipient(mut t: TestHost) {
    let env = user_envelope("to:echo", Default::default(), None);
    let id = env.id.clone();
    t.host.publish("chaos", env).await.unwrap();
    wait_dead(t.broker.as_ref(), "chaos", 1, 30).await;
    let letter = t.broker.dead_letters("chaos").await.unwrap().remove(0);
    assert_eq!(letter.envelope.id, derive_id(&id, 0));
    assert!(
        letter.reason.contains("no such agent `echo`"),
        "{}",
        letter.reason
    );
    // The recipient arrives; the replay goes to it, not back to chaos.
    let file = t.path().join("echo.wasm");
    std::fs::copy(guest("echo"), &file).unwrap();
    t.host.load_plugin(&file).await.unwrap();
    let replay = Op::Replay {
        id: None,
        wait: None,
    };
    let answer = warren::dlq::run(t.broker.as_ref(), "chaos", replay)
        .await
        .unwrap();
    assert_eq!(answer.moved, 1);
    let handled_by = t
        .wait_for(|e| match e {
            Event::Handled { agent, id: i, .. } if *i == derive_id(&id, 0) => Some(agent.clone()),
            _ => None,
        })
        .await;
    assert_eq!(handled_by, "echo");
    assert_eq!(dead_count(t.broker.as_ref(), "chaos").await, 0);
    t.host.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replayed_undeliverable_output_reaches_its_recipient_embedded() {
    replayed_output_reaches_its_recipient(embedded_host(folder(&[("chaos", "chaos")])).await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replayed_undeliverable_output_reaches_its_recipient_rabbitmq() {
    let vh = Vhost::new();
    replayed_output_reaches_its_recipient(amqp_host(&vh, folder(&[("chaos", "chaos")])).await)
        .await;
}

// ---- 13. A connection close while dead-lettering ----

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_close_during_a_dead_letter_leaves_exactly_one_entry() {
    let vh = Vhost::new();
    let t = amqp_host(&vh, folder(&[("chaos", "chaos")])).await;
    let (_conn, ch) = vh.plain_client().await;
    // Its answer goes to a queue that does not exist: dead-lettered after a
    // 2.5 s call, while the connection is closed under it.
    let props = BasicProperties::default()
        .with_message_id("m-close-1".into())
        .with_reply_to("no_such_reply_queue".into());
    let body = br#"{"messages":[{"role":"user","content":"sleep:2500"}]}"#;
    publish_raw(&ch, "agent_exchange", "agent.chaos", true, props, body).await;
    tokio::time::sleep(Duration::from_millis(800)).await;
    vh.close_all_connections();
    wait_dead(t.broker.as_ref(), "chaos", 1, 30).await;
    // The redelivery (the close requeued the message) must not add another.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let letters = t.broker.dead_letters("chaos").await.unwrap();
    assert_eq!(
        letters.len(),
        1,
        "{:?}",
        letters.iter().map(|l| &l.reason).collect::<Vec<_>>()
    );
    assert_eq!(letters[0].envelope.id, derive_id("m-close-1", 0));
    assert_eq!(vh.queues()["agent_chaos_queue"], (0, 0));
    t.host.shutdown().await;
}

// ---- 6. Odd counts in headers ----

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreadable_hop_count_is_over_the_limit_and_an_outside_attempt_count_skips_no_retry() {
    let vh = Vhost::new();
    let t = amqp_host(&vh, folder(&[("chaos", "chaos")])).await;
    let (_conn, ch) = vh.plain_client().await;
    declare_queue(&ch, "odd_replies").await;
    let odd = [
        AMQPValue::Boolean(true),
        AMQPValue::LongLongInt(1 << 40),
        AMQPValue::LongLongInt(-5),
        AMQPValue::LongString("many".into()),
        AMQPValue::FieldArray(FieldArray::from(vec![AMQPValue::LongInt(0)])),
        AMQPValue::Double(0.0),
    ];
    let body = br#"{"messages":[{"role":"user","content":"hello"}]}"#;
    for (i, v) in odd.iter().enumerate() {
        let mut headers = FieldTable::default();
        headers.insert("x-warren-hops".into(), v.clone());
        let props = BasicProperties::default()
            .with_message_id(format!("hops-{i}").as_str().into())
            .with_reply_to("odd_replies".into())
            .with_headers(headers);
        publish_raw(&ch, "agent_exchange", "agent.chaos", true, props, body).await;
    }
    wait_dead(t.broker.as_ref(), "chaos", odd.len() as u64, 30).await;
    for l in t.broker.dead_letters("chaos").await.unwrap() {
        assert!(
            l.reason.starts_with("bad header: x-warren-hops"),
            "{}",
            l.reason
        );
    }
    // An attempt count of 99 on a first delivery: still every retry.
    let mut headers = FieldTable::default();
    headers.insert("x-warren-attempt".into(), AMQPValue::LongLongInt(99));
    let props = BasicProperties::default()
        .with_message_id("attempt-99".into())
        .with_reply_to("odd_replies".into())
        .with_headers(headers);
    let body = br#"{"messages":[{"role":"user","content":"flaky:3"}]}"#;
    publish_raw(&ch, "agent_exchange", "agent.chaos", true, props, body).await;
    let mut replies = ch
        .basic_consume(
            "odd_replies".into(),
            "".into(),
            Default::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    let d = tokio::time::timeout(Duration::from_secs(20), replies.next())
        .await
        .expect("a reply")
        .expect("a delivery")
        .unwrap();
    let text = String::from_utf8_lossy(&d.data).into_owned();
    assert!(text.contains("ok on attempt 3"), "{text}");
    let cid = d.properties.correlation_id().clone().unwrap();
    assert_eq!(cid.as_str(), "attempt-99");
    d.ack(Default::default()).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(vh.queues()["odd_replies"], (0, 0), "only one reply");
    t.host.shutdown().await;
}

// ---- 3. Two files for one agent ----

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_file_for_the_same_agent_is_refused_and_the_first_keeps_serving() {
    // `Echo.wasm` sorts before `echo.wasm`: it serves, whatever the
    // directory order.
    let t = embedded_host(folder(&[("Echo", "chaos"), ("echo", "echo")])).await;
    let serving = || {
        let pool = t.host.registry().get("echo").expect("echo is served");
        pool.module()
            .source
            .file_name()
            .unwrap()
            .to_string_lossy()
            .into_owned()
    };
    assert_eq!(serving(), "Echo.wasm");
    let errors = t.host.registry().errors();
    assert_eq!(errors.len(), 1);
    assert!(
        errors[0]
            .reason
            .contains("two plugin files for agent `echo`")
            && errors[0].reason.contains("Echo.wasm")
            && errors[0].reason.contains("echo.wasm"),
        "{}",
        errors[0].reason
    );
    let status = t.host.status().await.unwrap();
    assert_eq!(
        status
            .agents
            .iter()
            .filter(|a| a.queue.agent == "echo")
            .count(),
        1
    );
    // Removing the refused file changes nothing.
    let refused = t.path().join("echo.wasm");
    std::fs::remove_file(&refused).unwrap();
    t.host.remove_plugin(&refused).await;
    assert_eq!(serving(), "Echo.wasm");
    assert!(t.host.registry().errors().is_empty());
    // Removing the serving file while the other is there: the other serves.
    std::fs::copy(guest("echo"), &refused).unwrap();
    assert!(t.host.load_plugin(&refused).await.is_err());
    let first = t.path().join("Echo.wasm");
    std::fs::remove_file(&first).unwrap();
    t.host.remove_plugin(&first).await;
    assert_eq!(serving(), "echo.wasm");
    t.host.shutdown().await;
}

// ---- 15. The embedded broker's unclaimed replies are bounded ----

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_embedded_brokers_unclaimed_replies_are_bounded() {
    let broker = MemoryBroker::new();
    broker
        .declare_queue(warren::dispatch::REPLIES_QUEUE)
        .await
        .unwrap();
    let route = Route::Queue(warren::dispatch::REPLIES_QUEUE.into());
    for i in 0..100 {
        let env = Envelope {
            id: format!("r-{i}"),
            body: vec![b'x'; 900_000],
            ..Default::default()
        };
        broker.publish(&route, env).await.unwrap();
    }
    let r = broker.unclaimed_replies().unwrap();
    assert!(r.bytes <= r.limit_bytes, "{r:?}");
    assert_eq!(r.queued + r.dropped, 100, "{r:?}");
    assert!(r.dropped >= 90, "{r:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_shows_the_unclaimed_replies() {
    let t = embedded_host(folder(&[("echo", "echo")])).await;
    for _ in 0..3 {
        client::send(t.broker.as_ref(), "echo", "hi", Default::default(), None)
            .await
            .unwrap();
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let status = t.host.status().await.unwrap();
        let r = status.unclaimed_replies.clone().unwrap();
        if r.queued == 3 {
            assert!(
                status.table().contains("unclaimed replies: 3 queued"),
                "{}",
                status.table()
            );
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "{r:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    t.host.shutdown().await;
}

// ---- 4, 7, 8, 10. The command line ----

fn warren_cli(args: &[&str]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_warren"))
        .args(args)
        .env_remove("WARREN_AMQP_URL")
        .env_remove("RUST_LOG")
        .env("WARREN_CACHE_DIR", cache_dir())
        .output()
        .unwrap()
}

fn all_output(out: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[test]
fn no_verb_prints_a_password_with_reserved_characters() {
    let empty = tempfile::tempdir().unwrap();
    let plugins = empty.path().to_str().unwrap();
    for password in ["Se/cret9", "Se/cr@t9", "pa?ss#w9", "Se:cr/et9"] {
        let url = format!("amqp://probe:{password}@127.0.0.1:5672/%2f");
        let verbs: [Vec<&str>; 6] = [
            vec!["config", "--amqp-url", &url],
            vec!["status", "--amqp-url", &url, "--agent", "echo"],
            vec!["send", "echo", "hi", "--amqp-url", &url],
            vec!["dlq", "list", "echo", "--amqp-url", &url],
            vec!["dlq", "purge", "echo", "--all", "--amqp-url", &url],
            vec![
                "run",
                "--amqp-url",
                &url,
                "--plugins",
                plugins,
                "--no-http",
                "--no-watch",
            ],
        ];
        for args in verbs {
            let out = warren_cli(&args);
            let text = all_output(&out);
            let secret = password.split_once('/').map(|(_, b)| b).unwrap_or(password);
            assert!(
                !text.contains(password) && !text.contains(secret),
                "warren {} printed the password: {text}",
                args[0]
            );
            if args[0] == "config" {
                assert!(text.contains("amqp://***@127.0.0.1:5672/%2f"), "{text}");
            } else {
                assert!(!out.status.success(), "{args:?}: {text}");
            }
        }
    }
}

#[test]
fn bad_timeouts_and_counts_are_refused_when_parsed() {
    for timeout in ["-1", "inf", "NaN", "1e30", "0"] {
        let flag = format!("--timeout={timeout}");
        let out = warren_cli(&["send", "echo", "hi", "--wait", &flag]);
        let text = all_output(&out);
        assert_eq!(out.status.code(), Some(2), "--timeout {timeout}: {text}");
        assert!(
            text.contains("--timeout") && !text.contains("panicked"),
            "{text}"
        );
    }
    for flag in [
        "--consumers=0",
        "--in-flight=0",
        "--prefetch=0",
        "--max-attempts=0",
    ] {
        let out = warren_cli(&["config", flag]);
        let text = all_output(&out);
        assert_eq!(out.status.code(), Some(2), "{flag}: {text}");
        assert!(text.contains(flag.split('=').next().unwrap()), "{text}");
    }
}

#[test]
fn a_bad_value_in_the_config_file_names_the_file_and_the_key() {
    let dir = tempfile::tempdir().unwrap();
    for (line, key) in [
        ("consumers = -5", "consumers"),
        ("deadline_ms = \"soon\"", "deadline_ms"),
        ("consumers = 0", "consumers"),
    ] {
        let file = dir.path().join("warren.toml");
        std::fs::write(&file, format!("{line}\n")).unwrap();
        let out = warren_cli(&["--config", file.to_str().unwrap(), "config"]);
        let text = all_output(&out);
        assert!(!out.status.success(), "{line}: {text}");
        assert!(
            text.contains(&file.display().to_string()) && text.contains(&format!("`{key} =")),
            "{line}: {text}"
        );
        assert!(!text.contains("Usage: warren"), "{text}");
    }
}

#[test]
fn what_a_host_ignores_it_says() {
    let dir = tempfile::tempdir().unwrap();
    let plugins = dir.path().join("plugins");
    std::fs::create_dir(&plugins).unwrap();
    std::fs::copy(guest("echo"), plugins.join("ECHO.WASM")).unwrap();
    std::fs::write(plugins.join("bad.name.wasm"), b"not a component").unwrap();
    let config = dir.path().join("warren.toml");
    std::fs::write(&config, "[agents.nosuchagent]\ndeadline_ms = 100\n").unwrap();
    let child = std::process::Command::new(env!("CARGO_BIN_EXE_warren"))
        .args([
            "--config",
            config.to_str().unwrap(),
            "run",
            "--no-http",
            "--no-watch",
        ])
        .arg("--plugins")
        .arg(&plugins)
        .arg("--control")
        .arg(dir.path().join("control.sock"))
        .env_remove("WARREN_AMQP_URL")
        .env_remove("RUST_LOG")
        .env("WARREN_CACHE_DIR", cache_dir())
        .stderr(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_secs(3));
    let out = terminate(child);
    let text = String::from_utf8_lossy(&out.stderr);
    assert!(
        text.contains("ECHO.WASM") && text.contains("lower case"),
        "{text}"
    );
    assert!(
        text.contains("bad.name.wasm"),
        "the invalid name names its file: {text}"
    );
    assert!(
        text.contains("[agents.nosuchagent] names no agent"),
        "{text}"
    );
    assert!(
        text.contains("no plugins in") || text.contains("hosting 0 agents"),
        "{text}"
    );
}

// ---- The bad-input corpus: sent = answered + dead-lettered ----

const MARK: &str = "BODYMARK7f3a";

/// Bodies that must each end answered or dead-lettered with a reason.
fn bad_bodies() -> Vec<(&'static str, Vec<u8>)> {
    let valid = format!(r#"{{"messages":[{{"role":"user","content":"{MARK} valid"}}]}}"#);
    let deep = format!(
        r#"{{"messages":[{{"role":"user","content":"{MARK}"}}],"deep":{}{}}}"#,
        "[".repeat(100_000),
        "]".repeat(100_000)
    );
    let oversized = format!(
        r#"{{"messages":[{{"role":"user","content":"{MARK}{}"}}]}}"#,
        "x".repeat(1_500_000)
    );
    vec![
        ("valid", valid.into_bytes()),
        ("not json", format!("not json {MARK}").into_bytes()),
        ("array", b"[1,2]".to_vec()),
        ("messages not a list", br#"{"messages":"hi"}"#.to_vec()),
        (
            "role not a string",
            br#"{"messages":[{"role":1,"content":"x"}]}"#.to_vec(),
        ),
        (
            "context not an object",
            br#"{"messages":[],"context_variables":[1]}"#.to_vec(),
        ),
        (
            "NaN and Infinity",
            br#"{"messages":[{"role":"user","content":"x"}],"max_turns":Infinity,"t":NaN}"#
                .to_vec(),
        ),
        (
            "invalid UTF-8",
            b"{\"messages\":[{\"role\":\"user\",\"content\":\"\xff\xfe\"}]}".to_vec(),
        ),
        (
            "lone surrogate",
            br#"{"messages":[{"role":"user","content":"\ud800"}]}"#.to_vec(),
        ),
        ("empty", Vec::new()),
        ("oversized", oversized.into_bytes()),
        ("100k-deep nesting", deep.into_bytes()),
    ]
}

fn props(id: &str, reply_to: &str) -> BasicProperties {
    BasicProperties::default()
        .with_message_id(id.into())
        .with_reply_to(reply_to.into())
}

fn header(k: &str, v: AMQPValue) -> FieldTable {
    let mut t = FieldTable::default();
    t.insert(k.into(), v);
    t
}

/// A user of its own, with a password that must appear in no log line.
struct ProbeUser {
    name: String,
    password: String,
}

impl ProbeUser {
    fn new(vh: &Vhost) -> Self {
        let tag = &warren::dispatch::new_id()[2..10];
        let user = ProbeUser {
            name: format!("probe-{tag}"),
            password: format!("Pw{tag}secret"),
        };
        let ctl = |args: &[&str]| {
            let out = std::process::Command::new("rabbitmqctl")
                .args(args)
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
        };
        ctl(&["add_user", &user.name, &user.password]);
        ctl(&[
            "set_permissions",
            "-p",
            &vh.name,
            &user.name,
            ".*",
            ".*",
            ".*",
        ]);
        user
    }

    fn url(&self, vh: &Vhost) -> String {
        format!(
            "amqp://{}:{}@{}/{}",
            self.name,
            self.password,
            common::rabbit::ADDR,
            vh.name
        )
    }
}

impl Drop for ProbeUser {
    fn drop(&mut self) {
        let _ = std::process::Command::new("rabbitmqctl")
            .args(["delete_user", &self.name])
            .output();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_corpus_rabbitmq_every_message_is_answered_or_dead_lettered() {
    common::logs::capture("warren=trace,lapin=trace,amq_protocol=trace,info");
    let vh = Vhost::new();
    let user = ProbeUser::new(&vh);
    let broker: Arc<dyn Broker> = Arc::new(
        AmqpBroker::connect(AmqpConfig::new(user.url(&vh)))
            .await
            .unwrap(),
    );
    let t = start_on(
        broker.clone(),
        folder(&[("echo", "echo"), ("chaos", "chaos")]),
        runtime_config(InstanceMode::Reuse),
        dispatch(),
    )
    .await;
    // An agent nobody consumes, to see expiration while queued.
    broker.declare_agent("sleepy").await.unwrap();
    let (_conn, ch) = vh.plain_client().await;
    declare_queue(&ch, "corpus_replies").await;
    let mut sent = 0u64;
    for (i, (what, body)) in bad_bodies().into_iter().enumerate() {
        let id = format!("c-{i}-{}", what.replace(' ', "-"));
        publish_raw(
            &ch,
            "agent_exchange",
            "agent.echo",
            true,
            props(&id, "corpus_replies"),
            &body,
        )
        .await;
        sent += 1;
    }
    let hello = format!(r#"{{"messages":[{{"role":"user","content":"{MARK} hello"}}]}}"#);
    let loop_body = br#"{"messages":[{"role":"user","content":"loop"}]}"#;
    let cases: Vec<(&str, &str, bool, BasicProperties, &[u8])> = vec![
        (
            "ghost, mandatory",
            "agent.ghost",
            true,
            props("c-ghost-m", "corpus_replies"),
            hello.as_bytes(),
        ),
        (
            "ghost, no mandatory",
            "agent.ghost",
            false,
            props("c-ghost", "corpus_replies"),
            hello.as_bytes(),
        ),
        (
            "missing reply queue",
            "agent.echo",
            true,
            props("c-noreply", "no_such_queue"),
            hello.as_bytes(),
        ),
        (
            "loop",
            "agent.chaos",
            true,
            props("c-loop", "corpus_replies"),
            loop_body,
        ),
        (
            "hops a bool",
            "agent.echo",
            true,
            props("c-hops-bool", "corpus_replies")
                .with_headers(header("x-warren-hops", AMQPValue::Boolean(true))),
            hello.as_bytes(),
        ),
        (
            "hops 2^40",
            "agent.echo",
            true,
            props("c-hops-big", "corpus_replies")
                .with_headers(header("x-warren-hops", AMQPValue::LongLongInt(1 << 40))),
            hello.as_bytes(),
        ),
        (
            "hops 1000",
            "agent.echo",
            true,
            props("c-hops-1000", "corpus_replies")
                .with_headers(header("x-warren-hops", AMQPValue::LongInt(1000))),
            hello.as_bytes(),
        ),
        (
            "attempt text",
            "agent.echo",
            true,
            props("c-attempt-text", "corpus_replies").with_headers(header(
                "x-warren-attempt",
                AMQPValue::LongString("abc".into()),
            )),
            hello.as_bytes(),
        ),
        (
            "expired while queued",
            "agent.sleepy",
            true,
            props("c-expired", "corpus_replies").with_expiration("100".into()),
            hello.as_bytes(),
        ),
    ];
    for (_what, rk, mandatory, p, body) in cases {
        publish_raw(&ch, "agent_exchange", rk, mandatory, p, body).await;
        sent += 1;
    }
    let agents = ["echo", "chaos", "ghost", "sleepy"];
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let count = || {
        let q = vh.queues();
        let answered = q.get("corpus_replies").map(|c| c.0).unwrap_or(0);
        let dead: u64 = agents
            .iter()
            .map(|a| {
                q.get(&format!("agent_{a}_queue.dlq"))
                    .map(|c| c.0)
                    .unwrap_or(0)
            })
            .sum();
        (answered, dead, q)
    };
    loop {
        let (answered, dead, q) = count();
        if answered + dead >= sent {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "sent {sent}, answered {answered}, dead-lettered {dead}: {q:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (answered, dead, q) = count();
    assert_eq!(answered + dead, sent, "{q:?}");
    assert!(answered >= 2, "the valid messages were answered: {q:?}");
    for a in agents {
        for l in broker.dead_letters(a).await.unwrap() {
            assert!(!l.reason.is_empty(), "{a}: {} has no reason", l.envelope.id);
        }
    }
    let ghost = broker.dead_letters("ghost").await.unwrap();
    assert_eq!(ghost.len(), 2, "both ghost messages are kept");
    assert!(
        ghost
            .iter()
            .all(|l| l.reason.contains("no such agent `ghost`"))
    );
    let expired = broker.dead_letters("sleepy").await.unwrap();
    assert!(
        expired[0].reason.contains("expired"),
        "{}",
        expired[0].reason
    );
    // Nothing else anywhere: no unacked message, nothing stuck.
    for (name, (ready, unacked)) in &q {
        assert_eq!(*unacked, 0, "{name}: {q:?}");
        if !name.ends_with(".dlq") && name != "corpus_replies" {
            assert_eq!(*ready, 0, "{name}: {q:?}");
        }
    }
    t.host.shutdown().await;
    // No log line at any level holds a body or the password.
    let logs = common::logs::text();
    assert!(logs.contains("dead-lettered"), "logs were captured");
    assert!(!logs.contains(MARK), "a message body reached the logs");
    assert!(
        !logs.contains(&user.password),
        "the password reached the logs"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_corpus_embedded_every_message_is_answered_or_dead_lettered() {
    let t = embedded_host(folder(&[("echo", "echo"), ("chaos", "chaos")])).await;
    let (reply_queue, mut replies) = t.broker.reply_queue().await.unwrap();
    let mut sent = 0u64;
    let mut to = |agent: &str, body: Vec<u8>, reply_to: &str| {
        sent += 1;
        let env = Envelope {
            id: warren::dispatch::new_id(),
            reply_to: Some(reply_to.to_string()),
            attempt: 1,
            body,
            ..Default::default()
        };
        let (host, agent) = (t.host.clone(), agent.to_string());
        async move { host.publish(&agent, env).await.unwrap() }
    };
    for (_what, body) in bad_bodies() {
        to("echo", body, &reply_queue).await;
    }
    let hello = format!(r#"{{"messages":[{{"role":"user","content":"{MARK} hello"}}]}}"#);
    to("echo", hello.clone().into_bytes(), "no_such_queue").await;
    to(
        "chaos",
        br#"{"messages":[{"role":"user","content":"loop"}]}"#.to_vec(),
        &reply_queue,
    )
    .await;
    // An unknown agent is refused to the publisher at once.
    let refused = t
        .host
        .publish("ghost", user_envelope("hi", Default::default(), None))
        .await
        .unwrap_err();
    assert!(format!("{refused:#}").contains("no such agent `ghost`"));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let mut answered = 0u64;
    loop {
        let dead = dead_count(t.broker.as_ref(), "echo").await
            + dead_count(t.broker.as_ref(), "chaos").await;
        if answered + dead >= sent {
            tokio::time::sleep(Duration::from_millis(500)).await;
            let dead = dead_count(t.broker.as_ref(), "echo").await
                + dead_count(t.broker.as_ref(), "chaos").await;
            assert_eq!(answered + dead, sent);
            assert!(answered >= 1);
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "sent {sent}, answered {answered}, dead {dead}"
        );
        if let Ok(Some(d)) = tokio::time::timeout(Duration::from_millis(100), replies.next()).await
        {
            answered += 1;
            d.ack().await.unwrap();
        }
    }
    t.host.shutdown().await;
}

// ---- 18. The retry budget ----

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trap_after_retries_still_gets_its_retry_on_a_fresh_instance() {
    let mut t = embedded_host(folder(&[("chaos", "chaos")])).await;
    // As if two agent-requested retries had happened already.
    let mut env = user_envelope("trap", Default::default(), None);
    env.attempt = 3;
    let id = env.id.clone();
    t.host.publish("chaos", env).await.unwrap();
    let mut retried = false;
    let reason = t
        .wait_for(|e| match e {
            Event::Retrying { id: i, .. } if *i == id => {
                retried = true;
                None
            }
            Event::DeadLettered { id: i, reason, .. } if *i == id => Some(reason.clone()),
            _ => None,
        })
        .await;
    assert!(
        retried,
        "the trap was retried although attempts were used up: {reason}"
    );
    assert!(
        reason.contains("gave up after 4 attempts, 2 of them traps"),
        "{reason}"
    );
    t.host.shutdown().await;
}

#[test]
fn the_default_schedule_rides_out_a_minute_of_rate_limiting() {
    let c = DispatchConfig::default();
    // The shortest total wait (every jitter at its minimum) before a
    // message that keeps asking to retry is dead-lettered.
    let shortest: Duration = (1..c.max_attempts)
        .map(|attempt| {
            let full = c
                .backoff_base
                .saturating_mul(1 << (attempt - 1))
                .min(c.backoff_cap);
            full / 2
        })
        .sum();
    assert!(shortest >= Duration::from_secs(60), "{shortest:?}");
    for attempt in 1..c.max_attempts {
        assert!(warren::dispatch::backoff(&c, attempt) <= c.backoff_cap);
    }
}

// ---- 19. `send --wait` across a reconnect ----

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reply_published_around_a_reconnect_reaches_send_wait() {
    let vh = Vhost::new();
    let t = amqp_host(&vh, folder(&[("chaos", "chaos")])).await;
    let client_broker: Arc<dyn Broker> = Arc::new(
        AmqpBroker::connect(AmqpConfig::new(vh.url()))
            .await
            .unwrap(),
    );
    let waiting = {
        let b = client_broker.clone();
        tokio::spawn(async move {
            client::send(
                b.as_ref(),
                "chaos",
                "sleep:2000",
                Default::default(),
                Some(Duration::from_secs(30)),
            )
            .await
        })
    };
    tokio::time::sleep(Duration::from_millis(700)).await;
    // The reply queue is neither exclusive nor auto-delete (RabbitMQ would
    // delete those with the connection), and expires if its client dies.
    let out = std::process::Command::new("rabbitmqctl")
        .args([
            "list_queues",
            "-p",
            &vh.name,
            "--no-table-headers",
            "--quiet",
        ])
        .args(["name", "exclusive", "auto_delete", "arguments"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let reply = text
        .lines()
        .find(|l| l.starts_with("warren.reply."))
        .unwrap_or_else(|| panic!("no reply queue: {text}"));
    let fields: Vec<&str> = reply.split_whitespace().collect();
    assert_eq!(&fields[1..3], ["false", "false"], "{reply}");
    assert!(reply.contains("x-expires"), "{reply}");
    // Both the host's and the client's connections go.
    vh.close_all_connections();
    let outcome = waiting.await.unwrap().unwrap();
    assert_eq!(outcome.reply.unwrap().text, "slept 2000 ms");
    assert_eq!(dead_count(t.broker.as_ref(), "chaos").await, 0);
    // The reply queue went with its consumer.
    assert!(
        !vh.queues().keys().any(|q| q.starts_with("warren.reply.")),
        "{:?}",
        vh.queues()
    );
    t.host.shutdown().await;
}

// ---- 2. A dead-letter queue that cannot be declared again: loud ----

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_letter_queue_that_cannot_be_declared_is_reported_not_stalled_on() {
    let vh = Vhost::new();
    let t = amqp_host(&vh, folder(&[("worker", "grumpy"), ("echo", "echo")])).await;
    let (_conn, ch) = vh.plain_client().await;
    ch.queue_delete(
        "agent_worker_queue.dlq".into(),
        QueueDeleteOptions::default(),
    )
    .await
    .unwrap();
    let ctl = |configure: &str| {
        let out = std::process::Command::new("rabbitmqctl")
            .args([
                "set_permissions",
                "-p",
                &vh.name,
                "guest",
                configure,
                ".*",
                ".*",
            ])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    // The host may no longer make that queue.
    ctl(r"^(?!agent_worker_queue\.dlq$).*");
    for i in 0..3 {
        let env = user_envelope(&format!("bad {i}"), Default::default(), None);
        t.host.publish("worker", env).await.unwrap();
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let r = t.host.readiness();
        if !r.ready {
            assert!(
                r.problems
                    .iter()
                    .any(|p| p.contains("agent `worker` cannot settle its messages")),
                "{:?}",
                r.problems
            );
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "still ready: {r:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let status = t.host.status().await.unwrap();
    let worker = status
        .agents
        .iter()
        .find(|a| a.queue.agent == "worker")
        .unwrap();
    assert_eq!(worker.queue.status, "settling fails");
    assert!(
        worker
            .last_error
            .as_deref()
            .unwrap()
            .contains("settling failed"),
        "{worker:?}"
    );
    assert!(t.host.metrics_text().contains(r#"kind="settle""#));
    // Nothing is held meanwhile: the messages go back to the queue, and
    // other agents carry on.
    assert_eq!(answer(t.broker.as_ref(), "echo", "fine", 20).await, "fine");
    // Allowed again: every message reaches the declared-again DLQ.
    ctl(".*");
    wait_dead(t.broker.as_ref(), "worker", 3, 30).await;
    assert_eq!(vh.queues()["agent_worker_queue"], (0, 0));
    t.host.shutdown().await;
}

// ---- 17. Quorum queues dead-letter at least once ----

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quorum_delay_and_agent_queues_dead_letter_at_least_once() {
    let vh = Vhost::new();
    let config = AmqpConfig {
        queue_type: warren::broker::amqp::QueueType::Quorum,
        ..AmqpConfig::new(vh.url())
    };
    let broker: Arc<dyn Broker> = Arc::new(AmqpBroker::connect(config).await.unwrap());
    let t = start_on(
        broker.clone(),
        folder(&[("chaos", "chaos")]),
        runtime_config(InstanceMode::Reuse),
        dispatch(),
    )
    .await;
    assert_eq!(
        answer(broker.as_ref(), "chaos", "flaky:2", 30).await,
        "ok on attempt 2"
    );
    let out = std::process::Command::new("rabbitmqctl")
        .args([
            "list_queues",
            "-p",
            &vh.name,
            "--no-table-headers",
            "--quiet",
            "name",
            "arguments",
        ])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let line = |prefix: &str| {
        text.lines()
            .find(|l| l.starts_with(prefix))
            .unwrap_or_else(|| panic!("no queue {prefix}: {text}"))
            .to_string()
    };
    for q in [
        "agent_chaos_queue.retry.",
        "agent_chaos_queue\t",
        "agent_chaos_queue ",
    ] {
        if !text.lines().any(|l| l.starts_with(q)) {
            continue;
        }
        let l = line(q);
        assert!(
            l.contains("at-least-once") && l.contains("reject-publish"),
            "{l}"
        );
    }
    assert!(line("agent_chaos_queue.retry.").contains("at-least-once"));
    t.host.shutdown().await;
}

// ---- 10. What the CLI says when reading RabbitMQ ----

#[test]
fn dlq_of_an_unknown_agent_and_remote_status_say_it_plainly() {
    let vh = Vhost::new();
    let url = vh.url();
    let out = warren_cli(&["dlq", "list", "nosuch", "--amqp-url", &url]);
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!out.status.success());
    assert_eq!(err.lines().count(), 1, "one line: {err}");
    assert!(
        err.starts_with("error: agent `nosuch` has no dead-letter queue"),
        "{err}"
    );
    let out = warren_cli(&[
        "status",
        "--amqp-url",
        &url,
        "--agent",
        "echo",
        "--plugins",
        "/nonexistent",
    ]);
    let text = all_output(&out);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("known only to the"), "{text}");
    assert!(!text.contains("DEBUG") && !text.contains("lapin"), "{text}");
}
