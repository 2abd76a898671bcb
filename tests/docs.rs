//! The docs run as written: every ```sh block of docs/agents-rust.md,
//! docs/agents-python.md, docs/agents-js.md and the README's "Your first
//! agent", in order, as one bash script in an empty folder — new project,
//! build, `warren test`, `warren run`, `warren send`.
//!
//! Two things differ from a person at a terminal, both on purpose: the
//! line that builds warren itself (`cargo build && export PATH=...`) is
//! left out, as this test runs the warren that `cargo test` just built
//! (put first on PATH); and the host's control socket and HTTP port are
//! private to the test (WARREN_CONTROL, WARREN_HTTP) so that it can run
//! beside other tests. A ```bash block is an aside (e.g. the JS HTTP
//! build) and is not run.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;

/// The page's ```sh blocks, in order, as script lines.
fn sh_blocks(page: &Path) -> Vec<String> {
    let text = std::fs::read_to_string(page).unwrap();
    let mut lines = Vec::new();
    let mut inside = false;
    for line in text.lines() {
        if inside {
            if line.starts_with("```") {
                inside = false;
            } else {
                lines.push(line.to_string());
            }
        } else if line.trim_end() == "```sh" {
            inside = true;
        }
    }
    lines
}

/// Runs `lines` (the README's block, or a page's) in a fresh folder.
fn run_as_written(what: &str, lines: Vec<String>) {
    let dir = tempfile::tempdir().unwrap();
    let warren = PathBuf::from(env!("CARGO_BIN_EXE_warren"));
    let mut script = String::from("set -euo pipefail\n");
    for line in lines {
        // warren itself is the one this test was built with.
        if line.starts_with("cargo build && export PATH=") {
            continue;
        }
        script.push_str(&line);
        script.push('\n');
    }
    // Whatever the page left running in the background.
    script.push_str("kill $(jobs -p) 2>/dev/null || true\n");
    let path = format!(
        "{}:{}",
        warren.parent().unwrap().display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let out = Command::new("bash")
        .arg("-c")
        .arg(&script)
        .current_dir(dir.path())
        .env("PATH", path)
        .env("WARREN_CONTROL", dir.path().join("control.sock"))
        .env("WARREN_HTTP", "127.0.0.1:0")
        .env("WARREN_CACHE_DIR", cache_dir())
        // The page's `cargo build` writes to the project's own target/.
        .env_remove("CARGO_TARGET_DIR")
        .env_remove("RUST_LOG")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "{what} does not run as written:\n--- script\n{script}\n--- stdout\n{stdout}\n--- stderr\n{stderr}"
    );
    // The conversation at the end of every walkthrough answered.
    assert!(
        stdout.contains(": Hello ann"),
        "{what}: no answer from the agent:\n{stdout}\n{stderr}"
    );
}

#[test]
fn the_rust_page_runs_as_written() {
    run_as_written(
        "docs/agents-rust.md",
        sh_blocks(&root().join("docs/agents-rust.md")),
    );
}

#[test]
fn the_python_page_runs_as_written() {
    run_as_written(
        "docs/agents-python.md",
        sh_blocks(&root().join("docs/agents-python.md")),
    );
}

#[test]
fn the_js_page_runs_as_written() {
    run_as_written(
        "docs/agents-js.md",
        sh_blocks(&root().join("docs/agents-js.md")),
    );
}

#[test]
fn the_readme_first_agent_runs_as_written() {
    let readme = std::fs::read_to_string(root().join("README.md")).unwrap();
    let section = readme
        .split("## Your first agent")
        .nth(1)
        .and_then(|s| s.split("\n## ").next())
        .expect("the README has a \"Your first agent\" section");
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), section).unwrap();
    run_as_written("README.md (Your first agent)", sh_blocks(file.path()));
}
