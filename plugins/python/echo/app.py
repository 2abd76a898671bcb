"""Echo: replies with exactly what it received. The benchmark agent."""

import wit_world
from wit_world.imports import types


class WitWorld(wit_world.WitWorld):
    def on_message(self, msg):
        return [types.Outgoing(to=types.Destination_Reply(), messages=msg.messages, context=None)]
