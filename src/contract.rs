//! The body on the wire ⇄ the WIT records an agent sees (contract 0.2).
//!
//! [`to_message`] builds what an agent receives from an envelope and its
//! decoded body; [`outgoing_body`] builds the body of what it sends, keeping
//! whatever the agent left alone (context, model, extra keys) from the
//! incoming body. Chat turns convert one to one, so a tool-call history is
//! the same after any number of hops: `null` content stays `null`, ids and
//! names are unchanged, unknown keys ride in `extra`.

use anyhow::{Context as _, Result};
use serde_json::{Map, Value};

use crate::broker::Envelope;
use crate::runtime::{ChatMessage, FunctionCall, Message, Outgoing, ToolCall};
use crate::wire::{self, Body, Content};

/// Keys of a chat message that have fields of their own: never taken from `extra`.
const TURN_FIELDS: [&str; 4] = ["role", "name", "tool_calls", "tool_call_id"];
/// Keys of a body that have fields of their own: never taken from `extra`.
const BODY_FIELDS: [&str; 3] = ["messages", "context_variables", "from_agent"];

/// The WIT message an agent receives for an envelope. The body's turns move
/// into it (they are most of a message's bytes, and copying them cost a few
/// allocations per turn): what the answer's body keeps of the incoming one
/// is its context, model and extra keys (see [`outgoing_body`]), never its
/// turns, so `body.messages` is left empty.
pub fn to_message(agent: &str, env: &Envelope, body: &mut Body) -> Message {
    let non_finite = body.non_finite;
    Message {
        id: env.id.clone(),
        conversation_id: env.conversation_id.clone(),
        sender: env.sender.clone().or_else(|| body.from_agent.clone()),
        recipient: agent.to_string(),
        messages: std::mem::take(&mut body.messages)
            .into_iter()
            .map(|m| turn_to_wit(m, non_finite))
            .collect(),
        context: body.context_text(),
        attempt: env.attempt.max(1),
        hops: env.hops,
        model: body.model().map(str::to_string),
        extra: body.extra_text(),
    }
}

/// The body of an agent's outgoing message: its turns, and the incoming
/// context, model and extra keys unless it set its own. The output is
/// taken, not borrowed: its texts move into the body instead of being
/// copied (the turns of a conversation are most of a message's bytes).
pub fn outgoing_body(agent: &str, incoming: &Body, out: Outgoing) -> Result<Body> {
    let Outgoing {
        messages,
        context,
        model,
        extra,
        ..
    } = out;
    let messages = messages
        .into_iter()
        .enumerate()
        .map(|(i, m)| turn_from_wit(m).with_context(|| format!("messages[{i}]")))
        .collect::<Result<Vec<_>>>()?;
    let context_variables = match &context {
        Some(text) => wire::parse_context(text)?,
        None => incoming.context_variables.clone(),
    };
    let mut extra = match &extra {
        Some(text) => {
            let mut extra = wire::parse_object(text, "extra")?;
            for key in BODY_FIELDS {
                extra.remove(key);
            }
            // Replacing the extra keys does not drop the model: that takes `model`.
            if !extra.contains_key("model")
                && let Some(model) = incoming.extra.get("model")
            {
                extra.insert("model".into(), model.clone());
            }
            extra
        }
        None => incoming.extra.clone(),
    };
    if let Some(model) = model {
        extra.insert("model".into(), Value::String(model));
    }
    Ok(Body {
        messages,
        context_variables,
        from_agent: Some(agent.to_string()),
        extra,
        // Kept context or extra keys may hold non-finite markers.
        non_finite: incoming.non_finite,
    })
}

/// One chat turn as WIT: content parts, if any, go to `extra` as `content`.
pub fn turn_to_wit(m: wire::ChatMessage, non_finite: bool) -> ChatMessage {
    let wire::ChatMessage {
        role,
        content,
        name,
        tool_calls,
        tool_call_id,
        extra: mut keys,
    } = m;
    let (content, parts) = match content {
        Content::Null => (None, None),
        Content::Text(t) => (Some(t), None),
        Content::Parts(p) => (None, Some(Value::Array(p))),
    };
    let extra = if keys.is_empty() && parts.is_none() {
        None
    } else {
        if let Some(parts) = parts {
            keys.insert("content".into(), parts);
        }
        let text = Value::Object(keys).to_string();
        Some(if non_finite {
            wire::nonfinite::markers_as_strings(text)
        } else {
            text
        })
    };
    ChatMessage {
        role,
        content,
        name,
        tool_calls: tool_calls.map(|calls| {
            calls
                .into_iter()
                .map(|c| ToolCall {
                    id: c.id,
                    kind: c.kind,
                    function: FunctionCall {
                        name: c.function.name,
                        arguments: c.function.arguments,
                    },
                })
                .collect()
        }),
        tool_call_id,
        extra,
    }
}

/// One WIT chat turn as JSON; `extra` must be a JSON object.
pub fn turn_from_wit(m: ChatMessage) -> Result<wire::ChatMessage> {
    let mut extra = match &m.extra {
        Some(text) => wire::parse_object(text, "extra")?,
        None => Map::new(),
    };
    for key in TURN_FIELDS {
        extra.remove(key);
    }
    let parts = extra.remove("content");
    let content = match (m.content, parts) {
        (Some(t), _) => Content::Text(t),
        (None, Some(Value::Array(p))) => Content::Parts(p),
        (None, _) => Content::Null,
    };
    Ok(wire::ChatMessage {
        role: m.role,
        content,
        name: m.name,
        tool_calls: m.tool_calls.map(|calls| {
            calls
                .into_iter()
                .map(|c| wire::ToolCall {
                    id: c.id,
                    kind: c.kind,
                    function: wire::FunctionCall {
                        name: c.function.name,
                        arguments: c.function.arguments,
                    },
                })
                .collect()
        }),
        tool_call_id: m.tool_call_id,
        extra,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn turns_convert_both_ways_unchanged() {
        let body = Body::decode(
            br#"{"messages":[
            {"role":"user","content":[{"type":"text","text":"hi"}],"name":"alice"},
            {"role":"assistant","content":null,"tool_calls":[{"id":"c1","type":"function","function":{"name":"f","arguments":"{}"}}],"refusal":null},
            {"role":"tool","tool_call_id":"c1","content":"ok"}]}"#,
        )
        .unwrap();
        for m in &body.messages {
            assert_eq!(&turn_from_wit(turn_to_wit(m.clone(), false)).unwrap(), m);
        }
    }

    #[test]
    fn what_an_agent_leaves_alone_is_kept() {
        let incoming = Body::decode(
            br#"{"messages":[],"context_variables":{"a":1},"model":"m1","max_turns":Infinity,"debug":false}"#,
        )
        .unwrap();
        let out = |model: Option<&str>, extra: Option<&str>| Outgoing {
            to: crate::runtime::Destination::Reply,
            messages: vec![],
            context: None,
            model: model.map(str::to_string),
            extra: extra.map(str::to_string),
        };
        let body = outgoing_body("x", &incoming, out(None, None)).unwrap();
        let text = String::from_utf8(body.encode()).unwrap();
        assert!(text.contains(r#""max_turns":Infinity"#), "{text}");
        assert!(text.contains(r#""model":"m1""#), "{text}");
        let body = outgoing_body("x", &incoming, out(Some("m2"), Some(r#"{"k":2}"#))).unwrap();
        assert_eq!(body.extra.len(), 2);
        assert_eq!(
            (body.model(), &body.extra["k"]),
            (Some("m2"), &Value::from(2))
        );
        let body = outgoing_body("x", &incoming, out(None, Some(r#"{"messages":1}"#))).unwrap();
        assert_eq!(body.model(), Some("m1"));
        assert!(!body.extra.contains_key("messages"));
        assert!(outgoing_body("x", &incoming, out(None, Some("[1]"))).is_err());
    }
}
