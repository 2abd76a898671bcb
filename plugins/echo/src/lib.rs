//! Echo: replies with exactly what it received. The benchmark agent.

use warren_agent::{Agent, Answer, Destination, Message, Outgoing};

struct Echo;

impl Agent for Echo {
    fn on_message(msg: Message) -> Answer {
        Ok(vec![Outgoing { to: Destination::Reply, messages: msg.messages, context: None }])
    }
}

warren_agent::export_agent!(Echo);
