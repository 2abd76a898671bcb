//! The host: one broker, one runtime, the registry and a set of consumers per
//! agent. `warren run`, `warren demo` and the tests all start one of these;
//! another Rust program can embed it the same way.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};

use anyhow::{Context as _, Result};
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{error, info};

use crate::broker::{Broker, Envelope, Route};
use crate::dispatch::{DispatchConfig, Dispatcher, Event};
use crate::registry::{self, PluginError, Registry};
use crate::runtime::{AgentLimits, Runtime, RuntimeConfig};
use crate::status::{AgentStatus, Status};

/// How long shutdown waits for in-flight messages.
const SHUTDOWN_GRACE: std::time::Duration = std::time::Duration::from_secs(30);

/// Everything a host needs to know.
#[derive(Debug, Clone, Default)]
pub struct HostConfig {
    pub runtime: RuntimeConfig,
    pub dispatch: DispatchConfig,
}

pub struct Host {
    broker: Arc<dyn Broker>,
    /// Host-wide agent limits; a plugin's manifest may override them.
    limits: AgentLimits,
    runtime: Arc<Runtime>,
    registry: Arc<Registry>,
    dispatcher: Arc<Dispatcher>,
    shutdown: CancellationToken,
    /// Per agent: the token that stops its consumers.
    consumers: Mutex<HashMap<String, CancellationToken>>,
    tasks: TaskTracker,
}

impl Host {
    pub fn new(config: HostConfig, broker: Arc<dyn Broker>) -> Result<Arc<Self>> {
        let limits = AgentLimits::defaults(
            &config.runtime,
            config.dispatch.max_outgoing,
            config.dispatch.max_message_bytes,
        );
        let runtime = Runtime::new(config.runtime)?;
        let registry = Arc::new(Registry::new());
        let dispatcher = Arc::new(Dispatcher::new(
            broker.clone(),
            registry.clone(),
            config.dispatch,
        ));
        Ok(Arc::new(Host {
            broker,
            limits,
            runtime,
            registry,
            dispatcher,
            shutdown: CancellationToken::new(),
            consumers: Mutex::new(HashMap::new()),
            tasks: TaskTracker::new(),
        }))
    }

    pub fn broker(&self) -> &Arc<dyn Broker> {
        &self.broker
    }

    pub fn registry(&self) -> &Arc<Registry> {
        &self.registry
    }

    pub fn events(&self) -> broadcast::Receiver<Event> {
        self.dispatcher.subscribe()
    }

    /// Loads every plugin in `dir`. A file that fails is logged and shown in
    /// status; the others load regardless. Returns the names loaded.
    pub async fn load_dir(&self, dir: &Path) -> Result<Vec<String>> {
        self.broker
            .declare_queue(crate::dispatch::REPLIES_QUEUE)
            .await?;
        let mut loaded = Vec::new();
        for path in registry::plugin_files(dir)? {
            match self.load_plugin(&path).await {
                Ok(name) => loaded.push(name),
                Err(e) => error!("{e:#}"),
            }
        }
        Ok(loaded)
    }

    /// Loads (or replaces) one agent from its file, declares its queue and
    /// starts its consumers. On failure the reason is kept for status.
    pub async fn load_plugin(&self, path: &Path) -> Result<String> {
        let agent = crate::names::from_path(path).unwrap_or_else(|_| path.display().to_string());
        let result = async {
            let pool = registry::load_plugin(&self.runtime, path, &self.limits).await?;
            self.broker.declare_agent(pool.name()).await?;
            Ok::<_, anyhow::Error>(pool)
        }
        .await;
        let pool = match result {
            Ok(pool) => pool,
            Err(e) => {
                self.registry.record_error(PluginError {
                    agent: agent.clone(),
                    file: path.to_path_buf(),
                    reason: format!("{e:#}"),
                });
                return Err(e);
            }
        };
        let m = pool.module();
        info!(
            agent = m.name,
            version = m.version,
            file = %m.source.display(),
            compile_cache = if m.cache_hit { "hit" } else { "miss" },
            "agent loaded"
        );
        let name = pool.name().to_string();
        self.registry.insert(pool);
        self.start_consumers(&name)
            .await
            .with_context(|| format!("starting consumers for agent `{name}`"))?;
        Ok(name)
    }

    /// Starts the agent's consumers, once: a replaced version is picked up by
    /// the running ones (dispatch looks the agent up per delivery). Returns
    /// when every consumer is registered with the broker.
    async fn start_consumers(&self, agent: &str) -> Result<()> {
        if self.consumers.lock().unwrap().contains_key(agent) {
            return Ok(());
        }
        let mut consumers = Vec::new();
        for _ in 0..self.dispatcher.config().consumers_per_agent.max(1) {
            consumers.push(self.broker.consume(agent).await?);
        }
        let token = self.shutdown.child_token();
        for consumer in consumers {
            self.tasks.spawn(self.dispatcher.clone().run_consumer(
                agent.to_string(),
                consumer,
                token.clone(),
            ));
        }
        self.consumers
            .lock()
            .unwrap()
            .insert(agent.to_string(), token);
        Ok(())
    }

    /// Publishes a message to an agent on behalf of a user.
    pub async fn publish(&self, agent: &str, envelope: Envelope) -> Result<()> {
        self.broker
            .publish(&Route::Agent(agent.to_string()), envelope)
            .await
    }

    /// Queue health joined with what the runtime knows of each agent.
    pub async fn status(&self) -> Result<Status> {
        let queues = self.broker.stats().await?;
        let errors: Vec<PluginError> = self.registry.errors();
        let mut agents: Vec<AgentStatus> = queues
            .into_iter()
            .map(|q| {
                let pool = self.registry.get(&q.agent);
                let error = errors.iter().find(|e| e.agent == q.agent).cloned();
                AgentStatus::new(q, pool.as_deref(), error)
            })
            .collect();
        // Plugins that never loaded have no queue yet; show them anyway.
        for e in errors {
            if !agents.iter().any(|a| a.queue.agent == e.agent) {
                agents.push(AgentStatus::failed(e));
            }
        }
        Ok(Status {
            broker: self.broker.describe(),
            agents,
        })
    }

    /// Stops taking deliveries, lets in-flight messages finish (up to
    /// `SHUTDOWN_GRACE`), then closes the broker connection. Anything not
    /// acked by then is redelivered by the broker: nothing is lost.
    pub async fn shutdown(&self) {
        self.shutdown.cancel();
        self.tasks.close();
        if tokio::time::timeout(SHUTDOWN_GRACE, self.tasks.wait())
            .await
            .is_err()
        {
            tracing::warn!(
                "in-flight messages did not finish within {SHUTDOWN_GRACE:?}; they stay unacked and will be redelivered"
            );
        }
        self.broker.close().await;
    }
}
