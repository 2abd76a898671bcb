// Echo: replies with exactly what it received (every chat message whole,
// tool calls included; model and top-level keys kept). The benchmark agent.
export function onMessage(msg) {
  return [{ to: { tag: "reply" }, messages: msg.messages, context: null, model: null, extra: null }];
}
