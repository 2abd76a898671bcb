//! Fault isolation, measured: a faulty agent hit with every kind of failure
//! does not slow the healthy agent beside it, and runaway guests stay within
//! their memory limit. These tests time things, so they run one at a time in
//! their own test binary and compare ratios, never absolute times.

mod common;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::rabbit::Vhost;
use common::*;
use futures::StreamExt as _;
use warren::MemoryBroker;
use warren::broker::Route;
use warren::dispatch::user_envelope;
use warren::runtime::{InstanceMode, RuntimeConfig};

/// The tests in this file measure: never two at once.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Each failure kind, the command that causes it, and how its reason starts.
const FAULTS: &[(&str, &str)] = &[
    ("spin", "guest failed: deadline exceeded"),
    ("bomb", "guest failed: memory limit hit"),
    ("recurse", "guest failed: stack overflow"),
    ("trap", "guest failed: panicked at src/lib.rs:"),
    ("oob", "guest failed: wasm trap: out of bounds"),
    ("bad-context", "invalid output from agent"),
    ("to:", "invalid output from agent"),
    ("to:Not An Agent!", "invalid output from agent"),
    ("fanout:9", "invalid output from agent: 9 outgoing messages"),
    (
        "big:70000",
        "invalid output from agent: outgoing message #0 is too large",
    ),
];

fn runtime() -> RuntimeConfig {
    RuntimeConfig {
        max_memory: 32 << 20,
        ..runtime_config(InstanceMode::Reuse)
    }
}

/// A plugins folder with `echo` (healthy) and `chaos` (faulty), chaos with
/// a deadline that makes a round of faults last a few seconds: long enough
/// to measure a rate, short enough for a test. A bomb must reach chaos's
/// memory limit within its 20 ms before it becomes a runaway (after that
/// it gets scarce slices): under load 32 MiB of writes may not, 8 MiB does.
fn plugins(max_memory_mb: usize) -> tempfile::TempDir {
    let dir = plugins_dir(&["chaos", "echo"]);
    std::fs::write(
        dir.path().join("chaos.toml"),
        format!(
            "[limits]\ndeadline_ms = 1000\nthrottle_after_ms = 20\nmax_memory_mb = {max_memory_mb}\n"
        ),
    )
    .unwrap();
    dir
}

/// A steady load on `echo`: keeps a backlog of messages in its queue and
/// drains the replies, until dropped.
struct Load {
    stop: Arc<AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Load {
    async fn start(t: &TestHost) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let (reply_queue, mut replies) = t.broker.reply_queue().await.unwrap();
        let drain = {
            let stop = stop.clone();
            tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    match tokio::time::timeout(Duration::from_millis(100), replies.next()).await {
                        Ok(Some(d)) => d.ack().await.unwrap(),
                        Ok(None) => break,
                        Err(_) => {}
                    }
                }
            })
        };
        let feed = {
            let stop = stop.clone();
            let broker = t.broker.clone();
            let echo = t.host.registry().get("echo").unwrap();
            tokio::spawn(async move {
                let mut published: u64 = 0;
                while !stop.load(Ordering::Relaxed) {
                    let done = echo.stats().ok.load(Ordering::Relaxed);
                    if published.saturating_sub(done) < 4_000 {
                        let route = Route::Agent("echo".into());
                        let batch = (0..200).map(|_| {
                            let env = user_envelope(
                                "ping",
                                Default::default(),
                                Some(reply_queue.clone()),
                            );
                            let (broker, route) = (broker.clone(), route.clone());
                            async move { broker.publish(&route, env).await.unwrap() }
                        });
                        futures::stream::iter(batch)
                            .buffer_unordered(128)
                            .collect::<Vec<()>>()
                            .await;
                        published += 200;
                    } else {
                        tokio::time::sleep(Duration::from_millis(2)).await;
                    }
                }
            })
        };
        // Stopped in this order: the feed, then the drain of the replies.
        Load {
            stop,
            tasks: vec![feed, drain],
        }
    }

    async fn stop(self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.tasks {
            t.await.unwrap();
        }
    }
}

fn handled(t: &TestHost) -> u64 {
    t.host
        .registry()
        .get("echo")
        .unwrap()
        .stats()
        .ok
        .load(Ordering::Relaxed)
}

/// How often the test asks the broker for queue stats, in every window
/// alike (asking costs the broker some work).
const POLL: Duration = Duration::from_millis(50);

/// echo's rate over `window`, polling the stats as a faulty round does.
async fn baseline_rate(t: &TestHost, window: Duration) -> f64 {
    let (start, n0) = (Instant::now(), handled(t));
    while start.elapsed() < window {
        dead_letter_count(t).await;
        tokio::time::sleep(POLL).await;
    }
    (handled(t) - n0) as f64 / start.elapsed().as_secs_f64()
}

async fn dead_letter_count(t: &TestHost) -> u64 {
    let stats = t.broker.stats().await.unwrap();
    stats
        .iter()
        .find(|q| q.agent == "chaos")
        .map(|q| q.dead_letter_count)
        .unwrap_or(0)
}

/// Sends three messages of each failure kind to chaos; returns echo's rate
/// while they were being handled, how long that took, and the message ids by
/// the command that sent them.
async fn faulty_round(t: &TestHost) -> (f64, Duration, HashMap<String, &'static str>) {
    let before = dead_letter_count(t).await;
    let (start, n0) = (Instant::now(), handled(t));
    let mut ids = HashMap::new();
    for _ in 0..3 {
        for (command, reason) in FAULTS {
            let env = user_envelope(command, Default::default(), None);
            ids.insert(env.id.clone(), *reason);
            t.host.publish("chaos", env).await.unwrap();
        }
    }
    let expected = before + ids.len() as u64;
    let deadline = Instant::now() + Duration::from_secs(60);
    while dead_letter_count(t).await < expected {
        assert!(
            Instant::now() < deadline,
            "the faulty messages were not all dead-lettered"
        );
        tokio::time::sleep(POLL).await;
    }
    let window = start.elapsed();
    let rate = (handled(t) - n0) as f64 / window.as_secs_f64();
    (rate, window, ids)
}

async fn healthy_agent_keeps_its_throughput(t: TestHost) {
    let load = Load::start(&t).await;
    tokio::time::sleep(Duration::from_millis(500)).await; // steady state
    let mut before = baseline_rate(&t, Duration::from_secs(1)).await;
    let mut ratios = Vec::new();
    let mut checked = false;
    // Seven rounds: on two cores shared with RabbitMQ a single window can
    // dip (a broker flush, a GC) whatever chaos does; the median of seven
    // is steady where the median of five was not.
    const ROUNDS: usize = 7;
    for round in 1..=ROUNDS {
        let (faulty, window, ids) = faulty_round(&t).await;
        let after = baseline_rate(&t, window).await;
        let ratio = faulty / ((before + after) / 2.0);
        println!(
            "round {round}: healthy {before:.0}/s before, {faulty:.0}/s while chaos failed {} messages in {window:?}, {after:.0}/s after: ratio {ratio:.3}",
            ids.len()
        );
        ratios.push(ratio);
        before = after;
        if !checked {
            // Every fault ended in the dead-letter queue with its reason.
            let letters = t.broker.dead_letters("chaos").await.unwrap();
            for (id, reason) in &ids {
                let letter = letters
                    .iter()
                    .find(|l| &l.envelope.id == id)
                    .unwrap_or_else(|| panic!("message {id} was not dead-lettered"));
                assert!(
                    letter.reason.starts_with(reason),
                    "{id}: expected `{reason}...`, got `{}`",
                    letter.reason
                );
            }
            checked = true;
        }
    }
    load.stop().await;
    assert!(handled(&t) > 0);
    ratios.sort_by(f64::total_cmp);
    let median = ratios[ROUNDS / 2];
    // Behaviour, not a benchmark: a healthy agent held up behind chaos's
    // runaways (one lane, a shared store, a blocking call) falls to a small
    // fraction of its rate; on two cores shared with RabbitMQ a healthy run
    // measures 0.8–1.05 round by round, so the bar sits well below that
    // noise. The ratios are printed for anyone who wants the number.
    assert!(
        median >= 0.6,
        "the healthy agent slowed to {median:.3} of its throughput while chaos failed (rounds: {ratios:?})"
    );
    // The host is still serving both.
    let status = t.host.status().await.unwrap();
    let chaos = status
        .agents
        .iter()
        .find(|a| a.queue.agent == "chaos")
        .unwrap();
    assert!(chaos.guest_errors.deadline >= 9, "{chaos:?}");
    assert!(chaos.guest_errors.memory_limit >= 9, "{chaos:?}");
    assert!(chaos.guest_errors.stack_overflow >= 9, "{chaos:?}");
    // Closed cleanly: a host left running past its test keeps its broker
    // connection (and what arrives on it) alive into the next test.
    t.host.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn healthy_agent_keeps_its_throughput_embedded() {
    let _serial = SERIAL.lock().await;
    let t = start_on(
        Arc::new(MemoryBroker::new()),
        plugins(8),
        runtime(),
        fast_dispatch(),
    )
    .await;
    healthy_agent_keeps_its_throughput(t).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn healthy_agent_keeps_its_throughput_rabbitmq() {
    let _serial = SERIAL.lock().await;
    let vh = Vhost::new();
    let broker = vh.broker().await;
    let t = start_on(broker, plugins(8), runtime(), fast_dispatch()).await;
    healthy_agent_keeps_its_throughput(t).await;
}

/// Resident set size and its peak ("high water mark"), in bytes.
fn rss() -> (u64, u64) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let field = |name: &str| -> u64 {
        let line = status.lines().find(|l| l.starts_with(name)).unwrap();
        let kb: u64 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
        kb << 10
    };
    (field("VmRSS:"), field("VmHWM:"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runaway_guests_stay_within_the_memory_limit() {
    let _serial = SERIAL.lock().await;
    let limit: u64 = 32 << 20;
    let mut t = start_in(plugins(32), runtime(), fast_dispatch()).await;
    // Warm up: instances, code, the allocator's arenas.
    dead_letter_of_command(&mut t, "trap").await;
    // Reset the peak so it measures only what follows.
    std::fs::write("/proc/self/clear_refs", "5").unwrap();
    let (start, _) = rss();
    let mut ids = Vec::new();
    for command in ["bomb", "spin", "bomb", "spin", "bomb", "spin"] {
        let env = user_envelope(command, Default::default(), None);
        ids.push(env.id.clone());
        t.host.publish("chaos", env).await.unwrap();
    }
    let mut pending: std::collections::HashSet<String> = ids.into_iter().collect();
    while !pending.is_empty() {
        t.wait_for(|e| match e {
            warren::dispatch::Event::DeadLettered { id, .. } => Some(pending.remove(id)),
            _ => None,
        })
        .await;
    }
    let (end, peak) = rss();
    let instances = 2; // runtime_config: at most two chaos instances at once
    let margin = 16 << 20;
    println!(
        "RSS {} MiB at start, peak {} MiB, {} MiB at the end; limit {} MiB x {instances} instances",
        start >> 20,
        peak >> 20,
        end >> 20,
        limit >> 20
    );
    assert!(
        peak <= start + instances * limit + margin,
        "the host grew past its guests' memory limit: {} -> {} MiB",
        start >> 20,
        peak >> 20
    );
    assert!(
        end <= start + margin,
        "memory was not given back: {} -> {} MiB",
        start >> 20,
        end >> 20
    );
}

async fn dead_letter_of_command(t: &mut TestHost, command: &str) -> String {
    let env = user_envelope(command, Default::default(), None);
    let id = env.id.clone();
    t.host.publish("chaos", env).await.unwrap();
    t.dead_letter_of(&id).await
}
