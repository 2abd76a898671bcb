//! `warren run`: host every plugin of a folder until Ctrl-C or SIGTERM.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context as _, Result};
use clap::Args;
use tokio_util::sync::CancellationToken;
use tracing::info;

use super::args::{BrokerArgs, HostArgs, QueueArgs, RunArgs};
use warren::{Broker, Host, MemoryBroker, control};

#[derive(Args)]
pub struct Run {
    #[command(flatten)]
    pub run: RunArgs,
}

pub async fn run(Run { run }: Run) -> Result<()> {
    let RunArgs {
        host,
        broker,
        queues,
        control,
        http,
        no_http,
        console_token,
    } = run;
    let http = (!no_http).then_some((http, console_token));
    run_host(host, (broker, queues), control, http).await
}

async fn run_host(
    args: HostArgs,
    (broker, queues): (BrokerArgs, QueueArgs),
    control_path: PathBuf,
    http: Option<(std::net::SocketAddr, Option<String>)>,
) -> Result<()> {
    // The HTTP endpoint comes first: a port another host holds is found
    // before waiting for the broker and loading every agent (which can take
    // seconds), and `/readyz` says 503 while the broker is waited for.
    let stop = CancellationToken::new();
    let (http, console_token) = http.unzip();
    let endpoint = warren::http::Endpoint::waiting(broker.describe(), console_token.flatten());
    let mut http_server = match http {
        Some(addr) => {
            let (_, serve) =
                warren::http::bind_endpoint(endpoint.clone(), addr, stop.clone()).await?;
            tokio::spawn(serve)
        }
        None => tokio::spawn(async { std::future::pending::<Result<()>>().await }),
    };
    let amqp = broker
        .connect_waiting(&queues, |e| endpoint.attempt_failed(e))
        .await?;
    let broker: Arc<dyn Broker> = match &amqp {
        Some(amqp) => Arc::new(amqp.clone()),
        None => {
            info!(
                "no AMQP URL configured (--amqp-url / WARREN_AMQP_URL): using the embedded in-process broker (messages do not survive a restart)"
            );
            Arc::new(MemoryBroker::new())
        }
    };
    info!("broker: {}", broker.describe());
    let host = Host::new(args.config(), broker)?;
    if amqp.is_none() {
        control::check_free(&control_path).await?;
    }
    endpoint.serve(host.clone());
    let loaded = host.load_dir(&args.plugins).await?;
    info!(
        "hosting {} agents from {}: {}",
        loaded.len(),
        args.plugins.display(),
        loaded.join(", ")
    );
    let watcher = if args.no_watch {
        None
    } else {
        info!("watching {} for plugin changes", args.plugins.display());
        Some(warren::watch::watch(host.clone(), &args.plugins)?)
    };
    // With RabbitMQ, `send` and `status` talk to the broker; the control socket
    // is only how they reach an embedded broker inside this process.
    let embedded = amqp.is_none();
    let mut server = match amqp {
        Some(_) => tokio::spawn(async { std::future::pending::<Result<()>>().await }),
        None => tokio::spawn(control::serve(host.clone(), control_path, stop.clone())),
    };
    tokio::select! {
        r = tokio::signal::ctrl_c() => r.context("waiting for Ctrl-C")?,
        r = wait_terminate() => r?,
        // The control endpoint only ends early on error (e.g. the socket is taken).
        r = &mut server => {
            host.shutdown().await;
            return r.context("control server task")?;
        }
        r = &mut http_server => {
            host.shutdown().await;
            return r.context("HTTP endpoint task")?;
        }
    }
    info!("shutting down: finishing in-flight messages");
    drop(watcher);
    stop.cancel();
    host.shutdown().await;
    if embedded {
        server.await.context("control server task")??;
    } else {
        server.abort();
    }
    http_server.abort();
    Ok(())
}

pub async fn wait_terminate() -> Result<()> {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    term.recv().await;
    Ok(())
}
