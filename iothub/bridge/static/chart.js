// One chart per metric of the selected device, in SVG drawn at the element's own pixel size (text is
// never stretched): a time axis, a value axis, and a tooltip with the value and time under the pointer.
// Numbers are a line; booleans are on/off bands (a filled band where on, a thin bar where off; an
// aggregated window's share of time on shows as the band's opacity). Text values are not charted.
// SVG rather than a canvas (or a charting library): only the selected device is charted, each series is
// thinned to about two points per pixel, and the page redraws at most a few times a second, so a
// drawing is a few dozen elements; in exchange ticks, values and tooltip stay text in the page.
import { clock, el, formatValue, svg } from "./format.js";

const HEIGHT = 110;
const TOP = 6;
const BOTTOM = 18; // room for the time labels
const RIGHT = 6;
const TICK_SPACING_PX = 60;
const TICK_STEPS_S = [5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200];
const MIN_SPAN_MS = 60_000;
// A series is thinned once it holds more points than this: about two per pixel of the widest chart.
export const MAX_POINTS = 1200;

/**
 * At most `limit` of `points` ([ts, value] sorted by ts), same shape; `points` itself when it holds no
 * more than that (so a thinned series is never thinned again). The time range is cut into
 * (`limit` - 2) / 2 equal spans and each keeps its lowest and highest point (booleans count as 0 and 1;
 * text keeps its first and last), in time order, and the series keeps its first and last point. What
 * a line or band drawn one span per pixel shows.
 */
export function thin(points, limit) {
  if (points.length <= limit) return points;
  const buckets = Math.max(1, Math.floor((limit - 2) / 2));
  const from = points[0][0];
  const span = points[points.length - 1][0] - from || 1;
  const out = [];
  let bucket = -1;
  let lo = null;
  let hi = null;
  const close = () => {
    if (lo === null) return;
    if (lo === hi) out.push(lo);
    else if (lo[0] <= hi[0]) out.push(lo, hi);
    else out.push(hi, lo);
  };
  for (const point of points) {
    const b = Math.min(buckets - 1, Math.floor(((point[0] - from) / span) * buckets));
    const v = typeof point[1] === "string" ? null : Number(point[1]);
    if (b !== bucket) {
      close();
      bucket = b;
      lo = hi = point;
    } else if (v === null) {
      hi = point; // text: the first and the last of the bucket
    } else {
      if (v < Number(lo[1])) lo = point;
      if (v >= Number(hi[1])) hi = point;
    }
  }
  close();
  if (out[0] !== points[0]) out.unshift(points[0]);
  if (out[out.length - 1] !== points[points.length - 1]) out.push(points[points.length - 1]);
  return out;
}

/** Insert `[ts, value]` into a series sorted by time (live points nearly always go last). */
export function insertPoint(points, ts, value) {
  let i = points.length;
  while (i > 0 && points[i - 1][0] > ts) i--;
  points.splice(i, 0, [ts, value]);
}

/** Round local times between `from` and `to`, at most one per 60 px of `widthPx`, and how to print them. */
export function timeTicks(from, to, widthPx) {
  const most = Math.max(2, Math.floor(widthPx / TICK_SPACING_PX));
  const zone = new Date(from).getTimezoneOffset() * 60_000; // round on the local clock, not UTC
  let ticks = [];
  let step = 0;
  for (const seconds of TICK_STEPS_S) {
    step = seconds * 1000;
    ticks = [];
    for (let t = Math.ceil((from - zone) / step) * step + zone; t <= to; t += step) ticks.push(t);
    if (ticks.length <= most) break;
  }
  return { ticks, seconds: step < 60_000 };
}

/** Index of the last point at or before `ts` (0 if none is). Points are sorted by time. */
function atOrBefore(points, ts) {
  let lo = 0;
  let hi = points.length - 1;
  while (lo < hi) {
    const mid = (lo + hi + 1) >> 1;
    if (points[mid][0] <= ts) lo = mid;
    else hi = mid - 1;
  }
  return lo;
}

const share = (v) => (typeof v === "boolean" ? Number(v) : v);

function onOff(v) {
  const s = share(v);
  if (s === 1) return "on";
  if (s === 0) return "off";
  return `on ${Math.round(s * 100)}% of the time`;
}

export class Chart {
  constructor(metric) {
    this.metric = metric;
    this.points = [];
    this.kind = "number";
    this.layout = null; // scales of the last drawing, for the tooltip
    this.pointerX = null;
    this.now = el("span", { class: "now" });
    this.graphic = svg("svg", { height: HEIGHT });
    this.hover = svg("g", { class: "hover" });
    this.tip = el("div", { class: "tip" });
    this.tip.hidden = true;
    this.message = el("div", { class: "empty" });
    this.plot = el("div", { class: "plot" }, this.graphic, this.tip, this.message);
    this.element = el("div", { class: "chart", "data-metric": metric },
      el("div", { class: "chart-head" }, el("span", { class: "name" }, metric), this.now), this.plot);
    this.plot.addEventListener("pointermove", (event) => {
      this.pointerX = event.clientX - this.plot.getBoundingClientRect().left;
      this.showTip();
    });
    this.plot.addEventListener("pointerleave", () => {
      this.pointerX = null;
      this.showTip();
    });
  }

  /**
   * Draw `points` ([ts, value] sorted by ts) of a `kind` ("number", "boolean", "text") metric; the head
   * shows `latest` (the device's latest raw value), else the last point (which may be an aggregate).
   */
  update(points, windowStart, kind, latest = undefined) {
    this.points = points;
    this.windowStart = windowStart;
    this.kind = kind;
    this.latest = latest;
    this.draw();
  }

  draw() {
    const points = this.points;
    const last = this.latest !== undefined ? this.latest : points.length ? points[points.length - 1][1] : null;
    this.now.textContent = last === null ? "" : this.kind === "boolean" ? onOff(last) : formatValue(last);
    this.graphic.replaceChildren();
    this.layout = null;
    const enough = this.kind === "boolean" ? points.length >= 1 : this.kind === "number" && points.length >= 2;
    this.message.textContent = enough ? "" : !points.length ? "no data in this window"
      : this.kind === "text" ? "text values are not charted" : "collecting…";
    this.message.hidden = enough;
    this.graphic.style.display = enough ? "" : "none";
    if (enough) this.kind === "boolean" ? this.drawBands() : this.drawLine();
    this.showTip();
  }

  frame(labels) {
    const width = Math.max(160, Math.round(this.plot.clientWidth || 280));
    const now = Date.now();
    const from = Math.max(this.windowStart, Math.min(this.points[0][0], now - MIN_SPAN_MS));
    const left = 6 + 6 * Math.max(...labels.map((l) => l.length));
    const x = (ts) => left + ((ts - from) / (now - from)) * (width - left - RIGHT);
    this.graphic.setAttribute("viewBox", `0 0 ${width} ${HEIGHT}`);
    this.graphic.setAttribute("width", width);
    const g = this.graphic;
    const { ticks, seconds } = timeTicks(from, now, width - left - RIGHT);
    for (const t of ticks) {
      const tx = x(t);
      g.append(svg("line", { class: "grid", x1: tx, x2: tx, y1: TOP, y2: HEIGHT - BOTTOM + 3 }));
      const anchor = tx > width - 26 ? "end" : tx < left + 26 ? "start" : "middle";
      g.append(svg("text", { class: "axis tick", x: tx, y: HEIGHT - 4, "text-anchor": anchor }, clock(t, seconds)));
    }
    g.append(svg("line", { class: "baseline", x1: left, x2: width - RIGHT, y1: HEIGHT - BOTTOM, y2: HEIGHT - BOTTOM }));
    this.layout = { width, left, from, now, x };
    return this.layout;
  }

  drawLine() {
    const points = this.points;
    let min = Infinity;
    let max = -Infinity;
    for (const [, v] of points) { min = Math.min(min, v); max = Math.max(max, v); }
    if (min === max) { min -= 1; max += 1; }
    const { x } = this.frame([formatValue(max), formatValue(min)]);
    const y = (v) => TOP + 4 + ((max - v) / (max - min)) * (HEIGHT - BOTTOM - TOP - 8);
    this.layout.y = y;
    const g = this.graphic;
    g.append(svg("text", { class: "axis value-label", x: this.layout.left - 4, y: y(max) + 3, "text-anchor": "end" },
      formatValue(max)));
    g.append(svg("text", { class: "axis value-label", x: this.layout.left - 4, y: y(min) + 3, "text-anchor": "end" },
      formatValue(min)));
    const d = points.map(([ts, v], i) => `${i ? "L" : "M"}${x(ts).toFixed(1)},${y(v).toFixed(1)}`).join("");
    g.append(svg("path", { class: "line", d }), this.hover);
  }

  drawBands() {
    const { x, now, left } = this.frame(["off"]);
    const g = this.graphic;
    const onTop = TOP + 2;
    const onHeight = HEIGHT - BOTTOM - TOP - 14;
    const offY = HEIGHT - BOTTOM - 6;
    g.append(svg("text", { class: "axis value-label", x: left - 4, y: onTop + onHeight / 2 + 3, "text-anchor": "end" }, "on"));
    g.append(svg("text", { class: "axis value-label", x: left - 4, y: offY + 4, "text-anchor": "end" }, "off"));
    const points = this.points;
    // Each value holds until the next point; runs of the same value make one band.
    for (let i = 0; i < points.length;) {
      const s = share(points[i][1]);
      let j = i + 1;
      while (j < points.length && share(points[j][1]) === s) j++;
      const x1 = x(Math.max(points[i][0], this.layout.from));
      const x2 = x(j < points.length ? points[j][0] : now);
      const w = Math.max(1, x2 - x1).toFixed(1);
      if (s > 0) {
        g.append(svg("rect", { class: "band on", x: x1.toFixed(1), y: onTop, width: w, height: onHeight, "fill-opacity": s }));
      }
      if (s < 1) g.append(svg("rect", { class: "band off", x: x1.toFixed(1), y: offY, width: w, height: 4 }));
      i = j;
    }
    g.append(this.hover);
  }

  /** The tooltip for the point under the pointer: the nearest point, or for bands the value then held. */
  showTip() {
    const layout = this.layout;
    this.hover.replaceChildren();
    if (this.pointerX === null || !layout) {
      this.tip.hidden = true;
      return;
    }
    const { x, from, now, left, width } = layout;
    const ts = from + ((this.pointerX - left) / (width - left - RIGHT)) * (now - from);
    const points = this.points;
    let i = atOrBefore(points, ts);
    if (this.kind !== "boolean" && i + 1 < points.length && points[i + 1][0] - ts < ts - points[i][0]) i += 1;
    const [pts, value] = points[i];
    const px = x(Math.max(pts, from));
    this.hover.append(svg("line", { class: "guide", x1: px, x2: px, y1: TOP, y2: HEIGHT - BOTTOM }));
    if (layout.y) this.hover.append(svg("circle", { class: "dot", cx: px, cy: layout.y(value), r: 3 }));
    const text = this.kind === "boolean" ? onOff(value) : formatValue(value);
    this.tip.replaceChildren(el("b", { class: "tip-value" }, text), " ", el("span", { class: "tip-time" }, clock(pts)));
    this.tip.hidden = false;
    const flip = px > width / 2;
    this.tip.style.left = flip ? "" : `${px + 8}px`;
    this.tip.style.right = flip ? `${width - px + 8}px` : "";
  }
}
