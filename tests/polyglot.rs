//! Agents in any language: the same agent written in Rust, Python and
//! JavaScript answers the same messages identically (conformance), and the
//! demo runs with the languages mixed.

mod common;

use std::path::PathBuf;
use std::time::Duration;

use common::*;
use serde_json::{Value, json};
use warren::client;
use warren::runtime::settings::AgentSection;
use warren::runtime::{
    AgentLimits, AgentPool, ChatMessage, Destination, Failure, InstanceMode, Message, Outgoing,
    Runtime,
};

const LANGUAGES: [&str; 3] = ["rust", "python", "js"];

/// A build of `agent` in `lang`, failing clearly if it was not built.
fn build(lang: &str, agent: &str) -> PathBuf {
    let path = match (lang, agent) {
        (_, "conformance") => root().join(format!("tests/fixtures/{lang}/conformance.wasm")),
        ("rust", _) => root().join(format!("plugins/{agent}.wasm")),
        _ => root().join(format!("plugins/{lang}/{agent}.wasm")),
    };
    assert!(
        path.exists(),
        "{} is not built: run scripts/build-guests.sh (it installs componentize-py and jco)",
        path.display()
    );
    path
}

/// Every build runs with the same settings: a plain value and a secret.
async fn pool(runtime: &std::sync::Arc<Runtime>, path: &PathBuf) -> std::sync::Arc<AgentPool> {
    unsafe { std::env::set_var("WARREN_POLYGLOT_TOKEN", "t0ken") };
    let section = AgentSection {
        config: [("greeting".to_string(), "hello from the host".to_string())].into(),
        secrets: [("token".to_string(), "env:WARREN_POLYGLOT_TOKEN".to_string())].into(),
        ..Default::default()
    };
    let limits = AgentLimits::defaults(runtime.config(), 64, 1 << 20);
    warren::registry::load_plugin_with(runtime, path, &limits, Some(&section))
        .await
        .unwrap_or_else(|e| panic!("{}: {e:#}", path.display()))
}

fn message(recipient: &str, text: &str, context: Value, sender: Option<&str>) -> Message {
    Message {
        id: "m-1".into(),
        conversation_id: "c-1".into(),
        sender: sender.map(Into::into),
        recipient: recipient.into(),
        messages: vec![
            ChatMessage {
                role: "user".into(),
                content: "earlier turn".into(),
            },
            ChatMessage {
                role: "assistant".into(),
                content: "an answer".into(),
            },
            ChatMessage {
                role: "user".into(),
                content: text.into(),
            },
        ],
        context: context.to_string(),
        attempt: 2,
        hops: 3,
    }
}

/// An answer in a comparable form: destinations, turns, and the context
/// parsed (key order is not part of the contract).
fn normalise(answer: Result<Vec<Outgoing>, Failure>) -> Value {
    match answer {
        Err(Failure::Retry(r)) => json!({ "retry": r }),
        Err(Failure::Reject(r)) => json!({ "reject": r }),
        Ok(outgoing) => Value::Array(
            outgoing
                .into_iter()
                .map(|o| {
                    json!({
                        "to": match o.to {
                            Destination::Agent(a) => json!({ "agent": a }),
                            Destination::Reply => json!("reply"),
                        },
                        "messages": o.messages.iter().map(|m| json!([m.role, m.content])).collect::<Vec<_>>(),
                        "context": o.context.map(|c| serde_json::from_str::<Value>(&c).expect("context is JSON")),
                    })
                })
                .collect(),
        ),
    }
}

/// Sends every message to each language's build of `agent`; returns the
/// Rust answers after checking the others match them exactly.
async fn conform(agent: &str, messages: &[Message]) -> Vec<Value> {
    let runtime = Runtime::new(runtime_config(InstanceMode::Reuse)).unwrap();
    let mut answers: Vec<(String, Vec<Value>)> = Vec::new();
    for lang in LANGUAGES {
        let pool = pool(&runtime, &build(lang, agent)).await;
        let mut got = Vec::new();
        for m in messages {
            let answer = pool
                .call(m)
                .await
                .unwrap_or_else(|e| panic!("{lang} {agent} failed on {m:?}: {e}"));
            got.push(normalise(answer));
        }
        answers.push((lang.to_string(), got));
    }
    let (_, rust) = &answers[0];
    for (lang, got) in &answers[1..] {
        for (i, (want, got)) in rust.iter().zip(got).enumerate() {
            assert_eq!(
                got,
                want,
                "{lang} {agent} differs from rust on message {i}: {:?}",
                messages[i].messages.last()
            );
        }
    }
    answers.swap_remove(0).1
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_language_answers_the_conformance_scenarios_identically() {
    let ctx =
        json!({"user": "alice", "n": 42, "ratio": 1.5, "nested": {"b": 1, "a": [true, null]}});
    let m = |text: &str| message("conformance", text, ctx.clone(), Some("agent_z"));
    let scenarios = [
        m("reply:hello there"),
        m("handoff:agent_b:over to you"),
        m("retry:try later"),
        m("reject:never"),
        m("log:a line for the log"),
        m("ctx:user"),
        m("ctx:n"),
        m("ctx:ratio"),
        m("ctx:absent"),
        m("meta"),
        message("conformance", "meta", json!({}), None),
        m("multi"),
        m("unknown"),
        m("reply:ünïcödé ✓"),
        m("cfg:greeting"),
        m("cfg:token"),
        m("cfg:absent"),
    ];
    let rust = conform("conformance", &scenarios).await;
    // And the shared answers are the right ones, not merely the same.
    let text = |v: &Value| v[0]["messages"].as_array().unwrap().last().unwrap()[1].clone();
    assert_eq!(text(&rust[0]), "hello there");
    assert_eq!(rust[1][0]["to"], json!({"agent": "agent_b"}));
    assert_eq!(rust[1][0]["context"]["handed_by"], "conformance");
    assert_eq!(rust[1][0]["context"]["nested"], ctx["nested"]);
    assert_eq!(rust[2], json!({"retry": "try later"}));
    assert_eq!(rust[3], json!({"reject": "never"}));
    assert_eq!(text(&rust[4]), "logged a line for the log");
    assert_eq!(text(&rust[5]), "\"alice\"");
    assert_eq!(text(&rust[6]), "42");
    assert_eq!(text(&rust[7]), "1.5");
    assert_eq!(text(&rust[8]), "missing");
    assert_eq!(text(&rust[9]), "m-1|c-1|agent_z|conformance|2|3");
    assert_eq!(text(&rust[10]), "m-1|c-1|-|conformance|2|3");
    assert_eq!(rust[11].as_array().unwrap().len(), 2);
    assert_eq!(rust[12], json!({"reject": "unknown command `unknown`"}));
    assert_eq!(text(&rust[13]), "ünïcödé ✓");
    assert_eq!(text(&rust[14]), "hello from the host");
    assert_eq!(text(&rust[15]), "t0ken");
    assert_eq!(text(&rust[16]), "unset");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_a_and_agent_b_behave_the_same_in_every_language() {
    let alice = json!({"user": "alice"});
    let a = |text: &str, ctx: &Value| message("agent_a", text, ctx.clone(), None);
    let rust = conform(
        "agent_a",
        &[
            a("I want to talk to agent B.", &alice),
            a("Please put me through to AGENT_B", &json!({})),
            a("What's the weather?", &alice),
        ],
    )
    .await;
    assert_eq!(rust[0][0]["to"], json!({"agent": "agent_b"}));
    assert_eq!(
        rust[0][0]["context"],
        json!({"user": "alice", "triaged_by": "agent_a"})
    );
    assert_eq!(rust[2][0]["to"], "reply");

    let b = |ctx: Value, sender: Option<&str>| message("agent_b", "hi", ctx, sender);
    let rust = conform(
        "agent_b",
        &[
            b(alice.clone(), Some("agent_a")),
            b(json!({"name": "bob"}), None),
            b(json!({"user": 7}), None),
            b(json!({}), None),
        ],
    )
    .await;
    let text = |v: &Value| v[0]["messages"].as_array().unwrap().last().unwrap()[1].clone();
    assert_eq!(
        text(&rust[0]),
        "Hello alice, Agent B here (agent_a sent you over). How can I help you?"
    );
    assert_eq!(
        text(&rust[1]),
        "Hello bob, Agent B here. How can I help you?"
    );
    assert_eq!(
        text(&rust[3]),
        "Hello there, Agent B here. How can I help you?"
    );
}

/// The demo's conversation with Python's agent_a handing off to
/// JavaScript's agent_b (and the other way round), on the embedded broker.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_runs_with_languages_mixed() {
    for (a_lang, b_lang) in [("python", "js"), ("js", "python"), ("rust", "python")] {
        let dir = tempfile::tempdir().unwrap();
        std::fs::copy(build(a_lang, "agent_a"), dir.path().join("agent_a.wasm")).unwrap();
        std::fs::copy(build(b_lang, "agent_b"), dir.path().join("agent_b.wasm")).unwrap();
        let t = start_in(dir, runtime_config(InstanceMode::Reuse), fast_dispatch()).await;
        let r = client::send(
            t.broker.as_ref(),
            "Agent A",
            "I want to talk to agent B.",
            json!({"user": "alice"}).as_object().unwrap().clone(),
            Some(Duration::from_secs(30)),
        )
        .await
        .unwrap();
        let reply = r.reply.unwrap();
        assert_eq!(
            reply.text, "Hello alice, Agent B here (agent_a sent you over). How can I help you?",
            "{a_lang} agent_a -> {b_lang} agent_b"
        );
        assert_eq!(reply.from.as_deref(), Some("agent_b"));
        t.host.shutdown().await;
    }
}
