//! The user's side: start a conversation with an agent and, if asked, wait
//! for the answer (the seed's `client.run`). Works on any [`Broker`].

use std::time::Duration;

use anyhow::{Context as _, Result, bail};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::broker::{
    Broker, HEADER_DEAD_LETTER_ID, HEADER_DEAD_LETTERED_BY, HEADER_LAST_ERROR, Route, Unroutable,
};
use crate::dispatch::{body_envelope, check_agent_name};
use crate::wire::Body;

/// What `send` did, and the reply if one was awaited.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SendOutcome {
    pub id: String,
    pub agent: String,
    pub reply: Option<Reply>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Reply {
    pub id: String,
    /// The agent that answered.
    pub from: Option<String>,
    pub hops: u32,
    /// The answer's last chat message.
    pub text: String,
    pub body: Body,
    /// The body as it arrived.
    #[serde(default, skip)]
    pub raw: Vec<u8>,
}

pub async fn send(
    broker: &dyn Broker,
    agent: &str,
    text: &str,
    context: Map<String, Value>,
    wait: Option<Duration>,
) -> Result<SendOutcome> {
    send_body(broker, agent, Body::user(text, context).encode(), wait).await
}

/// [`send`] with a body of the sender's own: a whole history, extra keys.
pub async fn send_body(
    broker: &dyn Broker,
    agent: &str,
    body: Vec<u8>,
    wait: Option<Duration>,
) -> Result<SendOutcome> {
    let agent = check_agent_name(agent)?;
    if !broker.has_agent(&agent).await? {
        bail!(
            "{}: is a warren host running with that agent loaded?",
            Unroutable(Route::Agent(agent.clone()))
        );
    }
    let mut replies = match wait {
        Some(_) => Some(
            broker
                .reply_queue()
                .await
                .context("declaring a reply queue")?,
        ),
        None => None,
    };
    let envelope = body_envelope(body, replies.as_ref().map(|(q, _)| q.clone()));
    let id = envelope.id.clone();
    broker
        .publish(&Route::Agent(agent.clone()), envelope)
        .await
        .map_err(|e| match e.downcast_ref::<Unroutable>() {
            Some(u) => anyhow::anyhow!("{u}: is a warren host running with that agent loaded?"),
            None => e.context(format!("publishing to agent `{agent}`")),
        })?;
    let (Some(timeout), Some((_, consumer))) = (wait, replies.as_mut()) else {
        return Ok(SendOutcome {
            id,
            agent,
            reply: None,
        });
    };
    let wait_for_reply = async {
        while let Some(delivery) = consumer.next().await {
            if delivery.envelope.conversation_id != id {
                // A stale reply from an earlier conversation: not ours.
                delivery.ack().await?;
                continue;
            }
            if delivery.envelope.is_dead_letter_notice() {
                let h = &delivery.envelope.headers;
                let get = |k: &str| h.get(k).cloned().unwrap_or_default();
                let (by, dead_id) = (get(HEADER_DEAD_LETTERED_BY), get(HEADER_DEAD_LETTER_ID));
                let reason = get(HEADER_LAST_ERROR);
                delivery.ack().await?;
                bail!(
                    "`{by}` dead-lettered message {dead_id} of this conversation: {reason} (see `warren dlq show {by} --id {dead_id}`)"
                );
            }
            let body = Body::decode(&delivery.envelope.body).context("reply body")?;
            let reply = Reply {
                id: delivery.envelope.id.clone(),
                from: delivery.envelope.sender.clone(),
                hops: delivery.envelope.hops,
                text: body
                    .messages
                    .last()
                    .and_then(|m| m.content.text())
                    .unwrap_or_default()
                    .to_string(),
                body,
                raw: delivery.envelope.body.clone(),
            };
            delivery.ack().await?;
            return Ok(reply);
        }
        bail!("the reply queue closed before a reply came")
    };
    let waited = tokio::time::timeout(timeout, wait_for_reply).await;
    // The reply queue goes with its consumer (on RabbitMQ it outlives a
    // reconnect, so it is deleted here rather than with the connection).
    if let Some((_, consumer)) = replies {
        consumer.stop().await;
    }
    match waited {
        Ok(reply) => Ok(SendOutcome {
            id,
            agent,
            reply: Some(reply?),
        }),
        Err(_) => bail!(
            "no reply to message {id} from `{agent}` within {:.1}s: see `warren status` (dead letters, consumers)",
            timeout.as_secs_f64()
        ),
    }
}
