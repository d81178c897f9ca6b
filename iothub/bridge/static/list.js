// The device table: one row per device in id order, updated in place. An event touches its own row
// only; the whole table is walked when the device list is (re)loaded or a filter changes.
import { ago, el, formatValue, renderPresence } from "./format.js";

const MAX_VALUES_SHOWN = 6;

export class DeviceList {
  /** `onPick(id)` is called when the user clicks a row. */
  constructor(onPick) {
    this.onPick = onPick;
    this.body = document.querySelector("#devices tbody");
    this.rows = new Map(); // id -> <tr>
    this.order = []; // device ids, sorted: the order of the rows
    this.selected = null;
    this.filters = { text: "", label: "", online: "" };
    this.readFilters();
  }

  readFilters() {
    this.filters = {
      text: document.getElementById("filter-text").value.trim().toLowerCase(),
      label: document.getElementById("filter-label").value,
      online: document.getElementById("filter-online").value,
    };
  }

  matches(d) {
    const { text, label, online } = this.filters;
    if (text && ![d.id, d.name || "", d.type || ""].some((s) => s.toLowerCase().includes(text))) return false;
    if (label) {
      const [key, value] = label.split("=");
      if ((d.labels || {})[key] !== value) return false;
    }
    if (online && String(Boolean(d.online)) !== online) return false;
    return true;
  }

  /** Every row again, from `devices` (id -> device): after a (re)load or a filter change. */
  renderAll(devices) {
    for (const [id, row] of this.rows) {
      if (!devices.has(id)) { row.remove(); this.rows.delete(id); }
    }
    this.order = [...devices.keys()].sort();
    for (const id of this.order) {
      this.render(devices.get(id), []);
      this.body.append(this.rows.get(id)); // keeps the rows in id order
    }
    document.getElementById("no-devices").hidden = this.order.length > 0;
  }

  /** The row of a device not seen before, placed in id order (a binary search, not a sort). */
  newRow(d) {
    const row = el("tr", { "data-device-id": d.id },
      el("td", {}, el("div", { class: "device-id" }), el("div", { class: "device-type" })),
      el("td", {}, el("span", { class: "presence" })),
      el("td", { class: "last-seen" }),
      el("td", {}, el("div", { class: "values" })));
    row.addEventListener("click", () => this.onPick(d.id));
    this.rows.set(d.id, row);
    let lo = 0;
    let hi = this.order.length;
    while (lo < hi) {
      const mid = (lo + hi) >> 1;
      if (this.order[mid] < d.id) lo = mid + 1;
      else hi = mid;
    }
    if (this.order[lo] !== d.id) this.order.splice(lo, 0, d.id);
    const next = this.rows.get(this.order[lo + 1]);
    this.body.insertBefore(row, next && next.isConnected ? next : null);
    document.getElementById("no-devices").hidden = true;
    return row;
  }

  /** Bring one device's row up to date; `changed` metrics flash. */
  render(d, changed) {
    const row = this.rows.get(d.id) || this.newRow(d);
    row.hidden = !this.matches(d);
    row.classList.toggle("selected", this.selected === d.id);
    row.querySelector(".device-id").textContent = d.name && d.name !== d.id ? `${d.id} (${d.name})` : d.id;
    row.querySelector(".device-type").textContent =
      [d.type, ...Object.entries(d.labels || {}).map(([k, v]) => `${k}=${v}`)].filter(Boolean).join(" · ");
    renderPresence(row.querySelector(".presence"), d);
    const seen = row.querySelector(".last-seen");
    seen.textContent = ago(d.last_seen);
    seen.dataset.iso = d.last_seen || "";
    row.querySelector(".values").replaceChildren(...Object.entries(d.latest || {}).slice(0, MAX_VALUES_SHOWN).map(
      ([metric, v]) => el("span", { class: `value${changed.includes(metric) ? " flash" : ""}`, "data-metric": metric },
        el("span", { class: "name" }, metric), formatValue(v.value))));
  }

  select(id) {
    this.rows.get(this.selected)?.classList.remove("selected");
    this.selected = id;
    this.rows.get(id)?.classList.add("selected");
  }

  /** The first device the filters show, else the first at all, else null. */
  first() {
    return this.order.find((id) => !this.rows.get(id).hidden) ?? this.order[0] ?? null;
  }

  renderLabels(devices) {
    const select = document.getElementById("filter-label");
    const current = select.value;
    const labels = new Set();
    for (const d of devices.values()) {
      for (const [k, v] of Object.entries(d.labels || {})) labels.add(`${k}=${v}`);
    }
    select.replaceChildren(el("option", { value: "" }, "All labels"),
      ...[...labels].sort().map((l) => el("option", { value: l }, l)));
    select.value = labels.has(current) ? current : "";
    this.readFilters();
  }

  /** "3 min ago" moves on while nothing arrives. */
  tick() {
    for (const row of this.rows.values()) {
      const cell = row.cells[2];
      cell.textContent = ago(cell.dataset.iso);
    }
  }
}
