#!/usr/bin/env bash
# A 3-node RabbitMQ cluster on this machine, beside the default broker, for
# the cluster tests and for trying warren against a cluster by hand.
#
#   scripts/rabbitmq-cluster.sh up          start the nodes and join them (about a minute)
#   scripts/rabbitmq-cluster.sh down        stop every node and delete its data
#   scripts/rabbitmq-cluster.sh stop N      stop node N (1-3): its Erlang VM goes, as a lost machine
#   scripts/rabbitmq-cluster.sh start N     start node N again (it rejoins)
#   scripts/rabbitmq-cluster.sh status      which nodes run; their AMQP URLs
#
# Node N is warren-cN@localhost, AMQP on 127.0.0.1:570N (guest/guest, which
# RabbitMQ allows from loopback), Erlang distribution on 2570N, data and logs
# under $WARREN_CLUSTER_DIR (default /tmp/warren-cluster). Nodes run as the
# `rabbitmq` user with its Erlang cookie, as the default broker does.
set -euo pipefail

BASE=${WARREN_CLUSTER_DIR:-/tmp/warren-cluster}
NODES=(1 2 3)

node() { echo "warren-c$1@localhost"; }
port() { echo $((5700 + $1)); }

as_rabbitmq() { runuser -u rabbitmq -- env HOME=/var/lib/rabbitmq "$@"; }

ctl() {
  local n=$1
  shift
  as_rabbitmq rabbitmqctl -n "$(node "$n")" "$@"
}

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

start_node() {
  local n=$1 dir="$BASE/c$1"
  mkdir -p "$dir/mnesia" "$dir/log"
  printf 'listeners.tcp.local = 127.0.0.1:%s\nloopback_users = none\n' "$(port "$n")" >"$dir/rabbitmq.conf"
  : >"$dir/enabled_plugins"
  echo "[]." >"$dir/enabled_plugins"
  chown -R rabbitmq:rabbitmq "$BASE"
  as_rabbitmq \
    RABBITMQ_NODENAME="$(node "$n")" \
    RABBITMQ_NODE_IP_ADDRESS=127.0.0.1 \
    RABBITMQ_NODE_PORT="$(port "$n")" \
    RABBITMQ_DIST_PORT=$((25700 + n)) \
    RABBITMQ_MNESIA_BASE="$dir/mnesia" \
    RABBITMQ_LOG_BASE="$dir/log" \
    RABBITMQ_PID_FILE="$dir/pid" \
    RABBITMQ_CONFIG_FILE="$dir/rabbitmq.conf" \
    RABBITMQ_ENABLED_PLUGINS_FILE="$dir/enabled_plugins" \
    rabbitmq-server -detached >/dev/null 2>&1 || true
}

wait_node() {
  local n=$1
  for _ in $(seq 1 90); do
    if ctl "$n" await_startup >/dev/null 2>&1 && port_open "$(port "$n")"; then
      return 0
    fi
    sleep 1
  done
  echo "rabbitmq-cluster: node $n did not start (logs in $BASE/c$n/log)" >&2
  return 1
}

case "${1:-}" in
  up)
    for n in "${NODES[@]}"; do start_node "$n"; done
    for n in "${NODES[@]}"; do wait_node "$n"; done
    for n in 2 3; do
      if ! ctl "$n" cluster_status 2>/dev/null | grep -q "$(node 1)"; then
        ctl "$n" stop_app >/dev/null
        ctl "$n" join_cluster "$(node 1)" >/dev/null
        ctl "$n" start_app >/dev/null
      fi
    done
    echo "rabbitmq-cluster: up: amqp://guest:guest@127.0.0.1:5701/ 5702 5703"
    ;;
  down)
    for n in "${NODES[@]}"; do ctl "$n" stop >/dev/null 2>&1 || true; done
    rm -rf "$BASE"
    echo "rabbitmq-cluster: down"
    ;;
  stop)
    ctl "${2:?node number}" stop >/dev/null
    echo "rabbitmq-cluster: node $2 stopped"
    ;;
  start)
    start_node "${2:?node number}"
    wait_node "$2"
    echo "rabbitmq-cluster: node $2 started"
    ;;
  status)
    for n in "${NODES[@]}"; do
      if port_open "$(port "$n")"; then s=up; else s=down; fi
      echo "node $n $(node "$n") amqp://guest:guest@127.0.0.1:$(port "$n")/ $s"
    done
    ;;
  *)
    sed -n '2,14p' "$0" >&2
    exit 2
    ;;
esac
