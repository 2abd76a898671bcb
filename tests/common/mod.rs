//! Shared test helpers: a host on the embedded broker over a temp plugins
//! folder, and waiting for dispatch events.
#![allow(dead_code)]

pub mod amqp;
pub mod cluster;
pub mod http;
pub mod logs;
pub mod rabbit;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::broadcast;
use warren::dispatch::{DispatchConfig, Event};
use warren::runtime::{InstanceMode, RuntimeConfig};
use warren::{Broker, Host, HostConfig, MemoryBroker};

pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A built guest: `plugins/NAME.wasm` or `tests/fixtures/NAME.wasm`.
pub fn guest(name: &str) -> PathBuf {
    for dir in ["plugins", "tests/fixtures"] {
        let p = root().join(dir).join(format!("{name}.wasm"));
        if p.exists() {
            return p;
        }
    }
    panic!("guest {name}.wasm is not built: run scripts/build-guests.sh");
}

/// Compile cache shared by the tests (the same components every time).
pub fn cache_dir() -> PathBuf {
    root().join("target").join("test-compile-cache")
}

pub fn runtime_config(mode: InstanceMode) -> RuntimeConfig {
    RuntimeConfig {
        cache_dir: Some(cache_dir()),
        instance_mode: mode,
        max_instances: 2,
        deadline: Duration::from_secs(5),
        ..RuntimeConfig::default()
    }
}

pub fn fast_dispatch() -> DispatchConfig {
    DispatchConfig {
        max_attempts: 3,
        trap_retries: 1,
        max_hops: 6,
        backoff_base: Duration::from_millis(5),
        backoff_cap: Duration::from_millis(20),
        consumers_per_agent: 2,
        in_flight_per_consumer: 4,
        max_outgoing: 8,
        max_message_bytes: 64 << 10,
    }
}

/// A plugins folder holding copies of the named guests.
pub fn plugins_dir(guests: &[&str]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for g in guests {
        std::fs::copy(guest(g), dir.path().join(format!("{g}.wasm"))).unwrap();
    }
    dir
}

pub struct TestHost {
    pub host: Arc<Host>,
    pub broker: Arc<dyn Broker>,
    pub events: broadcast::Receiver<Event>,
    pub dir: tempfile::TempDir,
}

pub async fn start(guests: &[&str]) -> TestHost {
    start_with(guests, runtime_config(InstanceMode::Reuse), fast_dispatch()).await
}

pub async fn start_with(
    guests: &[&str],
    runtime: RuntimeConfig,
    dispatch: DispatchConfig,
) -> TestHost {
    let dir = plugins_dir(guests);
    start_in(dir, runtime, dispatch).await
}

pub async fn start_in(
    dir: tempfile::TempDir,
    runtime: RuntimeConfig,
    dispatch: DispatchConfig,
) -> TestHost {
    start_on(Arc::new(MemoryBroker::new()), dir, runtime, dispatch).await
}

/// A host with the echo agent (reused instances, the fast test dispatch)
/// on `broker`.
pub async fn echo_host(broker: Arc<dyn Broker>) -> TestHost {
    start_on(
        broker,
        plugins_dir(&["echo"]),
        runtime_config(InstanceMode::Reuse),
        fast_dispatch(),
    )
    .await
}

pub async fn start_on(
    broker: Arc<dyn Broker>,
    dir: tempfile::TempDir,
    runtime: RuntimeConfig,
    dispatch: DispatchConfig,
) -> TestHost {
    let config = HostConfig {
        runtime,
        dispatch,
        guard: Default::default(),
        agents: Default::default(),
        trace: Default::default(),
    };
    let host = Host::new(config, broker.clone()).unwrap();
    let events = host.events();
    host.load_dir(dir.path()).await.unwrap();
    TestHost {
        host,
        broker,
        events,
        dir,
    }
}

impl TestHost {
    /// Waits (up to 10 s) for the first event that `pick` accepts.
    pub async fn wait_for<T>(&mut self, mut pick: impl FnMut(&Event) -> Option<T>) -> T {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let ev = tokio::time::timeout_at(deadline, self.events.recv())
                .await
                .expect("timed out waiting for an event")
                .expect("event channel closed");
            if let Some(t) = pick(&ev) {
                return t;
            }
        }
    }

    /// Waits for the dead letter of message `id` and returns its reason.
    pub async fn dead_letter_of(&mut self, id: &str) -> String {
        self.wait_for(|e| match e {
            Event::DeadLettered { id: i, reason, .. } if i == id => Some(reason.clone()),
            _ => None,
        })
        .await
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }
}

/// A `warren run` child, killed if the test ends without stopping it.
pub struct Running(Option<std::process::Child>);

impl Running {
    pub fn new(child: std::process::Child) -> Self {
        Running(Some(child))
    }

    pub fn child(&mut self) -> &mut std::process::Child {
        self.0.as_mut().expect("running")
    }

    /// Stops it gracefully (SIGTERM), as an operator would.
    pub fn stop(mut self) -> std::process::Output {
        terminate(self.0.take().expect("running"))
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(mut c) = self.0.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Stops a `warren run` child with SIGTERM (graceful shutdown) and returns
/// its output; asserts that it exited successfully.
pub fn terminate(child: std::process::Child) -> std::process::Output {
    let _ = std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "graceful shutdown failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// The stdout of a command that must have succeeded (else its stderr, as the panic).
pub fn succeeded(out: &std::process::Output) -> String {
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Runs `warren test PLUGIN` with `input` on its standard input.
pub fn warren_test_stdin(plugin: &Path, input: &[u8]) -> std::process::Output {
    use std::io::Write as _;
    use std::process::Stdio;
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_warren"))
        .arg("test")
        .arg(plugin)
        .env("WARREN_CACHE_DIR", cache_dir())
        .env_remove("RUST_LOG")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(input).unwrap();
    child.wait_with_output().unwrap()
}

/// Sends `text` to `agent` and returns the answer's text (up to `secs`).
pub async fn answer(broker: &dyn Broker, agent: &str, text: &str, secs: u64) -> String {
    warren::client::send(
        broker,
        agent,
        text,
        Default::default(),
        Some(Duration::from_secs(secs)),
    )
    .await
    .unwrap_or_else(|e| panic!("{agent} did not answer {text:?}: {e:#}"))
    .reply
    .expect("a reply")
    .text
}

/// `echo` asked "message {i}" in a task of its own, answered within 120 s
/// (across whatever fault the test injects meanwhile).
pub fn ask_echo(user: Arc<dyn Broker>, i: usize) -> tokio::task::JoinHandle<String> {
    tokio::spawn(async move { answer(user.as_ref(), "echo", &format!("message {i}"), 120).await })
}

/// Every asked message came back as itself: `waiting` asked `first`,
/// `first + 1`, ... in order.
pub async fn expect_echoes(first: usize, waiting: Vec<tokio::task::JoinHandle<String>>) {
    for (i, w) in waiting.into_iter().enumerate() {
        assert_eq!(w.await.unwrap(), format!("message {}", first + i));
    }
}

/// `warren run` on a plugins folder with an HTTP endpoint on a free port
/// and `args` (the broker, the control socket), once `/readyz` says ready.
pub fn run_ready(plugins: &Path, args: &[&str]) -> (Running, std::net::SocketAddr) {
    let http = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let mut running = Running::new(
        std::process::Command::new(env!("CARGO_BIN_EXE_warren"))
            .args(["run", "--no-watch", "--http", &http.to_string()])
            .arg("--plugins")
            .arg(plugins)
            .args(args)
            .env_remove("RUST_LOG")
            .env("WARREN_CACHE_DIR", cache_dir())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    );
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(90);
    loop {
        // The control socket (embedded broker) is served once the host is up.
        let socket = args
            .iter()
            .position(|a| *a == "--control")
            .map(|i| Path::new(args[i + 1]));
        if std::net::TcpStream::connect(http).is_ok()
            && http::get(http, "/readyz").0 == 200
            && socket.is_none_or(|s| std::os::unix::net::UnixStream::connect(s).is_ok())
        {
            return (running, http);
        }
        if let Ok(Some(status)) = running.child().try_wait() {
            panic!("warren run exited early: {status}");
        }
        assert!(
            std::time::Instant::now() < deadline,
            "warren run was not ready within 90 s"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

/// `warren ARGS` to its end: (success, stdout, stderr).
pub fn warren_cli(args: &[&str]) -> (bool, String, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_warren"))
        .args(args)
        .env_remove("RUST_LOG")
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}
