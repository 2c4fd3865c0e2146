// A pipeline's page: tiles (runs, success rate, p50/p95 duration) and its last 50 runs as
// bars (height = duration, colour = status, click = the run) from
// GET /api/pipelines/{name}/stats, refreshed every 30 seconds.
"use strict";

(() => {
  const head = document.getElementById("pipeline-name");
  const tiles = document.getElementById("pipeline-stats");
  if (!head || !tiles) return;
  const name = head.dataset.pipeline;
  const days = Number(tiles.dataset.days || 30);
  const C = fastflowCharts;
  const $ = (id) => document.getElementById(id);

  function setValue(id, value, text) {
    const node = $(id);
    node.dataset.value = value === null || value === undefined ? "" : String(value);
    node.textContent = text;
  }

  function draw(stats) {
    setValue("stat-runs", stats.runs, stats.runs.toLocaleString());
    setValue("stat-success", stats.success_rate,
      stats.success_rate === null ? "–" : `${(stats.success_rate * 100).toFixed(1)} %`);
    setValue("stat-p50", stats.duration_p50_s, C.formatDuration(stats.duration_p50_s));
    setValue("stat-p95", stats.duration_p95_s, C.formatDuration(stats.duration_p95_s));
    const runs = [...stats.recent].reverse(); // oldest left
    C.bars($("runs-bars"), {
      kind: "duration",
      yTitle: "duration",
      xTitle: "started (UTC)",
      empty: "no runs yet",
      items: runs.map((r) => {
        const started = Date.parse(r.started_at);
        const took = r.duration_s === null ? "still going" : C.formatDuration(r.duration_s);
        return {
          value: r.duration_s,
          cls: `s-${String(r.status).toLowerCase()}`,
          href: `/runs/${r.run_id}`,
          label: C.utcTime(started).slice(5),
          tip: `${r.status} · ${took} · started ${C.utcTime(started)} UTC` +
            (r.attempt > 1 ? ` · attempt ${r.attempt}` : "") + ` · run ${r.run_id.slice(0, 8)}`,
        };
      }),
    });
    tiles.dataset.loaded = String(Date.now());
  }

  async function load() {
    try {
      draw(await fastflow.api("GET", `/api/pipelines/${encodeURIComponent(name)}/stats?days=${days}`));
      $("pipeline-error").hidden = true;
    } catch (e) {
      $("pipeline-error").textContent = `Could not load the statistics: ${e.message}`;
      $("pipeline-error").hidden = false;
    }
  }

  load();
  setInterval(load, 30000);
})();
