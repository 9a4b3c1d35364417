// Small SVG charts built with DOM calls (no inline style: colours come from app.css classes).

const NS = "http://www.w3.org/2000/svg";

function el(name, attrs, text) {
  const e = document.createElementNS(NS, name);
  for (const [k, v] of Object.entries(attrs || {})) {
    e.setAttribute(k, String(v));
  }
  if (text !== undefined) {
    e.textContent = text;
  }
  return e;
}

/** The sum of a usage bucket's denied counts. */
export function deniedOf(bucket) {
  let n = 0;
  for (const v of Object.values((bucket && bucket.denied) || {})) {
    n += Number(v) || 0;
  }
  return n;
}

/**
 * A sparkline of values (oldest first) as an inline SVG image, labelled for
 * screen readers with label.
 */
export function sparkline(values, label) {
  const w = 90, h = 22, pad = 2;
  const svg = el("svg", { width: w, height: h, viewBox: `0 0 ${w} ${h}`, role: "img", "aria-label": label, class: "sparkline" });
  svg.appendChild(el("title", {}, label));
  svg.appendChild(el("line", { x1: 0, y1: h - pad, x2: w, y2: h - pad, class: "spark-base" }));
  if (values.length > 0) {
    const max = Math.max(1, ...values);
    const step = values.length > 1 ? (w - 2 * pad) / (values.length - 1) : 0;
    const pts = values.map((v, i) => `${(pad + i * step).toFixed(1)},${(h - pad - (v / max) * (h - 2 * pad)).toFixed(1)}`);
    svg.appendChild(el("polyline", { points: pts.join(" "), class: "spark-line" }));
  }
  return svg;
}

function tick(t, granularity) {
  const d = new Date(t);
  return granularity === "hour"
    ? d.toLocaleTimeString(undefined, { hour: "2-digit", minute: "2-digit" })
    : d.toLocaleDateString(undefined, { month: "short", day: "numeric" });
}

/**
 * A stacked bar chart of usage buckets ({start, allowed, denied}) as an SVG
 * image: allowed at the bottom, denied on top, with a y scale and a few time
 * labels. label is its accessible name.
 */
export function usageChart(buckets, granularity, label) {
  const w = 720, h = 260, left = 44, right = 8, top = 10, bottom = 28;
  const svg = el("svg", { viewBox: `0 0 ${w} ${h}`, role: "img", "aria-label": label, id: "usage-svg", preserveAspectRatio: "xMidYMid meet" });
  svg.appendChild(el("title", {}, label));
  const totals = buckets.map((b) => (Number(b.allowed) || 0) + deniedOf(b));
  const max = Math.max(1, ...totals);
  const plotW = w - left - right, plotH = h - top - bottom;
  const slot = buckets.length > 0 ? plotW / buckets.length : plotW;
  const barW = Math.max(1, slot * 0.75);
  const y = (v) => top + plotH - (v / max) * plotH;
  // y axis: 0, half and max.
  for (const v of [0, Math.round(max / 2), max]) {
    svg.appendChild(el("line", { x1: left - 4, y1: y(v), x2: w - right, y2: y(v), class: "axis", "stroke-opacity": v === 0 ? 1 : 0.25 }));
    svg.appendChild(el("text", { x: left - 6, y: y(v) + 4, "text-anchor": "end", class: "axis-label" }, String(v)));
  }
  buckets.forEach((b, i) => {
    const a = Number(b.allowed) || 0, d = deniedOf(b);
    const x = left + i * slot + (slot - barW) / 2;
    const g = el("g", { "data-start": b.start, "data-allowed": a, "data-denied": d });
    const tip = `${tick(b.start, granularity)}: ${a} allowed, ${d} denied`;
    g.appendChild(el("title", {}, tip));
    if (a > 0) {
      g.appendChild(el("rect", { x: x.toFixed(2), y: y(a).toFixed(2), width: barW.toFixed(2), height: (top + plotH - y(a)).toFixed(2), class: "bar-allowed" }));
    }
    if (d > 0) {
      g.appendChild(el("rect", { x: x.toFixed(2), y: y(a + d).toFixed(2), width: barW.toFixed(2), height: (y(a) - y(a + d)).toFixed(2), class: "bar-denied" }));
    }
    svg.appendChild(g);
  });
  // About six time labels along the bottom.
  const every = Math.max(1, Math.ceil(buckets.length / 6));
  buckets.forEach((b, i) => {
    if (i % every === 0) {
      svg.appendChild(el("text", { x: (left + i * slot + slot / 2).toFixed(1), y: h - 8, "text-anchor": "middle", class: "axis-label" }, tick(b.start, granularity)));
    }
  });
  return svg;
}
