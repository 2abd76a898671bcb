//! `warren test`: one plugin, no broker.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;

use anyhow::{Context as _, Result};
use clap::Args;

use super::args::RuntimeArgs;

#[derive(Args)]
pub struct Test {
    /// The component to test.
    plugin: PathBuf,
    /// Input file of JSON lines (message bodies: `messages`, `context_variables`, ...); `-` or absent reads stdin.
    #[arg(long)]
    input: Option<PathBuf>,
    #[command(flatten)]
    runtime: RuntimeArgs,
}

pub async fn run(c: Test) -> Result<()> {
    let reader: Box<dyn BufRead> = match c.input {
        Some(p) if p.as_os_str() != "-" => Box::new(BufReader::new(
            std::fs::File::open(&p).with_context(|| format!("opening {}", p.display()))?,
        )),
        _ => {
            use std::io::IsTerminal as _;
            if std::io::stdin().is_terminal() {
                eprintln!(
                    "warren test: reading message bodies from standard input, one JSON object per line, e.g.\n  \
                     {{\"messages\":[{{\"role\":\"user\",\"content\":\"hi\"}}],\"context_variables\":{{}}}}\n\
                     (Ctrl-D ends; --input FILE reads a file)"
                );
            }
            Box::new(BufReader::new(std::io::stdin()))
        }
    };
    // The agent's section of the config file applies as in `warren run`.
    let agent = warren::names::from_path(&c.plugin)?;
    let section = super::agent_sections().get(&agent);
    warren::testbench::run(
        &c.plugin,
        reader,
        &mut std::io::stdout(),
        &mut std::io::stderr(),
        c.runtime.config(),
        section,
    )
    .await
}
