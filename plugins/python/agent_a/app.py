"""Agent A: triage. Hands the conversation off to Agent B when the user asks
for it, and otherwise answers by itself. (Same behaviour as plugins/agent_a.)"""

import wit_world
from warren_agent import context, handoff, info, last_user_text, reject, reply


class WitWorld(wit_world.WitWorld):
    def on_message(self, msg):
        last = last_user_text(msg)
        if last is None:
            raise reject("no user message to triage")
        t = last.lower()
        if "agent b" in t or "agent_b" in t:
            ctx = context(msg)
            ctx["triaged_by"] = "agent_a"
            info(f"handing conversation {msg.conversation_id} off to agent_b")
            return [handoff(msg, "agent_b", "Agent A: transferring you to Agent B.", ctx)]
        return [reply(msg, f'Agent A here. You said: "{last}". Ask for Agent B and I will hand you over.')]
