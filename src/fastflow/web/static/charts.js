// Charts of the web UI, drawn as SVG by the browser: axes with units and readable tick
// labels, a tooltip (<title>) on every mark, links on marks that lead somewhere, and an
// empty state ("no runs yet"). No library, nothing from the network, no inline style (the
// CSP forbids it): colours come from classes in app.css, in light and dark schemes.
//
//   fastflowCharts.stackedBars(svg, {...})  runs per day by status (overview)
//   fastflowCharts.bars(svg, {...})         one bar per run, height = duration (pipeline)
//   fastflowCharts.lines(svg, {...})        series over time or seconds, one or two y axes
//                                           (disk history; the run page's CPU/RAM)
"use strict";

const fastflowCharts = (() => {
  const NS = "http://www.w3.org/2000/svg";
  const DAY_MS = 86400000;

  function el(name, attrs = {}, text) {
    const node = document.createElementNS(NS, name);
    for (const [k, v] of Object.entries(attrs)) {
      if (v !== undefined && v !== null) node.setAttribute(k, String(v));
    }
    if (text !== undefined) node.textContent = text;
    return node;
  }

  function titled(node, tip) {
    if (tip) node.appendChild(el("title", {}, tip));
    return node;
  }

  // --- numbers and units ----------------------------------------------------------------

  // "nice" ticks from 0 to at least `max` in about `n` steps: {top, step, values, label}
  function ticks(max, n = 4) {
    const span = max > 0 && Number.isFinite(max) ? max : 1;
    const raw = span / n;
    const pow = 10 ** Math.floor(Math.log10(raw));
    const mult = [1, 2, 2.5, 5, 10].find((m) => m * pow >= raw - 1e-12) || 10;
    const step = mult * pow;
    const top = Math.ceil(span / step - 1e-9) * step;
    const decimals = Math.max(0, -Math.floor(Math.log10(step) + 1e-9) + (mult === 2.5 ? 1 : 0));
    const values = [];
    for (let i = 0; i * step <= top + step / 2; i += 1) values.push(i * step);
    return { top, step, values, label: (v) => v.toFixed(decimals) };
  }

  // integer ticks (counts): steps of at least 1
  function countTicks(max, n = 4) {
    const t = ticks(Math.max(1, max), n);
    if (t.step >= 1) return t;
    const values = [];
    const top = Math.max(1, Math.ceil(max));
    for (let v = 0; v <= top; v += 1) values.push(v);
    return { top, step: 1, values, label: (v) => String(v) };
  }

  const BYTE_UNITS = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];

  function byteUnit(max) {
    let i = 0;
    while (i < BYTE_UNITS.length - 1 && max >= 1024 ** (i + 1)) i += 1;
    return { div: 1024 ** i, name: BYTE_UNITS[i] };
  }

  function formatBytes(n) {
    if (n === null || n === undefined || !Number.isFinite(Number(n))) return "–";
    const v = Number(n);
    const u = byteUnit(Math.abs(v));
    const x = v / u.div;
    return `${u.div === 1 ? x.toFixed(0) : x.toFixed(x < 10 ? 2 : 1)} ${u.name}`;
  }

  function formatDuration(s) {
    if (s === null || s === undefined || !Number.isFinite(Number(s))) return "–";
    const v = Number(s);
    if (v < 60) return `${v < 10 ? v.toFixed(1) : v.toFixed(0)} s`;
    if (v < 3600) return `${Math.floor(v / 60)} min ${Math.round(v % 60)} s`;
    return `${Math.floor(v / 3600)} h ${Math.round((v % 3600) / 60)} min`;
  }

  // a value axis in a unit that suits `max`: {top, values, label, unit, scale}
  function unitTicks(kind, max, n = 4) {
    if (kind === "bytes") {
      const u = byteUnit(max);
      const t = ticks(max / u.div, n);
      return { ...t, top: t.top * u.div, values: t.values.map((v) => v * u.div),
        label: (v) => t.label(v / u.div), unit: u.name };
    }
    if (kind === "duration") {
      const [div, unit] = max >= 2 * 3600 ? [3600, "h"] : max >= 120 ? [60, "min"] : [1, "s"];
      const t = ticks(max / div, n);
      return { ...t, top: t.top * div, values: t.values.map((v) => v * div),
        label: (v) => t.label(v / div), unit };
    }
    if (kind === "count") return { ...countTicks(max, n), unit: "" };
    return { ...ticks(max, n), unit: "" };
  }

  function pad2(n) { return String(n).padStart(2, "0"); }

  function utcDay(ms) {
    const d = new Date(ms);
    return `${d.getUTCFullYear()}-${pad2(d.getUTCMonth() + 1)}-${pad2(d.getUTCDate())}`;
  }

  function utcTime(ms) {
    const d = new Date(ms);
    return `${utcDay(ms)} ${pad2(d.getUTCHours())}:${pad2(d.getUTCMinutes())}`;
  }

  // time ticks (UTC) over [lo, hi] ms: whole hours or days, about `n` of them
  function timeTicks(lo, hi, n = 6) {
    const span = Math.max(1, hi - lo);
    const steps = [3600e3, 3 * 3600e3, 6 * 3600e3, 12 * 3600e3, DAY_MS, 2 * DAY_MS, 7 * DAY_MS,
      14 * DAY_MS, 30 * DAY_MS, 91 * DAY_MS, 365 * DAY_MS];
    const step = steps.find((s) => span / s <= n) || steps[steps.length - 1];
    const values = [];
    for (let v = Math.ceil(lo / step) * step; v <= hi; v += step) values.push(v);
    const label = step >= DAY_MS ? (v) => utcDay(v).slice(5) : (v) => utcTime(v).slice(5);
    return { values, label, unit: step >= DAY_MS ? "date, UTC" : "UTC" };
  }

  // --- frame ----------------------------------------------------------------------------

  function frame(svg, opts, margin) {
    const W = opts.width || Number(svg.viewBox.baseVal.width) || 900;
    const H = opts.height || Number(svg.viewBox.baseVal.height) || 240;
    svg.setAttribute("viewBox", `0 0 ${W} ${H}`);
    const m = { left: 58, right: 20, top: 12, bottom: 44, ...margin };
    return { W, H, m, pw: W - m.left - m.right, ph: H - m.top - m.bottom };
  }

  function leftAxis(parts, f, axis, y, title, cls = "") {
    for (const v of axis.values) {
      const yv = y(v);
      parts.push(el("line", { class: "gridline", x1: f.m.left, x2: f.m.left + f.pw, y1: yv, y2: yv }));
      parts.push(el("text", { class: `tick ${cls}`, x: f.m.left - 6, y: yv + 4, "text-anchor": "end" }, axis.label(v)));
    }
    parts.push(el("line", { class: "axis", x1: f.m.left, x2: f.m.left, y1: f.m.top, y2: f.m.top + f.ph }));
    parts.push(el("text", { class: `axis-title ${cls}`, x: 0, y: 0, "text-anchor": "middle",
      transform: `translate(14 ${f.m.top + f.ph / 2}) rotate(-90)` }, title));
  }

  function rightAxis(parts, f, axis, y, title, cls = "") {
    const x = f.m.left + f.pw;
    for (const v of axis.values) {
      parts.push(el("text", { class: `tick ${cls}`, x: x + 6, y: y(v) + 4, "text-anchor": "start" }, axis.label(v)));
    }
    parts.push(el("line", { class: "axis", x1: x, x2: x, y1: f.m.top, y2: f.m.top + f.ph }));
    parts.push(el("text", { class: `axis-title ${cls}`, x: 0, y: 0, "text-anchor": "middle",
      transform: `translate(${f.W - 12} ${f.m.top + f.ph / 2}) rotate(90)` }, title));
  }

  function bottomAxis(parts, f, labels, title, cls = "") {
    const y0 = f.m.top + f.ph;
    parts.push(el("line", { class: "axis", x1: f.m.left, x2: f.m.left + f.pw, y1: y0, y2: y0 }));
    for (const { x, text } of labels) {
      parts.push(el("line", { class: "axis", x1: x, x2: x, y1: y0, y2: y0 + 4 }));
      parts.push(el("text", { class: `tick ${cls}`, x, y: y0 + 16, "text-anchor": "middle" }, text));
    }
    parts.push(el("text", { class: "axis-title", x: f.m.left + f.pw / 2, y: f.H - 6, "text-anchor": "middle" }, title));
  }

  function emptyNote(parts, f, text) {
    parts.push(el("text", { class: "empty", x: f.m.left + f.pw / 2, y: f.m.top + f.ph / 2, "text-anchor": "middle" }, text));
  }

  function withUnit(title, unit) { return unit ? `${title} (${unit})` : title; }

  // --- stacked bars ---------------------------------------------------------------------

  // opts: categories [{key, label, tip}], series [{key, label, cls}], value(cat, s) -> n,
  // href(cat, s) -> url | null, tip(cat, s, n) -> text, yTitle, xTitle, empty
  function stackedBars(svg, opts) {
    const f = frame(svg, opts, { left: 52 });
    const cats = opts.categories || [];
    const totals = cats.map((c) => opts.series.reduce((a, s) => a + (Number(opts.value(c, s)) || 0), 0));
    const max = Math.max(0, ...totals);
    const axis = unitTicks("count", max);
    const y = (v) => f.m.top + f.ph - (v / axis.top) * f.ph;
    const parts = [];
    leftAxis(parts, f, axis, y, opts.yTitle || "runs");
    const slot = cats.length ? f.pw / cats.length : f.pw;
    const bw = Math.max(2, Math.min(48, slot * 0.7));
    const every = Math.max(1, Math.ceil(cats.length / Math.floor(f.pw / 56)));
    const labels = [];
    cats.forEach((c, i) => {
      const cx = f.m.left + slot * (i + 0.5);
      if ((cats.length - 1 - i) % every === 0) labels.push({ x: cx, text: c.label }); // today always
      let base = 0;
      const group = el("g", { class: "bar", "data-key": c.key, "data-total": totals[i] });
      for (const s of opts.series) {
        const n = Number(opts.value(c, s)) || 0;
        if (n <= 0) continue;
        const top = y(base + n);
        const rect = titled(el("rect", { class: `seg ${s.cls}`, x: (cx - bw / 2).toFixed(1), y: top.toFixed(1),
          width: bw.toFixed(1), height: Math.max(1, y(base) - top).toFixed(1), "data-series": s.key, "data-value": n }),
          opts.tip ? opts.tip(c, s, n) : `${c.label}: ${n} ${s.label}`);
        const href = opts.href ? opts.href(c, s) : null;
        if (href) {
          const a = el("a", { href, class: "seg-link", "data-series": s.key, "data-key": c.key });
          a.appendChild(rect);
          group.appendChild(a);
        } else {
          group.appendChild(rect);
        }
        base += n;
      }
      if (totals[i] > 0) {
        group.appendChild(el("text", { class: "bar-total", x: cx, y: y(totals[i]) - 4, "text-anchor": "middle" }, String(totals[i])));
      }
      parts.push(group);
    });
    bottomAxis(parts, f, labels, opts.xTitle || "");
    if (max === 0) emptyNote(parts, f, opts.empty || "no runs yet");
    svg.replaceChildren(...parts);
    svg.dataset.bars = String(cats.length);
    svg.dataset.total = String(totals.reduce((a, b) => a + b, 0));
  }

  // --- one bar per item -----------------------------------------------------------------

  // opts: items [{value|null, cls, href, tip, label}], kind ("duration" | "count" | ...),
  // yTitle, xTitle, empty. A null value (a run still going) is a thin marker at the base.
  function bars(svg, opts) {
    const f = frame(svg, opts, { left: 58 });
    const items = opts.items || [];
    const max = Math.max(0, ...items.map((it) => Number(it.value) || 0));
    const axis = unitTicks(opts.kind || "number", max > 0 ? max : 1);
    const y = (v) => f.m.top + f.ph - (v / axis.top) * f.ph;
    const parts = [];
    leftAxis(parts, f, axis, y, withUnit(opts.yTitle || "", axis.unit));
    const slot = items.length ? f.pw / Math.max(items.length, 10) : f.pw;
    const bw = Math.max(2, Math.min(36, slot * 0.75));
    const labels = [];
    const every = Math.max(1, Math.ceil(Math.max(items.length, 10) / Math.floor(f.pw / 120)));
    items.forEach((it, i) => {
      const cx = f.m.left + slot * (i + 0.5);
      if (it.label && i % every === 0) labels.push({ x: cx, text: it.label });
      const v = it.value === null || it.value === undefined ? null : Number(it.value);
      const top = v === null ? y(0) - 3 : Math.min(y(v), y(0) - 2); // 2 px: a short run shows
      const rect = titled(el("rect", { class: `bar-mark ${it.cls || ""}${v === null ? " pending" : ""}`,
        x: (cx - bw / 2).toFixed(1), y: top.toFixed(1), width: bw.toFixed(1),
        height: (y(0) - top).toFixed(1), "data-value": v === null ? "" : v }), it.tip);
      if (it.href) {
        const a = el("a", { href: it.href, class: "bar-link" });
        a.appendChild(rect);
        parts.push(a);
      } else {
        parts.push(rect);
      }
    });
    bottomAxis(parts, f, labels, opts.xTitle || "");
    if (!items.length) emptyNote(parts, f, opts.empty || "no runs yet");
    svg.replaceChildren(...parts);
    svg.dataset.bars = String(items.length);
  }

  // --- lines ----------------------------------------------------------------------------

  // opts: x {kind: "time" (ms since the epoch) | "number", title, format(v), cls},
  // left / right {kind: "bytes" | "duration" | "number" | "count", title, unit, cls,
  // min: the least top of the axis},
  // series [{key, label, cls, axis: "left" | "right", points: [{x, y, tip}]}], empty.
  // A series of one point is drawn as a point; points are drawn up to `maxDots`.
  function lines(svg, opts) {
    const hasRight = (opts.series || []).some((s) => s.axis === "right");
    const f = frame(svg, opts, { left: 62, right: hasRight ? 66 : 24 });
    const all = (opts.series || []).flatMap((s) => s.points.filter((p) => p.y !== null && p.y !== undefined));
    const xs = all.map((p) => Number(p.x));
    const timeX = (opts.x && opts.x.kind) === "time";
    let lo = xs.length ? Math.min(...xs) : 0;
    let hi = xs.length ? Math.max(...xs) : 1;
    if (timeX) {
      if (hi - lo < 3600e3) { lo -= 12 * 3600e3; hi += 12 * 3600e3; } // one instant: a day around it
    } else {
      lo = Math.min(0, lo);
      hi = Math.max(hi, lo + 1);
    }
    const xt = timeX ? timeTicks(lo, hi) : (() => { const t = ticks(hi - lo, 6); return { ...t, values: t.values.map((v) => v + lo) }; })();
    if (!timeX) hi = lo + ticks(hi - lo, 6).top;
    const x = (v) => f.m.left + ((v - lo) / (hi - lo)) * f.pw;
    const axisFor = (side) => {
      const spec = opts[side] || {};
      const pts = (opts.series || []).filter((s) => (s.axis || "left") === side).flatMap((s) => s.points);
      const max = Math.max(spec.min || 0, ...pts.map((p) => Number(p.y) || 0));
      return { spec, t: unitTicks(spec.kind || "number", max > 0 ? max : 1) };
    };
    const left = axisFor("left");
    const right = hasRight ? axisFor("right") : null;
    const yOf = (a) => (v) => f.m.top + f.ph - (v / a.t.top) * f.ph;
    const parts = [];
    leftAxis(parts, f, left.t, yOf(left), withUnit(left.spec.title || "", left.spec.unit || left.t.unit), left.spec.cls || "");
    if (right) rightAxis(parts, f, right.t, yOf(right), withUnit(right.spec.title || "", right.spec.unit || right.t.unit), right.spec.cls || "");
    const fmt = (opts.x && opts.x.format) || xt.label;
    bottomAxis(parts, f, xt.values.map((v) => ({ x: x(v), text: fmt(v) })),
      withUnit((opts.x && opts.x.title) || "", timeX ? xt.unit : ""), (opts.x && opts.x.cls) || "");
    for (const s of opts.series || []) {
      const y = yOf(s.axis === "right" ? right : left);
      const pts = s.points.filter((p) => p.y !== null && p.y !== undefined);
      if (pts.length > 1) {
        const points = pts.map((p) => `${x(Number(p.x)).toFixed(1)},${y(Number(p.y)).toFixed(1)}`).join(" ");
        parts.push(el("polyline", { class: `series ${s.cls || ""}`, points, "data-series": s.key }));
      }
      if (pts.length <= (opts.maxDots || 120)) {
        for (const p of pts) {
          parts.push(titled(el("circle", { class: `point ${s.cls || ""}`, cx: x(Number(p.x)).toFixed(1),
            cy: y(Number(p.y)).toFixed(1), r: 3, "data-series": s.key }), p.tip));
        }
      }
    }
    if (!all.length) emptyNote(parts, f, opts.empty || "no data yet");
    svg.replaceChildren(...parts);
    svg.dataset.points = String(all.length);
  }

  return { ticks, countTicks, unitTicks, timeTicks, formatBytes, formatDuration, utcDay, utcTime,
    stackedBars, bars, lines, el };
})();
