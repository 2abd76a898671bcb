//! `warren dlq`: list, show, replay and purge an agent's dead letters.

use anyhow::Result;
use clap::{Args, Subcommand};

use super::args::RemoteArgs;
use warren::dlq::Op;
use warren::{Broker as _, control};

#[derive(Subcommand)]
pub enum DlqCommand {
    /// One line per dead letter: id, attempts, first failure, reason.
    List {
        agent: String,
        #[command(flatten)]
        remote: RemoteArgs,
        #[arg(long)]
        json: bool,
    },
    /// Dead letters in full: body, reason, attempts, first failure time.
    Show {
        agent: String,
        /// Only this message (default: all).
        #[arg(long)]
        id: Option<String>,
        #[command(flatten)]
        remote: RemoteArgs,
        #[arg(long)]
        json: bool,
    },
    /// Back to where each was going, attempt count reset: the dead letters
    /// present when it starts, each once.
    Replay {
        agent: String,
        #[command(flatten)]
        pick: DlqPick,
        /// Then wait up to SECONDS and report how many failed again
        /// (`replayed N, still failing M`).
        #[arg(long, value_name = "SECONDS", num_args = 0..=1, default_missing_value = "10")]
        wait: Option<f64>,
        #[command(flatten)]
        remote: RemoteArgs,
    },
    /// Delete dead letters.
    Purge {
        agent: String,
        #[command(flatten)]
        pick: DlqPick,
        #[command(flatten)]
        remote: RemoteArgs,
    },
}

#[derive(Args)]
#[group(required = true, multiple = false)]
pub struct DlqPick {
    /// Only the message with this id.
    #[arg(long)]
    id: Option<String>,
    /// Every dead letter of the agent.
    #[arg(long)]
    all: bool,
}

pub async fn run(op: DlqCommand) -> Result<()> {
    let (agent, op, remote, json) = match op {
        DlqCommand::List {
            agent,
            remote,
            json,
        } => (agent, Op::List, remote, json),
        DlqCommand::Show {
            agent,
            id,
            remote,
            json,
        } => (agent, Op::Show { id }, remote, json),
        DlqCommand::Replay {
            agent,
            pick,
            wait,
            remote,
        } => {
            if let Some(w) = wait
                && !(w.is_finite() && (0.0..=86_400.0).contains(&w))
            {
                anyhow::bail!("--wait {w}: give seconds from 0 to 86400");
            }
            (agent, Op::Replay { id: pick.id, wait }, remote, false)
        }
        DlqCommand::Purge {
            agent,
            pick,
            remote,
        } => (agent, Op::Purge { id: pick.id }, remote, false),
    };
    let answer = match remote.broker.connect().await? {
        Some(amqp) => {
            let answer = warren::dlq::run(&amqp, &agent, op).await;
            amqp.close().await;
            answer?
        }
        None => control::dlq(&remote.control, &agent, op).await?,
    };
    if json {
        println!("{}", serde_json::to_string_pretty(&answer.entries)?);
    } else {
        print!("{}", answer.text());
    }
    Ok(())
}
