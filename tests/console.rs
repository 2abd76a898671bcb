//! The web console in a real browser: Debian's headless Chromium, driven by
//! playwright-core (`tests/console/check.mjs`), against `warren run`
//! hosting the demo agents and `chaos` on the embedded broker.
//!
//! `WARREN_SCREENSHOTS=docs/console` keeps the screenshots there (the ones
//! in the README); otherwise they go to a temporary folder.

mod common;

use std::path::PathBuf;
use std::process::Command;

use common::http::{get, post};
use common::{plugins_dir, root, run_ready, warren_cli};

const SECRET: &str = "sk-live-Se/cr@t9";

/// The browser and its driver, or one clear reason why not.
fn browser() -> (PathBuf, PathBuf) {
    let chromium =
        PathBuf::from(std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into()));
    assert!(
        chromium.exists(),
        "{} is missing: the console test needs Debian's chromium (scripts/test.sh installs it: \
         apt-get install chromium)",
        chromium.display()
    );
    let driver = root().join("tests/console");
    assert!(
        driver.join("node_modules/playwright-core").exists(),
        "playwright-core is missing: run `npm ci` in tests/console (scripts/test.sh does)"
    );
    (chromium, driver)
}

fn send(sock: &str, agent: &str, text: &str, context: &str) -> (bool, String, String) {
    warren_cli(&[
        "send",
        agent,
        text,
        "--context",
        context,
        "--wait",
        "--timeout",
        "10",
        "--control",
        sock,
    ])
}

#[test]
fn the_console_shows_agents_a_dead_letter_a_replay_and_a_three_hop_trace() {
    let (chromium, driver) = browser();
    let dir = plugins_dir(&["agent_a", "agent_b", "chaos"]);
    let sock_dir = tempfile::tempdir().unwrap();
    let sock = sock_dir.path().join("warren.sock");
    let sock = sock.to_str().unwrap();
    let (host, http) = run_ready(dir.path(), &["--control", sock]);

    // Traffic for the sparklines (sampled every 5 s; longer when making
    // the screenshots), handoffs for the trace, one dead letter carrying a
    // secret.
    let shots = std::env::var_os("WARREN_SCREENSHOTS").map(|d| root().join(d));
    let rounds = if shots.is_some() { 9 } else { 3 };
    for round in 0..rounds {
        for i in 0..2 + round % 4 {
            let (ok, out, err) = send(sock, "agent_a", &format!("hello {round}.{i}"), "{}");
            assert!(ok && out.contains("agent_a"), "{out}{err}");
        }
        if round % 3 == 1 {
            let (ok, out, err) = send(sock, "agent_a", "agent b please", r#"{"user":"bob"}"#);
            assert!(ok && out.contains("Agent B here"), "{out}{err}");
        }
        if round + 1 < rounds {
            std::thread::sleep(std::time::Duration::from_secs(5));
        }
    }
    let (ok, out, err) = send(
        sock,
        "agent_a",
        "I want to talk to agent B.",
        r#"{"user":"alice"}"#,
    );
    assert!(ok && out.contains("Agent B here"), "{out}{err}");
    let context = format!(r#"{{"api_key":"{SECRET}","user":"mallory"}}"#);
    let (ok, _, err) = send(sock, "chaos", "reject:policy says no", &context);
    assert!(!ok && err.contains("dead-lettered"), "{err}");

    // The API masks, and refuses a change without the console's header.
    let (code, letters) = get(http, "/api/dlq/chaos");
    assert_eq!(code, 200, "{letters}");
    assert!(
        letters.contains("rejected by agent: policy says no"),
        "{letters}"
    );
    assert!(!letters.contains(SECRET), "{letters}");
    let (code, refused) = post(http, "/api/dlq/chaos/purge", &[], "{}");
    assert_eq!(code, 403, "{refused}");
    assert!(refused.contains("X-Warren-Console"), "{refused}");
    assert!(get(http, "/api/dlq/chaos").1.contains("policy says no"));

    let tmp = tempfile::tempdir().unwrap();
    let shots = shots.unwrap_or_else(|| tmp.path().to_path_buf());
    let out = Command::new("node")
        .arg(driver.join("check.mjs"))
        .arg(format!("http://{http}"))
        .arg(&shots)
        .arg(SECRET)
        .env("CHROMIUM", &chromium)
        .current_dir(&driver)
        .output()
        .expect("running node (Node.js is needed for the console test)");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "the browser check failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let seen: serde_json::Value = serde_json::from_str(stdout.trim()).expect("the check's JSON");
    println!("the browser saw: {seen:#}");
    assert_eq!(seen["trace"]["steps"].as_array().unwrap().len(), 3);
    assert_eq!(seen["replayed_back"], true);
    assert!(
        seen["replay_notice"]
            .as_str()
            .unwrap()
            .contains("replayed 1")
    );
    for view in [
        "agents",
        "dead-letter",
        "replay-confirm",
        "trace",
        "host",
        "hundred-agents",
    ] {
        assert!(shots.join(format!("{view}.png")).exists(), "{view}.png");
    }
    host.stop();
}
