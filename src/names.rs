//! Names on the wire, compatible with the seed system (SwarmRabbitMQ).
//!
//! An agent's name is normalised once ("Agent A" → `agent_a`) and every name
//! derived from it — queue, routing key, dead-letter queue — comes from here,
//! so that the host, the CLI and the transports cannot disagree.

/// Normalises an agent name: trimmed, lower-case, spaces (and dashes) → `_`.
///
/// Dashes are folded too because file stems such as `agent-b.wasm` are common
/// and an AMQP routing key `agent.agent-b` would otherwise never match the
/// seed's `agent.agent_b`.
pub fn normalise(name: &str) -> String {
    name.trim()
        .chars()
        .map(|c| match c {
            ' ' | '-' => '_',
            c => c.to_ascii_lowercase(),
        })
        .collect()
}

/// Checks that a (normalised) name can be used as an agent name on the wire.
pub fn validate(name: &str) -> anyhow::Result<()> {
    if name.is_empty() {
        anyhow::bail!("agent name is empty");
    }
    if let Some(bad) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || *c == '_'))
    {
        anyhow::bail!("agent name `{name}` contains `{bad}`: use letters, digits and `_`");
    }
    Ok(())
}

/// The agent's durable queue: `agent_{name}_queue`.
pub fn queue(agent: &str) -> String {
    format!("agent_{agent}_queue")
}

/// The routing key the agent's queue is bound with: `agent.{name}`.
pub fn routing_key(agent: &str) -> String {
    format!("agent.{agent}")
}

/// The agent's dead-letter queue: `agent_{name}_queue.dlq`.
pub fn dead_letter_queue(agent: &str) -> String {
    format!("{}.dlq", queue(agent))
}

/// The agent name for a plugin file: its stem, normalised.
pub fn from_path(path: &std::path::Path) -> anyhow::Result<String> {
    let stem = path
        .file_stem()
        .and_then(|s| s.to_str())
        .ok_or_else(|| anyhow::anyhow!("{}: file name is not valid UTF-8", path.display()))?;
    let name = normalise(stem);
    validate(&name).map_err(|e| {
        anyhow::anyhow!(
            "{}: {e} (the agent is named after its file)",
            path.display()
        )
    })?;
    Ok(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seed_compatible_names() {
        assert_eq!(normalise("Agent A"), "agent_a");
        assert_eq!(normalise("agent-b"), "agent_b");
        assert_eq!(queue("agent_a"), "agent_agent_a_queue");
        assert_eq!(routing_key("agent_b"), "agent.agent_b");
        assert_eq!(dead_letter_queue("echo"), "agent_echo_queue.dlq");
        assert!(validate("agent.x").is_err());
        assert!(validate("").is_err());
    }
}
