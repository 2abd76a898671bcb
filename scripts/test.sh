#!/usr/bin/env bash
# The test command: rebuild every guest component from source, then run the
# whole test suite against the rebuilt files.
#   WARREN_SKIP_GUEST_BUILD=1  use the committed .wasm files as they are
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v cargo >/dev/null; then
  echo "test: cargo is not installed; install Rust from https://rustup.rs" >&2
  exit 1
fi

if [ "${WARREN_SKIP_GUEST_BUILD:-0}" != 1 ]; then
  echo "== building guest components from source"
  scripts/build-guests.sh
fi

echo "== pika 1.3 for the original client in tests/interop.rs"
venv=target/tools/venv
[ -x "$venv/bin/python" ] || python3 -m venv "$venv"
"$venv/bin/python" -c 'import pika' 2>/dev/null || "$venv/bin/pip" install -q pika==1.3.2

echo "== Chromium and playwright-core for the console test (tests/console.rs)"
if ! command -v chromium >/dev/null; then
  sudo=""
  [ "$(id -u)" = 0 ] || sudo="sudo"
  export DEBIAN_FRONTEND=noninteractive
  $sudo apt-get install -y -q chromium >/dev/null 2>&1 ||
    { $sudo apt-get update -q >/dev/null && $sudo apt-get install -y -q chromium >/dev/null; } ||
    echo "test: could not install chromium (apt-get install chromium); the console test will fail" >&2
fi
[ -d tests/console/node_modules/playwright-core ] ||
  (cd tests/console && npm ci --silent --no-audit --no-fund)

echo "== RabbitMQ on 127.0.0.1:5672"
scripts/ensure-rabbitmq.sh

echo "== cargo test"
cargo test --locked "$@"
