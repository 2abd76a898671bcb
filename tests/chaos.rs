//! `warren chaos`, CI-sized: each kind of fault injected into a host in the
//! middle of a backlog, and every request answered exactly once or, at
//! worst, more than once within the in-flight window: never lost.

mod common;

use std::process::Command;

use common::cluster::{cluster, ctl, vhost};
use common::rabbit::Vhost;
use common::*;

/// The rows restart the broker and stop cluster nodes: one at a time.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Runs `warren chaos`, returns its table's rows as cells, and checks what
/// every row must show.
fn chaos(args: &[&str]) -> Vec<Vec<String>> {
    let out = Command::new(env!("CARGO_BIN_EXE_warren"))
        .arg("chaos")
        .args(args)
        .arg("--echo")
        .arg(root().join("plugins/echo.wasm"))
        .current_dir(root())
        .env_remove("WARREN_AMQP_URL")
        .env("WARREN_CACHE_DIR", cache_dir())
        .output()
        .expect("running warren chaos");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    println!("{stdout}\n{stderr}");
    assert!(
        out.status.success(),
        "warren chaos failed:\n{stdout}\n{stderr}"
    );
    let rows: Vec<Vec<String>> = stdout
        .lines()
        .filter(|l| l.starts_with('|') && !l.starts_with("| fault") && !l.starts_with("|--"))
        .map(|l| {
            l.trim_matches('|')
                .split('|')
                .map(|c| c.trim().to_string())
                .collect()
        })
        .collect();
    for row in &rows {
        let [
            fault,
            injected,
            messages,
            answered,
            lost,
            duplicates,
            dead,
            unexpected,
            _,
        ] = &row[..]
        else {
            panic!("unexpected row {row:?}");
        };
        assert_ne!(injected, "0", "{fault}: nothing injected");
        assert_eq!(lost, "0", "{fault}: {row:?}");
        assert_eq!(answered, messages, "{fault}: {row:?}");
        assert_eq!(dead, "0", "{fault}: {row:?}");
        assert_eq!(unexpected, "0", "{fault}: {row:?}");
        // At-least-once: a fault repeats at most the unacknowledged window
        // (consumers × the prefetch, by default) — per injection.
        let window = warren::dispatch::DispatchConfig::default().consumers_per_agent
            * usize::from(warren::broker::amqp::DEFAULT_PREFETCH)
            * injected.parse::<usize>().unwrap();
        assert!(
            duplicates.parse::<usize>().unwrap() <= window,
            "{fault}: more duplicates than the in-flight window: {row:?}"
        );
    }
    rows
}

#[test]
fn closes_restarts_kills_swaps_and_a_frozen_link_lose_nothing() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let vh = Vhost::new();
    let rows = chaos(&[
        "--amqp-url",
        &vh.url(),
        "--messages",
        "3000",
        "--faults",
        "close=2,restart=1,kill=2,swap=3,freeze=1",
        "--heartbeat",
        "2",
        "--quiet",
        "30",
    ]);
    let faults: Vec<&str> = rows.iter().map(|r| r[0].as_str()).collect();
    assert_eq!(
        faults,
        [
            "connection closes",
            "broker restarts",
            "host kills",
            "plugin swaps",
            "frozen links"
        ]
    );
}

#[test]
fn the_loss_of_the_hosts_cluster_node_loses_nothing() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    cluster(&["up"]);
    let vhost = vhost("warren-chaos");
    let urls: Vec<String> = (1..=3)
        .map(|n| format!("amqp://guest:guest@127.0.0.1:{}/{vhost}", 5700 + n))
        .collect();
    let rows = chaos(&[
        "--amqp-url",
        &urls.join(","),
        "--queue-type",
        "quorum",
        "--messages",
        "3000",
        "--faults",
        "node=1",
        "--quiet",
        "30",
    ]);
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0][0], "cluster node losses");
    ctl(1, &["delete_vhost", &vhost]);
}
