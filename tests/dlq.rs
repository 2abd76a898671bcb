//! `warren dlq`: after an agent dead-lettered 100 messages and was fixed,
//! a replay gets all 100 processed and leaves the dead-letter queue empty —
//! on the embedded broker (through a host's control socket) and on RabbitMQ.

mod common;

use std::collections::HashSet;
use std::path::PathBuf;
use std::time::Duration;

use common::rabbit::Vhost;
use common::*;
use tokio_util::sync::CancellationToken;
use warren::dispatch::{Event, user_envelope};
use warren::runtime::InstanceMode;

/// How the CLI reaches the broker: `--control SOCKET` or `--amqp-url URL`.
type Remote = [String; 2];

fn warren_cli(args: &[&str], remote: &Remote) -> String {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_warren"))
        .args(args)
        .args(remote)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "warren {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

async fn cli(args: &[&str], remote: &Remote) -> String {
    let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    let remote = remote.clone();
    tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        warren_cli(&args, &remote)
    })
    .await
    .unwrap()
}

/// A `worker` agent that rejects everything (the grumpy fixture).
fn broken_worker() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(guest("grumpy"), dir.path().join("worker.wasm")).unwrap();
    dir
}

async fn replay_after_fixing_the_agent(mut t: TestHost, remote: Remote) {
    // 100 messages, all rejected and dead-lettered.
    let mut ids = HashSet::new();
    for i in 0..100 {
        let env = user_envelope(&format!("job {i}"), Default::default(), None);
        ids.insert(env.id.clone());
        t.host.publish("worker", env).await.unwrap();
    }
    let mut dead = HashSet::new();
    while dead.len() < 100 {
        let id = t
            .wait_for(|e| match e {
                Event::DeadLettered { agent, id, .. } if agent == "worker" => Some(id.clone()),
                _ => None,
            })
            .await;
        dead.insert(id);
    }
    assert_eq!(dead, ids);

    let list = cli(&["dlq", "list", "worker"], &remote).await;
    assert!(
        list.starts_with("100 dead letters for agent `worker`"),
        "{list}"
    );
    let first = ids.iter().next().unwrap().clone();
    let line = list.lines().find(|l| l.starts_with(&first)).unwrap();
    assert!(line.contains("attempts 1"), "{line}");
    assert!(line.contains("first failed 20"), "a timestamp: {line}");
    assert!(
        line.contains("rejected by agent: grumpy rejects message"),
        "{line}"
    );

    let show = cli(
        &["dlq", "show", "worker", "--id", &first, "--json"],
        &remote,
    )
    .await;
    let entries: Vec<serde_json::Value> = serde_json::from_str(&show).unwrap();
    assert_eq!(entries.len(), 1);
    assert_eq!(entries[0]["id"], first.as_str());
    assert_eq!(entries[0]["attempts"], 1);
    assert!(
        entries[0]["body"].as_str().unwrap().contains("\"job "),
        "{show}"
    );
    assert!(entries[0]["first_failure"].as_str().is_some(), "{show}");

    // Fix the agent: the working version goes in.
    let plugin: PathBuf = t.path().join("worker.wasm");
    std::fs::copy(guest("echo"), &plugin).unwrap();
    t.host.load_plugin(&plugin).await.unwrap();

    let replayed = cli(&["dlq", "replay", "worker", "--all"], &remote).await;
    assert_eq!(
        replayed.trim(),
        "replayed 100 dead letters to agent `worker`"
    );
    let mut handled = HashSet::new();
    while handled.len() < 100 {
        let (id, attempt) = t
            .wait_for(|e| match e {
                Event::Handled {
                    agent, id, attempt, ..
                } if agent == "worker" => Some((id.clone(), *attempt)),
                Event::DeadLettered { agent, id, reason } if agent == "worker" => {
                    panic!("{id} was dead-lettered again: {reason}")
                }
                _ => None,
            })
            .await;
        assert_eq!(attempt, 1, "a replay starts from the first attempt");
        handled.insert(id);
    }
    assert_eq!(
        handled, ids,
        "every dead letter was processed once replayed"
    );
    assert!(t.broker.dead_letters("worker").await.unwrap().is_empty());
    let list = cli(&["dlq", "list", "worker"], &remote).await;
    assert!(list.starts_with("0 dead letters"), "{list}");

    // Purge: by id, then everything.
    for i in 0..3 {
        let env = user_envelope(&format!("again {i}"), Default::default(), None);
        t.broker.dead_letter("worker", env, "test").await.unwrap();
    }
    let one = t.broker.dead_letters("worker").await.unwrap()[0]
        .envelope
        .id
        .clone();
    let purged = cli(&["dlq", "purge", "worker", "--id", &one], &remote).await;
    assert_eq!(purged.trim(), "purged 1 dead letters of agent `worker`");
    let purged = cli(&["dlq", "purge", "worker", "--all"], &remote).await;
    assert_eq!(purged.trim(), "purged 2 dead letters of agent `worker`");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_after_fixing_the_agent_embedded() {
    let t = start_in(
        broken_worker(),
        runtime_config(InstanceMode::Reuse),
        fast_dispatch(),
    )
    .await;
    // `warren dlq` reaches an embedded broker through the host's control socket.
    let socket = t.path().join("control.sock");
    let stop = CancellationToken::new();
    tokio::spawn(warren::control::serve(
        t.host.clone(),
        socket.clone(),
        stop.clone(),
    ));
    while !socket.exists() {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let remote = ["--control".to_string(), socket.display().to_string()];
    replay_after_fixing_the_agent(t, remote).await;
    stop.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_after_fixing_the_agent_rabbitmq() {
    let vh = Vhost::new();
    let broker = vh.broker().await;
    let t = start_on(
        broker,
        broken_worker(),
        runtime_config(InstanceMode::Reuse),
        fast_dispatch(),
    )
    .await;
    let remote = ["--amqp-url".to_string(), vh.url()];
    replay_after_fixing_the_agent(t, remote).await;
}
