//! The `warren` binary as a user runs it.

mod common;

use std::process::{Command, Stdio};

use common::*;

fn warren() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_warren"));
    c.current_dir(root())
        .env("WARREN_CACHE_DIR", cache_dir())
        .env_remove("RUST_LOG");
    c
}

#[test]
fn warren_test_prints_agent_a_handoff_for_the_seed_sample() {
    let out = warren_test_stdin(
        &root().join("plugins/agent_a.wasm"),
        br#"{"messages":[{"role":"user","content":"I want to talk to agent B."}],"context_variables":{"user":"alice"}}"#,
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let line: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(line["to"]["agent"], "agent_b");
    assert_eq!(line["context_variables"]["user"], "alice");
}

#[test]
fn warren_test_exits_non_zero_with_the_failure() {
    let input = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(
        input.path(),
        "{\"messages\":[{\"role\":\"user\",\"content\":\"trap\"}]}\n",
    )
    .unwrap();
    let out = warren()
        .args([
            "test",
            guest("chaos").to_str().unwrap(),
            "--input",
            input.path().to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("agent `chaos` failed on message test-1"),
        "{err}"
    );
    assert!(err.contains("trap"), "{err}");
}

#[test]
fn warren_demo_shows_the_handoff_and_the_answer() {
    let out = warren().arg("demo").output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("user → agent_a"), "{stdout}");
    assert!(stdout.contains("agent_a (version"), "{stdout}");
    assert!(stdout.contains("hands off to agent_b"), "{stdout}");
    assert!(
        stdout.contains("answer from agent_b after 2 hops: \"Hello alice"),
        "{stdout}"
    );
    assert!(stdout.contains("agent_agent_b_queue"), "{stdout}");
}

#[test]
fn send_and_status_without_a_host_say_what_they_need() {
    let sock = tempfile::tempdir().unwrap().path().join("none.sock");
    for args in [vec!["status"], vec!["send", "agent_a", "hi"]] {
        let out = warren()
            .args(&args)
            .env("WARREN_CONTROL", &sock)
            .output()
            .unwrap();
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("no warren host is reachable"), "{err}");
        assert!(err.contains("warren run"), "{err}");
    }
}

#[test]
fn run_send_status_across_processes() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("w.sock");
    let host = warren()
        .args(["run", "--plugins", "plugins", "--http", "127.0.0.1:0"])
        .env("WARREN_CONTROL", &sock)
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let ready = (0..250).any(|_| {
        std::thread::sleep(std::time::Duration::from_millis(40));
        sock.exists()
    });
    let result = std::panic::catch_unwind(|| {
        assert!(ready, "the host did not open its control socket");
        let out = warren()
            .args([
                "send",
                "Agent A",
                "I want to talk to agent B.",
                "--context",
                r#"{"user":"hal"}"#,
                "--wait",
                "--timeout",
                "10",
            ])
            .env("WARREN_CONTROL", &sock)
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(stdout.starts_with("agent_b: Hello hal"), "{stdout}");
        let out = warren()
            .args(["status", "--json"])
            .env("WARREN_CONTROL", &sock)
            .output()
            .unwrap();
        assert!(out.status.success());
        let status: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let names: Vec<&str> = status["agents"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a["queue"].as_str().unwrap())
            .collect();
        assert_eq!(
            names,
            [
                "agent_agent_a_queue",
                "agent_agent_b_queue",
                "agent_echo_queue",
                "agent_llm_triage_queue"
            ]
        );
    });
    // SIGTERM: graceful shutdown.
    let out = terminate(host);
    result.unwrap();
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(log.contains("embedded in-process broker"), "{log}");
    assert!(!sock.exists());
}

/// `--log-format json`: one JSON object per line; a line about a message
/// carries the agent, the message id and the conversation id.
#[test]
fn json_logs_name_agent_message_and_conversation() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_warren"))
        .args(["--log-format", "json", "demo", "--plugins"])
        .arg(common::root().join("plugins"))
        .output()
        .unwrap();
    assert!(out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<serde_json::Value> = stderr
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    let handoff = lines
        .iter()
        .find(|l| {
            l["message"]
                .as_str()
                .unwrap_or("")
                .starts_with("handing conversation")
        })
        .unwrap_or_else(|| panic!("no handoff line in {stderr}"));
    assert_eq!(handoff["agent"], "agent_a");
    assert_eq!(handoff["level"], "INFO");
    let conversation = handoff["conversation"].as_str().unwrap();
    assert!(conversation.starts_with("m-"));
    assert_eq!(
        handoff["id"], conversation,
        "the first message starts the conversation"
    );
    let answer = lines.iter().find(|l| l["agent"] == "agent_b").unwrap();
    assert_eq!(answer["conversation"], conversation);
    assert_ne!(answer["id"], conversation);
}
