// Small helpers the dashboard shares: DOM and SVG builders, and how values, times and presence read.
// Every value reaches the page through textContent or setAttribute, never as markup.

export function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (key === "class") node.className = value;
    else node.setAttribute(key, value);
  }
  for (const child of children) node.append(child);
  return node;
}

export function svg(tag, attrs = {}, text = null) {
  const node = document.createElementNS("http://www.w3.org/2000/svg", tag);
  for (const [key, value] of Object.entries(attrs)) node.setAttribute(key, value);
  if (text !== null) node.textContent = text;
  return node;
}

export function formatValue(value) {
  if (typeof value === "number") return Number.isInteger(value) ? String(value) : value.toFixed(2);
  return String(value);
}

const pad = (n) => String(n).padStart(2, "0");

/** Local wall-clock time of epoch ms `ts`: HH:MM, or HH:MM:SS with `seconds`. */
export function clock(ts, seconds = true) {
  const d = new Date(ts);
  const hm = `${pad(d.getHours())}:${pad(d.getMinutes())}`;
  return seconds ? `${hm}:${pad(d.getSeconds())}` : hm;
}

/** HH:MM:SS today, or the date and time for anything older. */
export function when(ts) {
  const d = new Date(ts);
  return d.toDateString() === new Date().toDateString() ? clock(ts) : `${d.toLocaleDateString()} ${clock(ts)}`;
}

export function ago(iso) {
  if (!iso) return "never";
  const seconds = Math.max(0, Math.round((Date.now() - Date.parse(iso)) / 1000));
  if (seconds < 60) return `${seconds} s ago`;
  if (seconds < 3600) return `${Math.floor(seconds / 60)} min ago`;
  return `${Math.floor(seconds / 3600)} h ago`;
}

// Why a device went offline, as people say it. Online needs no reason: connected or reported online
// say the same thing. `reported_offline` shows the device's own words (its `detail`) when it gave any.
const OFFLINE_REASONS = {
  clean_disconnect: "clean disconnect",
  last_will: "last will",
  connection_lost: "connection lost",
  keepalive_timeout: "keepalive timeout",
  taken_over: "taken over",
  disabled: "disabled",
  acl_violation: "ACL violation",
  hub_stopped: "hub stopped",
  reported_offline: "reported offline",
};

/** `{online, text, why}` of a device or status event: "online", or "offline · last will". */
export function presence(d) {
  if (d.online) return { online: true, text: "online", why: "" };
  const why = d.reason === "reported_offline" && d.detail ? d.detail : OFFLINE_REASONS[d.reason] || "";
  return { online: false, text: why ? `offline · ${why}` : "offline", why };
}

/** Fill `node` (a `.presence` element) with a device's presence: the state, then the reason if any. */
export function renderPresence(node, d) {
  const p = presence(d);
  node.className = `presence ${p.online ? "online" : "offline"}`;
  node.title = d.reason && d.reason !== "unknown" ? `reason: ${d.reason}` : "";
  node.replaceChildren(el("span", { class: "state" }, p.online ? "online" : "offline"));
  if (p.why) node.append(el("span", { class: "why" }, ` · ${p.why}`));
}
