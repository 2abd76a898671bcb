"""Write a warren agent in Python (componentize-py), contract ``warren:agent@0.2.0``.

An agent is a module `app.py` with a class `WitWorld` whose `on_message`
returns the messages to send on, or raises a failure::

    import wit_world
    from warren_agent import reply, handoff, reject, context

    class WitWorld(wit_world.WitWorld):
        def on_message(self, msg):
            user = context(msg).get("user", "there")
            return [reply(msg, f"Hello {user}!")]

A chat message (``types.ChatMessage``) is an OpenAI chat message, whole:
``role``, ``content`` (None for ``null`` or a list of content parts),
``name``, ``tool_calls`` (``types.ToolCall(id, kind, function=
types.FunctionCall(name, arguments))``), ``tool_call_id`` and ``extra`` (its
other keys as JSON text). ``to_openai`` / ``from_openai`` convert to and
from the dicts the OpenAI API takes.

Build: ``componentize-py -d wit -w agent componentize app -p . -p <this folder> -o NAME.wasm``.
"""

import json
from typing import Any, Dict, Iterable, List, Optional, Sequence, Union

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
    "reply", "handoff", "retry", "reject", "context", "extra", "last_user_text", "get_config",
    "log", "info", "warn",
    "chat_message", "assistant_tool_calls", "tool_result", "to_openai", "from_openai",
    "types",
]

# The keys of an OpenAI chat message that have fields of their own.
_KNOWN = ("role", "content", "name", "tool_calls", "tool_call_id")


def _compact(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def _object_text(value: Optional[Dict[str, Any]], what: str) -> Optional[str]:
    if value is None:
        return None
    if not isinstance(value, dict):
        raise reject(f"{what} must be a JSON object")
    return json.dumps(value, separators=(",", ":"), sort_keys=True)


def _context_text(ctx: Optional[Dict[str, Any]]) -> Optional[str]:
    return _object_text(ctx, "context variables")


def _parse_object(text: Optional[str], what: str) -> Dict[str, Any]:
    if text is None:
        return {}
    try:
        value = json.loads(text)
    except ValueError as e:
        raise reject(f"{what} is not a JSON object: {e}")
    if not isinstance(value, dict):
        raise reject(f"{what} is not a JSON object")
    return value


# -- chat messages ---------------------------------------------------------

def chat_message(role: str, content: Optional[str] = None, *, name: Optional[str] = None,
                 tool_calls: Optional[Sequence[Any]] = None, tool_call_id: Optional[str] = None,
                 extra: Optional[Union[Dict[str, Any], str]] = None) -> types.ChatMessage:
    """A chat message with every field given (the record needs them all).
    ``tool_calls`` takes what ``assistant_tool_calls`` takes; ``extra`` a dict
    (or its JSON text)."""
    if isinstance(extra, dict):
        extra = _compact(extra) if extra else None
    calls = None if tool_calls is None else [_tool_call(c) for c in tool_calls]
    return types.ChatMessage(role=role, content=content, name=name, tool_calls=calls,
                             tool_call_id=tool_call_id, extra=extra)


def _tool_call(call: Any) -> types.ToolCall:
    if isinstance(call, types.ToolCall):
        return call
    if isinstance(call, dict):
        if "function" in call:  # OpenAI's shape (or ours as a dict)
            fn = call.get("function") or {}
            return types.ToolCall(id=str(call.get("id", "")),
                                  kind=str(call.get("type", call.get("kind", "function"))),
                                  function=types.FunctionCall(name=str(fn.get("name", "")),
                                                              arguments=_arguments(fn.get("arguments", ""))))
        return types.ToolCall(id=str(call.get("id", "")), kind=str(call.get("kind", "function")),
                              function=types.FunctionCall(name=str(call.get("name", "")),
                                                          arguments=_arguments(call.get("arguments", ""))))
    call_id, name, arguments = call
    return types.ToolCall(id=call_id, kind="function",
                          function=types.FunctionCall(name=name, arguments=_arguments(arguments)))


def _arguments(arguments: Any) -> str:
    """Arguments are JSON text; anything else is written as JSON."""
    return arguments if isinstance(arguments, str) else _compact(arguments)


def assistant_tool_calls(calls: Iterable[Any]) -> types.ChatMessage:
    """An assistant turn that only calls tools (content None). Each call is an
    ``(id, name, arguments)`` tuple, a ``types.ToolCall``, or a dict (OpenAI's
    ``{"id", "type", "function": {"name", "arguments"}}`` or ``{"id", "name",
    "arguments"}``); arguments that are not a string are written as JSON."""
    return chat_message("assistant", None, tool_calls=list(calls))


def tool_result(call_id: str, text: str) -> types.ChatMessage:
    """The ``tool`` message answering the tool call ``call_id``."""
    return chat_message("tool", text, tool_call_id=call_id)


def to_openai(messages: Iterable[types.ChatMessage]) -> List[Dict[str, Any]]:
    """Chat messages as the dicts the OpenAI API takes: ``role``, ``content``
    (None stays None), ``name``, ``tool_calls`` and ``tool_call_id`` when set,
    then every key of ``extra`` not already there (its ``content``, a list of
    content parts, replaces a None content)."""
    out = []
    for m in messages:
        d: Dict[str, Any] = {"role": m.role, "content": m.content}
        if m.name is not None:
            d["name"] = m.name
        if m.tool_calls is not None:
            d["tool_calls"] = [
                {"id": c.id, "type": c.kind,
                 "function": {"name": c.function.name, "arguments": c.function.arguments}}
                for c in m.tool_calls
            ]
        if m.tool_call_id is not None:
            d["tool_call_id"] = m.tool_call_id
        for k, v in _parse_object(m.extra, "a chat message's extra").items():
            if k not in d or (k == "content" and d["content"] is None):
                d[k] = v
        out.append(d)
    return out


def from_openai(dicts: Iterable[Dict[str, Any]]) -> List[types.ChatMessage]:
    """OpenAI chat-message dicts as chat messages: ``type`` becomes ``kind``,
    and every key without a field of its own, or with a value that does not
    fit it (``content`` as a list of parts, ``tool_calls`` not in the plain
    ``{"id", "type", "function": {"name", "arguments"}}`` shape), goes to
    ``extra`` as compact JSON text."""
    out = []
    for d in dicts:
        if not isinstance(d, dict) or not isinstance(d.get("role"), str):
            raise reject("an OpenAI chat message is an object with a string `role`")
        rest = {k: v for k, v in d.items() if k not in _KNOWN}
        fields: Dict[str, Any] = {}
        for key in ("content", "name", "tool_call_id"):
            v = d.get(key)
            if isinstance(v, str):
                fields[key] = v
            elif key in d and not (key == "content" and v is None):
                rest[key] = v
        calls = d.get("tool_calls")
        if isinstance(calls, list) and all(_plain_call(c) for c in calls):
            fields["tool_calls"] = [_tool_call(c) for c in calls]
        elif "tool_calls" in d:
            rest["tool_calls"] = calls  # kept as it came
        out.append(chat_message(d["role"], fields.get("content"), name=fields.get("name"),
                                tool_calls=fields.get("tool_calls"),
                                tool_call_id=fields.get("tool_call_id"),
                                extra=_compact(rest) if rest else None))
    return out


def _plain_call(c: Any) -> bool:
    """``{"id", "type", "function": {"name", "arguments"}}``, all strings, nothing else."""
    if not isinstance(c, dict) or set(c) != {"id", "type", "function"}:
        return False
    fn = c["function"]
    return (isinstance(c["id"], str) and isinstance(c["type"], str) and isinstance(fn, dict)
            and set(fn) == {"name", "arguments"}
            and isinstance(fn["name"], str) and isinstance(fn["arguments"], str))


def _messages(msg: types.Message, text: Optional[str],
              messages: Optional[Sequence[Any]]) -> List[types.ChatMessage]:
    if messages is None:
        if text is None:
            raise TypeError("reply/handoff need a text or messages=")
        return list(msg.messages) + [chat_message("assistant", text)]
    if text is not None:
        raise TypeError("reply/handoff take a text or messages=, not both")
    return [from_openai([m])[0] if isinstance(m, dict) else m for m in messages]


# -- answers ---------------------------------------------------------------

def reply(msg: types.Message, text: Optional[str] = None, ctx: Optional[Dict[str, Any]] = None, *,
          messages: Optional[Sequence[Any]] = None, model: Optional[str] = None,
          extra: Optional[Dict[str, Any]] = None) -> types.Outgoing:
    """The conversation plus an assistant turn saying ``text``, to whoever
    started it. ``messages=`` sends that list instead (chat messages or
    OpenAI dicts); ``ctx``, ``model`` and ``extra`` (a dict) replace the
    incoming ones when given."""
    return types.Outgoing(to=types.Destination_Reply(), messages=_messages(msg, text, messages),
                          context=_context_text(ctx), model=model,
                          extra=_object_text(extra, "extra"))


def handoff(msg: types.Message, agent: str, text: Optional[str] = None,
            ctx: Optional[Dict[str, Any]] = None, *, messages: Optional[Sequence[Any]] = None,
            model: Optional[str] = None, extra: Optional[Dict[str, Any]] = None) -> types.Outgoing:
    """The same as ``reply``, handed to ``agent``."""
    return types.Outgoing(to=types.Destination_Agent(agent), messages=_messages(msg, text, messages),
                          context=_context_text(ctx), model=model,
                          extra=_object_text(extra, "extra"))


def retry(reason: str) -> Err:
    """`raise retry("...")`: deliver the same message again later."""
    return Err(types.Failure_Retry(reason))


def reject(reason: str) -> Err:
    """`raise reject("...")`: dead-letter the message with this reason."""
    return Err(types.Failure_Reject(reason))


# -- reading the message ---------------------------------------------------

def context(msg: types.Message) -> Dict[str, Any]:
    """The context variables as a dict (a reject if they are not a JSON object)."""
    return _parse_object(msg.context, "context")


def extra(msg: Union[types.Message, types.ChatMessage]) -> Dict[str, Any]:
    """The body's other top-level keys (``msg.extra``) as a dict; of a chat
    message, its other keys ({} when it has none)."""
    return _parse_object(msg.extra, "extra")


def get_config(key: str) -> Optional[str]:
    """A setting the host's operator granted this agent (or a secret); None if unset."""
    return _config.get(key)


def last_user_text(msg: types.Message) -> Optional[str]:
    """The content of the last ``user`` message; None if there is none or its
    content is not text (a list of parts, in ``extra``)."""
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
