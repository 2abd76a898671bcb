//! # warren-agent: write a warren agent in Rust
//!
//! An agent is a type implementing [`Agent`], exported with
//! [`export_agent!`]. Build it with `cargo build --release --target
//! wasm32-wasip2` (crate type `cdylib`) and drop the `.wasm` into warren's
//! plugins folder.
//!
//! ```ignore
//! use warren_agent::{Agent, Answer, Message, MessageExt};
//!
//! struct Greeter;
//!
//! impl Agent for Greeter {
//!     fn on_message(msg: Message) -> Answer {
//!         let user: String = msg.context_var("user").unwrap_or_else(|| "there".into());
//!         Ok(vec![msg.reply(format!("Hello {user}!"))])
//!     }
//! }
//!
//! warren_agent::export_agent!(Greeter);
//! ```
//!
//! The helpers build what the WIT world (`wit/agent.wit`) asks for:
//! [`MessageExt::reply`] answers whoever started the conversation,
//! [`MessageExt::handoff`] passes it to another agent, [`retry`] and
//! [`reject`] are the two failures, [`OutgoingExt::with_context`] sets new
//! context variables from any serde type. [`config`] reads the settings the
//! operator granted; with the `http` feature, `http` sends requests to the
//! origins the operator allowed.

#[cfg(feature = "http")]
pub mod http;

#[doc(hidden)]
pub mod bindings {
    wit_bindgen::generate!({
        world: "agent",
        path: "wit",
        pub_export_macro: true,
        export_macro_name: "__export_agent_world",
        default_bindings_module: "warren_agent::bindings",
    });
}

use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::{Map, Value};

pub use bindings::warren::agent::host::Level;
pub use bindings::warren::agent::types::{ChatMessage, Destination, Failure, Message, Outgoing};

/// What `on-message` returns: messages to send on, or a failure.
pub type Answer = Result<Vec<Outgoing>, Failure>;

/// An agent: handles one message at a time.
pub trait Agent {
    fn on_message(msg: Message) -> Answer;
}

/// Exports an [`Agent`] as the component's `on-message`.
#[macro_export]
macro_rules! export_agent {
    ($agent:ty) => {
        #[doc(hidden)]
        struct __WarrenAgentExport;

        impl $crate::bindings::Guest for __WarrenAgentExport {
            fn on_message(msg: $crate::Message) -> $crate::Answer {
                <$agent as $crate::Agent>::on_message(msg)
            }
        }

        $crate::bindings::__export_agent_world!(__WarrenAgentExport with_types_in $crate::bindings);
    };
}

/// Deliver the same message again later (the host backs off between attempts).
pub fn retry(reason: impl Into<String>) -> Failure {
    Failure::Retry(reason.into())
}

/// Give up on the message: it is dead-lettered with this reason.
pub fn reject(reason: impl Into<String>) -> Failure {
    Failure::Reject(reason.into())
}

/// Writes a line to the host's log, tagged with the agent's name.
pub fn log(level: Level, text: &str) {
    bindings::warren::agent::host::log(level, text);
}

/// A setting the host's operator granted this agent (`[agents.NAME.config]`
/// or a secret from `[agents.NAME.secrets]`); `None` if there is no such key.
pub fn config(key: &str) -> Option<String> {
    bindings::warren::agent::config::get(key)
}

pub fn info(text: &str) {
    log(Level::Info, text);
}

pub fn warn(text: &str) {
    log(Level::Warn, text);
}

/// Conveniences on the incoming message.
pub trait MessageExt {
    /// The content of the last message with role `user`.
    fn last_user_text(&self) -> Option<&str>;
    /// The context variables as a JSON object.
    fn context_map(&self) -> Result<Map<String, Value>, Failure>;
    /// The context variables as a typed value (a `reject` if they do not fit).
    fn context_as<T: DeserializeOwned>(&self) -> Result<T, Failure>;
    /// One context variable, typed; `None` if absent or of another type.
    fn context_var<T: DeserializeOwned>(&self, key: &str) -> Option<T>;
    /// The conversation so far plus an assistant turn saying `text`, sent to
    /// whoever started the conversation.
    fn reply(&self, text: impl Into<String>) -> Outgoing;
    /// The conversation so far plus an assistant turn saying `text`, handed
    /// to `agent` with the same context variables.
    fn handoff(&self, agent: impl Into<String>, text: impl Into<String>) -> Outgoing;
}

impl MessageExt for Message {
    fn last_user_text(&self) -> Option<&str> {
        self.messages
            .iter()
            .rev()
            .find(|m| m.role == "user")
            .map(|m| m.content.as_str())
    }

    fn context_map(&self) -> Result<Map<String, Value>, Failure> {
        serde_json::from_str(&self.context)
            .map_err(|e| reject(format!("context is not a JSON object: {e}")))
    }

    fn context_as<T: DeserializeOwned>(&self) -> Result<T, Failure> {
        serde_json::from_str(&self.context)
            .map_err(|e| reject(format!("unexpected context variables: {e}")))
    }

    fn context_var<T: DeserializeOwned>(&self, key: &str) -> Option<T> {
        let map = self.context_map().ok()?;
        serde_json::from_value(map.get(key)?.clone()).ok()
    }

    fn reply(&self, text: impl Into<String>) -> Outgoing {
        Outgoing {
            to: Destination::Reply,
            messages: with_turn(&self.messages, text.into()),
            context: None,
        }
    }

    fn handoff(&self, agent: impl Into<String>, text: impl Into<String>) -> Outgoing {
        Outgoing {
            to: Destination::Agent(agent.into()),
            messages: with_turn(&self.messages, text.into()),
            context: None,
        }
    }
}

/// Conveniences on an outgoing message.
pub trait OutgoingExt: Sized {
    /// Replaces the context variables (any serde type that is a JSON object).
    fn with_context(self, context: &impl Serialize) -> Result<Self, Failure>;
}

impl OutgoingExt for Outgoing {
    fn with_context(mut self, context: &impl Serialize) -> Result<Self, Failure> {
        let value = serde_json::to_value(context)
            .map_err(|e| reject(format!("context cannot be encoded: {e}")))?;
        if !value.is_object() {
            return Err(reject("context variables must be a JSON object"));
        }
        self.context = Some(value.to_string());
        Ok(self)
    }
}

fn with_turn(messages: &[ChatMessage], text: String) -> Vec<ChatMessage> {
    let mut out = messages.to_vec();
    out.push(ChatMessage {
        role: "assistant".into(),
        content: text,
    });
    out
}
