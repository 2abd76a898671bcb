//! The message body on the wire (seed-compatible JSON) and its decoding.
//!
//! ```json
//! {"messages": [{"role": "user", "content": "hi"}],
//!  "context_variables": {"user": "alice"},
//!  "from_agent": "agent_a",
//!  "model": null, "max_turns": Infinity}
//! ```
//! Nothing a sender wrote is lost on the way through an agent:
//! - chat messages are OpenAI chat messages, whole: `content` (text, `null`,
//!   or a list of parts), `name`, `tool_calls`, `tool_call_id`, and any other
//!   key, kept as it came;
//! - every other top-level key (`model`, the original client's `max_turns`,
//!   `stream`, ...) is kept in [`Body::extra`] and forwarded on handoffs;
//! - Python's `json` writes `NaN`, `Infinity` and `-Infinity` for non-finite
//!   floats (`max_turns` defaults to `float("inf")`): they are accepted, and
//!   written back the same way (see [`nonfinite`]).
//!
//! Ids, conversation id, reply-to and hop count do not live in the body: they
//! travel as message properties and headers.

mod encode;
pub mod nonfinite;

use anyhow::{Context as _, Result, bail};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::{Map, Value};

/// A tool call of an assistant turn (OpenAI `tool_calls[]`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ToolCall {
    pub id: String,
    #[serde(rename = "type", default = "function_kind")]
    pub kind: String,
    pub function: FunctionCall,
}

/// The function a tool call names, with its arguments as the model wrote them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FunctionCall {
    pub name: String,
    #[serde(default)]
    pub arguments: String,
}

fn function_kind() -> String {
    "function".into()
}

/// A chat message's `content`: text, `null` (absent counts as null), or a
/// list of content parts (kept as they came).
#[derive(Debug, Clone, PartialEq, Default)]
pub enum Content {
    #[default]
    Null,
    Text(String),
    Parts(Vec<Value>),
}

impl Content {
    /// The text, or none for null and for parts.
    pub fn text(&self) -> Option<&str> {
        match self {
            Content::Text(t) => Some(t),
            _ => None,
        }
    }
}

impl Serialize for Content {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Content::Null => s.serialize_none(),
            Content::Text(t) => s.serialize_str(t),
            Content::Parts(p) => p.serialize(s),
        }
    }
}

impl<'de> Deserialize<'de> for Content {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        match Value::deserialize(d)? {
            Value::Null => Ok(Content::Null),
            Value::String(t) => Ok(Content::Text(t)),
            Value::Array(p) => Ok(Content::Parts(p)),
            other => Err(serde::de::Error::custom(format!(
                "`content` must be a string, null or a list of parts (found {})",
                kind(&other)
            ))),
        }
    }
}

/// One chat turn as it appears in the JSON body: an OpenAI chat message.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChatMessage {
    pub role: String,
    #[serde(default)]
    pub content: Content,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_calls: Option<Vec<ToolCall>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_call_id: Option<String>,
    /// Every other key (`refusal`, `audio`, ...), kept as it came.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

impl ChatMessage {
    /// A turn with text and nothing else.
    pub fn text(role: &str, text: &str) -> Self {
        ChatMessage {
            role: role.into(),
            content: Content::Text(text.into()),
            name: None,
            tool_calls: None,
            tool_call_id: None,
            extra: Map::new(),
        }
    }
}

fn null_as_empty_map<'de, D: Deserializer<'de>>(d: D) -> Result<Map<String, Value>, D::Error> {
    Ok(Option::<Map<String, Value>>::deserialize(d)?.unwrap_or_default())
}

/// The JSON body of every message warren sends or accepts (written by
/// `wire::encode`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Body {
    #[serde(default)]
    pub messages: Vec<ChatMessage>,
    #[serde(default, deserialize_with = "null_as_empty_map")]
    pub context_variables: Map<String, Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from_agent: Option<String>,
    /// Every other top-level key (`model`, `max_turns`, `stream`, ...).
    #[serde(flatten)]
    pub extra: Map<String, Value>,
    /// Whether the body came with Python's non-finite numbers, which are
    /// held as [`nonfinite`] markers and written back as they came.
    #[serde(skip)]
    pub non_finite: bool,
}

impl Body {
    /// A user's first message, as `warren send` and the seed's `client.run` make it.
    pub fn user(text: &str, context_variables: Map<String, Value>) -> Self {
        Body {
            messages: vec![ChatMessage::text("user", text)],
            context_variables,
            from_agent: None,
            extra: Map::new(),
            non_finite: false,
        }
    }

    /// Decodes a body, saying precisely what is wrong with a bad one.
    pub fn decode(bytes: &[u8]) -> Result<Self> {
        // The fast path parses once, straight into the struct; only a body
        // that fails takes the slower paths: Python's non-finite numbers,
        // then the one that explains what is wrong.
        if let Ok(body) = serde_json::from_slice::<Body>(bytes) {
            return Ok(body);
        }
        if let Some(strict) = nonfinite::to_markers(bytes)
            && let Ok(mut body) = serde_json::from_slice::<Body>(&strict)
        {
            body.non_finite = true;
            return Ok(body);
        }
        let strict = nonfinite::to_markers(bytes);
        let value: Value = serde_json::from_slice(strict.as_deref().unwrap_or(bytes))
            .context("body is not valid JSON")?;
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
        if let Some(Value::Array(messages)) = value.get("messages") {
            for (i, m) in messages.iter().enumerate() {
                serde_json::from_value::<ChatMessage>(m.clone())
                    .with_context(|| format!("`messages[{i}]` is not a chat message"))?;
            }
        }
        serde_json::from_value(value).context("body does not match the message format")
    }

    /// The body as JSON: exactly serde_json's bytes for it, written by
    /// `wire::encode` with less work per string.
    pub fn encode(&self) -> Vec<u8> {
        // Sized up front: from serde_json's default of 128 bytes, a body with
        // one 256-byte turn grew (and was copied) twice on every hop.
        let mut bytes = Vec::with_capacity(self.encoded_size_hint());
        encode::body(&mut bytes, self);
        if self.non_finite {
            nonfinite::from_markers(bytes)
        } else {
            bytes
        }
    }

    /// About how long [`Body::encode`]'s output is: the turns' text plus
    /// room for keys and the small maps; a body of other shapes only grows
    /// the buffer as it would have anyway.
    fn encoded_size_hint(&self) -> usize {
        let turns: usize = self
            .messages
            .iter()
            .map(|m| m.content.text().map_or(64, str::len) + m.role.len() + 64)
            .sum();
        turns + 128 + 32 * (self.context_variables.len() + self.extra.len())
    }

    /// The model the conversation asks for, if `model` is a string.
    pub fn model(&self) -> Option<&str> {
        self.extra.get("model").and_then(Value::as_str)
    }

    /// The original client's `max_turns`: the most hops the sender allows,
    /// or none when absent, not a number, or not finite.
    pub fn max_turns(&self) -> Option<u64> {
        match self.extra.get("max_turns")? {
            Value::Number(n) => n
                .as_u64()
                .or_else(|| n.as_f64().filter(|f| *f >= 0.0).map(|f| f.floor() as u64)),
            _ => None,
        }
    }

    /// `context_variables` as JSON text for an agent (non-finite numbers as
    /// strings, see [`nonfinite`]).
    pub fn context_text(&self) -> String {
        self.object_text(&self.context_variables)
    }

    /// [`Body::extra`] as JSON text for an agent.
    pub fn extra_text(&self) -> String {
        self.object_text(&self.extra)
    }

    fn object_text(&self, map: &Map<String, Value>) -> String {
        let mut bytes = Vec::with_capacity(2 + 32 * map.len());
        encode::object(&mut bytes, map);
        let text = String::from_utf8(bytes).expect("JSON written from strings is UTF-8");
        if self.non_finite {
            nonfinite::markers_as_strings(text)
        } else {
            text
        }
    }
}

/// Parses context variables given as text (by an agent or on the command line).
pub fn parse_context(text: &str) -> Result<Map<String, Value>> {
    parse_object(text, "context")
}

/// Parses a JSON object given as text, naming `what` in the error.
pub fn parse_object(text: &str, what: &str) -> Result<Map<String, Value>> {
    match serde_json::from_str::<Value>(text)
        .with_context(|| format!("{what} is not valid JSON"))?
    {
        Value::Object(map) => Ok(map),
        other => bail!("{what} must be a JSON object (found {})", kind(&other)),
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
        assert_eq!(b.messages[1].content, Content::Null);
        assert_eq!(b.messages[1].tool_calls, Some(vec![]));
        assert_eq!(b.context_variables["user"], "alice");
        assert_eq!(b.extra["agent"], "Agent A");
        assert_eq!(b.extra["run_id"], 7);
    }

    #[test]
    fn the_original_run_body_round_trips() {
        let text = br#"{"messages": [{"role": "user", "content": "hi"}], "context_variables": {}, "model": null, "stream": false, "debug": false, "max_turns": Infinity, "execute_tools": true}"#;
        let b = Body::decode(text).unwrap();
        assert!(b.non_finite);
        assert_eq!(b.max_turns(), None);
        assert_eq!(b.model(), None);
        assert!(b.extra_text().contains(r#""max_turns":"Infinity""#));
        let out = String::from_utf8(b.encode()).unwrap();
        assert!(out.contains(r#""max_turns":Infinity"#), "{out}");
        assert!(out.contains(r#""model":null"#), "{out}");
        assert!(out.contains(r#""execute_tools":true"#), "{out}");
        let b = Body::decode(br#"{"messages":[],"max_turns":3,"model":"gpt-4o"}"#).unwrap();
        assert_eq!((b.max_turns(), b.model()), (Some(3), Some("gpt-4o")));
    }

    #[test]
    fn tool_call_histories_survive_a_round_trip() {
        let text = br#"{"messages":[
            {"role":"user","content":"weather?","name":"alice"},
            {"role":"assistant","content":null,"tool_calls":[{"id":"call_1","type":"function","function":{"name":"get_weather","arguments":"{\"city\":\"Oslo\"}"}}],"refusal":null},
            {"role":"tool","tool_call_id":"call_1","content":"12C"},
            {"role":"user","content":[{"type":"text","text":"thanks"}]}],
            "context_variables":{}}"#;
        let b = Body::decode(text).unwrap();
        let again = Body::decode(&b.encode()).unwrap();
        assert_eq!(b, again);
        let v: Value = serde_json::from_slice(&b.encode()).unwrap();
        let original: Value = serde_json::from_slice(text).unwrap();
        assert_eq!(v["messages"], original["messages"]);
    }

    #[test]
    fn rejects_bad_bodies_with_reasons() {
        let e = Body::decode(b"not json").unwrap_err();
        assert!(format!("{e:#}").contains("not valid JSON"));
        let e = Body::decode(b"[1]").unwrap_err();
        assert!(format!("{e:#}").contains("not an object"));
        let e = Body::decode(br#"{"messages":[],"context_variables":[1]}"#).unwrap_err();
        assert!(format!("{e:#}").contains("context_variables"));
        let e = Body::decode(
            br#"{"messages":[{"role":"assistant","tool_calls":[{"type":"function"}]}]}"#,
        )
        .unwrap_err();
        assert!(format!("{e:#}").contains("messages[0]"), "{e:#}");
        assert!(parse_context("[1]").is_err());
    }
}
