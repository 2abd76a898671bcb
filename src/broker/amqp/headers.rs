//! An [`Envelope`] as AMQP properties and headers, and back.
//!
//! What every agent's output carries — the sender, the hop count and the
//! sender's version — travels in two plain properties, not in the header
//! table: `app_id` is the sender and `type` is `warren/{hops}/{version}`.
//! RabbitMQ decodes a message's header table on every publish and encodes
//! it again on every delivery of a persistent message; with no table at all
//! an agent's output costs the broker about a tenth less CPU (BENCHMARKS.md).
//! Headers remain for what is rare (attempt > 1, retry and dead-letter
//! notes, an agent's own `x-warren-*` headers). Both forms are read: hosts
//! before this format, and outside publishers, write the headers
//! `x-warren-sender`, `x-warren-hops`, `x-warren-agent-version`; a host can
//! write them too (`AmqpConfig::legacy_headers`) while older hosts remain.
//!
//! Headers from outside publishers are not trusted blindly: a hop count that
//! cannot be read is noted as a bad header (dispatch dead-letters it as over
//! the hop limit, never as 0 hops), and every header value we write is
//! bounded, since all headers must fit one frame (RabbitMQ: 128 KiB) or the
//! broker closes the whole connection.

use std::fmt::Write as _;
use std::time::Duration;

use lapin::BasicProperties;
use lapin::types::{AMQPValue, FieldTable, ShortString};

use super::super::{Envelope, HEADER_AGENT_VERSION, HEADER_BAD, bounded};

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

/// The `type` property of a message that carries its hops and sender's
/// version as `warren/{hops}/{version}` (its sender is then `app_id`).
pub const TYPE_PREFIX: &str = "warren/";

/// Longest AMQP short string (`app_id`, `type`).
const MAX_SHORT_STRING: usize = 255;

/// Extra properties for a copy made while settling.
#[derive(Default)]
pub(super) struct Extra<'a> {
    pub expiration: Option<Duration>,
    pub reason: Option<&'a str>,
}

fn long_string(v: &str) -> AMQPValue {
    AMQPValue::LongString(bounded(v, MAX_HEADER_VALUE).as_ref().into())
}

/// `app_id` and `type` for the envelope's sender, hops and version; `None`
/// when it has none of them, or when one does not fit a short string (an
/// outside publisher's long sender name: headers carry it then).
fn stamp(env: &Envelope) -> Option<(Option<ShortString>, ShortString)> {
    let version = env.headers.get(HEADER_AGENT_VERSION);
    if env.sender.is_none() && env.hops == 0 && version.is_none() {
        return None;
    }
    let version = version.map(String::as_str).unwrap_or("");
    // Sized once: `format!` grew it (and copied) twice on every output.
    let mut kind = String::with_capacity(TYPE_PREFIX.len() + 11 + version.len());
    let _ = write!(kind, "{TYPE_PREFIX}{}/{version}", env.hops);
    let fits = |s: &str| s.len() <= MAX_SHORT_STRING;
    if !fits(&kind) || !env.sender.as_deref().is_none_or(fits) {
        return None;
    }
    Some((env.sender.as_deref().map(Into::into), kind.into()))
}

/// The properties (and, for what is rare, headers) of an envelope.
/// `legacy_headers`: also write the sender, hops and version as headers,
/// for hosts that read only those.
pub(super) fn properties(
    env: &Envelope,
    extra: &Extra<'_>,
    legacy_headers: bool,
) -> BasicProperties {
    let stamp = stamp(env);
    let in_headers = legacy_headers || stamp.is_none();
    let mut headers = FieldTable::default();
    for (k, v) in &env.headers {
        if k == HEADER_AGENT_VERSION && !in_headers {
            continue;
        }
        headers.insert(k.as_str().into(), long_string(v));
    }
    if in_headers {
        if let Some(sender) = &env.sender {
            headers.insert(HEADER_SENDER.into(), long_string(sender));
        }
        // Hops 0 is the default: absent means 0.
        if env.hops > 0 {
            headers.insert(HEADER_HOPS.into(), AMQPValue::LongLongInt(env.hops as i64));
        }
    }
    // Attempt 1 is the default: absent means 1.
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
        .with_timestamp(env.timestamp / 1000);
    // No table at all when there is nothing for it: RabbitMQ decodes even an
    // empty one.
    if !headers.inner().is_empty() {
        props = props.with_headers(headers);
    }
    if let Some((app_id, kind)) = stamp {
        props = props.with_type(kind);
        if let Some(app_id) = app_id {
            props = props.with_app_id(app_id);
        }
    }
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

/// Where an AMQP message says it comes from, in either form.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Origin {
    /// The agent that produced it.
    pub sender: Option<String>,
    /// Agent hops so far (`u32::MAX` when unreadable).
    pub hops: u32,
    /// The content hash of the sender's version.
    pub version: Option<String>,
}

/// The sender, hops and version a message carries (properties, or the
/// legacy headers): for tools and tests reading warren's output with their
/// own AMQP client.
pub fn origin(props: &BasicProperties) -> Origin {
    let (env, _) = envelope(props, Vec::new());
    Origin {
        version: env.headers.get(HEADER_AGENT_VERSION).cloned(),
        sender: env.sender,
        hops: env.hops,
    }
}

/// Reads `type` = `warren/{hops}/{version}` and `app_id` (the sender) into
/// the envelope; `false` when `type` is not ours (an outside publisher's
/// `app_id` is not taken for an agent's name then). A hop count that cannot
/// be read counts as over the limit, as in a header.
fn read_stamp(props: &BasicProperties, env: &mut Envelope) -> bool {
    let Some(rest) = props
        .kind()
        .as_ref()
        .and_then(|k| k.as_str().strip_prefix(TYPE_PREFIX))
    else {
        return false;
    };
    let (hops, version) = rest.split_once('/').unwrap_or((rest, ""));
    match hops.parse::<u32>() {
        Ok(hops) => env.hops = hops,
        Err(_) => {
            env.hops = u32::MAX;
            env.headers.insert(
                HEADER_BAD.to_string(),
                format!("type = {}", bounded(rest, 80)),
            );
        }
    }
    if !version.is_empty() {
        env.headers
            .insert(HEADER_AGENT_VERSION.to_string(), version.to_string());
    }
    env.sender = props
        .app_id()
        .as_ref()
        .map(|s| s.as_str().to_string())
        .filter(|s| !s.is_empty());
    true
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
    let stamped = read_stamp(props, &mut env);
    if let Some(headers) = props.headers() {
        for (k, v) in headers.inner() {
            match k.as_str() {
                // The properties win where both forms are present (a host
                // writing legacy headers too); the higher hop count counts.
                HEADER_SENDER if !stamped => env.sender = header_str(v),
                HEADER_SENDER => {}
                HEADER_AGENT_VERSION if stamped => {}
                HEADER_HOPS => match header_u32(v) {
                    Some(hops) => env.hops = env.hops.max(hops),
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
        for legacy in [false, true] {
            let props = properties(
                &env,
                &Extra {
                    reason: Some("why"),
                    ..Default::default()
                },
                legacy,
            );
            let (back, reason) = envelope(&props, b"{}".to_vec());
            assert_eq!(back, env);
            assert_eq!(reason.as_deref(), Some("why"));
            let table = props.headers().as_ref().unwrap().inner();
            assert_eq!(table.contains_key(HEADER_SENDER), legacy);
            assert_eq!(table.contains_key(HEADER_AGENT_VERSION), legacy);
            assert_eq!(props.app_id().as_ref().unwrap().as_str(), "agent_a");
            assert_eq!(props.kind().as_ref().unwrap().as_str(), "warren/3/abc");
        }
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
    fn an_agents_output_carries_no_header_table() {
        let mut headers = BTreeMap::new();
        headers.insert(HEADER_AGENT_VERSION.to_string(), "d80f4de5104c".to_string());
        let env = Envelope {
            id: "m-1".into(),
            conversation_id: "c-1".into(),
            sender: Some("echo".into()),
            hops: 1,
            attempt: 1,
            headers,
            ..Default::default()
        };
        let props = properties(&env, &Extra::default(), false);
        assert!(props.headers().is_none(), "{:?}", props.headers());
        assert_eq!(
            props.kind().as_ref().unwrap().as_str(),
            "warren/1/d80f4de5104c"
        );
        assert_eq!(envelope(&props, vec![]).0, env);
        // A user's first message has no stamp at all.
        let user = Envelope {
            id: "u".into(),
            conversation_id: "u".into(),
            attempt: 1,
            ..Default::default()
        };
        let props = properties(&user, &Extra::default(), false);
        assert!(props.headers().is_none() && props.kind().is_none() && props.app_id().is_none());
    }

    #[test]
    fn the_stamp_is_read_only_when_it_is_ours() {
        // An outside publisher's app_id is not an agent's name.
        let props = BasicProperties::default().with_app_id("swarm-client".into());
        assert_eq!(envelope(&props, vec![]).0.sender, None);
        // An unreadable hop count in ours counts as over the limit.
        let props = BasicProperties::default()
            .with_type("warren/many/v".into())
            .with_app_id("a".into());
        let env = envelope(&props, vec![]).0;
        assert_eq!(env.hops, u32::MAX);
        assert!(env.headers[HEADER_BAD].starts_with("type = many/v"));
        // Both forms (a host writing legacy headers too, or an outside
        // publisher adding one): the higher hop count counts.
        let mut t = FieldTable::default();
        t.insert(HEADER_HOPS.into(), AMQPValue::LongLongInt(9));
        let props = BasicProperties::default()
            .with_type("warren/2/v".into())
            .with_headers(t);
        assert_eq!(envelope(&props, vec![]).0.hops, 9);
        // A sender too long for a short string travels in the headers.
        let env = Envelope {
            id: "m".into(),
            conversation_id: "m".into(),
            sender: Some("s".repeat(300)),
            hops: 2,
            attempt: 1,
            ..Default::default()
        };
        let props = properties(&env, &Extra::default(), false);
        assert!(props.kind().is_none());
        assert_eq!(envelope(&props, vec![]).0, env);
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
            false,
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
