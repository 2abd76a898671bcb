//! Compiled-code cache: compile each component version once, ever.
//!
//! Compiling a component with Cranelift costs from milliseconds (Rust) to
//! seconds (Python, JavaScript). The artefact is keyed by the SHA-256 of the
//! component's bytes plus the engine's compatibility hash (wasmtime version,
//! target and settings), so a restart reuses it and an upgrade never loads a
//! stale one. Entries are written atomically (temp file + rename) so a crash
//! mid-write leaves no half file behind.

use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result};
use wasmtime::Engine;
use wasmtime::component::Component;

pub struct CompileCache {
    dir: Option<PathBuf>,
    engine_key: String,
}

impl CompileCache {
    /// A cache in `dir`; `None` disables caching.
    pub fn new(engine: &Engine, dir: Option<PathBuf>) -> Self {
        let mut h = std::collections::hash_map::DefaultHasher::new();
        engine.precompile_compatibility_hash().hash(&mut h);
        CompileCache {
            dir,
            engine_key: format!("{:016x}", h.finish()),
        }
    }

    /// The default location: `$XDG_CACHE_HOME/warren` or `~/.cache/warren`.
    pub fn default_dir() -> Option<PathBuf> {
        std::env::var_os("XDG_CACHE_HOME")
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
            .map(|d| d.join("warren").join("compiled"))
    }

    fn entry(&self, hash: &str) -> Option<PathBuf> {
        let dir = self.dir.as_ref()?;
        Some(dir.join(format!("{hash}-{}.cwasm", self.engine_key)))
    }

    /// Loads the component for `bytes` (whose content hash is `hash`) from the
    /// cache, compiling and storing it on a miss. Returns whether it was a hit.
    pub fn load(&self, engine: &Engine, hash: &str, bytes: &[u8]) -> Result<(Component, bool)> {
        if let Some(path) = self.entry(hash).filter(|p| p.exists()) {
            // SAFETY: the file was written by `Component::serialize` for an engine
            // with the same compatibility hash (it is in the file name), in a
            // directory owned by this user; wasmtime re-checks the header.
            match unsafe { Component::deserialize_file(engine, &path) } {
                Ok(c) => return Ok((c, true)),
                Err(e) => tracing::warn!(
                    "compile cache entry {} is unusable, recompiling: {e:#}",
                    path.display()
                ),
            }
        }
        let component = Component::new(engine, bytes)?;
        if let Some(path) = self.entry(hash)
            && let Err(e) = store(&component, &path)
        {
            // A cache that cannot be written costs time, not correctness.
            tracing::warn!("cannot write compile cache {}: {e:#}", path.display());
        }
        Ok((component, false))
    }
}

fn store(component: &Component, path: &Path) -> Result<()> {
    let dir = path.parent().expect("cache entries live in a directory");
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let bytes = component.serialize()?;
    let tmp = dir.join(format!(
        ".{}.{}.tmp",
        path.file_name().unwrap().to_string_lossy(),
        std::process::id()
    ));
    std::fs::write(&tmp, bytes).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("renaming to {}", path.display()))?;
    Ok(())
}
