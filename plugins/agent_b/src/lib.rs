//! Agent B: answers, greeting the user by the `user` (or `name`) context variable.

use warren_agent::{info, Agent, Answer, Message, MessageExt};

struct AgentB;

impl Agent for AgentB {
    fn on_message(msg: Message) -> Answer {
        // Any JSON object will do; a context that is not one is rejected.
        msg.context_map()?;
        let user: String = msg
            .context_var("user")
            .or_else(|| msg.context_var("name"))
            .unwrap_or_else(|| "there".into());
        let via = match &msg.sender {
            Some(from) => format!(" ({from} sent you over)"),
            None => String::new(),
        };
        info(&format!("answering {user} in conversation {}", msg.conversation_id));
        Ok(vec![msg.reply(format!("Hello {user}, Agent B here{via}. How can I help you?"))])
    }
}

warren_agent::export_agent!(AgentB);
