// Run detail: live status; log viewer (the last 200 KB, from the start of a line, and
// "Load earlier"); CPU/RAM chart (SVG with time, CPU % and RAM MiB axes), live while the
// run is active.
"use strict";

(() => {
  const meta = document.getElementById("run-meta");
  if (!meta) return;
  const runId = meta.dataset.runId;
  const CHUNK = 200 * 1024;
  const view = document.getElementById("log-view");
  const info = document.getElementById("log-info");
  const earlier = document.getElementById("log-earlier");
  let want = CHUNK; // bytes of the log's end asked for ("Load earlier" adds CHUNK)
  let start = 0; // offset of the first byte shown
  let size = 0;
  let shownOnce = false; // the first view scrolls to the end of the log

  async function fail(res) {
    let detail = res.statusText;
    try { detail = (await res.json()).detail; } catch { /* not JSON */ }
    throw new Error(detail);
  }

  // The last `bytes` bytes of the log, beginning at a line start: one byte more is asked
  // for, and everything up to the first newline is dropped unless the tail is the whole
  // log (that byte tells whether the window already starts a line). Bytes, not text, so
  // that a multi-byte character cut at the window's edge never shows.
  async function fetchTail(bytes) {
    const res = await fetch(`/api/runs/${runId}/logs?tail_bytes=${bytes + 1}`, { credentials: "same-origin" });
    if (!res.ok) await fail(res);
    const total = Number(res.headers.get("X-Log-Size") || 0);
    let buf = new Uint8Array(await res.arrayBuffer());
    let from = Math.max(0, total - (bytes + 1));
    let cut = false;
    if (from > 0) {
      const nl = buf.indexOf(10);
      if (nl >= 0) {
        buf = buf.subarray(nl + 1);
        from += nl + 1;
      } else {
        cut = true; // one line longer than the window: shown from its middle, marked
      }
    }
    return { text: (cut ? "…" : "") + new TextDecoder().decode(buf), size: total, start: from,
             source: res.headers.get("X-Log-Source") };
  }

  async function loadTail({ keepPosition = false } = {}) {
    try {
      const r = await fetchTail(want);
      const follow = !keepPosition && view.scrollHeight - view.scrollTop - view.clientHeight < 40;
      const fromBottom = view.scrollHeight - view.scrollTop;
      size = r.size;
      start = r.start;
      const text = r.text || (size === 0 ? "(empty log)" : "");
      if (view.textContent !== text) {
        view.textContent = text;
        if (keepPosition) view.scrollTop = view.scrollHeight - fromBottom;
        else if (follow || !shownOnce) view.scrollTop = view.scrollHeight;
      }
      shownOnce = true;
      info.textContent = `${size.toLocaleString()} bytes` + (r.source === "archive" ? " · read back from the S3 archive" : "") +
        (start > 0 ? ` · showing the last ${(size - start).toLocaleString()} bytes` : (want > CHUNK ? " · complete" : ""));
      earlier.hidden = start === 0;
    } catch (e) {
      view.textContent = `The log is not available: ${e.message}`;
      earlier.hidden = true;
    }
  }

  earlier.onclick = async () => {
    earlier.disabled = true;
    want = size - start + CHUNK;
    await loadTail({ keepPosition: true });
    earlier.disabled = false;
  };

  // --- CPU/RAM chart -------------------------------------------------------------------

  const SVG = "http://www.w3.org/2000/svg";
  const W = 900, H = 220, LEFT = 52, RIGHT = 64, TOP = 12, BOTTOM = 40;

  function node(name, attrs, text) {
    const el = document.createElementNS(SVG, name);
    for (const [k, v] of Object.entries(attrs)) el.setAttribute(k, String(v));
    if (text !== undefined) el.textContent = text;
    return el;
  }

  // "nice" axis ticks from 0 to at least `max`, about `n` steps, and their labels
  function ticks(max, n = 4) {
    const raw = max / n;
    const pow = 10 ** Math.floor(Math.log10(raw));
    const mult = [1, 2, 2.5, 5, 10].find((m) => m * pow >= raw) || 10;
    const step = mult * pow;
    const top = Math.ceil(max / step - 1e-9) * step;
    const decimals = Math.max(0, -Math.floor(Math.log10(step) + 1e-9) + (mult === 2.5 ? 1 : 0));
    const values = [];
    for (let i = 0; i * step <= top + step / 2; i += 1) values.push(i * step);
    return { top, values, label: (v) => v.toFixed(decimals) };
  }

  function drawChart(samples, active) {
    const svg = document.getElementById("metrics-chart");
    const label = document.getElementById("metrics-info");
    if (!svg) return;
    const t0 = Date.parse(meta.dataset.startedAt || "") ||
      (samples.length ? Date.parse(samples[0].timestamp) : 0);
    const pts = samples.map((s) => ({
      t: Math.max(0, (Date.parse(s.timestamp) - t0) / 1000 || 0),
      cpu: Number(s.cpu_percent) || 0,
      ram: Number(s.ram_mb) || 0,
    }));
    const peakCpu = Math.max(0, ...pts.map((p) => p.cpu));
    const peakRam = Math.max(0, ...pts.map((p) => p.ram));
    const tx = ticks(Math.max(1, ...pts.map((p) => p.t)), 6);
    const cy = ticks(Math.max(100, peakCpu));
    const ry = ticks(Math.max(1, peakRam));
    const pw = W - LEFT - RIGHT, ph = H - TOP - BOTTOM;
    const x = (t) => LEFT + (t / tx.top) * pw;
    const yCpu = (v) => TOP + ph - (v / cy.top) * ph;
    const yRam = (v) => TOP + ph - (v / ry.top) * ph;

    const parts = [];
    for (const v of cy.values) { // grid lines and CPU ticks (left)
      const y = yCpu(v);
      parts.push(node("line", { class: "gridline", x1: LEFT, x2: LEFT + pw, y1: y, y2: y }));
      parts.push(node("text", { class: "tick cpu", x: LEFT - 6, y: y + 4, "text-anchor": "end" }, cy.label(v)));
    }
    for (const v of ry.values) { // RAM ticks (right)
      parts.push(node("text", { class: "tick ram", x: LEFT + pw + 6, y: yRam(v) + 4, "text-anchor": "start" }, ry.label(v)));
    }
    for (const v of tx.values) { // time ticks (bottom)
      const xv = x(v);
      parts.push(node("line", { class: "axis", x1: xv, x2: xv, y1: TOP + ph, y2: TOP + ph + 4 }));
      parts.push(node("text", { class: "tick time", x: xv, y: TOP + ph + 16, "text-anchor": "middle" }, tx.label(v)));
    }
    parts.push(node("line", { class: "axis", x1: LEFT, x2: LEFT, y1: TOP, y2: TOP + ph }));
    parts.push(node("line", { class: "axis", x1: LEFT + pw, x2: LEFT + pw, y1: TOP, y2: TOP + ph }));
    parts.push(node("line", { class: "axis", x1: LEFT, x2: LEFT + pw, y1: TOP + ph, y2: TOP + ph }));
    parts.push(node("text", { class: "axis-title time", x: LEFT + pw / 2, y: H - 6, "text-anchor": "middle" }, "time (s)"));
    parts.push(node("text", { class: "axis-title cpu", x: 0, y: 0, "text-anchor": "middle",
      transform: `translate(14 ${TOP + ph / 2}) rotate(-90)` }, "CPU %"));
    parts.push(node("text", { class: "axis-title ram", x: 0, y: 0, "text-anchor": "middle",
      transform: `translate(${W - 12} ${TOP + ph / 2}) rotate(90)` }, "RAM MiB"));

    for (const [key, y, cls] of [["cpu", yCpu, "cpu"], ["ram", yRam, "ram"]]) {
      if (pts.length > 1) {
        const points = pts.map((p) => `${x(p.t).toFixed(1)},${y(p[key]).toFixed(1)}`).join(" ");
        parts.push(node("polyline", { class: `series ${cls}`, points }));
      }
      if (pts.length <= 120) { // a point per sample (a single sample is a point, not nothing)
        for (const p of pts) {
          const dot = node("circle", { class: `point ${cls}`, cx: x(p.t).toFixed(1), cy: y(p[key]).toFixed(1), r: 3 });
          dot.appendChild(node("title", {}, `${p.t.toFixed(1)} s: ${key === "cpu" ? `${p.cpu} % CPU` : `${p.ram} MiB RAM`}`));
          parts.push(dot);
        }
      }
    }
    if (!pts.length) {
      parts.push(node("text", { class: "empty", x: LEFT + pw / 2, y: TOP + ph / 2, "text-anchor": "middle" },
        active ? "waiting for the first sample…" : "no samples"));
    }
    svg.replaceChildren(...parts);
    svg.dataset.samples = String(pts.length);
    label.textContent = pts.length
      ? `${pts.length} ${pts.length === 1 ? "sample" : "samples"} · peak CPU ${peakCpu.toFixed(0)} % · peak RAM ${peakRam.toFixed(1)} MiB`
      : "";
  }

  let drawn = -1; // samples in the chart (-1: nothing drawn yet)

  async function loadMetrics() {
    const active = ACTIVE.includes(meta.dataset.status);
    let samples;
    try {
      samples = await fastflow.api("GET", `/api/runs/${runId}/metrics`);
    } catch {
      if (drawn < 0) { drawChart([], active); drawn = 0; }
      return;
    }
    if (samples.length !== drawn || drawn === 0) {
      drawChart(samples, active);
      drawn = samples.length;
    }
  }

  const ACTIVE = ["QUEUED", "PENDING", "RUNNING"];

  function showStatus(status) {
    const box = document.getElementById("run-status");
    const span = document.createElement("span");
    span.className = `status st-${String(status).toLowerCase()}`;
    span.textContent = status;
    box.replaceChildren(span);
    meta.dataset.status = status;
    const actions = document.getElementById("run-actions");
    if (actions && !ACTIVE.includes(status)) document.getElementById("run-cancel").hidden = true;
  }

  function showLog() {
    if (meta.dataset.status === "QUEUED") {
      view.textContent = "Queued: waiting for a free slot (the pipeline's max_instances or the server's MAX_CONCURRENT_RUNS).";
      return Promise.resolve();
    }
    return loadTail();
  }

  async function refresh() {
    const run = await fastflow.api("GET", `/api/runs/${runId}`);
    if (run.status !== meta.dataset.status) showStatus(run.status);
    return run;
  }

  // poll once a second while the run is active (the next poll starts when this one is
  // done); the finished run's page is reloaded to show its final state
  function watch() {
    if (!ACTIVE.includes(meta.dataset.status)) return;
    const tick = async () => {
      try {
        const run = await refresh();
        if (run.started_at) meta.dataset.startedAt = run.started_at;
        await showLog();
        if (run.status !== "QUEUED") await loadMetrics();
        if (!ACTIVE.includes(run.status)) {
          window.location.reload();
          return;
        }
      } catch { /* keep polling */ }
      setTimeout(tick, 1000);
    };
    setTimeout(tick, 1000);
  }

  const cancel = document.getElementById("run-cancel");
  if (cancel) cancel.onclick = async () => {
    const out = document.getElementById("cancel-result");
    cancel.disabled = true;
    out.className = "muted";
    out.textContent = "Cancelling…";
    try {
      await fastflow.api("POST", `/api/runs/${runId}/cancel`);
      out.className = "ok";
      out.textContent = "Cancellation requested.";
    } catch (e) {
      out.className = e.status === 409 ? "muted" : "error";
      out.textContent = e.status === 409 ? "This run has already finished." : `Could not cancel: ${e.message}`;
      cancel.disabled = e.status === 409;
    }
    try { await refresh(); } catch { /* the watch loop keeps polling */ }
  };

  showLog();
  loadMetrics();
  watch();
})();
