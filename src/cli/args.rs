//! Option groups shared by several verbs: how to reach the broker, the
//! runtime's limits, the dispatch policy, the host as a whole.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Result;
use clap::Args;
use clap::builder::RangedU64ValueParser;

use warren::HostConfig;
use warren::broker::amqp::{AmqpBroker, AmqpConfig, QueueType, QueueVersion};
use warren::control;
use warren::dispatch::DispatchConfig;
use warren::runtime::{InstanceMode, RuntimeConfig};

/// A count that must be at least 1 (0 would host agents that do nothing).
pub(super) fn at_least_one() -> RangedU64ValueParser<usize> {
    RangedU64ValueParser::<usize>::new().range(1..)
}

#[derive(Args)]
pub struct HostArgs {
    /// Folder of agent components (`NAME.wasm`; the agent is called NAME).
    #[arg(long, env = "WARREN_PLUGINS", default_value = "plugins")]
    pub plugins: PathBuf,
    /// Do not watch the plugins folder (by default `run` adds, replaces and
    /// removes agents as their files come and go).
    #[arg(long)]
    pub no_watch: bool,
    /// Calls a freshly swapped-in version is judged on (0: no rollback guard).
    #[arg(long, default_value_t = 20)]
    pub rollback_after: u64,
    /// Roll a new version back if more than this share of those calls failed.
    #[arg(long, default_value_t = 0.5)]
    pub rollback_share: f64,
    /// Hops this host keeps for conversation traces (the console's trace
    /// view, `warren trace`): a ring, the oldest go first (0: none kept).
    #[arg(long, env = "WARREN_TRACE_HOPS", default_value_t = warren::trace::DEFAULT_CAPACITY)]
    pub trace_hops: usize,
    #[command(flatten)]
    pub runtime: RuntimeArgs,
    #[command(flatten)]
    pub dispatch: DispatchArgs,
}

/// Everything `warren run` takes (and `warren config` shows).
#[derive(Args)]
pub struct RunArgs {
    #[command(flatten)]
    pub host: HostArgs,
    #[command(flatten)]
    pub broker: BrokerArgs,
    #[command(flatten)]
    pub queues: QueueArgs,
    /// Control socket through which `warren send` / `warren status` reach this host.
    #[arg(long, env = "WARREN_CONTROL", default_value_os_t = control::default_socket())]
    pub control: PathBuf,
    /// Address of the HTTP endpoint: /metrics (Prometheus), /healthz, /readyz.
    #[arg(long, env = "WARREN_HTTP", default_value = "127.0.0.1:9464")]
    pub http: std::net::SocketAddr,
    /// No HTTP endpoint.
    #[arg(long)]
    pub no_http: bool,
    /// Lets the console's replay and purge through from other machines
    /// (sent as `Authorization: Bearer TOKEN`); without it only requests
    /// from this machine may change dead letters.
    #[arg(long, env = "WARREN_CONSOLE_TOKEN", hide_env_values = true)]
    pub console_token: Option<String>,
}

/// How `send`, `status` and `dlq` reach warren: RabbitMQ when a URL is
/// given, otherwise the control socket of a host running the embedded broker.
#[derive(Args)]
pub struct RemoteArgs {
    /// Control socket of a host running the embedded broker (used when no
    /// AMQP URL is given).
    #[arg(long, env = "WARREN_CONTROL", default_value_os_t = control::default_socket())]
    pub control: PathBuf,
    #[command(flatten)]
    pub broker: BrokerArgs,
}

#[derive(Args)]
pub struct BrokerArgs {
    /// RabbitMQ URL (amqp:// or amqps://, e.g. amqp://guest:guest@127.0.0.1:5672/%2f).
    /// Without it, `run` uses the embedded broker and `send` / `status` reach
    /// the running host through its control socket.
    /// Repeat it (or give a comma-separated list) for the nodes of a
    /// cluster: tried in order; the host moves to the next when its node is lost.
    #[arg(
        long,
        env = "WARREN_AMQP_URL",
        hide_env_values = true,
        value_delimiter = ','
    )]
    pub amqp_url: Vec<String>,
    /// The topic exchange agents' queues are bound to.
    #[arg(long, env = "WARREN_EXCHANGE", default_value = "agent_exchange")]
    pub exchange: String,
    /// Whether warren declares the exchange durable when it is missing.
    /// `false` declares it as the original SwarmRabbitMQ clients do
    /// (non-durable, no arguments), the setting for a deployment that still
    /// runs them: their declare fails on any other exchange. An exchange
    /// that exists is used as it is, whatever this says.
    #[arg(long, env = "WARREN_EXCHANGE_DURABLE", value_name = "true|false", default_value_t = true, action = clap::ArgAction::Set)]
    pub exchange_durable: bool,
    /// Seconds to wait for a lost connection to recover before failing.
    #[arg(long, default_value_t = 120)]
    pub recovery_timeout: u64,
    /// Seconds one connection attempt (TCP, TLS, AMQP handshake) may take.
    /// `send`, `status` and `dlq` fail after one; `run` keeps trying.
    #[arg(long, default_value_t = 5.0, value_parser = positive_secs)]
    pub connect_timeout: f64,
    /// AMQP heartbeat in seconds: a silent link is noticed after about twice this.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u16).range(1..))]
    pub heartbeat: u16,
}

/// Seconds above 0 and at most an hour.
pub fn positive_secs(text: &str) -> Result<f64, String> {
    match text.trim().parse::<f64>() {
        Ok(s) if s.is_finite() && s > 0.0 && s <= 3600.0 => Ok(s),
        _ => Err(format!("`{text}`: give seconds above 0 and at most 3600")),
    }
}

/// How `run` consumes and declares agent queues on RabbitMQ.
#[derive(Args)]
pub struct QueueArgs {
    /// Unacknowledged deliveries per consumer (the default is the fastest
    /// in BENCHMARKS.md's sweep; lower it for large bodies, whose memory it
    /// multiplies, or for slow agents shared by several hosts).
    #[arg(long, default_value_t = warren::broker::amqp::DEFAULT_PREFETCH, value_parser = clap::value_parser!(u16).range(1..))]
    pub prefetch: u16,
    /// Queue type of agent queues.
    #[arg(long, value_enum, default_value_t = QueueType::Classic)]
    pub queue_type: QueueType,
    /// Storage version of classic queues (`x-queue-version`, RabbitMQ
    /// 3.10–3.13; 4.x has only version 2): `broker` declares none, so the
    /// broker's default and its `queue-version` policies decide. A queue
    /// that exists with another version is used as it is.
    #[arg(long, value_enum, default_value_t = QueueVersion::V2)]
    pub queue_version: QueueVersion,
    /// Also write each output's sender, hops and version as the headers
    /// x-warren-sender / x-warren-hops / x-warren-agent-version, for hosts
    /// older than the app_id / type form during a rolling upgrade.
    #[arg(long)]
    pub legacy_headers: bool,
    /// Milliseconds the first settled delivery of a consumer waits for
    /// others, so their acks share one frame (only the ack waits: outputs
    /// are published at once). 0 acks at once.
    #[arg(long, value_name = "MS", default_value_t = warren::broker::amqp::DEFAULT_ACK_GATHER.as_millis() as u64, value_parser = clap::value_parser!(u64).range(0..=1000))]
    pub ack_gather: u64,
}

impl BrokerArgs {
    fn amqp_config(&self) -> Option<AmqpConfig> {
        let (url, more) = self.amqp_url.split_first()?;
        Some(AmqpConfig {
            more_urls: more.to_vec(),
            exchange: self.exchange.clone(),
            exchange_durable: self.exchange_durable,
            recovery_timeout: Duration::from_secs(self.recovery_timeout),
            connect_timeout: Duration::from_secs_f64(self.connect_timeout),
            heartbeat: self.heartbeat,
            ..AmqpConfig::new(url.clone())
        })
    }

    /// The broker, as logs may show it (passwords masked).
    pub fn describe(&self) -> String {
        match self.amqp_url.first() {
            Some(url) => format!("RabbitMQ at {}", warren::broker::amqp::redact(url)),
            None => "the embedded broker".to_string(),
        }
    }

    /// One bounded attempt (the CLI verbs): an unreachable broker is an error.
    pub async fn connect(&self) -> Result<Option<AmqpBroker>> {
        match self.amqp_config() {
            Some(config) => Ok(Some(AmqpBroker::connect(config).await?)),
            None => Ok(None),
        }
    }

    /// `run`: waits for the broker, saying so at every attempt.
    pub async fn connect_waiting(
        &self,
        queues: &QueueArgs,
        failed: impl Fn(&anyhow::Error),
    ) -> Result<Option<AmqpBroker>> {
        match self.amqp_config() {
            Some(config) => Ok(Some(
                AmqpBroker::connect_waiting(
                    AmqpConfig {
                        prefetch: queues.prefetch,
                        queue_type: queues.queue_type,
                        queue_version: queues.queue_version,
                        legacy_headers: queues.legacy_headers,
                        ack_gather: Duration::from_millis(queues.ack_gather),
                        ..config
                    },
                    failed,
                )
                .await?,
            )),
            None => Ok(None),
        }
    }
}

#[derive(Args)]
pub struct RuntimeArgs {
    /// Compile cache folder (default: ~/.cache/warren/compiled).
    #[arg(long, env = "WARREN_CACHE_DIR")]
    pub cache_dir: Option<PathBuf>,
    /// Do not cache compiled code.
    #[arg(long)]
    pub no_cache: bool,
    /// Reuse instances across messages, or a fresh instance per message.
    #[arg(long, value_enum, default_value_t = InstanceMode::Reuse)]
    pub instance_mode: InstanceMode,
    /// Most instances of one agent alive at once.
    #[arg(long, default_value_t = 4, value_parser = at_least_one())]
    pub max_instances: usize,
    /// Most linear memory per instance, in MiB.
    #[arg(long, default_value_t = 256, value_parser = at_least_one())]
    pub max_memory_mb: usize,
    /// Most elements per table.
    #[arg(long, default_value_t = 100_000)]
    pub max_table_elements: usize,
    /// Wall-clock deadline per message, in milliseconds.
    #[arg(long, default_value_t = 5000, value_parser = clap::value_parser!(u64).range(1..))]
    pub deadline_ms: u64,
    /// A call still running guest code after this many milliseconds is a
    /// runaway: all runaways share 5% of one core until their deadline.
    #[arg(long, default_value_t = 100)]
    pub throttle_after_ms: u64,
    /// Fuel per message (about one unit per Wasm instruction); turns on fuel
    /// metering, which slows every call a little. Off by default.
    #[arg(long)]
    pub fuel: Option<u64>,
    /// Use wasmtime's pooling instance allocator.
    #[arg(long)]
    pub pooling: bool,
}

#[derive(Args)]
pub struct DispatchArgs {
    /// Deliveries of a message that end in `retry` before it is
    /// dead-lettered (with the default backoff: 61–122 s in all).
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_attempts: u32,
    /// Retries (on a fresh instance) after a guest trap.
    #[arg(long, default_value_t = 1)]
    pub trap_retries: u32,
    /// Hops a conversation may take before it is dead-lettered as a loop.
    #[arg(long, default_value_t = 16)]
    pub max_hops: u32,
    /// First retry delay in milliseconds (doubles per attempt, with jitter).
    #[arg(long, default_value_t = 500)]
    pub backoff_base_ms: u64,
    /// Longest retry delay in milliseconds.
    #[arg(long, default_value_t = 30_000)]
    pub backoff_cap_ms: u64,
    /// Concurrent consumers per agent.
    #[arg(long, default_value_t = warren::dispatch::DEFAULT_CONSUMERS, value_parser = at_least_one())]
    pub consumers: usize,
    /// Most messages one agent call may send on.
    #[arg(long, default_value_t = 64)]
    pub max_outgoing: usize,
    /// Largest message body in or out, in KiB.
    #[arg(long, default_value_t = 1024, value_parser = at_least_one())]
    pub max_message_kb: usize,
    /// Deliveries each consumer handles at once (their confirms overlap).
    #[arg(long, default_value_t = warren::dispatch::DEFAULT_IN_FLIGHT, value_parser = at_least_one())]
    pub in_flight: usize,
}

impl RuntimeArgs {
    pub fn config(&self) -> RuntimeConfig {
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
    pub fn config(&self) -> HostConfig {
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
            agents: super::agent_sections().clone(),
            trace: warren::trace::TraceConfig {
                capacity: self.trace_hops,
            },
        }
    }
}
