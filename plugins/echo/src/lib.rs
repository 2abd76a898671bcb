//! Echo: replies with exactly what it received. The benchmark agent.

use warren_agent::{send, Agent, Answer, Destination, Message};

struct Echo;

impl Agent for Echo {
    fn on_message(msg: Message) -> Answer {
        // The whole history, tool calls and all; context, model and extra
        // keys are kept by the host.
        Ok(vec![send(Destination::Reply, msg.messages)])
    }
}

warren_agent::export_agent!(Echo);
