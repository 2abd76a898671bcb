//! A TCP proxy that can freeze its links without closing them: a silent
//! partition, as a stalled middlebox or a half-dead network makes one.
//!
//! While frozen, nothing is forwarded on the links that exist (their sockets
//! stay open), and a new connection is accepted and then never answered,
//! not even after the thaw: the client must give up on it by itself. After
//! the thaw, links that still exist and new connections forward again.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// A freezable TCP proxy in front of one address.
pub struct Proxy {
    pub addr: SocketAddr,
    frozen: watch::Sender<bool>,
    /// Connections accepted while frozen and left unanswered.
    pub swallowed: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl Proxy {
    /// Listens on a free loopback port and forwards to `upstream`.
    pub async fn start(upstream: SocketAddr) -> std::io::Result<Proxy> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let (frozen, watch) = watch::channel(false);
        let swallowed = Arc::new(AtomicU64::new(0));
        let held = swallowed.clone();
        let task = tokio::spawn(async move {
            let mut silent = Vec::new();
            while let Ok((client, _)) = listener.accept().await {
                if *watch.borrow() {
                    held.fetch_add(1, Ordering::Relaxed);
                    silent.push(client); // open, never read, never answered
                    continue;
                }
                let Ok(server) = TcpStream::connect(upstream).await else {
                    continue;
                };
                let (cr, cw) = client.into_split();
                let (sr, sw) = server.into_split();
                tokio::spawn(pump(cr, sw, watch.clone()));
                tokio::spawn(pump(sr, cw, watch.clone()));
            }
        });
        Ok(Proxy {
            addr,
            frozen,
            swallowed,
            task,
        })
    }

    /// Stops forwarding; new connections are swallowed.
    pub fn freeze(&self) {
        self.frozen.send_replace(true);
    }

    /// Forwards again.
    pub fn thaw(&self) {
        self.frozen.send_replace(false);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Copies `from` to `to`, holding every chunk while the link is frozen.
async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    mut frozen: watch::Receiver<bool>,
) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        // A freeze also stops reading, so the sender's data piles up in the
        // kernel's buffers as on a dead link.
        let read = tokio::select! {
            r = from.read(&mut buf) => Some(r),
            _ = frozen.wait_for(|f| *f) => None,
        };
        let n = match read {
            Some(Ok(0) | Err(_)) => return,
            Some(Ok(n)) => n,
            None => {
                if frozen.wait_for(|f| !*f).await.is_err() {
                    return;
                }
                continue;
            }
        };
        if frozen.wait_for(|f| !*f).await.is_err() || to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}
