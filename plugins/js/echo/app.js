// Echo: replies with exactly what it received. The benchmark agent.
export function onMessage(msg) {
  return [{ to: { tag: "reply" }, messages: msg.messages, context: null }];
}
