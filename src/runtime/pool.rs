//! Per-agent instance pool: where a message meets a Wasm instance.
//!
//! Instantiating costs from ~30 µs (Rust) to ~1 ms (Python), a reused
//! instance's call a few µs, so instances are kept and reused — except after a
//! trap, which may have left the instance's memory in any state: such an
//! instance is dropped. A semaphore caps the instances alive at once (the
//! agent's concurrency).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use anyhow::Result;
use serde::Serialize;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use wasmtime::{Store, UpdateDeadline};

use super::bindings::{Bound, Failure, Message, Outgoing};
use super::limits::LimitExceeded;
use super::sandbox::AgentState;
use super::{AgentLimits, AgentModule, InstanceMode, Runtime};

/// How long past its deadline a call blocked in a host call may run
/// before the timer cancels it.
const BACKSTOP_GRACE: std::time::Duration = std::time::Duration::from_millis(50);

/// What kind of guest failure a call ended in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum GuestErrorKind {
    /// The guest trapped (a Rust panic, `unreachable`, out-of-bounds access, ...).
    Trap,
    /// The call ran past its deadline and was interrupted.
    Deadline,
    /// The guest tried to grow its memory past the limit.
    MemoryLimit,
    /// The guest's stack overflowed.
    StackOverflow,
    /// The call used up its fuel.
    Fuel,
    /// A new instance could not be created.
    Instantiate,
}

/// A call that did not return: the instance is gone, the message is not handled.
#[derive(Debug, Clone)]
pub struct GuestError {
    pub kind: GuestErrorKind,
    /// What a person reads first: the guest's own error and where (see
    /// [`super::explain`]), or which limit stopped it and the option that sets it.
    pub message: String,
    /// Everything the guest wrote to stderr during the call (a full
    /// traceback), if anything.
    pub detail: Option<String>,
}

impl GuestErrorKind {
    /// The kind as a metric label.
    pub fn label(self) -> &'static str {
        match self {
            GuestErrorKind::Trap => "trap",
            GuestErrorKind::Deadline => "deadline",
            GuestErrorKind::MemoryLimit => "memory-limit",
            GuestErrorKind::StackOverflow => "stack-overflow",
            GuestErrorKind::Fuel => "fuel",
            GuestErrorKind::Instantiate => "instantiate",
        }
    }
}

impl std::fmt::Display for GuestError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kind = match self.kind {
            // The message is the guest's own error (or the wasm trap itself).
            GuestErrorKind::Trap => return f.write_str(&self.message),
            GuestErrorKind::Deadline => "deadline exceeded",
            GuestErrorKind::MemoryLimit => "memory limit hit",
            GuestErrorKind::StackOverflow => "stack overflow",
            GuestErrorKind::Fuel => "fuel exhausted",
            GuestErrorKind::Instantiate => "instantiation failed",
        };
        write!(f, "{kind}: {}", self.message)
    }
}

impl std::error::Error for GuestError {}

/// Counters for one agent version, for `warren status` and metrics.
#[derive(Debug, Default)]
pub struct CallStats {
    pub calls: AtomicU64,
    pub ok: AtomicU64,
    /// The guest returned a `failure` (retry or reject).
    pub failures: AtomicU64,
    /// The guest did not return, by kind.
    pub traps: AtomicU64,
    pub deadlines: AtomicU64,
    pub memory_limits: AtomicU64,
    pub stack_overflows: AtomicU64,
    pub fuel_exhausted: AtomicU64,
    pub instantiate_failures: AtomicU64,
    pub instances_created: AtomicU64,
    pub guest_nanos: AtomicU64,
    /// The largest linear memory any instance reached, in bytes.
    pub peak_memory: AtomicU64,
    /// Calls that ran guest code past `throttle_after` and so were moved to
    /// the runaway lane (time waiting on HTTP does not count).
    pub runaways: AtomicU64,
    /// Guest log lines dropped by the rate limit (shared with the instances).
    pub log_lines_dropped: Arc<AtomicU64>,
    /// Outbound HTTP requests sent and refused (shared with the instances).
    pub http: Arc<super::outbound::HttpCounters>,
}

impl CallStats {
    fn count(&self, kind: GuestErrorKind) {
        let counter = match kind {
            GuestErrorKind::Trap => &self.traps,
            GuestErrorKind::Deadline => &self.deadlines,
            GuestErrorKind::MemoryLimit => &self.memory_limits,
            GuestErrorKind::StackOverflow => &self.stack_overflows,
            GuestErrorKind::Fuel => &self.fuel_exhausted,
            GuestErrorKind::Instantiate => &self.instantiate_failures,
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// Calls that ended without an answer, whatever the kind.
    pub fn guest_errors(&self) -> u64 {
        [
            &self.traps,
            &self.deadlines,
            &self.memory_limits,
            &self.stack_overflows,
            &self.fuel_exhausted,
            &self.instantiate_failures,
        ]
        .iter()
        .map(|c| c.load(Ordering::Relaxed))
        .sum()
    }
}

struct Instance {
    store: Store<AgentState>,
    agent: Bound,
}

/// The running form of one agent version.
pub struct AgentPool {
    module: AgentModule,
    limits: AgentLimits,
    runtime: Arc<Runtime>,
    idle: Mutex<Vec<Instance>>,
    permits: Arc<Semaphore>,
    stats: CallStats,
    /// How long its calls take, lately (see `spread`).
    weight: super::spread::CallWeight,
}

impl AgentPool {
    /// Creates the pool and smoke-instantiates once, so a component whose
    /// start-up traps is refused at load time rather than on its first message.
    pub async fn new(
        runtime: Arc<Runtime>,
        module: AgentModule,
        limits: AgentLimits,
    ) -> Result<Arc<Self>> {
        let max = limits.max_instances.max(1);
        let pool = Arc::new(AgentPool {
            module,
            limits,
            runtime,
            idle: Mutex::new(Vec::new()),
            permits: Arc::new(Semaphore::new(max)),
            stats: CallStats::default(),
            weight: Default::default(),
        });
        let first = pool.instantiate().await.map_err(|e| {
            anyhow::anyhow!(
                "agent `{}` ({}): {e}",
                pool.module.name,
                pool.module.source.display()
            )
        })?;
        if pool.limits.instance_mode == InstanceMode::Reuse {
            pool.idle.lock().unwrap().push(first);
        }
        Ok(pool)
    }

    pub fn module(&self) -> &AgentModule {
        &self.module
    }

    pub fn name(&self) -> &str {
        &self.module.name
    }

    pub fn version(&self) -> &str {
        &self.module.version
    }

    pub fn stats(&self) -> &CallStats {
        &self.stats
    }

    /// Drops the idle instances (a replaced version keeps none around; if it
    /// is swapped back, instances are created again on demand).
    pub fn idle_instances(&self) -> usize {
        self.idle.lock().unwrap().len()
    }

    pub fn release_idle(&self) {
        self.idle.lock().unwrap().clear();
    }

    /// How long this agent's calls take, lately.
    pub fn weight(&self) -> &super::spread::CallWeight {
        &self.weight
    }

    /// The limits this agent runs under (host defaults + its manifest).
    pub fn limits(&self) -> &AgentLimits {
        &self.limits
    }

    async fn instantiate(&self) -> Result<Instance, GuestError> {
        let config = &self.limits;
        let mut store = Store::new(
            self.runtime.engine(),
            AgentState::new(self.module.name.as_str().into(), config, &self.stats),
        );
        store.limiter(|s| &mut s.limits);
        // Every epoch tick the guest yields to the executor (behind every
        // task that is ready), so a guest that spins never holds a tokio
        // worker, and the agents beside it, for long. Past `throttle_after`
        // it runs only in slices of the runaway lane; past its deadline it is
        // interrupted.
        let lane = self.runtime.runaways().clone();
        store.epoch_deadline_callback(move |mut ctx| {
            let now = Instant::now();
            let state = ctx.data();
            Ok(match (state.call_deadline, state.throttle_from) {
                (Some(deadline), _) if now >= deadline => UpdateDeadline::Interrupt,
                (Some(deadline), Some(from)) if now >= from + state.http_waited() => {
                    ctx.data_mut().ran_away = true;
                    let slot = lane.next_slice(now, deadline);
                    UpdateDeadline::YieldCustom(1, Box::pin(tokio::time::sleep_until(slot.into())))
                }
                _ => UpdateDeadline::YieldCustom(1, Box::pin(tokio::task::yield_now())),
            })
        });
        self.arm(&mut store)
            .map_err(|e| classify(e, &store, &self.limits, GuestErrorKind::Instantiate))?;
        let agent = self
            .module
            .pre
            .instantiate_async(&mut store)
            .await
            .map_err(|e| classify(e.into(), &store, &self.limits, GuestErrorKind::Instantiate))?;
        self.stats.instances_created.fetch_add(1, Ordering::Relaxed);
        Ok(Instance { store, agent })
    }

    /// Sets up the budgets of the next call (or instantiation): deadline,
    /// runaway threshold and fuel.
    fn arm(&self, store: &mut Store<AgentState>) -> anyhow::Result<()> {
        let now = Instant::now();
        let state = store.data_mut();
        state.call_deadline = Some(now + self.limits.deadline);
        state.throttle_from = Some(now + self.limits.throttle_after);
        state.reset_http_waited();
        state.ran_away = false;
        store.set_epoch_deadline(1);
        if let Some(fuel) = self.limits.fuel {
            store.set_fuel(fuel)?;
        }
        Ok(())
    }

    /// Runs `on-message`. The outer error is a guest that did not return
    /// (trap, deadline, ...); the inner one is the guest's own `failure`.
    pub async fn call(&self, msg: &Message) -> Result<Result<Vec<Outgoing>, Failure>, GuestError> {
        let turn = self.turn().await;
        self.call_in_turn(turn, msg).await
    }

    /// Waits until fewer than the agent's `max_instances` calls run.
    pub(super) async fn turn(&self) -> OwnedSemaphorePermit {
        self.permits
            .clone()
            .acquire_owned()
            .await
            .expect("the semaphore is never closed")
    }

    /// Runs `on-message` in a turn taken by [`AgentPool::turn`].
    pub(super) async fn call_in_turn(
        &self,
        _turn: OwnedSemaphorePermit,
        msg: &Message,
    ) -> Result<Result<Vec<Outgoing>, Failure>, GuestError> {
        let reuse = self.limits.instance_mode == InstanceMode::Reuse;
        let pooled = if reuse {
            self.idle.lock().unwrap().pop()
        } else {
            None
        };
        let mut inst = match pooled {
            Some(i) => i,
            None => self
                .instantiate()
                .await
                .inspect_err(|e| self.stats.count(e.kind))?,
        };
        self.stats.calls.fetch_add(1, Ordering::Relaxed);
        inst.store.data().take_stderr();
        inst.store.data().set_call(&msg.id, &msg.conversation_id);
        self.arm(&mut inst.store)
            .map_err(|e| classify(e, &inst.store, &self.limits, GuestErrorKind::Trap))?;
        let started = Instant::now();
        // The epoch callback interrupts guest code; a guest blocked inside a
        // host call (a WASI sleep or poll) runs no guest code, so a timer
        // backs the deadline up. Dropping the call cancels it; the instance
        // is dropped with it.
        //
        // Most calls finish in their first poll (guest code only, or host
        // calls that are ready at once): the timer is armed only for a call
        // that has to wait, which spares every other call a timer entry. The
        // backstop still counts from the call's start.
        let backstop =
            tokio::time::Instant::from_std(started) + self.limits.deadline + BACKSTOP_GRACE;
        let waited = {
            let mut call = std::pin::pin!(inst.agent.call_on_message(&mut inst.store, msg));
            match futures::poll!(call.as_mut()) {
                std::task::Poll::Ready(result) => Ok(result),
                std::task::Poll::Pending => tokio::time::timeout_at(backstop, call).await,
            }
        };
        let result = match waited {
            Ok(result) => result,
            Err(_) => {
                self.stats.count(GuestErrorKind::Deadline);
                return Err(GuestError {
                    kind: GuestErrorKind::Deadline,
                    message: format!(
                        "{} (it was blocked in a host call)",
                        deadline_text(&self.limits)
                    ),
                    detail: super::explain::detail(&inst.store.data().take_stderr()),
                });
            }
        };
        let took = started.elapsed();
        self.weight.note(took);
        self.stats
            .guest_nanos
            .fetch_add(took.as_nanos() as u64, Ordering::Relaxed);
        self.stats.peak_memory.fetch_max(
            inst.store.data().limits.peak_memory as u64,
            Ordering::Relaxed,
        );
        if inst.store.data().ran_away {
            self.stats.runaways.fetch_add(1, Ordering::Relaxed);
        }
        match result {
            Ok(answer) => {
                // A failure's reason ends up in logs and dead letters: no secrets.
                let answer = answer.map_err(|f| match f {
                    Failure::Retry(r) => Failure::Retry(inst.store.data().scrub(&r).into_owned()),
                    Failure::Reject(r) => Failure::Reject(inst.store.data().scrub(&r).into_owned()),
                });
                if answer.is_ok() {
                    self.stats.ok.fetch_add(1, Ordering::Relaxed);
                } else {
                    self.stats.failures.fetch_add(1, Ordering::Relaxed);
                }
                if reuse {
                    self.idle.lock().unwrap().push(inst);
                }
                Ok(answer)
            }
            // The instance is dropped here: after a trap its state is suspect.
            Err(e) => {
                let error = classify(e.into(), &inst.store, &self.limits, GuestErrorKind::Trap);
                self.stats.count(error.kind);
                Err(error)
            }
        }
    }
}

/// Names the kind of a guest failure and gathers what explains it.
fn classify(
    e: anyhow::Error,
    store: &Store<AgentState>,
    limits: &AgentLimits,
    default: GuestErrorKind,
) -> GuestError {
    let kind = match e.downcast_ref::<wasmtime::Trap>() {
        Some(wasmtime::Trap::Interrupt) => GuestErrorKind::Deadline,
        Some(wasmtime::Trap::StackOverflow) => GuestErrorKind::StackOverflow,
        Some(wasmtime::Trap::OutOfFuel) => GuestErrorKind::Fuel,
        _ if e
            .chain()
            .any(|c| c.downcast_ref::<LimitExceeded>().is_some()) =>
        {
            GuestErrorKind::MemoryLimit
        }
        _ => default,
    };
    // The root cause reads best; the backtrace (wasm frames) goes to the log.
    let root = e.root_cause().to_string();
    tracing::debug!("guest error detail: {e:?}");
    let stderr = store.data().take_stderr();
    let message = match kind {
        GuestErrorKind::Deadline => deadline_text(limits),
        GuestErrorKind::MemoryLimit => format!(
            "{root} (the agent's limit: {} MiB, set by --max-memory-mb or `max_memory_mb` for the agent)",
            limits.max_memory >> 20
        ),
        GuestErrorKind::Fuel => {
            format!("{root} (set by --fuel or `fuel` for the agent)")
        }
        _ => super::explain::explain(&root, &stderr),
    };
    GuestError {
        kind,
        message,
        detail: super::explain::detail(&stderr),
    }
}

/// A deadline that passed, with the option that sets it.
fn deadline_text(limits: &AgentLimits) -> String {
    format!(
        "no answer within {} ms (the agent's deadline, set by --deadline-ms or `deadline_ms` for the agent)",
        limits.deadline.as_millis()
    )
}
