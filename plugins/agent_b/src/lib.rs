//! Agent B: answers, greeting the user by the `user` (or `name`) context variable.

wit_bindgen::generate!({ world: "agent", path: "../../wit" });

use warren::agent::host::{log, Level};
use warren::agent::types::{ChatMessage, Destination};

struct AgentB;

impl Guest for AgentB {
    fn on_message(msg: Message) -> Result<Vec<Outgoing>, Failure> {
        let context: serde_json::Value = serde_json::from_str(&msg.context)
            .map_err(|e| Failure::Reject(format!("context is not JSON: {e}")))?;
        let user = context
            .get("user")
            .or_else(|| context.get("name"))
            .and_then(|v| v.as_str())
            .unwrap_or("there");
        let via = match &msg.sender {
            Some(from) => format!(" ({from} sent you over)"),
            None => String::new(),
        };
        log(Level::Info, &format!("answering {user} in conversation {}", msg.conversation_id));
        let mut messages = msg.messages;
        messages.push(ChatMessage {
            role: "assistant".into(),
            content: format!("Hello {user}, Agent B here{via}. How can I help you?"),
        });
        Ok(vec![Outgoing { to: Destination::Reply, messages, context: None }])
    }
}

export!(AgentB);
