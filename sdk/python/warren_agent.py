"""Write a warren agent in Python (componentize-py).

An agent is a module `app.py` with a class `WitWorld` whose `on_message`
returns the messages to send on, or raises a failure::

    import wit_world
    from warren_agent import reply, handoff, reject, context

    class WitWorld(wit_world.WitWorld):
        def on_message(self, msg):
            user = context(msg).get("user", "there")
            return [reply(msg, f"Hello {user}!")]

Build: ``componentize-py -d wit -w agent componentize app -p . -p <this folder> -o NAME.wasm``.
"""

import json
from typing import Any, Dict, List, Optional

from componentize_py_types import Err
from wit_world.imports import config as _config
from wit_world.imports import host

try:
    from wit_world.imports import types
except ImportError:
    # World `agent-http`: wasi:http has a `types` interface too, so
    # componentize-py names ours after its package.
    from wit_world.imports import warren_agent_types as types

__all__ = [
    "reply", "handoff", "retry", "reject", "context", "last_user_text", "get_config",
    "log", "info", "warn",
]


def _with_turn(msg: types.Message, text: str) -> List[types.ChatMessage]:
    return list(msg.messages) + [types.ChatMessage(role="assistant", content=text)]


def _context_text(ctx: Optional[Dict[str, Any]]) -> Optional[str]:
    if ctx is None:
        return None
    if not isinstance(ctx, dict):
        raise reject("context variables must be a JSON object")
    return json.dumps(ctx, separators=(",", ":"), sort_keys=True)


def reply(msg: types.Message, text: str, ctx: Optional[Dict[str, Any]] = None) -> types.Outgoing:
    """The conversation plus an assistant turn, to whoever started it."""
    return types.Outgoing(to=types.Destination_Reply(), messages=_with_turn(msg, text),
                          context=_context_text(ctx))


def handoff(msg: types.Message, agent: str, text: str,
            ctx: Optional[Dict[str, Any]] = None) -> types.Outgoing:
    """The conversation plus an assistant turn, handed to `agent` (new context if given)."""
    return types.Outgoing(to=types.Destination_Agent(agent), messages=_with_turn(msg, text),
                          context=_context_text(ctx))


def retry(reason: str) -> Err:
    """`raise retry("...")`: deliver the same message again later."""
    return Err(types.Failure_Retry(reason))


def reject(reason: str) -> Err:
    """`raise reject("...")`: dead-letter the message with this reason."""
    return Err(types.Failure_Reject(reason))


def context(msg: types.Message) -> Dict[str, Any]:
    """The context variables as a dict (a reject if they are not a JSON object)."""
    try:
        value = json.loads(msg.context)
    except ValueError as e:
        raise reject(f"context is not a JSON object: {e}")
    if not isinstance(value, dict):
        raise reject("context is not a JSON object")
    return value


def get_config(key: str) -> Optional[str]:
    """A setting the host's operator granted this agent (or a secret); None if unset."""
    return _config.get(key)


def last_user_text(msg: types.Message) -> Optional[str]:
    for m in reversed(msg.messages):
        if m.role == "user":
            return m.content
    return None


def log(level: host.Level, text: str) -> None:
    host.log(level, text)


def info(text: str) -> None:
    host.log(host.Level.INFO, text)


def warn(text: str) -> None:
    host.log(host.Level.WARN, text)
