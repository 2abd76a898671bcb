"""Agent B: answers, greeting the user by the `user` (or `name`) context
variable. (Same behaviour as plugins/agent_b.)"""

import wit_world
from warren_agent import context, info, reply


class WitWorld(wit_world.WitWorld):
    def on_message(self, msg):
        ctx = context(msg)
        user = ctx.get("user")
        if not isinstance(user, str):
            user = ctx.get("name")
        if not isinstance(user, str):
            user = "there"
        via = f" ({msg.sender} sent you over)" if msg.sender is not None else ""
        info(f"answering {user} in conversation {msg.conversation_id}")
        return [reply(msg, f"Hello {user}, Agent B here{via}. How can I help you?")]
