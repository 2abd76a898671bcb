//! Integration tests against the real RabbitMQ at 127.0.0.1:5672, each in a
//! private virtual host. They fail with a clear message when the broker is
//! absent (never a silent skip).

mod common;

use std::time::Duration;

use common::amqp::*;
use common::rabbit::Vhost;
use common::*;
use futures::StreamExt;
use lapin::BasicProperties;
use lapin::options::{BasicConsumeOptions, BasicPublishOptions};
use lapin::types::FieldTable;
use warren::broker::amqp::{AmqpBroker, AmqpConfig};
use warren::dispatch::{DispatchConfig, Event};
use warren::{Broker, client};

const SEED_BODY: &[u8] = br#"{"messages":[{"role":"user","content":"I want to talk to agent B."}],"context_variables":{"user":"alice"},"agent":"Agent A"}"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seed_client_publish_is_handed_off_and_answered() {
    let vh = Vhost::new();
    let t = host(&vh, &["agent_a", "agent_b"], fast_dispatch()).await;
    let (_conn, ch) = vh.plain_client().await;
    // Exactly what the seed does: the body on agent_exchange, routing key agent.agent_a, no properties.
    ch.basic_publish(
        "agent_exchange".into(),
        "agent.agent_a".into(),
        BasicPublishOptions::default(),
        SEED_BODY,
        BasicProperties::default(),
    )
    .await
    .unwrap()
    .await
    .unwrap();
    // No reply-to: the answer lands in warren_replies.
    let mut consumer = ch
        .basic_consume(
            "warren_replies".into(),
            "".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    let d = tokio::time::timeout(Duration::from_secs(20), consumer.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    let body = warren::wire::Body::decode(&d.data).unwrap();
    assert!(
        body.messages
            .last()
            .unwrap()
            .content
            .text()
            .unwrap()
            .contains("Hello alice"),
        "{body:?}"
    );
    assert_eq!(body.from_agent.as_deref(), Some("agent_b"));
    // Sender, hops and version travel as properties (`app_id`, `type`),
    // with no header table for the broker to decode.
    let origin = warren::broker::amqp::origin(&d.properties);
    assert_eq!(origin.sender.as_deref(), Some("agent_b"));
    assert_eq!(origin.hops, 2, "user → agent_a → agent_b");
    assert!(origin.version.is_some(), "{origin:?}");
    assert!(
        d.properties.headers().is_none(),
        "{:?}",
        d.properties.headers()
    );
    assert_eq!(d.properties.delivery_mode(), &Some(2), "persistent");
    assert!(d.properties.message_id().is_some());
    // And the library's request/reply over RabbitMQ.
    let outcome = client::send(
        t.broker.as_ref(),
        "agent_a",
        "I want to talk to agent B.",
        Default::default(),
        Some(Duration::from_secs(20)),
    )
    .await
    .unwrap();
    assert_eq!(outcome.reply.unwrap().from.as_deref(), Some("agent_b"));
    t.host.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_target_agent_is_dead_lettered_not_lost() {
    let vh = Vhost::new();
    let t = host(&vh, &["chaos"], fast_dispatch()).await;
    let env = warren::dispatch::user_envelope("to:ghost", Default::default(), None);
    let id = env.id.clone();
    t.host.publish("chaos", env).await.unwrap();
    let mut found = None;
    for _ in 0..100 {
        // Peeking is a read on a fresh channel; under load it may fail once:
        // say so and look again.
        let dl = match t.broker.dead_letters("chaos").await {
            Ok(dl) => dl,
            Err(e) => {
                eprintln!("peeking the dead-letter queue failed, retrying: {e:#}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        if let Some(d) = dl.into_iter().next() {
            found = Some(d);
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let d = found.expect("the unroutable message was dead-lettered");
    assert!(d.reason.contains("no such agent `ghost`"), "{}", d.reason);
    assert_eq!(d.envelope.id, warren::dispatch::derive_id(&id, 0));
    wait_until_empty(&t, &["chaos"]).await;
    // Unknown agent from a client: a clear error, nothing published.
    let e = client::send(t.broker.as_ref(), "ghost", "hi", Default::default(), None)
        .await
        .unwrap_err();
    assert!(format!("{e:#}").contains("no such agent `ghost`"));
    t.host.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_backs_off_through_delay_queues_then_dead_letters() {
    let vh = Vhost::new();
    let dispatch = DispatchConfig {
        max_attempts: 4,
        backoff_base: Duration::from_millis(100),
        backoff_cap: Duration::from_secs(2),
        ..fast_dispatch()
    };
    let mut t = host(&vh, &["chaos"], dispatch).await;
    let env =
        warren::dispatch::user_envelope("retry:service unavailable", Default::default(), None);
    let id = env.id.clone();
    t.host.publish("chaos", env).await.unwrap();
    let started = std::time::Instant::now();
    let mut retries = Vec::new();
    let reason = t
        .wait_for(|e| match e {
            Event::Retrying {
                id: i,
                attempt,
                delay_ms,
                ..
            } if *i == id => {
                retries.push((*attempt, *delay_ms, started.elapsed()));
                None
            }
            Event::DeadLettered { id: i, reason, .. } if *i == id => Some(reason.clone()),
            _ => None,
        })
        .await;
    let attempts: Vec<u32> = retries.iter().map(|r| r.0).collect();
    assert_eq!(attempts, [1, 2, 3]);
    let delays: Vec<u64> = retries.iter().map(|r| r.1).collect();
    assert!(
        delays[0] <= delays[1] && delays[1] <= delays[2],
        "growing delays: {delays:?}"
    );
    // Each retry really waited its delay before the next attempt. An event
    // is stamped after its publish is confirmed, while the broker's delay
    // starts when it takes the message: allow that confirm time (a few ms).
    let confirm_slack = Duration::from_millis(20);
    for w in retries.windows(2) {
        assert!(
            w[1].2 - w[0].2 + confirm_slack >= Duration::from_millis(w[0].1),
            "{retries:?}"
        );
    }
    assert!(reason.contains("gave up after 4 attempts"), "{reason}");
    let dl = t.broker.dead_letters("chaos").await.unwrap();
    assert_eq!(dl.len(), 1);
    assert_eq!(dl[0].envelope.attempt, 4);
    assert_eq!(dl[0].reason, reason);
    assert_eq!(
        dl[0].envelope.headers["x-warren-last-error"],
        "agent asked to retry: service unavailable"
    );
    t.host.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hosts_share_the_queues() {
    let vh = Vhost::new();
    let one = DispatchConfig {
        consumers_per_agent: 1,
        ..fast_dispatch()
    };
    let a = host(&vh, &["echo"], one.clone()).await;
    let b = host(&vh, &["echo"], one).await;
    let stats = a.broker.stats().await.unwrap();
    let echo = stats.iter().find(|s| s.agent == "echo").unwrap();
    assert_eq!(echo.consumer_count, 2);
    assert_eq!(echo.status, "active");
    let (_conn, ch) = vh.plain_client().await;
    Vhost::declare_queue(&ch, "test_replies").await;
    let ids = publish_many(&ch, "echo", 400, "test_replies", "ping").await;
    let seen = collect_replies(&ch, "test_replies", ids.len(), Duration::from_secs(60)).await;
    assert_eq!(seen.len(), 400);
    let calls = |t: &TestHost| {
        t.host
            .registry()
            .get("echo")
            .unwrap()
            .stats()
            .calls
            .load(std::sync::atomic::Ordering::Relaxed)
    };
    let (ca, cb) = (calls(&a), calls(&b));
    assert_eq!(ca + cb, 400);
    assert!(ca > 0 && cb > 0, "both hosts worked: {ca} + {cb}");
    a.host.shutdown().await;
    b.host.shutdown().await;
}

#[test]
fn cli_run_send_status_over_rabbitmq_never_print_the_password() {
    use std::process::{Command, Stdio};
    let vh = Vhost::new();
    let warren = || {
        let mut c = Command::new(env!("CARGO_BIN_EXE_warren"));
        c.current_dir(root())
            .env("WARREN_CACHE_DIR", cache_dir())
            .env("WARREN_AMQP_URL", vh.url())
            .env_remove("RUST_LOG");
        c
    };
    let host = warren()
        .args([
            "run",
            "--plugins",
            "plugins",
            "--consumers",
            "2",
            "--http",
            "127.0.0.1:0",
        ])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let result = std::panic::catch_unwind(|| {
        // The host is up once its agents' queues have consumers.
        let mut status = serde_json::Value::Null;
        for _ in 0..100 {
            std::thread::sleep(Duration::from_millis(100));
            let out = warren().args(["status", "--json"]).output().unwrap();
            if out.status.success() {
                status = serde_json::from_slice(&out.stdout).unwrap();
                if status["agents"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .all(|a| a["consumer_count"] == 2)
                {
                    break;
                }
            }
        }
        let agents = status["agents"].as_array().expect("status answered");
        assert_eq!(agents.len(), 4, "{status}");
        for a in agents {
            assert_eq!(a["status"], "active", "{a}");
            assert_eq!(a["consumer_count"], 2, "{a}");
            assert_eq!(
                a["routing_key"],
                format!("agent.{}", a["agent"].as_str().unwrap())
            );
        }
        assert!(
            status["broker"].as_str().unwrap().contains("amqp://***@"),
            "{status}"
        );

        let out = warren()
            .args([
                "send",
                "Agent A",
                "I want to talk to agent B.",
                "--context",
                r#"{"user":"ida"}"#,
                "--wait",
                "--timeout",
                "20",
            ])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(String::from_utf8_lossy(&out.stdout).starts_with("agent_b: Hello ida"));

        // An unknown agent (--agent) shows as missing; the table has the seed's columns.
        let out = warren()
            .args(["status", "--agent", "ghost"])
            .output()
            .unwrap();
        let table = String::from_utf8_lossy(&out.stdout);
        assert!(
            table.contains("agent_ghost_queue") && table.contains("missing"),
            "{table}"
        );
        assert!(
            table.contains("message_count") && table.contains("consumer_count"),
            "{table}"
        );
    });
    let out = terminate(host);
    result.unwrap();
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(
        log.contains("connected to RabbitMQ at amqp://***@"),
        "{log}"
    );
    assert!(
        !log.contains("guest:guest"),
        "the password leaked into the log: {log}"
    );

    // A wrong password: a clear error, still redacted.
    let bad = format!(
        "amqp://guest:wrong-secret@{}/{}",
        common::rabbit::ADDR,
        vh.name
    );
    let out = warren()
        .env("WARREN_AMQP_URL", &bad)
        .args(["status", "--recovery-timeout", "1"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("cannot connect to RabbitMQ at amqp://***@"),
        "{err}"
    );
    assert!(!err.contains("wrong-secret"), "{err}");
}

/// Replies to a reply queue that does not exist are returned by RabbitMQ.
/// Half of 2,000 answers go to such a queue, interleaved with the other
/// half, so the broker confirms returned and routed publishes together
/// (`multiple` acks): every returned answer must end in the answering
/// agent's dead-letter queue, every other one must arrive. None vanish.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_to_a_vanished_reply_queue_are_dead_lettered_not_lost() {
    let vh = Vhost::new();
    let t = host(&vh, &["echo"], fast_dispatch()).await;
    let (_conn, ch) = vh.plain_client().await;
    Vhost::declare_queue(&ch, "alive_replies").await;
    let mut confirms = Vec::new();
    for i in 0..2_000 {
        let reply_to = if i % 2 == 0 {
            "alive_replies"
        } else {
            "vanished_replies"
        };
        let id = format!("m-{i}");
        let body = br#"{"messages":[{"role":"user","content":"hello"}]}"#;
        confirms.push(publish_one(&ch, "echo", &id, reply_to, body).await);
    }
    for c in futures::future::join_all(confirms).await {
        assert!(c.unwrap().is_ack());
    }
    let arrived = collect_replies(&ch, "alive_replies", 1_000, Duration::from_secs(60)).await;
    assert_eq!(arrived.len(), 1_000);
    assert!(
        arrived
            .keys()
            .all(|id| id.trim_start_matches("m-").parse::<u32>().unwrap() % 2 == 0)
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let dead = t.broker.stats().await.unwrap()[0].dead_letter_count;
        if dead == 1_000 {
            break;
        }
        assert!(
            dead < 1_000,
            "more dead letters than returned answers: {dead}"
        );
        assert!(
            std::time::Instant::now() < deadline,
            "only {dead} of 1000 returned answers were dead-lettered"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let letters = t.broker.dead_letters("echo").await.unwrap();
    assert!(
        letters
            .iter()
            .all(|l| l.reason.contains("vanished_replies") && l.reason.contains("echo")),
        "{:?}",
        letters
            .iter()
            .map(|l| &l.reason)
            .take(3)
            .collect::<Vec<_>>()
    );
    wait_until_empty(&t, &["echo"]).await;
}

/// Every message is persistent by default; without confirms (benchmark
/// mode, whose warning says persistence is off too) none is.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_are_persistent_unless_the_host_runs_without_confirms() {
    let vh = Vhost::new();
    let (_conn, ch) = vh.plain_client().await;
    Vhost::declare_queue(&ch, "modes").await;
    for (reliable, mode) in [(true, 2), (false, 1)] {
        let b = AmqpBroker::connect(AmqpConfig {
            reliable,
            ..AmqpConfig::new(vh.url())
        })
        .await
        .unwrap();
        let env = warren::dispatch::user_envelope("hi", Default::default(), None);
        b.publish(&warren::broker::Route::Queue("modes".into()), env)
            .await
            .unwrap();
        b.close().await;
        let mut got = None;
        for _ in 0..100 {
            got = ch
                .basic_get(
                    "modes".into(),
                    lapin::options::BasicGetOptions { no_ack: true },
                )
                .await
                .unwrap();
            if got.is_some() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let got = got.expect("the message published");
        assert_eq!(
            *got.delivery.properties.delivery_mode(),
            Some(mode),
            "reliable: {reliable}"
        );
    }
}
