//! The config file (`warren.toml`, path by `--config` or `WARREN_CONFIG`).
//!
//! Its top-level keys are the command-line options, spelled as in
//! `warren config` (`deadline_ms = 2000`, `amqp_url = "amqp://…"`); its
//! `[agents.NAME]` sections override one agent's limits, with the keys of a
//! plugin manifest. Precedence: flag > environment > file > default. Clap
//! decides flag, environment and default; a file value is used exactly when
//! clap would have fallen back to the default, by passing it on as if it had
//! been given as a flag. An unknown key is an error that names it.

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::OsString;
use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result, bail};
use clap::parser::ValueSource;
use clap::{ArgMatches, Command};

use crate::runtime::settings::AgentSection;

/// A parsed config file.
#[derive(Debug, Clone, Default)]
pub struct ConfigFile {
    pub path: PathBuf,
    /// Option name → value, in file order.
    pub options: Vec<(String, toml::Value)>,
    /// `[agents.NAME]` sections.
    pub agents: BTreeMap<String, AgentSection>,
}

pub fn read(path: &Path) -> Result<ConfigFile> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading config file {}", path.display()))?;
    let table: toml::Table =
        toml::from_str(&text).with_context(|| format!("config file {}", path.display()))?;
    let mut file = ConfigFile {
        path: path.to_path_buf(),
        ..Default::default()
    };
    for (key, value) in table {
        if key == "agents" {
            let toml::Value::Table(agents) = value else {
                bail!(
                    "{}: `agents` must be a table of [agents.NAME] sections",
                    path.display()
                );
            };
            for (name, section) in agents {
                let where_ = || format!("{}: section [agents.{name}]", path.display());
                let toml::Value::Table(mut section) = section else {
                    bail!("{}: must be a table", where_());
                };
                let strings = |table: Option<toml::Value>,
                               what: &str|
                 -> Result<BTreeMap<String, String>> {
                    match table {
                        None => Ok(BTreeMap::new()),
                        Some(v) => v.try_into::<BTreeMap<String, String>>().with_context(|| {
                            format!("{}: `{what}` must map names to strings", where_())
                        }),
                    }
                };
                let config = strings(section.remove("config"), "config")?;
                let secrets = strings(section.remove("secrets"), "secrets")?;
                let http = match section.remove("http") {
                    None => Default::default(),
                    Some(v) => v
                        .try_into()
                        .with_context(|| format!("{}: [http]", where_()))?,
                };
                let limits = toml::Value::Table(section)
                    .try_into()
                    .with_context(where_)?;
                file.agents.insert(
                    crate::names::normalise(&name),
                    AgentSection {
                        limits,
                        config,
                        secrets,
                        http,
                    },
                );
            }
        } else {
            file.options.push((key, value));
        }
    }
    Ok(file)
}

/// Every option name any command accepts (the keys a file may use).
fn known_keys(cmd: &Command, out: &mut BTreeSet<String>) {
    for arg in cmd.get_arguments() {
        if arg.get_long().is_some() {
            out.insert(arg.get_id().to_string());
        }
    }
    for sub in cmd.get_subcommands() {
        known_keys(sub, out);
    }
}

/// `argv` plus the file's values for the options the command line and the
/// environment left at their defaults.
pub fn merge_into_args(
    file: &ConfigFile,
    root: &Command,
    matches: &ArgMatches,
    mut argv: Vec<OsString>,
) -> Result<Vec<OsString>> {
    let mut known = BTreeSet::new();
    known_keys(root, &mut known);
    for (key, _) in &file.options {
        if !known.contains(key) || key == "config" {
            bail!(
                "{}: unknown key `{key}` (the keys are the options of `warren run`, spelled with underscores; `warren config` lists them)",
                file.path.display()
            );
        }
    }
    // The command that runs: the innermost subcommand, and the root for the
    // global options.
    let mut levels = vec![(root, matches)];
    let (mut cmd, mut m) = (root, matches);
    while let Some((name, sub)) = m.subcommand() {
        cmd = cmd.find_subcommand(name).expect("clap matched it");
        m = sub;
        levels.push((cmd, m));
    }
    let (leaf, leaf_matches) = *levels.last().unwrap();
    for (key, value) in &file.options {
        let owner = [(leaf, leaf_matches), (root, matches)]
            .into_iter()
            .find(|(c, _)| c.get_arguments().any(|a| a.get_id() == key.as_str()));
        let Some((cmd, m)) = owner else {
            continue; // an option of another command
        };
        if matches!(
            m.value_source(key),
            Some(ValueSource::CommandLine | ValueSource::EnvVariable)
        ) {
            continue;
        }
        let arg = cmd
            .get_arguments()
            .find(|a| a.get_id() == key.as_str())
            .unwrap();
        let long = arg.get_long().unwrap();
        let flag = OsString::from(format!("--{long}"));
        let values: Vec<String> = match value {
            toml::Value::Boolean(true) => {
                argv.push(flag);
                continue;
            }
            toml::Value::Boolean(false) => continue,
            toml::Value::Array(items) => items.iter().map(scalar).collect::<Result<_>>()?,
            v => vec![scalar(v)?],
        };
        // `--name=value`, one argument: a value such as `-5` must reach the
        // option's parser, not be taken for a flag.
        for v in values {
            argv.push(format!("--{long}={v}").into());
        }
    }
    Ok(argv)
}

fn scalar(v: &toml::Value) -> Result<String> {
    Ok(match v {
        toml::Value::String(s) => s.clone(),
        toml::Value::Integer(i) => i.to_string(),
        toml::Value::Float(f) => f.to_string(),
        toml::Value::Boolean(b) => b.to_string(),
        other => bail!("a config value must be a string, number or boolean, not {other}"),
    })
}

/// The effective options of `cmd` as TOML lines, passwords redacted.
pub fn render(cmd: &Command, m: &ArgMatches, agents: &BTreeMap<String, AgentSection>) -> String {
    let mut out = String::new();
    for arg in cmd.get_arguments() {
        let id = arg.get_id().as_str();
        if arg.get_long().is_none() || matches!(id, "help" | "version" | "config") {
            continue;
        }
        let Some(raw) = m.get_raw(id) else {
            continue;
        };
        let values: Vec<String> = raw
            .map(|v| {
                let v = v.to_string_lossy();
                let v = if id.contains("url") {
                    crate::broker::amqp::redact(&v)
                } else {
                    v.into_owned()
                };
                match v.parse::<f64>() {
                    Ok(_) => v,
                    Err(_) if v == "true" || v == "false" => v,
                    Err(_) => format!("{v:?}"),
                }
            })
            .collect();
        let source = match m.value_source(id) {
            Some(ValueSource::CommandLine) => "flag or file",
            Some(ValueSource::EnvVariable) => "environment",
            _ => "default",
        };
        let value = if values.len() == 1 {
            values[0].clone()
        } else {
            format!("[{}]", values.join(", "))
        };
        out.push_str(&format!("{id} = {value}  # {source}\n"));
    }
    for (name, section) in agents {
        let o = &section.limits;
        out.push_str(&format!("\n[agents.{name}]\n"));
        let fields = [
            ("max_memory_mb", o.max_memory_mb.map(|v| v.to_string())),
            (
                "max_table_elements",
                o.max_table_elements.map(|v| v.to_string()),
            ),
            ("deadline_ms", o.deadline_ms.map(|v| v.to_string())),
            (
                "throttle_after_ms",
                o.throttle_after_ms.map(|v| v.to_string()),
            ),
            ("fuel", o.fuel.map(|v| v.to_string())),
            ("max_instances", o.max_instances.map(|v| v.to_string())),
            (
                "instance_mode",
                o.instance_mode
                    .map(|v| format!("{:?}", format!("{v:?}").to_lowercase())),
            ),
            ("max_outgoing", o.max_outgoing.map(|v| v.to_string())),
            ("max_message_kb", o.max_message_kb.map(|v| v.to_string())),
        ];
        for (k, v) in fields {
            if let Some(v) = v {
                out.push_str(&format!("{k} = {v}\n"));
            }
        }
        if !section.config.is_empty() {
            out.push_str(&format!("\n[agents.{name}.config]\n"));
            for (k, v) in &section.config {
                out.push_str(&format!("{k} = {v:?}\n"));
            }
        }
        let http = &section.http;
        if *http != Default::default() {
            out.push_str(&format!("\n[agents.{name}.http]\n"));
            if let Some(allow) = &http.allow {
                out.push_str(&format!("allow = {allow:?}\n"));
            }
            if let Some(v) = http.timeout_ms {
                out.push_str(&format!("timeout_ms = {v}\n"));
            }
            if let Some(v) = http.max_response_kb {
                out.push_str(&format!("max_response_kb = {v}\n"));
            }
        }
        if !section.secrets.is_empty() {
            // Where each secret comes from, never its value.
            out.push_str(&format!("\n[agents.{name}.secrets]\n"));
            for (k, v) in &section.secrets {
                out.push_str(&format!("{k} = {v:?}\n"));
            }
        }
    }
    out
}
