//! Per-agent limits: host-wide defaults, overridden by an optional manifest
//! `NAME.toml` beside `NAME.wasm`.
//!
//! ```toml
//! [limits]
//! max_memory_mb = 64        # linear memory per instance
//! max_table_elements = 10000
//! deadline_ms = 2000        # wall clock per message
//! throttle_after_ms = 100   # then the call is a runaway (see runtime::throttle)
//! fuel = 50000000           # per message; needs a host started with --fuel
//! max_instances = 2         # concurrent instances (= the agent's concurrency)
//! instance_mode = "fresh"   # or "reuse"
//! max_outgoing = 16         # messages one call may send on
//! max_message_kb = 256      # body size in and out
//!
//! [http]                    # outbound HTTP (none by default; see runtime::outbound)
//! allow = ["https://api.openai.com"]
//! timeout_ms = 20000
//! max_response_kb = 1024
//! ```
//! Unknown keys are an error (a typo must not silently leave a limit off).

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context as _, Result};
use serde::Deserialize;

use super::outbound::{HttpGrant, HttpOverrides};
use super::{InstanceMode, RuntimeConfig};

/// The limits one agent runs under.
#[derive(Debug, Clone, PartialEq)]
pub struct AgentLimits {
    pub max_memory: usize,
    pub max_table_elements: usize,
    pub deadline: Duration,
    pub throttle_after: Duration,
    pub fuel: Option<u64>,
    pub max_instances: usize,
    pub instance_mode: InstanceMode,
    pub max_outgoing: usize,
    pub max_message_bytes: usize,
    /// What the agent can read through the `config` import.
    pub settings: std::sync::Arc<super::settings::AgentSettings>,
    /// Where the agent may send HTTP requests (nowhere by default).
    pub http: std::sync::Arc<HttpGrant>,
}

impl AgentLimits {
    /// The host-wide defaults.
    pub fn defaults(
        runtime: &RuntimeConfig,
        max_outgoing: usize,
        max_message_bytes: usize,
    ) -> Self {
        AgentLimits {
            max_memory: runtime.max_memory,
            max_table_elements: runtime.max_table_elements,
            deadline: runtime.deadline,
            throttle_after: runtime.throttle_after,
            fuel: runtime.fuel,
            max_instances: runtime.max_instances.max(1),
            instance_mode: runtime.instance_mode,
            max_outgoing,
            max_message_bytes,
            settings: Default::default(),
            http: Default::default(),
        }
    }

    /// Applies the manifest beside `plugin`, if there is one.
    pub fn with_manifest_for(self, plugin: &Path) -> Result<Self> {
        let path = manifest_path(plugin);
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(self),
            Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
        };
        let manifest: Manifest =
            toml::from_str(&text).with_context(|| format!("manifest {}", path.display()))?;
        self.with(&manifest.limits)
            .and_then(|l| l.with_http(&manifest.http))
            .with_context(|| format!("manifest {}", path.display()))
    }

    /// Applies an `[http]` grant (from a manifest or the host's config file).
    pub fn with_http(mut self, o: &HttpOverrides) -> Result<Self> {
        self.http = std::sync::Arc::new((*self.http).clone().with(o).context("[http]")?);
        Ok(self)
    }

    /// Applies per-agent overrides (from a manifest or the host's config file).
    pub fn with(mut self, l: &LimitOverrides) -> Result<Self> {
        let mb = |v: usize| v << 20;
        if let Some(v) = l.max_memory_mb {
            self.max_memory = mb(v);
        }
        if let Some(v) = l.max_table_elements {
            self.max_table_elements = v;
        }
        if let Some(v) = l.deadline_ms {
            self.deadline = Duration::from_millis(v);
        }
        if let Some(v) = l.throttle_after_ms {
            self.throttle_after = Duration::from_millis(v);
        }
        if let Some(v) = l.fuel {
            if self.fuel.is_none() {
                anyhow::bail!(
                    "`fuel` needs fuel metering, which this host has off (start it with --fuel)"
                );
            }
            self.fuel = Some(v);
        }
        if let Some(v) = l.max_instances {
            self.max_instances = v.max(1);
        }
        if let Some(v) = l.instance_mode {
            self.instance_mode = v;
        }
        if let Some(v) = l.max_outgoing {
            self.max_outgoing = v;
        }
        if let Some(v) = l.max_message_kb {
            self.max_message_bytes = v << 10;
        }
        Ok(self)
    }
}

/// `NAME.toml` beside `NAME.wasm`.
pub fn manifest_path(plugin: &Path) -> PathBuf {
    plugin.with_extension("toml")
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct Manifest {
    #[serde(default)]
    limits: LimitOverrides,
    #[serde(default)]
    http: HttpOverrides,
}

/// The limits one agent may override (unset keys keep the host's value).
#[derive(Debug, Default, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitOverrides {
    pub max_memory_mb: Option<usize>,
    pub max_table_elements: Option<usize>,
    pub deadline_ms: Option<u64>,
    pub throttle_after_ms: Option<u64>,
    pub fuel: Option<u64>,
    pub max_instances: Option<usize>,
    pub instance_mode: Option<InstanceMode>,
    pub max_outgoing: Option<usize>,
    pub max_message_kb: Option<usize>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manifest_overrides_defaults_and_rejects_typos() {
        let dir = tempfile::tempdir().unwrap();
        let wasm = dir.path().join("a.wasm");
        let base = AgentLimits::defaults(&RuntimeConfig::default(), 64, 1 << 20);
        assert_eq!(base.clone().with_manifest_for(&wasm).unwrap(), base);
        std::fs::write(
            dir.path().join("a.toml"),
            "[limits]\nmax_memory_mb = 8\ndeadline_ms = 50\ninstance_mode = \"fresh\"\nmax_outgoing = 2\n",
        )
        .unwrap();
        let l = base.clone().with_manifest_for(&wasm).unwrap();
        assert_eq!(l.max_memory, 8 << 20);
        assert_eq!(l.deadline, Duration::from_millis(50));
        assert_eq!(l.instance_mode, InstanceMode::Fresh);
        assert_eq!(l.max_outgoing, 2);
        assert_eq!(l.max_instances, base.max_instances);
        // An [http] grant; the host's config file then has the last word.
        std::fs::write(
            dir.path().join("a.toml"),
            "[http]\nallow = [\"https://api.example.com\"]\ntimeout_ms = 700\n",
        )
        .unwrap();
        let l = base.clone().with_manifest_for(&wasm).unwrap();
        let origins: Vec<String> = l.http.origins().collect();
        assert_eq!(origins, ["https://api.example.com:443"]);
        assert_eq!(l.http.timeout, Duration::from_millis(700));
        let l = l
            .with_http(&HttpOverrides {
                allow: Some(vec!["http://127.0.0.1:8089".into()]),
                ..Default::default()
            })
            .unwrap();
        let origins: Vec<String> = l.http.origins().collect();
        assert_eq!(origins, ["http://127.0.0.1:8089"]);
        assert_eq!(l.http.timeout, Duration::from_millis(700));
        assert!(
            base.http.origins().next().is_none(),
            "no network by default"
        );
        std::fs::write(dir.path().join("a.toml"), "[limits]\nmax_memroy_mb = 8\n").unwrap();
        let e = base.with_manifest_for(&wasm).unwrap_err();
        assert!(
            format!("{e:#}").contains("unknown field `max_memroy_mb`"),
            "{e:#}"
        );
    }
}
