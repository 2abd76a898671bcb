//! Bodies and headers as the console and `warren trace` show them: what
//! logs would never print is masked here too.
//!
//! Three things are replaced by `***`: the value of every JSON key that
//! names a credential (`password`, `api_key`, `token`, `secret`,
//! `authorization`, ...); the credentials of any URL (`scheme://***@host`,
//! redacted as `redact` does for the broker's URL: everything between
//! `://` and the last `@`); and the agent's own secret values, as in its
//! log lines. The scan works on the text, not on parsed JSON, so that a
//! body with `NaN` (the seed's Python client sends them) or a cut body is
//! masked as well as a clean one, and the layout is kept.

use std::borrow::Cow;

use crate::runtime::settings::AgentSettings;

/// Key names (lower case, `-` as `_`) whose values are never shown.
const SECRET_KEYS: [&str; 10] = [
    "password",
    "passwd",
    "secret",
    "token",
    "api_key",
    "apikey",
    "authorization",
    "credential",
    "private_key",
    "cookie",
];

/// Whether a JSON key names a credential.
pub fn secret_key(key: &str) -> bool {
    let key = key.to_ascii_lowercase().replace('-', "_");
    SECRET_KEYS.iter().any(|s| key.contains(s))
}

/// A body with credential-named values, URL credentials and the agent's
/// secret values masked.
pub fn body(text: &str, secrets: Option<&AgentSettings>) -> String {
    let keys = secret_values(text);
    self::text(&keys, secrets)
}

/// Any other text (a header value, a reason): URL credentials and the
/// agent's secret values masked.
pub fn text(text: &str, secrets: Option<&AgentSettings>) -> String {
    let urls = url_credentials(text);
    match secrets {
        Some(s) => s.scrub(&urls).into_owned(),
        None => urls.into_owned(),
    }
}

/// The end (exclusive) of the JSON string starting at `start` (a `"`).
fn string_end(bytes: &[u8], start: usize) -> usize {
    let mut i = start + 1;
    while i < bytes.len() {
        match bytes[i] {
            b'\\' => i += 2,
            b'"' => return i + 1,
            _ => i += 1,
        }
    }
    bytes.len()
}

fn skip_space(bytes: &[u8], mut i: usize) -> usize {
    while i < bytes.len() && bytes[i].is_ascii_whitespace() {
        i += 1;
    }
    i
}

/// `text` with the value of every credential-named key replaced.
fn secret_values(text: &str) -> Cow<'_, str> {
    let bytes = text.as_bytes();
    let mut out: Option<String> = None;
    let mut copied = 0;
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] != b'"' {
            i += 1;
            continue;
        }
        let end = string_end(bytes, i);
        let colon = skip_space(bytes, end);
        if colon >= bytes.len() || bytes[colon] != b':' || !secret_key(&text[i + 1..end - 1]) {
            i = end;
            continue;
        }
        let value = skip_space(bytes, colon + 1);
        let value_end = match bytes.get(value) {
            Some(b'"') => string_end(bytes, value),
            // A number, `true`, an object...: up to the next delimiter at
            // this level (nested values are masked whole).
            Some(_) => {
                let mut depth = 0i32;
                let mut j = value;
                while j < bytes.len() {
                    match bytes[j] {
                        b'"' => {
                            j = string_end(bytes, j);
                            continue;
                        }
                        b'{' | b'[' => depth += 1,
                        b'}' | b']' if depth == 0 => break,
                        b'}' | b']' => depth -= 1,
                        b',' if depth == 0 => break,
                        _ => {}
                    }
                    j += 1;
                }
                j
            }
            None => value,
        };
        let o = out.get_or_insert_with(|| String::with_capacity(text.len()));
        o.push_str(&text[copied..value]);
        o.push_str("\"***\"");
        copied = value_end;
        i = value_end;
    }
    match out {
        None => Cow::Borrowed(text),
        Some(mut o) => {
            o.push_str(&text[copied..]);
            Cow::Owned(o)
        }
    }
}

/// `text` with the credentials of every `scheme://user:pass@host` replaced:
/// everything from `://` to the last `@` before the URL ends (a quote, a
/// space or the end of the text).
fn url_credentials(text: &str) -> Cow<'_, str> {
    if !text.contains("://") {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find("://") {
        let start = at + 3;
        out.push_str(&rest[..start]);
        let tail = &rest[start..];
        let end = tail
            .find(|c: char| c.is_whitespace() || matches!(c, '"' | '\'' | '<' | '>' | '\\'))
            .unwrap_or(tail.len());
        match tail[..end].rfind('@') {
            Some(cred) if cred > 0 => {
                out.push_str("***");
                rest = &tail[cred..];
            }
            _ => rest = tail,
        }
    }
    out.push_str(rest);
    Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credential_keys_are_masked_whatever_their_value() {
        let body = r#"{"context_variables":{"api_key":"sk-1","Password": 1234,"auth":{"token":{"a":"b"}},"user":"alice"},"x":NaN}"#;
        let masked = body_(body);
        assert_eq!(
            masked,
            r#"{"context_variables":{"api_key":"***","Password": "***","auth":{"token":"***"},"user":"alice"},"x":NaN}"#
        );
    }

    fn body_(t: &str) -> String {
        body(t, None)
    }

    #[test]
    fn url_credentials_and_agent_secrets_are_masked() {
        let t = r#"{"content":"see amqp://u:Se/cr@t9@10.0.0.1:5672/%2f and the key hunter2"}"#;
        let secrets = AgentSettings::with_secrets([("key", "hunter2")]);
        let masked = body(t, Some(&secrets));
        assert_eq!(
            masked,
            r#"{"content":"see amqp://***@10.0.0.1:5672/%2f and the key ***"}"#
        );
        assert_eq!(text("https://example.com/a@b", None), "https://***@b");
        assert_eq!(text("plain", None), "plain");
    }

    #[test]
    fn a_cut_or_odd_body_is_masked_as_far_as_it_goes() {
        assert_eq!(body_(r#"{"token":"abc"#), r#"{"token":"***""#);
        assert_eq!(
            body_(r#"{"a":"\"token\":","b":1}"#),
            r#"{"a":"\"token\":","b":1}"#
        );
    }
}
