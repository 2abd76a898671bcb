//! RabbitMQ for tests: the local broker at 127.0.0.1:5672, and a private
//! virtual host per test (made with rabbitmqctl, deleted afterwards) so tests
//! never see each other's queues or the seed's.

use std::process::Command;

pub const ADDR: &str = "127.0.0.1:5672";

/// Fails with one clear message when the broker is not there — in CI and
/// out of it, never a silent skip.
pub fn require_broker() {
    if std::net::TcpStream::connect(ADDR).is_err() {
        panic!(
            "RabbitMQ is not reachable at {ADDR}; these tests need it. Start it with \
             `rabbitmq-server -detached` (Debian: `apt-get install rabbitmq-server`); \
             scripts/test.sh starts it when it is installed."
        );
    }
}

pub struct Vhost {
    pub name: String,
}

fn ctl(args: &[&str]) {
    let out = Command::new("rabbitmqctl")
        .args(args)
        .output()
        .expect("running rabbitmqctl");
    assert!(
        out.status.success(),
        "rabbitmqctl {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

impl Vhost {
    pub fn new() -> Self {
        require_broker();
        let name = format!("warren-test-{}", &warren::dispatch::new_id()[2..14]);
        ctl(&["add_vhost", &name]);
        ctl(&["set_permissions", "-p", &name, "guest", ".*", ".*", ".*"]);
        Vhost { name }
    }

    pub fn url(&self) -> String {
        format!("amqp://guest:guest@{ADDR}/{}", self.name)
    }

    /// warren's AMQP broker, connected to this vhost.
    pub async fn broker(&self) -> std::sync::Arc<warren::broker::amqp::AmqpBroker> {
        let config = warren::broker::amqp::AmqpConfig::new(self.url());
        std::sync::Arc::new(
            warren::broker::amqp::AmqpBroker::connect(config)
                .await
                .unwrap(),
        )
    }
}

impl Drop for Vhost {
    fn drop(&mut self) {
        let _ = Command::new("rabbitmqctl")
            .args(["delete_vhost", &self.name])
            .output();
    }
}

impl Vhost {
    /// Closes every client connection in this vhost (a "network cut"), as
    /// `rabbitmqctl close_all_connections` does, without touching other tests.
    pub fn close_all_connections(&self) {
        ctl(&[
            "close_all_connections",
            "--vhost",
            &self.name,
            "--limit",
            "1000",
            "warren test: simulated connection loss",
        ]);
    }
}

impl Vhost {
    /// A plain AMQP client of this vhost (as an outside publisher would be),
    /// in confirm mode.
    pub async fn plain_client(&self) -> (lapin::Connection, lapin::Channel) {
        let conn = lapin::Connection::connect(&self.url(), lapin::ConnectionProperties::default())
            .await
            .unwrap();
        let ch = conn.create_channel().await.unwrap();
        ch.confirm_select(Default::default()).await.unwrap();
        (conn, ch)
    }

    /// Declares a durable plain queue (as an outside client would).
    pub async fn declare_queue(ch: &lapin::Channel, name: &str) {
        ch.queue_declare(
            name.into(),
            lapin::options::QueueDeclareOptions {
                durable: true,
                ..Default::default()
            },
            lapin::types::FieldTable::default(),
        )
        .await
        .unwrap();
    }

    /// `(ready, unacked)` of every queue of this vhost, by name, as
    /// RabbitMQ itself counts them.
    pub fn queues(&self) -> std::collections::HashMap<String, (u64, u64)> {
        queues_of(&self.name)
    }

    /// Waits (up to `secs`) until `queue` holds nothing, ready or unacked,
    /// and asserts that it came to that.
    pub async fn wait_drained(&self, queue: &str, secs: u64) {
        let mut queues = self.queues();
        for _ in 0..secs * 10 {
            if queues.get(queue) == Some(&(0, 0)) {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            queues = self.queues();
        }
        assert_eq!(queues.get(queue), Some(&(0, 0)), "{queue}: {queues:?}");
    }
}

/// [`Vhost::queues`] by the vhost's name (from another thread).
pub fn queues_of(vhost: &str) -> std::collections::HashMap<String, (u64, u64)> {
    let out = Command::new("rabbitmqctl")
        .args([
            "list_queues",
            "-p",
            vhost,
            "--no-table-headers",
            "--quiet",
            "name",
            "messages_ready",
            "messages_unacknowledged",
        ])
        .output()
        .expect("running rabbitmqctl");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            let name = f.next()?.to_string();
            let ready = f.next()?.parse().ok()?;
            let unacked = f.next()?.parse().ok()?;
            Some((name, (ready, unacked)))
        })
        .collect()
}
