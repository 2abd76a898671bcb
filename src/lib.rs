//! # warren
//!
//! Runs AI/automation agents as sandboxed WebAssembly components and connects
//! them through a message broker. An agent is a component implementing the
//! world in `wit/agent.wit` (`warren:agent@0.2.0`; 0.1.0 components run too): it receives a message and returns the messages it
//! wants sent on. The host owns the transport: it consumes, calls the agent,
//! publishes every outgoing message (confirmed), and only then acknowledges.
//!
//! ## Map of the crate
//!
//! The data path, top to bottom:
//!
//! - [`broker`] — the transport seam: the [`broker::Broker`] trait (declare,
//!   publish-with-confirm, consume, ack / retry / dead-letter, stats) and
//!   [`broker::memory`], the embedded in-process broker, and [`broker::amqp`],
//!   RabbitMQ through lapin.
//! - [`contract`] — the body on the wire ⇄ the WIT message an agent sees.
//! - [`dispatch`] — the loop: delivery → decode → agent → publish → ack, and
//!   every retry / dead-letter decision with its reason (`dispatch::consume`:
//!   an agent's consumer, its deliveries handled many at once; `dispatch::decide`:
//!   the checks and the guest call that give a delivery its verdict;
//!   `dispatch::plan`: what an agent's answer becomes — routes, derived ids,
//!   backoff;
//!   `dispatch::settle`: publishing it, retrying, dead-lettering;
//!   `dispatch::trouble`: each agent's latest error and failed settlements).
//! - [`runtime`] — wasmtime: loading and checking components against the
//!   world, the compile cache, the WASI sandbox, per-agent instance pools
//!   (`runtime::spread`: a heavy agent's calls in tasks of their own, so they
//!   use every core), and what an agent is granted beyond it (settings,
//!   outbound HTTP).
//! - [`registry`] — agents by name, each the current version of its plugin.
//! - [`watch`] — the live plugins folder: add, replace, remove on file events.
//! - [`guard`] — the rollback guard for a freshly swapped-in version.
//! - [`host`] — ties them together: load a plugins folder, run consumers,
//!   report status, serve traces, shut down gracefully.
//! - [`trace`] — every delivery's hop in a bounded ring per host; a
//!   conversation's trace assembled across the hosts of a broker.
//!
//! Around it:
//!
//! - [`names`] and [`wire`] — names and the JSON body on the wire, compatible
//!   with the seed system (SwarmRabbitMQ).
//! - [`client`] — start a conversation and wait for its reply.
//! - [`config`] — the config file: options and per-agent sections, merged under flags and env.
//! - [`control`] — the local socket through which `warren send` / `status`
//!   reach a host running the embedded broker.
//! - [`status`] — the queue health table.
//! - [`dlq`] — `warren dlq`: list, show, replay, purge dead letters.
//! - [`logging`] — log filters that keep message bodies out of every line.
//! - [`metrics`] and [`http`] — Prometheus `/metrics`, `/healthz`, `/readyz`.
//! - [`console`] — the web console at `/` and its JSON API: agents, dead
//!   letters (replay, purge), conversation traces, the host.
//! - [`testbench`] — `warren test`: one plugin, no broker.
//! - [`scaffold`] — `warren new`: a new agent project in Rust, Python or JS.
//! - [`demo`] — `warren demo`: the Agent A → Agent B handoff.
//! - [`mockllm`] — `warren mock-llm`: a local OpenAI-compatible endpoint for LLM agents.
//! - [`bench`] — `warren bench`: throughput, latency and cost, side by side
//!   with a raw lapin relay.
//! - [`chaos`] — `warren chaos`: faults injected mid-backlog, every message
//!   counted (RELIABILITY.md).

pub mod bench;
pub mod broker;
pub mod chaos;
pub mod client;
pub mod config;
pub mod console;
pub mod contract;
pub mod control;
pub mod demo;
pub mod dispatch;
pub mod dlq;
pub mod guard;
pub mod host;
pub mod http;
pub mod logging;
pub mod metrics;
pub mod mockllm;
pub mod names;
pub mod registry;
pub mod runtime;
pub mod scaffold;
pub mod status;
pub mod testbench;
pub mod trace;
pub mod watch;
pub mod wire;

pub use broker::Broker;
pub use broker::memory::MemoryBroker;
pub use host::{Host, HostConfig};
