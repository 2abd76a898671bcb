//! What an operator sees: `/metrics` counts what was sent, `/readyz` follows
//! the broker connection and the plugins.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::http::get;
use common::rabbit::Vhost;
use common::*;
use tokio_util::sync::CancellationToken;
use warren::dispatch::{Event, user_envelope};
use warren::host::Readiness;
use warren::runtime::InstanceMode;

/// The RabbitMQ outage test stops the broker: nothing else may run meanwhile.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

async fn get_async(addr: SocketAddr, path: &'static str) -> (u16, String) {
    tokio::task::spawn_blocking(move || get(addr, path))
        .await
        .unwrap()
}

async fn serve(t: &TestHost) -> (SocketAddr, CancellationToken) {
    let stop = CancellationToken::new();
    let (addr, server) =
        warren::http::bind(t.host.clone(), "127.0.0.1:0".parse().unwrap(), stop.clone())
            .await
            .unwrap();
    tokio::spawn(server);
    (addr, stop)
}

/// The value of one sample line, e.g. `warren_messages_acked_total{agent="echo"}`.
fn sample(metrics: &str, name: &str) -> f64 {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(name).and_then(|rest| rest.strip_prefix(' ')))
        .unwrap_or_else(|| panic!("no sample {name} in:\n{metrics}"))
        .trim()
        .parse()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_what_was_sent() {
    let _serial = SERIAL.lock().await;
    let mut t = start(&["chaos", "echo"]).await;
    let (addr, _stop) = serve(&t).await;
    for i in 0..50 {
        let env = user_envelope(&format!("hello {i}"), Default::default(), None);
        t.host.publish("echo", env).await.unwrap();
    }
    for _ in 0..3 {
        let env = user_envelope("reject:not today", Default::default(), None);
        t.host.publish("chaos", env).await.unwrap();
    }
    let (mut handled, mut dead) = (0, 0);
    while handled < 50 || dead < 3 {
        t.wait_for(|e| match e {
            Event::Handled { agent, .. } if agent == "echo" => Some(handled += 1),
            Event::DeadLettered { agent, .. } if agent == "chaos" => Some(dead += 1),
            _ => None,
        })
        .await;
    }
    let (status, m) = get_async(addr, "/metrics").await;
    assert_eq!(status, 200);
    let echo = |name: &str| sample(&m, &format!("warren_{name}{{agent=\"echo\"}}"));
    let chaos = |name: &str| sample(&m, &format!("warren_{name}{{agent=\"chaos\"}}"));
    assert_eq!(echo("messages_received_total"), 50.0);
    assert_eq!(echo("messages_acked_total"), 50.0);
    assert_eq!(echo("messages_published_total"), 50.0);
    assert_eq!(echo("messages_dead_lettered_total"), 0.0);
    assert_eq!(echo("guest_seconds_count"), 50.0);
    assert_eq!(echo("processing_seconds_count"), 50.0);
    assert_eq!(echo("in_flight"), 0.0);
    assert_eq!(chaos("messages_received_total"), 3.0);
    assert_eq!(chaos("messages_acked_total"), 0.0);
    assert_eq!(chaos("messages_dead_lettered_total"), 3.0);
    assert_eq!(
        sample(&m, "warren_failures_total{agent=\"chaos\",kind=\"reject\"}"),
        3.0
    );
    assert_eq!(sample(&m, "warren_plugin_loads_total"), 2.0);
    assert_eq!(sample(&m, "warren_broker_connected"), 1.0);
    assert!(m.trim_end().ends_with("# EOF"), "OpenMetrics text");

    let (status, body) = get_async(addr, "/healthz").await;
    assert_eq!((status, body.as_str()), (200, r#"{"status":"ok"}"#));
    let (status, body) = get_async(addr, "/readyz").await;
    assert_eq!(status, 200, "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_names_a_plugin_that_did_not_load() {
    let _serial = SERIAL.lock().await;
    let dir = plugins_dir(&["echo"]);
    std::fs::write(dir.path().join("broken.wasm"), b"not wasm").unwrap();
    let t = start_in(dir, runtime_config(InstanceMode::Reuse), fast_dispatch()).await;
    let (addr, _stop) = serve(&t).await;
    let (status, body) = get_async(addr, "/readyz").await;
    assert_eq!(status, 503);
    let r: Readiness = serde_json::from_str(&body).unwrap();
    assert!(!r.ready && r.broker_connected);
    assert_eq!(r.agents, ["echo"]);
    assert!(
        r.problems[0].starts_with("agent `broken` not loaded: ")
            && r.problems[0].contains("not a WebAssembly file"),
        "{r:?}"
    );
}

async fn wait_ready(addr: SocketAddr, want: bool, within: Duration) -> Readiness {
    let deadline = Instant::now() + within;
    loop {
        let (status, body) = get_async(addr, "/readyz").await;
        let r: Readiness = serde_json::from_str(&body).unwrap();
        assert_eq!(status == 200, r.ready, "{body}");
        if r.ready == want {
            return r;
        }
        assert!(
            Instant::now() < deadline,
            "readyz never became ready={want}: {body}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn rabbitmqctl(args: &[&str]) {
    let out = std::process::Command::new("rabbitmqctl")
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "rabbitmqctl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Puts the broker back even if the test fails half-way.
struct RestartOnDrop;

impl Drop for RestartOnDrop {
    fn drop(&mut self) {
        let _ = std::process::Command::new("rabbitmqctl")
            .arg("start_app")
            .output();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_follows_the_broker_through_an_outage() {
    let _serial = SERIAL.lock().await;
    let vh = Vhost::new();
    let broker = vh.broker().await;
    let t = echo_host(broker).await;
    let (addr, _stop) = serve(&t).await;
    wait_ready(addr, true, Duration::from_secs(5)).await;

    let _restart = RestartOnDrop;
    rabbitmqctl(&["stop_app"]);
    let r = wait_ready(addr, false, Duration::from_secs(30)).await;
    assert!(
        r.problems
            .iter()
            .any(|p| p.starts_with("broker not connected")),
        "{r:?}"
    );
    let (_, m) = get_async(addr, "/metrics").await;
    assert_eq!(sample(&m, "warren_broker_connected"), 0.0);

    rabbitmqctl(&["start_app"]);
    rabbitmqctl(&["await_startup"]);
    wait_ready(addr, true, Duration::from_secs(60)).await;
    // And it works again.
    let r = warren::client::send(
        t.broker.as_ref(),
        "echo",
        "back?",
        Default::default(),
        Some(Duration::from_secs(30)),
    )
    .await
    .unwrap();
    assert!(r.reply.is_some());
}
