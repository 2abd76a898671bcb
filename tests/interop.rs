//! The original SwarmRabbitMQ client and warren on one vhost, in both orders.
//!
//! `tests/interop/swarm_client.py` does over AMQP exactly what the original
//! client does (pika 1.3: a non-durable `agent_exchange`, agent queues with
//! its own arguments bound to `amq.topic`, `run()` bodies with
//! `"max_turns": Infinity` and no reply-to, id or headers). In both orders
//! every `run()` goes agent_a → agent_b → answer, nothing is dead-lettered,
//! and neither side fails to start. Needs RabbitMQ and a Python with pika
//! (scripts/test.sh installs it into target/tools/venv).

mod common;

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::rabbit::Vhost;
use common::*;
use lapin::options::{BasicAckOptions, BasicGetOptions};
use serde_json::Value;

const RUNS: usize = 20;

/// The Python that has pika: `WARREN_TEST_PYTHON`, else target/tools/venv's.
fn python() -> PathBuf {
    let python = std::env::var_os("WARREN_TEST_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join("target/tools/venv/bin/python"));
    let ok = Command::new(&python)
        .args([
            "-c",
            "import pika; assert pika.__version__.startswith('1.3')",
        ])
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        ok,
        "{} has no pika 1.3: the interop test needs it (scripts/test.sh installs it; \
         or `{} -m pip install pika==1.3.2`)",
        python.display(),
        python.display()
    );
    python
}

/// The original client: `setup`, `run N` or `debug`; its stdout.
fn client(vh: &Vhost, args: &[&str]) -> String {
    let out = Command::new(python())
        .arg(root().join("tests/interop/swarm_client.py"))
        .arg(vh.url())
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "the original client failed ({args:?}): {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// A warren command on `vh`; `durable` is `WARREN_EXCHANGE_DURABLE` (every
/// verb declares the exchange if it is missing, so all get the same setting).
fn warren(vh: &Vhost, durable: bool) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_warren"));
    c.current_dir(root())
        .env("WARREN_CACHE_DIR", cache_dir())
        .env("WARREN_AMQP_URL", vh.url())
        .env("WARREN_EXCHANGE_DURABLE", durable.to_string())
        .env_remove("RUST_LOG");
    c
}

/// `warren status --debug-queues` for agent_a and agent_b, if it answers.
fn debug_queues(vh: &Vhost, durable: bool) -> Option<Value> {
    let out = warren(vh, durable)
        .args(["status", "--debug-queues", "--plugins", "/nonexistent"])
        .args(["--agent", "agent_a", "--agent", "agent_b"])
        .output()
        .unwrap();
    out.status
        .success()
        .then(|| serde_json::from_slice(&out.stdout).unwrap())
}

/// `warren run` with agent_a and agent_b; its log goes to `log`.
fn start_warren(vh: &Vhost, durable: bool, log: &std::path::Path) -> (Running, tempfile::TempDir) {
    let dir = plugins_dir(&["agent_a", "agent_b"]);
    let child = warren(vh, durable)
        .args(["run", "--no-http", "--no-watch", "--plugins"])
        .arg(dir.path())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(log).unwrap())
        .spawn()
        .unwrap();
    let child = Running::new(child);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(q) = debug_queues(vh, durable)
            && q["agent_a"]["consumer_count"].as_u64() > Some(0)
            && q["agent_b"]["consumer_count"].as_u64() > Some(0)
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "warren did not start: {}",
            std::fs::read_to_string(log).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    (child, dir)
}

/// Takes `n` answers from `warren_replies` (a reply-to-less conversation's
/// answers go there); returns the users they greet.
async fn answers(vh: &Vhost, n: usize) -> BTreeSet<String> {
    let (_conn, ch) = vh.plain_client().await;
    let mut users = BTreeSet::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while users.len() < n && Instant::now() < deadline {
        let got = ch
            .basic_get("warren_replies".into(), BasicGetOptions::default())
            .await
            .unwrap();
        let Some(m) = got else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        // Written back as Python wrote it: `"max_turns": Infinity`, which
        // strict JSON parsers refuse.
        let raw = String::from_utf8(m.delivery.data.clone()).unwrap();
        assert!(raw.contains(r#""max_turns":Infinity"#), "{raw}");
        let body: Value = serde_json::from_str(&raw.replace("Infinity", "null")).unwrap();
        let last = body["messages"].as_array().unwrap().last().unwrap().clone();
        let text = last["content"].as_str().unwrap_or_default();
        assert!(
            text.starts_with("Hello seed-"),
            "not agent_b's answer: {body}"
        );
        assert_eq!(body["from_agent"], "agent_b", "{body}");
        // The run() options came through both agents untouched.
        assert_eq!(body["context_variables"]["triaged_by"], "agent_a", "{body}");
        assert_eq!(body["execute_tools"], true, "{body}");
        assert_eq!(body["model"], Value::Null, "{body}");
        assert_eq!(body["stream"], false, "{body}");
        users.insert(
            body["context_variables"]["user"]
                .as_str()
                .unwrap()
                .to_string(),
        );
        m.delivery
            .acker
            .ack(BasicAckOptions::default())
            .await
            .unwrap();
    }
    users
}

/// Every dead-letter queue of the vhost is empty.
fn assert_no_dead_letters(vh: &Vhost) {
    for (name, (ready, unacked)) in vh.queues() {
        if name.ends_with(".dlq") || name == "warren_unroutable" {
            assert_eq!((ready, unacked), (0, 0), "dead letters in {name}");
        }
    }
}

fn expected_users() -> BTreeSet<String> {
    (0..RUNS).map(|i| format!("seed-{i}")).collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn warren_first_then_the_original_client() {
    let vh = Vhost::new();
    let log = tempfile::NamedTempFile::new().unwrap();
    let (child, _dir) = start_warren(&vh, false, log.path());
    // The original client connects (its exchange_declare must not fail),
    // registers both agents (the queues exist: its passive declare succeeds)
    // and runs.
    client(&vh, &["run", &RUNS.to_string()]);
    assert_eq!(answers(&vh, RUNS).await, expected_users());
    assert_no_dead_letters(&vh);
    let mut child = child;
    assert!(
        child.child().try_wait().unwrap().is_none(),
        "warren is still up"
    );
    // A second client connecting later declares the exchange again: fine.
    client(&vh, &["setup"]);
    let out = child.stop();
    assert!(out.status.success());
    let log = std::fs::read_to_string(log.path()).unwrap();
    assert!(!log.contains("ERROR"), "{log}");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_original_client_first_then_warren_with_its_defaults() {
    let vh = Vhost::new();
    // The client makes the exchange (non-durable) and the queues (its arguments).
    client(&vh, &["setup"]);
    let log = tempfile::NamedTempFile::new().unwrap();
    let (child, _dir) = start_warren(&vh, true, log.path());
    let text = std::fs::read_to_string(log.path()).unwrap();
    assert!(
        text.contains("exchange `agent_exchange` already exists") && text.contains("not durable"),
        "warren says what differs about the exchange: {text}"
    );
    assert!(
        text.contains("queue `agent_agent_a_queue` already exists"),
        "warren says what differs about the queue: {text}"
    );
    client(&vh, &["run", &RUNS.to_string()]);
    assert_eq!(answers(&vh, RUNS).await, expected_users());
    assert_no_dead_letters(&vh);

    // `warren status --debug-queues` reads like the client's debug_queues().
    let theirs: Value = serde_json::from_str(&client(&vh, &["debug"])).unwrap();
    let ours = debug_queues(&vh, true).expect("warren status answers");
    for (name, agent) in [("Agent A", "agent_a"), ("Agent B", "agent_b")] {
        let (t, o) = (&theirs[name], &ours[agent]);
        let keys = |v: &Value| v.as_object().unwrap().keys().cloned().collect::<Vec<_>>();
        assert_eq!(keys(t), keys(o), "the same keys: {t} / {o}");
        for k in ["queue_name", "routing_key", "status", "consumer_count"] {
            assert_eq!(t[k], o[k], "{k}: {t} / {o}");
        }
    }

    let mut child = child;
    assert!(
        child.child().try_wait().unwrap().is_none(),
        "warren is still up"
    );
    child.stop();
}
