//! Benchmarks that need no RabbitMQ: the Wasm call itself, the embedded
//! broker, and what many agents cost to start and keep.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};

use super::{BenchConfig, Table, fmt_rate, median, per_sec};
use crate::broker::Broker;
use crate::broker::memory::MemoryBroker;
use crate::dispatch::user_envelope;
use crate::host::Host;
use crate::registry;
use crate::runtime::{AgentLimits, ChatMessage, InstanceMode, Message, Runtime, RuntimeConfig};

/// 256 bytes of content, as in the relay benchmarks.
pub(crate) fn content() -> String {
    "x".repeat(256)
}

/// The echo agent of every language present: `plugins/echo.wasm` (Rust) and
/// `plugins/<lang>/echo.wasm`.
fn echo_builds(plugins: &Path) -> Vec<(String, PathBuf)> {
    let mut builds = Vec::new();
    let rust = plugins.join("echo.wasm");
    if rust.exists() {
        builds.push(("rust".to_string(), rust));
    }
    if let Ok(dirs) = std::fs::read_dir(plugins) {
        let mut dirs: Vec<PathBuf> = dirs.flatten().map(|e| e.path()).collect();
        dirs.sort();
        for d in dirs {
            let echo = d.join("echo.wasm");
            if echo.exists() {
                let lang = d.file_name().unwrap().to_string_lossy().into_owned();
                builds.push((lang, echo));
            }
        }
    }
    builds
}

fn message(i: usize) -> Message {
    Message {
        id: format!("bench-{i}"),
        conversation_id: format!("bench-{i}"),
        sender: None,
        recipient: "echo".into(),
        messages: vec![ChatMessage {
            role: "user".into(),
            content: Some(content()),
            name: None,
            tool_calls: None,
            tool_call_id: None,
            extra: None,
        }],
        context: "{}".into(),
        attempt: 1,
        hops: 0,
        model: None,
        extra: "{}".into(),
    }
}

/// Mean µs per `on-message` call through the instance pool.
async fn call_cost(path: &Path, mode: InstanceMode, pooling: bool, calls: usize) -> Result<f64> {
    let config = RuntimeConfig {
        instance_mode: mode,
        pooling,
        max_instances: 1,
        ..RuntimeConfig::default()
    };
    let limits = AgentLimits::defaults(&config, 64, 1 << 20);
    let runtime = Runtime::new(config)?;
    let pool = registry::load_plugin(&runtime, path, &limits).await?;
    // Warm up: first calls fault in pages and fill caches.
    for i in 0..calls.min(100) {
        pool.call(&message(i))
            .await?
            .map_err(|f| anyhow::anyhow!("echo failed: {f:?}"))?;
    }
    let started = Instant::now();
    for i in 0..calls {
        let out = pool
            .call(&message(i))
            .await?
            .map_err(|f| anyhow::anyhow!("echo failed: {f:?}"))?;
        std::hint::black_box(out);
    }
    Ok(started.elapsed().as_secs_f64() * 1e6 / calls as f64)
}

pub async fn wasm_cost(config: &BenchConfig) -> Result<Table> {
    let mut t = Table::new(
        "Wasm cost per message (echo agent, 256-byte content, host call path included)",
        &[
            "guest",
            "size",
            "reused instance",
            "fresh instance",
            "fresh instance (pooling)",
        ],
    );
    let builds = echo_builds(&config.plugins);
    if builds.is_empty() {
        bail!("no echo.wasm under {}", config.plugins.display());
    }
    for (lang, path) in builds {
        let size = std::fs::metadata(&path)?.len();
        let fresh_calls = (config.calls / 10).max(20);
        let reused = call_cost(&path, InstanceMode::Reuse, false, config.calls).await?;
        let fresh = call_cost(&path, InstanceMode::Fresh, false, fresh_calls).await?;
        let pooled = call_cost(&path, InstanceMode::Fresh, true, fresh_calls).await?;
        t.row(vec![
            format!("{lang} ({})", path.display()),
            format!("{} KB", size / 1024),
            format!("{reused:.1} µs"),
            format!("{fresh:.1} µs"),
            format!("{pooled:.1} µs"),
        ]);
    }
    t.note = Some(format!(
        "{} calls reused, {} fresh; target for the Rust echo agent: ≤ 10 µs reused.",
        config.calls,
        (config.calls / 10).max(20)
    ));
    Ok(t)
}

pub async fn embedded_hops(config: &BenchConfig) -> Result<Table> {
    let mut t = Table::new(
        "Embedded broker: agent hops per second (echo agent)",
        &[
            "messages",
            "consumers",
            "rounds",
            "hops/s (median)",
            "range",
        ],
    );
    let n = config.messages.max(2);
    let mut rates = Vec::new();
    for _ in 0..config.rounds.max(1) {
        rates.push(hops_once(config, n).await?);
    }
    let (low, high) = rates
        .iter()
        .fold((f64::MAX, 0f64), |(l, h), r| (l.min(*r), h.max(*r)));
    let rounds = rates.len();
    t.row(vec![
        n.to_string(),
        super::Shape::defaults().consumers.to_string(),
        rounds.to_string(),
        fmt_rate(median(rates)),
        format!("{}–{}", fmt_rate(low), fmt_rate(high)),
    ]);
    t.note = Some(
        "Each hop: dequeue → decode → Wasm call → encode → publish → ack; the queue is \
         preloaded, and the time runs from the first reply to the last (the replies pile up \
         in their queue, counted every millisecond). Target ≥ 150k hops/s."
            .into(),
    );
    Ok(t)
}

/// One round: `n` requests preloaded, then drained by a host; hops/s.
async fn hops_once(config: &BenchConfig, n: usize) -> Result<f64> {
    let dir = tempfile::tempdir()?;
    std::fs::copy(
        config.plugins.join("echo.wasm"),
        dir.path().join("echo.wasm"),
    )
    .context("copying echo.wasm")?;
    let broker = Arc::new(MemoryBroker::new());
    // The queue is preloaded (as for the RabbitMQ relay): building and
    // publishing the requests is the user's work, not the host's, and on
    // two cores it would compete with the hops being measured.
    broker.declare_agent("echo").await?;
    let (reply_to, replies) = broker.reply_queue().await?;
    let body_text = content();
    for _ in 0..n {
        let env = user_envelope(&body_text, Default::default(), Some(reply_to.clone()));
        broker
            .publish(&crate::broker::Route::Agent("echo".into()), env)
            .await?;
    }
    let host = Host::new(config.host_config(), broker.clone())?;
    host.load_dir(dir.path()).await?;
    // Timed from the first replies seen to the last, without the agent's
    // start-up: the hops after the first count. The replies pile up in
    // their queue, counted every millisecond (as the RabbitMQ relay's
    // output is): consuming them one by one would be the user's work,
    // waking this thread for every reply on the two cores the hops run on.
    let replied = || broker.ready(&reply_to).unwrap_or(0);
    let mut first = None;
    let mut last_change = (0, Instant::now());
    loop {
        let now = replied();
        if now > 0 && first.is_none() {
            first = Some((Instant::now(), now));
        }
        if now >= n {
            break;
        }
        if now != last_change.0 {
            last_change = (now, Instant::now());
        } else if last_change.1.elapsed() > Duration::from_secs(60) {
            anyhow::bail!("embedded benchmark stalled at {now} of {n} replies");
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    drop(replies);
    let (started, seen) = first.unwrap_or((Instant::now(), n));
    let elapsed = started.elapsed();
    host.shutdown().await;
    Ok(per_sec(n - seen, elapsed))
}

/// A copy of a component that differs only in a custom section, so that it
/// has its own content hash (and its own compile-cache entry).
pub fn distinct_copy(bytes: &[u8], tag: &str) -> Vec<u8> {
    fn leb(mut n: usize, out: &mut Vec<u8>) {
        loop {
            let b = (n & 0x7f) as u8;
            n >>= 7;
            if n == 0 {
                out.push(b);
                break;
            }
            out.push(b | 0x80);
        }
    }
    let name = b"warren-bench";
    let mut payload = Vec::new();
    leb(name.len(), &mut payload);
    payload.extend_from_slice(name);
    payload.extend_from_slice(tag.as_bytes());
    let mut out = bytes.to_vec();
    out.push(0); // custom section
    leb(payload.len(), &mut out);
    out.extend_from_slice(&payload);
    out
}

fn rss_mib(pid: u32) -> Result<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let kb: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .context("no VmRSS")?;
    Ok(kb / 1024.0)
}

/// Starts `warren run` on `dir` and returns (time until every agent serves, RSS after 1 s idle).
async fn start_host(
    config: &BenchConfig,
    dir: &Path,
    cache: &Path,
    agents: usize,
) -> Result<(Duration, f64)> {
    let sock = dir.join("control.sock");
    let started = Instant::now();
    let mut child = std::process::Command::new(&config.warren_exe)
        .args(["run", "--log", "warn", "--plugins"])
        .arg(dir)
        .arg("--cache-dir")
        .arg(cache)
        .arg("--control")
        .arg(&sock)
        // Not the default port: a host may be running beside the benchmark.
        .args(["--http", "127.0.0.1:0"])
        .env_remove("WARREN_AMQP_URL")
        .env_remove("WARREN_HTTP")
        .spawn()
        .with_context(|| format!("starting {}", config.warren_exe.display()))?;
    let result = async {
        let deadline = Instant::now() + Duration::from_secs(300);
        loop {
            if Instant::now() > deadline {
                bail!("the host did not start {agents} agents within 300 s");
            }
            if let Ok(status) = crate::control::status(&sock).await
                && status.agents.len() == agents
                && status.agents.iter().all(|a| a.queue.consumer_count > 0)
            {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let ready = started.elapsed();
        tokio::time::sleep(Duration::from_secs(1)).await;
        Ok((ready, rss_mib(child.id())?))
    }
    .await;
    let _ = std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let _ = child.wait();
    result
}

pub async fn scale(config: &BenchConfig) -> Result<Table> {
    let mut t = Table::new(
        "Scale: start-up until every agent consumes, and idle RSS (embedded broker)",
        &[
            "agents",
            "start, cold compile cache",
            "start, warm cache",
            "idle RSS (warm)",
        ],
    );
    let echo = std::fs::read(config.plugins.join("echo.wasm")).context("reading echo.wasm")?;
    for &k in &config.scale {
        let dir = tempfile::tempdir()?;
        let cache = tempfile::tempdir()?;
        for i in 0..k {
            std::fs::write(
                dir.path().join(format!("echo_{i}.wasm")),
                distinct_copy(&echo, &i.to_string()),
            )?;
        }
        let (cold, _) = start_host(config, dir.path(), cache.path(), k).await?;
        let (warm, rss) = start_host(config, dir.path(), cache.path(), k).await?;
        t.row(vec![
            k.to_string(),
            format!("{:.2} s", cold.as_secs_f64()),
            format!("{:.2} s", warm.as_secs_f64()),
            format!("{rss:.0} MiB"),
        ]);
    }
    t.note = Some(format!(
        "Each agent is a distinct component (own hash, own compile), {} consumers each (the defaults). Target for 100 agents: ≤ 2 s warm, ≤ 150 MiB.",
        crate::dispatch::DEFAULT_CONSUMERS
    ));
    Ok(t)
}

#[cfg(test)]
mod tests {
    #[test]
    fn distinct_copies_differ_only_by_a_custom_section() {
        let base = b"\0asm\x0d\x00\x01\x00".to_vec();
        let a = super::distinct_copy(&base, "1");
        let b = super::distinct_copy(&base, "2");
        assert_ne!(a, b);
        assert!(a.starts_with(&base));
        assert_eq!(a[8], 0);
    }
}
