// iothub dashboard: the device list from the REST API, kept live by one EventSource on /api/v1/stream.
// No third-party code. An event only updates the page's data and marks its device dirty; the screen
// is brought up to date at most every FLUSH_MS, in one go: the rows on screen (the list is
// virtualized), the summary (counted incrementally), the feed and the selected device's charts.
import { Chart, MAX_POINTS, insertPoint, thin } from "./chart.js";
import { clock, el, formatValue, presence, renderPresence, when } from "./format.js";
import { DeviceList } from "./list.js";
import { ListLoader } from "./loader.js";

const MAX_FEED = 200;
const FLUSH_MS = 250; // events are drawn at most this often
const FILTER_DEBOUNCE_MS = 120;
// A series over MAX_POINTS is thinned to this many, so live points can add a quarter before the next
// thinning (each thinning of an already thinned series shifts its spans and loses a little).
const THINNED_POINTS = (MAX_POINTS * 3) / 4;

const state = {
  token: null,
  devices: new Map(), // id -> device view from the REST API, kept current by events
  list: null, // the device table (DeviceList)
  online: 0, // how many devices are online
  selected: null,
  wanted: null, // a device picked before the page loaded (#device=ID)
  series: new Map(), // metric -> [[ts, value], ...] sorted by ts, for the selected device
  charts: new Map(), // metric -> Chart
  chartsFrame: 0,
  flushTimer: 0,
  chartsDue: false, // the selected device got points since the last flush
  summaryDue: false,
  feedDue: [], // feed items waiting for the next flush, oldest first
  windowMin: 15,
  es: null,
  lastEventId: null,
  retryMs: 1000,
  retryTimer: null,
  hadError: false,
};

const $ = (id) => document.getElementById(id);

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

/** Show a loaded device list, then re-apply the events that arrived while it loaded. */
function showDevices(body, events) {
  state.devices.clear(); // the list holds this same map
  for (const d of body.devices) state.devices.set(d.id, d);
  state.online = body.devices.filter((d) => d.online).length;
  for (const [apply, e, arrival] of events) apply(e, arrival);
  state.list.reset();
  renderSummary();
  ensureSelection();
}

const loader = new ListLoader(() => api("/api/v1/devices"), showDevices);

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
      loader.load().catch(() => {}); // presence may have changed while we were away
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
    loader.load().catch(() => {});
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
    state.list.added(d);
    state.summaryDue = true;
    if (!state.selected) queueMicrotask(ensureSelection);
  }
  return d;
}

/** What a telemetry event changes in its device (`at`: when it arrived, as ISO text). */
function applyTelemetry(e, at) {
  const d = device(e.device_id);
  const iso = new Date(e.ts).toISOString();
  if (!d.last_seen || Date.parse(d.last_seen) < Date.parse(at)) d.last_seen = at;
  for (const [metric, value] of Object.entries(e.metrics)) {
    const current = d.latest[metric];
    if (!current || Date.parse(current.ts) <= e.ts) d.latest[metric] = { value, ts: iso };
  }
  state.list.changed(d.id, Object.keys(e.metrics));
}

function onTelemetry(e) {
  loader.remember(applyTelemetry, e, new Date().toISOString());
  if (state.selected === e.device_id) {
    for (const [metric, value] of Object.entries(e.metrics)) {
      if (!state.series.has(metric)) state.series.set(metric, []);
      insertPoint(state.series.get(metric), e.ts, value);
    }
    state.chartsDue = true;
  }
  scheduleFlush();
}

/** What a status event changes in its device. */
function applyStatus(e) {
  const d = device(e.device_id);
  if (Boolean(d.online) !== Boolean(e.online)) state.online += e.online ? 1 : -1;
  Object.assign(d, { online: e.online, reason: e.reason, detail: e.detail, since: e.since });
  state.list.changed(d.id);
  state.summaryDue = true;
}

function onStatus(e) {
  loader.remember(applyStatus, e);
  if (state.selected === e.device_id) renderDetailPresence(state.devices.get(e.device_id));
  addFeed("status", e, presence(e).text, e.online ? "online" : "offline");
}

/** Queue a feed item for the next flush (only the newest MAX_FEED are kept). */
function addFeed(kind, e, text, tone = "") {
  state.feedDue.push([kind, e.ts || Date.now(), e.device_id ? `${e.device_id}: ${text}` : text, tone]);
  if (state.feedDue.length > 2 * MAX_FEED) state.feedDue.splice(0, state.feedDue.length - MAX_FEED);
  scheduleFlush();
}

function scheduleFlush() {
  if (!state.flushTimer) state.flushTimer = setTimeout(flush, FLUSH_MS);
}

/** Draw what the events since the last flush changed. */
function flush() {
  state.flushTimer = 0;
  state.list.flush();
  if (state.summaryDue) renderSummary();
  if (state.feedDue.length) {
    const items = state.feedDue.slice(-MAX_FEED).reverse().map(([kind, ts, text, tone]) =>
      el("li", {}, el("time", {}, clock(ts)), el("span", { class: `kind ${kind} ${tone}` }, kind), text));
    state.feedDue = [];
    const feed = $("feed");
    feed.prepend(...items);
    $("feed-empty").hidden = true;
    while (feed.children.length > MAX_FEED) feed.lastChild.remove();
  }
  if (state.chartsDue) {
    state.chartsDue = false;
    drawCharts();
  }
}

function renderSummary() {
  state.summaryDue = false;
  const n = state.devices.size;
  $("summary").textContent = `${n} ${n === 1 ? "device" : "devices"}, ${state.online} online`;
}

// -- the selected device --------------------------------------------------------------------------

/** Keep the device the user picked; otherwise show the first one listed, or say there is none. */
function ensureSelection() {
  if (state.selected && state.devices.has(state.selected)) return;
  const wanted = state.wanted && state.devices.has(state.wanted) ? state.wanted : null;
  const first = wanted ?? state.list.first();
  if (first !== null) {
    select(first, false);
  } else {
    state.selected = null;
    $("detail-head").hidden = true;
    $("detail-presence").hidden = true;
    $("charts").replaceChildren();
    $("charts-empty").hidden = true;
    state.charts.clear();
    $("detail-empty").textContent = "No device yet: pick a device in the list once one appears.";
    $("detail-empty").hidden = false;
  }
}

function renderDetailPresence(d) {
  const node = el("span", {});
  renderPresence(node, d);
  const since = d.since ? el("span", { class: "since" }, `since ${when(Date.parse(d.since))}`) : "";
  $("detail-presence").replaceChildren(node, since);
}

async function select(id, byUser) {
  state.selected = id;
  if (byUser) {
    state.wanted = id;
    history.replaceState(null, "", `#device=${encodeURIComponent(id)}`);
  }
  state.list.select(id);
  if (!byUser) state.list.reveal(id); // picked by the address: show its row too
  $("detail-head").hidden = false;
  $("detail-presence").hidden = false;
  $("detail-empty").hidden = true;
  $("detail-title").textContent = id;
  renderDetailPresence(device(id));
  state.series = new Map();
  state.charts.clear();
  $("charts").replaceChildren();
  $("charts-empty").textContent = "loading…";
  $("charts-empty").hidden = false;
  const minutes = state.windowMin;
  const params = new URLSearchParams({ from: `-${minutes}m` });
  if (minutes > 15) { params.set("step", `${Math.round((minutes * 60) / 300)}s`); params.set("agg", "avg"); }
  try {
    const body = (state.devices.get(id)?.last_seen)
      ? await api(`/api/v1/devices/${encodeURIComponent(id)}/telemetry?${params}`) : { series: {} };
    if (state.selected !== id) return;
    const live = state.series;
    state.series = new Map(Object.entries(body.series));
    for (const [metric, points] of live) { // what arrived live while the history loaded
      const history = state.series.get(metric) || [];
      const last = history.length ? history[history.length - 1][0] : -Infinity;
      state.series.set(metric, history.concat(points.filter(([ts]) => ts > last)));
    }
    drawCharts();
  } catch (err) {
    if (state.selected === id) $("charts-empty").textContent = `no history: ${err.message}`;
  }
}

// -- charts ---------------------------------------------------------------------------------------

function scheduleCharts() {
  if (state.chartsFrame) return;
  state.chartsFrame = requestAnimationFrame(() => {
    state.chartsFrame = 0;
    drawCharts();
  });
}

/** How a metric is drawn, from its latest value: booleans as bands, numbers as a line. */
function kindOf(metric, points) {
  const latest = state.devices.get(state.selected)?.latest?.[metric];
  const sample = latest ? latest.value : points.length ? points[points.length - 1][1] : 0;
  if (typeof sample === "boolean") return "boolean";
  return typeof sample === "number" ? "number" : "text";
}

function drawCharts() {
  if (!state.selected) return;
  const since = Date.now() - state.windowMin * 60000;
  let added = false;
  for (const [metric, all] of state.series) {
    let old = 0;
    while (old < all.length && all[old][0] < since) old++;
    if (old) all.splice(0, old);
    if (all.length > MAX_POINTS) state.series.set(metric, thin(all, THINNED_POINTS));
    if (!state.charts.has(metric)) { state.charts.set(metric, new Chart(metric)); added = true; }
  }
  if (added) { // attached before drawing, so each chart is drawn at its real width
    $("charts").replaceChildren(...[...state.charts.keys()].sort().map((m) => state.charts.get(m).element));
  }
  for (const [metric, chart] of state.charts) {
    const all = state.series.get(metric) || [];
    const kind = kindOf(metric, all);
    const wanted = kind === "number" ? (v) => typeof v === "number" : kind === "boolean"
      ? (v) => typeof v === "boolean" || typeof v === "number" : (v) => v !== null;
    chart.update(all.filter(([, v]) => wanted(v)), since, kind, state.devices.get(state.selected)?.latest?.[metric]?.value);
  }
  $("charts-empty").textContent = "no telemetry in this window";
  $("charts-empty").hidden = state.charts.size > 0;
}

// -- start ------------------------------------------------------------------------------------

function showLogin(message) {
  disconnect();
  loader.cancel(); // a device list still loading is not shown
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
    await loader.load();
  } catch (err) {
    if (err.message === "unauthorized") return;
  }
  connect();
}

function init() {
  const hash = new URLSearchParams(location.hash.slice(1));
  state.wanted = hash.get("device");
  if (hash.has("token")) {
    localStorage.setItem("iothub-token", hash.get("token"));
    hash.delete("token");
    history.replaceState(null, "", location.pathname + (hash.toString() ? `#${hash}` : ""));
  }
  state.token = localStorage.getItem("iothub-token");
  state.list = new DeviceList((id) => select(id, true), state.devices);
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
  let filterTimer = 0;
  for (const id of ["filter-text", "filter-label", "filter-online"]) {
    $(id).addEventListener("input", () => {
      clearTimeout(filterTimer);
      filterTimer = setTimeout(() => { state.list.readFilters(); state.list.refilter(); }, FILTER_DEBOUNCE_MS);
    });
  }
  $("window").addEventListener("change", () => {
    state.windowMin = Number($("window").value);
    if (state.selected) select(state.selected, false);
  });
  document.addEventListener("visibilitychange", () => {
    // A hidden tab lets its stream go; on return it resumes from the last event it saw.
    if (!state.token || !$("login").hidden) return;
    if (document.hidden) { disconnect(); setConnection("offline"); } else connect();
  });
  new ResizeObserver(scheduleCharts).observe($("charts"));
  setInterval(() => {
    state.list.tick();
    if (state.charts.size) scheduleCharts(); // the time axis moves on while nothing arrives
  }, 1000);
  if (state.token) start(); else showLogin("");
}

init();
