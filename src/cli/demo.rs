//! `warren demo`: the Agent A → Agent B handoff on the embedded broker.

use anyhow::Result;
use clap::Args;

use super::args::HostArgs;

#[derive(Args)]
pub struct Demo {
    #[command(flatten)]
    host: HostArgs,
}

pub async fn run(c: Demo) -> Result<()> {
    warren::demo::run(&c.host.plugins, c.host.config(), &mut std::io::stdout()).await
}
