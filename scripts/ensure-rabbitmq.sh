#!/usr/bin/env bash
# Makes sure RabbitMQ answers on 127.0.0.1:5672 (the RabbitMQ tests need it):
# starts it when it is installed but down, installs it with apt when absent.
set -euo pipefail

port_open() { (exec 3<>/dev/tcp/127.0.0.1/5672) 2>/dev/null; }

port_open && exit 0

if ! command -v rabbitmq-server >/dev/null; then
  if command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
    echo "ensure-rabbitmq: installing rabbitmq-server with apt" >&2
    apt-get update -qq >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq rabbitmq-server >&2
  else
    echo "ensure-rabbitmq: RabbitMQ is not installed; install rabbitmq-server (e.g. apt-get install rabbitmq-server)" >&2
    exit 1
  fi
fi

echo "ensure-rabbitmq: starting rabbitmq-server" >&2
rabbitmq-server -detached >&2 || true
for _ in $(seq 1 60); do
  port_open && { echo "ensure-rabbitmq: RabbitMQ is up" >&2; exit 0; }
  sleep 1
done
echo "ensure-rabbitmq: RabbitMQ did not come up on 127.0.0.1:5672 within 60 s" >&2
exit 1
