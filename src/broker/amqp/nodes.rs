//! Several broker addresses: the nodes of a RabbitMQ cluster.
//!
//! `--amqp-url` may be given several times (or as a comma-separated list).
//! The first URL gives everything but the address (user, password, vhost,
//! TLS, options); each URL gives a node's host and port. The nodes are
//! tried **in the order given**, so an operator decides which node a host
//! prefers (e.g. the one in its own zone) — shuffling would spread hosts
//! over the nodes, which RabbitMQ does not need for quorum queues.
//!
//! lapin's own recovery reconnects through [`Nodes::connect`], called for
//! the first connection and for every reconnection: it connects to the node
//! it is on and, when that fails (the node is gone), moves to the next one
//! for the following attempt. lapin then restores what it restores on any
//! reconnection — channels, QoS, confirm mode, consumers, the topology this
//! connection declared — on whichever node answered, so losing a node is a
//! reconnection like any other (in-flight publishes are re-sent by their
//! callers, unacked deliveries are redelivered by RabbitMQ).
//!
//! Every attempt is bounded by the connect timeout, recovery included
//! (lapin's own TCP connect has none, and its handshake waits as long as the
//! socket stays open): name resolution, TCP and TLS time out inside
//! [`Nodes::connect`]; the AMQP handshake that lapin runs on the returned
//! socket is watched, and a handshake still unfinished when the timeout
//! runs out has its socket shut down, which lapin's recovery sees as a
//! failed attempt and retries (a proxy that accepts and never answers, a
//! node that hangs while it boots).

use std::os::fd::{AsFd as _, OwnedFd};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use anyhow::{Result, anyhow};
use async_rs::TokioRuntime;
use async_rs::traits::Reactor;
use lapin::tcp::{AsyncTcpStream, TLSConfig};
use lapin::uri::{AMQPScheme, AMQPUri};

use super::url::{redact, scrub};

/// The cluster's nodes and which one the connection is on.
#[derive(Debug)]
pub struct Nodes {
    /// `host:port` of each node, in the order given.
    addrs: Vec<(String, u16)>,
    /// The node the next attempt goes to (and, once connected, the node the
    /// connection is on).
    next: AtomicUsize,
    /// The node of the latest connection, if any yet.
    connected: Mutex<Option<usize>>,
    /// Connections made to another node than the one before.
    failovers: AtomicU64,
    /// Longest wait for one attempt: resolution, TCP and TLS, then again
    /// for the AMQP handshake.
    timeout: Duration,
    /// Attempts made, so that a watch on an old attempt's handshake leaves
    /// a newer one alone.
    attempts: Arc<AtomicU64>,
    /// The connection's state once it exists (the first connection is
    /// bounded by its caller instead).
    status: OnceLock<lapin::ConnectionStatus>,
}

/// The socket of lapin's stream: `<Tokio as Reactor>::TcpStream`.
type Stream = <async_rs::Tokio as Reactor>::TcpStream;

impl Nodes {
    /// Parses the URLs: the first one whole, the others for their address.
    pub fn parse(urls: &[String], timeout: Duration) -> Result<(AMQPUri, Nodes)> {
        let mut addrs = Vec::new();
        let mut first: Option<AMQPUri> = None;
        for url in urls {
            let uri: AMQPUri = url.parse().map_err(|e: String| {
                anyhow!("invalid AMQP URL {}: {}", redact(url), scrub(&e, url))
            })?;
            addrs.push((uri.authority.host.clone(), uri.authority.port));
            first.get_or_insert(uri);
        }
        let first = first.ok_or_else(|| anyhow!("no AMQP URL given"))?;
        Ok((
            first,
            Nodes {
                addrs,
                next: AtomicUsize::new(0),
                connected: Mutex::new(None),
                failovers: AtomicU64::new(0),
                timeout,
                attempts: Arc::new(AtomicU64::new(0)),
                status: OnceLock::new(),
            },
        ))
    }

    /// How many nodes (at least one).
    pub fn len(&self) -> usize {
        self.addrs.len()
    }

    /// `host:port` of node `i`.
    pub fn addr(&self, i: usize) -> String {
        let (host, port) = &self.addrs[i % self.addrs.len()];
        format!("{host}:{port}")
    }

    /// Every node's `host:port`, in order.
    pub fn addrs(&self) -> impl Iterator<Item = String> + '_ {
        (0..self.addrs.len()).map(|i| self.addr(i))
    }

    /// The node the connection is on (or was on last), if it ever connected.
    pub fn current(&self) -> Option<String> {
        self.connected.lock().unwrap().map(|i| self.addr(i))
    }

    pub fn failovers(&self) -> u64 {
        self.failovers.load(Ordering::Relaxed)
    }

    /// Starts the next attempt at node `i` (e.g. the first that answered a probe).
    pub fn start_at(&self, i: usize) {
        self.next.store(i % self.addrs.len(), Ordering::Relaxed);
    }

    /// Hands over the connection's state, for the handshake watch of
    /// the attempts that follow (recoveries).
    pub fn watch(&self, status: lapin::ConnectionStatus) {
        let _ = self.status.set(status);
    }

    /// One connection attempt, for lapin (first connection and every
    /// reconnection alike): to the current node; if it fails, the next
    /// attempt goes to the next node.
    pub async fn connect(
        &self,
        uri: &AMQPUri,
        runtime: &TokioRuntime,
    ) -> lapin::Result<AsyncTcpStream<Stream>> {
        let i = self.next.load(Ordering::Relaxed) % self.addrs.len();
        let attempt = tokio::time::timeout(self.timeout, open(uri, &self.addrs[i], runtime))
            .await
            .unwrap_or_else(|_| {
                Err(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!("no answer within {:?} (the connect timeout)", self.timeout),
                ))
            });
        match attempt {
            Ok((stream, socket)) => {
                self.watch_handshake(i, socket);
                let mut connected = self.connected.lock().unwrap();
                if connected.is_some_and(|before| before != i) {
                    self.failovers.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(
                        node = self.addr(i),
                        "connected to another node of the cluster: {} (failover {})",
                        self.addr(i),
                        self.failovers()
                    );
                }
                *connected = Some(i);
                Ok(stream)
            }
            Err(e) => {
                if self.addrs.len() > 1 {
                    let next = (i + 1) % self.addrs.len();
                    tracing::warn!(
                        node = self.addr(i),
                        "node {} does not answer ({e}); the next attempt goes to {}",
                        self.addr(i),
                        self.addr(next)
                    );
                    self.next.store(next, Ordering::Relaxed);
                } else if self.status.get().is_some() {
                    // A recovery attempt (the first connection's error is
                    // reported by its caller).
                    tracing::warn!(
                        node = self.addr(i),
                        "reconnecting: {} does not answer: {e}",
                        self.addr(i)
                    );
                }
                Err(e.into())
            }
        }
    }

    /// Shuts `socket` down if the AMQP handshake on it has not finished
    /// within the timeout and no newer attempt was made meanwhile.
    fn watch_handshake(&self, node: usize, socket: OwnedFd) {
        let attempt = self.attempts.fetch_add(1, Ordering::Relaxed) + 1;
        let Some(status) = self.status.get().cloned() else {
            // The first connection: its caller's timeout bounds it.
            return;
        };
        let (timeout, addr) = (self.timeout, self.addr(node));
        let attempts = self.attempts.clone();
        tokio::spawn(async move {
            tokio::time::sleep(timeout).await;
            if status.connected() || attempts.load(Ordering::Relaxed) != attempt {
                return;
            }
            tracing::warn!(
                node = addr,
                "the AMQP handshake with {addr} did not finish within {timeout:?} (the connect \
                 timeout); closing its socket so that the next attempt can start"
            );
            let _ = std::net::TcpStream::from(socket).shutdown(std::net::Shutdown::Both);
        });
    }
}

/// Resolves, connects and (for `amqps`) runs TLS to one node; returns the
/// stream with a second handle on its socket, for the handshake watch.
async fn open(
    uri: &AMQPUri,
    (host, port): &(String, u16),
    runtime: &TokioRuntime,
) -> std::io::Result<(AsyncTcpStream<Stream>, OwnedFd)> {
    let addrs = runtime.to_socket_addrs((host.clone(), *port));
    let stream = AsyncTcpStream::connect(runtime, addrs).await?;
    let socket = match &stream {
        AsyncTcpStream::Plain(s) => s.get_ref().as_fd().try_clone_to_owned()?,
        _ => unreachable!("a new connection is plain TCP"),
    };
    let stream = match uri.scheme {
        AMQPScheme::AMQP => stream,
        AMQPScheme::AMQPS => stream.into_tls(host, TLSConfig::default()).await?,
    };
    Ok((stream, socket))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_url_gives_the_rest_and_each_its_address() {
        let urls = [
            "amqp://u:secret@10.0.0.1:5701/vh".to_string(),
            "amqp://10.0.0.2:5702".to_string(),
        ];
        let (uri, nodes) = Nodes::parse(&urls, Duration::from_secs(5)).unwrap();
        assert_eq!(uri.vhost, "vh");
        assert_eq!(uri.authority.userinfo.password, "secret");
        assert_eq!(
            nodes.addrs().collect::<Vec<_>>(),
            ["10.0.0.1:5701", "10.0.0.2:5702"]
        );
        assert_eq!(nodes.current(), None);
        let e = Nodes::parse(
            &["amqp://u:secret@h:notaport".to_string()],
            Duration::from_secs(5),
        )
        .unwrap_err();
        assert!(!format!("{e:#}").contains("secret"), "{e:#}");
    }
}
