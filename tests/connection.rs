//! Connecting: an unreachable broker is reported at once by the CLI verbs
//! (one line, non-zero exit) and waited for, visibly, by `warren run`.

mod common;

use std::io::{BufRead as _, BufReader};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::cluster::cluster;
use common::http::get;
use common::rabbit::Vhost;
use common::*;
use warren::Broker;
use warren::broker::amqp::{AmqpBroker, AmqpConfig};
use warren::chaos::Proxy;

fn warren(args: &[&str]) -> (std::process::Output, Duration) {
    let started = Instant::now();
    let out = Command::new(env!("CARGO_BIN_EXE_warren"))
        .args(args)
        .env_remove("WARREN_AMQP_URL")
        .env_remove("RUST_LOG")
        .output()
        .unwrap();
    (out, started.elapsed())
}

#[test]
fn an_unreachable_broker_fails_each_verb_at_once_with_one_line() {
    let url = "amqp://guest:guest@127.0.0.1:1/";
    let verbs: [&[&str]; 4] = [
        &["status", "--agent", "echo"],
        &["send", "echo", "hi"],
        &["send", "echo", "hi", "--wait"],
        &["dlq", "list", "echo"],
    ];
    for verb in verbs {
        let mut args = verb.to_vec();
        args.extend(["--amqp-url", url]);
        let (out, took) = warren(&args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?}");
        assert!(took < Duration::from_secs(6), "{args:?} took {took:?}");
        assert_eq!(err.lines().count(), 1, "{args:?}: {err}");
        assert!(
            err.contains("127.0.0.1:1") && err.to_lowercase().contains("refused"),
            "{args:?}: {err}"
        );
        assert!(!err.contains("guest:guest"), "{err}");
    }
}

#[test]
fn a_port_that_never_answers_times_out_with_the_connect_timeout() {
    // Accepts connections (the kernel's backlog) but never speaks AMQP.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("amqp://guest:guest@{}/", silent.local_addr().unwrap());
    let (out, took) = warren(&[
        "status",
        "--agent",
        "echo",
        "--amqp-url",
        &url,
        "--connect-timeout",
        "2",
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(took < Duration::from_secs(4), "took {took:?}");
    assert!(
        err.contains("within 2s") && err.contains("connect timeout"),
        "{err}"
    );
    assert_eq!(err.lines().count(), 1, "{err}");
}

#[test]
fn run_waits_for_its_broker_and_says_so() {
    // Node 3 of the local cluster stands in for a broker that is not up yet.
    cluster(&["up"]);
    cluster(&["stop", "3"]);
    let url = "amqp://guest:guest@127.0.0.1:5703/%2f";
    let dir = plugins_dir(&["echo"]);
    let http = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let mut child = Running::new(
        Command::new(env!("CARGO_BIN_EXE_warren"))
            .args(["run", "--no-watch", "--amqp-url", url])
            .args(["--http", &http.to_string()])
            .arg("--plugins")
            .arg(dir.path())
            .env_remove("RUST_LOG")
            .env("WARREN_CACHE_DIR", cache_dir())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let log = Arc::new(Mutex::new(String::new()));
    {
        let (stderr, log) = (child.child().stderr.take().unwrap(), log.clone());
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let mut l = log.lock().unwrap();
                l.push_str(&line);
                l.push('\n');
            }
        });
    }
    let wait_for = |what: &str, within: Duration| {
        let deadline = Instant::now() + within;
        while !log.lock().unwrap().contains(what) {
            assert!(
                Instant::now() < deadline,
                "no `{what}` in: {}",
                log.lock().unwrap()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    wait_for("next attempt in", Duration::from_secs(3));
    std::thread::sleep(Duration::from_secs(2));
    {
        let text = log.lock().unwrap();
        assert!(text.matches("next attempt in").count() >= 2, "{text}");
        assert!(
            text.contains("127.0.0.1:5703") && text.contains("WARN"),
            "{text}"
        );
        assert!(!text.contains("guest:guest"), "{text}");
    }
    // Alive and not ready meanwhile, with the reason.
    let (code, body) = get(http, "/readyz");
    assert_eq!(code, 503, "{body}");
    assert!(
        body.contains("waiting for the broker") && body.contains("127.0.0.1:5703"),
        "{body}"
    );
    assert!(!body.contains("guest:guest"), "{body}");
    assert_eq!(get(http, "/healthz").0, 200);
    cluster(&["start", "3"]);
    // The backoff is capped at 4 s, so the next attempt after the node is
    // up comes within that (the bound is loose: a loaded CI machine).
    wait_for("hosting 1 agents", Duration::from_secs(15));
    let (out, _) = warren(&["send", "echo", "hello", "--wait", "--amqp-url", url]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("hello"));
    let (code, body) = get(http, "/readyz");
    assert_eq!(code, 200, "{body}");
    child.stop();
}

/// A link that stays open but carries nothing (a silent partition) is
/// noticed through the heartbeat, and the host recovers once it heals —
/// also when the proxy swallows the reconnection attempts it accepts while
/// frozen, which only the handshake's timeout ends. Nothing is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_link_is_noticed_and_recovered_from() {
    let vh = Vhost::new();
    let proxy = Proxy::start("127.0.0.1:5672".parse().unwrap())
        .await
        .unwrap();
    let heartbeat = 2u16;
    let host_broker = Arc::new(
        AmqpBroker::connect(AmqpConfig {
            heartbeat,
            connect_timeout: Duration::from_secs(2),
            ..AmqpConfig::new(vh.url().replace("127.0.0.1:5672", &proxy.addr.to_string()))
        })
        .await
        .unwrap(),
    );
    let t = echo_host(host_broker.clone()).await;
    let user: Arc<dyn Broker> = vh.broker().await;
    let ask = |i: usize| ask_echo(user.clone(), i);
    expect_echoes(0, (0..5).map(ask).collect()).await;
    let before = t.host.status().await.unwrap();
    assert_eq!(before.agents[0].queue.status, "active", "{before:?}");
    proxy.freeze();
    let frozen = Instant::now();
    let mut waiting: Vec<_> = (5..55).map(ask).collect();
    while host_broker.connected() {
        assert!(
            frozen.elapsed() < Duration::from_secs(3 * u64::from(heartbeat) + 2),
            "the frozen link was not noticed"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let noticed = frozen.elapsed();
    // Frozen long enough for reconnection attempts to be swallowed.
    while proxy.swallowed.load(std::sync::atomic::Ordering::Relaxed) == 0 {
        assert!(
            frozen.elapsed() < Duration::from_secs(30),
            "no reconnection attempt while frozen"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Meanwhile status answers: the broker is reconnecting, and each queue
    // shows the counts of the status before, said to be from then.
    let during = t.host.status().await.expect("status while reconnecting");
    assert!(
        during.broker.ends_with("(reconnecting)"),
        "{}",
        during.broker
    );
    let echo = &during.agents[0].queue;
    assert!(
        echo.status.starts_with("broker reconnecting; counts from"),
        "{echo:?}"
    );
    assert_eq!(echo.consumer_count, before.agents[0].queue.consumer_count);
    tokio::time::sleep(Duration::from_secs(1)).await;
    proxy.thaw();
    let thawed = Instant::now();
    while !host_broker.connected() {
        assert!(
            thawed.elapsed() < Duration::from_secs(30),
            "the host did not reconnect after the link healed"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    println!(
        "heartbeat {heartbeat}s: noticed after {noticed:?}, reconnected {:?} after the thaw",
        thawed.elapsed()
    );
    waiting.extend((55..65).map(ask));
    expect_echoes(5, waiting).await;
    t.host.shutdown().await;
}

/// A closed connection comes back with every channel: lapin declares each
/// channel's queues again by name, and one refusal (a server-made
/// `amq.gen-*` name, another connection's exclusive queue) fails the whole
/// recovery, consumers included. The host's question queue (for traces) is
/// the one that used to be refused: right after the recovery the host
/// answers a question at once, keeps its connection, and echoes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_closed_connection_comes_back_with_every_channel() {
    common::logs::capture("warn");
    let vh = Vhost::new();
    let host_broker = Arc::new(
        AmqpBroker::connect(AmqpConfig::new(vh.url()))
            .await
            .unwrap(),
    );
    let t = echo_host(host_broker.clone()).await;
    let user: Arc<dyn Broker> = vh.broker().await;
    let question = serde_json::to_vec(&serde_json::json!({
        "from": "the test",
        "ask": {"kind": "recent", "limit": 1}
    }))
    .unwrap();
    let asked = |wait| {
        let (user, question) = (user.clone(), question.clone());
        async move { user.ask_peers(question, wait).await.unwrap().len() }
    };
    let started = Instant::now();
    while asked(Duration::from_millis(500)).await == 0 {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "the host never answered"
        );
    }
    expect_echoes(0, (0..5).map(|i| ask_echo(user.clone(), i)).collect()).await;

    vh.close_all_connections();
    let closed = Instant::now();
    // The user's own connection is closed too: it recovers by itself.
    tokio::time::sleep(Duration::from_secs(1)).await;
    while !host_broker.connected() {
        assert!(
            closed.elapsed() < Duration::from_secs(30),
            "the host did not reconnect"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The question queue is back with the rest: answers within a few
    // seconds (a refused recovery leaves the answering loop in its 5 s pause).
    let back = Instant::now();
    let mut answers = 0;
    while answers == 0 && back.elapsed() < Duration::from_secs(3) {
        answers = asked(Duration::from_millis(500)).await;
    }
    assert_eq!(answers, 1, "the host answers questions again at once");
    assert!(host_broker.connected(), "the recovery held");
    let logs = common::logs::text();
    for refusal in ["ACCESS_REFUSED", "RESOURCE_LOCKED"] {
        assert!(
            !logs.contains(refusal),
            "a channel's recovery was refused: {logs}"
        );
    }
    expect_echoes(5, (5..25).map(|i| ask_echo(user.clone(), i)).collect()).await;
    t.host.shutdown().await;
}
