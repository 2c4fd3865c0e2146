// Run detail: live status, log viewer (last 200 KB first, "load earlier"), CPU/RAM chart.
"use strict";

(() => {
  const meta = document.getElementById("run-meta");
  if (!meta) return;
  const runId = meta.dataset.runId;
  const CHUNK = 200 * 1024;
  const view = document.getElementById("log-view");
  const info = document.getElementById("log-info");
  const earlier = document.getElementById("log-earlier");
  let start = 0; // offset of the first byte shown
  let size = 0;

  async function fetchText(url) {
    const res = await fetch(url, { credentials: "same-origin" });
    if (!res.ok) {
      let detail = res.statusText;
      try { detail = (await res.json()).detail; } catch { /* not JSON */ }
      throw new Error(detail);
    }
    return { text: await res.text(), size: Number(res.headers.get("X-Log-Size") || 0),
             source: res.headers.get("X-Log-Source") };
  }

  async function loadTail() {
    try {
      const r = await fetchText(`/api/runs/${runId}/logs?tail_bytes=${CHUNK}`);
      size = r.size;
      start = Math.max(0, size - CHUNK);
      view.textContent = r.text || "(empty log)";
      info.textContent = `${size.toLocaleString()} bytes` + (r.source === "archive" ? " · read back from the S3 archive" : "") +
        (start > 0 ? ` · showing the last ${(size - start).toLocaleString()} bytes` : "");
      earlier.hidden = start === 0;
      view.scrollTop = view.scrollHeight;
    } catch (e) {
      view.textContent = `The log is not available: ${e.message}`;
    }
  }

  earlier.onclick = async () => {
    // fetch the whole log up to the part shown (the API streams; the browser keeps the text)
    const wanted = Math.min(size, size - start + CHUNK);
    const r = await fetchText(`/api/runs/${runId}/logs?tail_bytes=${wanted}`);
    start = Math.max(0, r.size - wanted);
    view.textContent = r.text;
    earlier.hidden = start === 0;
    info.textContent = `${r.size.toLocaleString()} bytes` + (start > 0 ? ` · showing the last ${(r.size - start).toLocaleString()} bytes` : " · complete");
  };

  function drawChart(samples) {
    const canvas = document.getElementById("metrics-chart");
    const label = document.getElementById("metrics-info");
    if (!canvas || !canvas.getContext) return;
    const g = canvas.getContext("2d");
    g.clearRect(0, 0, canvas.width, canvas.height);
    if (!samples.length) { label.textContent = "no samples"; return; }
    const w = canvas.width, h = canvas.height, pad = 24;
    const maxCpu = Math.max(100, ...samples.map((s) => s.cpu_percent || 0));
    const maxRam = Math.max(1, ...samples.map((s) => s.ram_mb || 0));
    const x = (i) => pad + (samples.length === 1 ? 0 : (i * (w - 2 * pad)) / (samples.length - 1));
    const line = (key, max, color) => {
      g.strokeStyle = color; g.lineWidth = 2; g.beginPath();
      samples.forEach((s, i) => {
        const y = h - pad - ((s[key] || 0) / max) * (h - 2 * pad);
        if (i === 0) g.moveTo(x(i), y); else g.lineTo(x(i), y);
      });
      g.stroke();
    };
    g.strokeStyle = "#ccd"; g.strokeRect(pad, pad, w - 2 * pad, h - 2 * pad);
    line("cpu_percent", maxCpu, "#d9480f");
    line("ram_mb", maxRam, "#1c7ed6");
    label.textContent = `${samples.length} samples · peak CPU ${Math.max(...samples.map((s) => s.cpu_percent || 0)).toFixed(0)} % · peak RAM ${maxRam.toFixed(1)} MB`;
  }

  async function loadMetrics() {
    try { drawChart(await fastflow.api("GET", `/api/runs/${runId}/metrics`)); } catch { drawChart([]); }
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

  async function watch() {
    if (!ACTIVE.includes(meta.dataset.status)) return;
    const timer = setInterval(async () => {
      try {
        const run = await refresh();
        await showLog();
        if (!ACTIVE.includes(run.status)) {
          clearInterval(timer);
          window.location.reload();
        }
      } catch { /* keep polling */ }
    }, 1000);
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
