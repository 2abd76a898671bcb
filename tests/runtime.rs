//! The runtime and the no-broker paths: compile cache, `warren test`'s
//! testbench, and the control socket.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use serde_json::json;
use tokio_util::sync::CancellationToken;
use warren::runtime::{InstanceMode, Runtime, RuntimeConfig};
use warren::{control, testbench};

const SEED_SAMPLE: &str = r#"{"messages":[{"role":"user","content":"I want to talk to agent B."}],"context_variables":{"user":"alice"}}"#;

#[test]
fn compiled_code_is_cached_by_content_hash() {
    let cache = tempfile::tempdir().unwrap();
    let config = RuntimeConfig {
        cache_dir: Some(cache.path().to_path_buf()),
        ..RuntimeConfig::default()
    };
    let first = Runtime::new(config.clone())
        .unwrap()
        .load_file(&guest("echo"))
        .unwrap();
    assert!(!first.cache_hit);
    // A new runtime (a restart) finds the compiled code.
    let second = Runtime::new(config)
        .unwrap()
        .load_file(&guest("echo"))
        .unwrap();
    assert!(second.cache_hit);
    assert_eq!(first.version, second.version);
    assert_eq!(std::fs::read_dir(cache.path()).unwrap().count(), 1);
    // A corrupt entry is replaced, not fatal. (Loaded components map their
    // cache file, so they are dropped before the file is overwritten in place;
    // the cache itself only ever replaces files by rename.)
    drop((first, second));
    let entry = std::fs::read_dir(cache.path())
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    std::fs::write(&entry, b"garbage").unwrap();
    let config = RuntimeConfig {
        cache_dir: Some(cache.path().to_path_buf()),
        ..RuntimeConfig::default()
    };
    let third = Runtime::new(config)
        .unwrap()
        .load_file(&guest("echo"))
        .unwrap();
    assert!(!third.cache_hit);
}

#[tokio::test]
async fn testbench_runs_agent_a_on_the_seed_sample() {
    let out = testbench::run_lines(
        &guest("agent_a"),
        SEED_SAMPLE,
        runtime_config(InstanceMode::Reuse),
    )
    .await
    .unwrap();
    assert_eq!(out.len(), 1);
    let m = &out[0];
    assert_eq!(m["to"], json!({"agent": "agent_b"}));
    assert_eq!(m["routing_key"], "agent.agent_b");
    assert_eq!(m["context_variables"]["user"], "alice");
    assert_eq!(m["from_agent"], "agent_a");
    assert_eq!(m["hops"], 1);
}

#[tokio::test]
async fn testbench_reports_failures_and_fails() {
    let input = "{\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}]}\nnot json\n{\"messages\":[{\"role\":\"user\",\"content\":\"reject:no thanks\"}]}\n";
    let mut out = Vec::new();
    let mut err = Vec::new();
    let r = testbench::run(
        &guest("chaos"),
        input.as_bytes(),
        &mut out,
        &mut err,
        runtime_config(InstanceMode::Reuse),
        None,
    )
    .await;
    let e = r.unwrap_err();
    assert_eq!(e.to_string(), "2 of 3 messages failed");
    let err = String::from_utf8(err).unwrap();
    assert!(
        err.contains("failed on message test-2 (input line 2): undecodable body"),
        "{err}"
    );
    assert!(
        err.contains("failed on message test-3 (input line 3): rejected by agent: no thanks"),
        "{err}"
    );
    assert_eq!(String::from_utf8(out).unwrap().lines().count(), 1);
}

#[tokio::test]
async fn control_socket_serves_status_and_send() {
    let t = start(&["agent_a", "agent_b"]).await;
    let sock = t.path().join("control.sock");
    let stop = CancellationToken::new();
    let server = tokio::spawn(control::serve(t.host.clone(), sock.clone(), stop.clone()));
    for _ in 0..100 {
        if sock.exists() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let status = control::status(&sock).await.unwrap();
    assert_eq!(status.agents.len(), 2);
    let outcome = control::send(
        &sock,
        "agent_a",
        "I want to talk to agent B.",
        json!({"user":"gil"}).as_object().unwrap().clone(),
        Some(Duration::from_secs(10)),
    )
    .await
    .unwrap();
    assert!(outcome.reply.unwrap().text.contains("Hello gil"));
    // A second host cannot take a live socket.
    let e = control::serve(t.host.clone(), sock.clone(), CancellationToken::new())
        .await
        .unwrap_err();
    assert!(e.to_string().contains("already serving"), "{e}");
    stop.cancel();
    server.await.unwrap().unwrap();
    assert!(!sock.exists(), "the socket is removed on shutdown");
    let e = control::status(&sock).await.unwrap_err();
    assert!(e.to_string().contains("no warren host is reachable"), "{e}");
    let _ = Arc::clone(&t.host);
}
