//! The Wasm side: one wasmtime engine, components loaded and checked against
//! the world, compiled once (see [`cache`]), and run from per-agent instance
//! pools (see [`pool`]) inside the sandbox described in [`sandbox`].
//!
//! The runtime knows nothing of AMQP: it turns a [`Message`] into outgoing
//! messages or a failure.

pub mod bindings;
pub mod cache;
pub mod explain;
pub mod limits;
pub mod manifest;
pub mod outbound;
pub mod pool;
pub mod sandbox;
pub mod settings;
pub mod spread;
pub mod throttle;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use anyhow::{Context as _, Result, bail};
use sha2::{Digest, Sha256};
use wasmtime::component::Linker;
use wasmtime::component::types::ComponentItem;
use wasmtime::{Config, Engine, InstanceAllocationStrategy, PoolingAllocationConfig};

pub use bindings::{
    ChatMessage, Contract, Destination, Failure, FunctionCall, Message, Outgoing, ToolCall, WORLD,
};
pub use manifest::AgentLimits;
pub use pool::{AgentPool, CallStats, GuestError, GuestErrorKind};
use sandbox::AgentState;

/// How often the epoch ticks; deadlines are measured in these.
pub(crate) const EPOCH_TICK: Duration = Duration::from_millis(10);

/// Whether an instance serves many messages or one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Default, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum InstanceMode {
    /// Keep instances in a pool and reuse them (thrown away after any trap).
    #[default]
    Reuse,
    /// A fresh instance for every message: no state can leak between messages.
    Fresh,
}

/// Runtime settings, shared by every agent.
#[derive(Debug, Clone)]
pub struct RuntimeConfig {
    /// Where compiled code is cached; `None` disables the cache.
    pub cache_dir: Option<PathBuf>,
    pub instance_mode: InstanceMode,
    /// Most instances of one agent alive at once (= its concurrency).
    pub max_instances: usize,
    /// Most linear memory one instance may grow to, in bytes.
    pub max_memory: usize,
    /// Most elements one table may grow to.
    pub max_table_elements: usize,
    /// Wall-clock budget for one `on-message` call.
    pub deadline: Duration,
    /// A call still running guest code after this long is a runaway: it only
    /// gets slices of the host's shared runaway lane (see [`throttle`]).
    pub throttle_after: Duration,
    /// Fuel (roughly, Wasm instructions) per call; `None` turns metering off.
    /// Metering costs some speed on every call, so it is off by default.
    pub fuel: Option<u64>,
    /// Use wasmtime's pooling allocator (faster fresh instances, reserves address space).
    pub pooling: bool,
}

impl Default for RuntimeConfig {
    fn default() -> Self {
        RuntimeConfig {
            cache_dir: cache::CompileCache::default_dir(),
            instance_mode: InstanceMode::Reuse,
            max_instances: 4,
            max_memory: 256 << 20,
            max_table_elements: 100_000,
            deadline: Duration::from_secs(5),
            throttle_after: Duration::from_millis(100),
            fuel: None,
            pooling: false,
        }
    }
}

/// The engine, the linker with every import an agent may use, and the cache.
pub struct Runtime {
    engine: wasmtime::Engine,
    linker: Linker<AgentState>,
    cache: cache::CompileCache,
    config: RuntimeConfig,
    runaways: Arc<throttle::RunawayLane>,
}

/// A loaded, checked, compiled agent version, ready to instantiate.
pub struct AgentModule {
    pub name: String,
    /// Short content hash of the component: the agent's version.
    pub version: String,
    pub source: PathBuf,
    pub loaded_at: SystemTime,
    /// Whether the compiled code came from the cache.
    pub cache_hit: bool,
    /// The contract version the component was built against.
    pub contract: Contract,
    pub(crate) pre: bindings::BoundPre,
}

impl Runtime {
    pub fn new(config: RuntimeConfig) -> Result<Arc<Self>> {
        let mut wasm = Config::new();
        wasm.wasm_component_model(true)
            .epoch_interruption(true)
            .consume_fuel(config.fuel.is_some());
        if config.pooling {
            let mut pool = PoolingAllocationConfig::new();
            pool.max_memory_size(config.max_memory);
            wasm.allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
        }
        let engine = Engine::new(&wasm)?;
        let mut linker = Linker::new(&engine);
        wasmtime_wasi::p2::add_to_linker_async(&mut linker)?;
        // Every agent may import wasi:http; whether a request leaves the
        // host is decided per agent by its allow-list (see `outbound`).
        wasmtime_wasi_http::p2::add_only_http_to_linker_async(&mut linker)?;
        bindings::add_to_linker(&mut linker)?;
        spawn_epoch_ticker(&engine);
        Ok(Arc::new(Runtime {
            cache: cache::CompileCache::new(&engine, config.cache_dir.clone()),
            engine,
            linker,
            config,
            runaways: Arc::default(),
        }))
    }

    pub fn config(&self) -> &RuntimeConfig {
        &self.config
    }

    pub(crate) fn engine(&self) -> &Engine {
        &self.engine
    }

    pub(crate) fn runaways(&self) -> &Arc<throttle::RunawayLane> {
        &self.runaways
    }

    /// Whether the engine meters fuel (a manifest can only set fuel then).
    pub fn meters_fuel(&self) -> bool {
        self.config.fuel.is_some()
    }

    /// Reads, checks and compiles a plugin file.
    pub fn load_file(&self, path: &Path) -> Result<AgentModule> {
        let name = crate::names::from_path(path)?;
        let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
        self.load(&name, &bytes, path)
            .with_context(|| format!("plugin {} (agent `{name}`)", path.display()))
    }

    /// Checks and compiles a component, naming what is wrong with a bad one.
    pub fn load(&self, name: &str, bytes: &[u8], source: &Path) -> Result<AgentModule> {
        check_header(bytes)?;
        let hash = hex::encode(Sha256::digest(bytes));
        let (component, cache_hit) = self
            .cache
            .load(&self.engine, &hash, bytes)
            .context("not a valid component: it does not compile")?;
        self.check_world(&component)?;
        let pre = self
            .linker
            .instantiate_pre(&component)
            .map_err(anyhow::Error::from)
            .with_context(|| {
                format!(
                    "does not implement world {WORLD}: it needs an import warren does not provide"
                )
            })?;
        let pre = bindings::BoundPre::new(pre)
            .map_err(anyhow::Error::from)
            .with_context(|| {
                format!("does not implement world {WORLD} (nor warren:agent/agent@0.1.0)")
            })?;
        Ok(AgentModule {
            name: name.to_string(),
            version: content_version(bytes),
            source: source.to_path_buf(),
            loaded_at: SystemTime::now(),
            cache_hit,
            contract: pre.contract(),
            pre,
        })
    }

    fn check_world(&self, component: &wasmtime::component::Component) -> Result<()> {
        let ty = component.component_type();
        let exports: Vec<(&str, ComponentItem)> =
            ty.exports(&self.engine).map(|(n, e)| (n, e.ty)).collect();
        match exports.iter().find(|(n, _)| *n == "on-message") {
            Some((_, ComponentItem::ComponentFunc(_))) => Ok(()),
            Some(_) => {
                bail!("does not implement world {WORLD}: its export `on-message` is not a function")
            }
            None => {
                let names: Vec<&str> = exports.iter().map(|(n, _)| *n).collect();
                bail!(
                    "does not implement world {WORLD}: it does not export `on-message` (it exports: {})",
                    if names.is_empty() {
                        "nothing".to_string()
                    } else {
                        names.join(", ")
                    }
                )
            }
        }
    }
}

/// An agent version: the short content hash of its component.
pub fn content_version(bytes: &[u8]) -> String {
    hex::encode(&Sha256::digest(bytes)[..6])
}

fn check_header(bytes: &[u8]) -> Result<()> {
    if bytes.is_empty() {
        bail!("the file is empty");
    }
    if bytes.len() < 8 || &bytes[..4] != b"\0asm" {
        bail!("not a WebAssembly file (no `\\0asm` header)");
    }
    match bytes[4..8] {
        [0x0d, 0x00, 0x01, 0x00] => Ok(()),
        [0x01, 0x00, 0x00, 0x00] => bail!(
            "a core WebAssembly module, not a component: build for wasm32-wasip2 or wrap it with `wasm-tools component new`"
        ),
        _ => bail!("unknown WebAssembly version/layer {:02x?}", &bytes[4..8]),
    }
}

/// Drives epoch-based deadlines. The thread ends when the engine is dropped.
fn spawn_epoch_ticker(engine: &Engine) {
    let weak = engine.weak();
    std::thread::Builder::new()
        .name("warren-epoch".into())
        .spawn(move || {
            loop {
                std::thread::sleep(EPOCH_TICK);
                match weak.upgrade() {
                    Some(engine) => engine.increment_epoch(),
                    None => break,
                }
            }
        })
        .expect("spawning the epoch thread");
}
