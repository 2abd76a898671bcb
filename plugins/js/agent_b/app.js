// Agent B: answers, greeting the user by the `user` (or `name`) context
// variable. (Same behaviour as plugins/agent_b.)
import { context, info, reply } from "./warren_agent.js";

export function onMessage(msg) {
  const ctx = context(msg);
  let user = ctx.user;
  if (typeof user !== "string") user = ctx.name;
  if (typeof user !== "string") user = "there";
  const via = msg.sender != null ? ` (${msg.sender} sent you over)` : "";
  info(`answering ${user} in conversation ${msg.conversationId}`);
  return [reply(msg, `Hello ${user}, Agent B here${via}. How can I help you?`)];
}
