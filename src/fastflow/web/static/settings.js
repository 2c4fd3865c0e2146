// Settings page: save (only what changed), per-field source and "reset to environment",
// object path preview, S3 test of the typed values, cleanup now (then the whole panel is
// refreshed), notification tests.
"use strict";

(() => {
  const form = document.getElementById("settings-form");
  if (!form) return;
  const $ = (id) => document.getElementById(id);
  const SOURCE_LABELS = { environment: "from the environment", ui: "set here", default: "default" };
  const S3_FIELDS = ["s3_backup_enabled", "s3_endpoint_url", "s3_bucket", "s3_access_key",
    "s3_secret_access_key", "s3_region", "s3_prefix", "s3_use_path_style"];
  const isAdmin = !!$("settings-save");

  function preview() {
    const prefix = (form.elements.s3_prefix.value || "").replace(/^\/+|\/+$/g, "");
    const base = (prefix ? prefix + "/" : "") + "{pipeline}/{run_id}/";
    $("preview-log").textContent = base + "run.log";
    $("preview-metrics").textContent = base + "metrics.jsonl";
  }
  form.elements.s3_prefix.addEventListener("input", preview);
  preview();

  // the value of one form element as PUT /api/settings takes it
  function valueOf(el) {
    if (el.type === "checkbox") return el.checked;
    if (el.type === "number") return el.value === "" ? null : Number(el.value);
    return el.value.trim() === "" ? null : el.value.trim();
  }

  // every non-secret field as typed (secrets: only when something was typed)
  function collect(names) {
    const out = {};
    for (const el of form.elements) {
      if (!el.name || el.disabled || (names && !names.includes(el.name))) continue;
      if (el.type === "password") { if (el.value) out[el.name] = el.value; }
      else out[el.name] = valueOf(el);
    }
    return out;
  }

  let initial = collect();

  function changedFields() {
    const now = collect();
    const out = {};
    for (const [name, value] of Object.entries(now)) {
      if (form.elements[name].type === "password" || JSON.stringify(value) !== JSON.stringify(initial[name])) {
        out[name] = value;
      }
    }
    return out;
  }

  // show a settings view (GET/PUT /api/settings) in the form: the values (of the fields
  // in ``only``, when given: other unsaved typing stays), every source, the secrets
  function applyView(view, only) {
    for (const el of form.elements) {
      if (!el.name || !(el.name in view) || el.type === "password") continue;
      if (only && !only.includes(el.name)) continue;
      const v = view[el.name];
      if (el.type === "checkbox") el.checked = !!v;
      else if (Array.isArray(v)) el.value = v.join(", ");
      else el.value = v === null || v === undefined ? "" : String(v);
    }
    for (const small of form.querySelectorAll("small[data-configured-for]")) {
      const on = !!view[`${small.dataset.configuredFor}_configured`];
      small.className = on ? "ok" : "muted";
      small.textContent = on ? "configured" : "not configured";
      const input = form.elements[small.dataset.configuredFor];
      if (!only || only.includes(input.name)) input.value = "";
      input.placeholder = on ? "configured – leave empty to keep" : "not set";
    }
    for (const small of form.querySelectorAll("small[data-source-for]")) {
      renderSource(small, (view.sources || {})[small.dataset.sourceFor] || "default");
    }
    if ($("schedule-now") && view.cleanup_schedule) $("schedule-now").textContent = view.cleanup_schedule;
    preview();
    const now = collect();
    if (!only) initial = now;
    else for (const name of only) initial[name] = now[name];
  }

  function renderSource(small, source) {
    const name = small.dataset.sourceFor;
    small.dataset.source = source;
    small.replaceChildren();
    const label = document.createElement("span");
    label.className = "source-label";
    label.textContent = SOURCE_LABELS[source] || source;
    small.append(label, ` · ${name.toUpperCase()}`);
    if (source === "ui" && isAdmin) {
      const btn = document.createElement("button");
      btn.type = "button";
      btn.className = "link reset-field";
      btn.dataset.field = name;
      btn.textContent = "reset to environment";
      small.append(" ", btn);
    }
  }

  async function put(changes, done, only) {
    const result = $("settings-result");
    result.className = "muted";
    result.textContent = "Saving…";
    try {
      const view = await fastflow.api("PUT", "/api/settings", changes);
      applyView(view, only);
      result.className = "ok";
      result.textContent = [done, ...(view.notices || [])].join(" ");
    } catch (e) {
      result.className = "error";
      result.textContent = `Not saved: ${e.message}`;
    }
  }

  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const changes = changedFields();
    if (Object.keys(changes).length === 0) {
      $("settings-result").className = "muted";
      $("settings-result").textContent = "Nothing changed.";
      return;
    }
    await put(changes, "Saved.");
  });

  form.addEventListener("click", async (ev) => {
    const btn = ev.target.closest("button.reset-field");
    if (!btn) return;
    ev.preventDefault();
    const name = btn.dataset.field;
    // the reset field (and a password dropped with its host) shows the saved value again
    await put({ [name]: null }, `${name.toUpperCase()} reset to the environment.`, [name, "smtp_password"]);
  });

  const s3btn = $("s3-test");
  if (s3btn) s3btn.onclick = async () => {
    const out = $("s3-test-result");
    s3btn.disabled = true;
    out.className = "muted";
    out.textContent = "Testing…";
    try {
      // what is typed, saved or not (an empty secret field: the stored secret)
      const r = await fastflow.api("POST", "/api/settings/s3/test", collect(S3_FIELDS));
      out.className = r.ok ? "ok" : "error";
      out.textContent = `${r.ok ? "Connection OK" : r.error} (tested ${r.tested_at.slice(0, 19).replace("T", " ")} UTC)`;
    } catch (e) {
      out.className = "error";
      out.textContent = e.message;
    } finally {
      s3btn.disabled = false;
    }
  };

  // --- the cleanup panel: refreshed as a whole after "Run cleanup now" --------------------

  function when(iso) {
    if (!iso) return document.createTextNode("–");
    const t = document.createElement("time");
    t.dateTime = iso;
    t.textContent = iso.slice(0, 19).replace("T", " ");
    return t;
  }

  function size(n) {
    if (n === null || n === undefined) return "–";
    if (n < 1024) return `${n} B`;
    if (n < 1048576) return `${(n / 1024).toFixed(1)} KB`;
    return `${(n / 1048576).toFixed(1)} MB`;
  }

  function renderFailures(data) {
    const open = (data.failures || []).filter((f) => !f.resolved_at);
    const last = $("last-backup");
    last.replaceChildren(data.last_backup_at ? when(data.last_backup_at) : document.createTextNode("never"));
    $("failure-count").textContent = String(open.length);
    const list = $("failure-list");
    list.replaceChildren();
    for (const f of open) {
      const li = document.createElement("li");
      li.append(when(f.created_at), " — ");
      if (f.run_id) {
        const a = document.createElement("a");
        a.href = `/runs/${f.run_id}`;
        a.textContent = `${f.pipeline_name} (run ${f.run_id.slice(0, 8)})`;
        li.append(a);
      } else {
        li.append("cleanup pass");
      }
      li.append(`: ${f.error_message}`);
      list.appendChild(li);
    }
    if (!open.length) {
      const li = document.createElement("li");
      li.className = "empty";
      li.textContent = "None. Backups are fine.";
      list.appendChild(li);
    }
  }

  function renderPasses(passes) {
    const body = $("passes-table").querySelector("tbody");
    body.replaceChildren();
    for (const p of passes) {
      const tr = document.createElement("tr");
      const cells = [when(p.started_at), p.trigger, p.archived_runs, p.deleted_runs,
        p.backup_failures, size(p.bytes_archived), p.error || ""];
      for (const c of cells) {
        const td = document.createElement("td");
        td.append(c instanceof Node ? c : String(c));
        tr.appendChild(td);
      }
      body.appendChild(tr);
    }
    if (!passes.length) {
      const tr = document.createElement("tr");
      const td = document.createElement("td");
      td.colSpan = 7;
      td.className = "empty";
      td.textContent = "No cleanup pass yet.";
      tr.appendChild(td);
      body.appendChild(tr);
    }
  }

  async function refreshPanel() {
    const [failures, passes] = await Promise.all([
      fastflow.api("GET", "/api/settings/backup-failures"),
      fastflow.api("GET", "/api/settings/cleanup/passes?limit=10"),
    ]);
    renderFailures(failures);
    renderPasses(passes);
  }

  const cleanBtn = $("cleanup-now");
  if (cleanBtn) cleanBtn.onclick = async () => {
    const out = $("cleanup-result");
    cleanBtn.disabled = true;
    out.className = "muted";
    out.textContent = "Cleanup pass running…";
    try {
      const s = await fastflow.api("POST", "/api/settings/cleanup/force");
      out.className = s.backup_failures || s.error ? "error" : "ok";
      out.textContent = (s.error ? `Cleanup failed: ${s.error}. ` : "") +
        `Cleanup finished in ${s.duration_s.toFixed(1)} s: ${s.archived_runs} archived, ` +
        `${s.deleted_runs} runs deleted, ${s.truncated_logs} logs truncated, ${s.backup_failures} backup failures, ` +
        `${s.skipped_runs} skipped.` + (s.config_error ? ` ${s.config_error}` : "");
    } catch (e) {
      out.className = "error";
      out.textContent = e.status === 409 ? `Another cleanup pass is running (${e.message}).` : `Cleanup failed: ${e.message}`;
    } finally {
      cleanBtn.disabled = false;
    }
    try {
      await refreshPanel();
    } catch {
      // the next page load shows it; the result line above already says what happened
    }
    await fastflow.pollFailures();
  };

  document.querySelectorAll("button.notify-test").forEach((btn) => {
    btn.onclick = async () => {
      const ch = btn.dataset.channel;
      const out = $(`${ch}-result`);
      btn.disabled = true;
      out.className = "muted";
      out.textContent = "Sending…";
      try {
        const results = await fastflow.api("POST", `/api/settings/notifications/test?channel=${ch}`);
        const r = results.find((x) => x.channel === ch) || results[0];
        out.className = r && r.ok ? "ok" : "error";
        out.textContent = r ? (r.ok ? "Test message sent." : `Failed: ${r.error}`) : "Nothing sent.";
      } catch (e) {
        out.className = "error";
        out.textContent = e.message;
      } finally {
        btn.disabled = false;
      }
    };
  });
})();

// --- the Disk panel (issue 16): LOGS_DIR's free space, growth, backlog and forecast -------
(() => {
  const panel = document.getElementById("disk-panel");
  if (!panel) return;
  const $ = (id) => document.getElementById(id);

  function bytes(n) {
    if (n === null || n === undefined) return "–";
    const units = ["B", "KiB", "MiB", "GiB", "TiB"];
    let v = n;
    let i = 0;
    while (Math.abs(v) >= 1024 && i < units.length - 1) { v /= 1024; i += 1; }
    return i === 0 ? `${Math.round(v)} B` : `${v.toFixed(1)} ${units[i]}`;
  }

  function render(d) {
    $("disk-free").textContent = `${bytes(d.free_bytes)} of ${bytes(d.total_bytes)}`;
    $("disk-growth").textContent = bytes(d.growth_bytes_per_day);
    $("disk-backlog").textContent = `${bytes(d.backlog_bytes)} in ${d.backlog_runs} run(s)`;
    $("disk-days").textContent = d.days_until_full === null ? "never (no growth)" : d.days_until_full.toFixed(1);
    const status = $("disk-status");
    if (d.warning) {
      status.className = "error";
      status.textContent = d.free_bytes < d.min_free_bytes
        ? `LOGS_DIR is full: new runs are refused. ${d.cause || ""}`
        : `LOGS_DIR fills up in about ${d.days_until_full.toFixed(1)} days. ${d.cause || ""}`;
    } else {
      status.className = "ok";
      status.textContent = d.days_until_full === null
        ? "OK: LOGS_DIR is not growing."
        : `OK: full in about ${d.days_until_full.toFixed(1)} days at the current growth.`;
    }
  }

  async function load() {
    try {
      render(await fastflow.api("GET", "/api/settings/disk"));
    } catch (e) {
      const status = $("disk-status");
      status.className = "error";
      status.textContent = `Cannot measure LOGS_DIR: ${e.message}`;
    }
  }

  load();
  setInterval(load, 60000);
})();

// --- the Bucket panel (issue 16): versioning, Object Lock, retention, encryption, lifecycle
// of the archive bucket (GET /api/archive/bucket-check), and the last verification ---------
(() => {
  const panel = document.getElementById("bucket-panel");
  if (!panel) return;
  const $ = (id) => document.getElementById(id);
  const PILL = { ok: "st-success", warning: "st-timeout", error: "st-failed", unknown: "st-cancelled" };

  function render(report) {
    const body = $("bucket-table").querySelector("tbody");
    body.textContent = "";
    for (const c of report.checks) {
      const tr = document.createElement("tr");
      tr.dataset.check = c.name;
      tr.dataset.status = c.status;
      const name = document.createElement("th");
      name.scope = "row";
      name.textContent = c.name;
      const result = document.createElement("td");
      const pill = document.createElement("span");
      pill.className = `status ${PILL[c.status] || "st-cancelled"}`;
      pill.textContent = c.status;
      result.appendChild(pill);
      const why = document.createElement("td");
      why.textContent = c.message;
      tr.append(name, result, why);
      body.appendChild(tr);
    }
    const status = $("bucket-status");
    const errors = report.checks.filter((c) => c.status === "error").length;
    const warnings = report.checks.filter((c) => c.status === "warning").length;
    status.className = errors ? "error" : warnings ? "muted" : "ok";
    status.textContent = `Bucket ${report.bucket} (prefix '${report.prefix}'): ` +
      (errors ? `${errors} error(s)` : warnings ? `${warnings} warning(s)` : "fit for an audit trail");
  }

  async function check() {
    const status = $("bucket-status");
    status.className = "muted";
    status.textContent = "Checking the bucket…";
    try {
      render(await fastflow.api("GET", "/api/archive/bucket-check"));
    } catch (e) {
      $("bucket-table").querySelector("tbody").textContent = "";
      status.className = e.status === 422 ? "muted" : "error";
      status.textContent = `Cannot check the bucket: ${e.message}`;
    }
  }

  async function lastVerification() {
    const out = $("bucket-verified");
    try {
      const data = await fastflow.api("GET", "/api/archive/verifications?limit=1");
      const v = (data.verifications || [])[0];
      if (!v) { out.textContent = "Last archive verification: none yet (ARCHIVE_VERIFY_SCHEDULE)."; return; }
      const when = (v.finished_at || v.started_at).slice(0, 16).replace("T", " ");
      const state = v.ok === null ? `did not finish: ${v.error || "?"}` :
        v.ok ? "every object intact" : `${v.objects_damaged} damaged`;
      out.className = v.ok === false ? "error" : "muted";
      out.textContent = `Last archive verification: ${when} UTC (${v.trigger}): ${state}; ` +
        `${v.objects_checked} objects checked, ${v.objects_deep_checked} re-hashed, ${v.manifests_checked} manifests.`;
    } catch {
      out.textContent = "Last archive verification: unknown.";
    }
  }

  $("bucket-recheck").onclick = check;
  check();
  lastVerification();
})();
