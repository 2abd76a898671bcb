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
//! context variables from any serde type. Chat turns are whole OpenAI chat
//! messages (contract 0.2): [`ChatMessage::tool_calls`],
//! [`ChatMessage::tool_result`], [`to_openai`] / [`from_openai`] to talk to a
//! model, and [`send`] for an outgoing message with a history of your own.
//! [`config`] reads the settings the operator granted; with the `http`
//! feature, `http` sends requests to the origins the operator allowed.

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
pub use bindings::warren::agent::types::{
    ChatMessage, Destination, Failure, FunctionCall, Message, Outgoing, ToolCall,
};

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
    /// The text of the last message with role `user`.
    fn last_user_text(&self) -> Option<&str>;
    /// The body's other top-level keys (`max_turns`, ...) as a JSON object.
    fn extra_map(&self) -> Map<String, Value>;
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

/// An outgoing message carrying `messages` as they are (a whole history).
pub fn send(to: Destination, messages: Vec<ChatMessage>) -> Outgoing {
    Outgoing { to, messages, context: None, model: None, extra: None }
}

impl MessageExt for Message {
    fn last_user_text(&self) -> Option<&str> {
        self.messages
            .iter()
            .rev()
            .find(|m| m.role == "user")
            .and_then(|m| m.content.as_deref())
    }

    fn extra_map(&self) -> Map<String, Value> {
        serde_json::from_str(&self.extra).unwrap_or_default()
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
        send(Destination::Reply, with_turn(&self.messages, text.into()))
    }

    fn handoff(&self, agent: impl Into<String>, text: impl Into<String>) -> Outgoing {
        send(Destination::Agent(agent.into()), with_turn(&self.messages, text.into()))
    }
}

/// Conveniences on an outgoing message.
pub trait OutgoingExt: Sized {
    /// Replaces the context variables (any serde type that is a JSON object).
    fn with_context(self, context: &impl Serialize) -> Result<Self, Failure>;
    /// Asks for another model from here on.
    fn with_model(self, model: impl Into<String>) -> Self;
    /// Replaces the body's other top-level keys (a JSON object).
    fn with_extra(self, extra: &impl Serialize) -> Result<Self, Failure>;
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

    fn with_model(mut self, model: impl Into<String>) -> Self {
        self.model = Some(model.into());
        self
    }

    fn with_extra(mut self, extra: &impl Serialize) -> Result<Self, Failure> {
        let value = serde_json::to_value(extra)
            .map_err(|e| reject(format!("extra keys cannot be encoded: {e}")))?;
        if !value.is_object() {
            return Err(reject("extra keys must be a JSON object"));
        }
        self.extra = Some(value.to_string());
        Ok(self)
    }
}

fn with_turn(messages: &[ChatMessage], text: String) -> Vec<ChatMessage> {
    let mut out = messages.to_vec();
    out.push(ChatMessage::text("assistant", text));
    out
}

impl ChatMessage {
    /// A turn with text and nothing else.
    pub fn text(role: impl Into<String>, text: impl Into<String>) -> Self {
        ChatMessage {
            role: role.into(),
            content: Some(text.into()),
            name: None,
            tool_calls: None,
            tool_call_id: None,
            extra: None,
        }
    }

    /// An assistant turn that calls tools (content `null`, as OpenAI sends it).
    pub fn tool_calls(calls: Vec<ToolCall>) -> Self {
        ChatMessage {
            role: "assistant".into(),
            content: None,
            name: None,
            tool_calls: Some(calls),
            tool_call_id: None,
            extra: None,
        }
    }

    /// The `tool` message answering the call `call_id`.
    pub fn tool_result(call_id: impl Into<String>, text: impl Into<String>) -> Self {
        ChatMessage {
            role: "tool".into(),
            content: Some(text.into()),
            name: None,
            tool_calls: None,
            tool_call_id: Some(call_id.into()),
            extra: None,
        }
    }
}

impl ToolCall {
    /// A call of function `name` with `arguments` (JSON text).
    pub fn function(
        id: impl Into<String>,
        name: impl Into<String>,
        arguments: impl Into<String>,
    ) -> Self {
        ToolCall {
            id: id.into(),
            kind: "function".into(),
            function: FunctionCall { name: name.into(), arguments: arguments.into() },
        }
    }
}

/// Chat turns as the OpenAI API takes them: `content` (null kept),
/// `name`, `tool_calls`, `tool_call_id` when set, plus every `extra` key
/// (content parts among them).
pub fn to_openai(messages: &[ChatMessage]) -> Vec<Value> {
    messages
        .iter()
        .map(|m| {
            let mut o: Map<String, Value> = m
                .extra
                .as_deref()
                .and_then(|e| serde_json::from_str(e).ok())
                .unwrap_or_default();
            o.insert("role".into(), m.role.clone().into());
            match &m.content {
                Some(text) => {
                    o.insert("content".into(), text.clone().into());
                }
                None => {
                    o.entry("content").or_insert(Value::Null);
                }
            }
            if let Some(name) = &m.name {
                o.insert("name".into(), name.clone().into());
            }
            if let Some(calls) = &m.tool_calls {
                let calls = calls
                    .iter()
                    .map(|c| {
                        serde_json::json!({
                            "id": c.id,
                            "type": c.kind,
                            "function": {"name": c.function.name, "arguments": c.function.arguments},
                        })
                    })
                    .collect();
                o.insert("tool_calls".into(), Value::Array(calls));
            }
            if let Some(id) = &m.tool_call_id {
                o.insert("tool_call_id".into(), id.clone().into());
            }
            Value::Object(o)
        })
        .collect()
}

/// An OpenAI chat message (e.g. a completion's `choices[0].message`) as a
/// chat turn; unknown keys are kept in `extra`.
pub fn from_openai(value: &Value) -> Result<ChatMessage, Failure> {
    let mut o = value
        .as_object()
        .cloned()
        .ok_or_else(|| reject("a chat message must be a JSON object"))?;
    let role = match o.remove("role") {
        Some(Value::String(r)) => r,
        _ => return Err(reject("a chat message needs a `role` string")),
    };
    let content = match o.remove("content") {
        Some(Value::String(t)) => Some(t),
        Some(Value::Null) | None => None,
        // Content parts stay in `extra`, as the host keeps them.
        Some(parts) => {
            o.insert("content".into(), parts);
            None
        }
    };
    let string = |v: Option<Value>| v.and_then(|v| v.as_str().map(str::to_string));
    let name = string(o.remove("name"));
    let tool_call_id = string(o.remove("tool_call_id"));
    let tool_calls = match o.remove("tool_calls") {
        Some(Value::Array(calls)) => Some(
            calls
                .iter()
                .map(|c| {
                    Ok(ToolCall {
                        id: c["id"].as_str().ok_or_else(|| reject("a tool call needs an `id`"))?.into(),
                        kind: c["type"].as_str().unwrap_or("function").into(),
                        function: FunctionCall {
                            name: c["function"]["name"]
                                .as_str()
                                .ok_or_else(|| reject("a tool call needs a function `name`"))?
                                .into(),
                            arguments: c["function"]["arguments"].as_str().unwrap_or("{}").into(),
                        },
                    })
                })
                .collect::<Result<Vec<_>, Failure>>()?,
        ),
        _ => None,
    };
    Ok(ChatMessage {
        role,
        content,
        name,
        tool_calls,
        tool_call_id,
        extra: (!o.is_empty()).then(|| Value::Object(o).to_string()),
    })
}
