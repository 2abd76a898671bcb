"""LLM triage in Python: the OpenAI Swarm pattern, sandboxed. (Same
behaviour as plugins/llm_triage; built against the world `agent-http`.)

Asks an OpenAI-compatible chat-completions endpoint what to do, offering
one `transfer_to_NAME` tool per agent it may transfer to. A tool call
becomes a handoff, text the reply. Settings (`base_url`, `model`, `agents`,
`system_prompt`), the `api_key` secret and the endpoint's origin come from
the operator: see examples/llm_triage.toml.
"""

import json

import wit_world
from warren_agent import context, get_config, handoff, info, reject, reply, retry, to_openai
from warren_http import HttpError, post_json

DEFAULT_BASE_URL = "https://api.openai.com/v1"
DEFAULT_PROMPT = ("You are a triage agent. Answer briefly yourself, or, when the "
                  "user asks for another agent or their request is that agent's job, call the tool "
                  "that transfers them to it.")


class WitWorld(wit_world.WitWorld):
    def on_message(self, msg):
        model = get_config("model")
        if model is None:
            raise reject("no `model` in [agents.llm_triage.config]")
        base = get_config("base_url") or DEFAULT_BASE_URL
        agents = [a.strip().lower().replace(" ", "_").replace("-", "_")
                  for a in (get_config("agents") or "agent_b").split(",")]
        agents = [a for a in agents if a]
        request = {
            "model": model,
            "messages": conversation(msg, get_config("system_prompt") or DEFAULT_PROMPT),
            "tools": [transfer_tool(a) for a in agents],
        }
        completion = complete(base.rstrip("/") + "/chat/completions", get_config("api_key"), request)
        answer = completion["choices"][0]["message"]
        calls = answer.get("tool_calls") or []
        if calls:
            tool = calls[0].get("function", {}).get("name", "")
            agent = tool[len("transfer_to_"):] if tool.startswith("transfer_to_") else None
            if agent not in agents:
                raise reject(f"the model called an unknown tool `{tool}`")
            ctx = context(msg)
            ctx["triaged_by"] = "llm_triage"
            info(f"the model transfers conversation {msg.conversation_id} to {agent}")
            return [handoff(msg, agent, f"LLM Triage: transferring you to {agent}.", ctx)]
        text = answer.get("content")
        if not isinstance(text, str) or not text.strip():
            raise reject("the model answered neither text nor a tool call")
        return [reply(msg, text)]


def complete(url, api_key, request):
    """Asks the model. A refused origin or a bad key will not get better by
    retrying (reject); a busy or failing endpoint might (retry)."""
    headers = {"authorization": f"Bearer {api_key}"} if api_key else {}
    try:
        resp = post_json(url, headers, request)
    except HttpError as e:
        raise e.into_failure()
    status = resp.status
    if 200 <= status < 300:
        try:
            return resp.json()
        except HttpError as e:
            raise retry(str(e))
    try:
        message = resp.json()["error"]["message"]
    except (HttpError, KeyError, TypeError):
        message = "no error message"
    why = f"the model endpoint answered {status}: {message}"
    raise (retry if status in (408, 429) or status >= 500 else reject)(why)


def conversation(msg, prompt):
    """The system prompt (with the context variables, as Swarm gives them to
    its agents' instructions), then the conversation so far, each message
    whole (tool calls, tool results, names and other keys as they came)."""
    ctx = context(msg)
    system = (f"{prompt}\n\nContext variables: {json.dumps(ctx, separators=(',', ':'), sort_keys=True)}"
              if ctx else prompt)
    return [{"role": "system", "content": system}] + to_openai(msg.messages)


def transfer_tool(agent):
    """The Swarm-style tool that hands the conversation to `agent`."""
    return {
        "type": "function",
        "function": {
            "name": f"transfer_to_{agent}",
            "description": f"Transfer the conversation to {agent}.",
            "parameters": {"type": "object", "properties": {}, "required": []},
        },
    }
