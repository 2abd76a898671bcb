// {{name}}: a warren agent. Replies to the user, or hands the conversation
// to another agent when asked ("transfer to AGENT").
import { context, handoff, info, lastUserText, reject, reply } from "./warren_agent.js";

export function onMessage(msg) {
  const text = lastUserText(msg);
  if (text === null) throw reject("no user message");
  if (text.startsWith("transfer to ")) {
    const agent = text.slice("transfer to ".length);
    info(`handing ${msg.conversationId} to ${agent}`);
    return [handoff(msg, agent, `{{name}}: transferring you to ${agent}.`)];
  }
  let user = context(msg).user;
  if (typeof user !== "string") user = "there";
  return [reply(msg, `Hello ${user}, {{name}} here. You said: ${text}`)];
}
