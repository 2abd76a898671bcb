//! Agents in any language: the same agent written in Rust, Python and
//! JavaScript answers the same messages identically (conformance, tool-call
//! histories included), the 0.1.0 builds of the first release still answer
//! the first scenarios the same in a 0.2 host, and the demo runs with the
//! languages mixed.

mod common;

use std::path::PathBuf;
use std::time::Duration;

use common::*;
use serde_json::{Value, json};
use warren::client;
use warren::runtime::settings::AgentSection;
use warren::runtime::{
    AgentLimits, AgentPool, ChatMessage, Destination, Failure, FunctionCall, InstanceMode, Message,
    Outgoing, Runtime, ToolCall,
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

fn turn(role: &str, content: Option<&str>) -> ChatMessage {
    ChatMessage {
        role: role.into(),
        content: content.map(Into::into),
        name: None,
        tool_calls: None,
        tool_call_id: None,
        extra: None,
    }
}

/// A history with a named user turn, an assistant tool call (content null,
/// an extra key) and its result, an answer, then the user's `text`.
fn history(text: &str) -> Vec<ChatMessage> {
    vec![
        ChatMessage {
            name: Some("alice".into()),
            ..turn("user", Some("earlier turn"))
        },
        ChatMessage {
            tool_calls: Some(vec![ToolCall {
                id: "call_1".into(),
                kind: "function".into(),
                function: FunctionCall {
                    name: "lookup".into(),
                    arguments: r#"{"q": "x"}"#.into(),
                },
            }]),
            extra: Some(r#"{"refusal":null}"#.into()),
            ..turn("assistant", None)
        },
        ChatMessage {
            tool_call_id: Some("call_1".into()),
            ..turn("tool", Some("found"))
        },
        turn("assistant", Some("an answer")),
        turn("user", Some(text)),
    ]
}

fn message(recipient: &str, text: &str, context: Value, sender: Option<&str>) -> Message {
    Message {
        id: "m-1".into(),
        conversation_id: "c-1".into(),
        sender: sender.map(Into::into),
        recipient: recipient.into(),
        messages: history(text),
        context: context.to_string(),
        attempt: 2,
        hops: 3,
        model: Some("gpt-test".into()),
        extra: r#"{"max_turns":"Infinity","stream":false,"n":3}"#.into(),
    }
}

fn json_text(text: &Option<String>) -> Value {
    text.as_deref()
        .map(|t| serde_json::from_str::<Value>(t).expect("JSON text"))
        .unwrap_or(Value::Null)
}

/// A chat turn in a comparable form (extra parsed: key order is not part of
/// the contract).
fn turn_json(m: &ChatMessage) -> Value {
    json!({
        "role": m.role,
        "content": m.content,
        "name": m.name,
        "tool_calls": m.tool_calls.as_ref().map(|calls| calls.iter().map(|c| {
            json!([c.id, c.kind, c.function.name, c.function.arguments])
        }).collect::<Vec<_>>()),
        "tool_call_id": m.tool_call_id,
        "extra": json_text(&m.extra),
    })
}

/// An answer in a comparable form: destinations, turns, and the context,
/// model and extra keys parsed.
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
                        "messages": o.messages.iter().map(turn_json).collect::<Vec<_>>(),
                        "context": json_text(&o.context),
                        "model": o.model,
                        "extra": json_text(&o.extra),
                    })
                })
                .collect(),
        ),
    }
}

/// Sends every message to each language's build of `agent`; returns the
/// Rust answers after checking the others match them exactly.
async fn conform(agent: &str, messages: &[Message]) -> Vec<Value> {
    let builds: Vec<(String, PathBuf)> = LANGUAGES
        .iter()
        .map(|lang| (lang.to_string(), build(lang, agent)))
        .collect();
    conform_builds(agent, &builds, messages).await
}

/// [`conform`] over any builds; the first one's answers are the reference.
async fn conform_builds(
    agent: &str,
    builds: &[(String, PathBuf)],
    messages: &[Message],
) -> Vec<Value> {
    let runtime = Runtime::new(runtime_config(InstanceMode::Reuse)).unwrap();
    let mut answers: Vec<(String, Vec<Value>)> = Vec::new();
    for (label, path) in builds {
        let pool = pool(&runtime, path).await;
        let mut got = Vec::new();
        for m in messages {
            let answer = pool
                .call(m)
                .await
                .unwrap_or_else(|e| panic!("{label} {agent} failed on {m:?}: {e}"));
            got.push(normalise(answer));
        }
        answers.push((label.clone(), got));
    }
    let (_, reference) = &answers[0];
    for (label, got) in &answers[1..] {
        for (i, (want, got)) in reference.iter().zip(got).enumerate() {
            assert_eq!(
                got,
                want,
                "{label} {agent} differs from {} on message {i}: {:?}",
                answers[0].0,
                messages[i].messages.last()
            );
        }
    }
    answers.swap_remove(0).1
}

/// The first release's scenarios (the commands of contract 0.1).
fn first_scenarios(ctx: &Value) -> Vec<Message> {
    let m = |text: &str| message("conformance", text, ctx.clone(), Some("agent_z"));
    vec![
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
    ]
}

fn context() -> Value {
    json!({"user": "alice", "n": 42, "ratio": 1.5, "nested": {"b": 1, "a": [true, null]}})
}

/// The text of the last turn of an answer's first message.
fn text(v: &Value) -> Value {
    v[0]["messages"].as_array().unwrap().last().unwrap()["content"].clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_language_answers_the_conformance_scenarios_identically() {
    let ctx = context();
    let m = |text: &str| message("conformance", text, ctx.clone(), Some("agent_z"));
    let mut scenarios = first_scenarios(&ctx);
    scenarios.extend([
        m("history"),
        m(r#"toolcall:get_weather:{"city": "Oslo"}"#),
        m("model"),
        m("extra:stream"),
        m("extra:absent"),
        m("setmodel:gpt-x"),
        m("openai"),
    ]);
    let rust = conform("conformance", &scenarios).await;
    // And the shared answers are the right ones, not merely the same.
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
    // Every reply carries the whole history: tool calls, ids, names, null
    // content and extra keys as they came.
    let sent: Vec<Value> = history("reply:hello there").iter().map(turn_json).collect();
    assert_eq!(rust[0][0]["messages"].as_array().unwrap()[..5], sent[..]);
    let sent: Vec<Value> = history("history").iter().map(turn_json).collect();
    assert_eq!(rust[17][0]["messages"], json!(sent));
    let calls = rust[18][0]["messages"].as_array().unwrap();
    assert_eq!(calls.len(), 7);
    assert_eq!(
        calls[5],
        json!({"role": "assistant", "content": null, "name": null, "tool_call_id": null, "extra": null,
               "tool_calls": [["call_3", "function", "get_weather", r#"{"city": "Oslo"}"#]]})
    );
    assert_eq!(calls[6]["tool_call_id"], "call_3");
    assert_eq!(calls[6]["content"], "done");
    assert_eq!(text(&rust[19]), "gpt-test");
    assert_eq!(text(&rust[20]), "false");
    assert_eq!(text(&rust[21]), "missing");
    assert_eq!(rust[22][0]["to"], json!({"agent": "agent_b"}));
    assert_eq!(rust[22][0]["model"], "gpt-x");
    assert_eq!(rust[22][0]["extra"], json!({"set_by": "conformance"}));
    let openai: Value = serde_json::from_str(text(&rust[23]).as_str().unwrap()).unwrap();
    assert_eq!(
        openai,
        json!([
            {"role": "user", "content": "earlier turn", "name": "alice"},
            {"role": "assistant", "content": null, "refusal": null,
             "tool_calls": [{"id": "call_1", "type": "function", "function": {"name": "lookup", "arguments": r#"{"q": "x"}"#}}]},
            {"role": "tool", "content": "found", "tool_call_id": "call_1"},
            {"role": "assistant", "content": "an answer"},
            {"role": "user", "content": "openai"}
        ])
    );
}

/// The 0.1.0 builds of the first release (copies in tests/fixtures/v0.1) run
/// unchanged in a 0.2 host and answer the first scenarios exactly as the 0.2
/// build does: even the tool-call turns they cannot see come back whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn components_of_contract_0_1_answer_the_first_scenarios_unchanged() {
    let old = root().join("tests/fixtures/v0.1/conformance.wasm");
    let builds = [
        ("rust 0.2".to_string(), build("rust", "conformance")),
        ("rust 0.1".to_string(), old.clone()),
    ];
    let answers = conform_builds("conformance", &builds, &first_scenarios(&context())).await;
    assert_eq!(text(&answers[0]), "hello there");
    let runtime = Runtime::new(runtime_config(InstanceMode::Reuse)).unwrap();
    let pool = pool(&runtime, &old).await;
    assert_eq!(pool.module().contract.to_string(), "0.1.0");
    let pool2 = self::pool(&runtime, &build("rust", "conformance")).await;
    assert_eq!(pool2.module().contract.to_string(), "0.2.0");
    // The old example agents too: agent_a hands off, agent_b greets.
    let a = |agent: &str, text: &str| message(agent, text, json!({"user": "alice"}), None);
    for (agent, text, to) in [
        (
            "agent_a",
            "I want to talk to agent B.",
            json!({"agent": "agent_b"}),
        ),
        ("agent_b", "hi", json!("reply")),
        ("echo", "anything", json!("reply")),
    ] {
        let builds = [
            ("0.2".to_string(), build("rust", agent)),
            (
                "0.1".to_string(),
                root().join(format!("tests/fixtures/v0.1/{agent}.wasm")),
            ),
        ];
        let answers = conform_builds(agent, &builds, &[a(agent, text)]).await;
        assert_eq!(answers[0][0]["to"], to, "{agent}");
    }
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

/// A guest's exception reaches people in its own language's words: the
/// error and the line of the user's file first, no runtime noise; the whole
/// stderr (the traceback) is kept as the detail.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn guest_errors_read_as_the_language_wrote_them() {
    let runtime = Runtime::new(runtime_config(InstanceMode::Reuse)).unwrap();
    let m = |text: &str| message("conformance", text, json!({}), None);
    let mut seen = Vec::new();
    for lang in LANGUAGES {
        let pool = pool(&runtime, &build(lang, "conformance")).await;
        let mut commands = vec!["crash"];
        if lang != "rust" {
            commands.push("badreturn");
        }
        for cmd in commands {
            let error = match pool.call(&m(cmd)).await {
                Err(e) => e,
                Ok(answer) => panic!("{lang} {cmd}: no guest error but {answer:?}"),
            };
            let text = error.to_string();
            for noise in [
                "unreachable",
                "RUST_BACKTRACE",
                "runtime/src",
                "Value(Exception",
            ] {
                assert!(
                    !text.contains(noise),
                    "{lang} {cmd}: noise `{noise}` in {text}"
                );
            }
            seen.push((lang, cmd, text, error.detail.unwrap_or_default()));
        }
    }
    let find = |lang: &str, cmd: &str| {
        seen.iter()
            .find(|s| s.0 == lang && s.1 == cmd)
            .map(|s| (s.2.clone(), s.3.clone()))
            .unwrap()
    };
    let (python, traceback) = find("python", "crash");
    assert!(
        python.starts_with("KeyError: 'user' (app.py:") && python.ends_with(", in lookup)"),
        "{python}"
    );
    assert!(
        traceback.starts_with("Traceback (most recent call last):"),
        "{traceback}"
    );
    let (js, _) = find("js", "crash");
    assert!(
        js.contains("of undefined (app.js:") && js.ends_with(", in lookup)"),
        "{js}"
    );
    let (rust, _) = find("rust", "crash");
    assert!(
        rust.starts_with("panicked at src/lib.rs:") && rust.ends_with(": crash: conformance"),
        "{rust}"
    );
    let (python, _) = find("python", "badreturn");
    assert!(
        python.contains("wrong type: expected list, got 'not a list'"),
        "{python}"
    );
    let (js, _) = find("js", "badreturn");
    assert!(js.contains("wrong type: expected array"), "{js}");
}
