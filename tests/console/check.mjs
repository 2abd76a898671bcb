// Drives the warren console in headless Chromium (Debian's package) and
// checks what a person would look for: the agents table, a dead letter
// (opened, masked, replayed after a confirmation), a three-step
// conversation trace, and a page that keeps up with 100 agents.
// Screenshots of each view go to OUT_DIR.
//
//   node check.mjs BASE_URL OUT_DIR SECRET
//
// Prints one JSON object of what it saw; exits non-zero with the reason
// when something is missing.
import { chromium } from "playwright-core";
import { mkdirSync } from "node:fs";

const [base, outDir, secret] = process.argv.slice(2);
if (!base || !outDir || !secret) {
  console.error("usage: node check.mjs BASE_URL OUT_DIR SECRET");
  process.exit(2);
}
mkdirSync(outDir, { recursive: true });
const executablePath = process.env.CHROMIUM || "/usr/bin/chromium";
const seen = {};

function check(cond, what) {
  if (!cond) throw new Error(`console check failed: ${what}`);
}

const browser = await chromium.launch({ executablePath, args: ["--no-sandbox"] });
try {
  const page = await browser.newPage({ viewport: { width: 1440, height: 900 } });
  const errors = [];
  page.on("pageerror", (e) => errors.push(String(e)));
  page.on("console", (m) => { if (m.type() === "error") errors.push(m.text()); });

  // Agents.
  await page.goto(`${base}/#/agents`);
  await page.waitForSelector('#agents tbody tr[data-agent="agent_a"]');
  await page.waitForSelector('#agents tbody tr[data-agent="agent_b"]');
  await page.waitForFunction(() => document.querySelector("#conn").textContent === "ready");
  const rows = await page.$$eval("#agents tbody tr", (trs) => trs.map((tr) => ({
    name: tr.dataset.agent,
    state: tr.querySelector(".state").textContent,
    consumers: tr.children[3].textContent.trim(),
  })));
  seen.agents = rows;
  check(rows.every((r) => r.state === "running"), `every agent running: ${JSON.stringify(rows)}`);
  await page.waitForSelector('#agents tbody tr[data-agent="chaos"] td.num a');
  await page.screenshot({ path: `${outDir}/agents.png`, fullPage: true });

  // A dead letter: open it, see it masked, replay it.
  await page.click('#agents tbody tr[data-agent="chaos"] td.num a');
  await page.waitForSelector("#dlq-list tbody tr[data-id]");
  const letters = await page.$$eval("#dlq-list tbody tr[data-id]", (trs) => trs.map((tr) => tr.dataset.id));
  seen.dead_letters = letters.length;
  await page.click(`#dlq-list tbody tr[data-id="${letters[0]}"]`);
  await page.waitForSelector("#dlq-detail:not([hidden])");
  const detail = await page.textContent("#dlq-detail");
  check(detail.includes("rejected by agent"), `the dead letter's reason is shown: ${detail.slice(0, 300)}`);
  check(!detail.includes(secret), "the dead letter's secret is masked");
  check(detail.includes('"api_key": "***"'), "the masked key is shown as ***");
  seen.dead_letter_reason = (await page.textContent("#dlq-fields")).match(/rejected by agent[^\n]*/)?.[0];
  await page.screenshot({ path: `${outDir}/dead-letter.png`, fullPage: true });
  await page.click("#dlq-replay-one");
  await page.waitForSelector("#confirm[open]");
  seen.confirmation = await page.textContent("#confirm-text");
  await page.screenshot({ path: `${outDir}/replay-confirm.png` });
  await page.click("#confirm-ok");
  await page.waitForFunction(() => /replayed 1 dead letters/.test(document.querySelector("#notice").textContent));
  seen.replay_notice = await page.textContent("#notice");
  // chaos rejects it again: it is back, replayed once.
  await page.waitForFunction(async (id) => {
    const r = await fetch("/api/dlq/chaos");
    const body = await r.json();
    return body.letters.some((l) => l.id === id && l.replays === 1);
  }, letters[0], { polling: 250, timeout: 15000 });
  seen.replayed_back = true;

  // The three-step trace of the handoff: user → agent_a → agent_b → reply.
  await page.goto(`${base}/#/traces`);
  await page.waitForSelector('#recent tbody tr[data-conv]');
  const recent = await page.$$eval("#recent tbody tr[data-conv]", (trs) => trs.map((tr) => ({
    id: tr.dataset.conv, first: tr.children[1].textContent, hops: Number(tr.children[2].textContent),
  })));
  const handoff = recent.find((r) => r.first === "agent_a" && r.hops === 2);
  check(handoff, `a handoff conversation among the recent ones: ${JSON.stringify(recent)}`);
  await page.click(`#recent tbody tr[data-conv="${handoff.id}"]`);
  await page.waitForSelector("#trace:not([hidden]) #trace-steps li");
  const steps = await page.$$eval("#trace-steps > li .path", (els) => els.map((e) => e.textContent.trim()));
  const flow = await page.$$eval("#trace-flow .node", (els) => els.map((e) => e.textContent));
  seen.trace = { conversation: handoff.id, steps, flow, answer: await page.textContent("#trace-answer-text") };
  check(steps.length === 3, `three steps: ${JSON.stringify(steps)}`);
  check(steps[0] === "user → agent_a" && steps[1] === "agent_a → agent_b" && steps[2] === "agent_b → reply",
    `the steps in order: ${JSON.stringify(steps)}`);
  check(JSON.stringify(flow) === JSON.stringify(["user", "agent_a", "agent_b", "reply"]), `the flow: ${flow}`);
  check(seen.trace.answer.includes("Agent B here"), `the final answer: ${seen.trace.answer}`);
  const bars = await page.$$eval("#trace-timeline .work", (els) => els.map((e) => e.style.width));
  check(bars.length === 2 && bars.every((w) => w.endsWith("%")), `timeline bars drawn: ${bars}`);
  await page.screenshot({ path: `${outDir}/trace.png`, fullPage: true });

  // The host.
  await page.click('nav a[data-view="host"]');
  await page.waitForSelector("#view-host:not([hidden]) #host-fields dd");
  const host = await page.textContent("#host-fields");
  check(host.includes("embedded") || host.includes("RabbitMQ"), `the broker is named: ${host}`);
  await page.screenshot({ path: `${outDir}/host.png`, fullPage: true });

  // Nothing secret anywhere the page showed.
  const everything = await page.evaluate(async () => {
    const parts = [];
    for (const p of ["/api/overview", "/api/conversations", "/api/dlq/chaos"]) parts.push(await (await fetch(p)).text());
    return parts.join("\n") + document.body.innerText;
  });
  check(!everything.includes(secret), "no secret in any answer of the API");

  // 100 agents: the overview answered with 100 rows stays usable.
  const real = await (await page.request.get(`${base}/api/overview`)).json();
  const template = real.agents.find((a) => a.name === "agent_a");
  const many = { ...real, agents: Array.from({ length: 100 }, (_, i) => ({
    ...template, name: `agent_${String(i).padStart(3, "0")}`,
    calls_per_sec: Array.from({ length: 60 }, (_, j) => (i * j) % 17),
    errors_per_sec: Array.from({ length: 60 }, (_, j) => (i + j) % 3),
  })) };
  await page.route("**/api/overview", (route) => route.fulfill({ json: many }));
  const started = Date.now();
  await page.goto(`${base}/#/agents`);
  await page.waitForFunction(() => document.querySelectorAll("#agents tbody tr").length === 100);
  seen.hundred_agents_ms = Date.now() - started;
  // Still answering: three more polls redraw the table, and a click goes through.
  await page.waitForTimeout(6500);
  await page.click('nav a[data-view="traces"]');
  await page.waitForSelector("#view-traces:not([hidden])");
  await page.click('nav a[data-view="agents"]');
  check((await page.$$("#agents tbody tr")).length === 100, "100 rows after polling");
  await page.screenshot({ path: `${outDir}/hundred-agents.png` });
  check(errors.length === 0, `no errors in the page: ${errors.join("; ")}`);
  seen.page_errors = errors.length;
  console.log(JSON.stringify(seen));
} finally {
  await browser.close();
}
