//! The benchmark suite in miniature (`warren bench --quick`), so its code
//! cannot rot: every table must come out with numbers in it.

mod common;

use std::process::Command;

use common::rabbit::Vhost;
use common::*;

/// `warren bench --quick` with `args` against `vh`: its output, once it succeeded.
fn quick_bench(vh: &Vhost, args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_warren"))
        .current_dir(root())
        .env("WARREN_CACHE_DIR", cache_dir())
        .args(["bench", "--quick", "--amqp-url", &vh.url()])
        .args(args)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

#[test]
fn quick_benchmark_prints_every_table() {
    let vh = Vhost::new();
    // A host already holds the default HTTP port: the benchmark does not need it.
    let _taken = std::net::TcpListener::bind("127.0.0.1:9464");
    let stdout = quick_bench(&vh, &[]);
    for title in [
        "### Wasm cost per message",
        "### Embedded broker: agent hops per second",
        "### Scale: start-up",
        "### Raw lapin relay: its window, measured",
        "### RabbitMQ relay throughput",
        "### warren's settings, swept",
        "### RabbitMQ end-to-end latency",
    ] {
        assert!(stdout.contains(title), "missing {title}:\n{stdout}");
    }
    assert!(stdout.contains("| persistent + confirms |"), "{stdout}");
    assert!(stdout.contains("| transient, no confirms |"), "{stdout}");
    assert!(stdout.contains("| rust (plugins/echo.wasm) |"), "{stdout}");
    assert!(stdout.contains("the defaults |"), "{stdout}");
    assert!(
        stdout.contains("| 200 msg/s | warren |") && stdout.contains("| 200 msg/s | raw lapin |"),
        "{stdout}"
    );
    // The raw relay also on a version-2 queue, as warren's own.
    assert!(
        stdout.contains("| 200 msg/s | raw lapin, queue version 2 |"),
        "{stdout}"
    );
    // The benchmark cleans up after itself.
    let out = Command::new("rabbitmqctl")
        .args(["list_queues", "-p", &vh.name, "name"])
        .output()
        .unwrap();
    let queues = String::from_utf8_lossy(&out.stdout);
    assert!(!queues.contains("bench_"), "{queues}");
}

#[test]
fn the_comparisons_measure_the_settings_given_instead_of_the_defaults() {
    let vh = Vhost::new();
    let stdout = quick_bench(
        &vh,
        &[
            "--only",
            "latency",
            "--consumers",
            "1",
            "--prefetch",
            "64",
            "--in-flight",
            "32",
            "--ack-gather",
            "0",
        ],
    );
    assert!(
        stdout.contains(
            "warren at 1 consumers × 32 in flight, prefetch 64, acks gathered 0 ms (not its defaults)"
        ),
        "{stdout}"
    );
    assert!(stdout.contains("| 200 msg/s | warren |"), "{stdout}");
    assert!(
        !stdout.contains("### RabbitMQ relay throughput"),
        "{stdout}"
    );
}
