// Agent A: triage. Hands the conversation off to Agent B when the user asks
// for it, and otherwise answers by itself. (Same behaviour as plugins/agent_a.)
import { context, handoff, info, lastUserText, reject, reply } from "./warren_agent.js";

export function onMessage(msg) {
  const last = lastUserText(msg);
  if (last === null) throw reject("no user message to triage");
  const t = last.toLowerCase();
  if (t.includes("agent b") || t.includes("agent_b")) {
    const ctx = context(msg);
    ctx.triaged_by = "agent_a";
    info(`handing conversation ${msg.conversationId} off to agent_b`);
    return [handoff(msg, "agent_b", "Agent A: transferring you to Agent B.", ctx)];
  }
  return [reply(msg, `Agent A here. You said: "${last}". Ask for Agent B and I will hand you over.`)];
}
