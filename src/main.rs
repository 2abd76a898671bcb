//! The `warren` command line: parse, then call the library.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, Result};
use clap::{Args, CommandFactory as _, Parser, Subcommand};
use tokio_util::sync::CancellationToken;
use tracing::info;

use warren::bench::BenchConfig;
use warren::broker::amqp::{AmqpBroker, AmqpConfig, QueueType};
use warren::dispatch::DispatchConfig;
use warren::runtime::{InstanceMode, RuntimeConfig};
use warren::status::{AgentStatus, Status};
use warren::{Broker, Host, HostConfig, MemoryBroker, client, control, names, registry, wire};

/// Run AI/automation agents as sandboxed WebAssembly components, connected
/// through a message broker (RabbitMQ, or the embedded in-process broker).
#[derive(Parser)]
#[command(name = "warren", version, propagate_version = true)]
struct Cli {
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
    Run {
        #[command(flatten)]
        run: RunArgs,
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
        #[command(flatten)]
        remote: RemoteArgs,
    },
    /// Show each agent's queue: message_count, consumer_count, routing_key, status.
    Status {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        remote: RemoteArgs,
        /// With RabbitMQ: report the agents of this plugins folder...
        #[arg(long, env = "WARREN_PLUGINS", default_value = "plugins")]
        plugins: PathBuf,
        /// ...and these agents (repeatable).
        #[arg(long = "agent")]
        agents: Vec<String>,
        /// Refresh every N seconds (a live view: calls/s, queue depth,
        /// consumers, version, last error) until Ctrl-C.
        #[arg(long, value_name = "SECONDS", num_args = 0..=1, default_missing_value = "2")]
        watch: Option<f64>,
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
    /// Dead letters: list, show, replay (after fixing the agent) or purge.
    Dlq {
        #[command(subcommand)]
        op: DlqCommand,
    },
    /// Print the effective configuration of `warren run` (flags, environment,
    /// config file and defaults merged; passwords redacted).
    Config {
        #[command(flatten)]
        run: RunArgs,
    },
    /// Start a new agent project (WIT and helper SDK included; its README says how to build).
    New {
        /// The agent's name (the project folder and the plugin file are named after it).
        name: String,
        #[arg(long, value_enum, default_value_t = warren::scaffold::Lang::Rust)]
        lang: warren::scaffold::Lang,
        /// Where to create the project folder.
        #[arg(long, default_value = ".")]
        dir: PathBuf,
    },
    /// A local stand-in for an OpenAI-compatible chat-completions API, to try
    /// LLM agents (plugins/llm_triage) with no network and no API key.
    MockLlm {
        /// Where to listen (the agent's `base_url` is http://ADDR/v1).
        #[arg(long, default_value = "127.0.0.1:8089")]
        listen: std::net::SocketAddr,
        /// Answer only requests that carry this environment variable's value
        /// as their bearer token (as the real service checks its keys).
        #[arg(long)]
        api_key_env: Option<String>,
    },
    /// The Agent A → Agent B handoff, end to end on the embedded broker.
    Demo {
        #[command(flatten)]
        host: HostArgs,
    },
    /// Benchmarks: RabbitMQ relay throughput and latency against a raw lapin
    /// relay, Wasm call cost, embedded-broker hops, start-up and RSS. Prints tables.
    Bench {
        /// RabbitMQ to measure against (temporary `bench_*` queues in its vhost).
        #[arg(
            long,
            env = "WARREN_AMQP_URL",
            hide_env_values = true,
            default_value = "amqp://guest:guest@127.0.0.1:5672/%2f"
        )]
        amqp_url: String,
        /// A smoke run with tiny numbers (what CI runs).
        #[arg(long)]
        quick: bool,
        /// Messages per relay run (default 100000).
        #[arg(long)]
        messages: Option<usize>,
        /// Alternating warren/raw rounds (default 3).
        #[arg(long)]
        rounds: Option<usize>,
        /// Skip the RabbitMQ tables.
        #[arg(long)]
        no_rabbitmq: bool,
        /// Folder with echo.wasm (and <lang>/echo.wasm per guest language).
        #[arg(long, default_value = "plugins")]
        plugins: PathBuf,
        /// Only these tables (repeatable; default: all).
        #[arg(long, value_enum)]
        only: Vec<warren::bench::TableKind>,
        /// Also write the tables (Markdown) to this file.
        #[arg(long)]
        output: Option<PathBuf>,
    },
}

#[derive(Args)]
struct HostArgs {
    /// Folder of agent components (`NAME.wasm`; the agent is called NAME).
    #[arg(long, env = "WARREN_PLUGINS", default_value = "plugins")]
    plugins: PathBuf,
    /// Do not watch the plugins folder (by default `run` adds, replaces and
    /// removes agents as their files come and go).
    #[arg(long)]
    no_watch: bool,
    /// Calls a freshly swapped-in version is judged on (0: no rollback guard).
    #[arg(long, default_value_t = 20)]
    rollback_after: u64,
    /// Roll a new version back if more than this share of those calls failed.
    #[arg(long, default_value_t = 0.5)]
    rollback_share: f64,
    #[command(flatten)]
    runtime: RuntimeArgs,
    #[command(flatten)]
    dispatch: DispatchArgs,
}

/// How `send` and `status` reach warren: RabbitMQ when a URL is given,
/// otherwise the control socket of a host running the embedded broker.
/// Everything `warren run` takes (and `warren config` shows).
#[derive(Args)]
struct RunArgs {
    #[command(flatten)]
    host: HostArgs,
    #[command(flatten)]
    broker: BrokerArgs,
    /// Control socket through which `warren send` / `warren status` reach this host.
    #[arg(long, env = "WARREN_CONTROL", default_value_os_t = control::default_socket())]
    control: PathBuf,
    /// Address of the HTTP endpoint: /metrics (Prometheus), /healthz, /readyz.
    #[arg(long, env = "WARREN_HTTP", default_value = "127.0.0.1:9464")]
    http: std::net::SocketAddr,
    /// No HTTP endpoint.
    #[arg(long)]
    no_http: bool,
}

#[derive(Subcommand)]
enum DlqCommand {
    /// One line per dead letter: id, attempts, first failure, reason.
    List {
        agent: String,
        #[command(flatten)]
        remote: RemoteArgs,
        #[arg(long)]
        json: bool,
    },
    /// Dead letters in full: body, reason, attempts, first failure time.
    Show {
        agent: String,
        /// Only this message (default: all).
        #[arg(long)]
        id: Option<String>,
        #[command(flatten)]
        remote: RemoteArgs,
        #[arg(long)]
        json: bool,
    },
    /// Back to the agent's queue with the attempt count reset.
    Replay {
        agent: String,
        #[command(flatten)]
        pick: DlqPick,
        #[command(flatten)]
        remote: RemoteArgs,
    },
    /// Delete dead letters.
    Purge {
        agent: String,
        #[command(flatten)]
        pick: DlqPick,
        #[command(flatten)]
        remote: RemoteArgs,
    },
}

#[derive(Args)]
#[group(required = true, multiple = false)]
struct DlqPick {
    /// Only the message with this id.
    #[arg(long)]
    id: Option<String>,
    /// Every dead letter of the agent.
    #[arg(long)]
    all: bool,
}

#[derive(Args)]
struct RemoteArgs {
    #[arg(long, env = "WARREN_CONTROL", default_value_os_t = control::default_socket())]
    control: PathBuf,
    #[command(flatten)]
    broker: BrokerArgs,
}

#[derive(Args)]
struct BrokerArgs {
    /// RabbitMQ URL (amqp:// or amqps://, e.g. amqp://guest:guest@127.0.0.1:5672/%2f).
    /// Without it, `run` uses the embedded broker and `send` / `status` reach
    /// the running host through its control socket.
    #[arg(long, env = "WARREN_AMQP_URL", hide_env_values = true)]
    amqp_url: Option<String>,
    /// The topic exchange agents' queues are bound to.
    #[arg(long, env = "WARREN_EXCHANGE", default_value = "agent_exchange")]
    exchange: String,
    /// Unacknowledged deliveries per consumer.
    #[arg(long, default_value_t = 8)]
    prefetch: u16,
    /// Queue type of agent queues.
    #[arg(long, value_enum, default_value_t = QueueType::Classic)]
    queue_type: QueueType,
    /// Seconds to wait for a lost connection to recover before failing.
    #[arg(long, default_value_t = 120)]
    recovery_timeout: u64,
}

impl BrokerArgs {
    async fn connect(&self) -> Result<Option<AmqpBroker>> {
        let Some(url) = &self.amqp_url else {
            return Ok(None);
        };
        let config = AmqpConfig {
            exchange: self.exchange.clone(),
            prefetch: self.prefetch,
            queue_type: self.queue_type,
            recovery_timeout: Duration::from_secs(self.recovery_timeout),
            ..AmqpConfig::new(url.clone())
        };
        Ok(Some(AmqpBroker::connect(config).await?))
    }
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
    /// Most elements per table.
    #[arg(long, default_value_t = 100_000)]
    max_table_elements: usize,
    /// Wall-clock deadline per message, in milliseconds.
    #[arg(long, default_value_t = 5000)]
    deadline_ms: u64,
    /// A call still running guest code after this many milliseconds is a
    /// runaway: all runaways share 5% of one core until their deadline.
    #[arg(long, default_value_t = 100)]
    throttle_after_ms: u64,
    /// Fuel per message (about one unit per Wasm instruction); turns on fuel
    /// metering, which slows every call a little. Off by default.
    #[arg(long)]
    fuel: Option<u64>,
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
    /// Most messages one agent call may send on.
    #[arg(long, default_value_t = 64)]
    max_outgoing: usize,
    /// Largest message body in or out, in KiB.
    #[arg(long, default_value_t = 1024)]
    max_message_kb: usize,
    /// Deliveries each consumer handles at once (their confirms overlap).
    #[arg(long, default_value_t = 8)]
    in_flight: usize,
}

impl RuntimeArgs {
    fn config(&self) -> RuntimeConfig {
        let cache_dir = if self.no_cache {
            None
        } else {
            self.cache_dir
                .clone()
                .or_else(warren::runtime::cache::CompileCache::default_dir)
        };
        RuntimeConfig {
            cache_dir,
            instance_mode: self.instance_mode,
            max_instances: self.max_instances,
            max_memory: self.max_memory_mb << 20,
            max_table_elements: self.max_table_elements,
            deadline: Duration::from_millis(self.deadline_ms),
            throttle_after: Duration::from_millis(self.throttle_after_ms),
            fuel: self.fuel,
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
                in_flight_per_consumer: d.in_flight,
                max_outgoing: d.max_outgoing,
                max_message_bytes: d.max_message_kb << 10,
            },
            guard: warren::guard::GuardConfig {
                first_calls: self.rollback_after,
                max_failure_share: self.rollback_share,
            },
            agents: AGENT_OVERRIDES.get().cloned().unwrap_or_default(),
        }
    }
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
    let logs = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Human => logs.init(),
        // Fields (agent, id, conversation, ...) at the top level, for log tools.
        LogFormat::Json => logs.json().flatten_event(true).init(),
    }
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let (cli, matches) = match parse_with_config() {
        Ok(parsed) => parsed,
        Err(e) => {
            eprintln!("error: {e:#}");
            return std::process::ExitCode::FAILURE;
        }
    };
    // Only the long-running host logs at info by default; commands print results.
    let quiet = !matches!(cli.command, Command::Run { .. });
    init_logging(
        cli.log.as_deref(),
        if quiet {
            "warn,warren::guest=info"
        } else {
            "info"
        },
        cli.log_format,
    );
    if let Command::Config { .. } = &cli.command {
        let (_, m) = matches.subcommand().expect("the config command");
        let cmd = Cli::command();
        let sub = cmd.find_subcommand("config").expect("the config command");
        let agents = AGENT_OVERRIDES.get().cloned().unwrap_or_default();
        print!("{}", warren::config::render(sub, m, &agents));
        return std::process::ExitCode::SUCCESS;
    }
    match run(cli.command).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// Per-agent limits from the config file's `[agents.NAME]` sections.
static AGENT_OVERRIDES: std::sync::OnceLock<
    std::collections::BTreeMap<String, warren::runtime::settings::AgentSection>,
> = std::sync::OnceLock::new();

/// Parses the command line; with a config file, parses it again with the
/// file's values added where flags and environment left defaults.
fn parse_with_config() -> Result<(Cli, clap::ArgMatches)> {
    use clap::{CommandFactory as _, FromArgMatches as _};
    let argv: Vec<std::ffi::OsString> = std::env::args_os().collect();
    let root = Cli::command();
    let matches = root.clone().get_matches_from(argv.clone());
    let matches = match matches.get_one::<PathBuf>("config") {
        None => matches,
        Some(path) => {
            let file = warren::config::read(path)?;
            let argv = warren::config::merge_into_args(&file, &root, &matches, argv)?;
            let _ = AGENT_OVERRIDES.set(file.agents);
            root.get_matches_from(argv)
        }
    };
    let cli = Cli::from_arg_matches(&matches).map_err(|e| anyhow::anyhow!("{e}"))?;
    Ok((cli, matches))
}

async fn run(command: Command) -> Result<()> {
    match command {
        Command::Run {
            run:
                RunArgs {
                    host,
                    broker,
                    control,
                    http,
                    no_http,
                },
        } => run_host(host, broker, control, (!no_http).then_some(http)).await,
        Command::Send {
            agent,
            text,
            context,
            wait,
            timeout,
            json,
            remote: RemoteArgs { control, broker },
        } => {
            let context = wire::parse_context(&context).context("--context")?;
            let wait = wait.then(|| Duration::from_secs_f64(timeout));
            let outcome = match broker.connect().await? {
                Some(amqp) => {
                    let outcome = client::send(&amqp, &agent, &text, context, wait).await;
                    amqp.close().await;
                    outcome?
                }
                None => control::send(&control, &agent, &text, context, wait).await?,
            };
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
        Command::Status {
            json,
            remote: RemoteArgs { control, broker },
            plugins,
            agents,
            watch,
        } => {
            let amqp = broker.connect().await?;
            let fetch = || async {
                match &amqp {
                    Some(amqp) => amqp_status(amqp, &plugins, &agents).await,
                    None => control::status(&control).await,
                }
            };
            if let Some(secs) = watch {
                let every = Duration::from_secs_f64(secs.max(0.2));
                let mut previous: Option<(warren::status::Status, std::time::Instant)> = None;
                loop {
                    let status = fetch().await?;
                    let now = std::time::Instant::now();
                    let elapsed = previous
                        .as_ref()
                        .map(|(_, at)| now.duration_since(*at).as_secs_f64())
                        .unwrap_or(0.0);
                    // Clear the screen, then the table.
                    print!(
                        "\x1b[2J\x1b[H{}",
                        status.watch_table(previous.as_ref().map(|(s, _)| s), elapsed)
                    );
                    previous = Some((status, now));
                    tokio::select! {
                        _ = tokio::signal::ctrl_c() => break,
                        _ = tokio::time::sleep(every) => {}
                    }
                }
                if let Some(amqp) = &amqp {
                    amqp.close().await;
                }
                return Ok(());
            }
            let status = fetch().await;
            if let Some(amqp) = &amqp {
                amqp.close().await;
            }
            let status = status?;
            if json {
                println!("{}", serde_json::to_string_pretty(&status)?);
            } else {
                print!("{}", status.table());
            }
            Ok(())
        }
        Command::Dlq { op } => {
            use warren::dlq::Op;
            let (agent, op, remote, json) = match op {
                DlqCommand::List {
                    agent,
                    remote,
                    json,
                } => (agent, Op::List, remote, json),
                DlqCommand::Show {
                    agent,
                    id,
                    remote,
                    json,
                } => (agent, Op::Show { id }, remote, json),
                DlqCommand::Replay {
                    agent,
                    pick,
                    remote,
                } => (agent, Op::Replay { id: pick.id }, remote, false),
                DlqCommand::Purge {
                    agent,
                    pick,
                    remote,
                } => (agent, Op::Purge { id: pick.id }, remote, false),
            };
            let answer = match remote.broker.connect().await? {
                Some(amqp) => {
                    let answer = warren::dlq::run(&amqp, &agent, op).await;
                    amqp.close().await;
                    answer?
                }
                None => control::dlq(&remote.control, &agent, op).await?,
            };
            if json {
                println!("{}", serde_json::to_string_pretty(&answer.entries)?);
            } else {
                print!("{}", answer.text());
            }
            Ok(())
        }
        Command::New { name, lang, dir } => {
            let path = warren::scaffold::create(&name, lang, &dir)?;
            println!(
                "created {}: see its README.md to build {}.wasm",
                path.display(),
                path.file_name().unwrap().to_string_lossy()
            );
            Ok(())
        }
        Command::Test {
            plugin,
            input,
            runtime,
        } => {
            let reader: Box<dyn BufRead> = match input {
                Some(p) if p.as_os_str() != "-" => Box::new(BufReader::new(
                    std::fs::File::open(&p).with_context(|| format!("opening {}", p.display()))?,
                )),
                _ => Box::new(BufReader::new(std::io::stdin())),
            };
            // The agent's section of the config file applies as in `warren run`.
            let agent = warren::names::from_path(&plugin)?;
            let section = AGENT_OVERRIDES.get().and_then(|a| a.get(&agent));
            warren::testbench::run(
                &plugin,
                reader,
                &mut std::io::stdout(),
                &mut std::io::stderr(),
                runtime.config(),
                section,
            )
            .await
        }
        Command::Config { .. } => unreachable!("handled in main"),
        Command::MockLlm {
            listen,
            api_key_env,
        } => {
            let api_key = match api_key_env {
                Some(var) => Some(
                    std::env::var(&var)
                        .with_context(|| format!("--api-key-env: {var} is not set"))?,
                ),
                None => None,
            };
            let (mock, serve) = warren::mockllm::MockLlm::bind(listen, api_key).await?;
            println!("mock LLM: POST {}/chat/completions", mock.base_url);
            tokio::select! {
                r = serve => r,
                _ = tokio::signal::ctrl_c() => Ok(()),
                r = wait_terminate() => r,
            }
        }
        Command::Demo { host } => {
            warren::demo::run(&host.plugins, host.config(), &mut std::io::stdout()).await
        }
        Command::Bench {
            amqp_url,
            quick,
            messages,
            rounds,
            no_rabbitmq,
            plugins,
            only,
            output,
        } => {
            let exe = std::env::current_exe().context("locating the warren binary")?;
            let mut config = BenchConfig::full(amqp_url, plugins, exe);
            if quick {
                config = config.quick();
            }
            config.messages = messages.unwrap_or(config.messages);
            config.rounds = rounds.unwrap_or(config.rounds);
            config.skip_rabbitmq = no_rabbitmq;
            config.only = only;
            let tables = warren::bench::run(&config, |t| println!("{}", t.markdown())).await?;
            if let Some(path) = output {
                let text: Vec<String> = tables.iter().map(|t| t.markdown()).collect();
                std::fs::write(&path, text.join("\n"))
                    .with_context(|| format!("writing {}", path.display()))?;
            }
            Ok(())
        }
    }
}

/// Queue health straight from RabbitMQ, for the agents of a plugins folder
/// plus any named ones (AMQP cannot list queues).
async fn amqp_status(amqp: &AmqpBroker, plugins: &Path, agents: &[String]) -> Result<Status> {
    let mut names_seen: Vec<String> = agents.iter().map(|a| names::normalise(a)).collect();
    if plugins.is_dir() {
        for file in registry::plugin_files(plugins)? {
            if let Ok(name) = names::from_path(&file) {
                names_seen.push(name);
            }
        }
    }
    if names_seen.is_empty() {
        anyhow::bail!("no agents to report: pass --plugins DIR or --agent NAME");
    }
    amqp.watch_agents(names_seen);
    Ok(Status {
        broker: amqp.describe(),
        agents: amqp
            .stats()
            .await?
            .into_iter()
            .map(AgentStatus::remote)
            .collect(),
    })
}

async fn run_host(
    args: HostArgs,
    broker: BrokerArgs,
    control_path: PathBuf,
    http: Option<std::net::SocketAddr>,
) -> Result<()> {
    let amqp = broker.connect().await?;
    let broker: Arc<dyn Broker> = match &amqp {
        Some(amqp) => Arc::new(amqp.clone()),
        None => {
            info!(
                "no AMQP URL configured (--amqp-url / WARREN_AMQP_URL): using the embedded in-process broker (messages do not survive a restart)"
            );
            Arc::new(MemoryBroker::new())
        }
    };
    info!("broker: {}", broker.describe());
    let host = Host::new(args.config(), broker)?;
    let loaded = host.load_dir(&args.plugins).await?;
    info!(
        "hosting {} agents from {}: {}",
        loaded.len(),
        args.plugins.display(),
        loaded.join(", ")
    );
    let watcher = if args.no_watch {
        None
    } else {
        info!("watching {} for plugin changes", args.plugins.display());
        Some(warren::watch::watch(host.clone(), &args.plugins)?)
    };
    let stop = CancellationToken::new();
    let mut http_server = match http {
        Some(addr) => {
            let (_, serve) = warren::http::bind(host.clone(), addr, stop.clone()).await?;
            tokio::spawn(serve)
        }
        None => tokio::spawn(async { std::future::pending::<Result<()>>().await }),
    };
    // With RabbitMQ, `send` and `status` talk to the broker; the control socket
    // is only how they reach an embedded broker inside this process.
    let embedded = amqp.is_none();
    let mut server = match amqp {
        Some(_) => tokio::spawn(async { std::future::pending::<Result<()>>().await }),
        None => tokio::spawn(control::serve(host.clone(), control_path, stop.clone())),
    };
    tokio::select! {
        r = tokio::signal::ctrl_c() => r.context("waiting for Ctrl-C")?,
        r = wait_terminate() => r?,
        // The control endpoint only ends early on error (e.g. the socket is taken).
        r = &mut server => {
            host.shutdown().await;
            return r.context("control server task")?;
        }
        r = &mut http_server => {
            host.shutdown().await;
            return r.context("HTTP endpoint task")?;
        }
    }
    info!("shutting down: finishing in-flight messages");
    drop(watcher);
    stop.cancel();
    host.shutdown().await;
    if embedded {
        server.await.context("control server task")??;
    } else {
        server.abort();
    }
    http_server.abort();
    Ok(())
}

async fn wait_terminate() -> Result<()> {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    term.recv().await;
    Ok(())
}
