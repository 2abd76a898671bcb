//! Fidelity (contract 0.2): what a sender writes reaches the last agent
//! whole — OpenAI tool-call histories, `null` content, names, unknown keys,
//! `model`, Python's `Infinity` — through agents of either contract; the
//! original client's `max_turns` caps a conversation; a Swarm agent runs its
//! tools and hands off with the full history against a mock model that
//! checks every history as the real API does.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use serde_json::{Value, json};
use warren::mockllm::MockLlm;
use warren::runtime::InstanceMode;
use warren::runtime::outbound::HttpOverrides;
use warren::runtime::settings::AgentSection;
use warren::{Host, HostConfig, MemoryBroker};

/// A tool-call history as OpenAI writes it, ending with the user's `text`.
fn tool_call_history(text: &str) -> Value {
    json!([
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": [{"type": "text", "text": "weather in Oslo?"}], "name": "alice"},
        {"role": "assistant", "content": null, "refusal": null, "tool_calls": [
            {"id": "call_a1", "type": "function", "function": {"name": "get_weather", "arguments": "{\"city\": \"Oslo\"}"}},
            {"id": "call_a2", "type": "function", "function": {"name": "get_time", "arguments": "{}"}}
        ]},
        {"role": "tool", "tool_call_id": "call_a1", "content": "12C"},
        {"role": "tool", "tool_call_id": "call_a2", "content": "09:00"},
        {"role": "assistant", "content": "12C at 09:00."},
        {"role": "user", "content": text}
    ])
}

/// Sends `body` (raw bytes) to `agent` and waits for the answer: its body
/// as it arrived, or why the conversation failed (a dead letter).
async fn exchange(t: &TestHost, agent: &str, body: &[u8]) -> Result<Vec<u8>, String> {
    warren::client::send_body(
        t.broker.as_ref(),
        agent,
        body.to_vec(),
        Some(Duration::from_secs(20)),
    )
    .await
    .map(|outcome| outcome.reply.expect("a reply").raw)
    .map_err(|e| format!("{e:#}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tool_call_history_survives_any_number_of_hops_through_agents_of_either_contract() {
    for (label, a, b) in [
        ("0.2", guest("agent_a"), guest("agent_b")),
        (
            "0.1",
            root().join("tests/fixtures/v0.1/agent_a.wasm"),
            root().join("tests/fixtures/v0.1/agent_b.wasm"),
        ),
    ] {
        let dir = tempfile::tempdir().unwrap();
        std::fs::copy(&a, dir.path().join("agent_a.wasm")).unwrap();
        std::fs::copy(&b, dir.path().join("agent_b.wasm")).unwrap();
        let t = start_in(dir, runtime_config(InstanceMode::Reuse), fast_dispatch()).await;
        let history = tool_call_history("I want to talk to agent B.");
        // Python's json.dumps, as the original client's run() writes it.
        let sent = format!(
            r#"{{"messages": {history}, "context_variables": {{"user": "alice"}}, "model": "gpt-4o", "stream": false, "debug": false, "max_turns": Infinity, "execute_tools": true, "trace": {{"nan": NaN, "tags": ["x"]}}}}"#
        );
        let reply = exchange(&t, "agent_a", sent.as_bytes())
            .await
            .unwrap_or_else(|r| panic!("{label}: {r}"));
        let text = String::from_utf8(reply).unwrap();
        // Written back as Python wrote them.
        assert!(text.contains(r#""max_turns":Infinity"#), "{label}: {text}");
        assert!(text.contains(r#""nan":NaN"#), "{label}: {text}");
        let got: Value = serde_json::from_str(
            &text
                .replace("Infinity", "\"Infinity\"")
                .replace("NaN", "\"NaN\""),
        )
        .unwrap();
        let messages = got["messages"].as_array().unwrap();
        // The history, turn by turn and key by key, then agent_a's and agent_b's turns.
        assert_eq!(messages.len(), 9, "{label}: {got}");
        assert_eq!(
            Value::Array(messages[..7].to_vec()),
            history,
            "{label}: the history came back changed"
        );
        assert!(
            messages[8]["content"]
                .as_str()
                .unwrap()
                .starts_with("Hello alice")
        );
        for (key, want) in [
            ("model", json!("gpt-4o")),
            ("stream", json!(false)),
            ("debug", json!(false)),
            ("execute_tools", json!(true)),
            ("trace", json!({"nan": "NaN", "tags": ["x"]})),
        ] {
            assert_eq!(got[key], want, "{label}: {key}");
        }
        assert_eq!(got["from_agent"], "agent_b");
        t.host.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_turns_caps_the_conversation_and_infinity_does_not() {
    let t = start(&["agent_a", "agent_b"]).await;
    let body = |max: &str| {
        format!(
            r#"{{"messages": [{{"role": "user", "content": "I want to talk to agent B."}}], "context_variables": {{}}, "max_turns": {max}}}"#
        )
    };
    // Two turns (agent_a, agent_b) are allowed by 2, and by Infinity.
    for max in ["2", "Infinity", "2.0"] {
        exchange(&t, "agent_a", body(max).as_bytes())
            .await
            .unwrap_or_else(|r| panic!("max_turns {max}: {r}"));
    }
    // One turn: agent_a's handoff is the second turn, and is dead-lettered.
    let reason = exchange(&t, "agent_a", body("1").as_bytes())
        .await
        .unwrap_err();
    assert!(
        reason.contains("max_turns reached") && reason.contains("max_turns = 1"),
        "{reason}"
    );
    let status = t.host.status().await.unwrap();
    let b = status
        .agents
        .iter()
        .find(|a| a.queue.agent == "agent_b")
        .unwrap();
    assert_eq!(b.queue.dead_letter_count, 1);
    t.host.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_shows_each_agents_contract() {
    let dir = plugins_dir(&["agent_b"]);
    std::fs::copy(
        root().join("tests/fixtures/v0.1/agent_a.wasm"),
        dir.path().join("agent_a.wasm"),
    )
    .unwrap();
    let t = start_in(dir, runtime_config(InstanceMode::Reuse), fast_dispatch()).await;
    let status = t.host.status().await.unwrap();
    let contract = |agent: &str| {
        status
            .agents
            .iter()
            .find(|a| a.queue.agent == agent)
            .unwrap()
            .contract
            .clone()
    };
    assert_eq!(contract("agent_a").as_deref(), Some("0.1.0"));
    assert_eq!(contract("agent_b").as_deref(), Some("0.2.0"));
    assert!(status.table().contains("0.1.0"));
    let json = status.to_json();
    assert_eq!(
        json["debug_queues"]["agent_a"]["queue_name"],
        "agent_agent_a_queue"
    );
    assert_eq!(json["agents"][0]["queue_name"], json["agents"][0]["queue"]);
    t.host.shutdown().await;
}

/// `warren test`: a tool-call history comes back from echo whole; agent_a
/// takes the original client's run() body (with `Infinity`) and hands off.
#[test]
fn warren_test_keeps_tool_call_histories_and_takes_the_original_run_body() {
    let history = tool_call_history("hello");
    let input = json!({"messages": history, "context_variables": {}});
    let out = warren_test_stdin(&guest("echo"), format!("{input}\n").as_bytes());
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let line: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(line["messages"], history);
    assert_eq!(line["to"], "reply");

    let run = br#"{"messages": [{"role": "user", "content": "I want to talk to agent B."}], "context_variables": {"user": "ada"}, "model": null, "stream": false, "debug": false, "max_turns": Infinity, "execute_tools": true}"#;
    let out = warren_test_stdin(&guest("agent_a"), &[&run[..], b"\n"].concat());
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let line: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(line["to"], json!({"agent": "agent_b"}));
    assert_eq!(line["extra"]["max_turns"], "Infinity");
    assert_eq!(line["extra"]["execute_tools"], true);
}

fn swarm_section(llm: &MockLlm, tools: &str, agents: &str) -> AgentSection {
    AgentSection {
        config: [
            ("base_url".to_string(), llm.base_url.clone()),
            ("model".to_string(), "gpt-mock-1".to_string()),
            (
                "instructions".to_string(),
                "You are a test agent.".to_string(),
            ),
            ("tools".to_string(), tools.to_string()),
            ("agents".to_string(), agents.to_string()),
        ]
        .into(),
        http: HttpOverrides {
            allow: Some(vec![llm.base_url.trim_end_matches("/v1").to_string()]),
            timeout_ms: Some(5_000),
            max_response_kb: Some(256),
        },
        ..Default::default()
    }
}

/// The Swarm example (examples/swarm): triage and refunds on one component.
async fn start_swarm(llm: &MockLlm) -> TestHost {
    let config = HostConfig {
        runtime: runtime_config(InstanceMode::Reuse),
        dispatch: fast_dispatch(),
        guard: Default::default(),
        agents: [
            (
                "triage".to_string(),
                swarm_section(llm, "lookup_order", "refunds"),
            ),
            (
                "refunds".to_string(),
                swarm_section(llm, "issue_refund", "triage"),
            ),
        ]
        .into(),
        trace: Default::default(),
    };
    let broker = Arc::new(MemoryBroker::new());
    let host = Host::new(config, broker.clone()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    for agent in ["triage", "refunds"] {
        let built = root().join(format!("examples/swarm/plugins/{agent}.wasm"));
        assert!(
            built.exists(),
            "{} is not built: run scripts/build-guests.sh",
            built.display()
        );
        std::fs::copy(built, dir.path().join(format!("{agent}.wasm"))).unwrap();
    }
    let t = TestHost {
        events: host.events(),
        host,
        broker,
        dir,
    };
    t.host.load_dir(t.dir.path()).await.unwrap();
    t
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_swarm_agent_runs_its_tools_and_hands_off_with_the_whole_history() {
    let llm = MockLlm::start("127.0.0.1:0".parse().unwrap(), None)
        .await
        .unwrap();
    let t = start_swarm(&llm).await;
    let body = json!({
        "messages": [{"role": "user", "content": "I want a refund for order #42, put me through to refunds"}],
        "context_variables": {"user": "ada"},
        "model": "gpt-mock-2"
    });
    let reply = exchange(&t, "triage", body.to_string().as_bytes())
        .await
        .unwrap_or_else(|r| panic!("{r}"));
    let reply: Value = serde_json::from_slice(&reply).unwrap();
    let m = reply["messages"].as_array().unwrap();
    let summary: Vec<(String, String)> = m
        .iter()
        .map(|t| {
            let what = match t["tool_calls"].as_array() {
                Some(calls) => calls
                    .iter()
                    .map(|c| c["function"]["name"].as_str().unwrap().to_string())
                    .collect::<Vec<_>>()
                    .join(","),
                None => t["content"].as_str().unwrap_or_default().to_string(),
            };
            (t["role"].as_str().unwrap().to_string(), what)
        })
        .collect();
    let want = [
        (
            "user",
            "I want a refund for order #42, put me through to refunds",
        ),
        ("assistant", "lookup_order"),
        (
            "tool",
            "Order #42: blue kettle, 39.90 EUR, delivered 2026-11-02.",
        ),
        ("assistant", "transfer_to_refunds"),
        ("tool", "Transferred to refunds."),
        ("assistant", "issue_refund"),
        (
            "tool",
            "Refund of 39.90 EUR for order #42 (blue kettle) issued.",
        ),
        (
            "assistant",
            "(mock model) Done: Refund of 39.90 EUR for order #42 (blue kettle) issued.",
        ),
    ];
    let want: Vec<(String, String)> = want
        .iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect();
    assert_eq!(summary, want, "{reply}");
    // Every tool message answers the call just before it, ids unchanged.
    for i in [2, 4, 6] {
        assert_eq!(
            m[i]["tool_call_id"],
            m[i - 1]["tool_calls"][0]["id"],
            "{reply}"
        );
        assert_eq!(m[i - 1]["content"], Value::Null);
    }
    assert_eq!(reply["from_agent"], "refunds");
    assert_eq!(reply["context_variables"]["refunded"], json!(["42"]));
    assert_eq!(reply["model"], "gpt-mock-2");
    // Four model calls, each with the body's model, each history valid;
    // refunds' first call saw triage's tool calls and results.
    let requests = llm.requests();
    assert_eq!(requests.len(), 4);
    for r in &requests {
        assert_eq!(r.body["model"], "gpt-mock-2");
        warren::mockllm::check_history(&r.body["messages"]).unwrap();
    }
    let refunds_first = requests[2].body["messages"].as_array().unwrap();
    assert_eq!(
        refunds_first.len(),
        1 + 5,
        "system + the handed-off history"
    );
    assert_eq!(
        refunds_first[5]["tool_call_id"],
        m[3]["tool_calls"][0]["id"]
    );
    t.host.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_history_is_refused_by_the_mock_as_by_the_real_api() {
    let llm = MockLlm::start("127.0.0.1:0".parse().unwrap(), None)
        .await
        .unwrap();
    let t = start_swarm(&llm).await;
    // A tool message whose call is not in the history.
    let body = json!({
        "messages": [
            {"role": "user", "content": "order #42?"},
            {"role": "tool", "tool_call_id": "call_nowhere", "content": "stray"}
        ],
        "context_variables": {}
    });
    let reason = exchange(&t, "triage", body.to_string().as_bytes())
        .await
        .unwrap_err();
    assert!(
        reason.contains("answered 400")
            && reason.contains("must be a response to a preceeding message with 'tool_calls'"),
        "{reason}"
    );
    assert_eq!(llm.requests().len(), 1);
    t.host.shutdown().await;
}
