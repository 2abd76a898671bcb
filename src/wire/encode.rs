//! Writing a [`Body`] as JSON: byte for byte what `serde_json::to_vec`
//! writes, with less work per string.
//!
//! serde_json escapes a string one byte at a time (a table lookup and a
//! branch per byte): in callgrind's profile of an embedded hop that was
//! ~3.3k of the ~4k instructions of encoding a body with one 256-byte turn.
//! Almost no string in a body needs escaping, so each is first scanned
//! 32 bytes at a time for a byte that does (`"`, `\` or a control
//! character, the only ones JSON requires escaped and serde_json escapes):
//! one without is copied whole; one with is written by serde_json, so the
//! escapes are serde_json's own. Numbers, booleans and nulls are written by
//! serde_json too. The tests compare the output with `serde_json::to_vec`
//! on bodies of every shape.

use serde_json::{Map, Value};

use super::{Body, ChatMessage, Content, ToolCall};

/// The body as serde_json's derived `Serialize` writes it: a map whose
/// first entries are the fields, then the flattened `extra` keys.
pub(super) fn body(out: &mut Vec<u8>, b: &Body) {
    out.extend_from_slice(b"{\"messages\":");
    list(out, &b.messages, chat_message);
    out.extend_from_slice(b",\"context_variables\":");
    object(out, &b.context_variables);
    optional(out, b",\"from_agent\":", &b.from_agent);
    entries(out, &b.extra);
    out.push(b'}');
}

fn chat_message(out: &mut Vec<u8>, m: &ChatMessage) {
    out.extend_from_slice(b"{\"role\":");
    string(out, &m.role);
    out.extend_from_slice(b",\"content\":");
    match &m.content {
        Content::Null => out.extend_from_slice(b"null"),
        Content::Text(t) => string(out, t),
        Content::Parts(parts) => list(out, parts, value),
    }
    optional(out, b",\"name\":", &m.name);
    if let Some(calls) = &m.tool_calls {
        out.extend_from_slice(b",\"tool_calls\":");
        list(out, calls, tool_call);
    }
    optional(out, b",\"tool_call_id\":", &m.tool_call_id);
    entries(out, &m.extra);
    out.push(b'}');
}

/// `key` (with its comma and colon) and the value, when there is one: the
/// fields serde skips when `None`.
fn optional(out: &mut Vec<u8>, key: &[u8], v: &Option<String>) {
    if let Some(v) = v {
        out.extend_from_slice(key);
        string(out, v);
    }
}

/// A JSON array of `items`, each written by `write`.
fn list<T>(out: &mut Vec<u8>, items: &[T], write: impl Fn(&mut Vec<u8>, &T)) {
    out.push(b'[');
    for (i, item) in items.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        write(out, item);
    }
    out.push(b']');
}

fn tool_call(out: &mut Vec<u8>, c: &ToolCall) {
    out.extend_from_slice(b"{\"id\":");
    string(out, &c.id);
    out.extend_from_slice(b",\"type\":");
    string(out, &c.kind);
    out.extend_from_slice(b",\"function\":{\"name\":");
    string(out, &c.function.name);
    out.extend_from_slice(b",\"arguments\":");
    string(out, &c.function.arguments);
    out.extend_from_slice(b"}}");
}

/// A JSON object, as serde_json writes a `Map`.
pub(super) fn object(out: &mut Vec<u8>, map: &Map<String, Value>) {
    out.push(b'{');
    for (i, (k, v)) in map.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        string(out, k);
        out.push(b':');
        value(out, v);
    }
    out.push(b'}');
}

/// A map's entries after entries already written (flattened keys).
fn entries(out: &mut Vec<u8>, map: &Map<String, Value>) {
    for (k, v) in map {
        out.push(b',');
        string(out, k);
        out.push(b':');
        value(out, v);
    }
}

fn value(out: &mut Vec<u8>, v: &Value) {
    match v {
        Value::String(s) => string(out, s),
        Value::Object(map) => object(out, map),
        Value::Array(items) => list(out, items, value),
        // Numbers (serde_json's own float formatting), booleans, null.
        other => serde_json::to_writer(&mut *out, other).expect("writing to a Vec cannot fail"),
    }
}

/// A JSON string: copied whole when nothing in it needs escaping,
/// otherwise escaped by serde_json.
fn string(out: &mut Vec<u8>, s: &str) {
    if needs_escape(s.as_bytes()) {
        serde_json::to_writer(&mut *out, s).expect("writing to a Vec cannot fail");
    } else {
        out.reserve(s.len() + 2);
        out.push(b'"');
        out.extend_from_slice(s.as_bytes());
        out.push(b'"');
    }
}

/// Whether any byte is `"`, `\` or below 0x20. Checked 32 bytes at a time
/// without an early exit inside a block, a loop the compiler turns into a
/// few vector compares (SSE2 on x86-64); the tail byte by byte.
fn needs_escape(bytes: &[u8]) -> bool {
    let bad = |b: u8| (b < 0x20) | (b == b'"') | (b == b'\\');
    let mut blocks = bytes.chunks_exact(32);
    for block in &mut blocks {
        if block.iter().fold(false, |hit, &b| hit | bad(b)) {
            return true;
        }
    }
    blocks.remainder().iter().any(|&b| bad(b))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ours(b: &Body) -> Vec<u8> {
        let mut out = Vec::new();
        body(&mut out, b);
        out
    }

    #[test]
    fn every_byte_that_needs_escaping_is_found_at_every_position() {
        for len in 0..24 {
            assert!(!needs_escape(&vec![b'a'; len]));
            for at in 0..len {
                for bad in (0u8..0x20).chain([b'"', b'\\']) {
                    let mut s = vec![b'a'; len];
                    s[at] = bad;
                    assert!(needs_escape(&s), "byte {bad:#x} at {at} of {len}");
                }
                // Neighbours of the bad bytes, DEL and bytes of UTF-8 need nothing.
                for fine in [0x20u8, b'!', b'#', b'[', b']', 0x7f, 0x80, 0xc3, 0xff] {
                    let mut s = vec![b'a'; len];
                    s[at] = fine;
                    assert!(!needs_escape(&s), "byte {fine:#x} at {at} of {len}");
                }
            }
        }
    }

    #[test]
    fn strings_are_written_as_serde_json_writes_them() {
        let samples = [
            "",
            "plain text, long enough to take several chunks of eight",
            "quote \" here",
            "back\\slash",
            "tab\tnew\nline\rcr\u{8}bs\u{c}ff",
            "\u{0}nul and \u{1f} unit separator",
            "unicode: ø, 日本語, 🦀, and DEL \u{7f}",
            "\u{0}warren:Infinity",
            "</script> / slash",
        ];
        for s in samples {
            let mut out = Vec::new();
            string(&mut out, s);
            assert_eq!(out, serde_json::to_vec(s).unwrap(), "{s:?}");
        }
    }

    /// Random text: ASCII, the bytes that need escaping, and multi-byte
    /// characters, at lengths around the 32-byte blocks.
    fn random_text(rng: &mut impl rand::Rng) -> String {
        const PICKS: [char; 12] = [
            'a', 'Z', ' ', '"', '\\', '\n', '\u{0}', '\u{1f}', '\u{7f}', 'é', '日', '🦀',
        ];
        let len = rng.random_range(0..80);
        let plain = rng.random_bool(0.5);
        (0..len)
            .map(|_| {
                if plain {
                    rng.random_range('a'..='z')
                } else {
                    PICKS[rng.random_range(0..PICKS.len())]
                }
            })
            .collect()
    }

    fn random_value(rng: &mut impl rand::Rng, depth: u32) -> Value {
        match rng.random_range(0..if depth > 2 { 5 } else { 7 }) {
            0 => Value::Null,
            1 => Value::Bool(rng.random()),
            2 => Value::from(rng.random::<i64>()),
            3 => Value::from(rng.random::<f64>() * 1e6 - 5e5),
            4 => Value::String(random_text(rng)),
            5 => Value::Array(
                (0..rng.random_range(0..4))
                    .map(|_| random_value(rng, depth + 1))
                    .collect(),
            ),
            _ => Value::Object(random_map(rng, depth + 1)),
        }
    }

    fn random_map(rng: &mut impl rand::Rng, depth: u32) -> Map<String, Value> {
        (0..rng.random_range(0..4))
            .map(|_| (random_text(rng), random_value(rng, depth)))
            .collect()
    }

    #[test]
    fn random_bodies_are_written_as_serde_json_writes_them() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(16);
        for _ in 0..3000 {
            let maybe =
                |rng: &mut rand::rngs::StdRng| rng.random_bool(0.3).then(|| random_text(rng));
            let messages = (0..rng.random_range(0..4))
                .map(|_| ChatMessage {
                    role: random_text(&mut rng),
                    content: match rng.random_range(0..3) {
                        0 => Content::Null,
                        1 => Content::Text(random_text(&mut rng)),
                        _ => Content::Parts(vec![random_value(&mut rng, 1)]),
                    },
                    name: maybe(&mut rng),
                    tool_calls: rng.random_bool(0.3).then(|| {
                        (0..rng.random_range(0..3))
                            .map(|_| ToolCall {
                                id: random_text(&mut rng),
                                kind: random_text(&mut rng),
                                function: super::super::FunctionCall {
                                    name: random_text(&mut rng),
                                    arguments: random_text(&mut rng),
                                },
                            })
                            .collect()
                    }),
                    tool_call_id: maybe(&mut rng),
                    extra: random_map(&mut rng, 1),
                })
                .collect();
            let b = Body {
                messages,
                context_variables: random_map(&mut rng, 0),
                from_agent: maybe(&mut rng),
                extra: random_map(&mut rng, 0),
                non_finite: false,
            };
            assert_eq!(ours(&b), serde_json::to_vec(&b).unwrap(), "{b:?}");
            let mut object = Vec::new();
            super::object(&mut object, &b.context_variables);
            assert_eq!(object, serde_json::to_vec(&b.context_variables).unwrap());
        }
    }

    #[test]
    fn bodies_of_every_shape_are_written_as_serde_json_writes_them() {
        let texts: [&[u8]; 6] = [
            br#"{"messages":[{"role":"user","content":"hi"}],"context_variables":{}}"#,
            br#"{"messages":[
                {"role":"system","content":"be \"brief\"\n","name":"sys\\1"},
                {"role":"assistant","content":null,"tool_calls":[{"id":"call_1","type":"function","function":{"name":"get_weather","arguments":"{\"city\":\"Oslo\"}"}}],"refusal":null,"audio":{"id":"a1","expires_at":1.5e10}},
                {"role":"tool","tool_call_id":"call_1","content":"12\u00b0C"},
                {"role":"user","content":[{"type":"text","text":"thanks\t!"},{"type":"image_url","image_url":{"url":"data:,x"}}]}],
              "context_variables":{"user":"alice","n":-3,"f":0.1,"big":18446744073709551615,"deep":{"a":[true,false,null,{"k\u0001":"v"}]}},
              "from_agent":"agent_a","model":"gpt-4o","stream":false,"z":[],"a":{}}"#,
            br#"{"messages":[],"context_variables":null,"max_turns":Infinity,"x":NaN,"y":[-Infinity]}"#,
            br#"{"messages":[{"role":"assistant","tool_calls":[]}],"context_variables":{"\"quoted key\"":1e-7}}"#,
            br#"{"messages":[{"role":"user","content":"caf\u00e9 \ud83e\udd80"}],"from_agent":"a","context_variables":{"e":""}}"#,
            br#"{}"#,
        ];
        for text in texts {
            let b = Body::decode(text).unwrap();
            let theirs = serde_json::to_vec(&b).unwrap();
            assert_eq!(
                String::from_utf8(ours(&b)).unwrap(),
                String::from_utf8(theirs).unwrap()
            );
        }
    }
}
