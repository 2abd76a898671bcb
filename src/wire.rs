//! The message body on the wire (seed-compatible JSON) and its decoding.
//!
//! ```json
//! {"messages": [{"role": "user", "content": "hi"}],
//!  "context_variables": {"user": "alice"},
//!  "from_agent": "agent_a"}
//! ```
//! Unknown keys are ignored so that the seed's own `run` and handoff bodies
//! are accepted as they are. Ids, conversation id, reply-to and hop count do
//! not live in the body: they travel as message properties and headers.

use anyhow::{Context as _, Result, bail};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// One chat turn as it appears in the JSON body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChatMessage {
    pub role: String,
    /// The seed (OpenAI format) allows `null` content, e.g. on tool calls.
    #[serde(default, deserialize_with = "null_as_empty")]
    pub content: String,
}

fn null_as_empty<'de, D: serde::Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    Ok(Option::<String>::deserialize(d)?.unwrap_or_default())
}

fn null_as_empty_map<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<Map<String, Value>, D::Error> {
    Ok(Option::<Map<String, Value>>::deserialize(d)?.unwrap_or_default())
}

/// The JSON body of every message warren sends or accepts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Body {
    #[serde(default)]
    pub messages: Vec<ChatMessage>,
    #[serde(default, deserialize_with = "null_as_empty_map")]
    pub context_variables: Map<String, Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from_agent: Option<String>,
}

impl Body {
    /// A user's first message, as `warren send` and the seed's `client.run` make it.
    pub fn user(text: &str, context_variables: Map<String, Value>) -> Self {
        Body {
            messages: vec![ChatMessage {
                role: "user".into(),
                content: text.into(),
            }],
            context_variables,
            from_agent: None,
        }
    }

    /// Decodes a body, saying precisely what is wrong with a bad one.
    pub fn decode(bytes: &[u8]) -> Result<Self> {
        // The fast path parses once, straight into the struct; only a body
        // that fails takes the slower path that explains why.
        if let Ok(body) = serde_json::from_slice::<Body>(bytes) {
            return Ok(body);
        }
        let value: Value = serde_json::from_slice(bytes).context("body is not valid JSON")?;
        if !value.is_object() {
            bail!("body is JSON but not an object (found {})", kind(&value));
        }
        if let Some(cv) = value.get("context_variables")
            && !cv.is_object()
            && !cv.is_null()
        {
            bail!(
                "`context_variables` must be a JSON object (found {})",
                kind(cv)
            );
        }
        serde_json::from_value(value).context("body does not match the message format")
    }

    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("a Body always serialises")
    }
}

/// Parses context variables given as text (by an agent or on the command line).
pub fn parse_context(text: &str) -> Result<Map<String, Value>> {
    match serde_json::from_str::<Value>(text).context("context is not valid JSON")? {
        Value::Object(map) => Ok(map),
        other => bail!("context must be a JSON object (found {})", kind(&other)),
    }
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_seed_bodies_with_extra_keys() {
        let b = Body::decode(
            br#"{"messages":[{"role":"user","content":"hi"},{"role":"assistant","content":null,"tool_calls":[]}],
                "context_variables":{"user":"alice"},"agent":"Agent A","run_id":7}"#,
        )
        .unwrap();
        assert_eq!(b.messages.len(), 2);
        assert_eq!(b.messages[1].content, "");
        assert_eq!(b.context_variables["user"], "alice");
    }

    #[test]
    fn rejects_bad_bodies_with_reasons() {
        let e = Body::decode(b"not json").unwrap_err();
        assert!(format!("{e:#}").contains("not valid JSON"));
        let e = Body::decode(b"[1]").unwrap_err();
        assert!(format!("{e:#}").contains("not an object"));
        let e = Body::decode(br#"{"messages":[],"context_variables":[1]}"#).unwrap_err();
        assert!(format!("{e:#}").contains("context_variables"));
        assert!(parse_context("[1]").is_err());
    }
}
