//! Integration tests on the embedded broker: the whole data path with real
//! Wasm agents (plugins/) and the `chaos` fixture (tests/fixtures/).

mod common;

use std::time::Duration;

use common::*;
use serde_json::json;
use warren::broker::{Envelope, HEADER_LAST_ERROR, Route};
use warren::dispatch::{Event, user_envelope};
use warren::runtime::InstanceMode;
use warren::{client, names};

fn ctx(v: serde_json::Value) -> serde_json::Map<String, serde_json::Value> {
    v.as_object().unwrap().clone()
}

async fn send_chaos(t: &TestHost, command: &str) -> String {
    let env = user_envelope(command, Default::default(), None);
    let id = env.id.clone();
    t.host.publish("chaos", env).await.unwrap();
    id
}

#[tokio::test]
async fn handoff_from_agent_a_to_agent_b_comes_back_answered() {
    let mut t = start(&["agent_a", "agent_b", "echo"]).await;
    let outcome = client::send(
        t.broker.as_ref(),
        "Agent A",
        "I want to talk to agent B.",
        ctx(json!({"user": "alice"})),
        Some(Duration::from_secs(10)),
    )
    .await
    .unwrap();
    let reply = outcome.reply.unwrap();
    assert_eq!(reply.from.as_deref(), Some("agent_b"));
    assert_eq!(reply.hops, 2, "user → agent_a → agent_b → reply");
    assert!(reply.text.contains("Hello alice"), "{}", reply.text);
    assert_eq!(reply.body.context_variables["user"], "alice");
    assert_eq!(reply.body.context_variables["triaged_by"], "agent_a");
    // The conversation carried the whole history.
    let roles: Vec<&str> = reply
        .body
        .messages
        .iter()
        .map(|m| m.role.as_str())
        .collect();
    assert_eq!(roles, ["user", "assistant", "assistant"]);

    // Agent A's hop went to agent B's routing key, tagged with A's version.
    let (to, version) = t
        .wait_for(|e| match e {
            Event::Handled {
                agent,
                outgoing,
                version,
                ..
            } if agent == "agent_a" => Some((outgoing[0].to.clone(), version.clone())),
            _ => None,
        })
        .await;
    assert_eq!(to, "agent.agent_b");
    assert_eq!(version.len(), 12);

    // Without a handoff request agent A answers by itself.
    let outcome = client::send(
        t.broker.as_ref(),
        "agent_a",
        "hello",
        Default::default(),
        Some(Duration::from_secs(10)),
    )
    .await
    .unwrap();
    assert_eq!(outcome.reply.unwrap().from.as_deref(), Some("agent_a"));
}

#[tokio::test]
async fn seed_body_with_extra_keys_is_accepted() {
    let t = start(&["agent_b"]).await;
    let (reply_q, mut replies) = t.broker.reply_queue().await.unwrap();
    let body = br#"{"messages":[{"role":"user","content":"hi","name":"x"}],
        "context_variables":{"user":"bob"},"from_agent":"Agent A","agent":"Agent B","extra":{"k":1}}"#;
    let env = Envelope {
        id: "seed-1".into(),
        conversation_id: "seed-1".into(),
        reply_to: Some(reply_q),
        attempt: 1,
        body: body.to_vec(),
        ..Default::default()
    };
    t.host.publish("agent_b", env).await.unwrap();
    let d = tokio::time::timeout(Duration::from_secs(10), replies.next())
        .await
        .unwrap()
        .unwrap();
    let body = warren::wire::Body::decode(&d.envelope.body).unwrap();
    assert!(
        body.messages
            .last()
            .unwrap()
            .content
            .text()
            .unwrap()
            .contains("Hello bob")
    );
    // `from_agent` in the body is the sender when no header says otherwise.
    assert!(
        body.messages
            .last()
            .unwrap()
            .content
            .text()
            .unwrap()
            .contains("Agent A sent you over")
    );
    assert_eq!(d.envelope.conversation_id, "seed-1");
}

#[tokio::test]
async fn non_json_body_is_dead_lettered_with_reason() {
    let mut t = start(&["agent_a"]).await;
    let env = Envelope {
        id: "bad-1".into(),
        conversation_id: "bad-1".into(),
        attempt: 1,
        body: b"not json at all".to_vec(),
        ..Default::default()
    };
    t.host.publish("agent_a", env).await.unwrap();
    let reason = t.dead_letter_of("bad-1").await;
    assert!(
        reason.contains("undecodable body") && reason.contains("not valid JSON"),
        "{reason}"
    );
    let dl = t.broker.dead_letters("agent_a").await.unwrap();
    assert_eq!(dl.len(), 1);
    assert_eq!(dl[0].envelope.body, b"not json at all");
    assert_eq!(dl[0].reason, reason);
}

#[tokio::test]
async fn reject_is_dead_lettered_at_once() {
    let mut t = start(&["chaos"]).await;
    let id = send_chaos(&t, "reject:this input is wrong").await;
    let reason = t.dead_letter_of(&id).await;
    assert_eq!(reason, "rejected by agent: this input is wrong");
    let dl = t.broker.dead_letters("chaos").await.unwrap();
    assert_eq!(dl[0].envelope.attempt, 1, "a reject is never retried");
}

#[tokio::test]
async fn retry_is_redelivered_with_attempt_two_then_succeeds() {
    let mut t = start(&["chaos"]).await;
    let (reply_q, mut replies) = t.broker.reply_queue().await.unwrap();
    let env = user_envelope("flaky:2", Default::default(), Some(reply_q));
    let id = env.id.clone();
    t.host.publish("chaos", env).await.unwrap();
    let (attempt, reason) = t
        .wait_for(|e| match e {
            Event::Retrying {
                id: i,
                attempt,
                reason,
                ..
            } if *i == id => Some((*attempt, reason.clone())),
            _ => None,
        })
        .await;
    assert_eq!(attempt, 1);
    assert!(reason.contains("flaky: attempt 1 of 2"), "{reason}");
    let d = tokio::time::timeout(Duration::from_secs(10), replies.next())
        .await
        .unwrap()
        .unwrap();
    let body = warren::wire::Body::decode(&d.envelope.body).unwrap();
    assert_eq!(
        body.messages.last().unwrap().content.text(),
        Some("ok on attempt 2")
    );
}

#[tokio::test]
async fn retry_until_max_attempts_then_dead_lettered() {
    let mut t = start(&["chaos"]).await;
    let id = send_chaos(&t, "retry:backend down").await;
    let mut attempts = Vec::new();
    let reason = t
        .wait_for(|e| match e {
            Event::Retrying { id: i, attempt, .. } if *i == id => {
                attempts.push(*attempt);
                None
            }
            Event::DeadLettered { id: i, reason, .. } if *i == id => Some(reason.clone()),
            _ => None,
        })
        .await;
    assert_eq!(attempts, [1, 2], "max_attempts = 3: two retries");
    assert!(
        reason.contains("agent asked to retry: backend down"),
        "{reason}"
    );
    assert!(reason.contains("gave up after 3 attempts"), "{reason}");
    let dl = t.broker.dead_letters("chaos").await.unwrap();
    assert_eq!(dl[0].envelope.attempt, 3);
    assert_eq!(
        dl[0].envelope.headers[HEADER_LAST_ERROR],
        "agent asked to retry: backend down"
    );
}

#[tokio::test]
async fn hop_loop_is_dead_lettered() {
    let mut t = start(&["chaos"]).await;
    let id = send_chaos(&t, "loop").await;
    let _ = id;
    let reason = t
        .wait_for(|e| match e {
            Event::DeadLettered { reason, .. } => Some(reason.clone()),
            _ => None,
        })
        .await;
    assert!(
        reason.contains("hop limit exceeded: 7 hops (max 6)"),
        "{reason}"
    );
    assert!(reason.contains("looping"), "{reason}");
}

#[tokio::test]
async fn trap_is_dead_lettered_and_host_keeps_serving() {
    let mut t = start(&["chaos", "echo"]).await;
    let id = send_chaos(&t, "trap").await;
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
    assert!(retried, "a trap is retried once on a fresh instance");
    // The guest's own error leads: where it panicked and why, no runtime noise.
    assert!(
        reason.starts_with("guest failed: panicked at src/lib.rs:")
            && reason.contains(": chaos was told to trap"),
        "{reason}"
    );
    assert!(
        !reason.contains("unreachable") && !reason.contains("RUST_BACKTRACE"),
        "{reason}"
    );
    assert!(reason.contains("gave up after 2 attempts"), "{reason}");
    // The guest's whole stderr of that call stays with the dead letter.
    let dead = t.broker.dead_letters("chaos").await.unwrap();
    let trace = &dead[0].envelope.headers["x-warren-guest-trace"];
    assert!(trace.contains("chaos was told to trap"), "{trace}");
    // ... and `warren dlq show` shows it.
    let entry = warren::dlq::Entry::from(&dead[0]);
    assert_eq!(entry.guest_trace.as_deref(), Some(trace.as_str()));

    // The same agent and its neighbour still answer.
    let r = client::send(
        t.broker.as_ref(),
        "chaos",
        "hello",
        Default::default(),
        Some(Duration::from_secs(10)),
    )
    .await
    .unwrap();
    assert_eq!(r.reply.unwrap().text, "attempt 1 hops 0");
    let r = client::send(
        t.broker.as_ref(),
        "echo",
        "ping",
        Default::default(),
        Some(Duration::from_secs(10)),
    )
    .await
    .unwrap();
    assert_eq!(r.reply.unwrap().text, "ping");
}

#[tokio::test]
async fn invalid_output_and_unknown_destination_are_dead_lettered() {
    let mut t = start(&["chaos"]).await;
    let id = send_chaos(&t, "bad-context").await;
    let reason = t.dead_letter_of(&id).await;
    assert!(
        reason.starts_with("invalid output from agent: outgoing message #0"),
        "{reason}"
    );
    assert!(reason.contains("context must be a JSON object"), "{reason}");

    // A handoff to an agent nobody hosts is kept, not lost: the outgoing
    // message lands in the sender's dead-letter queue, and the input is acked.
    let id = send_chaos(&t, "to:ghost").await;
    let reason = t
        .wait_for(|e| match e {
            Event::DeadLettered { reason, .. } if reason.contains("ghost") => Some(reason.clone()),
            _ => None,
        })
        .await;
    assert!(reason.contains("no such agent `ghost`"), "{reason}");
    let dl = t.broker.dead_letters("chaos").await.unwrap();
    let kept = dl.iter().find(|d| d.reason.contains("ghost")).unwrap();
    assert_eq!(kept.envelope.id, warren::dispatch::derive_id(&id, 0));
}

#[tokio::test]
async fn plugin_not_implementing_the_world_is_rejected_others_keep_working() {
    let dir = plugins_dir(&["agent_a", "agent_b"]);
    // A component that exports nothing, a core module, and garbage.
    std::fs::write(dir.path().join("empty.wasm"), b"\0asm\x0d\x00\x01\x00").unwrap();
    std::fs::write(dir.path().join("core.wasm"), b"\0asm\x01\x00\x00\x00").unwrap();
    std::fs::write(dir.path().join("junk.wasm"), b"definitely not wasm").unwrap();
    std::fs::write(dir.path().join("notes.txt"), b"ignored").unwrap();
    let t = start_in(dir, runtime_config(InstanceMode::Reuse), fast_dispatch()).await;

    let status = t.host.status().await.unwrap();
    let err = |agent: &str| {
        status
            .agents
            .iter()
            .find(|a| a.queue.agent == agent)
            .and_then(|a| a.error.clone())
            .unwrap_or_else(|| panic!("no error for {agent}"))
    };
    let e = err("empty");
    assert!(
        e.contains("does not implement world warren:agent/agent@0.2.0"),
        "{e}"
    );
    assert!(
        e.contains("does not export `on-message` (it exports: nothing)"),
        "{e}"
    );
    assert!(err("core").contains("a core WebAssembly module, not a component"));
    assert!(err("junk").contains("not a WebAssembly file"));
    assert!(status.agents.iter().all(|a| a.queue.agent != "notes"));

    let r = client::send(
        t.broker.as_ref(),
        "agent_a",
        "I want to talk to agent B.",
        ctx(json!({"user":"carol"})),
        Some(Duration::from_secs(10)),
    )
    .await
    .unwrap();
    assert!(r.reply.unwrap().text.contains("Hello carol"));
}

#[tokio::test]
async fn status_reports_the_seed_queue_view() {
    let t = start(&["agent_a", "agent_b"]).await;
    let status = t.host.status().await.unwrap();
    assert!(status.broker.contains("embedded"));
    let a = status
        .agents
        .iter()
        .find(|a| a.queue.agent == "agent_a")
        .unwrap();
    assert_eq!(a.queue.queue, "agent_agent_a_queue");
    assert_eq!(a.queue.routing_key, "agent.agent_a");
    assert_eq!(a.queue.consumer_count, 2);
    assert_eq!(a.queue.message_count, 0);
    assert_eq!(a.queue.status, "running");
    assert_eq!(a.version.as_ref().unwrap().len(), 12);
    let table = status.table();
    assert!(
        table.contains("agent_agent_b_queue") && table.contains("consumer_count"),
        "{table}"
    );
    let json = serde_json::to_value(&status).unwrap();
    assert_eq!(json["agents"][0]["queue"], "agent_agent_a_queue");
    assert_eq!(json["agents"][0]["message_count"], 0);
}

#[tokio::test]
async fn fresh_instance_mode_handles_messages() {
    let t = start_with(
        &["agent_a", "agent_b"],
        runtime_config(InstanceMode::Fresh),
        fast_dispatch(),
    )
    .await;
    for user in ["dan", "eve", "fay"] {
        let r = client::send(
            t.broker.as_ref(),
            "agent_a",
            "agent b please",
            ctx(json!({"user": user})),
            Some(Duration::from_secs(10)),
        )
        .await
        .unwrap();
        assert!(r.reply.unwrap().text.contains(&format!("Hello {user}")));
    }
    let status = t.host.status().await.unwrap();
    let b = status
        .agents
        .iter()
        .find(|a| a.queue.agent == "agent_b")
        .unwrap();
    assert_eq!(b.calls, 3);
}

/// An agent whose calls take milliseconds of CPU gets each call in a task
/// of its own (so one consumer's calls spread over the cores); a quick
/// agent's calls stay in the consumer's task (a task each would cost as much
/// as the call).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heavy_calls_get_a_task_each_quick_ones_do_not() {
    let t = start(&["chaos", "echo"]).await;
    for i in 0..20 {
        assert_eq!(
            answer(t.broker.as_ref(), "echo", &format!("m{i}"), 10).await,
            format!("m{i}")
        );
    }
    for _ in 0..4 {
        // Tens of milliseconds of arithmetic: heavy on any machine.
        let text = answer(t.broker.as_ref(), "chaos", "burn:40000000", 30).await;
        assert!(text.starts_with("burned 40000000 rounds"), "{text}");
    }
    let registry = t.host.registry();
    let (echo, chaos) = (
        registry.get("echo").unwrap(),
        registry.get("chaos").unwrap(),
    );
    assert_eq!(
        echo.weight().spread_calls(),
        0,
        "{:?}",
        echo.weight().average()
    );
    assert!(chaos.weight().heavy(), "{:?}", chaos.weight().average());
    // The first call had no history and ran in the consumer's task.
    assert!(
        chaos.weight().spread_calls() >= 2,
        "{}",
        chaos.weight().spread_calls()
    );
}

#[tokio::test]
async fn guest_output_and_log_do_not_disturb_the_call() {
    let t = start(&["chaos"]).await;
    let r = client::send(
        t.broker.as_ref(),
        "chaos",
        "log:hello from the guest",
        Default::default(),
        Some(Duration::from_secs(10)),
    )
    .await
    .unwrap();
    assert_eq!(r.reply.unwrap().text, "logged hello from the guest");
}

#[tokio::test]
async fn redelivered_input_produces_the_same_outgoing_ids() {
    let t = start(&["echo"]).await;
    let (q, mut replies) = t.broker.reply_queue().await.unwrap();
    let mut env = user_envelope("same", Default::default(), Some(q));
    env.id = "fixed-id".into();
    t.host.publish("echo", env.clone()).await.unwrap();
    t.host.publish("echo", env).await.unwrap();
    let a = tokio::time::timeout(Duration::from_secs(10), replies.next())
        .await
        .unwrap()
        .unwrap();
    let b = tokio::time::timeout(Duration::from_secs(10), replies.next())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(a.envelope.id, b.envelope.id);
    assert_eq!(a.envelope.id, warren::dispatch::derive_id("fixed-id", 0));
}

#[tokio::test]
async fn unknown_agent_send_fails_clearly() {
    let t = start(&["echo"]).await;
    let e = client::send(t.broker.as_ref(), "nobody", "hi", Default::default(), None)
        .await
        .unwrap_err();
    assert!(format!("{e:#}").contains("no such agent `nobody`"), "{e:#}");
    let _ = t
        .broker
        .publish(
            &Route::Agent("echo".into()),
            user_envelope("x", Default::default(), None),
        )
        .await
        .unwrap();
    assert_eq!(names::queue("echo"), "agent_echo_queue");
}
