//! `warren send`: start a conversation, and with `--wait` print its answer.

use std::time::Duration;

use anyhow::{Context as _, Result};
use clap::Args;

use super::args::RemoteArgs;
use warren::{Broker as _, client, control, wire};

/// The longest `--timeout` accepted: a week.
const MAX_TIMEOUT_SECS: f64 = 7.0 * 24.0 * 3600.0;

/// `--timeout`: a finite, positive number of seconds, at most a week.
fn timeout_secs(text: &str) -> Result<f64, String> {
    let secs: f64 = text
        .trim()
        .parse()
        .map_err(|_| format!("`{text}` is not a number of seconds"))?;
    if !secs.is_finite() || secs <= 0.0 || secs > MAX_TIMEOUT_SECS {
        return Err(format!(
            "{text} is not a timeout: give seconds above 0 and at most {MAX_TIMEOUT_SECS}"
        ));
    }
    Ok(secs)
}

#[derive(Args)]
pub struct Send {
    /// The agent ("Agent A" and `agent_a` are the same agent).
    agent: String,
    /// The user's message.
    text: String,
    /// Context variables, a JSON object.
    #[arg(long, default_value = "{}")]
    context: String,
    /// Wait for the conversation's reply and print it.
    #[arg(long)]
    wait: bool,
    /// Seconds to wait for the reply.
    #[arg(long, default_value_t = 30.0, requires = "wait", value_parser = timeout_secs)]
    timeout: f64,
    /// Print the outcome as JSON.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    remote: RemoteArgs,
}

pub async fn run(c: Send) -> Result<()> {
    let RemoteArgs { control, broker } = c.remote;
    let context = wire::parse_context(&c.context).context("--context")?;
    let wait = c.wait.then(|| Duration::from_secs_f64(c.timeout));
    let outcome = match broker.connect().await? {
        Some(amqp) => {
            let outcome = client::send(&amqp, &c.agent, &c.text, context, wait).await;
            amqp.close().await;
            outcome?
        }
        None => control::send(&control, &c.agent, &c.text, context, wait).await?,
    };
    if c.json {
        println!("{}", serde_json::to_string_pretty(&outcome)?);
    } else {
        match &outcome.reply {
            Some(r) => println!("{}: {}", r.from.as_deref().unwrap_or("?"), r.text),
            None => println!("sent message {} to {}", outcome.id, outcome.agent),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::timeout_secs;

    #[test]
    fn timeouts_are_checked_when_parsed() {
        assert_eq!(timeout_secs("2.5"), Ok(2.5));
        for bad in ["-1", "0", "inf", "NaN", "1e30", "soon", ""] {
            assert!(timeout_secs(bad).is_err(), "{bad}");
        }
    }
}
