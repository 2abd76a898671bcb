"""The original SwarmRabbitMQ client, as far as the broker can tell.

What it does over AMQP is exactly what the original client (Python, pika 1.3)
does: on connect it declares `agent_exchange` with pika's defaults (topic,
non-durable); `register_agent` declares the agent queue passively and, only
if that fails, durable with `x-message-ttl` 3600000 and `x-queue-type`
classic, then binds it to `amq.topic`; `run()` publishes the Swarm `run`
body (`max_turns` = float("inf"), written by `json.dumps` as `Infinity`) to
`agent_exchange` with delivery_mode 2 and nothing else: no reply_to, no
message_id, no headers. `debug_queues()` returns the original shape.

Used by tests/interop.rs:
    python swarm_client.py URL setup         # connect, register Agent A and Agent B
    python swarm_client.py URL run N         # the same, then N run() calls to Agent A
    python swarm_client.py URL debug         # print debug_queues() as JSON
"""

import json
import sys

import pika

EXCHANGE = "agent_exchange"


def normalise(name):
    return name.lower().replace(" ", "_")


class SwarmClient:
    def __init__(self, url):
        self.connection = pika.BlockingConnection(pika.URLParameters(url))
        self.channel = self.connection.channel()
        self.channel.exchange_declare(exchange=EXCHANGE, exchange_type="topic")
        self.agents = {}

    def register_agent(self, name):
        queue = f"agent_{normalise(name)}_queue"
        routing_key = f"agent.{normalise(name)}"
        try:
            self.channel.queue_declare(queue=queue, passive=True)
        except pika.exceptions.ChannelClosedByBroker:
            self.channel = self.connection.channel()
            self.channel.queue_declare(
                queue=queue,
                durable=True,
                arguments={"x-message-ttl": 3600000, "x-queue-type": "classic"},
            )
        self.channel.queue_bind(exchange="amq.topic", queue=queue, routing_key=routing_key)
        self.agents[name] = (queue, routing_key)

    def run(self, agent, messages, context_variables=None, model_override=None,
            stream=False, debug=False, max_turns=float("inf"), execute_tools=True):
        body = {
            "messages": messages,
            "context_variables": context_variables or {},
            "model": model_override,
            "stream": stream,
            "debug": debug,
            "max_turns": max_turns,
            "execute_tools": execute_tools,
        }
        self.channel.basic_publish(
            exchange=EXCHANGE,
            routing_key=f"agent.{normalise(agent)}",
            body=json.dumps(body),
            properties=pika.BasicProperties(delivery_mode=2),
        )

    def debug_queues(self):
        out = {}
        for name, (queue, routing_key) in self.agents.items():
            q = self.channel.queue_declare(queue=queue, passive=True)
            out[name] = {
                "queue_name": queue,
                "message_count": q.method.message_count,
                "consumer_count": q.method.consumer_count,
                "routing_key": routing_key,
                "status": "active" if q.method.consumer_count > 0 else "inactive",
            }
        return out


def main():
    url, verb = sys.argv[1], sys.argv[2]
    client = SwarmClient(url)
    client.register_agent("Agent A")
    client.register_agent("Agent B")
    if verb == "run":
        for i in range(int(sys.argv[3])):
            client.run(
                "Agent A",
                [{"role": "user", "content": "I want to talk to agent B."}],
                {"user": f"seed-{i}"},
            )
    elif verb == "debug":
        print(json.dumps(client.debug_queues()))
    client.connection.close()
    print(f"swarm client: {verb} done", file=sys.stderr)


if __name__ == "__main__":
    main()
