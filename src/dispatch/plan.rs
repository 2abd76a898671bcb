//! What a handled message becomes: its outgoing envelopes (routes, ids
//! derived from the input's, headers carried on), their checks, and the
//! retry delay — pure functions the loop in `dispatch` calls.

use std::time::Duration;

use anyhow::{Context as _, Result, bail};
use rand::Rng;
use sha2::{Digest, Sha256};

use super::{DispatchConfig, Planned, REPLIES_QUEUE, Sent};
use crate::broker::{Envelope, HEADER_AGENT_VERSION, HEADER_NOTIFY, Route};
use crate::contract;
use crate::names;
use crate::runtime::{Destination, Outgoing};
use crate::wire::Body;

pub(super) fn sent(p: &Planned) -> Sent {
    Sent {
        id: p.envelope.id.clone(),
        to: match &p.route {
            Route::Agent(a) => names::routing_key(a),
            Route::Queue(q) => q.clone(),
        },
        text: p
            .body
            .messages
            .last()
            .and_then(|m| m.content.text())
            .unwrap_or_default()
            .to_string(),
    }
}

/// Checks an agent's output and turns it into envelopes: deterministic ids,
/// the conversation and reply-to carried along, hops + 1.
pub fn plan(
    agent: &str,
    version: &str,
    input: &Envelope,
    body: &Body,
    outgoing: Vec<Outgoing>,
) -> Result<Vec<Planned>> {
    outgoing
        .into_iter()
        .enumerate()
        .map(|(i, out)| {
            plan_one(agent, version, input, body, i, out)
                .with_context(|| format!("outgoing message #{i}"))
        })
        .collect()
}

fn plan_one(
    agent: &str,
    version: &str,
    input: &Envelope,
    body: &Body,
    index: usize,
    out: Outgoing,
) -> Result<Planned> {
    let route = match &out.to {
        Destination::Agent(name) => {
            let to = names::normalise(name);
            names::validate(&to).context("bad destination")?;
            Route::Agent(to)
        }
        Destination::Reply => Route::Queue(
            input
                .reply_to
                .clone()
                .unwrap_or_else(|| REPLIES_QUEUE.into()),
        ),
    };
    let body = contract::outgoing_body(agent, body, out)?;
    let mut headers = std::collections::BTreeMap::new();
    headers.insert(HEADER_AGENT_VERSION.to_string(), version.to_string());
    if let Some(notify) = input.headers.get(HEADER_NOTIFY) {
        headers.insert(HEADER_NOTIFY.to_string(), notify.clone());
    }
    let envelope = Envelope {
        id: derive_id(&input.id, index),
        conversation_id: input.conversation_id.clone(),
        reply_to: input.reply_to.clone(),
        sender: Some(agent.to_string()),
        hops: input.hops + 1,
        attempt: 1,
        timestamp: now_millis(),
        headers,
        body: body.encode(),
    };
    Ok(Planned {
        route,
        envelope,
        body,
    })
}

pub(super) fn check_sizes(planned: Vec<Planned>, max: usize) -> Result<Vec<Planned>> {
    for (i, p) in planned.iter().enumerate() {
        if p.envelope.body.len() > max {
            bail!(
                "outgoing message #{i} is too large: {} bytes (max {max})",
                p.envelope.body.len()
            );
        }
    }
    Ok(planned)
}

/// The id of the `index`-th message produced from message `id`: the same
/// input always yields the same ids, so a redelivered input can be told
/// apart from new work downstream.
pub fn derive_id(id: &str, index: usize) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let digest = Sha256::new()
        .chain_update(id.as_bytes())
        .chain_update(b"/")
        .chain_update(itoa::Buffer::new().format(index).as_bytes())
        .finalize();
    // "m-" and the digest's first 12 bytes in hex (ids must not change
    // between versions: a redelivery handled by a newer host yields the
    // same ids as the first handling did).
    let mut out = String::with_capacity(26);
    out.push_str("m-");
    for b in &digest[..12] {
        out.push(HEX[usize::from(b >> 4)] as char);
        out.push(HEX[usize::from(b & 15)] as char);
    }
    out
}

/// A fresh random message id.
pub fn new_id() -> String {
    format!("m-{:024x}", rand::rng().random::<u128>() >> 32)
}

pub fn now_millis() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Exponential backoff with "equal jitter": half the delay is fixed, half random.
pub fn backoff(config: &DispatchConfig, attempt: u32) -> Duration {
    let exp = config
        .backoff_base
        .saturating_mul(1u32 << attempt.saturating_sub(1).min(20));
    let full = exp.min(config.backoff_cap);
    let half = full / 2;
    half + half.mul_f64(rand::rng().random::<f64>())
}

/// Builds a user's first message, as `warren send` and the seed's `client.run` do.
pub fn user_envelope(
    text: &str,
    context: serde_json::Map<String, serde_json::Value>,
    reply_to: Option<String>,
) -> Envelope {
    body_envelope(Body::user(text, context).encode(), reply_to)
}

/// A conversation's first message with a body of the sender's own (e.g. a
/// whole history, or the original client's `run()` body).
pub fn body_envelope(body: Vec<u8>, reply_to: Option<String>) -> Envelope {
    let id = new_id();
    // Whoever waits for the reply hears of a dead letter at once.
    let mut headers = std::collections::BTreeMap::new();
    if reply_to.is_some() {
        headers.insert(HEADER_NOTIFY.to_string(), "dead-letters".to_string());
    }
    Envelope {
        conversation_id: id.clone(),
        id,
        reply_to,
        sender: None,
        hops: 0,
        attempt: 1,
        timestamp: now_millis(),
        headers,
        body,
    }
}

/// Checks that a routing target exists before a user publishes to it.
pub fn check_agent_name(agent: &str) -> Result<String> {
    let name = names::normalise(agent);
    if let Err(e) = names::validate(&name) {
        bail!("bad agent name `{agent}`: {e}");
    }
    Ok(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn derived_ids_are_the_ones_earlier_versions_derived() {
        // The formula of every version so far, spelled out.
        let old = |id: &str, i: usize| {
            let digest = Sha256::digest(format!("{id}/{i}").as_bytes());
            format!("m-{}", &hex::encode(digest)[..24])
        };
        for (id, i) in [
            ("m-0123456789abcdef01234567", 0),
            ("seed-1", 7),
            ("", 12345),
        ] {
            assert_eq!(derive_id(id, i), old(id, i));
        }
        assert_eq!(derive_id("a", 0).len(), 26);
    }
}
