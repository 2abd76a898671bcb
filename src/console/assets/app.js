// warren console: polls the host's JSON API and draws four views (agents,
// dead letters, traces, host). No framework, no build step.
"use strict";

const POLL_MS = 2000;
const $ = (sel) => document.querySelector(sel);
const state = { overview: null, dlqAgent: null, letters: [], letter: null, trace: null };

function esc(v) {
  return String(v ?? "").replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" }[c]));
}
function ms(v) {
  if (v === null || v === undefined) return "–";
  return v >= 1000 ? (v / 1000).toFixed(2) + " s" : v.toFixed(v < 10 ? 2 : 1) + " ms";
}
function bytes(n) {
  if (!n) return "–";
  const units = ["B", "KiB", "MiB", "GiB"];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) { n /= 1024; i++; }
  return n.toFixed(i ? 1 : 0) + " " + units[i];
}
function when(msSinceEpoch) {
  if (!msSinceEpoch) return "–";
  return new Date(msSinceEpoch).toLocaleTimeString([], { hour12: false }) + "." + String(msSinceEpoch % 1000).padStart(3, "0");
}
function rate(series) {
  const last = series.length ? series[series.length - 1] : 0;
  return last >= 10 ? last.toFixed(0) : last.toFixed(1);
}
// One bar per sample (5 s each), the newest on the right; 60 fit.
function spark(series, kind) {
  const max = Math.max(...series, 0.0001);
  const w = 90 / 60;
  const bars = series.slice(-60).map((v, i, all) => {
    const h = v > 0 ? Math.max((v / max) * 20, 1.5) : 0.5;
    const x = 90 - (all.length - i) * w;
    return `<rect x="${x.toFixed(2)}" y="${(21 - h).toFixed(2)}" width="${(w * 0.8).toFixed(2)}" height="${h.toFixed(2)}"/>`;
  }).join("");
  return `<svg class="spark ${kind}" viewBox="0 0 90 22" preserveAspectRatio="none"><title>per second, every 5 s</title>${bars}</svg>`;
}

let noticeTimer = null;
function notice(text, bad) {
  const n = $("#notice");
  n.textContent = text;
  n.className = bad ? "bad" : "";
  n.hidden = false;
  clearTimeout(noticeTimer);
  noticeTimer = setTimeout(() => { n.hidden = true; }, 6000);
}

async function api(path, options) {
  const r = await fetch(path, options);
  let body = null;
  try { body = await r.json(); } catch (_) { /* not JSON */ }
  if (!r.ok) throw new Error((body && body.error) || `${r.status} ${r.statusText}`);
  return body;
}

function confirmAction(text) {
  const dialog = $("#confirm");
  $("#confirm-text").textContent = text;
  return new Promise((resolve) => {
    dialog.addEventListener("close", () => resolve(dialog.returnValue === "ok"), { once: true });
    dialog.showModal();
  });
}

async function change(agent, op, id) {
  const what = id ? `dead letter ${id}` : `all dead letters of ${agent}`;
  const verb = op === "replay" ? "Replay" : "Purge (delete for good)";
  if (!(await confirmAction(`${verb} ${what}?`))) return;
  try {
    const r = await api(`/api/dlq/${encodeURIComponent(agent)}/${op}`, {
      method: "POST",
      headers: { "Content-Type": "application/json", "X-Warren-Console": "1" },
      body: JSON.stringify(id ? { id } : {}),
    });
    notice(r.message);
    state.letter = null;
    await loadLetters();
  } catch (e) {
    notice(`${verb} failed: ${e.message}`, true);
  }
}

// ---- agents and host -------------------------------------------------------

function renderAgents() {
  const o = state.overview;
  if (!o) return;
  $("#agents-count").textContent = `${o.agents.length} on ${o.host.id}`;
  const err = $("#agents-error");
  err.hidden = !o.error;
  err.textContent = o.error || "";
  const rows = o.agents.map((a) => {
    const version = a.version ? `${esc(a.contract || "")} <code title="${esc(a.file)}">${esc(a.version.slice(0, 10))}</code>` : "–";
    return `<tr data-agent="${esc(a.name)}">
      <td><strong>${esc(a.name)}</strong>${a.status !== a.state ? `<div class="muted">${esc(a.status)}</div>` : ""}</td>
      <td><span class="state ${esc(a.state.replace(" ", "-"))}">${esc(a.state)}</span></td>
      <td>${version}</td>
      <td class="num">${a.consumers}</td>
      <td class="num">${a.queued}${a.delayed ? ` <span class="muted">+${a.delayed} delayed</span>` : ""}</td>
      <td><div class="rate">${spark(a.calls_per_sec, "calls")}<span>${rate(a.calls_per_sec)}</span></div></td>
      <td><div class="rate">${spark(a.errors_per_sec, "errors")}<span>${rate(a.errors_per_sec)}</span></div></td>
      <td class="num">${ms(a.p50_ms)} / ${ms(a.p99_ms)}</td>
      <td class="num">${bytes(a.peak_memory_bytes)}</td>
      <td class="num">${a.dead_letters ? `<a href="#/dlq/${encodeURIComponent(a.name)}">${a.dead_letters}</a>` : "0"}</td>
      <td class="err">${esc(a.last_error || "")}</td>
    </tr>`;
  });
  $("#agents tbody").innerHTML = rows.join("");
}

function renderHost() {
  const o = state.overview;
  if (!o) return;
  const h = o.host;
  const conn = $("#conn");
  conn.textContent = h.connected ? (h.ready ? "ready" : "connected, not ready") : "broker disconnected";
  conn.className = "pill " + (h.connected && h.ready ? "up" : "down");
  const up = h.uptime_secs;
  const uptime = `${Math.floor(up / 3600)}h ${Math.floor((up % 3600) / 60)}m ${up % 60}s`;
  const fields = [
    ["Host", h.id], ["Broker", h.broker], ["Node", h.node || "–"], ["Connection", h.connected ? "up" : "down"],
    ["Failovers", h.failovers], ["Uptime", uptime], ["Build", `warren ${h.version}`], ["Contracts", h.contracts],
    ["Trace hops kept", h.trace_hops || "off"], ["Ready", h.ready ? "yes" : "no"],
  ];
  $("#host-fields").innerHTML = fields.map(([k, v]) => `<dt>${esc(k)}</dt><dd>${esc(v)}</dd>`).join("");
  $("#host-problems").innerHTML = h.problems.length ? h.problems.map((p) => `<li class="error">${esc(p)}</li>`).join("") : `<li class="muted">none</li>`;
  const select = $("#dlq-agent");
  const names = o.agents.map((a) => a.name);
  if (select.options.length !== names.length || names.some((n, i) => select.options[i].value !== n)) {
    select.innerHTML = names.map((n) => `<option value="${esc(n)}">${esc(n)}</option>`).join("");
  }
  if (state.dlqAgent) select.value = state.dlqAgent;
}

async function poll() {
  try {
    state.overview = await api("/api/overview");
    renderAgents();
    renderHost();
  } catch (e) {
    const conn = $("#conn");
    conn.textContent = `host unreachable: ${e.message}`;
    conn.className = "pill down";
  }
  if (currentView() === "traces" && !state.trace) loadRecent();
}

// ---- dead letters ----------------------------------------------------------

async function loadLetters() {
  const agent = state.dlqAgent;
  if (!agent) return;
  try {
    const r = await api(`/api/dlq/${encodeURIComponent(agent)}`);
    state.letters = r.letters;
  } catch (e) {
    state.letters = [];
    notice(`reading the dead letters of ${agent}: ${e.message}`, true);
  }
  renderLetters();
}

function renderLetters() {
  const rows = state.letters.map((l) => `<tr class="clickable${state.letter === l.id ? " selected" : ""}" data-id="${esc(l.id)}">
      <td><code>${esc(l.id)}</code></td><td><code>${esc(l.conversation_id)}</code></td>
      <td class="num">${l.attempts}</td><td class="num">${l.replays}</td>
      <td>${l.first_failure_ms ? esc(new Date(l.first_failure_ms).toISOString()) : "–"}</td>
      <td class="err">${esc(l.reason)}</td></tr>`);
  $("#dlq-list tbody").innerHTML = rows.join("");
  $("#dlq-empty").hidden = state.letters.length > 0;
  const l = state.letters.find((x) => x.id === state.letter);
  $("#dlq-detail").hidden = !l;
  if (!l) return;
  $("#dlq-id").textContent = l.id;
  const fields = [
    ["Agent", state.dlqAgent], ["Conversation", l.conversation_id], ["Sender", l.sender || "user"], ["Reason", l.reason],
    ["Attempts", l.attempts], ["Replays", l.replays],
    ["First failure", l.first_failure_ms ? new Date(l.first_failure_ms).toISOString() : "–"],
  ];
  $("#dlq-fields").innerHTML = fields.map(([k, v]) => `<dt>${esc(k)}</dt><dd>${esc(v)}</dd>`).join("");
  $("#dlq-body").textContent = pretty(l.body);
  $("#dlq-headers").textContent = Object.entries(l.headers).map(([k, v]) => `${k}: ${v}`).join("\n") || "(none)";
  $("#dlq-stderr-box").hidden = !l.guest_trace;
  $("#dlq-stderr").textContent = l.guest_trace || "";
  $("#dlq-trace").href = `#/trace/${encodeURIComponent(l.conversation_id)}`;
}

function pretty(text) {
  try { return JSON.stringify(JSON.parse(text), null, 2); } catch (_) { return text; }
}

// ---- traces ----------------------------------------------------------------

async function loadRecent() {
  try {
    const r = await api("/api/conversations");
    $("#recent tbody").innerHTML = r.conversations.map((c) => `<tr class="clickable" data-conv="${esc(c.conversation_id)}">
      <td><code>${esc(c.conversation_id)}</code></td><td>${esc(c.first_agent)}</td><td class="num">${c.hops}</td>
      <td>${esc(when(c.last_at_ms))}</td><td><span class="badge ${esc(c.last_outcome.replace(" ", "-"))}">${esc(c.last_outcome)}</span></td></tr>`).join("");
  } catch (e) {
    notice(`reading recent conversations: ${e.message}`, true);
  }
}

function lastText(body) {
  try {
    const messages = JSON.parse(body).messages || [];
    const last = messages[messages.length - 1];
    return last ? String(last.content ?? "") : "";
  } catch (_) { return ""; }
}

// A trace as steps: every delivery (who sent it → the agent), then each
// reply the conversation produced (agent → reply).
function steps(trace) {
  const out = [];
  for (const s of trace.hops) {
    out.push({ kind: "hop", from: s.from, to: s.agent, s });
    if (s.outcome.kind === "handled") {
      for (const m of s.sent) {
        if (m.to.startsWith("queue:")) out.push({ kind: "reply", from: s.agent, to: "reply", s, m });
      }
    }
  }
  return out;
}

async function loadTrace(id) {
  $("#trace-id").value = id;
  try {
    state.trace = await api(`/api/trace/${encodeURIComponent(id)}`);
  } catch (e) {
    state.trace = null;
    notice(`trace of ${id}: ${e.message}`, true);
  }
  renderTrace();
}

function renderTrace() {
  const t = state.trace;
  $("#trace").hidden = !t;
  if (!t) return;
  $("#trace-conv").textContent = t.conversation_id;
  const list = steps(t);
  $("#trace-summary").textContent = t.hops.length
    ? `${list.length} steps, ${t.hops.length} deliveries on ${t.hosts.length} host(s) (${t.answered} answered)`
    : `no hop kept by the ${t.answered} host(s) that answered`;
  // The flow: user → agent → agent → reply.
  const nodes = [];
  for (const st of list) {
    if (!nodes.length) nodes.push({ name: st.from, cls: st.from === "user" ? "user" : "" });
    const dead = st.kind === "hop" && st.s.outcome.kind === "dead_lettered";
    const last = nodes[nodes.length - 1];
    if (last.name !== st.to || st.kind === "reply") nodes.push({ name: st.to, cls: st.kind === "reply" ? "reply" : dead ? "dead" : "" });
    else if (dead) last.cls = "dead";
  }
  $("#trace-flow").innerHTML = nodes.map((n) => `<span class="node ${n.cls}">${esc(n.name)}</span>`).join(`<span class="arrow">→</span>`);
  // The timeline: waiting (light) and handling (dark) per delivery.
  const hops = t.hops;
  if (hops.length) {
    const queued = (h) => h.queued_ms || 0;
    const t0 = Math.min(...hops.map((h) => h.received_at_ms - queued(h)));
    const t1 = Math.max(...hops.map((h) => h.received_at_ms + h.total_ms));
    const span = Math.max(t1 - t0, 1);
    const pct = (v) => ((v / span) * 100).toFixed(2) + "%";
    $("#trace-timeline").innerHTML = hops.map((h) => {
      const bad = h.outcome.kind !== "handled";
      return `<div class="row"><span class="label">${esc(h.agent)} #${h.attempt}</span><span class="track">
        <span class="queued" data-left="${pct(h.received_at_ms - queued(h) - t0)}" data-width="${pct(queued(h))}"></span>
        <span class="work${bad ? " bad" : ""}" data-left="${pct(h.received_at_ms - t0)}" data-width="${pct(Math.max(h.total_ms, span / 400))}"></span>
      </span></div>`;
    }).join("");
    // Positions are set through the DOM: the page's policy forbids inline styles.
    for (const bar of document.querySelectorAll("#trace-timeline [data-left]")) {
      bar.style.left = bar.dataset.left;
      bar.style.width = bar.dataset.width;
    }
  } else {
    $("#trace-timeline").innerHTML = "";
  }
  $("#trace-steps").innerHTML = list.map((st) => {
    const s = st.s;
    if (st.kind === "reply") {
      return `<li class="step reply"><div class="head"><span class="path">${esc(st.from)} → reply</span>
        <span class="meta">to <code>${esc(st.m.to)}</code>, message <code>${esc(st.m.id)}</code></span></div>
        <details><summary>sent</summary><pre>${esc(pretty(st.m.body.text))}</pre></details></li>`;
    }
    const reason = s.outcome.reason ? `<div class="err">${esc(s.outcome.reason)}</div>` : "";
    const sent = s.sent.map((m) => `<h4>sent to ${esc(m.to)} (${esc(m.id)})</h4><pre>${esc(pretty(m.body.text))}</pre>`).join("");
    return `<li class="step"><div class="head"><span class="path">${esc(st.from)} → ${esc(s.agent)}</span>
      <span class="badge ${esc(s.outcome.kind.replace("_", "-"))}">${esc(s.outcome.kind.replace("_", " "))}</span>
      <span class="meta">${esc(when(s.received_at_ms))} · attempt ${s.attempt} · version ${esc((s.version || "–").slice(0, 10))}
      · queued ${ms(s.queued_ms)} · guest ${ms(s.guest_ms)} · total ${ms(s.total_ms)} · host ${esc(s.host)}</span></div>
      ${reason}
      <details><summary>received and sent</summary><h4>received (${s.received.bytes} bytes)</h4><pre>${esc(pretty(s.received.text))}</pre>${sent}</details></li>`;
  }).join("");
  const replies = list.filter((st) => st.kind === "reply");
  const answer = replies.length ? lastText(replies[replies.length - 1].m.body.text) : "";
  $("#trace-answer").hidden = !answer;
  $("#trace-answer-text").textContent = answer;
}

// ---- views -----------------------------------------------------------------

function currentView() {
  const h = location.hash.replace(/^#\/?/, "");
  const v = h.split("/")[0];
  return v === "trace" ? "traces" : ["agents", "dlq", "traces", "host"].includes(v) ? v : "agents";
}

function route() {
  const parts = location.hash.replace(/^#\/?/, "").split("/").map(decodeURIComponent);
  const view = currentView();
  for (const s of document.querySelectorAll(".view")) s.hidden = s.id !== `view-${view}`;
  for (const a of document.querySelectorAll("nav a")) a.classList.toggle("active", a.dataset.view === view);
  if (view === "dlq") {
    state.dlqAgent = parts[1] || state.dlqAgent || (state.overview && state.overview.agents[0] && state.overview.agents[0].name) || null;
    if (state.dlqAgent) $("#dlq-agent").value = state.dlqAgent;
    loadLetters();
  } else if (parts[0] === "trace" && parts[1]) {
    loadTrace(parts[1]);
  } else if (view === "traces") {
    state.trace = null;
    renderTrace();
    loadRecent();
  }
}

document.addEventListener("DOMContentLoaded", () => {
  $("#dlq-agent").addEventListener("change", (e) => { location.hash = `#/dlq/${encodeURIComponent(e.target.value)}`; });
  $("#dlq-refresh").addEventListener("click", loadLetters);
  $("#dlq-replay-all").addEventListener("click", () => change(state.dlqAgent, "replay"));
  $("#dlq-purge-all").addEventListener("click", () => change(state.dlqAgent, "purge"));
  $("#dlq-replay-one").addEventListener("click", () => change(state.dlqAgent, "replay", state.letter));
  $("#dlq-purge-one").addEventListener("click", () => change(state.dlqAgent, "purge", state.letter));
  $("#dlq-list tbody").addEventListener("click", (e) => {
    const row = e.target.closest("tr[data-id]");
    if (row) { state.letter = row.dataset.id; renderLetters(); }
  });
  $("#recent tbody").addEventListener("click", (e) => {
    const row = e.target.closest("tr[data-conv]");
    if (row) location.hash = `#/trace/${encodeURIComponent(row.dataset.conv)}`;
  });
  $("#agents tbody").addEventListener("click", (e) => {
    const row = e.target.closest("tr[data-agent]");
    if (row && !e.target.closest("a")) location.hash = `#/dlq/${encodeURIComponent(row.dataset.agent)}`;
  });
  $("#trace-form").addEventListener("submit", (e) => {
    e.preventDefault();
    const id = $("#trace-id").value.trim();
    if (id) location.hash = `#/trace/${encodeURIComponent(id)}`;
  });
  window.addEventListener("hashchange", route);
  poll().then(route);
  setInterval(poll, POLL_MS);
});
