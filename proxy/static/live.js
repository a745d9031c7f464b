// teeproxy's live page: reads GET /admin/live (server-sent events from every worker) and draws what it says.
// Plain JavaScript, no build step, nothing fetched from anywhere but this proxy.
//
// The stream is read with fetch(), not EventSource, because EventSource cannot send the admin key as a header.
// The key comes from the form, or once from the URL fragment (#key=..., which browsers never send to a server),
// and is kept in sessionStorage for this tab only. On reconnect the page asks for the events since the last one
// it saw (?since=t) and drops repeats.
"use strict";

const HOUR_S = 3600;
const LATEST_ROWS = 20;
const COLORS = ["#2e6fdb", "#e8833a", "#3a9d5d", "#c2417d", "#7d5bd1", "#b59a1d", "#2aa3a3", "#8a8f99"];

const state = {
  skewS: 0, // server time minus this browser's time
  lastT: null, // the newest event time seen, for ?since= on reconnect
  seen: new Set(), // type|request_id|worker|t of every event taken in
  started: new Map(), // request_id|worker -> t, while a request is in flight
  usage: [], // {t, model, cost, output}
  finished: [], // request_finished events, oldest first
  errors: [], // t of each error event
  models: new Map(), // model -> color
  workers: new Set(), // process ids seen
};

function now() { return Date.now() / 1000 + state.skewS; }
const $ = (id) => document.getElementById(id);

function setValue(id, value, text) {
  const el = $(id);
  el.dataset.value = String(value);
  el.textContent = text;
}

function usd(value) {
  if (value === 0) return "$0";
  if (value >= 1) return "$" + value.toFixed(2);
  return "$" + value.toPrecision(4).replace(/0+$/, "").replace(/\.$/, "");
}

function status(text, kind) {
  const el = $("status");
  el.textContent = text;
  el.dataset.state = kind;
}

function colorOf(model) {
  if (!state.models.has(model)) state.models.set(model, COLORS[state.models.size % COLORS.length]);
  return state.models.get(model);
}

// --- events -----------------------------------------------------------------------------------------------

function take(type, data) {
  if (type === "hello") {
    state.skewS = data.t - Date.now() / 1000;
    return;
  }
  const key = [type, data.request_id, data.worker, data.t].join("|");
  if (state.seen.has(key)) return;
  state.seen.add(key);
  if (state.lastT === null || data.t > state.lastT) state.lastT = data.t;
  state.workers.add(data.worker);
  const flight = data.request_id + "|" + data.worker;
  if (type === "request_started") {
    state.started.set(flight, data.t);
  } else if (type === "usage") {
    state.usage.push({ t: data.t, model: data.model || "?", cost: data.cost_usd === null ? 0 : Number(data.cost_usd), output: data.output_tokens });
  } else if (type === "error") {
    state.errors.push(data.t);
  } else if (type === "request_finished") {
    state.started.delete(flight);
    state.finished.push(data);
  }
}

function prune() {
  const horizon = now() - HOUR_S;
  const keep = (list, t) => list.filter((x) => t(x) >= horizon);
  state.usage = keep(state.usage, (u) => u.t);
  state.finished = keep(state.finished, (f) => f.t);
  state.errors = keep(state.errors, (t) => t);
  for (const [flight, t] of state.started) if (t < horizon) state.started.delete(flight);
  if (state.seen.size > 100000) state.seen = new Set();
}

// --- drawing ----------------------------------------------------------------------------------------------

function render() {
  prune();
  const t = now();
  const lastMinute = state.usage.filter((u) => u.t > t - 60);
  const tokensPerS = lastMinute.reduce((sum, u) => sum + u.output, 0) / 60;
  const spendPerMin = lastMinute.reduce((sum, u) => sum + u.cost, 0);
  const spendHour = state.usage.reduce((sum, u) => sum + u.cost, 0);
  setValue("active", state.started.size, String(state.started.size));
  setValue("tokens-per-s", tokensPerS, tokensPerS.toFixed(tokensPerS < 10 ? 2 : 0));
  setValue("spend-per-min", spendPerMin, usd(spendPerMin));
  setValue("spend-hour", spendHour, usd(spendHour));
  setValue("requests-hour", state.finished.length, String(state.finished.length));
  setValue("errors-hour", state.errors.length, String(state.errors.length));
  setValue("workers", state.workers.size, String(state.workers.size));
  renderTable();
  renderChart(t);
}

function cell(row, text, cls) {
  const td = row.insertCell();
  td.textContent = text;
  if (cls) td.className = cls;
}

function renderTable() {
  const body = $("latest").tBodies[0];
  const rows = state.finished.slice().sort((a, b) => b.t - a.t).slice(0, LATEST_ROWS);
  body.replaceChildren();
  for (const f of rows) {
    const row = body.insertRow();
    row.dataset.requestId = f.request_id;
    row.dataset.cost = f.cost_usd === null ? "" : f.cost_usd;
    row.dataset.outputTokens = String(f.output_tokens);
    row.dataset.worker = String(f.worker);
    if (f.outcome !== "completed") row.className = "bad";
    cell(row, new Date(f.time).toLocaleTimeString());
    cell(row, f.model || "");
    cell(row, f.provider || "");
    cell(row, f.key_name || "");
    cell(row, f.outcome, "outcome");
    cell(row, String(f.input_tokens), "num");
    cell(row, String(f.output_tokens), "num");
    cell(row, f.cost_usd === null ? "–" : f.cost_usd, "num");
    cell(row, f.ttfb_ms === null ? "–" : f.ttfb_ms.toFixed(0), "num");
    cell(row, f.duration_ms.toFixed(0), "num");
  }
}

const SVG = "http://www.w3.org/2000/svg";

function svg(name, attrs, parent) {
  const el = document.createElementNS(SVG, name);
  for (const [k, v] of Object.entries(attrs)) el.setAttribute(k, String(v));
  parent.appendChild(el);
  return el;
}

function renderChart(t) {
  // 60 bars, one per minute up to the current one, each stacked by model.
  const end = Math.floor(t / 60) * 60 + 60;
  const start = end - HOUR_S;
  const bars = Array.from({ length: 60 }, () => new Map());
  const totals = new Map();
  for (const u of state.usage) {
    if (u.t < start || u.cost === 0) continue;
    const bar = bars[Math.min(59, Math.floor((u.t - start) / 60))];
    bar.set(u.model, (bar.get(u.model) || 0) + u.cost);
    totals.set(u.model, (totals.get(u.model) || 0) + u.cost);
  }
  const peak = Math.max(0, ...bars.map((bar) => [...bar.values()].reduce((a, b) => a + b, 0)));
  const W = 960, H = 200, left = 84, bottom = 18, top = 8;
  const root = document.createElementNS(SVG, "svg");
  root.setAttribute("viewBox", `0 0 ${W} ${H}`);
  root.setAttribute("preserveAspectRatio", "none");
  const plotH = H - bottom - top;
  const barW = (W - left) / 60;
  svg("line", { x1: left, y1: H - bottom, x2: W, y2: H - bottom, stroke: "#c9ced8" }, root);
  svg("text", { x: left - 6, y: top + 8, "text-anchor": "end" }, root).textContent = usd(peak);
  svg("text", { x: left - 6, y: H - bottom, "text-anchor": "end" }, root).textContent = "$0";
  svg("text", { x: left, y: H - 4 }, root).textContent = "-60 min";
  svg("text", { x: W, y: H - 4, "text-anchor": "end" }, root).textContent = "now";
  bars.forEach((bar, i) => {
    let y = H - bottom;
    for (const [model, cost] of [...bar.entries()].sort()) {
      const h = peak > 0 ? (cost / peak) * plotH : 0;
      y -= h;
      const rect = svg("rect", { x: left + i * barW + 1, y, width: Math.max(1, barW - 2), height: h, fill: colorOf(model) }, root);
      rect.dataset.model = model;
      rect.dataset.cost = String(cost);
      rect.dataset.minute = new Date((start + i * 60) * 1000).toISOString();
      svg("title", {}, rect).textContent = `${model}: ${usd(cost)}`;
    }
  });
  $("chart").replaceChildren(root);
  const legend = $("legend");
  legend.replaceChildren();
  for (const [model, cost] of [...totals.entries()].sort()) {
    const li = document.createElement("li");
    const swatch = document.createElement("i");
    swatch.style.background = colorOf(model);
    li.append(swatch, `${model} ${usd(cost)}`);
    legend.appendChild(li);
  }
}

// --- the stream -------------------------------------------------------------------------------------------

function frames(buffer, onFrame) {
  // SSE frames end at a blank line; the server writes LF only.
  let end;
  while ((end = buffer.indexOf("\n\n")) >= 0) {
    const frame = buffer.slice(0, end);
    buffer = buffer.slice(end + 2);
    let type = "message";
    const data = [];
    for (const line of frame.split("\n")) {
      if (line.startsWith("event:")) type = line.slice(6).trim();
      else if (line.startsWith("data:")) data.push(line.slice(5).replace(/^ /, ""));
    }
    if (data.length) onFrame(type, JSON.parse(data.join("\n")));
  }
  return buffer;
}

async function follow(key) {
  let delayMs = 1000;
  for (;;) {
    const since = state.lastT === null ? "" : `?since=${state.lastT}`;
    try {
      status("connecting…", "idle");
      const response = await fetch(`live${since}`, { headers: { Authorization: `Bearer ${key}` }, cache: "no-store" });
      if (!response.ok) {
        let message = `HTTP ${response.status}`;
        try { message = (await response.json()).error.message; } catch (e) { /* not JSON */ }
        status(message, "error");
        if (response.status === 401) { askKey(); return; }
      } else {
        status("live", "live");
        delayMs = 1000;
        const reader = response.body.getReader();
        const decoder = new TextDecoder();
        let buffer = "";
        for (;;) {
          const { value, done } = await reader.read();
          if (done) break;
          buffer = frames(buffer + decoder.decode(value, { stream: true }), take);
          render();
        }
        status("reconnecting…", "idle");
      }
    } catch (e) {
      status(`reconnecting… (${e.message})`, "error");
    }
    await new Promise((resolve) => setTimeout(resolve, delayMs));
    delayMs = Math.min(delayMs * 2, 15000);
  }
}

function askKey() {
  sessionStorage.removeItem("teeproxy-admin-key");
  $("key-form").hidden = false;
}

function start() {
  const fromUrl = new URLSearchParams(location.hash.slice(1)).get("key");
  if (fromUrl) {
    sessionStorage.setItem("teeproxy-admin-key", fromUrl);
    history.replaceState(null, "", location.pathname + location.search);
  }
  $("key-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const key = $("key").value.trim();
    if (!key) return;
    sessionStorage.setItem("teeproxy-admin-key", key);
    $("key").value = "";
    $("key-form").hidden = true;
    follow(key);
  });
  setInterval(render, 1000);
  render();
  const key = sessionStorage.getItem("teeproxy-admin-key");
  if (key) follow(key);
  else askKey();
}

start();
