//! LLM triage: the OpenAI Swarm pattern, sandboxed.
//!
//! For each message it asks an OpenAI-compatible chat-completions endpoint
//! what to do, offering one tool per agent it may transfer to
//! (`transfer_to_agent_b`, ...). A tool call becomes a handoff to that agent;
//! text becomes the reply.
//!
//! Everything comes from the operator, through the host's config file:
//!
//! ```toml
//! [agents.llm_triage.config]
//! base_url = "http://127.0.0.1:8089/v1"   # default https://api.openai.com/v1
//! model = "gpt-4o-mini"
//! agents = "agent_b"                      # comma-separated transfer targets
//! # system_prompt = "..."                 # optional
//!
//! [agents.llm_triage.secrets]
//! api_key = "env:OPENAI_API_KEY"          # optional for local servers
//!
//! [agents.llm_triage.http]
//! allow = ["http://127.0.0.1:8089"]       # the endpoint's origin
//! ```

use serde_json::{json, Value};
use warren_agent::http;
use warren_agent::{
    config, info, reject, Agent, Answer, Failure, Message, MessageExt, OutgoingExt,
};

const DEFAULT_BASE_URL: &str = "https://api.openai.com/v1";
const DEFAULT_PROMPT: &str = "You are a triage agent. Answer briefly yourself, or, when the \
     user asks for another agent or their request is that agent's job, call the tool that \
     transfers them to it.";

struct LlmTriage;

impl Agent for LlmTriage {
    fn on_message(msg: Message) -> Answer {
        let settings = Settings::read()?;
        let request = json!({
            "model": settings.model,
            "messages": conversation(&msg, &settings.prompt),
            "tools": settings.agents.iter().map(|a| transfer_tool(a)).collect::<Vec<_>>(),
        });
        let completion = settings.complete(&request)?;
        let answer = &completion["choices"][0]["message"];
        if let Some(call) = answer["tool_calls"].as_array().and_then(|c| c.first()) {
            let tool = call["function"]["name"].as_str().unwrap_or_default();
            let agent = tool
                .strip_prefix("transfer_to_")
                .filter(|a| settings.agents.iter().any(|known| known == a))
                .ok_or_else(|| reject(format!("the model called an unknown tool `{tool}`")))?;
            let mut context = msg.context_map()?;
            context.insert("triaged_by".into(), "llm_triage".into());
            info(&format!(
                "the model transfers conversation {} to {agent}",
                msg.conversation_id
            ));
            let text = format!("LLM Triage: transferring you to {agent}.");
            return Ok(vec![msg.handoff(agent, text).with_context(&context)?]);
        }
        match answer["content"].as_str() {
            Some(text) if !text.trim().is_empty() => Ok(vec![msg.reply(text)]),
            _ => Err(reject("the model answered neither text nor a tool call")),
        }
    }
}

/// What the operator configured for this agent.
struct Settings {
    base_url: String,
    model: String,
    api_key: Option<String>,
    agents: Vec<String>,
    prompt: String,
}

impl Settings {
    fn read() -> Result<Self, Failure> {
        let base = config("base_url").unwrap_or_else(|| DEFAULT_BASE_URL.into());
        let model =
            config("model").ok_or_else(|| reject("no `model` in [agents.llm_triage.config]"))?;
        let agents = config("agents")
            .unwrap_or_else(|| "agent_b".into())
            .split(',')
            .map(|a| a.trim().to_lowercase().replace([' ', '-'], "_"))
            .filter(|a| !a.is_empty())
            .collect();
        Ok(Settings {
            base_url: base,
            model,
            api_key: config("api_key"),
            agents,
            prompt: config("system_prompt").unwrap_or_else(|| DEFAULT_PROMPT.into()),
        })
    }

    /// Asks the model (see `http::chat_completion` for what is retried).
    fn complete(&self, request: &Value) -> Result<Value, Failure> {
        http::chat_completion(&self.base_url, self.api_key.as_deref(), request)
    }
}

/// The system prompt (with the context variables, as Swarm gives them to
/// its agents' instructions), then the conversation so far.
fn conversation(msg: &Message, prompt: &str) -> Vec<Value> {
    let system = match msg.context_map() {
        Ok(context) if !context.is_empty() => {
            format!("{prompt}\n\nContext variables: {}", Value::Object(context))
        }
        _ => prompt.to_string(),
    };
    let mut messages = vec![json!({"role": "system", "content": system})];
    // Whole OpenAI messages: tool calls and their results as they came.
    messages.extend(warren_agent::to_openai(&msg.messages));
    messages
}

/// The Swarm-style tool that hands the conversation to `agent`.
fn transfer_tool(agent: &str) -> Value {
    json!({
        "type": "function",
        "function": {
            "name": format!("transfer_to_{agent}"),
            "description": format!("Transfer the conversation to {agent}."),
            "parameters": {"type": "object", "properties": {}, "required": []}
        }
    })
}

warren_agent::export_agent!(LlmTriage);
