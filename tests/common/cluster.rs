//! The local 3-node cluster of `scripts/rabbitmq-cluster.sh` (nodes
//! `warren-c1..3@localhost`, AMQP on 127.0.0.1:5701-5703).

use std::process::Command;

use super::root;

/// Runs the cluster script (`up` starts the cluster when it is not up).
pub fn cluster(args: &[&str]) {
    let out = Command::new(root().join("scripts/rabbitmq-cluster.sh"))
        .args(args)
        .output()
        .expect("running scripts/rabbitmq-cluster.sh");
    assert!(
        out.status.success(),
        "rabbitmq-cluster.sh {args:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

pub fn ctl(node: u32, args: &[&str]) -> String {
    let out = Command::new("runuser")
        .args([
            "-u",
            "rabbitmq",
            "--",
            "env",
            "HOME=/var/lib/rabbitmq",
            "rabbitmqctl",
            "-n",
        ])
        .arg(format!("warren-c{node}@localhost"))
        .args(args)
        .output()
        .expect("running rabbitmqctl");
    assert!(
        out.status.success(),
        "rabbitmqctl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A new vhost on the cluster, open to guest.
pub fn vhost(prefix: &str) -> String {
    let vhost = format!("{prefix}-{}", &warren::dispatch::new_id()[2..12]);
    ctl(1, &["add_vhost", &vhost]);
    ctl(
        1,
        &["set_permissions", "-p", &vhost, "guest", ".*", ".*", ".*"],
    );
    vhost
}
