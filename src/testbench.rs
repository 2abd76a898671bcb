//! `warren test`: run one plugin against messages from a file or stdin, with
//! no broker at all. Input: JSON lines in the seed's body format. Output: each
//! outgoing message as a JSON line, exactly as the host would publish it.

use std::io::{BufRead, Write};
use std::path::Path;

use anyhow::{Context as _, Result, bail};
use serde_json::json;

use crate::broker::{Envelope, Route};
use crate::dispatch::{self, Planned};
use crate::registry;
use crate::runtime::settings::AgentSection;
use crate::runtime::{AgentLimits, Failure, Runtime, RuntimeConfig};
use crate::wire::Body;

/// Feeds every input line to the plugin; prints outgoing messages to `out`
/// and failures to `err`. Fails if the plugin does not load or any message failed.
/// `section` is the agent's part of the host's config file, if any: its
/// limits, settings, secrets and HTTP grant apply here as in `warren run`.
pub async fn run(
    plugin: &Path,
    input: impl BufRead,
    out: &mut impl Write,
    err: &mut impl Write,
    config: RuntimeConfig,
    section: Option<&AgentSection>,
) -> Result<()> {
    let d = crate::dispatch::DispatchConfig::default();
    let limits = AgentLimits::defaults(&config, d.max_outgoing, d.max_message_bytes);
    let runtime = Runtime::new(config)?;
    let pool = registry::load_plugin_with(&runtime, plugin, &limits, section).await?;
    let agent = pool.name().to_string();
    let mut failed = 0usize;
    let mut total = 0usize;
    for (n, line) in input.lines().enumerate() {
        let line = line.context("reading input")?;
        if line.trim().is_empty() {
            continue;
        }
        total += 1;
        let id = format!("test-{}", n + 1);
        let outcome = async {
            let mut body = Body::decode(line.as_bytes()).context("undecodable body")?;
            let env = Envelope {
                id: id.clone(),
                conversation_id: id.clone(),
                attempt: 1,
                ..Default::default()
            };
            let msg = dispatch::to_message(&agent, &env, &mut body);
            match pool.call(&msg).await {
                Err(guest) => bail!("guest failed: {guest}"),
                Ok(Err(Failure::Reject(r))) => bail!("rejected by agent: {r}"),
                Ok(Err(Failure::Retry(r))) => bail!("agent asked to retry: {r}"),
                Ok(Ok(outgoing)) => dispatch::plan(&agent, pool.version(), &env, &body, outgoing)
                    .context("invalid output from agent"),
            }
        }
        .await;
        match outcome {
            Ok(planned) => {
                for p in &planned {
                    writeln!(out, "{}", render(p))?;
                }
            }
            Err(e) => {
                failed += 1;
                writeln!(
                    err,
                    "agent `{agent}` failed on message {id} (input line {}): {e:#}",
                    n + 1
                )?;
            }
        }
    }
    out.flush()?;
    if failed > 0 {
        bail!("{failed} of {total} messages failed");
    }
    Ok(())
}

fn render(p: &Planned) -> serde_json::Value {
    let (to, routing_key) = match &p.route {
        Route::Agent(a) => (json!({ "agent": a }), crate::names::routing_key(a)),
        Route::Queue(q) => (json!("reply"), q.clone()),
    };
    json!({
        "id": p.envelope.id,
        "to": to,
        "routing_key": routing_key,
        "hops": p.envelope.hops,
        "messages": p.body.messages,
        "context_variables": p.body.context_variables,
        "from_agent": p.body.from_agent,
        "extra": serde_json::from_str::<serde_json::Value>(&p.body.extra_text())
            .expect("extra keys are a JSON object"),
    })
}

/// Convenience for embedding: run against in-memory input, return stdout lines.
pub async fn run_lines(
    plugin: &Path,
    input: &str,
    config: RuntimeConfig,
) -> Result<Vec<serde_json::Value>> {
    let mut out = Vec::new();
    let mut err = Vec::new();
    let result = run(plugin, input.as_bytes(), &mut out, &mut err, config, None).await;
    if let Err(e) = result {
        bail!("{e:#}: {}", String::from_utf8_lossy(&err).trim());
    }
    String::from_utf8(out)?
        .lines()
        .map(|l| serde_json::from_str(l).context("output line"))
        .collect()
}
