//! Echo: replies with exactly what it received. The benchmark agent.

wit_bindgen::generate!({ world: "agent", path: "../../wit" });

use warren::agent::types::Destination;

struct Echo;

impl Guest for Echo {
    fn on_message(msg: Message) -> Result<Vec<Outgoing>, Failure> {
        Ok(vec![Outgoing { to: Destination::Reply, messages: msg.messages, context: None }])
    }
}

export!(Echo);
