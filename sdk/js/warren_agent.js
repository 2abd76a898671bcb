// Write a warren agent in JavaScript (jco componentize, QuickJS backend),
// contract warren:agent@0.2.0.
//
// An agent is an ES module exporting `onMessage(msg)`: it returns the
// messages to send on, or throws a failure:
//
//   import { reply, context } from "./warren_agent.js";
//   export function onMessage(msg) {
//     const user = context(msg).user ?? "there";
//     return [reply(msg, `Hello ${user}!`)];
//   }
//
// Build: jco componentize app.js --backend qjs --backend-qjs-disable-async -w wit -n agent -o NAME.wasm
// WIT records arrive with camelCase keys (msg.conversationId); variants are
// { tag, val } objects; an option is its value or null; `throw retry(...)` /
// `throw reject(...)` is the failure.
//
// A chat message is an OpenAI chat message, whole: { role, content (null for
// JSON null or a list of content parts), name, toolCalls ([{ id, kind,
// function: { name, arguments } }]), toolCallId, extra (its other keys as
// JSON text) }, every absent one null. toOpenAI / fromOpenAI convert to and
// from the objects the OpenAI API takes.

import host from "warren:agent/host@0.2.0";
import config from "warren:agent/config@0.2.0";

// The keys of an OpenAI chat message that have fields of their own.
const KNOWN = ["role", "content", "name", "tool_calls", "tool_call_id"];

const isObject = (v) => typeof v === "object" && v !== null && !Array.isArray(v);
const has = (o, k) => Object.prototype.hasOwnProperty.call(o, k);

function objectText(value, what) {
  if (value === undefined || value === null) return null;
  if (!isObject(value)) throw reject(`${what} must be a JSON object`);
  return JSON.stringify(value);
}

function parseObject(text, what) {
  if (text === undefined || text === null) return {};
  let value;
  try {
    value = JSON.parse(text);
  } catch (e) {
    throw reject(`${what} is not a JSON object: ${e}`);
  }
  if (!isObject(value)) throw reject(`${what} is not a JSON object`);
  return value;
}

// -- chat messages -----------------------------------------------------------

/**
 * A chat message with every field set (absent ones null). `opts`: { name,
 * toolCalls (what assistantToolCalls takes), toolCallId, extra (an object or
 * its JSON text) }.
 */
export function chatMessage(role, content = null, opts = {}) {
  let extra = opts.extra ?? null;
  if (isObject(extra)) extra = Object.keys(extra).length ? JSON.stringify(extra) : null;
  return {
    role,
    content: content ?? null,
    name: opts.name ?? null,
    toolCalls: opts.toolCalls == null ? null : opts.toolCalls.map(toolCall),
    toolCallId: opts.toolCallId ?? null,
    extra,
  };
}

// Arguments are JSON text; anything else is written as JSON.
const argumentsText = (a) => (typeof a === "string" ? a : JSON.stringify(a ?? ""));

function toolCall(call) {
  if (Array.isArray(call)) {
    const [id, name, args] = call;
    return { id, kind: "function", function: { name, arguments: argumentsText(args) } };
  }
  if (isObject(call.function)) {
    // Ours ({ id, kind, function }) or OpenAI's ({ id, type, function }).
    return {
      id: String(call.id ?? ""),
      kind: String(call.kind ?? call.type ?? "function"),
      function: { name: String(call.function.name ?? ""), arguments: argumentsText(call.function.arguments) },
    };
  }
  return {
    id: String(call.id ?? ""),
    kind: String(call.kind ?? "function"),
    function: { name: String(call.name ?? ""), arguments: argumentsText(call.arguments) },
  };
}

/**
 * An assistant turn that only calls tools (content null). Each call is an
 * [id, name, arguments] array, or an object: { id, name, arguments }, ours
 * ({ id, kind, function: { name, arguments } }) or OpenAI's (`type`);
 * arguments that are not a string are written as JSON.
 */
export function assistantToolCalls(calls) {
  return chatMessage("assistant", null, { toolCalls: [...calls] });
}

/** The `tool` message answering the tool call `callId`. */
export function toolResult(callId, text) {
  return chatMessage("tool", text, { toolCallId: callId });
}

/**
 * Chat messages as the objects the OpenAI API takes: role, content (null
 * stays null), name, tool_calls and tool_call_id when set, then every key of
 * `extra` not already there (its `content`, a list of content parts, replaces
 * a null content).
 */
export function toOpenAI(messages) {
  return messages.map((m) => {
    const d = { role: m.role, content: m.content ?? null };
    if (m.name != null) d.name = m.name;
    if (m.toolCalls != null) {
      d.tool_calls = m.toolCalls.map((c) => ({
        id: c.id,
        type: c.kind,
        function: { name: c.function.name, arguments: c.function.arguments },
      }));
    }
    if (m.toolCallId != null) d.tool_call_id = m.toolCallId;
    const extra = parseObject(m.extra, "a chat message's extra");
    for (const k of Object.keys(extra)) {
      if (!has(d, k) || (k === "content" && d.content === null)) d[k] = extra[k];
    }
    return d;
  });
}

// { id, type, function: { name, arguments } }, all strings, nothing else.
function plainCall(c) {
  if (!isObject(c)) return false;
  const keys = Object.keys(c).sort().join();
  if (keys !== "function,id,type" || !isObject(c.function)) return false;
  const fn = c.function;
  return (
    Object.keys(fn).sort().join() === "arguments,name" &&
    typeof c.id === "string" && typeof c.type === "string" &&
    typeof fn.name === "string" && typeof fn.arguments === "string"
  );
}

/**
 * OpenAI chat-message objects as chat messages: `type` becomes `kind`, and
 * every key without a field of its own, or with a value that does not fit it
 * (`content` as a list of parts, `tool_calls` not in the plain { id, type,
 * function: { name, arguments } } shape), goes to `extra` as compact JSON text.
 */
export function fromOpenAI(objects) {
  return objects.map((d) => {
    if (!isObject(d) || typeof d.role !== "string") {
      throw reject("an OpenAI chat message is an object with a string `role`");
    }
    const rest = {};
    for (const k of Object.keys(d)) if (!KNOWN.includes(k)) rest[k] = d[k];
    const fields = {};
    for (const key of ["content", "name", "tool_call_id"]) {
      const v = d[key];
      if (typeof v === "string") fields[key] = v;
      else if (has(d, key) && !(key === "content" && v === null)) rest[key] = v;
    }
    if (Array.isArray(d.tool_calls) && d.tool_calls.every(plainCall)) {
      fields.tool_calls = d.tool_calls;
    } else if (has(d, "tool_calls")) {
      rest.tool_calls = d.tool_calls; // kept as it came
    }
    return chatMessage(d.role, fields.content ?? null, {
      name: fields.name,
      toolCalls: fields.tool_calls,
      toolCallId: fields.tool_call_id,
      extra: Object.keys(rest).length ? JSON.stringify(rest) : null,
    });
  });
}

// -- answers -----------------------------------------------------------------

// (msg, text, ctx, opts) or (msg, opts): opts = { text, ctx, messages, model, extra }.
function outgoing(to, msg, text, ctx, opts) {
  if (isObject(text) && ctx === undefined && opts === undefined) {
    opts = text;
    text = opts.text;
    ctx = opts.ctx;
  }
  opts = opts ?? {};
  let messages;
  if (opts.messages != null) {
    if (text != null) throw new TypeError("reply/handoff take a text or opts.messages, not both");
    // Ours carry toolCalls / toolCallId (camelCase); anything else is OpenAI's.
    messages = opts.messages.map((m) => (has(m, "toolCalls") || has(m, "toolCallId") ? m : fromOpenAI([m])[0]));
  } else {
    if (text == null) throw new TypeError("reply/handoff need a text or opts.messages");
    messages = [...msg.messages, chatMessage("assistant", text)];
  }
  return {
    to,
    messages,
    context: objectText(ctx, "context variables"),
    model: opts.model ?? null,
    extra: objectText(opts.extra, "extra"),
  };
}

/**
 * The conversation plus an assistant turn saying `text`, to whoever started
 * it; `ctx` (an object) replaces the context variables. `opts`: { messages
 * (sent instead: chat messages or OpenAI objects), model, extra (an object) },
 * each replacing the incoming one. Also `reply(msg, { text | messages, ctx,
 * model, extra })`.
 */
export function reply(msg, text, ctx, opts) {
  return outgoing({ tag: "reply" }, msg, text, ctx, opts);
}

/** The same as `reply`, handed to `agent`. */
export function handoff(msg, agent, text, ctx, opts) {
  return outgoing({ tag: "agent", val: agent }, msg, text, ctx, opts);
}

/** `throw retry("...")`: deliver the same message again later. */
export function retry(reason) {
  return { tag: "retry", val: reason };
}

/** `throw reject("...")`: dead-letter the message with this reason. */
export function reject(reason) {
  return { tag: "reject", val: reason };
}

// -- reading the message -----------------------------------------------------

/** The context variables as an object (a reject if they are not a JSON object). */
export function context(msg) {
  return parseObject(msg.context, "context");
}

/**
 * The body's other top-level keys (`msg.extra`) as an object; of a chat
 * message, its other keys ({} when it has none).
 */
export function extra(msg) {
  return parseObject(msg.extra, "extra");
}

/** A setting the host's operator granted this agent (or a secret); null if unset. */
export function getConfig(key) {
  return config.get(key) ?? null;
}

/**
 * The content of the last `user` message; null if there is none or its
 * content is not text (a list of parts, in `extra`).
 */
export function lastUserText(msg) {
  for (let i = msg.messages.length - 1; i >= 0; i--) {
    if (msg.messages[i].role === "user") return msg.messages[i].content ?? null;
  }
  return null;
}

/** Level: "trace" | "debug" | "info" | "warn" | "error". */
export function log(level, text) {
  host.log(level, text);
}

export const info = (text) => host.log("info", text);
export const warn = (text) => host.log("warn", text);
