//! An [`Envelope`] as AMQP properties and headers, and back.
//!
//! Headers from outside publishers are not trusted blindly: a hop count that
//! cannot be read is noted as a bad header (dispatch dead-letters it as over
//! the hop limit, never as 0 hops), and every header value we write is
//! bounded, since all headers must fit one frame (RabbitMQ: 128 KiB) or the
//! broker closes the whole connection.

use std::time::Duration;

use lapin::BasicProperties;
use lapin::types::{AMQPValue, FieldTable};

use super::super::{Envelope, HEADER_BAD, bounded};

/// Header: the agent that produced the message.
pub const HEADER_SENDER: &str = "x-warren-sender";
/// Header: agent hops so far.
pub const HEADER_HOPS: &str = "x-warren-hops";
/// Header: delivery attempt, 1 on the first delivery.
pub const HEADER_ATTEMPT: &str = "x-warren-attempt";
/// Header on a dead letter: why it was given up on.
pub const HEADER_REASON: &str = "x-warren-reason";

/// Longest value of any one header we write, in bytes.
pub const MAX_HEADER_VALUE: usize = 4096;

/// Extra properties for a copy made while settling.
#[derive(Default)]
pub(super) struct Extra<'a> {
    pub expiration: Option<Duration>,
    pub reason: Option<&'a str>,
}

fn long_string(v: &str) -> AMQPValue {
    AMQPValue::LongString(bounded(v, MAX_HEADER_VALUE).as_ref().into())
}

pub(super) fn properties(env: &Envelope, extra: &Extra<'_>) -> BasicProperties {
    let mut headers = FieldTable::default();
    for (k, v) in &env.headers {
        headers.insert(k.as_str().into(), long_string(v));
    }
    if let Some(sender) = &env.sender {
        headers.insert(HEADER_SENDER.into(), long_string(sender));
    }
    // Defaults (hops 0, attempt 1) are left out: every header costs the
    // broker on every message (see BENCHMARKS.md), and absent means default.
    if env.hops > 0 {
        headers.insert(HEADER_HOPS.into(), AMQPValue::LongLongInt(env.hops as i64));
    }
    if env.attempt > 1 {
        headers.insert(
            HEADER_ATTEMPT.into(),
            AMQPValue::LongLongInt(env.attempt as i64),
        );
    }
    if let Some(reason) = extra.reason {
        headers.insert(HEADER_REASON.into(), long_string(reason));
    }
    let mut props = BasicProperties::default()
        .with_delivery_mode(2)
        .with_content_type("application/json".into())
        .with_message_id(env.id.as_str().into())
        .with_correlation_id(env.conversation_id.as_str().into())
        .with_timestamp(env.timestamp / 1000)
        .with_headers(headers);
    if let Some(reply_to) = &env.reply_to {
        props = props.with_reply_to(reply_to.as_str().into());
    }
    if let Some(delay) = extra.expiration {
        props = props.with_expiration(delay.as_millis().max(1).to_string().into());
    }
    props
}

fn header_str(v: &AMQPValue) -> Option<String> {
    match v {
        AMQPValue::LongString(s) => Some(String::from_utf8_lossy(s.as_bytes()).into_owned()),
        AMQPValue::ShortString(s) => Some(s.as_str().to_string()),
        _ => None,
    }
}

/// A count header: any integer type, or a decimal string, that fits a u32.
/// Anything else (negative, too large, bool, float, list, text) is `None`.
fn header_u32(v: &AMQPValue) -> Option<u32> {
    match v {
        AMQPValue::LongLongInt(n) => u32::try_from(*n).ok(),
        AMQPValue::LongInt(n) => u32::try_from(*n).ok(),
        AMQPValue::LongUInt(n) => Some(*n),
        AMQPValue::ShortInt(n) => u32::try_from(*n).ok(),
        AMQPValue::ShortUInt(n) => Some(*n as u32),
        AMQPValue::ShortShortInt(n) => u32::try_from(*n).ok(),
        AMQPValue::ShortShortUInt(n) => Some(*n as u32),
        other => header_str(other).and_then(|s| s.trim().parse().ok()),
    }
}

/// A header value for a message about it: its type and a bounded rendering.
fn describe(v: &AMQPValue) -> String {
    bounded(&format!("{v:?}"), 80).into_owned()
}

/// Why RabbitMQ itself dead-lettered a message (an agent queue's
/// `x-dead-letter-exchange`): from the newest `x-death` entry.
fn death_reason(headers: &FieldTable) -> Option<String> {
    let AMQPValue::FieldArray(deaths) = headers.inner().get("x-death")? else {
        return None;
    };
    let AMQPValue::FieldTable(newest) = deaths.as_slice().first()? else {
        return None;
    };
    let field = |k: &str| newest.inner().get(k).and_then(header_str);
    let why = field("reason").unwrap_or_else(|| "unknown".into());
    let queue = field("queue").unwrap_or_else(|| "?".into());
    let what = match why.as_str() {
        "expired" => {
            "its TTL (message expiration or the queue's x-message-ttl) passed while it was queued"
        }
        "rejected" => "a consumer rejected it without requeue",
        "maxlen" => "the queue was over its length limit",
        "delivery_limit" => "it was redelivered more often than the quorum queue's delivery limit",
        _ => "see the x-death header",
    };
    Some(format!(
        "RabbitMQ dead-lettered it from `{queue}` ({why}: {what})"
    ))
}

/// An envelope from an AMQP message, and the dead-letter reason if it has
/// one. A message with no message id (a plain client such as the seed's)
/// gets a fresh random id: two identical bodies are two messages, and their
/// outputs must not share ids (see `docs/operations.md`, "Message ids").
pub(super) fn envelope(props: &BasicProperties, body: Vec<u8>) -> (Envelope, Option<String>) {
    let mut env = Envelope {
        id: props
            .message_id()
            .as_ref()
            .map(|s| s.as_str().to_string())
            .unwrap_or_default(),
        attempt: 1,
        ..Default::default()
    };
    if env.id.is_empty() {
        env.id = crate::dispatch::new_id();
    }
    env.conversation_id = props
        .correlation_id()
        .as_ref()
        .map(|s| s.as_str().to_string())
        .filter(|c| !c.is_empty())
        .unwrap_or_else(|| env.id.clone());
    env.reply_to = props
        .reply_to()
        .as_ref()
        .map(|s| s.as_str().to_string())
        .filter(|r| !r.is_empty());
    env.timestamp = props
        .timestamp()
        .map(|t| t.saturating_mul(1000))
        .unwrap_or(0);
    let mut reason = None;
    if let Some(headers) = props.headers() {
        for (k, v) in headers.inner() {
            match k.as_str() {
                HEADER_SENDER => env.sender = header_str(v),
                HEADER_HOPS => match header_u32(v) {
                    Some(hops) => env.hops = hops,
                    None => {
                        env.hops = u32::MAX;
                        env.headers.insert(
                            HEADER_BAD.to_string(),
                            format!("{HEADER_HOPS} = {}", describe(v)),
                        );
                    }
                },
                // Unreadable: a first attempt (dispatch also caps what an
                // outside publisher may claim, see `Dispatcher::decide`).
                HEADER_ATTEMPT => env.attempt = header_u32(v).unwrap_or(1).max(1),
                HEADER_REASON => reason = header_str(v),
                k if k.starts_with("x-warren-") => {
                    if let Some(s) = header_str(v) {
                        env.headers.insert(k.to_string(), s);
                    }
                }
                _ => {}
            }
        }
        if reason.is_none() {
            reason = death_reason(headers);
        }
    }
    env.body = body;
    (env, reason)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use lapin::types::FieldArray;

    use super::*;

    #[test]
    fn envelope_round_trips_through_properties() {
        let mut headers = BTreeMap::new();
        headers.insert("x-warren-agent-version".to_string(), "abc".to_string());
        let env = Envelope {
            id: "m-1".into(),
            conversation_id: "c-1".into(),
            reply_to: Some("q".into()),
            sender: Some("agent_a".into()),
            hops: 3,
            attempt: 2,
            timestamp: 1_700_000_000_000,
            headers,
            body: b"{}".to_vec(),
        };
        let props = properties(
            &env,
            &Extra {
                reason: Some("why"),
                ..Default::default()
            },
        );
        let (back, reason) = envelope(&props, b"{}".to_vec());
        assert_eq!(back, env);
        assert_eq!(reason.as_deref(), Some("why"));
        // Two identical bodies without ids are two messages.
        let (a, _) = envelope(&BasicProperties::default(), b"{\"messages\":[]}".to_vec());
        let (b, _) = envelope(&BasicProperties::default(), b"{\"messages\":[]}".to_vec());
        assert_ne!(a.id, b.id);
        assert_eq!(a.conversation_id, a.id);
        assert_eq!(a.attempt, 1);
    }

    fn with_header(k: &str, v: AMQPValue) -> Envelope {
        let mut t = FieldTable::default();
        t.insert(k.into(), v);
        envelope(&BasicProperties::default().with_headers(t), vec![]).0
    }

    #[test]
    fn an_unreadable_hop_count_is_never_zero() {
        let bad = [
            AMQPValue::LongLongInt(1 << 40),
            AMQPValue::LongLongInt(-5),
            AMQPValue::Boolean(true),
            AMQPValue::LongString("many".into()),
            AMQPValue::Double(2.0),
            AMQPValue::FieldArray(FieldArray::from(vec![AMQPValue::LongInt(1)])),
        ];
        for v in bad {
            let env = with_header(HEADER_HOPS, v.clone());
            assert_eq!(env.hops, u32::MAX, "{v:?}");
            assert!(
                env.headers[HEADER_BAD].starts_with("x-warren-hops"),
                "{v:?}"
            );
        }
        assert_eq!(with_header(HEADER_HOPS, AMQPValue::ShortInt(4)).hops, 4);
        assert_eq!(
            with_header(HEADER_HOPS, AMQPValue::LongString("7".into())).hops,
            7
        );
    }

    #[test]
    fn header_values_are_bounded() {
        let env = Envelope {
            id: "m".into(),
            ..Default::default()
        };
        let long = "x".repeat(200_000);
        let props = properties(
            &env,
            &Extra {
                reason: Some(&long),
                ..Default::default()
            },
        );
        let (_, reason) = envelope(&props, vec![]);
        let reason = reason.unwrap();
        assert!(reason.len() < MAX_HEADER_VALUE + 100, "{}", reason.len());
        assert!(
            reason.contains("200000 bytes"),
            "{}",
            &reason[reason.len() - 60..]
        );
    }
}
