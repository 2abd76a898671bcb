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

/// The small things: a log written to a file has no colour codes; the
/// demo lists every hop with nothing left unacked; a taken HTTP port is
/// found before any agent is loaded; `status --wait-ready` waits for a
/// starting host.
#[test]
fn logs_to_a_file_are_plain_and_the_demo_shows_every_hop() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_warren"))
        .args(["demo", "--plugins", "plugins"])
        .current_dir(root())
        .env("WARREN_CACHE_DIR", cache_dir())
        .env_remove("RUST_LOG")
        .env_remove("NO_COLOR")
        .output()
        .unwrap();
    let stdout = succeeded(&out);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !stderr.contains('\x1b'),
        "colour codes in a log that is not a terminal: {stderr}"
    );
    assert!(stdout.contains("hands off to agent_b"), "{stdout}");
    assert!(stdout.contains("agent_b (version"), "{stdout}");
    assert!(stdout.contains("replies to the user"), "{stdout}");
    // The table: agent_b has acked its message by the time it is printed.
    let row = stdout
        .lines()
        .find(|l| l.starts_with("agent_agent_b_queue"))
        .unwrap_or_else(|| panic!("{stdout}"));
    let unacked: Vec<&str> = row.split_whitespace().collect();
    assert_eq!(unacked[4], "0", "agent_b unacked: {row}");
}

#[test]
fn a_taken_port_is_found_before_loading_and_wait_ready_waits() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let dir = tempfile::tempdir().unwrap();
    let warren = |args: &[&str]| {
        let mut c = std::process::Command::new(env!("CARGO_BIN_EXE_warren"));
        c.args(args)
            .current_dir(root())
            .env("WARREN_CACHE_DIR", cache_dir())
            .env("WARREN_CONTROL", dir.path().join("control.sock"))
            .env_remove("WARREN_AMQP_URL")
            .env_remove("RUST_LOG");
        c
    };
    let out = warren(&["run", "--plugins", "plugins", "--http", &addr])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("binding the HTTP endpoint"), "{stderr}");
    assert!(
        !stderr.contains("hosting"),
        "found only after loading: {stderr}"
    );

    // Nothing running: --wait-ready gives up after its time, non-zero.
    let out = warren(&["status", "--wait-ready", "1"]).output().unwrap();
    assert!(!out.status.success());
    // A host starting meanwhile: --wait-ready returns once it serves.
    let host = Running::new(
        warren(&["run", "--plugins", "plugins", "--http", "127.0.0.1:0"])
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    );
    let table = succeeded(&warren(&["status", "--wait-ready", "30"]).output().unwrap());
    assert!(table.contains("agent_agent_a_queue"), "{table}");
    succeeded(
        &warren(&["send", "echo", "ping", "--wait"])
            .output()
            .unwrap(),
    );
    host.stop();
}
