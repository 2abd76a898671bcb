//! The live plugins folder. File events are debounced (a copy in progress
//! fires many), then for each affected `NAME.wasm` the folder is reconciled
//! with the host: a file that is there is loaded (added, or swapped in if it
//! changed), a file that is gone unloads its agent. Editing `NAME.toml`
//! reloads `NAME.wasm` with the new limits. Hidden files, editor backups and
//! anything not `.wasm`/`.toml` are ignored; a half-written file fails the
//! component check and leaves the running version serving until the write
//! completes (its final event triggers another load). A file that was
//! being written as it was read is reported as such, not as broken; one
//! that stays as it was is an error.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, Result};
use notify::EventKind;
use notify::event::{AccessKind, AccessMode};
use notify_debouncer_full::{DebounceEventResult, Debouncer, RecommendedCache, new_debouncer};
use tracing::{debug, error, info, warn};

use crate::host::Host;
use crate::registry::is_plugin_file;

/// Quiet time after a file's last event before it is looked at.
pub const DEBOUNCE: Duration = Duration::from_millis(250);

/// A file that failed to load and changed this recently is watched for one
/// more quiet time before it is called broken.
const RECENT: Duration = Duration::from_secs(1);

/// Keeps the folder watched; dropping it stops watching.
pub struct PluginWatcher {
    _debouncer: Debouncer<notify::RecommendedWatcher, RecommendedCache>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for PluginWatcher {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Starts watching `dir` for `host`.
pub fn watch(host: Arc<Host>, dir: &Path) -> Result<PluginWatcher> {
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<DebounceEventResult>();
    let mut debouncer = new_debouncer(DEBOUNCE, None, move |events: DebounceEventResult| {
        let _ = tx.send(events);
    })
    .context("starting the plugins folder watcher")?;
    debouncer
        .watch(dir, notify::RecursiveMode::NonRecursive)
        .with_context(|| format!("watching {}", dir.display()))?;
    let folder = dir.to_path_buf();
    let task = tokio::spawn(async move {
        while let Some(batch) = rx.recv().await {
            match batch {
                Ok(events) => {
                    let plugins: BTreeSet<PathBuf> = events
                        .iter()
                        .filter(|e| changes_content(&e.kind))
                        .flat_map(|e| e.paths.iter())
                        .filter_map(|p| plugin_for(p))
                        .collect();
                    for plugin in plugins {
                        reconcile(&host, &plugin).await;
                    }
                }
                Err(errors) => {
                    for e in errors {
                        warn!(folder = %folder.display(), "watching the plugins folder: {e}");
                    }
                }
            }
        }
    });
    Ok(PluginWatcher {
        _debouncer: debouncer,
        task,
    })
}

/// Events that may change what a file holds (loading a plugin reads it,
/// which must not trigger another load).
fn changes_content(kind: &EventKind) -> bool {
    match kind {
        EventKind::Create(_) | EventKind::Modify(_) | EventKind::Remove(_) => true,
        EventKind::Access(AccessKind::Close(AccessMode::Write)) => true,
        _ => false,
    }
}

/// The plugin file an event's path concerns: `NAME.wasm` for itself or its
/// manifest `NAME.toml`; `None` for anything else.
fn plugin_for(path: &Path) -> Option<PathBuf> {
    let name = path.file_name()?.to_str()?;
    if name.starts_with('.') {
        return None;
    }
    let wasm = match path.extension()?.to_str()? {
        "wasm" => path.to_path_buf(),
        "toml" => path.with_extension("wasm"),
        ext if ext.eq_ignore_ascii_case("wasm") => {
            warn!(
                file = %path.display(),
                "ignored: plugin files end in `.wasm` (lower case); rename it to load it"
            );
            return None;
        }
        _ => return None,
    };
    if let Err(e) = crate::names::from_path(&wasm) {
        warn!("{e:#}; ignored");
        return None;
    }
    Some(wasm)
}

/// Makes the host match the file: load or swap it if it is there, unload
/// its agent if it is gone.
async fn reconcile(host: &Arc<Host>, plugin: &Path) {
    if is_plugin_file(plugin) {
        debug!(file = %plugin.display(), "plugin file changed");
        let before = stamp(plugin);
        if let Err(e) = host.load_plugin(plugin).await {
            if still_written(plugin, before).await {
                // A writer was at the file as it was read (a copy made in
                // place, a script writing it again): what was refused is a
                // half-written file, and the write's own events bring the
                // finished one here next. A file that stays broken is
                // reported as an error then.
                info!(
                    file = %plugin.display(),
                    "the file was being written as it was loaded ({e:#}); it is loaded again once the write settles"
                );
            } else {
                error!("{e:#}");
            }
        }
    } else if !plugin.exists() {
        host.remove_plugin(plugin).await;
    }
}

/// Whether a file that failed to load was being written: it changed since
/// `before` (taken just ahead of the load), or it changed within the last
/// [`RECENT`] and changes again within [`DEBOUNCE`] (a writer that truncated
/// it and has not yet written it all: on a loaded machine the quiet time can
/// pass between the two).
async fn still_written(path: &Path, before: Option<(u64, std::time::SystemTime)>) -> bool {
    let after = stamp(path);
    if after != before {
        return true;
    }
    let recent = after
        .and_then(|(_, modified)| modified.elapsed().ok())
        .is_some_and(|age| age < RECENT);
    if !recent {
        return false;
    }
    tokio::time::sleep(DEBOUNCE).await;
    stamp(path) != after
}

/// What tells one write of a file from the next: its size and modification
/// time (`None` when it cannot be read).
fn stamp(path: &Path) -> Option<(u64, std::time::SystemTime)> {
    let meta = std::fs::metadata(path).ok()?;
    Some((meta.len(), meta.modified().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_file_is_being_written_only_if_it_changes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("echo.wasm");
        std::fs::write(&path, b"").unwrap();
        let old = std::time::SystemTime::now() - Duration::from_secs(60);
        std::fs::File::options()
            .write(true)
            .open(&path)
            .unwrap()
            .set_modified(old)
            .unwrap();
        let settled = stamp(&path);
        assert!(
            !still_written(&path, settled).await,
            "an old file that did not change is as it stays"
        );
        std::fs::write(&path, b"\0asm").unwrap();
        assert!(
            still_written(&path, settled).await,
            "changed since the load began"
        );
        // Truncated just now, by a writer that finishes within the quiet time.
        std::fs::write(&path, b"").unwrap();
        let truncated = stamp(&path);
        let writer = {
            let path = path.clone();
            tokio::spawn(async move {
                tokio::time::sleep(DEBOUNCE / 4).await;
                std::fs::write(&path, b"\0asm\r\0\x01\0").unwrap();
            })
        };
        assert!(still_written(&path, truncated).await);
        writer.await.unwrap();
        // Written just now and left as it is: broken, not being written.
        std::fs::write(&path, b"").unwrap();
        assert!(!still_written(&path, stamp(&path)).await);
    }

    #[test]
    fn only_plugins_and_their_manifests_count() {
        let p = |s: &str| plugin_for(Path::new(s));
        assert_eq!(p("/x/echo.wasm"), Some(PathBuf::from("/x/echo.wasm")));
        assert_eq!(p("/x/echo.toml"), Some(PathBuf::from("/x/echo.wasm")));
        assert_eq!(p("/x/.echo.wasm.swp"), None);
        assert_eq!(p("/x/.echo.wasm"), None);
        assert_eq!(p("/x/echo.wasm~"), None);
        assert_eq!(p("/x/echo.wasm.part"), None);
        assert_eq!(p("/x/README.md"), None);
    }
}
