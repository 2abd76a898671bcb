//! `warren trace`: one conversation, hop by hop, with timings.

use std::time::Duration;

use anyhow::{Result, bail};
use clap::Args;

use super::args::{RemoteArgs, positive_secs};
use warren::Broker as _;
use warren::control;

#[derive(Args)]
pub struct Trace {
    /// The conversation id (`warren send` prints it; the console lists the
    /// latest ones).
    conversation_id: String,
    /// Print JSON (every hop with its bodies, masked) instead of a table.
    #[arg(long)]
    json: bool,
    /// Seconds to wait for the hosts' answers. On RabbitMQ every host on
    /// the broker is asked and answers from the hops it keeps.
    #[arg(long, default_value_t = 1.0, value_parser = positive_secs)]
    wait: f64,
    #[command(flatten)]
    remote: RemoteArgs,
}

pub async fn run(c: Trace) -> Result<()> {
    let RemoteArgs { control, broker } = c.remote;
    let wait = Duration::from_secs_f64(c.wait.min(60.0));
    let trace = match broker.connect().await? {
        Some(amqp) => {
            let trace = warren::host::remote_trace(&amqp, &c.conversation_id, wait).await;
            amqp.close().await;
            trace?
        }
        None => control::trace(&control, &c.conversation_id, wait).await?,
    };
    if c.json {
        println!("{}", serde_json::to_string_pretty(&trace)?);
    } else {
        print!("{}", trace.table());
    }
    if trace.hops.is_empty() {
        bail!(
            "no hop of conversation `{}` found ({} host(s) answered)",
            c.conversation_id,
            trace.answered
        );
    }
    Ok(())
}
