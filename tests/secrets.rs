//! Settings and secrets: an agent reads what its section of the host's
//! config grants it, and a secret's value appears in no log line, no dead
//! letter reason and no status output, however hard the agent tries.

mod common;

use std::sync::Arc;

use common::*;
use warren::dispatch::user_envelope;
use warren::runtime::InstanceMode;
use warren::runtime::settings::AgentSection;
use warren::{Host, HostConfig, MemoryBroker};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_secret_never_reaches_a_log_a_dead_letter_or_status() {
    logs::capture("info");

    const SECRET: &str = "sk-test-5ecret-value";
    unsafe { std::env::set_var("WARREN_TEST_API_KEY", SECRET) };
    let section = AgentSection {
        config: [("model".to_string(), "gpt-test".to_string())].into(),
        secrets: [("api_key".to_string(), "env:WARREN_TEST_API_KEY".to_string())].into(),
        ..Default::default()
    };
    let config = HostConfig {
        runtime: runtime_config(InstanceMode::Reuse),
        dispatch: fast_dispatch(),
        guard: Default::default(),
        agents: [("chaos".to_string(), section)].into(),
        trace: Default::default(),
    };
    let broker = Arc::new(MemoryBroker::new());
    let host = Host::new(config, broker.clone()).unwrap();
    let mut t = TestHost {
        events: host.events(),
        host,
        broker,
        dir: plugins_dir(&["chaos"]),
    };
    t.host.load_dir(t.dir.path()).await.unwrap();

    // The plain value and the secret are what the agent gets...
    let env = user_envelope("leak:model", Default::default(), None);
    let id = env.id.clone();
    t.host.publish("chaos", env).await.unwrap();
    assert_eq!(
        t.dead_letter_of(&id).await,
        "rejected by agent: leaked model=gpt-test"
    );
    // ...but the secret, logged, printed and returned as a reason, is masked.
    let env = user_envelope("leak:api_key", Default::default(), None);
    let id = env.id.clone();
    t.host.publish("chaos", env).await.unwrap();
    assert_eq!(
        t.dead_letter_of(&id).await,
        "rejected by agent: leaked api_key=***"
    );
    let letters = t.broker.dead_letters("chaos").await.unwrap();
    assert!(letters.iter().all(|l| !l.reason.contains(SECRET)));
    let status = serde_json::to_string(&t.host.status().await.unwrap()).unwrap();
    assert!(!status.contains(SECRET), "{status}");

    let logs = logs::text();
    assert!(!logs.contains(SECRET), "the secret is in the log:\n{logs}");
    for masked in [
        "the api_key is ***",
        "stdout: api_key=***",
        "stderr: api_key=***",
    ] {
        assert!(logs.contains(masked), "no `{masked}` in the log:\n{logs}");
    }
    assert!(
        logs.contains("the model is gpt-test"),
        "plain values are not masked"
    );
}

#[test]
fn a_missing_secret_keeps_the_agent_from_loading_with_a_clear_reason() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("warren.toml");
    std::fs::write(
        &file,
        "[agents.agent_b.secrets]\napi_key = \"env:WARREN_TEST_UNSET_KEY\"\n",
    )
    .unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_warren"))
        .args(["demo", "--plugins"])
        .arg(root().join("plugins"))
        .args(["--config", file.to_str().unwrap()])
        .env_remove("WARREN_TEST_UNSET_KEY")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("secret `api_key` of agent `agent_b`")
            && err.contains("WARREN_TEST_UNSET_KEY is not set"),
        "{err}"
    );
}
