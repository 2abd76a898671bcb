//! Agent A: triage. Hands the conversation off to Agent B when the user asks
//! for it, and otherwise answers by itself.

wit_bindgen::generate!({ world: "agent", path: "../../wit" });

use warren::agent::host::{log, Level};
use warren::agent::types::{ChatMessage, Destination};

struct AgentA;

impl Guest for AgentA {
    fn on_message(msg: Message) -> Result<Vec<Outgoing>, Failure> {
        let last = msg
            .messages
            .iter()
            .rev()
            .find(|m| m.role == "user")
            .map(|m| m.content.clone())
            .ok_or_else(|| Failure::Reject("no user message to triage".into()))?;
        let wants_b = {
            let t = last.to_lowercase();
            t.contains("agent b") || t.contains("agent_b")
        };

        let mut messages = msg.messages.clone();
        if wants_b {
            // Hand off with the context variables plus a note of who triaged.
            let mut context: serde_json::Map<String, serde_json::Value> =
                serde_json::from_str(&msg.context)
                    .map_err(|e| Failure::Reject(format!("context is not a JSON object: {e}")))?;
            context.insert("triaged_by".into(), "agent_a".into());
            log(Level::Info, &format!("handing conversation {} off to agent_b", msg.conversation_id));
            messages.push(ChatMessage {
                role: "assistant".into(),
                content: "Agent A: transferring you to Agent B.".into(),
            });
            Ok(vec![Outgoing {
                to: Destination::Agent("agent_b".into()),
                messages,
                context: Some(serde_json::Value::Object(context).to_string()),
            }])
        } else {
            messages.push(ChatMessage {
                role: "assistant".into(),
                content: format!("Agent A here. You said: \"{last}\". Ask for Agent B and I will hand you over."),
            });
            Ok(vec![Outgoing { to: Destination::Reply, messages, context: None }])
        }
    }
}

export!(AgentA);
