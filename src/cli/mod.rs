//! The `warren` command line: the options, the config file merged under
//! them, logging, and one module per verb.

mod args;
mod bench;
mod chaos;
mod config;
mod demo;
mod dlq;
mod mock_llm;
mod new;
mod run;
mod send;
mod status;
mod test;
mod trace;

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::path::PathBuf;
use std::sync::OnceLock;

use anyhow::Result;
use clap::{CommandFactory as _, FromArgMatches as _, Parser, Subcommand};

use warren::runtime::settings::AgentSection;

/// Run AI/automation agents as sandboxed WebAssembly components, connected
/// through a message broker (RabbitMQ, or the embedded in-process broker).
#[derive(Parser)]
#[command(name = "warren", version, propagate_version = true)]
pub struct Cli {
    /// Log filter (tracing syntax, e.g. `info`, `warren=debug`). Default: $RUST_LOG or `info`.
    #[arg(long, global = true)]
    log: Option<String>,
    /// Log lines for people (`human`) or one JSON object per line (`json`).
    #[arg(long, global = true, value_enum, env = "WARREN_LOG_FORMAT", default_value_t = LogFormat::Human)]
    log_format: LogFormat,
    /// Config file (TOML): any option as `name = value`, plus [agents.NAME]
    /// limit sections. Flags and environment variables win over it.
    #[arg(long, global = true, env = "WARREN_CONFIG")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Host every `*.wasm` agent in a plugins folder.
    Run(run::Run),
    /// Send a user message to an agent and, with --wait, print its answer.
    Send(send::Send),
    /// Show each agent's queue: message_count, consumer_count, routing_key, status.
    Status(status::StatusCmd),
    /// Test one plugin with no broker: JSON-line bodies in, outgoing messages out.
    Test(test::Test),
    /// One conversation, hop by hop: agents, versions, attempts, timings,
    /// outcomes, across every host (the console shows the same at `/`).
    Trace(trace::Trace),
    /// Dead letters: list, show, replay (after fixing the agent) or purge.
    Dlq {
        #[command(subcommand)]
        op: dlq::DlqCommand,
    },
    /// Print the effective configuration of `warren run` (flags, environment,
    /// config file and defaults merged; passwords redacted).
    Config(config::Config),
    /// Start a new agent project (WIT and helper SDK included; its README says how to build).
    New(new::New),
    /// A local stand-in for an OpenAI-compatible chat-completions API, to try
    /// LLM agents (plugins/llm_triage) with no network and no API key.
    MockLlm(mock_llm::MockLlm),
    /// The Agent A → Agent B handoff, end to end on the embedded broker.
    Demo(demo::Demo),
    /// Benchmarks: RabbitMQ relay throughput and latency against a raw lapin
    /// relay, Wasm call cost, embedded-broker hops, start-up and RSS. Prints tables.
    Bench(bench::Bench),
    /// Faults injected into a running host mid-backlog (connection closes,
    /// broker restarts, host kills, plugin swaps, node losses, frozen links);
    /// every message counted: lost, duplicated, unexpected. Prints a table.
    Chaos(chaos::Chaos),
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum LogFormat {
    Human,
    Json,
}

fn init_logging(filter: Option<&str>, default: &str, format: LogFormat) {
    let filter = filter
        .map(str::to_string)
        .or_else(|| std::env::var("RUST_LOG").ok())
        .unwrap_or_else(|| default.to_string());
    let filter = warren::logging::env_filter(&filter);
    // Colour only for a person at a terminal, and not for one who asked for
    // none (https://no-color.org): a log file gets plain text.
    use std::io::IsTerminal as _;
    let colour = std::io::stderr().is_terminal()
        && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(colour)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Human => logs.init(),
        // Fields (agent, id, conversation, ...) at the top level, for log tools.
        LogFormat::Json => logs.json().flatten_event(true).init(),
    }
}

/// Parses, sets up logging and runs the verb; the process's exit code.
pub async fn main() -> std::process::ExitCode {
    let (cli, matches) = match parse_with_config() {
        Ok(parsed) => parsed,
        Err(e) => {
            eprintln!("error: {e:#}");
            return std::process::ExitCode::FAILURE;
        }
    };
    // Only the long-running host logs at info by default; commands print
    // results and report their own errors (lapin's own error lines would
    // say the same thing again, less clearly).
    let quiet = !matches!(cli.command, Command::Run { .. });
    init_logging(
        cli.log.as_deref(),
        if quiet {
            "warn,lapin=off,warren::guest=info"
        } else {
            "info"
        },
        cli.log_format,
    );
    let result = match cli.command {
        Command::Run(c) => run::run(c).await,
        Command::Send(c) => send::run(c).await,
        Command::Status(c) => status::run(c).await,
        Command::Trace(c) => trace::run(c).await,
        Command::Test(c) => test::run(c).await,
        Command::Dlq { op } => dlq::run(op).await,
        Command::Config(_) => config::run(&matches),
        Command::New(c) => new::run(c),
        Command::MockLlm(c) => mock_llm::run(c).await,
        Command::Demo(c) => demo::run(c).await,
        Command::Bench(c) => bench::run(c).await,
        Command::Chaos(c) => chaos::run(c).await,
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// The config file's `[agents.NAME]` sections (empty without a file).
static AGENT_SECTIONS: OnceLock<BTreeMap<String, AgentSection>> = OnceLock::new();

pub fn agent_sections() -> &'static BTreeMap<String, AgentSection> {
    AGENT_SECTIONS.get_or_init(BTreeMap::new)
}

/// Parses the command line; with a config file, parses it again with the
/// file's values added where flags and environment left defaults. A file
/// value clap refuses is reported with the file and key, not as if it were
/// a flag on the command line.
fn parse_with_config() -> Result<(Cli, clap::ArgMatches)> {
    let argv: Vec<OsString> = std::env::args_os().collect();
    let root = Cli::command();
    let matches = root.clone().get_matches_from(argv.clone());
    let matches = match matches.get_one::<PathBuf>("config") {
        None => matches,
        Some(path) => {
            let file = warren::config::read(path)?;
            let merged = warren::config::merge_into_args(&file, &root, &matches, argv.clone())?;
            let _ = AGENT_SECTIONS.set(file.agents.clone());
            match root.clone().try_get_matches_from(merged) {
                Ok(m) => m,
                Err(e) => return Err(blame_file(&file, &root, &matches, argv, e)),
            }
        }
    };
    let cli = Cli::from_arg_matches(&matches).map_err(|e| anyhow::anyhow!("{e}"))?;
    Ok((cli, matches))
}

/// Finds the config file key whose value clap refused, by adding the
/// file's values one at a time.
fn blame_file(
    file: &warren::config::ConfigFile,
    root: &clap::Command,
    matches: &clap::ArgMatches,
    argv: Vec<OsString>,
    error: clap::Error,
) -> anyhow::Error {
    for (key, value) in &file.options {
        let one = warren::config::ConfigFile {
            options: vec![(key.clone(), value.clone())],
            ..file.clone()
        };
        let Ok(args) = warren::config::merge_into_args(&one, root, matches, argv.clone()) else {
            continue;
        };
        if let Err(e) = root.clone().try_get_matches_from(args) {
            let why = e.kind().as_str().unwrap_or("invalid value").to_string();
            let detail = e
                .to_string()
                .lines()
                .next()
                .unwrap_or_default()
                .trim_start_matches("error: ")
                .to_string();
            return anyhow::anyhow!(
                "{}: `{key} = {value}`: {why} ({detail})",
                file.path.display()
            );
        }
    }
    anyhow::anyhow!("{}: {}", file.path.display(), error.to_string().trim())
}
