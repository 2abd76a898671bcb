//! A Swarm agent: OpenAI Swarm's `run` loop inside one `on-message`.
//!
//! For each message it asks an OpenAI-compatible chat-completions endpoint
//! what to do, with the whole history (tool calls and results included) and
//! the tools the operator gave this agent. While the model calls tools, the
//! agent runs them itself and asks again (at most `MAX_MODEL_TURNS` times);
//! a `transfer_to_NAME` call hands the conversation to agent NAME with the
//! full history — the assistant turn with its tool calls and a `tool` result
//! for each — as Swarm's handoffs do; text ends the turn as the reply.
//!
//! One component serves every agent of the example: what an agent is comes
//! from its section of the host's config file (examples/swarm/warren.toml):
//!
//! ```toml
//! [agents.triage.config]
//! base_url = "http://127.0.0.1:8089/v1"
//! model = "gpt-4o-mini"                 # the body's `model` wins when set
//! instructions = "You are the triage agent..."
//! tools = "lookup_order"                # the agent's own tools, comma-separated
//! agents = "refunds"                    # transfer_to_refunds
//! ```
//!
//! The tools run inside the sandbox over data the agent carries (a small
//! order book) and the conversation's context variables.

use serde_json::{json, Map, Value};
use warren_agent::http;
use warren_agent::{
    config, from_openai, info, reject, send, to_openai, Agent, Answer, ChatMessage,
    Destination, Failure, Message, MessageExt, OutgoingExt,
};

/// Model calls one message may make before the agent gives up on it.
const MAX_MODEL_TURNS: usize = 8;
const DEFAULT_BASE_URL: &str = "https://api.openai.com/v1";

/// The orders the agent's tools look up: id, item, amount, state.
const ORDERS: &[(&str, &str, &str, &str)] = &[
    ("42", "blue kettle", "39.90 EUR", "delivered 2026-11-02"),
    ("43", "espresso cups (6)", "24.00 EUR", "shipped 2026-11-20"),
    ("44", "cast-iron pan", "59.00 EUR", "delivered 2026-10-28"),
];

struct Swarm;

impl Agent for Swarm {
    fn on_message(msg: Message) -> Answer {
        let settings = Settings::read(&msg)?;
        let mut history = msg.messages.clone();
        let mut context = msg.context_map()?;
        for _ in 0..MAX_MODEL_TURNS {
            let mut messages = vec![json!({"role": "system", "content": settings.instructions(&context)})];
            messages.extend(to_openai(&history));
            let request = json!({
                "model": settings.model,
                "messages": messages,
                "tools": settings.tools(),
            });
            let completion = settings.complete(&request)?;
            let turn = from_openai(&completion["choices"][0]["message"])?;
            let calls = turn.tool_calls.clone().unwrap_or_default();
            history.push(turn);
            if calls.is_empty() {
                return Ok(vec![send(Destination::Reply, history).with_context(&context)?]);
            }
            let mut transfer = None;
            for call in &calls {
                let name = call.function.name.as_str();
                let result = match name.strip_prefix("transfer_to_") {
                    Some(agent) if settings.agents.iter().any(|a| a == agent) => {
                        transfer = Some(agent.to_string());
                        format!("Transferred to {agent}.")
                    }
                    _ if settings.tools.iter().any(|t| t == name) => {
                        run_tool(name, &call.function.arguments, &mut context)
                    }
                    // As Swarm answers a call of a tool it does not have.
                    _ => format!("Error: Tool {name} not found."),
                };
                history.push(ChatMessage::tool_result(&call.id, result));
            }
            if let Some(agent) = transfer {
                info(&format!("conversation {} goes to {agent}", msg.conversation_id));
                return Ok(vec![send(Destination::Agent(agent), history).with_context(&context)?]);
            }
        }
        Err(reject(format!(
            "the model still called tools after {MAX_MODEL_TURNS} model turns"
        )))
    }
}

/// Runs one of the agent's own tools; what it returns is the `tool` result.
fn run_tool(name: &str, arguments: &str, context: &mut Map<String, Value>) -> String {
    let args: Value = match serde_json::from_str(arguments) {
        Ok(v) => v,
        Err(e) => return format!("Error: the arguments are not JSON ({e})."),
    };
    let id = args["id"].as_str().unwrap_or_default();
    let Some((id, item, amount, state)) = ORDERS.iter().find(|o| o.0 == id) else {
        return format!("Error: there is no order #{id}.");
    };
    match name {
        "lookup_order" => format!("Order #{id}: {item}, {amount}, {state}."),
        "issue_refund" => {
            let refunded = context
                .entry("refunded")
                .or_insert_with(|| Value::Array(vec![]));
            if let Value::Array(ids) = refunded {
                if ids.iter().any(|v| v == id) {
                    return format!("Order #{id} was refunded already.");
                }
                ids.push(Value::from(*id));
            }
            format!("Refund of {amount} for order #{id} ({item}) issued.")
        }
        _ => format!("Error: Tool {name} not found."),
    }
}

/// What the operator configured for this agent.
struct Settings {
    base_url: String,
    model: String,
    api_key: Option<String>,
    instructions: String,
    tools: Vec<String>,
    agents: Vec<String>,
}

fn list(key: &str) -> Vec<String> {
    config(key)
        .unwrap_or_default()
        .split(',')
        .map(|a| a.trim().to_lowercase().replace([' ', '-'], "_"))
        .filter(|a| !a.is_empty())
        .collect()
}

impl Settings {
    fn read(msg: &Message) -> Result<Self, Failure> {
        let base = config("base_url").unwrap_or_else(|| DEFAULT_BASE_URL.into());
        // The conversation's own `model` (e.g. from the original client's run()) wins.
        let model = msg
            .model
            .clone()
            .or_else(|| config("model"))
            .ok_or_else(|| reject("no model: none in the message, none in the agent's config"))?;
        Ok(Settings {
            base_url: base,
            model,
            api_key: config("api_key"),
            instructions: config("instructions")
                .unwrap_or_else(|| "You are a helpful agent.".into()),
            tools: list("tools"),
            agents: list("agents"),
        })
    }

    /// Swarm gives an agent's instructions the context variables.
    fn instructions(&self, context: &Map<String, Value>) -> String {
        if context.is_empty() {
            self.instructions.clone()
        } else {
            format!(
                "{}\n\nContext variables: {}",
                self.instructions,
                Value::Object(context.clone())
            )
        }
    }

    fn tools(&self) -> Vec<Value> {
        let own = self.tools.iter().map(|name| {
            let about = match name.as_str() {
                "lookup_order" => "Look up an order by its id.",
                "issue_refund" => "Refund an order by its id.",
                _ => "A tool of this agent.",
            };
            json!({"type": "function", "function": {
                "name": name, "description": about,
                "parameters": {"type": "object", "properties": {"id": {"type": "string"}}, "required": ["id"]}
            }})
        });
        let transfers = self.agents.iter().map(|agent| {
            json!({"type": "function", "function": {
                "name": format!("transfer_to_{agent}"),
                "description": format!("Transfer the conversation to {agent}."),
                "parameters": {"type": "object", "properties": {}, "required": []}
            }})
        });
        own.chain(transfers).collect()
    }

    /// Asks the model (see `http::chat_completion` for what is retried).
    fn complete(&self, request: &Value) -> Result<Value, Failure> {
        http::chat_completion(&self.base_url, self.api_key.as_deref(), request)
    }
}

warren_agent::export_agent!(Swarm);
