//! Capabilities: the llm_triage agent calls an OpenAI-compatible endpoint (a
//! mock on 127.0.0.1) through wasi:http, only because its section of the
//! host's config grants that origin. The model's tool call becomes a
//! handoff, its text a reply; an origin not granted is refused; the response
//! size and deadline are the host's; the API key is in no log line.

mod common;

use std::io::Write;
use std::sync::Arc;
use std::time::Duration;

use common::*;
use warren::dispatch::{Event, user_envelope};
use warren::mockllm::MockLlm;
use warren::runtime::InstanceMode;
use warren::runtime::outbound::HttpOverrides;
use warren::runtime::settings::AgentSection;
use warren::{Host, HostConfig, MemoryBroker};

const KEY: &str = "sk-mock-5ecret-llm-key";

/// Captures this binary's logs (debug level for warren) and sets the key
/// the agent's secret is read from.
fn capture_logs() {
    logs::capture("info,warren=debug");
    unsafe { std::env::set_var("WARREN_TEST_LLM_KEY", KEY) };
}

fn log_lines() -> Vec<String> {
    logs::text().lines().map(str::to_string).collect()
}

/// The section an operator writes for llm_triage: model and endpoint, the
/// key as a secret, and the endpoint's origin granted.
fn triage_section(base_url: &str, allow: &str) -> AgentSection {
    AgentSection {
        config: [
            ("base_url".to_string(), base_url.to_string()),
            ("model".to_string(), "gpt-mock-1".to_string()),
            ("agents".to_string(), "agent_b, agent_a".to_string()),
        ]
        .into(),
        secrets: [("api_key".to_string(), "env:WARREN_TEST_LLM_KEY".to_string())].into(),
        http: HttpOverrides {
            allow: Some(vec![allow.to_string()]),
            timeout_ms: Some(2_000),
            max_response_kb: Some(64),
        },
        ..Default::default()
    }
}

/// The section for llm_triage against `llm`, its origin granted.
fn granted(llm: &MockLlm) -> AgentSection {
    triage_section(&llm.base_url, &origin(&llm.base_url))
}

/// `http://127.0.0.1:PORT` of a base URL.
fn origin(base_url: &str) -> String {
    base_url.trim_end_matches("/v1").to_string()
}

async fn start_triage(section: AgentSection) -> TestHost {
    start_triage_build(section, &guest("llm_triage")).await
}

/// A host with agent_b and `build` as llm_triage.
async fn start_triage_build(section: AgentSection, build: &std::path::Path) -> TestHost {
    capture_logs();
    let config = HostConfig {
        runtime: runtime_config(InstanceMode::Reuse),
        dispatch: fast_dispatch(),
        guard: Default::default(),
        agents: [("llm_triage".to_string(), section)].into(),
        trace: Default::default(),
    };
    let broker = Arc::new(MemoryBroker::new());
    let host = Host::new(config, broker.clone()).unwrap();
    let dir = plugins_dir(&["agent_b"]);
    std::fs::copy(build, dir.path().join("llm_triage.wasm")).unwrap();
    let t = TestHost {
        events: host.events(),
        host,
        broker,
        dir,
    };
    t.host.load_dir(t.dir.path()).await.unwrap();
    t
}

async fn mock() -> MockLlm {
    MockLlm::start("127.0.0.1:0".parse().unwrap(), Some(KEY.to_string()))
        .await
        .unwrap()
}

/// Sends `text` to llm_triage as a user would; returns the message id.
async fn ask(t: &TestHost, text: &str) -> String {
    let context = serde_json::json!({"user": "hal"});
    let env = user_envelope(text, context.as_object().unwrap().clone(), None);
    let id = env.id.clone();
    t.host.publish("llm_triage", env).await.unwrap();
    id
}

/// What llm_triage sent for message `id` (panics if it was dead-lettered).
async fn triage_answer(t: &mut TestHost, id: &str) -> Vec<warren::dispatch::Sent> {
    t.wait_for(|e| match e {
        Event::Handled {
            agent,
            id: i,
            outgoing,
            ..
        } if agent == "llm_triage" && i == id => Some(outgoing.clone()),
        Event::DeadLettered { id: i, reason, .. } if i == id => panic!("dead-lettered: {reason}"),
        _ => None,
    })
    .await
}

/// llm_triage's line of `warren status`.
async fn triage_status(t: &TestHost) -> warren::status::AgentStatus {
    let status = t.host.status().await.unwrap();
    status
        .agents
        .into_iter()
        .find(|a| a.queue.agent == "llm_triage")
        .unwrap()
}

/// llm_triage's HTTP requests sent and refused, as status and `/metrics`
/// (one version) both count them.
async fn assert_http_counts(t: &TestHost, sent: u64, denied: u64) {
    let triage = triage_status(t).await;
    assert_eq!((triage.http_requests, triage.http_denied), (sent, denied));
    let text = t.host.metrics_text();
    let sample = |name: &str| {
        let prefix = format!("{name}{{agent=\"llm_triage\",version=");
        let line = text
            .lines()
            .find(|l| l.starts_with(&prefix))
            .unwrap_or_else(|| panic!("no {prefix} in:\n{text}"));
        line.rsplit(' ').next().unwrap().parse::<u64>().unwrap()
    };
    assert_eq!(sample("warren_http_requests_total"), sent);
    assert_eq!(sample("warren_http_denied_total"), denied);
}

fn assert_key_in_no_log_line() {
    let lines = log_lines();
    assert!(!lines.is_empty());
    for line in lines {
        assert!(
            !line.contains(KEY),
            "the API key leaked into a log line: {line}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tool_call_becomes_a_handoff_and_the_request_carries_model_and_key() {
    let llm = mock().await;
    let mut t = start_triage(granted(&llm)).await;
    let id = ask(&t, "I want to talk to agent B.").await;

    let handoff = triage_answer(&mut t, &id).await;
    assert_eq!(handoff.len(), 1);
    assert_eq!(handoff[0].to, "agent.agent_b");
    assert_eq!(handoff[0].text, "LLM Triage: transferring you to agent_b.");
    let answer = t
        .wait_for(|e| match e {
            Event::Handled {
                agent, outgoing, ..
            } if agent == "agent_b" => Some(outgoing[0].text.clone()),
            _ => None,
        })
        .await;
    assert!(
        answer.starts_with("Hello hal, Agent B here (llm_triage sent you over)"),
        "{answer}"
    );

    // What reached the endpoint: the configured model, the key as a bearer
    // token, the conversation after the system prompt, one tool per agent.
    let requests = llm.requests();
    assert_eq!(requests.len(), 1);
    let r = &requests[0];
    assert_eq!(
        r.authorization.as_deref(),
        Some(format!("Bearer {KEY}").as_str())
    );
    assert_eq!(r.body["model"], "gpt-mock-1");
    assert_eq!(r.body["messages"][0]["role"], "system");
    let system = r.body["messages"][0]["content"].as_str().unwrap();
    assert!(
        system.ends_with(r#"Context variables: {"user":"hal"}"#),
        "{system}"
    );
    assert_eq!(r.body["messages"][1]["role"], "user");
    assert_eq!(
        r.body["messages"][1]["content"],
        "I want to talk to agent B."
    );
    let tools: Vec<&str> = r.body["tools"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["function"]["name"].as_str().unwrap())
        .collect();
    assert_eq!(tools, ["transfer_to_agent_b", "transfer_to_agent_a"]);
    assert_http_counts(&t, 1, 0).await;
    assert_key_in_no_log_line();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_text_answer_becomes_the_reply() {
    let llm = mock().await;
    let mut t = start_triage(granted(&llm)).await;
    let id = ask(&t, "What are your opening hours?").await;
    let reply = triage_answer(&mut t, &id).await;
    assert_eq!(reply.len(), 1);
    assert!(
        !reply[0].to.starts_with("agent."),
        "a reply, not a handoff: {}",
        reply[0].to
    );
    assert_eq!(
        reply[0].text,
        "(mock model) You said: \"What are your opening hours?\". Ask for another agent by name and I will transfer you."
    );
    assert_key_in_no_log_line();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_origin_not_granted_is_refused_seen_by_the_guest_and_logged() {
    let llm = mock().await;
    // Granted another port of the same host: the mock's is not on the list.
    let mut t = start_triage(triage_section(&llm.base_url, "http://127.0.0.1:9")).await;
    let id = ask(&t, "I want to talk to agent B.").await;
    let reason = t.dead_letter_of(&id).await;
    let target = origin(&llm.base_url);
    assert_eq!(
        reason,
        format!(
            "rejected by agent: request to {target} not allowed (not on this agent's http allow-list)"
        )
    );
    assert!(llm.requests().is_empty(), "nothing may reach the endpoint");
    assert_http_counts(&t, 0, 1).await;
    let denial = log_lines()
        .into_iter()
        .find(|l| l.contains("not allowed") && l.contains("\"target\":\"warren::outbound\""))
        .expect("the host logs the refusal");
    let line: serde_json::Value = serde_json::from_str(&denial).unwrap();
    assert_eq!(line["fields"]["agent"], "llm_triage");
    assert_eq!(line["fields"]["host"], format!("{target}"));
    assert!(line["fields"]["id"].as_str().is_some_and(|i| !i.is_empty()));

    // No grant at all (the default) is no network at all.
    let mut section = triage_section(&llm.base_url, "http://127.0.0.1:9");
    section.http = HttpOverrides::default();
    let mut t = start_triage(section).await;
    let id = ask(&t, "hello").await;
    assert!(t.dead_letter_of(&id).await.contains("not allowed"));
    assert!(llm.requests().is_empty());
    assert_key_in_no_log_line();
}

/// An endpoint that misbehaves: a body past the agent's limit, or no answer
/// within its request deadline.
async fn bad_endpoint() -> String {
    use axum::routing::post;
    let app = axum::Router::new()
        .route(
            "/big/v1/chat/completions",
            post(|| async { "x".repeat(200 << 10) }),
        )
        .route(
            // The same, streamed: no Content-Length to refuse it by.
            "/stream/v1/chat/completions",
            post(|| async {
                let chunks = (0..200).map(|_| Ok::<_, std::io::Error>(vec![b'x'; 1024]));
                axum::body::Body::from_stream(futures::stream::iter(chunks))
            }),
        )
        .route(
            // A good answer, but only after 400 ms.
            "/late/v1/chat/completions",
            post(
                |axum::Json(body): axum::Json<serde_json::Value>| async move {
                    tokio::time::sleep(Duration::from_millis(400)).await;
                    axum::Json(warren::mockllm::answer("late", &body))
                },
            ),
        )
        .route(
            "/slow/v1/chat/completions",
            post(|| async {
                tokio::time::sleep(Duration::from_secs(10)).await;
                "{}"
            }),
        );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    format!("http://{addr}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_response_size_limit_and_request_deadline_hold() {
    let base = bad_endpoint().await;
    for path in ["big", "stream"] {
        let mut t = start_triage(triage_section(&format!("{base}/{path}/v1"), &base)).await;
        let id = ask(&t, "hello").await;
        let reason = t.dead_letter_of(&id).await;
        eprintln!("{path}: {reason}");
        // A refused Content-Length is an error code; a body cut off while
        // streaming is a stream error, in the host's words.
        let said = reason.to_lowercase().replace('-', " ");
        assert!(
            reason.contains(&format!("request to {base} failed"))
                && said.contains("response body size"),
            "{reason}"
        );
    }

    let mut section = triage_section(&format!("{base}/slow/v1"), &base);
    section.http.timeout_ms = Some(300);
    let mut t = start_triage(section).await;
    let started = std::time::Instant::now();
    let id = ask(&t, "hello").await;
    let reason = t
        .wait_for(|e| match e {
            Event::Retrying { id: i, reason, .. } if *i == id => Some(reason.clone()),
            Event::DeadLettered { id: i, reason, .. } if *i == id => Some(reason.clone()),
            _ => None,
        })
        .await;
    eprintln!("slow: {reason}");
    assert!(
        reason.contains(&format!("request to {base} failed")) && reason.contains("timeout"),
        "{reason}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "the deadline cut the wait short"
    );
}

/// The acceptance scenario through the CLI: `warren run` with the example
/// config (pointed at the mock) and the plugins folder; the seed's "I want
/// to talk to agent B." goes to llm_triage, the mock decides the handoff,
/// and agent_b answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn warren_run_with_the_llm_agent_completes_the_seed_scenario() {
    use std::process::{Command, Stdio};
    let llm = mock().await;
    let dir = tempfile::tempdir().unwrap();
    let example = std::fs::read_to_string(root().join("examples/llm_triage.toml")).unwrap();
    let addr = origin(&llm.base_url)
        .trim_start_matches("http://")
        .to_string();
    let config = dir.path().join("warren.toml");
    std::fs::write(&config, example.replace("127.0.0.1:8089", &addr)).unwrap();
    let sock = dir.path().join("w.sock");
    let warren = |args: &[&str]| {
        let mut c = Command::new(env!("CARGO_BIN_EXE_warren"));
        c.args(args)
            .current_dir(root())
            .env("WARREN_CONTROL", &sock)
            .env("WARREN_CACHE_DIR", cache_dir())
            .env("WARREN_LLM_KEY", KEY)
            .env_remove("RUST_LOG");
        c
    };
    let config = config.to_str().unwrap();
    let host = warren(&[
        "run",
        "--config",
        config,
        "--plugins",
        "plugins",
        "--http",
        "127.0.0.1:0",
    ])
    .stderr(Stdio::piped())
    .spawn()
    .unwrap();
    let ready = (0..250).any(|_| {
        std::thread::sleep(Duration::from_millis(40));
        sock.exists()
    });
    let sent = ready.then(|| {
        warren(&[
            "send",
            "llm_triage",
            "I want to talk to agent B.",
            "--context",
            r#"{"user":"hal"}"#,
            "--wait",
            "--timeout",
            "20",
        ])
        .output()
        .unwrap()
    });
    let out = terminate(host);
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(ready, "the host did not open its control socket: {log}");
    let sent = sent.unwrap();
    let answer = String::from_utf8_lossy(&sent.stdout);
    assert!(
        sent.status.success(),
        "{}\n{log}",
        String::from_utf8_lossy(&sent.stderr)
    );
    assert!(
        answer.starts_with("agent_b: Hello hal, Agent B here (llm_triage sent you over)"),
        "{answer}"
    );
    let requests = llm.requests();
    assert_eq!(requests.len(), 1, "the mock decided the handoff");
    assert_eq!(requests[0].body["model"], "gpt-4o-mini");
    assert!(!log.contains(KEY), "the API key leaked into the host's log");

    // `warren test` takes the same grant from the config file: no broker.
    let mut test = warren(&["--config", config, "test", "plugins/llm_triage.wasm"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    test.stdin
        .take()
        .unwrap()
        .write_all(br#"{"messages":[{"role":"user","content":"I want to talk to agent B."}]}"#)
        .unwrap();
    let out = test.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let line: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(line["to"]["agent"], "agent_b");
    assert_eq!(line["context_variables"]["triaged_by"], "llm_triage");
    assert!(!stderr.contains(KEY));
    assert_eq!(llm.requests().len(), 2);
}

/// Waiting on a model is not guest work: an agent that waited 400 ms for
/// its answer, with a 50 ms runaway threshold, is not moved to the runaway
/// lane, and answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn time_waiting_on_http_does_not_make_a_runaway() {
    let base = bad_endpoint().await;
    let mut section = triage_section(&format!("{base}/late/v1"), &base);
    section.limits.throttle_after_ms = Some(50);
    let mut t = start_triage(section).await;
    let id = ask(&t, "I want to talk to agent B.").await;
    triage_answer(&mut t, &id).await;
    let triage = triage_status(&t).await;
    assert_eq!(triage.calls, 1);
    assert!(triage.guest_ms >= 400.0, "{triage:?}");
    assert_eq!(triage.runaway_calls, 0, "{triage:?}");
}

/// A key the endpoint refuses will not get better by retrying: the message
/// is dead-lettered at once with the endpoint's reason (and no key).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_key_dead_letters_with_the_endpoint_reason() {
    let llm = mock().await;
    let mut section = granted(&llm);
    unsafe { std::env::set_var("WARREN_TEST_WRONG_KEY", "sk-wrong-key-0000") };
    section.secrets = [(
        "api_key".to_string(),
        "env:WARREN_TEST_WRONG_KEY".to_string(),
    )]
    .into();
    let mut t = start_triage(section).await;
    let id = ask(&t, "I want to talk to agent B.").await;
    assert_eq!(
        t.dead_letter_of(&id).await,
        "rejected by agent: the model endpoint answered 401: Incorrect API key provided"
    );
    assert_eq!(llm.requests().len(), 1, "rejected, not retried");
    assert!(log_lines().iter().all(|l| !l.contains("sk-wrong-key-0000")));
}

/// The Python llm_triage (componentize-py, world `agent-http`) sends the
/// same requests and gives the same answers as the Rust one: a handoff, a
/// reply, a refusal, and a key the endpoint refuses.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_python_and_js_llm_triage_behave_as_the_rust_one() {
    let python = root().join("plugins/python/llm_triage.wasm");
    let js = root().join("plugins/js/llm_triage.wasm");
    for build in [&python, &js] {
        assert!(
            build.exists(),
            "{} is not built: run scripts/build-guests.sh (it installs componentize-py and jco)",
            build.display()
        );
    }
    let mut seen = Vec::new();
    for build in [guest("llm_triage"), python, js] {
        let llm = mock().await;
        let granted = granted(&llm);
        let mut t = start_triage_build(granted.clone(), &build).await;
        let mut answers = Vec::new();
        for text in ["I want to talk to agent B.", "What are your opening hours?"] {
            let id = ask(&t, text).await;
            let sent = triage_answer(&mut t, &id).await;
            answers.push(serde_json::json!([
                sent[0].to.starts_with("agent."),
                sent[0].text
            ]));
        }
        let mut refused = granted.clone();
        refused.http.allow = Some(vec!["http://127.0.0.1:9".into()]);
        let mut wrong_key = granted;
        unsafe { std::env::set_var("WARREN_TEST_WRONG_KEY", "sk-wrong-key-0000") };
        wrong_key.secrets = [(
            "api_key".to_string(),
            "env:WARREN_TEST_WRONG_KEY".to_string(),
        )]
        .into();
        for section in [refused, wrong_key] {
            let mut t = start_triage_build(section, &build).await;
            let id = ask(&t, "I want to talk to agent B.").await;
            let reason = t.dead_letter_of(&id).await;
            answers.push(serde_json::json!(
                reason.replace(&origin(&llm.base_url), "ORIGIN")
            ));
        }
        // Every request says its length: nothing is sent chunked.
        for r in llm.requests() {
            assert!(
                r.content_length.is_some() && r.transfer_encoding.is_none(),
                "{}: content-length {:?}, transfer-encoding {:?}",
                build.display(),
                r.content_length,
                r.transfer_encoding
            );
        }
        let requests: Vec<serde_json::Value> = llm
            .requests()
            .into_iter()
            .map(|r| serde_json::json!([r.authorization, r.body]))
            .collect();
        seen.push((build, answers, requests));
    }
    let rust = &seen[0];
    for other in &seen[1..] {
        assert_eq!(
            rust.1,
            other.1,
            "answers of {} and {}",
            rust.0.display(),
            other.0.display()
        );
        assert_eq!(
            rust.2,
            other.2,
            "requests of {} and {}",
            rust.0.display(),
            other.0.display()
        );
    }
    assert_eq!(
        rust.2.len(),
        3,
        "two answered, one refused key; the refused origin sent none"
    );
    assert_key_in_no_log_line();
}
