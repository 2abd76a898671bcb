//! `warren mock-llm`: a local OpenAI-compatible endpoint.

use anyhow::{Context as _, Result};
use clap::Args;

#[derive(Args)]
pub struct MockLlm {
    /// Where to listen (the agent's `base_url` is http://ADDR/v1).
    #[arg(long, default_value = "127.0.0.1:8089")]
    listen: std::net::SocketAddr,
    /// Answer only requests that carry this environment variable's value
    /// as their bearer token (as the real service checks its keys).
    #[arg(long)]
    api_key_env: Option<String>,
}

pub async fn run(c: MockLlm) -> Result<()> {
    let api_key = match c.api_key_env {
        Some(var) => {
            Some(std::env::var(&var).with_context(|| format!("--api-key-env: {var} is not set"))?)
        }
        None => None,
    };
    let (mock, serve) = warren::mockllm::MockLlm::bind(c.listen, api_key).await?;
    println!("mock LLM: POST {}/chat/completions", mock.base_url);
    tokio::select! {
        r = serve => r,
        _ = tokio::signal::ctrl_c() => Ok(()),
        r = super::run::wait_terminate() => r,
    }
}
