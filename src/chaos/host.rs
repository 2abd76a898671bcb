//! The host under test: `warren run` as a child process, so that it can be
//! killed as an operator's machine kills it.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};

use crate::host::Readiness;

pub struct HostProcess {
    exe: PathBuf,
    args: Vec<String>,
    log: PathBuf,
    pub http: SocketAddr,
    child: Option<Child>,
}

impl HostProcess {
    /// `warren run` with `args` (broker, plugins, options), its log
    /// appended to `log`, its HTTP endpoint on a free loopback port.
    pub fn new(exe: &Path, args: Vec<String>, log: &Path) -> Result<Self> {
        let http = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?;
        Ok(HostProcess {
            exe: exe.to_path_buf(),
            args,
            log: log.to_path_buf(),
            http,
            child: None,
        })
    }

    pub fn start(&mut self) -> Result<()> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .with_context(|| format!("opening {}", self.log.display()))?;
        let child = Command::new(&self.exe)
            .arg("run")
            .args(&self.args)
            .args(["--http", &self.http.to_string()])
            .env_remove("WARREN_AMQP_URL")
            .env_remove("WARREN_HTTP")
            .env("NO_COLOR", "1")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {}", self.exe.display()))?;
        self.child = Some(child);
        Ok(())
    }

    /// SIGKILL: no shutdown, no acks of what it was handling.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERM, and the wait for its clean shutdown.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = Command::new("kill")
                .args(["-TERM", &child.id().to_string()])
                .status();
            let deadline = Instant::now() + Duration::from_secs(30);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Fails if the host exited by itself.
    pub fn check_alive(&mut self) -> Result<()> {
        if let Some(child) = &mut self.child
            && let Some(status) = child.try_wait()?
        {
            bail!(
                "the host exited by itself ({status}); its log is {}",
                self.log.display()
            );
        }
        Ok(())
    }

    /// What its `/readyz` says, if it answers.
    pub async fn readiness(&self) -> Option<Readiness> {
        let addr = self.http;
        tokio::task::spawn_blocking(move || {
            use std::io::{Read as _, Write as _};
            let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(1)).ok()?;
            s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
            write!(
                s,
                "GET /readyz HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
            )
            .ok()?;
            let mut response = String::new();
            s.read_to_string(&mut response).ok()?;
            let (_, body) = response.split_once("\r\n\r\n")?;
            serde_json::from_str(body).ok()
        })
        .await
        .ok()
        .flatten()
    }

    /// Waits until the host is ready (connected, every agent loaded).
    pub async fn wait_ready(&mut self, within: Duration) -> Result<()> {
        let deadline = Instant::now() + within;
        loop {
            self.check_alive()?;
            if self.readiness().await.is_some_and(|r| r.ready) {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!(
                    "the host was not ready within {within:?}; its log is {}",
                    self.log.display()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Drop for HostProcess {
    fn drop(&mut self) {
        self.kill();
    }
}
