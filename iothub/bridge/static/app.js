// iothub dashboard: the device list from the REST API, kept live by one EventSource on /api/v1/stream.
// No third-party code: a small SVG chart of our own. Every value reaches the page through textContent.
"use strict";

const MAX_FEED = 200;
const MAX_VALUES_SHOWN = 6;
const CHART_W = 300;
const CHART_H = 90;

const state = {
  token: null,
  devices: new Map(), // id -> device view from the REST API, kept current by events
  rows: new Map(), // id -> <tr>
  selected: null,
  series: new Map(), // metric -> [[ts, value], ...] for the selected device
  windowMin: 15,
  es: null,
  lastEventId: null,
  retryMs: 1000,
  retryTimer: null,
  hadError: false,
};

const $ = (id) => document.getElementById(id);

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (key === "class") node.className = value;
    else node.setAttribute(key, value);
  }
  for (const child of children) node.append(child);
  return node;
}

function svg(tag, attrs = {}) {
  const node = document.createElementNS("http://www.w3.org/2000/svg", tag);
  for (const [key, value] of Object.entries(attrs)) node.setAttribute(key, value);
  return node;
}

function formatValue(value) {
  if (typeof value === "number") return Number.isInteger(value) ? String(value) : value.toFixed(2);
  return String(value);
}

function ago(iso) {
  if (!iso) return "never";
  const seconds = Math.max(0, Math.round((Date.now() - Date.parse(iso)) / 1000));
  if (seconds < 60) return `${seconds} s ago`;
  if (seconds < 3600) return `${Math.floor(seconds / 60)} min ago`;
  return `${Math.floor(seconds / 3600)} h ago`;
}

// -- API ----------------------------------------------------------------------------------------

async function api(path) {
  const response = await fetch(path, { headers: { Authorization: `Bearer ${state.token}` } });
  if (response.status === 401 || response.status === 403) {
    const body = await response.json().catch(() => ({}));
    showLogin(body.error || "the token was refused");
    throw new Error("unauthorized");
  }
  if (!response.ok) throw new Error(`${path}: HTTP ${response.status}`);
  return response.json();
}

async function loadDevices() {
  const body = await api("/api/v1/devices");
  state.devices = new Map(body.devices.map((d) => [d.id, d]));
  renderLabelFilter();
  renderDevices();
}

// -- connection -----------------------------------------------------------------------------------

function setConnection(kind) {
  const badge = $("conn");
  badge.className = `badge ${kind}`;
  badge.dataset.state = kind;
  badge.textContent = kind;
}

function connect() {
  disconnect();
  const params = new URLSearchParams({ access_token: state.token });
  if (state.lastEventId !== null) params.set("last_event_id", state.lastEventId);
  const es = new EventSource(`/api/v1/stream?${params}`);
  state.es = es;
  setConnection("reconnecting");
  es.onopen = () => {
    setConnection("live");
    state.retryMs = 1000;
    if (state.hadError) {
      state.hadError = false;
      loadDevices().catch(() => {}); // presence may have changed while we were away
    }
  };
  es.onerror = () => {
    state.hadError = true;
    if (es.readyState === EventSource.CLOSED) {
      // The browser gave up (e.g. the hub answered with an error while restarting): retry ourselves.
      setConnection("offline");
      scheduleReconnect();
    } else {
      setConnection("reconnecting");
    }
  };
  const track = (handler) => (message) => {
    if (message.lastEventId) state.lastEventId = message.lastEventId;
    handler(JSON.parse(message.data));
  };
  es.addEventListener("telemetry", track(onTelemetry));
  es.addEventListener("status", track(onStatus));
  es.addEventListener("command_result", track((e) => addFeed("command", e, `${e.name}: ${e.ok ? "ok" : e.error}`)));
  es.addEventListener("alert", track((e) => addFeed("alert", e, `${e.rule}: ${e.state} (${formatValue(e.value)})`)));
  es.addEventListener("gap", (message) => {
    const gap = JSON.parse(message.data);
    addFeed("gap", { device_id: "", ts: Date.now() }, `missed ${gap.missed ?? "some"} events (${gap.reason})`);
    loadDevices().catch(() => {});
  });
}

function disconnect() {
  if (state.es) state.es.close();
  state.es = null;
  clearTimeout(state.retryTimer);
}

function scheduleReconnect() {
  if (state.es) state.es.close();
  clearTimeout(state.retryTimer);
  state.retryTimer = setTimeout(connect, state.retryMs);
  state.retryMs = Math.min(state.retryMs * 2, 15000);
}

// -- events -------------------------------------------------------------------------------------

function device(id) {
  let d = state.devices.get(id);
  if (!d) {
    d = { id, name: id, type: "", labels: {}, online: false, reason: "unknown", latest: {}, last_seen: null };
    state.devices.set(id, d);
  }
  return d;
}

function onTelemetry(e) {
  const d = device(e.device_id);
  const iso = new Date(e.ts).toISOString();
  d.last_seen = new Date().toISOString();
  for (const [metric, value] of Object.entries(e.metrics)) {
    const current = d.latest[metric];
    if (!current || Date.parse(current.ts) <= e.ts) d.latest[metric] = { value, ts: iso };
  }
  renderRow(d, Object.keys(e.metrics));
  if (state.selected === e.device_id) {
    for (const [metric, value] of Object.entries(e.metrics)) {
      if (!state.series.has(metric)) state.series.set(metric, []);
      state.series.get(metric).push([e.ts, value]);
    }
    renderCharts();
  }
  renderSummary();
}

function onStatus(e) {
  const d = device(e.device_id);
  Object.assign(d, { online: e.online, reason: e.reason, detail: e.detail, since: e.since });
  renderRow(d, []);
  renderSummary();
  if (state.selected === e.device_id) renderPresence(d);
  addFeed(e.online ? "status-online" : "status-offline", e, `${e.online ? "online" : "offline"} (${e.reason})`);
}

function addFeed(kind, e, text) {
  const feed = $("feed");
  const time = new Date(e.ts || Date.now()).toLocaleTimeString();
  const item = el("li", {}, el("time", {}, time), el("span", { class: `kind ${kind}` }, kind.replace("status-", "")),
    e.device_id ? `${e.device_id}: ${text}` : text);
  feed.prepend(item);
  while (feed.children.length > MAX_FEED) feed.lastChild.remove();
}

// -- rendering ----------------------------------------------------------------------------------

function matchesFilters(d) {
  const text = $("filter-text").value.trim().toLowerCase();
  const label = $("filter-label").value;
  const online = $("filter-online").value;
  if (text && ![d.id, d.name || "", d.type || ""].some((s) => s.toLowerCase().includes(text))) return false;
  if (label) {
    const [key, value] = label.split("=");
    if ((d.labels || {})[key] !== value) return false;
  }
  if (online && String(Boolean(d.online)) !== online) return false;
  return true;
}

function renderDevices() {
  const body = document.querySelector("#devices tbody");
  const ids = [...state.devices.keys()].sort();
  for (const [id, row] of state.rows) {
    if (!state.devices.has(id)) { row.remove(); state.rows.delete(id); }
  }
  for (const id of ids) {
    const d = state.devices.get(id);
    renderRow(d, []);
    body.append(state.rows.get(id)); // keeps the rows in id order
  }
  $("no-devices").hidden = ids.length > 0;
  renderSummary();
}

function renderRow(d, changed) {
  let row = state.rows.get(d.id);
  if (!row) {
    row = el("tr", { "data-device-id": d.id },
      el("td", {}, el("div", { class: "device-id" }), el("div", { class: "device-type" })),
      el("td", {}, el("span", { class: "presence" }), el("span", { class: "reason" })),
      el("td", { class: "last-seen" }),
      el("td", {}, el("div", { class: "values" })));
    row.addEventListener("click", () => select(d.id));
    state.rows.set(d.id, row);
    const body = document.querySelector("#devices tbody");
    const after = [...state.rows.keys()].sort().find((id) => id > d.id && state.rows.get(id).isConnected);
    body.insertBefore(row, after ? state.rows.get(after) : null);
    $("no-devices").hidden = true;
  }
  row.hidden = !matchesFilters(d);
  row.classList.toggle("selected", state.selected === d.id);
  row.querySelector(".device-id").textContent = d.name && d.name !== d.id ? `${d.id} (${d.name})` : d.id;
  row.querySelector(".device-type").textContent = [d.type, ...Object.entries(d.labels || {}).map(([k, v]) => `${k}=${v}`)]
    .filter(Boolean).join(" · ");
  const presence = row.querySelector(".presence");
  presence.className = `presence ${d.online ? "online" : "offline"}`;
  presence.textContent = d.online ? "online" : "offline";
  row.querySelector(".reason").textContent = d.reason && d.reason !== "unknown" ? d.reason.replaceAll("_", " ") : "";
  row.querySelector(".last-seen").textContent = ago(d.last_seen);
  row.querySelector(".last-seen").dataset.iso = d.last_seen || "";
  const values = row.querySelector(".values");
  values.replaceChildren(...Object.entries(d.latest || {}).slice(0, MAX_VALUES_SHOWN).map(([metric, v]) =>
    el("span", { class: `value${changed.includes(metric) ? " flash" : ""}`, "data-metric": metric },
      el("span", { class: "name" }, metric), formatValue(v.value))));
}

function renderSummary() {
  const all = [...state.devices.values()];
  const online = all.filter((d) => d.online).length;
  $("summary").textContent = `${all.length} devices, ${online} online`;
}

function renderLabelFilter() {
  const select = $("filter-label");
  const current = select.value;
  const labels = new Set();
  for (const d of state.devices.values()) {
    for (const [k, v] of Object.entries(d.labels || {})) labels.add(`${k}=${v}`);
  }
  select.replaceChildren(el("option", { value: "" }, "All labels"),
    ...[...labels].sort().map((l) => el("option", { value: l }, l)));
  select.value = labels.has(current) ? current : "";
}

function renderPresence(d) {
  $("detail-presence").textContent =
    `${d.online ? "Online" : "Offline"} (${(d.reason || "unknown").replaceAll("_", " ")})` +
    (d.since ? ` since ${new Date(d.since).toLocaleString()}` : "");
}

async function select(id) {
  state.selected = id;
  for (const [rowId, row] of state.rows) row.classList.toggle("selected", rowId === id);
  $("detail-panel").hidden = false;
  $("detail-title").textContent = id;
  renderPresence(device(id));
  state.series = new Map();
  renderCharts();
  const minutes = state.windowMin;
  const params = new URLSearchParams({ from: `-${minutes}m` });
  if (minutes > 15) { params.set("step", `${Math.round((minutes * 60) / 300)}s`); params.set("agg", "avg"); }
  try {
    const body = await api(`/api/v1/devices/${encodeURIComponent(id)}/telemetry?${params}`);
    if (state.selected !== id) return;
    const live = state.series;
    state.series = new Map(Object.entries(body.series));
    for (const [metric, points] of live) { // what arrived live while the history loaded
      const history = state.series.get(metric) || [];
      const last = history.length ? history[history.length - 1][0] : -Infinity;
      state.series.set(metric, history.concat(points.filter(([ts]) => ts > last)));
    }
    renderCharts();
  } catch (err) {
    $("charts").replaceChildren(el("p", { class: "empty" }, "no history: " + err.message));
  }
}

function renderCharts() {
  const charts = $("charts");
  const since = Date.now() - state.windowMin * 60000;
  const blocks = [];
  for (const [metric, all] of [...state.series.entries()].sort()) {
    const points = all.filter(([ts, v]) => ts >= since && v !== null);
    state.series.set(metric, points);
    const last = points.length ? points[points.length - 1][1] : null;
    const block = el("div", { class: "chart", "data-metric": metric },
      el("div", { class: "chart-head" }, el("span", {}, metric), el("span", { class: "now" }, last === null ? "" : formatValue(last))));
    const numeric = points.filter(([, v]) => typeof v === "number" || typeof v === "boolean")
      .map(([ts, v]) => [ts, Number(v)]);
    if (numeric.length < 2) {
      block.append(el("div", { class: "empty" }, points.length ? "collecting…" : "no data in this window"));
    } else {
      block.append(chart(numeric, since));
    }
    blocks.push(block);
  }
  charts.replaceChildren(...blocks);
}

function chart(points, windowStart) {
  const now = Date.now();
  // The axis spans the window, or less while a device has not been around that long.
  const since = Math.max(windowStart, Math.min(points[0][0], now - 60000));
  let min = Math.min(...points.map(([, v]) => v));
  let max = Math.max(...points.map(([, v]) => v));
  if (min === max) { min -= 1; max += 1; }
  const x = (ts) => ((ts - since) / (now - since)) * CHART_W;
  const y = (v) => CHART_H - 12 - ((v - min) / (max - min)) * (CHART_H - 20);
  const graphic = svg("svg", { viewBox: `0 0 ${CHART_W} ${CHART_H}`, preserveAspectRatio: "none" });
  graphic.append(svg("polyline", { points: points.map(([ts, v]) => `${x(ts).toFixed(1)},${y(v).toFixed(1)}`).join(" ") }));
  const top = svg("text", { x: 2, y: 10, class: "axis" });
  top.textContent = formatValue(max);
  const bottom = svg("text", { x: 2, y: CHART_H - 2, class: "axis" });
  bottom.textContent = formatValue(min);
  graphic.append(top, bottom);
  return graphic;
}

// -- start ------------------------------------------------------------------------------------

function showLogin(message) {
  disconnect();
  $("app").hidden = true;
  $("logout").hidden = true;
  $("login").hidden = false;
  $("login-error").textContent = message || "";
  setConnection("offline");
}

async function start() {
  $("login").hidden = true;
  $("app").hidden = false;
  $("logout").hidden = false;
  try {
    await loadDevices();
  } catch (err) {
    if (err.message === "unauthorized") return;
  }
  connect();
}

function init() {
  const fromHash = new URLSearchParams(location.hash.slice(1)).get("token");
  if (fromHash) {
    localStorage.setItem("iothub-token", fromHash);
    history.replaceState(null, "", location.pathname);
  }
  state.token = localStorage.getItem("iothub-token");
  $("login-form").addEventListener("submit", (event) => {
    event.preventDefault();
    state.token = $("token").value.trim();
    localStorage.setItem("iothub-token", state.token);
    start();
  });
  $("logout").addEventListener("click", () => {
    localStorage.removeItem("iothub-token");
    showLogin("");
  });
  for (const id of ["filter-text", "filter-label", "filter-online"]) {
    $(id).addEventListener("input", renderDevices);
  }
  $("window").addEventListener("change", () => {
    state.windowMin = Number($("window").value);
    if (state.selected) select(state.selected);
  });
  document.addEventListener("visibilitychange", () => {
    // A hidden tab lets its stream go; on return it resumes from the last event it saw.
    if (!state.token || !$("login").hidden) return;
    if (document.hidden) { disconnect(); setConnection("offline"); } else connect();
  });
  setInterval(() => {
    for (const cell of document.querySelectorAll("#devices .last-seen")) cell.textContent = ago(cell.dataset.iso);
  }, 1000);
  if (state.token) start(); else showLogin("");
}

init();
