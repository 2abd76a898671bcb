//! `warren demo`: the seed's scenario end to end on the embedded broker.
//!
//! A user writes "I want to talk to agent B." to Agent A with the context
//! variable `user`; Agent A hands the conversation off to Agent B; Agent B
//! answers by name. Every hop is printed, then the queue table.

use std::io::Write;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Result, bail};
use serde_json::json;
use tokio::sync::broadcast::error::TryRecvError;

use crate::broker::memory::MemoryBroker;
use crate::client;
use crate::dispatch::Event;
use crate::host::{Host, HostConfig};

pub const PROMPT: &str = "I want to talk to agent B.";

pub async fn run(plugins: &Path, config: HostConfig, out: &mut impl Write) -> Result<()> {
    let host = Host::new(config, Arc::new(MemoryBroker::new()))?;
    let loaded = host.load_dir(plugins).await?;
    for needed in ["agent_a", "agent_b"] {
        if !loaded.iter().any(|n| n == needed) {
            bail!(
                "the demo needs {needed}.wasm in {} (loaded: {}); see the log above for why it is missing",
                plugins.display(),
                loaded.join(", ")
            );
        }
    }
    writeln!(
        out,
        "warren demo: {} agents loaded from {} ({})",
        loaded.len(),
        plugins.display(),
        loaded.join(", ")
    )?;
    let mut events = host.events();
    let context = json!({ "user": "alice" })
        .as_object()
        .cloned()
        .unwrap_or_default();
    writeln!(
        out,
        "\nuser → agent_a: \"{PROMPT}\"  context_variables={}",
        serde_json::Value::Object(context.clone())
    )?;

    // The answer, or the first dead letter (the demo's one conversation
    // ended there: no answer will come).
    let mut watch = host.events();
    let dead_letter = async {
        loop {
            match watch.recv().await {
                Ok(Event::DeadLettered { agent, id, reason }) => {
                    return anyhow::anyhow!("agent `{agent}` dead-lettered message {id}: {reason}");
                }
                Ok(_) | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                Err(_) => std::future::pending::<()>().await,
            }
        }
    };
    let send = client::send(
        host.broker().as_ref(),
        "agent_a",
        PROMPT,
        context,
        Some(Duration::from_secs(30)),
    );
    let outcome = tokio::select! {
        outcome = send => outcome,
        e = dead_letter => Err(e),
    };

    // The answer can arrive before the agent that sent it has acked and said
    // so: wait (briefly) for that last hop, so the list and the table below
    // show it done.
    let reply_id = outcome
        .as_ref()
        .ok()
        .and_then(|o| o.reply.as_ref())
        .map(|r| r.id.clone());
    let mut seen = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
    loop {
        let event = match events.try_recv() {
            Ok(event) => event,
            Err(TryRecvError::Lagged(n)) => {
                writeln!(out, "  ({n} events not shown)")?;
                continue;
            }
            Err(_) => {
                let last_hop_seen = seen.iter().any(|e: &Event| {
                    matches!(e, Event::Handled { outgoing, .. }
                        if outgoing.iter().any(|s| Some(&s.id) == reply_id.as_ref()))
                });
                if reply_id.is_none() || last_hop_seen {
                    break;
                }
                match tokio::time::timeout_at(deadline, events.recv()).await {
                    Ok(Ok(event)) => event,
                    _ => break,
                }
            }
        };
        print_event(out, &event)?;
        seen.push(event);
    }
    let outcome = outcome?;
    let reply = outcome.reply.expect("send waited for a reply");
    writeln!(
        out,
        "\nanswer from {} after {} hops: \"{}\"",
        reply.from.as_deref().unwrap_or("?"),
        reply.hops,
        reply.text
    )?;
    writeln!(out, "\n{}", host.status().await?.table())?;
    host.shutdown().await;
    Ok(())
}

fn print_event(out: &mut impl Write, event: &Event) -> Result<()> {
    match event {
        Event::Handled {
            agent,
            version,
            outgoing,
            ..
        } => {
            for sent in outgoing {
                let what = match sent.to.strip_prefix("agent.") {
                    Some(next) => format!("hands off to {next}"),
                    None => "replies to the user".to_string(),
                };
                writeln!(
                    out,
                    "  {agent} (version {version}) {what}: \"{}\"",
                    sent.text
                )?;
            }
        }
        Event::Retrying {
            agent,
            id,
            attempt,
            reason,
            ..
        } => writeln!(
            out,
            "  {agent}: message {id} attempt {attempt} will be retried: {reason}"
        )?,
        Event::DeadLettered { agent, id, reason } => {
            writeln!(out, "  {agent}: message {id} dead-lettered: {reason}")?
        }
    }
    Ok(())
}
