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

use std::os::unix::process::CommandExt as _;
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
    // Job control on, as at a terminal: a background job gets its own
    // process group, which `kill %1` stops whole.
    // Whatever the page leaves running in the background is stopped when
    // the script ends, however it ends.
    let mut script = String::from(
        "set -euo pipefail -m\ntrap 'for j in $(jobs -p); do kill -- -$j 2>/dev/null || true; done' EXIT\n",
    );
    for line in lines {
        // warren itself is the one this test was built with.
        if line.starts_with("cargo build && export PATH=") {
            continue;
        }
        script.push_str(&line);
        script.push('\n');
    }
    let path = format!(
        "{}:{}",
        warren.parent().unwrap().display(),
        std::env::var("PATH").unwrap_or_default()
    );
    // Output to files, not pipes: a straggler holding a pipe open would keep
    // this test waiting; stragglers are stopped with the script's group.
    let (stdout_file, stderr_file) = (dir.path().join("stdout"), dir.path().join("stderr"));
    let mut child = Command::new("bash")
        .arg("-c")
        .arg(&script)
        .current_dir(dir.path())
        .stdout(std::fs::File::create(&stdout_file).unwrap())
        .stderr(std::fs::File::create(&stderr_file).unwrap())
        .process_group(0)
        .env("PATH", path)
        .env("WARREN_CONTROL", dir.path().join("control.sock"))
        .env("WARREN_HTTP", "127.0.0.1:0")
        .env("WARREN_CACHE_DIR", cache_dir())
        // The page's `cargo build` writes to the project's own target/.
        .env_remove("CARGO_TARGET_DIR")
        .env_remove("RUST_LOG")
        .spawn()
        .unwrap();
    let status = child.wait().unwrap();
    let _ = Command::new("kill")
        .args(["-TERM", "--", &format!("-{}", child.id())])
        .stderr(std::process::Stdio::null())
        .status();
    let stdout = std::fs::read_to_string(&stdout_file).unwrap_or_default();
    let stderr = std::fs::read_to_string(&stderr_file).unwrap_or_default();
    assert!(
        status.success(),
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
