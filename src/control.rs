//! The local control endpoint: how `warren send` and `warren status`, run as
//! separate processes, reach a host that runs the embedded broker (which
//! lives inside that host's process).
//!
//! A Unix socket (local only, guarded by file permissions); one JSON request
//! line in, one JSON response line out.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, Result, bail};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::client::{self, SendOutcome};
use crate::host::Host;
use crate::status::Status;

/// The default socket: `$XDG_RUNTIME_DIR/warren.sock`, else `/tmp/warren-$USER.sock`.
pub fn default_socket() -> PathBuf {
    if let Some(dir) = std::env::var_os("XDG_RUNTIME_DIR") {
        return PathBuf::from(dir).join("warren.sock");
    }
    let user = std::env::var("USER").unwrap_or_else(|_| "user".into());
    std::env::temp_dir().join(format!("warren-{user}.sock"))
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
enum Request {
    Status,
    Send {
        agent: String,
        text: String,
        context: Map<String, Value>,
        wait_ms: Option<u64>,
    },
    Dlq {
        agent: String,
        action: crate::dlq::Op,
    },
    Trace {
        conversation_id: String,
        wait_ms: u64,
    },
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum Response {
    Status(Status),
    Sent(SendOutcome),
    Dlq(crate::dlq::Answer),
    Trace(crate::trace::peers::Trace),
    Error(String),
}

/// Serves the control socket until `shutdown`.
/// Fails if another live host serves `path` (a stale socket from a crashed
/// host is fine: [`serve`] replaces it).
pub async fn check_free(path: &Path) -> Result<()> {
    if path.exists() && UnixStream::connect(path).await.is_ok() {
        bail!(
            "another warren host is already serving {} (stop it, or pass --control to use another socket)",
            path.display()
        );
    }
    Ok(())
}

pub async fn serve(host: Arc<Host>, path: PathBuf, shutdown: CancellationToken) -> Result<()> {
    if path.exists() {
        // A live host answers; a stale socket from a crashed one is replaced.
        check_free(&path).await?;
        std::fs::remove_file(&path)
            .with_context(|| format!("removing stale {}", path.display()))?;
    }
    let listener = UnixListener::bind(&path)
        .with_context(|| format!("binding control socket {}", path.display()))?;
    info!(
        "control socket: {} (warren send / warren status reach this host there)",
        path.display()
    );
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            conn = listener.accept() => {
                let (stream, _) = match conn {
                    Ok(c) => c,
                    Err(e) => { warn!("control socket accept failed: {e}"); continue; }
                };
                let host = host.clone();
                tokio::spawn(async move {
                    if let Err(e) = answer(host, stream).await {
                        warn!("control request failed: {e:#}");
                    }
                });
            }
        }
    }
    let _ = std::fs::remove_file(&path);
    Ok(())
}

async fn answer(host: Arc<Host>, stream: UnixStream) -> Result<()> {
    let (read, mut write) = stream.into_split();
    let mut line = String::new();
    BufReader::new(read).read_line(&mut line).await?;
    let response = match serde_json::from_str::<Request>(&line) {
        Err(e) => Response::Error(format!("bad request: {e}")),
        Ok(Request::Status) => match host.status().await {
            Ok(s) => Response::Status(s),
            Err(e) => Response::Error(format!("{e:#}")),
        },
        Ok(Request::Send {
            agent,
            text,
            context,
            wait_ms,
        }) => {
            let wait = wait_ms.map(Duration::from_millis);
            match client::send(host.broker().as_ref(), &agent, &text, context, wait).await {
                Ok(outcome) => Response::Sent(outcome),
                Err(e) => Response::Error(format!("{e:#}")),
            }
        }
        Ok(Request::Dlq { agent, action }) => match host.dlq(&agent, action).await {
            Ok(answer) => Response::Dlq(answer),
            Err(e) => Response::Error(format!("{e:#}")),
        },
        Ok(Request::Trace {
            conversation_id,
            wait_ms,
        }) => Response::Trace(
            host.trace(&conversation_id, Duration::from_millis(wait_ms.min(10_000)))
                .await,
        ),
    };
    let mut out = serde_json::to_vec(&response)?;
    out.push(b'\n');
    write.write_all(&out).await?;
    Ok(())
}

async fn request(path: &Path, req: &Request, timeout: Duration) -> Result<Response> {
    let mut stream = UnixStream::connect(path).await.map_err(|e| {
        anyhow::anyhow!(
            "no warren host is reachable at {} ({e}). Start one with `warren run` (embedded broker), \
             or pass --amqp-url / set WARREN_AMQP_URL to talk to RabbitMQ directly",
            path.display()
        )
    })?;
    let mut line = serde_json::to_vec(req)?;
    line.push(b'\n');
    stream.write_all(&line).await?;
    let mut reader = BufReader::new(stream);
    let mut answer = String::new();
    tokio::time::timeout(timeout, reader.read_line(&mut answer))
        .await
        .map_err(|_| {
            anyhow::anyhow!(
                "the warren host at {} did not answer within {timeout:?}",
                path.display()
            )
        })??;
    if answer.is_empty() {
        bail!(
            "the warren host at {} closed the connection without answering",
            path.display()
        );
    }
    Ok(serde_json::from_str(&answer).context("bad answer from the host")?)
}

pub async fn status(path: &Path) -> Result<Status> {
    match request(path, &Request::Status, Duration::from_secs(10)).await? {
        Response::Status(s) => Ok(s),
        Response::Error(e) => bail!("{e}"),
        other => bail!("unexpected answer {other:?}"),
    }
}

pub async fn send(
    path: &Path,
    agent: &str,
    text: &str,
    context: Map<String, Value>,
    wait: Option<Duration>,
) -> Result<SendOutcome> {
    let req = Request::Send {
        agent: agent.into(),
        text: text.into(),
        context,
        wait_ms: wait.map(|w| w.as_millis() as u64),
    };
    let timeout = wait.unwrap_or_default() + Duration::from_secs(10);
    match request(path, &req, timeout).await? {
        Response::Sent(s) => Ok(s),
        Response::Error(e) => bail!("{e}"),
        other => bail!("unexpected answer {other:?}"),
    }
}

pub async fn dlq(path: &Path, agent: &str, op: crate::dlq::Op) -> Result<crate::dlq::Answer> {
    // A replay that waits for its outcome takes that long on top.
    let waits = match &op {
        crate::dlq::Op::Replay {
            wait: Some(secs), ..
        } => Duration::from_secs_f64(secs.clamp(0.0, 86_400.0)),
        _ => Duration::ZERO,
    };
    let req = Request::Dlq {
        agent: agent.into(),
        action: op,
    };
    match request(path, &req, Duration::from_secs(60) + waits).await? {
        Response::Dlq(a) => Ok(a),
        Response::Error(e) => bail!("{e}"),
        other => bail!("unexpected answer {other:?}"),
    }
}

pub async fn trace(
    path: &Path,
    conversation_id: &str,
    wait: Duration,
) -> Result<crate::trace::peers::Trace> {
    let req = Request::Trace {
        conversation_id: conversation_id.into(),
        wait_ms: wait.as_millis() as u64,
    };
    match request(path, &req, wait + Duration::from_secs(10)).await? {
        Response::Trace(t) => Ok(t),
        Response::Error(e) => bail!("{e}"),
        other => bail!("unexpected answer {other:?}"),
    }
}
