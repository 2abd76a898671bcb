//! The config file: precedence flag > environment > file > default, unknown
//! keys named, per-agent sections applied, and `warren config` never prints
//! a password.

mod common;

use std::process::Command;

fn warren(args: &[&str], env: &[(&str, &str)]) -> std::process::Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_warren"));
    cmd.args(args);
    for var in [
        "WARREN_AMQP_URL",
        "WARREN_PLUGINS",
        "WARREN_CONFIG",
        "WARREN_HTTP",
    ] {
        cmd.env_remove(var);
    }
    cmd.envs(env.iter().copied());
    cmd.output().unwrap()
}

fn config(args: &[&str], env: &[(&str, &str)]) -> String {
    let out = warren(&[&["config"], args].concat(), env);
    assert!(
        out.status.success(),
        "warren config failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn line<'a>(text: &'a str, key: &str) -> &'a str {
    text.lines()
        .find(|l| l.starts_with(&format!("{key} = ")))
        .unwrap_or_else(|| panic!("no `{key}` in:\n{text}"))
}

#[test]
fn flags_beat_environment_beat_the_file_beat_defaults() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("warren.toml");
    std::fs::write(
        &file,
        r#"
plugins = "from-file"
deadline_ms = 1234
max_instances = 3
pooling = true
amqp_url = "amqp://guest:s3cr3t-pw@127.0.0.1:5672/%2f"

[agents.agent_b]
deadline_ms = 77
instance_mode = "fresh"

[agents.agent_b.http]
allow = ["https://api.example.com"]
timeout_ms = 900
"#,
    )
    .unwrap();
    let f = file.to_str().unwrap();

    // Defaults, without a file.
    let plain = config(&[], &[]);
    assert_eq!(line(&plain, "deadline_ms"), "deadline_ms = 5000  # default");
    assert_eq!(line(&plain, "plugins"), r#"plugins = "plugins"  # default"#);

    // The file over defaults (by flag or by WARREN_CONFIG).
    for out in [
        config(&["--config", f], &[]),
        config(&[], &[("WARREN_CONFIG", f)]),
    ] {
        assert!(
            line(&out, "deadline_ms").starts_with("deadline_ms = 1234"),
            "{out}"
        );
        assert!(
            line(&out, "max_instances").starts_with("max_instances = 3"),
            "{out}"
        );
        assert!(line(&out, "pooling").starts_with("pooling = true"), "{out}");
        assert!(
            line(&out, "plugins").starts_with(r#"plugins = "from-file""#),
            "{out}"
        );
        assert!(
            out.contains("[agents.agent_b]\ndeadline_ms = 77\ninstance_mode = \"fresh\""),
            "{out}"
        );
        assert!(
            out.contains(
                "[agents.agent_b.http]\nallow = [\"https://api.example.com\"]\ntimeout_ms = 900\n"
            ),
            "{out}"
        );
        // The password is never printed.
        assert!(!out.contains("s3cr3t-pw"), "{out}");
        assert!(
            line(&out, "amqp_url").contains("amqp://***@127.0.0.1"),
            "{out}"
        );
    }

    // The environment over the file, a flag over both.
    let env = [("WARREN_PLUGINS", "from-env")];
    let out = config(&["--config", f], &env);
    assert_eq!(
        line(&out, "plugins"),
        r#"plugins = "from-env"  # environment"#
    );
    let out = config(
        &[
            "--config",
            f,
            "--plugins",
            "from-flag",
            "--deadline-ms",
            "9",
        ],
        &env,
    );
    assert!(
        line(&out, "plugins").starts_with(r#"plugins = "from-flag""#),
        "{out}"
    );
    assert!(
        line(&out, "deadline_ms").starts_with("deadline_ms = 9 "),
        "{out}"
    );
}

#[test]
fn unknown_keys_are_errors_that_name_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("warren.toml");
    std::fs::write(&file, "deadline_ms = 100\ndeadlin_ms = 200\n").unwrap();
    let out = warren(&["config", "--config", file.to_str().unwrap()], &[]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("unknown key `deadlin_ms`"), "{err}");

    std::fs::write(&file, "[agents.echo]\nmax_memroy_mb = 8\n").unwrap();
    let out = warren(&["run", "--config", file.to_str().unwrap()], &[]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("[agents.echo]") && err.contains("unknown field `max_memroy_mb`"),
        "{err}"
    );

    // A typo in a grant is as loud.
    std::fs::write(&file, "[agents.echo.http]\nalow = [\"https://x.org\"]\n").unwrap();
    let out = warren(&["run", "--config", file.to_str().unwrap()], &[]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("[agents.echo]")
            && err.contains("[http]")
            && err.contains("unknown field `alow`"),
        "{err}"
    );
}

/// A per-agent section reaches the agent: the demo runs with agent_b's
/// message limit set by the file. (`warren test` with a section: tests/llm.rs.)
#[test]
fn an_agent_section_applies_to_that_agent() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("warren.toml");
    // A 1-byte message limit for agent_b only: the demo's handoff to it is
    // dead-lettered as too large, so the demo fails, naming agent_b.
    std::fs::write(&file, "[agents.agent_b]\nmax_message_kb = 0\n").unwrap();
    let plugins = common::root().join("plugins");
    let out = warren(
        &[
            "demo",
            "--plugins",
            plugins.to_str().unwrap(),
            "--config",
            file.to_str().unwrap(),
        ],
        &[],
    );
    let all = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(all.contains("message too large"), "{all}");
    // Without the file, the demo works.
    let out = warren(&["demo", "--plugins", plugins.to_str().unwrap()], &[]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
