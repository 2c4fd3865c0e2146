// Run detail: live status; log viewer (the last 200 KB, from the start of a line, and
// "Load earlier"), live through the server-sent events of /api/runs/{id}/logs/stream
// while the run is active (new lines, CPU/RAM samples, status); a search box
// (highlighted matches, previous/next, count, jump to line; a log not loaded whole is
// searched by the server's grep and shown around each match, `#L123` opens at a line);
// CPU/RAM chart (SVG with time, CPU % and RAM MiB axes).
"use strict";

(() => {
  const meta = document.getElementById("run-meta");
  if (!meta) return;
  const runId = meta.dataset.runId;
  const CHUNK = 200 * 1024;
  const KEEP_CHARS = 4 * 1024 * 1024; // a live view drops its oldest lines past this
  const WINDOW = 200; // lines shown around a match or a line of a log not loaded whole
  const MAX_SERVER_MATCHES = 1000;
  const view = document.getElementById("log-view");
  const info = document.getElementById("log-info");
  const earlier = document.getElementById("log-earlier");
  const back = document.getElementById("log-back");
  const qInput = document.getElementById("log-search-q");
  const prevBtn = document.getElementById("log-search-prev");
  const nextBtn = document.getElementById("log-search-next");
  const countOut = document.getElementById("log-search-count");
  const gotoInput = document.getElementById("log-goto");
  const ACTIVE = ["QUEUED", "PENDING", "RUNNING"];
  const encoder = new TextEncoder();

  let want = CHUNK; // bytes of the log's end asked for ("Load earlier" adds CHUNK)
  const tail = { text: "", start: 0, size: 0, source: null, loaded: false, error: null };
  let mode = "tail"; // "tail": the log's end; "window": lines around a match or a line
  let win = { text: "", first: 1 };
  let target = 0; // line to mark and scroll to (0: none)
  const search = { q: "", hits: [], index: -1, server: false, capped: false };
  let live = null; // the EventSource while the run is active

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

  const whole = () => tail.loaded && tail.start === 0; // the whole log is in the page

  function showInfo() {
    if (tail.error) {
      info.textContent = "";
      return;
    }
    if (mode === "window") {
      const lines = win.text ? win.text.split("\n").length - (win.text.endsWith("\n") ? 1 : 0) : 0;
      info.textContent = lines
        ? `lines ${win.first.toLocaleString()}–${(win.first + lines - 1).toLocaleString()} of the log (${tail.size.toLocaleString()} bytes)`
        : `line ${win.first.toLocaleString()} is past the end of the log`;
      return;
    }
    info.textContent = `${tail.size.toLocaleString()} bytes` + (tail.source === "archive" ? " · read back from the S3 archive" : "") +
      (tail.start > 0 ? ` · showing the last ${(tail.size - tail.start).toLocaleString()} bytes` : (want > CHUNK ? " · complete" : ""));
  }

  // --- rendering: text, highlighted matches, the target line ----------------------------

  function lineStart(text, line) { // offset of 1-based `line` in `text` (-1: not there)
    let pos = 0;
    for (let n = 1; n < line; n += 1) {
      pos = text.indexOf("\n", pos);
      if (pos < 0) return -1;
      pos += 1;
    }
    return pos <= text.length ? pos : -1;
  }

  function occurrences(text) { // [start, end) of every match of the search text
    const out = [];
    if (!search.q) return out;
    const hay = fastflow.fold(text);
    const needle = fastflow.fold(search.q);
    for (let i = hay.indexOf(needle); i >= 0; i = hay.indexOf(needle, i + needle.length)) {
      out.push([i, i + needle.length]);
    }
    return out;
  }

  function marked(text, offset, marks, current) { // text with <mark>s, as DOM nodes
    const frag = document.createDocumentFragment();
    let pos = 0;
    for (const [a, b] of marks) {
      const s = a - offset, e = b - offset;
      if (e <= 0 || s >= text.length) continue;
      const from = Math.max(0, s), to = Math.min(text.length, e);
      if (from > pos) frag.append(text.slice(pos, from));
      const m = document.createElement("mark");
      m.textContent = text.slice(from, to);
      if (a === current) m.className = "current";
      frag.append(m);
      pos = to;
    }
    if (pos < text.length) frag.append(text.slice(pos));
    return frag;
  }

  function render({ scroll = "keep" } = {}) {
    const text = mode === "window" ? win.text : tail.text;
    const firstLine = mode === "window" ? win.first : (whole() ? 1 : 0);
    const marks = occurrences(text);
    const current = search.server || search.index < 0 ? -1 : (search.hits[search.index] || {}).pos;
    const atBottom = view.scrollHeight - view.scrollTop - view.clientHeight < 40;
    if (!marks.length && !target) {
      view.textContent = text || (tail.error ? `The log is not available: ${tail.error}` : (tail.loaded ? "(empty log)" : ""));
    } else {
      const frag = document.createDocumentFragment();
      let a = -1, b = -1;
      if (target && firstLine) {
        a = lineStart(text, target - firstLine + 1);
        if (a >= 0) { b = text.indexOf("\n", a); if (b < 0) b = text.length; }
      }
      if (a >= 0) {
        frag.append(marked(text.slice(0, a), 0, marks, current));
        const line = document.createElement("span");
        line.className = "target-line";
        line.id = "log-target";
        line.append(marked(text.slice(a, b), a, marks, current));
        frag.append(line, marked(text.slice(b), b, marks, current));
      } else {
        frag.append(marked(text, 0, marks, current));
      }
      view.replaceChildren(frag);
    }
    const focus = view.querySelector("mark.current") || view.querySelector("#log-target");
    if (scroll === "focus" && focus) {
      view.scrollTop += focus.getBoundingClientRect().top - view.getBoundingClientRect().top - view.clientHeight / 2;
    } else if (scroll === "end" || (scroll === "follow" && atBottom)) {
      view.scrollTop = view.scrollHeight;
    }
    back.hidden = mode !== "window";
    earlier.hidden = mode === "window" || tail.start === 0 || !!tail.error;
    showInfo();
  }

  async function loadTail({ keepPosition = false } = {}) {
    try {
      const r = await fetchTail(want);
      const fromBottom = view.scrollHeight - view.scrollTop;
      const first = !tail.loaded;
      Object.assign(tail, { text: r.text, size: r.size, start: r.start, source: r.source, loaded: true, error: null });
      if (mode !== "tail") return;
      render({ scroll: keepPosition ? "keep" : (first ? "end" : "follow") });
      if (keepPosition) view.scrollTop = view.scrollHeight - fromBottom;
    } catch (e) {
      tail.error = e.message;
      tail.loaded = false;
      render();
    }
  }

  earlier.onclick = async () => {
    earlier.disabled = true;
    want = tail.size - tail.start + CHUNK;
    await loadTail({ keepPosition: true });
    restartLive();
    if (search.q) await runSearch({ keepIndex: true });
    earlier.disabled = false;
  };

  // --- a window of lines (a log not loaded whole) ----------------------------------------

  async function showWindow(line) {
    const first = Math.max(1, line - Math.floor(WINDOW / 2));
    const res = await fetch(`/api/runs/${runId}/logs?from_line=${first}&max_lines=${WINDOW}`, { credentials: "same-origin" });
    if (!res.ok) await fail(res);
    win = { text: await res.text(), first };
    mode = "window";
    target = line;
    render({ scroll: "focus" });
  }

  back.onclick = () => {
    mode = "tail";
    target = 0;
    render({ scroll: "end" });
  };

  async function jumpToLine(line) {
    if (!(line >= 1)) return;
    if (whole() && mode === "tail") {
      target = line;
      render({ scroll: "focus" });
      return;
    }
    try { await showWindow(line); } catch (e) { countOut.textContent = `Cannot show line ${line}: ${e.message}`; }
  }

  document.getElementById("log-goto-go").onclick = () => jumpToLine(Number(gotoInput.value));
  gotoInput.addEventListener("keydown", (e) => {
    if (e.key === "Enter") { e.preventDefault(); jumpToLine(Number(gotoInput.value)); }
  });

  // --- search ----------------------------------------------------------------------------

  function lineOf(text, pos) {
    let n = 1;
    for (let i = text.indexOf("\n"); i >= 0 && i < pos; i = text.indexOf("\n", i + 1)) n += 1;
    return n;
  }

  function showCount() {
    const n = search.hits.length;
    prevBtn.disabled = nextBtn.disabled = n === 0;
    if (!search.q) { countOut.textContent = ""; return; }
    if (!n) { countOut.textContent = "no match"; return; }
    const total = search.capped ? `${n.toLocaleString()}+` : n.toLocaleString();
    const hit = search.hits[search.index];
    const where = hit && hit.line ? ` · line ${hit.line.toLocaleString()}` : "";
    countOut.textContent = `${search.index + 1} of ${total} ${search.server ? "matching lines" : "matches"}${where}`;
  }

  async function serverHits(q) {
    const res = await fetch(`/api/runs/${runId}/logs?grep=${encodeURIComponent(q)}&max_matches=${MAX_SERVER_MATCHES}`, { credentials: "same-origin" });
    if (!res.ok) await fail(res);
    const hits = [];
    for (const line of (await res.text()).split("\n")) {
      if (!line) continue;
      const item = JSON.parse(line);
      if (item.error) throw new Error(item.error);
      hits.push({ line: item.line });
    }
    return hits;
  }

  async function runSearch({ near = 0, keepIndex = false } = {}) {
    const q = qInput.value;
    const before = search.hits[search.index];
    Object.assign(search, { q, hits: [], index: -1, server: false, capped: false });
    if (!q) { target = mode === "window" ? target : 0; render(); showCount(); return; }
    if (whole()) {
      const text = tail.text;
      search.hits = occurrences(text).map(([pos]) => ({ pos, line: lineOf(text, pos) }));
      if (mode === "window") { mode = "tail"; }
    } else {
      search.server = true;
      countOut.textContent = "searching…";
      try {
        search.hits = await serverHits(q);
      } catch (e) {
        countOut.textContent = `Search failed: ${e.message}`;
        return;
      }
      search.capped = search.hits.length >= MAX_SERVER_MATCHES;
    }
    if (!search.hits.length) { target = 0; render(); showCount(); return; }
    let index = 0;
    const from = near || (keepIndex && before ? before.line : 0);
    if (from) {
      const i = search.hits.findIndex((h) => h.line >= from);
      index = i >= 0 ? i : 0;
    }
    await goTo(index);
  }

  async function goTo(index) {
    const n = search.hits.length;
    if (!n) return;
    search.index = ((index % n) + n) % n;
    const hit = search.hits[search.index];
    showCount();
    if (search.server) {
      try { await showWindow(hit.line); } catch (e) { countOut.textContent = `Cannot show line ${hit.line}: ${e.message}`; }
      showCount();
      return;
    }
    target = 0;
    render({ scroll: "focus" });
  }

  let typing = null;
  qInput.addEventListener("input", () => {
    clearTimeout(typing);
    typing = setTimeout(() => runSearch(), 300);
  });
  qInput.addEventListener("keydown", (e) => {
    if (e.key !== "Enter") return;
    e.preventDefault();
    clearTimeout(typing);
    if (qInput.value !== search.q) runSearch();
    else goTo(search.index + (e.shiftKey ? -1 : 1));
  });
  prevBtn.onclick = () => goTo(search.index - 1);
  nextBtn.onclick = () => goTo(search.index + 1);
  document.getElementById("log-search").addEventListener("submit", (e) => e.preventDefault());

  // new lines of a live run: appended (the oldest dropped past KEEP_CHARS); a search of
  // a log loaded whole follows them
  let pending = false;
  function tailGrew() {
    if (tail.text.length > KEEP_CHARS) {
      const cut = tail.text.indexOf("\n", tail.text.length - KEEP_CHARS / 2) + 1;
      if (cut > 0) {
        tail.start += encoder.encode(tail.text.slice(0, cut)).length;
        tail.text = tail.text.slice(cut);
      }
    }
    if (pending) return;
    pending = true;
    requestAnimationFrame(() => {
      pending = false;
      if (mode !== "tail") { showInfo(); return; }
      if (search.q && whole()) {
        const keep = search.hits[search.index];
        search.hits = occurrences(tail.text).map(([pos]) => ({ pos, line: lineOf(tail.text, pos) }));
        search.index = keep ? Math.max(0, search.hits.findIndex((h) => h.pos === keep.pos)) : -1;
        showCount();
      }
      render({ scroll: "follow" });
    });
  }

  // --- CPU/RAM chart -------------------------------------------------------------------

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
    // the same chart code as the overview and pipeline pages (static/charts.js)
    fastflowCharts.lines(svg, {
      x: { kind: "number", title: "time (s)", cls: "time" },
      left: { kind: "number", title: "CPU %", min: 100, cls: "cpu" },
      right: { kind: "number", title: "RAM MiB", min: 1, cls: "ram" },
      series: [
        { key: "cpu", cls: "cpu", axis: "left", points: pts.map((p) => ({ x: p.t, y: p.cpu, tip: `${p.t.toFixed(1)} s: ${p.cpu} % CPU` })) },
        { key: "ram", cls: "ram", axis: "right", points: pts.map((p) => ({ x: p.t, y: p.ram, tip: `${p.t.toFixed(1)} s: ${p.ram} MiB RAM` })) },
      ],
      empty: active ? "waiting for the first sample…" : "no samples",
    });
    svg.dataset.samples = String(pts.length);
    // a soft limit (pipeline.json limits.memory_soft_mb / cpu_soft) never stops the run:
    // the final sample names what was exceeded, shown here as a warning
    const soft = [...new Set(samples.flatMap((s) => s.soft_limit_exceeded || []))];
    const warn = document.getElementById("soft-limit-warning");
    if (warn) {
      warn.hidden = soft.length === 0;
      warn.textContent = soft.length ? `Soft limit exceeded: ${soft.join(", ")} (the run was not stopped).` : "";
    }
    label.textContent = pts.length
      ? `${pts.length} ${pts.length === 1 ? "sample" : "samples"} · peak CPU ${peakCpu.toFixed(0)} % · peak RAM ${peakRam.toFixed(1)} MiB`
      : "";
  }

  let drawn = -1; // samples in the chart (-1: nothing drawn yet)
  let samples = [];

  async function loadMetrics() {
    const active = ACTIVE.includes(meta.dataset.status);
    let got;
    try {
      got = await fastflow.api("GET", `/api/runs/${runId}/metrics`);
    } catch {
      if (drawn < 0) { drawChart([], active); drawn = 0; }
      return;
    }
    if (got.length !== drawn || drawn === 0) {
      samples = got;
      drawChart(samples, active);
      drawn = samples.length;
    }
  }

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

  async function showLog() {
    if (meta.dataset.status === "QUEUED") {
      view.textContent = "Queued: waiting for a free slot (the pipeline's max_instances or the server's MAX_CONCURRENT_RUNS).";
      return;
    }
    await loadTail();
  }

  // --- live: server-sent events while the run is active --------------------------------
  // log: new whole lines (event id = byte offset after them; a reconnecting EventSource
  // sends it back as Last-Event-ID, so nothing is lost or repeated); metrics: new samples;
  // run: a new status while active; status: the run ended (the page is reloaded to show
  // its final state).

  function startLive() {
    if (!ACTIVE.includes(meta.dataset.status) || typeof EventSource === "undefined") return;
    const es = new EventSource(`/api/runs/${runId}/logs/stream?offset=${tail.size}`);
    live = es;
    es.addEventListener("log", (e) => {
      if (!tail.loaded) Object.assign(tail, { loaded: true, error: null, source: "local" });
      const text = e.data.replace(/\u240d/g, "\r"); // a CR travels as U+240D (see logs.md)
      tail.text += text;
      tail.size = Number(e.lastEventId) || tail.size + encoder.encode(text).length;
      tailGrew();
    });
    es.addEventListener("metrics", (e) => {
      const d = JSON.parse(e.data);
      samples = samples.slice(0, d.from).concat(d.samples);
      drawChart(samples, true);
      drawn = samples.length;
    });
    es.addEventListener("run", (e) => {
      const d = JSON.parse(e.data);
      if (d.status !== meta.dataset.status) {
        const wasQueued = meta.dataset.status === "QUEUED";
        showStatus(d.status);
        if (wasQueued && !tail.loaded) { tail.error = null; render(); }
      }
    });
    es.addEventListener("status", (e) => {
      es.close();
      live = null;
      showStatus(JSON.parse(e.data).status);
      window.location.reload();
    });
    es.addEventListener("log-error", (e) => {
      es.close();
      live = null;
      info.textContent = `Live updates stopped: ${JSON.parse(e.data).detail}`;
    });
  }

  function restartLive() { // after the tail was fetched again: continue from its end
    if (!live) return;
    live.close();
    live = null;
    startLive();
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
  };

  async function start() {
    const active = ACTIVE.includes(meta.dataset.status);
    await showLog();
    if (active) {
      drawChart([], true); // "waiting for the first sample…" until the stream sends some
      drawn = 0;
      startLive();
    } else {
      loadMetrics();
    }
    const params = new URLSearchParams(window.location.search);
    const hash = /^#L(\d+)$/.exec(window.location.hash);
    const line = hash ? Number(hash[1]) : 0;
    if (params.get("q")) {
      qInput.value = params.get("q");
      await runSearch({ near: line });
      if (line && !search.hits.length) await jumpToLine(line); // the line, at least
    } else if (line) {
      await jumpToLine(line);
    }
  }

  window.addEventListener("hashchange", () => {
    const hash = /^#L(\d+)$/.exec(window.location.hash);
    if (hash) jumpToLine(Number(hash[1]));
  });

  start();
})();
