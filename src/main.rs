//! The `warren` command line: parse, then call the library.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, Result};
use clap::{Args, Parser, Subcommand};
use tokio_util::sync::CancellationToken;
use tracing::info;

use warren::dispatch::DispatchConfig;
use warren::runtime::{InstanceMode, RuntimeConfig};
use warren::{Host, HostConfig, MemoryBroker, control, wire};

/// Run AI/automation agents as sandboxed WebAssembly components, connected
/// through a message broker (RabbitMQ, or the embedded in-process broker).
#[derive(Parser)]
#[command(name = "warren", version, propagate_version = true)]
struct Cli {
    /// Log filter (tracing syntax, e.g. `info`, `warren=debug`). Default: $RUST_LOG or `info`.
    #[arg(long, global = true)]
    log: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Host every `*.wasm` agent in a plugins folder.
    Run {
        #[command(flatten)]
        host: HostArgs,
        /// Control socket through which `warren send` / `warren status` reach this host.
        #[arg(long, env = "WARREN_CONTROL", default_value_os_t = control::default_socket())]
        control: PathBuf,
    },
    /// Send a user message to an agent (the seed's `client.run`).
    Send {
        /// The agent ("Agent A" and `agent_a` are the same agent).
        agent: String,
        /// The user's message.
        text: String,
        /// Context variables, a JSON object.
        #[arg(long, default_value = "{}")]
        context: String,
        /// Wait for the conversation's reply and print it.
        #[arg(long)]
        wait: bool,
        /// Seconds to wait for the reply.
        #[arg(long, default_value_t = 30.0, requires = "wait")]
        timeout: f64,
        /// Print the outcome as JSON.
        #[arg(long)]
        json: bool,
        #[arg(long, env = "WARREN_CONTROL", default_value_os_t = control::default_socket())]
        control: PathBuf,
    },
    /// Show each agent's queue: message_count, consumer_count, routing_key, status.
    Status {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
        #[arg(long, env = "WARREN_CONTROL", default_value_os_t = control::default_socket())]
        control: PathBuf,
    },
    /// Test one plugin with no broker: JSON-line bodies in, outgoing messages out.
    Test {
        /// The component to test.
        plugin: PathBuf,
        /// Input file of JSON lines (seed body format); `-` or absent reads stdin.
        #[arg(long)]
        input: Option<PathBuf>,
        #[command(flatten)]
        runtime: RuntimeArgs,
    },
    /// The Agent A → Agent B handoff, end to end on the embedded broker.
    Demo {
        #[command(flatten)]
        host: HostArgs,
    },
}

#[derive(Args)]
struct HostArgs {
    /// Folder of agent components (`NAME.wasm`; the agent is called NAME).
    #[arg(long, env = "WARREN_PLUGINS", default_value = "plugins")]
    plugins: PathBuf,
    #[command(flatten)]
    runtime: RuntimeArgs,
    #[command(flatten)]
    dispatch: DispatchArgs,
}

#[derive(Args)]
struct RuntimeArgs {
    /// Compile cache folder (default: ~/.cache/warren/compiled).
    #[arg(long, env = "WARREN_CACHE_DIR")]
    cache_dir: Option<PathBuf>,
    /// Do not cache compiled code.
    #[arg(long)]
    no_cache: bool,
    /// Reuse instances across messages, or a fresh instance per message.
    #[arg(long, value_enum, default_value_t = InstanceMode::Reuse)]
    instance_mode: InstanceMode,
    /// Most instances of one agent alive at once.
    #[arg(long, default_value_t = 4)]
    max_instances: usize,
    /// Most linear memory per instance, in MiB.
    #[arg(long, default_value_t = 256)]
    max_memory_mb: usize,
    /// Wall-clock deadline per message, in milliseconds.
    #[arg(long, default_value_t = 5000)]
    deadline_ms: u64,
    /// Use wasmtime's pooling instance allocator.
    #[arg(long)]
    pooling: bool,
}

#[derive(Args)]
struct DispatchArgs {
    /// Deliveries of a message before it is dead-lettered.
    #[arg(long, default_value_t = 5)]
    max_attempts: u32,
    /// Retries (on a fresh instance) after a guest trap.
    #[arg(long, default_value_t = 1)]
    trap_retries: u32,
    /// Hops a conversation may take before it is dead-lettered as a loop.
    #[arg(long, default_value_t = 16)]
    max_hops: u32,
    /// First retry delay in milliseconds (doubles per attempt, with jitter).
    #[arg(long, default_value_t = 200)]
    backoff_base_ms: u64,
    /// Longest retry delay in milliseconds.
    #[arg(long, default_value_t = 30_000)]
    backoff_cap_ms: u64,
    /// Concurrent consumers per agent.
    #[arg(long, default_value_t = 4)]
    consumers: usize,
}

impl RuntimeArgs {
    fn config(&self) -> RuntimeConfig {
        let cache_dir = if self.no_cache {
            None
        } else {
            self.cache_dir.clone().or_else(warren::runtime::cache::CompileCache::default_dir)
        };
        RuntimeConfig {
            cache_dir,
            instance_mode: self.instance_mode,
            max_instances: self.max_instances,
            max_memory: self.max_memory_mb << 20,
            deadline: Duration::from_millis(self.deadline_ms),
            pooling: self.pooling,
        }
    }
}

impl HostArgs {
    fn config(&self) -> HostConfig {
        let d = &self.dispatch;
        HostConfig {
            runtime: self.runtime.config(),
            dispatch: DispatchConfig {
                max_attempts: d.max_attempts,
                trap_retries: d.trap_retries,
                max_hops: d.max_hops,
                backoff_base: Duration::from_millis(d.backoff_base_ms),
                backoff_cap: Duration::from_millis(d.backoff_cap_ms),
                consumers_per_agent: d.consumers,
            },
        }
    }
}

fn init_logging(filter: Option<&str>, default: &str) {
    let filter = filter
        .map(str::to_string)
        .or_else(|| std::env::var("RUST_LOG").ok())
        .unwrap_or_else(|| default.to_string());
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
        .with_writer(std::io::stderr)
        .init();
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let quiet = matches!(cli.command, Command::Demo { .. } | Command::Test { .. } | Command::Send { .. } | Command::Status { .. });
    init_logging(cli.log.as_deref(), if quiet { "warn,warren::guest=info" } else { "info" });
    match run(cli.command).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run(command: Command) -> Result<()> {
    match command {
        Command::Run { host, control } => run_host(host, control).await,
        Command::Send { agent, text, context, wait, timeout, json, control } => {
            let context = wire::parse_context(&context).context("--context")?;
            let wait = wait.then(|| Duration::from_secs_f64(timeout));
            let outcome = control::send(&control, &agent, &text, context, wait).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&outcome)?);
            } else {
                match &outcome.reply {
                    Some(r) => println!("{}: {}", r.from.as_deref().unwrap_or("?"), r.text),
                    None => println!("sent message {} to {}", outcome.id, outcome.agent),
                }
            }
            Ok(())
        }
        Command::Status { json, control } => {
            let status = control::status(&control).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&status)?);
            } else {
                print!("{}", status.table());
            }
            Ok(())
        }
        Command::Test { plugin, input, runtime } => {
            let reader: Box<dyn BufRead> = match input {
                Some(p) if p.as_os_str() != "-" => Box::new(BufReader::new(
                    std::fs::File::open(&p).with_context(|| format!("opening {}", p.display()))?,
                )),
                _ => Box::new(BufReader::new(std::io::stdin())),
            };
            warren::testbench::run(&plugin, reader, &mut std::io::stdout(), &mut std::io::stderr(), runtime.config()).await
        }
        Command::Demo { host } => warren::demo::run(&host.plugins, host.config(), &mut std::io::stdout()).await,
    }
}

async fn run_host(args: HostArgs, control_path: PathBuf) -> Result<()> {
    info!("no AMQP URL configured: using the embedded in-process broker (messages do not survive a restart)");
    let host = Host::new(args.config(), Arc::new(MemoryBroker::new()))?;
    let loaded = host.load_dir(&args.plugins).await?;
    info!("hosting {} agents from {}: {}", loaded.len(), args.plugins.display(), loaded.join(", "));
    let stop = CancellationToken::new();
    let mut server = tokio::spawn(control::serve(host.clone(), control_path, stop.clone()));
    tokio::select! {
        r = tokio::signal::ctrl_c() => r.context("waiting for Ctrl-C")?,
        r = wait_terminate() => r?,
        // The control endpoint only ends early on error (e.g. the socket is taken).
        r = &mut server => {
            host.shutdown().await;
            return r.context("control server task")?;
        }
    }
    info!("shutting down: finishing in-flight messages");
    stop.cancel();
    host.shutdown().await;
    server.await.context("control server task")??;
    Ok(())
}

async fn wait_terminate() -> Result<()> {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    term.recv().await;
    Ok(())
}
