//! Agents by name: the current version of each, swapped atomically.
//!
//! Dispatch looks an agent up for every delivery, so replacing an entry here
//! is all it takes for new deliveries to reach a new version while in-flight
//! calls finish on the old one (they hold their own `Arc`). Plugin files that
//! failed to load are remembered with the reason, for `warren status`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use anyhow::{Context as _, Result};

use crate::runtime::{AgentLimits, AgentPool, Runtime};

/// A plugin file that could not be loaded, and why.
#[derive(Debug, Clone, serde::Serialize)]
pub struct PluginError {
    pub agent: String,
    pub file: PathBuf,
    pub reason: String,
}

#[derive(Default)]
pub struct Registry {
    agents: RwLock<BTreeMap<String, Arc<AgentPool>>>,
    errors: RwLock<BTreeMap<String, PluginError>>,
    /// Per agent, the version the rollback guard threw out: the same file is
    /// not loaded again until it changes.
    rolled_back: RwLock<BTreeMap<String, String>>,
    /// Per agent, the new version being compiled (a swap not live yet).
    loading: RwLock<BTreeMap<String, String>>,
    loaded: tokio::sync::Notify,
}

/// Marks an agent's new version as loading until dropped.
pub struct Loading<'a> {
    registry: &'a Registry,
    agent: String,
}

impl Drop for Loading<'_> {
    fn drop(&mut self) {
        self.registry.loading.write().unwrap().remove(&self.agent);
        self.registry.loaded.notify_waiters();
    }
}

impl Registry {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn get(&self, agent: &str) -> Option<Arc<AgentPool>> {
        self.agents.read().unwrap().get(agent).cloned()
    }

    /// Marks `version` of `agent` as being compiled, until the guard drops.
    pub fn start_loading(&self, agent: &str, version: &str) -> Loading<'_> {
        self.loading
            .write()
            .unwrap()
            .insert(agent.to_string(), version.to_string());
        Loading {
            registry: self,
            agent: agent.to_string(),
        }
    }

    /// The version of `agent` being compiled, if a swap is pending.
    pub fn loading(&self, agent: &str) -> Option<String> {
        self.loading.read().unwrap().get(agent).cloned()
    }

    /// Every agent with a pending swap, and the version it is loading.
    pub fn loading_all(&self) -> Vec<(String, String)> {
        let loading = self.loading.read().unwrap();
        loading
            .iter()
            .map(|(a, v)| (a.clone(), v.clone()))
            .collect()
    }

    /// Waits (up to `timeout`) until no swap of `agent` is pending; whether
    /// it had to wait.
    pub async fn wait_loaded(&self, agent: &str, timeout: std::time::Duration) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut waited = false;
        loop {
            let notified = self.loaded.notified();
            if self.loading(agent).is_none() {
                return waited;
            }
            waited = true;
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return waited;
            }
        }
    }

    /// Installs (or replaces) an agent; returns the version it replaced.
    pub fn insert(&self, pool: Arc<AgentPool>) -> Option<Arc<AgentPool>> {
        let name = pool.name().to_string();
        self.errors.write().unwrap().remove(&name);
        self.agents.write().unwrap().insert(name, pool)
    }

    /// Puts `with` in place of `current`, only if `current` is still the
    /// agent's version (a newer swap wins over a late rollback).
    pub fn replace_if_current(&self, current: &Arc<AgentPool>, with: Arc<AgentPool>) -> bool {
        let mut agents = self.agents.write().unwrap();
        match agents.get_mut(current.name()) {
            Some(slot) if Arc::ptr_eq(slot, current) => {
                *slot = with;
                true
            }
            _ => false,
        }
    }

    pub fn remove(&self, agent: &str) -> Option<Arc<AgentPool>> {
        self.errors.write().unwrap().remove(agent);
        self.agents.write().unwrap().remove(agent)
    }

    pub fn mark_rolled_back(&self, agent: &str, version: &str) {
        self.rolled_back
            .write()
            .unwrap()
            .insert(agent.to_string(), version.to_string());
    }

    /// Whether `version` of `agent` was rolled back by the guard.
    pub fn was_rolled_back(&self, agent: &str, version: &str) -> bool {
        self.rolled_back
            .read()
            .unwrap()
            .get(agent)
            .is_some_and(|v| v == version)
    }

    pub fn agents(&self) -> Vec<Arc<AgentPool>> {
        self.agents.read().unwrap().values().cloned().collect()
    }

    pub fn record_error(&self, error: PluginError) {
        self.errors
            .write()
            .unwrap()
            .insert(error.agent.clone(), error);
    }

    pub fn clear_error(&self, agent: &str) {
        self.errors.write().unwrap().remove(agent);
    }

    pub fn errors(&self) -> Vec<PluginError> {
        self.errors.read().unwrap().values().cloned().collect()
    }
}

/// Loads one plugin file into a ready pool. Compiling is CPU-bound, so it
/// runs on the blocking pool rather than stalling the consumers.
pub async fn load_plugin(
    runtime: &Arc<Runtime>,
    path: &Path,
    defaults: &AgentLimits,
) -> Result<Arc<AgentPool>> {
    load_plugin_with(runtime, path, defaults, None).await
}

/// [`load_plugin`] with the agent's section of the host's config file: its
/// limits win over the manifest beside the file (the operator has the last
/// word), and its settings and secrets are what the agent can `get`.
pub async fn load_plugin_with(
    runtime: &Arc<Runtime>,
    path: &Path,
    defaults: &AgentLimits,
    section: Option<&crate::runtime::settings::AgentSection>,
) -> Result<Arc<AgentPool>> {
    let mut limits = defaults.clone().with_manifest_for(path)?;
    if let Some(section) = section {
        let agent = crate::names::from_path(path)?;
        limits = limits
            .with(&section.limits)
            .and_then(|l| l.with_http(&section.http))
            .with_context(|| format!("the [agents.{agent}] section of the host's config file"))?;
        limits.settings = Arc::new(crate::runtime::settings::AgentSettings::resolve(
            &agent, section,
        )?);
    }
    let module = {
        let runtime = runtime.clone();
        let path = path.to_path_buf();
        tokio::task::spawn_blocking(move || runtime.load_file(&path))
            .await
            .context("the compile task panicked")??
    };
    AgentPool::new(runtime.clone(), module, limits).await
}

/// The plugin files in a folder: `*.wasm`, sorted; hidden and temp files skipped.
pub fn plugin_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir)
        .with_context(|| format!("reading plugins folder {}", dir.display()))?
    {
        let path = entry?.path();
        if is_plugin_file(&path) {
            files.push(path);
        }
    }
    files.sort();
    Ok(files)
}

/// Files that look like plugins but are not loaded: `NAME.WASM` and other
/// spellings of the extension.
pub fn near_plugin_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir)
        .with_context(|| format!("reading plugins folder {}", dir.display()))?
    {
        let path = entry?.path();
        let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("");
        if ext != "wasm" && ext.eq_ignore_ascii_case("wasm") && path.is_file() {
            files.push(path);
        }
    }
    files.sort();
    Ok(files)
}

/// `NAME.wasm`, not hidden (editors and copies in progress use dot-files).
pub fn is_plugin_file(path: &Path) -> bool {
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
    path.extension().is_some_and(|e| e == "wasm") && !name.starts_with('.') && path.is_file()
}
