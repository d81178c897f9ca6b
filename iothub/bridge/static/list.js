// The device table, virtualized: the fleet lives in memory (id order, a filtered view of it), but
// only the rows in the scroll box (and a few either side) exist in the page. Rows have one fixed
// height and the table a fixed layout, so nothing an event changes re-lays-out more than its row.
// Events only mark a device dirty; `flush()` (a few times a second) updates the text of the dirty
// rows that are on screen, in place. Filtering walks the fleet's precomputed search keys.
import { ago, el, formatValue, renderPresence } from "./format.js";

const MAX_VALUES_SHOWN = 6;
const OVERSCAN = 8; // rows drawn beyond each edge of the scroll box
const FRESH_MS = 700; // how long a changed value stays highlighted (give or take a flush)

/** Where `id` goes in the sorted array `ids` (binary search). */
function slot(ids, id) {
  let lo = 0;
  let hi = ids.length;
  while (lo < hi) {
    const mid = (lo + hi) >> 1;
    if (ids[mid] < id) lo = mid + 1;
    else hi = mid;
  }
  return lo;
}

function describe(d) {
  return [d.type, ...Object.entries(d.labels || {}).map(([k, v]) => `${k}=${v}`)].filter(Boolean).join(" · ");
}

function searchKey(d) {
  return `${d.id}\n${d.name || ""}\n${d.type || ""}`.toLowerCase();
}

export class DeviceList {
  /** `onPick(id)` is called when the user clicks a row; `devices` is the page's id -> device map. */
  constructor(onPick, devices) {
    this.onPick = onPick;
    this.devices = devices;
    this.scroller = document.getElementById("devices-scroll");
    this.body = document.querySelector("#devices tbody");
    this.topPad = el("tr", { class: "pad", "aria-hidden": "true" }, el("td", { colspan: "4" }));
    this.bottomPad = el("tr", { class: "pad", "aria-hidden": "true" }, el("td", { colspan: "4" }));
    this.body.replaceChildren(this.topPad, this.bottomPad);
    this.order = []; // every device id, sorted
    this.view = []; // the ids the filters let through, sorted
    this.keys = new Map(); // id -> lowercase "id\nname\ntype", for the text filter
    this.rows = new Map(); // id -> <tr>, the rows on screen
    this.spare = []; // rows off screen, kept for reuse
    this.range = [0, 0]; // [first, end) of `view` drawn
    this.rowHeight = 0; // measured from the first row drawn
    this.dirty = new Map(); // id -> the metrics that changed since the last flush
    this.refilterDue = false;
    this.selected = null;
    this.filters = { text: "", label: "", online: "" };
    this.readFilters();
    this.body.addEventListener("click", (event) => {
      const row = event.target.closest("tr[data-device-id]");
      if (row) this.onPick(row.dataset.deviceId);
    });
    let scrollFrame = 0;
    this.scroller.addEventListener("scroll", () => {
      if (!scrollFrame) scrollFrame = requestAnimationFrame(() => { scrollFrame = 0; this.draw(); });
    }, { passive: true });
    new ResizeObserver(() => this.draw()).observe(this.scroller);
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
    if (text && !(this.keys.get(d.id) ?? searchKey(d)).includes(text)) return false;
    if (label) {
      const at = label.indexOf("="); // keys have no "=", values may: split at the first
      if ((d.labels || {})[label.slice(0, at)] !== label.slice(at + 1)) return false;
    }
    if (online && String(Boolean(d.online)) !== online) return false;
    return true;
  }

  /** The whole fleet again, after a (re)load of the device list. */
  reset() {
    this.order = [...this.devices.keys()].sort();
    this.keys = new Map(this.order.map((id) => [id, searchKey(this.devices.get(id))]));
    this.renderLabels();
    for (const row of this.rows.values()) row.dataset.deviceId = ""; // redrawn from the new data
    this.refilter();
  }

  /** The filters changed (or presence did, under an online filter): recompute the view and redraw. */
  refilter() {
    this.refilterDue = false;
    this.view = this.order.filter((id) => this.matches(this.devices.get(id)));
    const shown = this.view.length;
    const total = this.order.length;
    const count = document.getElementById("list-count");
    const counted = shown === total ? `${total}` : `${shown} of ${total}`;
    if (count.textContent !== counted) count.textContent = counted;
    const empty = document.getElementById("no-devices");
    empty.hidden = shown > 0;
    if (!shown && total) empty.textContent = "No device matches the filters.";
    else if (!total) empty.replaceChildren("No devices yet. Run ", el("code", {}, "iothub simulate"), ".");
    this.draw(true);
  }

  /** A device not seen before (its first event arrived before the list knew it). */
  added(d) {
    this.keys.set(d.id, searchKey(d));
    this.order.splice(slot(this.order, d.id), 0, d.id);
    this.refilterDue = true;
  }

  /** An event changed device `id`; `metrics` are the values it brought (they get highlighted). */
  changed(id, metrics = []) {
    let pending = this.dirty.get(id);
    if (!pending) this.dirty.set(id, (pending = new Set()));
    for (const m of metrics) pending.add(m);
    if (this.filters.online) this.refilterDue = true;
  }

  /** Bring the screen up to date with what changed since the last flush. */
  flush() {
    if (this.refilterDue) this.refilter();
    const now = performance.now();
    this.fade(now);
    for (const [id, metrics] of this.dirty) {
      const row = this.rows.get(id);
      if (row) this.fill(row, this.devices.get(id), metrics, now);
    }
    this.dirty.clear();
  }

  /** Highlights that have had their time go (rows on screen only). */
  fade(now) {
    for (const row of this.rows.values()) {
      for (const slotOf of row.cache.values?.values() ?? []) {
        if (slotOf.until && slotOf.until <= now) { slotOf.until = 0; slotOf.span.classList.remove("fresh"); }
      }
    }
  }

  /** Draw the rows of `view` that the scroll box shows; `all` redraws every one of them. */
  draw(all = false) {
    const n = this.view.length;
    const height = this.rowHeight || 44;
    const visible = Math.ceil((this.scroller.clientHeight || 600) / height);
    const first = Math.max(0, Math.min(Math.floor(this.scroller.scrollTop / height) - OVERSCAN, n - visible - OVERSCAN));
    const end = Math.min(n, first + visible + 2 * OVERSCAN);
    if (!all && first === this.range[0] && end === this.range[1]) return;
    this.range = [first, end];
    const wanted = new Set(this.view.slice(first, end));
    for (const [id, row] of this.rows) {
      if (!wanted.has(id)) { this.rows.delete(id); row.remove(); this.spare.push(row); }
    }
    const now = performance.now();
    let before = this.bottomPad;
    for (let i = end - 1; i >= first; i--) { // bottom up, so each row goes in before the one below it
      const id = this.view[i];
      let row = this.rows.get(id);
      if (!row || all) {
        row = row || this.spare.pop() || this.newRow();
        this.rows.set(id, row);
        this.fill(row, this.devices.get(id), null, now);
      }
      if (row.nextSibling !== before) this.body.insertBefore(row, before);
      before = row;
    }
    this.topPad.style.height = `${first * height}px`;
    this.bottomPad.style.height = `${(n - end) * height}px`;
    if (!this.rowHeight && this.rows.size) { // measured once the list is laid out (not while hidden)
      this.rowHeight = this.rows.values().next().value.getBoundingClientRect().height;
      if (this.rowHeight && Math.abs(this.rowHeight - height) > 0.5) this.draw(true);
    }
  }

  newRow() {
    const row = el("tr", {},
      el("td", {}, el("div", { class: "device-id" }), el("div", { class: "device-type" })),
      el("td", {}, el("span", { class: "presence" })),
      el("td", { class: "last-seen" }),
      el("td", {}, el("div", { class: "values" })));
    row.cache = {};
    return row;
  }

  /**
   * Write device `d` into `row`, touching only what differs from what the row shows; of the `fresh`
   * metrics (a set, or null when the row is drawn anew), those whose value changed are highlighted.
   */
  fill(row, d, fresh, now) {
    const c = row.cache;
    if (row.dataset.deviceId !== d.id) {
      row.dataset.deviceId = d.id;
      row.cache = {};
      return this.fill(row, d, null, now);
    }
    const set = (key, node, text) => {
      if (c[key] !== text) { c[key] = text; node.textContent = text; }
    };
    const [idCell, presenceCell, seenCell, valuesCell] = row.cells;
    row.classList.toggle("selected", this.selected === d.id);
    set("id", idCell.firstChild, d.name && d.name !== d.id ? `${d.id} (${d.name})` : d.id);
    set("type", idCell.lastChild, describe(d));
    const presence = `${d.online}|${d.reason}|${d.detail ?? ""}`;
    if (c.presence !== presence) { c.presence = presence; renderPresence(presenceCell.firstChild, d); }
    c.seenIso = d.last_seen;
    set("seen", seenCell, ago(d.last_seen));
    const latest = Object.entries(d.latest || {}).slice(0, MAX_VALUES_SHOWN);
    const names = latest.map(([m]) => m).join("\n");
    const box = valuesCell.firstChild;
    if (c.names !== names) {
      c.names = names;
      c.values = new Map();
      box.replaceChildren(...latest.map(([metric]) => {
        const text = el("span", { class: "v" });
        const span = el("span", { class: "value", "data-metric": metric }, el("span", { class: "name" }, metric), text);
        c.values.set(metric, { span, text, shown: null, until: 0 });
        return span;
      }));
    }
    for (const [metric, v] of latest) {
      const slotOf = c.values.get(metric);
      const text = formatValue(v.value);
      if (slotOf.shown === text) continue;
      const drawn = slotOf.shown !== null;
      slotOf.shown = text;
      slotOf.text.textContent = text;
      if (fresh && fresh.has(metric) && drawn) {
        if (!slotOf.until) slotOf.span.classList.add("fresh");
        slotOf.until = now + FRESH_MS;
      }
    }
  }

  select(id) {
    this.rows.get(this.selected)?.classList.remove("selected");
    this.selected = id;
    this.rows.get(id)?.classList.add("selected");
  }

  /** Scroll the row of `id` into the middle of the box, if the filters show it and it is off screen. */
  reveal(id) {
    const i = this.view.indexOf(id);
    const height = this.rowHeight || 44;
    const box = this.scroller;
    if (i < 0 || (i * height >= box.scrollTop && (i + 1) * height <= box.scrollTop + box.clientHeight - height)) return;
    box.scrollTop = Math.max(0, i * height - box.clientHeight / 2);
    this.draw();
  }

  /** The first device the filters show, else the first at all, else null. */
  first() {
    return this.view[0] ?? this.order[0] ?? null;
  }

  renderLabels() {
    const select = document.getElementById("filter-label");
    const current = select.value;
    const labels = new Set();
    for (const d of this.devices.values()) {
      for (const [k, v] of Object.entries(d.labels || {})) labels.add(`${k}=${v}`);
    }
    select.replaceChildren(el("option", { value: "" }, "All labels"),
      ...[...labels].sort().map((l) => el("option", { value: l }, l)));
    select.value = labels.has(current) ? current : "";
    this.readFilters();
  }

  /** Once a second: "3 s ago" moves on, and highlights fade; only for the rows on screen. */
  tick() {
    this.fade(performance.now());
    for (const row of this.rows.values()) {
      const c = row.cache;
      const text = ago(c.seenIso);
      if (c.seen !== text) { c.seen = text; row.cells[2].textContent = text; }
    }
  }
}
