// Write a warren agent in JavaScript (jco componentize, QuickJS backend).
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
// { tag, val } objects; `throw retry(...)` / `throw reject(...)` is the failure.

import host from "warren:agent/host@0.1.0";
import config from "warren:agent/config@0.1.0";

function withTurn(msg, text) {
  return [...msg.messages, { role: "assistant", content: text }];
}

function contextText(ctx) {
  if (ctx === undefined || ctx === null) return null;
  if (typeof ctx !== "object" || Array.isArray(ctx)) {
    throw reject("context variables must be a JSON object");
  }
  return JSON.stringify(ctx);
}

/** The conversation plus an assistant turn, to whoever started it. */
export function reply(msg, text, ctx) {
  return { to: { tag: "reply" }, messages: withTurn(msg, text), context: contextText(ctx) };
}

/** The conversation plus an assistant turn, handed to `agent` (new context if given). */
export function handoff(msg, agent, text, ctx) {
  return { to: { tag: "agent", val: agent }, messages: withTurn(msg, text), context: contextText(ctx) };
}

/** `throw retry("...")`: deliver the same message again later. */
export function retry(reason) {
  return { tag: "retry", val: reason };
}

/** `throw reject("...")`: dead-letter the message with this reason. */
export function reject(reason) {
  return { tag: "reject", val: reason };
}

/** The context variables as an object (a reject if they are not a JSON object). */
export function context(msg) {
  let value;
  try {
    value = JSON.parse(msg.context);
  } catch (e) {
    throw reject(`context is not a JSON object: ${e}`);
  }
  if (typeof value !== "object" || value === null || Array.isArray(value)) {
    throw reject("context is not a JSON object");
  }
  return value;
}

/** A setting the host's operator granted this agent (or a secret); null if unset. */
export function getConfig(key) {
  return config.get(key) ?? null;
}

export function lastUserText(msg) {
  for (let i = msg.messages.length - 1; i >= 0; i--) {
    if (msg.messages[i].role === "user") return msg.messages[i].content;
  }
  return null;
}

/** Level: "trace" | "debug" | "info" | "warn" | "error". */
export function log(level, text) {
  host.log(level, text);
}

export const info = (text) => host.log("info", text);
export const warn = (text) => host.log("warn", text);
