//! Python's non-finite numbers in JSON.
//!
//! Python's `json.dumps` writes `float("inf")` as the bare token `Infinity`
//! (and `-Infinity`, `NaN`); the original client's `run()` does so for
//! `max_turns` on every call. Strict JSON (and serde_json) has no such
//! tokens, so a body that has them is read in three steps:
//! 1. [`to_markers`] turns each token outside strings into a marker string
//!    (`"\u0000warren:Infinity"`: a NUL never appears in a real body's text);
//! 2. the body is parsed and handled as usual, the markers riding along as
//!    strings wherever the tokens were;
//! 3. [`from_markers`] turns them back into the bare tokens when the body is
//!    written out, so a Python reader gets exactly what was sent.
//!
//! Agents see the markers as plain strings (`"Infinity"`, see
//! [`markers_as_strings`]): their JSON parsers (serde_json, `JSON.parse`)
//! would refuse the bare tokens.

const TOKENS: [&str; 3] = ["-Infinity", "Infinity", "NaN"];
const PREFIX: &str = "\"\\u0000warren:";

/// The body with every non-finite token outside strings replaced by its
/// marker, or none if it has no such token.
pub fn to_markers(bytes: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(bytes.len() + 32);
    let (mut in_string, mut escaped, mut found) = (false, false, false);
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if in_string {
            match (escaped, b) {
                (true, _) => escaped = false,
                (false, b'\\') => escaped = true,
                (false, b'"') => in_string = false,
                _ => {}
            }
        } else if b == b'"' {
            in_string = true;
        } else if let Some(token) = TOKENS.iter().find(|t| bytes[i..].starts_with(t.as_bytes())) {
            out.extend_from_slice(PREFIX.as_bytes());
            out.extend_from_slice(token.as_bytes());
            out.push(b'"');
            i += token.len();
            found = true;
            continue;
        }
        out.push(b);
        i += 1;
    }
    found.then_some(out)
}

/// Serialised JSON with each marker string turned back into its bare token.
pub fn from_markers(bytes: Vec<u8>) -> Vec<u8> {
    replace_markers(bytes, false)
}

/// Serialised JSON with each marker string turned into the plain string of
/// its token (`"Infinity"`), for agents.
pub fn markers_as_strings(text: String) -> String {
    String::from_utf8(replace_markers(text.into_bytes(), true))
        .expect("replacing ASCII keeps UTF-8")
}

fn replace_markers(bytes: Vec<u8>, quoted: bool) -> Vec<u8> {
    let prefix = PREFIX.as_bytes();
    if !bytes.windows(prefix.len()).any(|w| w == prefix) {
        return bytes;
    }
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i..].starts_with(prefix)
            && let Some(token) = TOKENS.iter().find(|t| {
                let rest = &bytes[i + prefix.len()..];
                rest.starts_with(t.as_bytes()) && rest.get(t.len()) == Some(&b'"')
            })
        {
            if quoted {
                out.push(b'"');
            }
            out.extend_from_slice(token.as_bytes());
            if quoted {
                out.push(b'"');
            }
            i += prefix.len() + token.len() + 1;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_outside_strings_only() {
        let text = br#"{"a": Infinity, "b": [NaN, -Infinity], "c": "Infinity NaN \" Infinity"}"#;
        let strict = to_markers(text).unwrap();
        let v: serde_json::Value = serde_json::from_slice(&strict).unwrap();
        assert_eq!(v["c"], "Infinity NaN \" Infinity");
        assert_eq!(v["a"], "\u{0}warren:Infinity");
        let back = from_markers(serde_json::to_vec(&v).unwrap());
        let back = String::from_utf8(back).unwrap();
        assert_eq!(
            back,
            r#"{"a":Infinity,"b":[NaN,-Infinity],"c":"Infinity NaN \" Infinity"}"#
        );
        let shown = markers_as_strings(serde_json::to_string(&v).unwrap());
        assert_eq!(
            shown,
            r#"{"a":"Infinity","b":["NaN","-Infinity"],"c":"Infinity NaN \" Infinity"}"#
        );
        assert!(to_markers(br#"{"a":"NaN"}"#).is_none());
    }
}
