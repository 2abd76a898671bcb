//! `warren config`: the effective options of `warren run`, redacted.

use anyhow::Result;
use clap::{Args, CommandFactory as _};

use super::args::RunArgs;

#[derive(Args)]
pub struct Config {
    #[command(flatten)]
    pub run: RunArgs,
}

pub fn run(matches: &clap::ArgMatches) -> Result<()> {
    let (_, m) = matches.subcommand().expect("the config command");
    let cmd = super::Cli::command();
    let sub = cmd.find_subcommand("config").expect("the config command");
    print!(
        "{}",
        warren::config::render(sub, m, super::agent_sections())
    );
    Ok(())
}
