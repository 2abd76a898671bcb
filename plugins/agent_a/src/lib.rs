//! Agent A: triage. Hands the conversation off to Agent B when the user asks
//! for it, and otherwise answers by itself.

use warren_agent::{info, reject, Agent, Answer, Message, MessageExt, OutgoingExt};

struct AgentA;

impl Agent for AgentA {
    fn on_message(msg: Message) -> Answer {
        let last = msg.last_user_text().ok_or_else(|| reject("no user message to triage"))?;
        let wants_b = {
            let t = last.to_lowercase();
            t.contains("agent b") || t.contains("agent_b")
        };
        if wants_b {
            // Hand off with the context variables plus a note of who triaged.
            let mut context = msg.context_map()?;
            context.insert("triaged_by".into(), "agent_a".into());
            info(&format!("handing conversation {} off to agent_b", msg.conversation_id));
            Ok(vec![msg.handoff("agent_b", "Agent A: transferring you to Agent B.").with_context(&context)?])
        } else {
            let text = format!("Agent A here. You said: \"{last}\". Ask for Agent B and I will hand you over.");
            Ok(vec![msg.reply(text)])
        }
    }
}

warren_agent::export_agent!(AgentA);
