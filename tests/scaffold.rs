//! `warren new NAME --lang rust|python|js` creates a project that builds with
//! the language's standard tool and passes `warren test`.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::root;

fn warren() -> Command {
    Command::new(env!("CARGO_BIN_EXE_warren"))
}

fn run(cmd: &mut Command, what: &str) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{what}: {e}"));
    assert!(
        out.status.success(),
        "{what} failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn new_project(lang: &str, parent: &Path) -> PathBuf {
    let said = run(
        warren()
            .args(["new", "Hello Agent", "--lang", lang, "--dir"])
            .arg(parent),
        "warren new",
    );
    let dir = parent.join("hello_agent");
    assert!(said.contains("see its README.md"), "{said}");
    let readme = std::fs::read_to_string(dir.join("README.md")).unwrap();
    assert!(readme.contains("hello_agent.wasm"), "{readme}");
    dir
}

/// Feeds `input` to `warren test` and returns what it printed.
fn warren_test(plugin: &Path, input: &str) -> String {
    let out = common::warren_test_stdin(plugin, input.as_bytes());
    assert!(
        out.status.success(),
        "warren test failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn check(project: &Path) {
    let wasm = project.join("hello_agent.wasm");
    assert!(
        wasm.exists(),
        "the build did not produce {}",
        wasm.display()
    );
    let out = warren_test(
        &wasm,
        concat!(
            r#"{"messages":[{"role":"user","content":"hi"}],"context_variables":{"user":"ann"}}"#,
            "\n",
            r#"{"messages":[{"role":"user","content":"transfer to agent_b"}]}"#,
            "\n"
        ),
    );
    let lines: Vec<serde_json::Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 2, "{out}");
    assert_eq!(
        lines[0]["messages"][1]["content"],
        "Hello ann, hello_agent here. You said: hi"
    );
    assert_eq!(lines[0]["to"], "reply");
    assert_eq!(lines[1]["to"]["agent"], "agent_b");
    assert_eq!(
        lines[1]["messages"][1]["content"],
        "hello_agent: transferring you to agent_b."
    );
}

#[test]
fn a_new_rust_agent_builds_and_passes_warren_test() {
    let parent = tempfile::tempdir().unwrap();
    let project = new_project("rust", parent.path());
    // The README's command; the target folder is shared between runs.
    run(
        Command::new("cargo")
            .args(["build", "-q", "--release", "--target", "wasm32-wasip2"])
            .env("CARGO_TARGET_DIR", root().join("target/guests/scaffold"))
            .current_dir(&project),
        "cargo build (run scripts/build-guests.sh first: it installs the wasm32-wasip2 target)",
    );
    std::fs::copy(
        root().join("target/guests/scaffold/wasm32-wasip2/release/hello_agent.wasm"),
        project.join("hello_agent.wasm"),
    )
    .unwrap();
    check(&project);
}

#[test]
fn a_new_python_agent_builds_and_passes_warren_test() {
    let parent = tempfile::tempdir().unwrap();
    let project = new_project("python", parent.path());
    let componentize_py = root().join("target/tools/venv/bin/componentize-py");
    assert!(
        componentize_py.exists(),
        "componentize-py is not installed: run scripts/build-guests.sh"
    );
    run(
        Command::new(componentize_py)
            .args([
                "-d",
                "wit",
                "-w",
                "agent",
                "componentize",
                "app",
                "-o",
                "hello_agent.wasm",
            ])
            .current_dir(&project),
        "componentize-py",
    );
    check(&project);
}

#[test]
fn a_new_js_agent_builds_and_passes_warren_test() {
    let parent = tempfile::tempdir().unwrap();
    let project = new_project("js", parent.path());
    // The project's `npm run build`, with the jco that scripts/build-guests.sh installed.
    let tools = root().join("scripts/js-tools/node_modules");
    assert!(
        tools.join(".bin/jco").exists(),
        "jco is not installed: run scripts/build-guests.sh"
    );
    std::os::unix::fs::symlink(&tools, project.join("node_modules")).unwrap();
    run(
        Command::new("npm")
            .args(["run", "--silent", "build"])
            .current_dir(&project),
        "npm run build",
    );
    check(&project);
}
