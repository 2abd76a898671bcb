//! The sandbox: hostile guests (tests/fixtures/chaos) are stopped with a
//! reason naming the failure, find no way out, and never take the host down.

mod common;

use std::time::Duration;

use common::*;
use warren::client;
use warren::dispatch::{Event, user_envelope};
use warren::runtime::{InstanceMode, RuntimeConfig};

fn tight() -> RuntimeConfig {
    RuntimeConfig {
        deadline: Duration::from_millis(300),
        max_memory: 32 << 20,
        ..runtime_config(InstanceMode::Reuse)
    }
}

async fn dead_letter_for(t: &mut TestHost, command: &str) -> String {
    let env = user_envelope(command, Default::default(), None);
    let id = env.id.clone();
    t.host.publish("chaos", env).await.unwrap();
    t.dead_letter_of(&id).await
}

async fn still_serving(t: &TestHost) {
    for agent in ["chaos", "echo"] {
        let r = client::send(
            t.broker.as_ref(),
            agent,
            "still there?",
            Default::default(),
            Some(Duration::from_secs(10)),
        )
        .await
        .unwrap_or_else(|e| panic!("{agent} stopped serving: {e:#}"));
        assert!(r.reply.is_some());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn infinite_loop_is_stopped_by_the_deadline() {
    let mut t = start_with(&["chaos", "echo"], tight(), fast_dispatch()).await;
    let reason = dead_letter_for(&mut t, "spin").await;
    assert!(
        reason.starts_with("guest failed: deadline exceeded"),
        "{reason}"
    );
    assert!(reason.contains("gave up after 2 attempts"), "{reason}");
    still_serving(&t).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_bomb_is_stopped_by_the_memory_limit() {
    let mut t = start_with(&["chaos", "echo"], tight(), fast_dispatch()).await;
    let reason = dead_letter_for(&mut t, "bomb").await;
    assert!(
        reason.starts_with("guest failed: memory limit hit"),
        "{reason}"
    );
    still_serving(&t).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stack_overflow_is_a_named_failure() {
    let mut t = start_with(&["chaos", "echo"], tight(), fast_dispatch()).await;
    let reason = dead_letter_for(&mut t, "recurse").await;
    assert!(
        reason.starts_with("guest failed: stack overflow"),
        "{reason}"
    );
    still_serving(&t).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_guest_finds_no_files_environment_or_network() {
    let mut t = start_with(&["chaos"], tight(), fast_dispatch()).await;
    // Something to find, were the environment inherited.
    unsafe { std::env::set_var("WARREN_TEST_SECRET", "hunter2") };
    let r = client::send(
        t.broker.as_ref(),
        "chaos",
        "escape",
        Default::default(),
        Some(Duration::from_secs(10)),
    )
    .await
    .unwrap();
    let report = r.reply.unwrap().text;
    assert!(
        !report.contains("OPEN"),
        "the sandbox let something through: {report}"
    );
    assert!(report.contains("fs /etc/passwd: denied"), "{report}");
    assert!(report.contains("env: empty"), "{report}");
    assert!(report.contains("args: 0"), "{report}");
    assert!(report.contains("net 127.0.0.1:5672: denied"), "{report}");
    assert!(report.contains("dns localhost: denied"), "{report}");
    // Nothing was dead-lettered: denial is an answer, not a crash.
    assert!(t.broker.dead_letters("chaos").await.unwrap().is_empty());
    let _ = t
        .events
        .try_recv()
        .map(|e| assert!(!matches!(e, Event::DeadLettered { .. })));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn output_and_input_limits_dead_letter_with_reasons() {
    // fast_dispatch: at most 8 outgoing messages, 64 KiB bodies.
    let mut t = start_with(&["chaos"], tight(), fast_dispatch()).await;
    let reason = dead_letter_for(&mut t, "fanout:9").await;
    assert_eq!(
        reason,
        "invalid output from agent: 9 outgoing messages (max 8)"
    );
    let reason = dead_letter_for(&mut t, "big:70000").await;
    assert!(
        reason.contains("outgoing message #0 is too large"),
        "{reason}"
    );
    let too_big = format!("x{}", "y".repeat(70_000));
    let reason = dead_letter_for(&mut t, &too_big).await;
    assert!(reason.starts_with("message too large:"), "{reason}");
    // Within the limits, the same commands work.
    let r = client::send(
        t.broker.as_ref(),
        "chaos",
        "fanout:8",
        Default::default(),
        Some(Duration::from_secs(10)),
    )
    .await
    .unwrap();
    assert!(r.reply.is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failures_are_counted_by_kind_with_peak_memory() {
    let mut t = start_with(&["chaos"], tight(), fast_dispatch()).await;
    dead_letter_for(&mut t, "spin").await;
    dead_letter_for(&mut t, "bomb").await;
    dead_letter_for(&mut t, "trap").await;
    dead_letter_for(&mut t, "reject:no").await;
    let status = t.host.status().await.unwrap();
    let chaos = &status.agents[0];
    // Each guest error is retried once on a fresh instance: two of each.
    assert_eq!(chaos.guest_errors.deadline, 2, "{chaos:?}");
    assert_eq!(chaos.guest_errors.memory_limit, 2, "{chaos:?}");
    assert_eq!(chaos.guest_errors.trap, 2, "{chaos:?}");
    assert_eq!(chaos.failures, 1, "{chaos:?}");
    assert_eq!(chaos.queue.dead_letter_count, 4);
    assert!(
        chaos.peak_memory_bytes >= 16 << 20,
        "the bomb's peak is seen: {chaos:?}"
    );
    assert!(
        chaos.peak_memory_bytes <= 32 << 20,
        "and never above the limit: {chaos:?}"
    );
    assert!(chaos.guest_ms > 0.0);
    assert!(
        chaos.runaway_calls >= 2,
        "both spins ran past throttle_after: {chaos:?}"
    );
    let table = status.table();
    assert!(
        table.contains("peak_mem") && table.contains("errors"),
        "{table}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_manifest_overrides_limits_per_agent_and_a_bad_one_is_refused() {
    let dir = plugins_dir(&["chaos", "echo"]);
    // chaos gets a tighter output limit than the host default (8)...
    std::fs::write(
        dir.path().join("chaos.toml"),
        "[limits]\nmax_outgoing = 2\ndeadline_ms = 100\n",
    )
    .unwrap();
    // ...and a typo in echo's manifest keeps echo from loading, with the reason.
    std::fs::write(dir.path().join("echo.toml"), "[limits]\ndeadline = 100\n").unwrap();
    let mut t = start_in(dir, tight(), fast_dispatch()).await;
    let reason = dead_letter_for(&mut t, "fanout:3").await;
    assert_eq!(
        reason,
        "invalid output from agent: 3 outgoing messages (max 2)"
    );
    let chaos = t.host.registry().get("chaos").unwrap();
    assert_eq!(chaos.limits().deadline, Duration::from_millis(100));
    assert_eq!(
        chaos.limits().max_memory,
        32 << 20,
        "unset keys keep the host default"
    );
    let status = t.host.status().await.unwrap();
    let echo = status
        .agents
        .iter()
        .find(|a| a.queue.agent == "echo")
        .unwrap();
    let error = echo.error.as_deref().unwrap();
    assert!(
        error.contains("echo.toml") && error.contains("unknown field `deadline`"),
        "{error}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spinning_guests_do_not_stall_the_agents_beside_them() {
    let runtime = RuntimeConfig {
        deadline: Duration::from_secs(2),
        ..tight()
    };
    let mut t = start_with(&["chaos", "echo"], runtime, fast_dispatch()).await;
    // Two spinning calls: as many as this runtime has worker threads.
    for _ in 0..2 {
        t.host
            .publish("chaos", user_envelope("spin", Default::default(), None))
            .await
            .unwrap();
    }
    tokio::time::sleep(Duration::from_millis(50)).await;
    t.host
        .publish("echo", user_envelope("ping", Default::default(), None))
        .await
        .unwrap();
    // Echo is answered while both spinners still run (they yield to the
    // executor every epoch tick): its event comes before theirs.
    let first = t
        .wait_for(|e| match e {
            Event::Handled { agent, .. } if agent == "echo" => Some("echo answered"),
            Event::Retrying { agent, .. } | Event::DeadLettered { agent, .. }
                if agent == "chaos" =>
            {
                Some("a spinner was interrupted first")
            }
            _ => None,
        })
        .await;
    assert_eq!(first, "echo answered");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stricter_deadline_applies_to_one_agent_only() {
    let dir = plugins_dir(&["chaos"]);
    // The same component twice: `strict` with a 100 ms deadline, `chaos` with the host's 2 s.
    std::fs::copy(guest("chaos"), dir.path().join("strict.wasm")).unwrap();
    std::fs::write(
        dir.path().join("strict.toml"),
        "[limits]\ndeadline_ms = 100\n",
    )
    .unwrap();
    let runtime = RuntimeConfig {
        deadline: Duration::from_secs(2),
        ..tight()
    };
    let mut t = start_in(dir, runtime, fast_dispatch()).await;
    // Blocked in a host call (a WASI sleep) past the deadline: interrupted too.
    let env = user_envelope("sleep:400", Default::default(), None);
    let id = env.id.clone();
    t.host.publish("strict", env).await.unwrap();
    let reason = t.dead_letter_of(&id).await;
    assert!(
        reason.starts_with("guest failed: deadline exceeded"),
        "{reason}"
    );
    // The other agent, same code, same work, the host's deadline: answered.
    let r = client::send(
        t.broker.as_ref(),
        "chaos",
        "sleep:400",
        Default::default(),
        Some(Duration::from_secs(10)),
    )
    .await
    .unwrap();
    assert_eq!(r.reply.unwrap().text, "slept 400 ms");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn guest_output_is_rate_limited_not_fatal() {
    let t = start_with(&["chaos"], tight(), fast_dispatch()).await;
    let r = client::send(
        t.broker.as_ref(),
        "chaos",
        "flood:3000",
        Default::default(),
        Some(Duration::from_secs(10)),
    )
    .await
    .unwrap();
    assert_eq!(r.reply.unwrap().text, "printed 3000 lines");
    let status = t.host.status().await.unwrap();
    let dropped = status.agents[0].log_lines_dropped;
    // A burst of 200 lines passes, the rest of a fast flood is dropped and counted.
    assert!(dropped >= 2000 && dropped < 3000, "dropped {dropped}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fuel_bounds_the_work_of_one_call() {
    let dir = plugins_dir(&["chaos"]);
    // The same component twice; `frugal` gets less fuel than the host default.
    std::fs::copy(guest("chaos"), dir.path().join("frugal.wasm")).unwrap();
    std::fs::write(dir.path().join("frugal.toml"), "[limits]\nfuel = 2000000\n").unwrap();
    let runtime = RuntimeConfig {
        fuel: Some(50_000_000),
        ..tight()
    };
    let mut t = start_in(dir, runtime, fast_dispatch()).await;
    // A spinning guest runs out of fuel before its deadline.
    let reason = dead_letter_for(&mut t, "spin").await;
    assert!(
        reason.starts_with("guest failed: fuel exhausted"),
        "{reason}"
    );
    // Finite work within the budget is answered...
    let r = client::send(
        t.broker.as_ref(),
        "chaos",
        "burn:200000",
        Default::default(),
        Some(Duration::from_secs(10)),
    )
    .await
    .unwrap();
    assert!(r.reply.unwrap().text.starts_with("burned 200000 rounds"));
    // ...and the same work is too much for the agent whose manifest says less.
    let env = user_envelope("burn:200000", Default::default(), None);
    let id = env.id.clone();
    t.host.publish("frugal", env).await.unwrap();
    let reason = t.dead_letter_of(&id).await;
    assert!(
        reason.starts_with("guest failed: fuel exhausted"),
        "{reason}"
    );
    let status = t.host.status().await.unwrap();
    let frugal = status
        .agents
        .iter()
        .find(|a| a.queue.agent == "frugal")
        .unwrap();
    assert_eq!(frugal.guest_errors.fuel, 2, "{frugal:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_manifest_asking_for_fuel_needs_a_metering_host() {
    let dir = plugins_dir(&["chaos"]);
    std::fs::write(dir.path().join("chaos.toml"), "[limits]\nfuel = 1000\n").unwrap();
    let t = start_in(dir, tight(), fast_dispatch()).await;
    let status = t.host.status().await.unwrap();
    let error = status.agents[0].error.as_deref().unwrap();
    assert!(error.contains("start it with --fuel"), "{error}");
}
