#!/usr/bin/env node
// Builds a JavaScript agent that makes HTTP requests (warren_http.js) into a
// component of the world `agent-http`, with jco's QuickJS backend.
//
//   node build_http_agent.mjs app.js --wit wit -o my_agent.wasm [--jco node_modules/.bin/jco]
//
// `--wit` is warren's wit/ folder (agent.wit, http.wit and the WASI packages
// in deps/); `--jco` defaults to the jco that Node finds from the current
// folder. The agent's modules are the .js/.mjs files beside app.js.
//
// Why not `jco componentize -n agent-http`: componentize-qjs (0.4.5, jco
// 1.35) runs the agent's top level once at build time and snapshots it
// (Wizer). For that run it links the real WASI of wasmtime and stubs every
// other import with traps, and the stub of `wasi:http/types` gets resource
// types of its own, not the real `wasi:io/streams` ones: the build fails with
// "instance export `input-stream` has the wrong type: mismatched resource
// types". So this script
//   1. builds the agent against a renamed copy of wasi:http, wasi:io and
//      wasi:clocks (`wasi-shim:*`, the same WIT), which the snapshot run stubs
//      consistently: the agent's imports of `wasi:http/...` (and of
//      `wasi:io/...`, `wasi:clocks/monotonic-clock`) are renamed to match;
//   2. wraps that component in an outer one that imports the real WASI
//      packages and hands them to the inner component for both names
//      (`wasi-shim:io/streams` is the real `wasi:io/streams`, and so on).
// The result imports what a componentize-py `agent-http` build imports
// (wasi:http@0.2.12 with wasi:io@0.2.12) and exports `on-message`.
import { spawnSync } from "node:child_process";
import { existsSync, mkdirSync, mkdtempSync, readFileSync, readdirSync, realpathSync, rmSync, writeFileSync } from "node:fs";
import { createRequire } from "node:module";
import { tmpdir } from "node:os";
import { basename, dirname, extname, join, resolve } from "node:path";
import { pathToFileURL } from "node:url";

const SHIM = "wasi-shim";
const RENAMED = ["io", "clocks", "http"]; // wasi:http and the packages it uses
const INNER_WORLD = "agent-http-qjs-inner";
const OUTER_WORLD = "agent-http-qjs-outer";

function usage(why) {
  console.error(`build_http_agent: ${why}\nusage: node build_http_agent.mjs APP.js --wit WIT_DIR -o OUT.wasm [--jco JCO]`);
  process.exit(2);
}

function parseArgs(argv) {
  const opts = { app: null, wit: null, out: null, jco: null, keep: false };
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    const value = () => (i + 1 < argv.length ? argv[++i] : usage(`${a} needs a value`));
    if (a === "--wit" || a === "-w") opts.wit = value();
    else if (a === "-o" || a === "--out") opts.out = value();
    else if (a === "--jco") opts.jco = value();
    else if (a === "--keep") opts.keep = true; // keep the staging folder (debugging)
    else if (a.startsWith("-")) usage(`unknown option ${a}`);
    else if (opts.app === null) opts.app = a;
    else usage(`unexpected argument ${a}`);
  }
  if (!opts.app || !opts.wit || !opts.out) usage("APP.js, --wit and -o are required");
  return opts;
}

// The jco CLI script: --jco (a node_modules/.bin/jco link or jco.js), else the
// @bytecodealliance/jco that Node resolves from the current folder.
function findJco(given) {
  if (given) return realpathSync(given);
  try {
    const api = createRequire(join(process.cwd(), "noop.js")).resolve("@bytecodealliance/jco"); // dist/api.js
    return join(dirname(api), "jco.js");
  } catch {
    usage("cannot find @bytecodealliance/jco from here: install it (npm install) or pass --jco");
  }
}

// Rename wasi:io / wasi:clocks / wasi:http in WIT text.
function renameWit(text) {
  return text.replace(new RegExp(`\\bwasi:(${RENAMED.join("|")})([/@])`, "g"), `${SHIM}:$1$2`);
}

// Rename the agent's imports of the same packages (string literals only).
function renameJs(text) {
  return text.replace(/(["'])wasi:(http|io)\//g, `$1${SHIM}:$2/`).replace(/(["'])wasi:clocks\/monotonic-clock/g, `$1${SHIM}:clocks/monotonic-clock`);
}

function stageWit(witDir, stage) {
  const wit = join(stage, "wit");
  mkdirSync(join(wit, "deps"), { recursive: true });
  let pkg = null;
  for (const f of readdirSync(witDir)) {
    if (extname(f) !== ".wit") continue;
    const text = readFileSync(join(witDir, f), "utf8");
    writeFileSync(join(wit, f), text);
    pkg ??= /^\s*package\s+([^;]+);/m.exec(text)?.[1];
  }
  if (!pkg) throw new Error(`no WIT package in ${witDir}`);
  const deps = join(witDir, "deps");
  if (!existsSync(join(deps, "http.wit"))) throw new Error(`${deps}/http.wit missing: --wit must be warren's wit/ folder`);
  let httpVersion = null;
  for (const f of readdirSync(deps)) {
    if (extname(f) !== ".wit") continue;
    const text = readFileSync(join(deps, f), "utf8");
    writeFileSync(join(wit, "deps", f), text);
    const name = /^\s*package\s+wasi:([a-z-]+)@([^;\s]+)\s*;/m.exec(text);
    if (name && RENAMED.includes(name[1])) {
      writeFileSync(join(wit, "deps", `${SHIM}-${f}`), renameWit(text));
      if (name[1] === "http") httpVersion = name[2];
    }
  }
  if (!httpVersion) throw new Error(`no wasi:http package in ${deps}`);
  writeFileSync(
    join(wit, "qjs-http.wit"),
    `package ${pkg};\n\n// Written by build_http_agent.mjs.\nworld ${INNER_WORLD} {\n  include agent;\n  import ${SHIM}:http/outgoing-handler@${httpVersion};\n}\n`,
  );
  return { wit, pkg, httpVersion };
}

function stageJs(app, stage) {
  const src = join(stage, "src");
  mkdirSync(src);
  const dir = dirname(app);
  for (const f of readdirSync(dir)) {
    if (![".js", ".mjs"].includes(extname(f))) continue;
    writeFileSync(join(src, f), renameJs(readFileSync(join(dir, f), "utf8")));
  }
  return join(src, basename(app));
}

// The top-level imports of a component, as wasm-tools prints them:
// [[name, "instance" | "type", its identifier or index]].
const IMPORT = /^  \(import "([^"]+)" \((instance|type)(?: (\$(?:"[^"]*"|[^\s()]+)))?(?: \(;(\d+);\))?/gm;
const imports = (wat) => [...wat.matchAll(IMPORT)].map((m) => [m[1], m[2], m[3] ?? m[4] ?? null]);
// The names of its top-level function exports.
const EXPORT = /^  \(export (?:\$(?:"[^"]*"|[^\s()]+) )?(?:\(;\d+;\) )?"([^"]+)" \(func /gm;

async function wrap(jcoApi, inner, { wit }) {
  const innerWat = await jcoApi.print(inner);
  const innerImports = imports(innerWat);
  // The outer world: agent-http plus the inner component's other imports
  // (the WASI that QuickJS itself uses).
  const extra = innerImports.filter(([n, k]) => k === "instance" && n.startsWith("wasi:")).map(([n]) => `  import ${n};`);
  writeFileSync(join(wit, "qjs-http-outer.wit"), readFileSync(join(wit, "qjs-http.wit"), "utf8").split("\n")[0] + `\n\nworld ${OUTER_WORLD} {\n  include agent-http;\n${extra.join("\n")}\n}\n`);
  const dummy = await jcoApi.componentNew(await jcoApi.componentEmbed({ dummy: true, witPath: wit, world: OUTER_WORLD }));
  const dummyWat = (await jcoApi.print(dummy)).split("\n");
  if (!dummyWat[0].startsWith("(component")) throw new Error("unexpected WAT from jco print");
  const end = dummyWat.findIndex((l) => l.startsWith("  (core module"));
  const header = dummyWat.slice(1, end < 0 ? dummyWat.length - 1 : end).join("\n");
  const outer = new Map(imports(header).map(([n, k, id]) => [n, [k, id]]));
  const withs = innerImports.map(([name, kind]) => {
    const from = name.startsWith(`${SHIM}:`) ? `wasi:${name.slice(SHIM.length + 1)}` : name;
    const [k, id] = outer.get(from) ?? [];
    if (k !== kind || !id) throw new Error(`the outer component has no ${kind} import \`${from}\` for \`${name}\``);
    return `    (with "${name}" (${kind} ${id}))`;
  });
  const exports = [...innerWat.matchAll(EXPORT)].map((m) => m[1]).filter((n) => n !== "init");
  if (!exports.includes("on-message")) throw new Error("the agent exports no on-message");
  const body = innerWat.trimEnd();
  const nl = body.indexOf("\n");
  if (!body.startsWith("(component") || !body.endsWith(")")) throw new Error("unexpected WAT from jco print");
  const wat = [
    "(component",
    header,
    `  (component $agent${body.slice(nl, -1)}  )`,
    "  (instance $agent-instance (instantiate $agent",
    ...withs,
    "  ))",
    ...exports.flatMap((n, i) => [`  (alias export $agent-instance "${n}" (func $export-${i}))`, `  (export "${n}" (func $export-${i}))`]),
    ")",
  ].join("\n");
  return jcoApi.parse(wat);
}

// jco's wasm-tools reads WIT through the WASI shim of jco-transpile, which
// preopens no folder by default (jco 1.35: `jco embed --wit` fails with
// "No such file or directory" too): give it the root.
async function preopenRoot(jco) {
  try {
    const wasmTools = createRequire(jco).resolve("@bytecodealliance/jco-transpile/wasm-tools");
    const fs = await import(pathToFileURL(createRequire(wasmTools).resolve("@bytecodealliance/preview2-shim/filesystem")).href);
    fs._setPreopens?.({ "/": "/" });
  } catch {
    // Another layout: hope its default preopens do.
  }
}

const opts = parseArgs(process.argv.slice(2));
const jco = findJco(opts.jco);
const jcoApi = await import(pathToFileURL(join(dirname(jco), "api.js")).href);
await preopenRoot(jco);
const stage = mkdtempSync(join(tmpdir(), "warren-qjs-http-"));
try {
  const witStage = stageWit(resolve(opts.wit), stage);
  const app = stageJs(resolve(opts.app), stage);
  const innerPath = join(stage, "inner.wasm");
  const run = spawnSync(
    process.execPath,
    [jco, "componentize", app, "--backend", "qjs", "--backend-qjs-disable-async", "-w", witStage.wit, "-n", INNER_WORLD, "-o", innerPath],
    { stdio: ["ignore", "ignore", "inherit"] },
  );
  if (run.status !== 0) throw new Error(`jco componentize failed (${run.status ?? run.signal})`);
  writeFileSync(opts.out, await wrap(jcoApi, readFileSync(innerPath), witStage));
} catch (e) {
  console.error(`build_http_agent: ${e && e.message ? e.message : e}`);
  process.exitCode = 1;
} finally {
  if (opts.keep) console.error(`build_http_agent: staged in ${stage}`);
  else rmSync(stage, { recursive: true, force: true });
}
