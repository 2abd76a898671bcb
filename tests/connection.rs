//! Connecting: an unreachable broker is reported at once by the CLI verbs
//! (one line, non-zero exit) and waited for, visibly, by `warren run`.

mod common;

use std::io::{BufRead as _, BufReader};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;

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

fn cluster(args: &[&str]) {
    let out = Command::new(root().join("scripts/rabbitmq-cluster.sh"))
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "rabbitmq-cluster.sh {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn run_waits_for_its_broker_and_says_so() {
    // Node 3 of the local cluster stands in for a broker that is not up yet.
    cluster(&["up"]);
    cluster(&["stop", "3"]);
    let url = "amqp://guest:guest@127.0.0.1:5703/%2f";
    let dir = plugins_dir(&["echo"]);
    let mut child = Running::new(
        Command::new(env!("CARGO_BIN_EXE_warren"))
            .args(["run", "--no-http", "--no-watch", "--amqp-url", url])
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
    child.stop();
}
