//! Host bindings generated from the contract: `wit/agent.wit`
//! (`warren:agent@0.2.0`, the current one) and `wit/v0.1/agent.wit`
//! (`0.1.0`, still run unchanged).
//!
//! The host speaks 0.2 everywhere; a 0.1 component is called through
//! [`Bound::call_on_message`], which translates on the way in and out (see
//! [`down`] and [`up`]).

/// The current contract, `warren:agent@0.2.0`.
pub mod v0_2 {
    wasmtime::component::bindgen!({
        world: "agent",
        path: "wit",
        // Exports are called with `call_async` so a guest runs on a fiber and
        // never blocks a tokio worker; `log` is a plain synchronous import.
        exports: { default: async },
    });
}

/// The first contract, `warren:agent@0.1.0`: chat messages are role and
/// text only, and there are no model or extra keys.
pub mod v0_1 {
    wasmtime::component::bindgen!({
        world: "agent",
        path: "wit/v0.1",
        exports: { default: async },
    });
}

use std::fmt;

use anyhow::Result;
use wasmtime::component::{HasSelf, InstancePre, Linker};
use wasmtime::{AsContextMut, Store};

pub use v0_2::warren::agent::host::Level;
// The world `use`s message, outgoing and failure, so bindgen puts them at the top.
pub use v0_2::warren::agent::types::{ChatMessage, Destination, FunctionCall, ToolCall};
pub use v0_2::{Failure, Message, Outgoing};

use super::sandbox::AgentState;

/// The fully-qualified name of the current world, for error messages.
pub const WORLD: &str = "warren:agent/agent@0.2.0";

/// Which version of the contract a component was built against.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub enum Contract {
    #[serde(rename = "0.1.0")]
    V0_1,
    #[serde(rename = "0.2.0")]
    V0_2,
}

impl Contract {
    pub fn as_str(self) -> &'static str {
        match self {
            Contract::V0_1 => "0.1.0",
            Contract::V0_2 => "0.2.0",
        }
    }
}

impl fmt::Display for Contract {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Adds the imports of both contracts (their interfaces have distinct,
/// versioned names, so one linker serves both).
pub fn add_to_linker(linker: &mut Linker<AgentState>) -> Result<()> {
    v0_2::Agent::add_to_linker::<_, HasSelf<_>>(linker, |s| s)?;
    v0_1::Agent::add_to_linker::<_, HasSelf<_>>(linker, |s| s)?;
    Ok(())
}

/// A component checked against one of the contracts, ready to instantiate.
#[derive(Clone)]
pub enum BoundPre {
    V0_1(v0_1::AgentPre<AgentState>),
    V0_2(v0_2::AgentPre<AgentState>),
}

impl BoundPre {
    /// Checks the component's exports against 0.2, then 0.1; the error is
    /// the one against the current contract.
    pub fn new(pre: InstancePre<AgentState>) -> wasmtime::Result<Self> {
        match v0_2::AgentPre::new(pre.clone()) {
            Ok(p) => Ok(BoundPre::V0_2(p)),
            Err(current) => match v0_1::AgentPre::new(pre) {
                Ok(p) => Ok(BoundPre::V0_1(p)),
                Err(_) => Err(current),
            },
        }
    }

    pub fn contract(&self) -> Contract {
        match self {
            BoundPre::V0_1(_) => Contract::V0_1,
            BoundPre::V0_2(_) => Contract::V0_2,
        }
    }

    pub async fn instantiate_async(
        &self,
        store: &mut Store<AgentState>,
    ) -> wasmtime::Result<Bound> {
        Ok(match self {
            BoundPre::V0_1(p) => Bound::V0_1(p.instantiate_async(store).await?),
            BoundPre::V0_2(p) => Bound::V0_2(p.instantiate_async(store).await?),
        })
    }
}

/// An instance of either contract.
pub enum Bound {
    V0_1(v0_1::Agent),
    V0_2(v0_2::Agent),
}

impl Bound {
    /// Calls `on-message` in the component's own contract.
    pub async fn call_on_message(
        &self,
        store: impl AsContextMut<Data = AgentState>,
        msg: &Message,
    ) -> wasmtime::Result<Result<Vec<Outgoing>, Failure>> {
        match self {
            Bound::V0_2(a) => a.call_on_message(store, msg).await,
            Bound::V0_1(a) => {
                let answer = a.call_on_message(store, &down(msg)).await?;
                Ok(match answer {
                    Ok(out) => Ok(out.into_iter().map(|o| up(o, msg)).collect()),
                    Err(v0_1::Failure::Retry(r)) => Err(Failure::Retry(r)),
                    Err(v0_1::Failure::Reject(r)) => Err(Failure::Reject(r)),
                })
            }
        }
    }
}

/// The text a 0.1 agent sees for a message: its content, or nothing.
fn text_of(m: &ChatMessage) -> String {
    m.content.clone().unwrap_or_default()
}

/// A 0.2 message as a 0.1 agent receives it: role and text of each turn.
pub fn down(msg: &Message) -> v0_1::Message {
    use v0_1::warren::agent::types::ChatMessage as Old;
    v0_1::Message {
        id: msg.id.clone(),
        conversation_id: msg.conversation_id.clone(),
        sender: msg.sender.clone(),
        recipient: msg.recipient.clone(),
        messages: msg
            .messages
            .iter()
            .map(|m| Old {
                role: m.role.clone(),
                content: text_of(m),
            })
            .collect(),
        context: msg.context.clone(),
        attempt: msg.attempt,
        hops: msg.hops,
    }
}

/// A 0.1 agent's outgoing message in 0.2 terms. A 0.1 agent hands on the
/// history it was given (role and text) plus its own turns; every leading
/// turn that still matches the incoming one is the incoming turn, whole — so
/// tool calls, ids and names pass through a 0.1 agent intact.
pub fn up(out: v0_1::Outgoing, incoming: &Message) -> Outgoing {
    let mut same = true;
    let messages = out
        .messages
        .into_iter()
        .enumerate()
        .map(|(i, m)| {
            let original = incoming.messages.get(i);
            same = same && original.is_some_and(|o| o.role == m.role && text_of(o) == m.content);
            match original {
                Some(o) if same => o.clone(),
                _ => ChatMessage {
                    role: m.role,
                    content: Some(m.content),
                    name: None,
                    tool_calls: None,
                    tool_call_id: None,
                    extra: None,
                },
            }
        })
        .collect();
    Outgoing {
        to: match out.to {
            v0_1::warren::agent::types::Destination::Agent(a) => Destination::Agent(a),
            v0_1::warren::agent::types::Destination::Reply => Destination::Reply,
        },
        messages,
        context: out.context,
        model: None,
        extra: None,
    }
}

impl From<v0_1::warren::agent::host::Level> for Level {
    fn from(l: v0_1::warren::agent::host::Level) -> Self {
        use v0_1::warren::agent::host::Level as Old;
        match l {
            Old::Trace => Level::Trace,
            Old::Debug => Level::Debug,
            Old::Info => Level::Info,
            Old::Warn => Level::Warn,
            Old::Error => Level::Error,
        }
    }
}
