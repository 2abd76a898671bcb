//! `warren trace`: every hop of a handoff conversation, in order, with
//! timings, on the embedded broker and on RabbitMQ, where the hops of one
//! conversation are spread over the hosts that share the queues.

mod common;

use common::http::get;
use common::rabbit::Vhost;
use common::{plugins_dir, run_ready, warren_cli};
use serde_json::Value;

const HANDOFF: &str = "I want to talk to agent B.";

/// Sends the handoff and returns its conversation id.
fn handoff(remote: &[&str]) -> String {
    let mut args = vec!["send", "agent_a", HANDOFF, "--wait", "--json"];
    args.extend_from_slice(remote);
    let (ok, out, err) = warren_cli(&args);
    assert!(ok, "{out}{err}");
    let outcome: Value = serde_json::from_str(&out).unwrap();
    assert!(
        outcome["reply"]["text"]
            .as_str()
            .unwrap()
            .contains("Agent B here"),
        "{out}"
    );
    outcome["id"].as_str().unwrap().to_string()
}

fn trace_json(id: &str, remote: &[&str]) -> Value {
    let mut args = vec!["trace", id, "--json"];
    args.extend_from_slice(remote);
    let (ok, out, err) = warren_cli(&args);
    assert!(ok, "{out}{err}");
    serde_json::from_str(&out).unwrap()
}

fn agents(trace: &Value) -> Vec<&str> {
    trace["hops"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["agent"].as_str().unwrap())
        .collect()
}

#[test]
fn trace_prints_every_hop_of_a_handoff_in_order_on_the_embedded_broker() {
    let dir = plugins_dir(&["agent_a", "agent_b", "chaos"]);
    let sock_dir = tempfile::tempdir().unwrap();
    let sock = sock_dir.path().join("warren.sock");
    let remote = ["--control", sock.to_str().unwrap()];
    let (host, _) = run_ready(dir.path(), &remote);
    let id = handoff(&remote);

    let (ok, table, err) = warren_cli(&[&["trace", id.as_str()][..], &remote].concat());
    assert!(ok, "{table}{err}");
    println!("{table}");
    let lines: Vec<&str> = table.lines().collect();
    assert!(
        lines[0].contains(&id) && lines[0].contains("2 hops"),
        "{table}"
    );
    assert!(
        lines[2].starts_with("1 ") && lines[2].contains("agent_a"),
        "{table}"
    );
    assert!(
        lines[2].contains("user → agent_a → agent:agent_b"),
        "{table}"
    );
    assert!(
        lines[3].starts_with("2 ") && lines[3].contains("agent_b"),
        "{table}"
    );
    assert!(lines[3].contains("agent_a → agent_b → queue:"), "{table}");
    assert!(
        lines[2].contains(" ms") && lines[3].contains("handled"),
        "{table}"
    );

    let trace = trace_json(&id, &remote);
    assert_eq!(agents(&trace), ["agent_a", "agent_b"]);
    for hop in trace["hops"].as_array().unwrap() {
        assert!(hop["guest_ms"].as_f64().unwrap() > 0.0, "{hop}");
        assert!(hop["total_ms"].as_f64().unwrap() >= hop["guest_ms"].as_f64().unwrap());
        assert_eq!(hop["outcome"]["kind"], "handled");
        assert_eq!(hop["attempt"], 1);
    }
    // What agent_a sent is what agent_b received.
    let sent = &trace["hops"][0]["sent"][0];
    assert_eq!(sent["id"], trace["hops"][1]["id"]);
    assert_eq!(sent["body"]["text"], trace["hops"][1]["received"]["text"]);

    // Retries on the way are hops of their own, with the reason.
    let (ok, out, err) = warren_cli(
        &[
            &["send", "chaos", "flaky:2", "--wait", "--json"][..],
            &remote,
        ]
        .concat(),
    );
    assert!(ok, "{out}{err}");
    let outcome: Value = serde_json::from_str(&out).unwrap();
    let trace = trace_json(outcome["id"].as_str().unwrap(), &remote);
    let hops = trace["hops"].as_array().unwrap();
    assert_eq!(hops.len(), 2, "{trace:#}");
    assert_eq!(hops[0]["outcome"]["kind"], "retried", "{trace:#}");
    assert!(
        hops[0]["outcome"]["reason"]
            .as_str()
            .unwrap()
            .contains("flaky: attempt 1 of 2")
    );
    assert_eq!(
        (hops[0]["attempt"].clone(), hops[1]["attempt"].clone()),
        (1.into(), 2.into())
    );
    assert_eq!(hops[1]["outcome"]["kind"], "handled", "{trace:#}");

    let (ok, out, err) = warren_cli(&[&["trace", "m-nosuchconversation"][..], &remote].concat());
    assert!(!ok && out.contains("no hop"), "{out}{err}");
    host.stop();
}

#[test]
fn a_trace_has_the_hops_of_every_host_sharing_the_rabbitmq_queues() {
    let vhost = Vhost::new();
    let url = vhost.url();
    let remote = ["--amqp-url", url.as_str()];
    // Both hosts consume agent_a's queue; only the second hosts agent_b.
    let first_dir = plugins_dir(&["agent_a"]);
    let second_dir = plugins_dir(&["agent_a", "agent_b"]);
    let (first, first_http) = run_ready(first_dir.path(), &remote);
    let (mut second, _) = run_ready(second_dir.path(), &remote);
    let second_pid = format!("/{}", second.child().id());

    let mut both = None;
    for _ in 0..8 {
        let id = handoff(&remote);
        let trace = trace_json(&id, &remote);
        assert_eq!(agents(&trace), ["agent_a", "agent_b"], "{trace:#}");
        let hosts: Vec<&str> = trace["hops"]
            .as_array()
            .unwrap()
            .iter()
            .map(|h| h["host"].as_str().unwrap())
            .collect();
        assert!(
            hosts[1].ends_with(&second_pid),
            "agent_b runs on the second host: {hosts:?}"
        );
        if hosts[0] != hosts[1] {
            both = Some(id);
        }
    }
    let id = both.expect("RabbitMQ gave agent_a's messages to both hosts' consumers");
    let (ok, table, err) = warren_cli(&[&["trace", id.as_str()][..], &remote].concat());
    assert!(ok && table.contains("2 hops on 2 host(s)"), "{table}{err}");
    println!("{table}");

    // The first host's console assembles the same trace: its own hop and
    // the second host's.
    let (code, body) = get(first_http, &format!("/api/trace/{id}"));
    assert_eq!(code, 200, "{body}");
    let trace: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(agents(&trace), ["agent_a", "agent_b"], "{trace:#}");
    assert_eq!(trace["hosts"].as_array().unwrap().len(), 2, "{trace:#}");
    first.stop();
    second.stop();
}
