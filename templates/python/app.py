"""{{name}}: a warren agent. Replies to the user, or hands the conversation
to another agent when asked ("transfer to AGENT")."""

import wit_world
from warren_agent import context, handoff, info, last_user_text, reject, reply


class WitWorld(wit_world.WitWorld):
    def on_message(self, msg):
        text = last_user_text(msg)
        if text is None:
            raise reject("no user message")
        if text.startswith("transfer to "):
            agent = text[len("transfer to "):]
            info(f"handing {msg.conversation_id} to {agent}")
            return [handoff(msg, agent, f"{{name}}: transferring you to {agent}.")]
        user = context(msg).get("user")
        if not isinstance(user, str):
            user = "there"
        return [reply(msg, f"Hello {user}, {{name}} here. You said: {text}")]
