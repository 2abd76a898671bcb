// LLM triage in JavaScript: the OpenAI Swarm pattern, sandboxed. (Same
// behaviour as plugins/llm_triage and plugins/python/llm_triage; built
// against the world `agent-http`, see sdk/js/warren_http.js.)
//
// Asks an OpenAI-compatible chat-completions endpoint what to do, offering
// one `transfer_to_NAME` tool per agent it may transfer to. A tool call
// becomes a handoff, text the reply. Settings (`base_url`, `model`, `agents`,
// `system_prompt`), the `api_key` secret and the endpoint's origin come from
// the operator: see examples/llm_triage.toml.
import { context, getConfig, handoff, info, reject, reply, retry, toOpenAI } from "./warren_agent.js";
import { HttpError, postJson } from "./warren_http.js";

const DEFAULT_BASE_URL = "https://api.openai.com/v1";
const DEFAULT_PROMPT =
  "You are a triage agent. Answer briefly yourself, or, when the " +
  "user asks for another agent or their request is that agent's job, call the tool " +
  "that transfers them to it.";

export function onMessage(msg) {
  const model = getConfig("model");
  if (model === null) throw reject("no `model` in [agents.llm_triage.config]");
  const base = getConfig("base_url") || DEFAULT_BASE_URL;
  const agents = (getConfig("agents") || "agent_b")
    .split(",")
    .map((a) => a.trim().toLowerCase().split(" ").join("_").split("-").join("_"))
    .filter((a) => a);
  const request = {
    model,
    messages: conversation(msg, getConfig("system_prompt") || DEFAULT_PROMPT),
    tools: agents.map(transferTool),
  };
  const completion = complete(base.replace(/\/+$/, "") + "/chat/completions", getConfig("api_key"), request);
  const answer = completion.choices[0].message;
  const calls = answer.tool_calls || [];
  if (calls.length) {
    const tool = (calls[0].function ?? {}).name ?? "";
    const agent = typeof tool === "string" && tool.startsWith("transfer_to_") ? tool.slice("transfer_to_".length) : null;
    if (!agents.includes(agent)) throw reject(`the model called an unknown tool \`${tool}\``);
    const ctx = context(msg);
    ctx.triaged_by = "llm_triage";
    info(`the model transfers conversation ${msg.conversationId} to ${agent}`);
    return [handoff(msg, agent, `LLM Triage: transferring you to ${agent}.`, ctx)];
  }
  const text = answer.content;
  if (typeof text !== "string" || !text.trim()) throw reject("the model answered neither text nor a tool call");
  return [reply(msg, text)];
}

// Asks the model. A refused origin or a bad key will not get better by
// retrying (reject); a busy or failing endpoint might (retry).
function complete(url, apiKey, request) {
  const headers = apiKey ? { authorization: `Bearer ${apiKey}` } : {};
  let resp;
  try {
    resp = postJson(url, headers, request);
  } catch (e) {
    if (e instanceof HttpError) throw e.intoFailure();
    throw e;
  }
  const status = resp.status;
  if (status >= 200 && status < 300) {
    try {
      return resp.json();
    } catch (e) {
      if (e instanceof HttpError) throw retry(e.message);
      throw e;
    }
  }
  let message = "no error message";
  try {
    const error = resp.json().error;
    if (isObject(error) && Object.prototype.hasOwnProperty.call(error, "message")) message = error.message;
  } catch (e) {
    if (!(e instanceof HttpError)) throw e;
  }
  const why = `the model endpoint answered ${status}: ${message}`;
  throw (status === 408 || status === 429 || status >= 500 ? retry : reject)(why);
}

// The system prompt (with the context variables, as Swarm gives them to its
// agents' instructions), then the conversation so far, each message whole
// (tool calls, tool results, names and other keys as they came).
function conversation(msg, prompt) {
  const ctx = context(msg);
  const system = Object.keys(ctx).length ? `${prompt}\n\nContext variables: ${sortedJson(ctx)}` : prompt;
  return [{ role: "system", content: system }, ...toOpenAI(msg.messages)];
}

// The Swarm-style tool that hands the conversation to `agent`.
function transferTool(agent) {
  return {
    type: "function",
    function: {
      name: `transfer_to_${agent}`,
      description: `Transfer the conversation to ${agent}.`,
      parameters: { type: "object", properties: {}, required: [] },
    },
  };
}

const isObject = (v) => typeof v === "object" && v !== null && !Array.isArray(v);

// JSON with sorted keys and non-ASCII escaped: the text Python's
// json.dumps(ctx, separators=(",", ":"), sort_keys=True) gives.
function sortedJson(value) {
  if (Array.isArray(value)) return `[${value.map(sortedJson).join(",")}]`;
  if (isObject(value)) {
    const keys = Object.keys(value).sort((a, b) => (a < b ? -1 : a > b ? 1 : 0));
    return `{${keys.map((k) => `${asciiJson(k)}:${sortedJson(value[k])}`).join(",")}}`;
  }
  return typeof value === "string" ? asciiJson(value) : JSON.stringify(value);
}

function asciiJson(text) {
  return JSON.stringify(text).replace(/[\u007f-\uffff]/g, (c) => `\\u${c.charCodeAt(0).toString(16).padStart(4, "0")}`);
}
