//! {{name}}: a warren agent. Replies to the user, or hands the conversation
//! to another agent when asked ("transfer to AGENT").

use warren_agent::{info, reject, Agent, Answer, Message, MessageExt};

struct {{Type}};

impl Agent for {{Type}} {
    fn on_message(msg: Message) -> Answer {
        let text = msg.last_user_text().ok_or_else(|| reject("no user message"))?;
        if let Some(agent) = text.strip_prefix("transfer to ") {
            info(&format!("handing {} to {agent}", msg.conversation_id));
            return Ok(vec![msg.handoff(agent, format!("{{name}}: transferring you to {agent}."))]);
        }
        let user: String = msg.context_var("user").unwrap_or_else(|| "there".into());
        Ok(vec![msg.reply(format!("Hello {user}, {{name}} here. You said: {text}"))])
    }
}

warren_agent::export_agent!({{Type}});
