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

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use anyhow::{Result, anyhow};
use async_rs::Runtime;
use async_rs::traits::{Reactor, RuntimeKit};
use lapin::tcp::{AMQPUriTcpExt as _, AsyncTcpStream, TLSConfig};
use lapin::uri::AMQPUri;

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
}

impl Nodes {
    /// Parses the URLs: the first one whole, the others for their address.
    pub fn parse(urls: &[String]) -> Result<(AMQPUri, Nodes)> {
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

    /// One connection attempt, for lapin (first connection and every
    /// reconnection alike): to the current node; if it fails, the next
    /// attempt goes to the next node.
    pub async fn connect<RK: RuntimeKit + Send + Sync>(
        &self,
        uri: &AMQPUri,
        runtime: &Runtime<RK>,
    ) -> lapin::Result<AsyncTcpStream<<RK as Reactor>::TcpStream>> {
        let i = self.next.load(Ordering::Relaxed) % self.addrs.len();
        let mut node = uri.clone();
        (node.authority.host, node.authority.port) = self.addrs[i].clone();
        match node
            .connect_with_config_async(TLSConfig::default(), runtime)
            .await
        {
            Ok(stream) => {
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
                }
                Err(e.into())
            }
        }
    }
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
        let (uri, nodes) = Nodes::parse(&urls).unwrap();
        assert_eq!(uri.vhost, "vh");
        assert_eq!(uri.authority.userinfo.password, "secret");
        assert_eq!(
            nodes.addrs().collect::<Vec<_>>(),
            ["10.0.0.1:5701", "10.0.0.2:5702"]
        );
        assert_eq!(nodes.current(), None);
        let e = Nodes::parse(&["amqp://u:secret@h:notaport".to_string()]).unwrap_err();
        assert!(!format!("{e:#}").contains("secret"), "{e:#}");
    }
}
