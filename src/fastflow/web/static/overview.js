// Overview (the start page): tiles and charts from GET /api/stats/overview, refreshed
// every minute. Every number shown is the API's (data-value holds it unformatted).
"use strict";

(() => {
  const root = document.getElementById("overview");
  if (!root) return;
  const days = Number(root.dataset.days || 14);
  const FINAL = ["SUCCESS", "FAILED", "TIMEOUT", "CANCELLED"];
  const ALL = ["SUCCESS", "FAILED", "TIMEOUT", "CANCELLED", "RUNNING", "PENDING", "QUEUED"];
  const C = fastflowCharts;
  const $ = (id) => document.getElementById(id);

  function setValue(node, value, text) {
    node.dataset.value = value === null || value === undefined ? "" : String(value);
    node.textContent = text;
  }

  function link(href, text, cls) {
    const a = document.createElement("a");
    a.href = href;
    a.textContent = text;
    if (cls) a.className = cls;
    return a;
  }

  function tile24h(counts) {
    const list = $("runs-24h");
    const items = [];
    let total = 0;
    for (const s of ALL) {
      const n = counts[s] || 0;
      total += n;
      if (!n && !FINAL.includes(s)) continue; // active states only when there are some
      const li = document.createElement("li");
      li.dataset.status = s;
      const a = link(`/runs?status=${s}`, "", `status st-${s.toLowerCase()}`);
      a.textContent = s;
      const num = document.createElement("strong");
      num.className = "count";
      setValue(num, n, n.toLocaleString());
      li.append(num, " ", a);
      items.push(li);
    }
    list.replaceChildren(...items);
    setValue($("runs-24h-total"), total, total ? `${total.toLocaleString()} runs` : "no runs yet");
  }

  function tileSuccess(rate, byDay) {
    const week = byDay.slice(-7);
    const finished = week.reduce((a, d) => a + FINAL.reduce((b, s) => b + d[s], 0), 0);
    setValue($("success-rate"), rate, rate === null ? "–" : `${(rate * 100).toFixed(1)} %`);
    $("success-detail").textContent = rate === null ? "no runs yet"
      : `${week.reduce((a, d) => a + d.SUCCESS, 0).toLocaleString()} of ${finished.toLocaleString()} finished runs`;
    $("success-rate").className = `big ${rate === null ? "" : rate >= 0.95 ? "ok" : rate >= 0.8 ? "warn" : "error"}`;
  }

  function tileIncidents(inc) {
    for (const [key, id] of [["run_failures", "inc-run"], ["backup_failures", "inc-backup"], ["integrity", "inc-integrity"]]) {
      const n = inc[key] || 0;
      const node = $(id);
      setValue(node, n, n.toLocaleString());
      node.closest("li").classList.toggle("alert", n > 0);
    }
  }

  function tileNext(next) {
    const list = $("next-runs");
    if (!next.length) {
      const li = document.createElement("li");
      li.className = "empty";
      li.textContent = "no scheduled runs";
      list.replaceChildren(li);
      return;
    }
    list.replaceChildren(...next.slice(0, 5).map((n) => {
      const li = document.createElement("li");
      li.dataset.pipeline = n.pipeline_name;
      const t = document.createElement("time");
      t.dateTime = n.next_run_at;
      t.textContent = C.utcTime(Date.parse(n.next_run_at));
      li.append(link(`/pipelines/${encodeURIComponent(n.pipeline_name)}`, n.pipeline_name), " ", t);
      return li;
    }));
  }

  function tileDisk(disk) {
    setValue($("disk-logs"), disk.logs_bytes, C.formatBytes(disk.logs_bytes));
    setValue($("disk-free"), disk.free_bytes, disk.free_bytes === null ? "unknown" : C.formatBytes(disk.free_bytes));
    setValue($("disk-backlog-runs"), disk.backlog_runs, disk.backlog_runs.toLocaleString());
    setValue($("disk-backlog-bytes"), disk.backlog_bytes, C.formatBytes(disk.backlog_bytes));
  }

  function tilePass(p) {
    const box = $("last-pass");
    if (!p) {
      box.replaceChildren(Object.assign(document.createElement("p"), { className: "muted", textContent: "no cleanup pass yet" }));
      box.dataset.passId = "";
      return;
    }
    box.dataset.passId = String(p.pass_id);
    const rows = [
      ["Finished", p.finished_at ? C.utcTime(Date.parse(p.finished_at)) + " UTC" : "–"],
      ["Trigger", p.trigger || "–"],
      ["Archived", `${(p.archived_runs || 0).toLocaleString()} runs, ${C.formatBytes(p.bytes_archived || 0)}`],
      ["Deleted", `${(p.deleted_runs || 0).toLocaleString()} runs`],
      ["Truncated", `${(p.truncated_logs || 0).toLocaleString()} logs`],
      ["Failures", (p.backup_failures || 0).toLocaleString()],
    ];
    const dl = document.createElement("dl");
    dl.className = "meta compact";
    for (const [k, v] of rows) {
      const dt = document.createElement("dt");
      dt.textContent = k;
      const dd = document.createElement("dd");
      dd.textContent = v;
      if (k === "Failures" && p.backup_failures) dd.className = "error";
      dl.append(dt, dd);
    }
    const out = [dl];
    if (p.error) out.push(Object.assign(document.createElement("p"), { className: "error", textContent: p.error }));
    box.replaceChildren(...out);
  }

  function runsChart(byDay) {
    const series = FINAL.map((s) => ({ key: s, label: s, cls: `s-${s.toLowerCase()}` }));
    C.stackedBars($("runs-chart"), {
      categories: byDay.map((d) => ({ key: d.day, label: d.day.slice(5), row: d })),
      series,
      value: (c, s) => c.row[s.key],
      href: (c, s) => `/runs?status=${s.key}&day=${c.key}`,
      tip: (c, s, n) => `${c.key} (UTC): ${n.toLocaleString()} ${s.key} ${n === 1 ? "run" : "runs"} — click to list them`,
      yTitle: "runs",
      xTitle: "day (UTC)",
      empty: "no runs yet",
    });
  }

  function diskChart(history, disk) {
    const points = history.map((h) => ({ t: Date.parse(h.at), local: h.local_log_bytes, archived: h.archived_bytes, pass: h.pass_id }));
    const last = points.length ? points[points.length - 1] : null;
    const now = { t: Date.now(), local: disk.logs_bytes, archived: last ? last.archived : null, pass: null };
    points.push(now); // archiving happens only in passes: the archive has not grown since the last one
    const tip = (p, what, v) => `${C.utcTime(p.t)} UTC${p.pass ? ` (after pass ${p.pass})` : " (now)"}: ${what} ${C.formatBytes(v)}`;
    C.lines($("disk-chart"), {
      x: { kind: "time", title: "time" },
      left: { kind: "bytes", title: "bytes" },
      series: [
        { key: "local", label: "local logs", cls: "local", points: points.map((p) => ({ x: p.t, y: p.local, tip: tip(p, "local logs", p.local) })) },
        { key: "archived", label: "archived", cls: "archived", points: points.map((p) => ({ x: p.t, y: p.archived, tip: p.archived === null ? "" : tip(p, "archived", p.archived) })) },
      ],
      empty: "no data yet",
    });
    $("disk-chart-note").textContent = history.length
      ? `${history.length} ${history.length === 1 ? "pass" : "passes"} and now`
      : "no cleanup pass recorded yet: only the present local size is shown";
  }

  async function load() {
    try {
      const o = await fastflow.api("GET", `/api/stats/overview?days=${days}`);
      tile24h(o.runs_24h);
      tileSuccess(o.success_rate_7d, o.runs_by_day);
      tileIncidents(o.open_incidents);
      tileNext(o.next_runs);
      tileDisk(o.disk);
      tilePass(o.last_pass);
      runsChart(o.runs_by_day);
      diskChart(o.disk_history, o.disk);
      $("overview-error").hidden = true;
      root.dataset.loaded = String(Date.now());
    } catch (e) {
      const box = $("overview-error");
      box.textContent = `Could not load the overview: ${e.message}`;
      box.hidden = false;
    }
  }

  load();
  setInterval(load, 60000);
})();
