"""Echo: replies with exactly what it received (every chat message whole,
tool calls included; model and top-level keys kept). The benchmark agent."""

import wit_world
from wit_world.imports import types


class WitWorld(wit_world.WitWorld):
    def on_message(self, msg):
        return [types.Outgoing(to=types.Destination_Reply(), messages=msg.messages, context=None,
                               model=None, extra=None)]
