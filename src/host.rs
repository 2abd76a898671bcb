//! The host: one broker, one runtime, the registry and a set of consumers per
//! agent. `warren run`, `warren demo` and the tests all start one of these;
//! another Rust program can embed it the same way.

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use anyhow::{Context as _, Result};
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, error, info, warn};

use crate::broker::{Broker, Envelope, Route};
use crate::dispatch::{DispatchConfig, Dispatcher, Event};
use crate::guard::{self, GuardConfig};
use crate::metrics::Metrics;
// Kept here too: the counts are the host's, the type lives with the metrics
// that report them (so that `metrics` does not depend on `host`).
pub use crate::metrics::PluginCounters;
use crate::registry::{self, PluginError, Registry};
use crate::runtime::{AgentLimits, Runtime, RuntimeConfig};
use crate::status::{AgentStatus, Status};
use crate::trace::TraceLog;

mod traces;

pub use traces::remote_trace;

/// How long shutdown waits for in-flight messages.
const SHUTDOWN_GRACE: std::time::Duration = std::time::Duration::from_secs(30);

/// Everything a host needs to know.
#[derive(Debug, Clone, Default)]
pub struct HostConfig {
    pub runtime: RuntimeConfig,
    pub dispatch: DispatchConfig,
    /// When a freshly swapped-in version is rolled back.
    pub guard: GuardConfig,
    /// Per-agent sections of the config file: limits, settings, secrets.
    pub agents: std::collections::BTreeMap<String, crate::runtime::settings::AgentSection>,
    /// Hops kept for conversation traces.
    pub trace: crate::trace::TraceConfig,
}

pub struct Host {
    broker: Arc<dyn Broker>,
    /// Host-wide agent limits; a plugin's manifest may override them.
    limits: AgentLimits,
    runtime: Arc<Runtime>,
    registry: Arc<Registry>,
    dispatcher: Arc<Dispatcher>,
    shutdown: CancellationToken,
    /// Per agent: the token that stops its consumers.
    consumers: Mutex<HashMap<String, CancellationToken>>,
    tasks: TaskTracker,
    guard: GuardConfig,
    counters: Arc<PluginCounters>,
    metrics: Arc<Metrics>,
    overrides: std::collections::BTreeMap<String, crate::runtime::settings::AgentSection>,
    trace: Arc<TraceLog>,
    started: std::time::Instant,
    /// Whether the plugins folder was loaded once (`/readyz` waits for it).
    folder_loaded: std::sync::atomic::AtomicBool,
}

/// Whether the host can do its job, and if not, why (`/readyz`).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Readiness {
    pub ready: bool,
    pub broker: String,
    pub broker_connected: bool,
    /// The cluster node the host is on, and how many times it moved.
    #[serde(default)]
    pub node: Option<String>,
    #[serde(default)]
    pub failovers: u64,
    /// Agents loaded and consuming.
    pub agents: Vec<String>,
    /// What keeps the host from being ready.
    pub problems: Vec<String>,
}

impl Host {
    pub fn new(config: HostConfig, broker: Arc<dyn Broker>) -> Result<Arc<Self>> {
        let limits = AgentLimits::defaults(
            &config.runtime,
            config.dispatch.max_outgoing,
            config.dispatch.max_message_bytes,
        );
        let runtime = Runtime::new(config.runtime)?;
        let registry = Arc::new(Registry::new());
        let metrics = Arc::new(Metrics::new());
        let trace = TraceLog::new(config.trace.capacity);
        let dispatcher = Arc::new(Dispatcher::new(
            broker.clone(),
            registry.clone(),
            config.dispatch,
            metrics.clone(),
            trace.clone(),
        ));
        let shutdown = CancellationToken::new();
        let tasks = TaskTracker::new();
        {
            let (broker, shutdown) = (broker.clone(), shutdown.clone());
            tasks.spawn(async move { broker.keep_unroutable(shutdown).await });
        }
        let host = Arc::new(Host {
            broker,
            limits,
            runtime,
            registry,
            dispatcher,
            shutdown,
            consumers: Mutex::new(HashMap::new()),
            tasks,
            guard: config.guard,
            counters: Arc::default(),
            metrics,
            overrides: config.agents,
            trace,
            started: std::time::Instant::now(),
            folder_loaded: Default::default(),
        });
        // Other hosts on the broker ask for this one's hops (traces).
        let answers = traces::answerer(&host);
        let (broker, shutdown) = (host.broker.clone(), host.shutdown.clone());
        host.tasks
            .spawn(async move { broker.answer_peers(answers, shutdown).await });
        Ok(host)
    }

    /// This host's hops, for traces.
    pub fn trace_log(&self) -> &Arc<TraceLog> {
        &self.trace
    }

    /// How long this host has been up.
    pub fn uptime(&self) -> std::time::Duration {
        self.started.elapsed()
    }

    pub fn broker(&self) -> &Arc<dyn Broker> {
        &self.broker
    }

    pub fn registry(&self) -> &Arc<Registry> {
        &self.registry
    }

    pub fn counters(&self) -> &PluginCounters {
        &self.counters
    }

    /// The Prometheus text for `/metrics`.
    pub fn metrics_text(&self) -> String {
        self.metrics.render(
            self.broker.as_ref(),
            &self.counters,
            &self.registry.agents(),
        )
    }

    /// Ready when the broker is connected and every plugin file is loaded.
    /// A refused replacement with its old version still serving is reported
    /// but does not make the host unready.
    pub fn readiness(&self) -> Readiness {
        let broker_connected = self.broker.connected();
        let agents: Vec<String> = self
            .registry
            .agents()
            .iter()
            .map(|p| p.name().to_string())
            .collect();
        let mut problems = Vec::new();
        if !broker_connected {
            problems.push(format!("broker not connected: {}", self.broker.describe()));
        }
        let mut ready = broker_connected;
        if !self.folder_loaded.load(Ordering::Relaxed) {
            ready = false;
            problems.push("loading the plugins folder".to_string());
        }
        for agent in &agents {
            if let Some(t) = self.dispatcher.settle_trouble(agent) {
                ready = false;
                problems.push(format!(
                    "agent `{agent}` cannot settle its messages ({} failures, the latest {}s ago): {}",
                    t.count,
                    t.at.elapsed().as_secs(),
                    t.reason
                ));
            }
        }
        for e in self.registry.errors() {
            if agents.contains(&e.agent) {
                problems.push(format!("agent `{}` (still serving): {}", e.agent, e.reason));
            } else {
                ready = false;
                problems.push(format!("agent `{}` not loaded: {}", e.agent, e.reason));
            }
        }
        Readiness {
            ready,
            broker: self.broker.describe(),
            broker_connected,
            node: self.broker.node(),
            failovers: self.broker.failovers(),
            agents,
            problems,
        }
    }

    pub fn events(&self) -> broadcast::Receiver<Event> {
        self.dispatcher.subscribe()
    }

    /// Loads every plugin in `dir`. A file that fails is logged and shown in
    /// status; the others load regardless. Returns the names loaded. Says
    /// so when the folder has no plugin, when a file looks like one but is
    /// not (`ECHO.WASM`), and when a `[agents.NAME]` section of the config
    /// file names no agent of the folder.
    pub async fn load_dir(&self, dir: &Path) -> Result<Vec<String>> {
        self.broker
            .declare_queue(crate::dispatch::REPLIES_QUEUE)
            .await?;
        for odd in registry::near_plugin_files(dir)? {
            warn!(
                file = %odd.display(),
                "ignored: plugin files end in `.wasm` (lower case); rename it to load it"
            );
        }
        let files = registry::plugin_files(dir)?;
        if files.is_empty() {
            warn!(
                "no plugins in {}: add NAME.wasm files{}",
                dir.display(),
                " (a running host picks them up as they arrive)"
            );
        }
        let mut loaded = Vec::new();
        for path in &files {
            match self.load_plugin(path).await {
                Ok(name) => loaded.push(name),
                Err(e) => error!("{e:#}"),
            }
        }
        let named: Vec<String> = files
            .iter()
            .filter_map(|f| crate::names::from_path(f).ok())
            .collect();
        for section in self.overrides.keys() {
            if !named.contains(section) {
                warn!(
                    "the config file's section [agents.{section}] names no agent in {} (agents: {}); it applies if such a plugin arrives",
                    dir.display(),
                    if named.is_empty() {
                        "none".to_string()
                    } else {
                        named.join(", ")
                    }
                );
            }
        }
        self.folder_loaded.store(true, Ordering::Relaxed);
        Ok(loaded)
    }

    /// The file serving `agent` is another file than `path` (same folder,
    /// another spelling of the same agent name) and still there.
    fn served_by_other_file(&self, agent: &str, path: &Path) -> Option<std::path::PathBuf> {
        let current = self.registry.get(agent)?;
        let source = current.module().source.clone();
        let same = source.file_name() == path.file_name();
        (!same && source.exists()).then_some(source)
    }

    /// A plugin file is gone: unload its agent, unless another file serves
    /// it (then nothing changes). When the serving file went and another
    /// file for the same agent is in the folder, that one is loaded.
    pub async fn remove_plugin(&self, path: &Path) {
        let Ok(agent) = crate::names::from_path(path) else {
            return;
        };
        if let Some(serving) = self.served_by_other_file(&agent, path) {
            info!(
                agent,
                file = %path.display(),
                serving = %serving.display(),
                "a refused duplicate plugin file was removed; the serving file is unchanged"
            );
            self.registry.clear_error(&agent);
            return;
        }
        self.remove_agent(&agent);
        let Some(dir) = path.parent() else {
            return;
        };
        let other = registry::plugin_files(dir)
            .unwrap_or_default()
            .into_iter()
            .find(|f| crate::names::from_path(f).is_ok_and(|a| a == agent));
        if let Some(other) = other {
            info!(agent, file = %other.display(), "loading the agent's other plugin file");
            if let Err(e) = self.load_plugin(&other).await {
                error!("{e:#}");
            }
        }
    }

    /// Loads, replaces or (if unchanged) keeps one agent from its file,
    /// declares its queue and starts its consumers. A file that fails leaves
    /// the running version (if any) serving; the reason is kept for status.
    pub async fn load_plugin(&self, path: &Path) -> Result<String> {
        let agent = crate::names::from_path(path).unwrap_or_else(|_| path.display().to_string());
        if let Some(serving) = self.served_by_other_file(&agent, path) {
            let reason = format!(
                "two plugin files for agent `{agent}`: {} (serving) and {}; the second is refused (remove or rename one)",
                serving.display(),
                path.display()
            );
            self.counters.rejections.fetch_add(1, Ordering::Relaxed);
            self.registry.record_error(PluginError {
                agent: agent.clone(),
                file: path.to_path_buf(),
                reason: reason.clone(),
            });
            anyhow::bail!(reason);
        }
        // A new version can take seconds to compile (an 18 MB Python
        // component: ~9 s): say so at once, and show it as loading.
        let version = std::fs::read(path)
            .ok()
            .map(|bytes| crate::runtime::content_version(&bytes));
        let serving = self.registry.get(&agent).map(|p| p.version().to_string());
        let _loading = match &version {
            Some(v) if Some(v) != serving.as_ref() => {
                info!(
                    agent,
                    file = %path.display(),
                    "compiling {agent} (new version {v}{})",
                    serving
                        .as_ref()
                        .map(|s| format!(", version {s} keeps serving meanwhile"))
                        .unwrap_or_default()
                );
                Some(self.registry.start_loading(&agent, v))
            }
            _ => None,
        };
        let result = async {
            // Compiling and the smoke instantiation happen here, off the hot
            // path: running consumers keep using the current version.
            let overrides = self.overrides.get(&agent);
            let pool =
                registry::load_plugin_with(&self.runtime, path, &self.limits, overrides).await?;
            self.broker.declare_agent(pool.name()).await?;
            Ok::<_, anyhow::Error>(pool)
        }
        .await;
        let pool = match result {
            Ok(pool) => pool,
            Err(e) => {
                self.counters.rejections.fetch_add(1, Ordering::Relaxed);
                if let Some(current) = self.registry.get(&agent) {
                    warn!(
                        agent,
                        version = current.version(),
                        "the new file was refused; the running version keeps serving"
                    );
                }
                self.registry.record_error(PluginError {
                    agent: agent.clone(),
                    file: path.to_path_buf(),
                    reason: format!("{e:#}"),
                });
                return Err(e);
            }
        };
        let name = pool.name().to_string();
        let current = self.registry.get(&name);
        if let Some(current) = &current
            && current.version() == pool.version()
            && current.limits() == pool.limits()
        {
            debug!(agent = name, version = pool.version(), "plugin unchanged");
            // The file is what is serving again: nothing refused any more.
            self.registry.clear_error(&name);
            return Ok(name);
        }
        if self.registry.was_rolled_back(&name, pool.version()) {
            info!(
                agent = name,
                version = pool.version(),
                "this version was rolled back; waiting for a changed file"
            );
            return Ok(name);
        }
        let m = pool.module();
        info!(
            agent = m.name,
            version = m.version,
            replaces = current.as_ref().map(|c| c.version()),
            file = %m.source.display(),
            compile_cache = if m.cache_hit { "hit" } else { "miss" },
            "{}",
            if current.is_some() { "agent replaced" } else { "agent loaded" }
        );
        // The swap: new deliveries get the new version; calls in flight hold
        // the old one and finish on it; its instances go when the last does.
        self.dispatcher.clear_last_error(&name);
        match self.registry.insert(pool.clone()) {
            Some(previous) => {
                self.counters.swaps.fetch_add(1, Ordering::Relaxed);
                previous.release_idle();
                if self.guard.first_calls > 0 {
                    let (registry, counters) = (self.registry.clone(), self.counters.clone());
                    let (config, shutdown) = (self.guard, self.shutdown.clone());
                    self.tasks.spawn(async move {
                        if guard::watch(config, registry, pool, previous, shutdown).await {
                            counters.rollbacks.fetch_add(1, Ordering::Relaxed);
                        }
                    });
                }
            }
            None => {
                self.counters.loads.fetch_add(1, Ordering::Relaxed);
            }
        }
        self.start_consumers(&name)
            .await
            .with_context(|| format!("starting consumers for agent `{name}`"))?;
        Ok(name)
    }

    /// Unloads an agent: its consumers stop taking deliveries, finish and
    /// settle the ones they hold, and let go of the queue. The queue and the
    /// messages waiting in it stay in the broker for when the agent returns.
    pub fn remove_agent(&self, agent: &str) -> bool {
        let pool = self.registry.remove(agent);
        if let Some(token) = self.consumers.lock().unwrap().remove(agent) {
            token.cancel();
        }
        match pool {
            Some(pool) => {
                self.counters.removals.fetch_add(1, Ordering::Relaxed);
                info!(
                    agent,
                    version = pool.version(),
                    "agent removed; its queue keeps its messages"
                );
                true
            }
            None => false,
        }
    }

    /// Starts the agent's consumers, once: a replaced version is picked up by
    /// the running ones (dispatch looks the agent up per delivery). Returns
    /// when every consumer is registered with the broker.
    async fn start_consumers(&self, agent: &str) -> Result<()> {
        if self.consumers.lock().unwrap().contains_key(agent) {
            return Ok(());
        }
        let mut consumers = Vec::new();
        for _ in 0..self.dispatcher.config().consumers_per_agent.max(1) {
            consumers.push(self.broker.consume(agent).await?);
        }
        let token = self.shutdown.child_token();
        for consumer in consumers {
            self.tasks.spawn(self.dispatcher.clone().run_consumer(
                agent.to_string(),
                consumer,
                token.clone(),
            ));
        }
        self.consumers
            .lock()
            .unwrap()
            .insert(agent.to_string(), token);
        Ok(())
    }

    /// Publishes a message to an agent on behalf of a user.
    pub async fn publish(&self, agent: &str, envelope: Envelope) -> Result<()> {
        self.broker
            .publish(&Route::Agent(agent.to_string()), envelope)
            .await
    }

    /// A dead-letter operation on this host's broker. A replay right after
    /// a new file was dropped in goes to the new version: it waits for the
    /// swap first (a compile takes seconds).
    pub async fn dlq(&self, agent: &str, op: crate::dlq::Op) -> Result<crate::dlq::Answer> {
        if matches!(op, crate::dlq::Op::Replay { .. }) {
            let agent = crate::names::normalise(agent);
            if self
                .registry
                .wait_loaded(&agent, std::time::Duration::from_secs(60))
                .await
            {
                info!(agent, "replay waited for the agent's new version to load");
            }
        }
        crate::dlq::run(self.broker.as_ref(), agent, op).await
    }

    /// Queue health joined with what the runtime knows of each agent.
    pub async fn status(&self) -> Result<Status> {
        let queues = self.broker.stats().await?;
        let errors: Vec<PluginError> = self.registry.errors();
        let mut agents: Vec<AgentStatus> = queues
            .into_iter()
            .map(|q| {
                let pool = self.registry.get(&q.agent);
                let error = errors.iter().find(|e| e.agent == q.agent).cloned();
                let mut last_error = self.dispatcher.last_error(&q.agent);
                let trouble = self.dispatcher.settle_trouble(&q.agent);
                let mut status = AgentStatus::new(q, pool.as_deref(), error);
                if let Some(t) = trouble {
                    status.queue.status = "settling fails".into();
                    last_error = Some(format!("settling failed: {}", t.reason));
                }
                AgentStatus {
                    last_error,
                    ..status
                }
            })
            .collect();
        // Plugins that never loaded have no queue yet; show them anyway.
        for e in errors {
            if !agents.iter().any(|a| a.queue.agent == e.agent) {
                agents.push(AgentStatus::failed(e));
            }
        }
        for (agent, version) in self.registry.loading_all() {
            match agents.iter_mut().find(|a| a.queue.agent == agent) {
                Some(a) if a.version.is_some() => {
                    a.queue.status = format!("serving; loading {version}")
                }
                Some(a) => a.queue.status = format!("loading {version}"),
                None => agents.push(AgentStatus::loading(&agent, &version)),
            }
        }
        Ok(Status {
            broker: self.broker.describe(),
            node: self.broker.node(),
            failovers: self.broker.failovers(),
            agents,
            remote: false,
            unclaimed_replies: self.broker.unclaimed_replies(),
        })
    }

    /// Stops taking deliveries, lets in-flight messages finish (up to
    /// `SHUTDOWN_GRACE`), then closes the broker connection. Anything not
    /// acked by then is redelivered by the broker: nothing is lost.
    pub async fn shutdown(&self) {
        self.shutdown.cancel();
        self.tasks.close();
        if tokio::time::timeout(SHUTDOWN_GRACE, self.tasks.wait())
            .await
            .is_err()
        {
            tracing::warn!(
                "in-flight messages did not finish within {SHUTDOWN_GRACE:?}; they stay unacked and will be redelivered"
            );
        }
        self.broker.close().await;
    }
}
