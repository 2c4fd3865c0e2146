// fastflow UI: API helper, notifications (bell + toasts: backup, run-failure and system
// incidents — archive integrity, disk pressure —, recoveries), "Run now".
"use strict";

const fastflow = (() => {
  const csrf = document.querySelector('meta[name="csrf-token"]')?.content || "";
  const role = document.querySelector('meta[name="user-role"]')?.content || "";
  const SEEN_KEY = "fastflow.seenFailures";
  const READ_KEY = "fastflow.readFailures";
  const CLEARED_KEY = "fastflow.clearedFailures";
  const SEEN_ERRORS_KEY = "fastflow.seenErrors"; // "<incident id>|<error>" already toasted
  const OPEN_KEY = "fastflow.openBackups"; // backup incidents open at the last poll
  const OPEN_SYSTEM_KEY = "fastflow.openSystem"; // system incidents open at the last poll: {id: title}
  const LEGACY_SEEN_KEY = "fastflow.seenKeys";
  const ROW_LIMIT = 1000; // the server keeps at most 1,000 failure rows: group them all
  const POLL_MS = 60000;

  async function api(method, path, body) {
    const opts = { method, headers: { "Accept": "application/json" }, credentials: "same-origin" };
    if (method !== "GET") opts.headers["X-CSRF-Token"] = csrf;
    if (body !== undefined) {
      opts.headers["Content-Type"] = "application/json";
      opts.body = JSON.stringify(body);
    }
    const res = await fetch(path, opts);
    const type = res.headers.get("content-type") || "";
    const data = type.includes("application/json") ? await res.json() : await res.text();
    if (!res.ok) {
      let detail = data && data.detail !== undefined ? data.detail : data;
      if (Array.isArray(detail)) detail = detail.map((d) => d.msg || JSON.stringify(d)).join("; ");
      const err = new Error(typeof detail === "string" ? detail : JSON.stringify(detail));
      err.status = res.status;
      err.data = data;
      throw err;
    }
    return data;
  }

  function load(key) {
    try { return new Set(JSON.parse(localStorage.getItem(key) || "[]")); } catch { return new Set(); }
  }
  function save(key, set) {
    localStorage.setItem(key, JSON.stringify([...set].slice(-2000)));
  }

  function toast(text, kind = "error", link = null) {
    const box = document.getElementById("toasts");
    if (!box) return;
    const el = document.createElement("div");
    el.className = `toast ${kind}`;
    el.setAttribute("role", kind === "error" ? "alert" : "status");
    const span = document.createElement("span");
    span.textContent = text;
    el.appendChild(span);
    if (link) {
      const a = document.createElement("a");
      a.href = link.href;
      a.textContent = link.text;
      el.appendChild(a);
    }
    const close = document.createElement("button");
    close.type = "button";
    close.className = "link";
    close.textContent = "×";
    close.setAttribute("aria-label", "Dismiss");
    close.onclick = () => el.remove();
    el.appendChild(close);
    box.appendChild(el);
    setTimeout(() => el.remove(), 12000);
  }

  function plural(n, one, many) {
    return `${n} ${n === 1 ? one : many}`;
  }

  function message(f) {
    if (f.kind === "system") return f.title;
    if (f.kind === "run") {
      const n = f.failures > 1 ? ` (${f.failures} failed runs)` : "";
      return `Pipeline ${f.pipeline_name} failed: ${f.error_message}${n}`;
    }
    const who = f.run_id ? `${f.pipeline_name} (run ${f.run_id.slice(0, 8)})` : "cleanup pass";
    const n = f.failures > 1 ? ` (failed in ${f.failures} passes)` : "";
    return `S3 log backup failed: ${who}: ${f.error_message}${n}`;
  }

  // The API lists one row per failed attempt, so a run that fails in every pass has one
  // row per pass. The bell shows incidents: one per run with unresolved failures, and one
  // per distinct error of the pass itself (no run), with the newest error and the count.
  function backupIncidents(rows) {
    const groups = new Map();
    for (const f of rows) { // newest first
      if (f.resolved_at) continue;
      const id = f.run_id ? `backup:${f.run_id}` : `backup:pass:${f.error_message}`;
      const g = groups.get(id);
      if (g) {
        g.failures += 1;
        g.since = f.created_at;
      } else {
        groups.set(id, { kind: "backup", id, run_id: f.run_id, pipeline_name: f.pipeline_name,
          error_message: f.error_message, created_at: f.created_at, since: f.created_at, failures: 1 });
      }
    }
    return [...groups.values()];
  }

  // open run-failure incidents, shaped like backup incidents for the bell and the toasts
  async function runIncidents() {
    try {
      const data = await api("GET", "/api/settings/run-incidents");
      return (data.incidents || []).map((i) => ({
        kind: "run",
        id: `run:${i.pipeline}:${i.since}`,
        run_id: i.run_id,
        pipeline_name: i.pipeline,
        error_message: `last run ${i.status || "FAILED"}`,
        failures: i.failures,
        created_at: i.since,
      }));
    } catch {
      return [];
    }
  }

  // open incidents of fastflow itself (archive integrity, disk pressure), for the bell
  async function systemIncidents() {
    try {
      const data = await api("GET", "/api/settings/system-incidents");
      return (data.incidents || []).map((i) => ({
        kind: "system",
        id: `system:${i.kind}:${i.key}:${i.since}`,
        system_kind: i.kind,
        title: i.title,
        error_message: i.detail,
        created_at: i.updated_at || i.since,
      }));
    } catch {
      return null; // unknown: no recovery is concluded from a failed poll
    }
  }

  // System incidents open at the previous poll and not now were resolved: say so once.
  function noticeSystemRecoveries(open) {
    let before = null;
    try { before = JSON.parse(localStorage.getItem(OPEN_SYSTEM_KEY) || "null"); } catch { before = null; }
    const now = {};
    open.forEach((f) => { now[f.id] = f.title; });
    localStorage.setItem(OPEN_SYSTEM_KEY, JSON.stringify(now));
    if (!before || typeof before !== "object") return;
    for (const [id, title] of Object.entries(before)) {
      if (id in now) continue;
      for (const key of [SEEN_KEY, READ_KEY, CLEARED_KEY]) {
        const set = load(key); set.delete(id); save(key, set);
      }
      toast(`Resolved: ${title}`, "ok", { href: "/settings", text: "Details" });
    }
  }

  let failures = [];

  function markRead(id) {
    const r = load(READ_KEY); r.add(String(id)); save(READ_KEY, r);
  }

  function renderCenter() {
    const list = document.getElementById("notif-list");
    const badge = document.getElementById("bell-badge");
    if (!list || !badge) return;
    const read = load(READ_KEY);
    const cleared = load(CLEARED_KEY);
    const shown = failures.filter((f) => !cleared.has(String(f.id)));
    const unread = shown.filter((f) => !read.has(String(f.id)));
    badge.textContent = String(unread.length);
    badge.hidden = unread.length === 0;
    list.innerHTML = "";
    if (!shown.length) {
      const li = document.createElement("li");
      li.className = "empty";
      li.textContent = "No notifications.";
      list.appendChild(li);
      return;
    }
    for (const f of shown) {
      const li = document.createElement("li");
      li.className = read.has(String(f.id)) ? "read" : "unread";
      li.dataset.failureId = String(f.id);
      li.dataset.kind = f.kind;
      const a = document.createElement("a");
      a.href = f.run_id ? `/runs/${f.run_id}` : "/settings";
      a.textContent = message(f);
      if (f.kind === "system") a.title = f.error_message || "";
      a.onclick = () => markRead(f.id);
      const when = document.createElement("small");
      when.textContent = (f.created_at || "").slice(0, 19).replace("T", " ") + " UTC";
      const mark = document.createElement("button");
      mark.type = "button";
      mark.className = "link";
      mark.textContent = "Mark read";
      mark.onclick = (ev) => {
        ev.stopPropagation();
        markRead(f.id); renderCenter();
      };
      li.append(a, when, mark);
      list.appendChild(li);
    }
  }

  function loadList(key) {
    try {
      const v = JSON.parse(localStorage.getItem(key) || "null");
      return Array.isArray(v) ? v : null;
    } catch {
      return null;
    }
  }

  // Backup incidents that were open at the previous poll (in any tab) and are not now are
  // resolved: say so once, and forget them, so that a new failure of the same run is new.
  function noticeRecoveries(backups) {
    const before = loadList(OPEN_KEY);
    localStorage.setItem(OPEN_KEY, JSON.stringify(backups.map((f) => f.id)));
    if (!before) return;
    const open = new Set(backups.map((f) => f.id));
    const gone = before.filter((id) => !open.has(id));
    if (!gone.length) return;
    for (const key of [SEEN_KEY, READ_KEY, CLEARED_KEY]) {
      const set = load(key); gone.forEach((id) => set.delete(id)); save(key, set);
    }
    const keys = (loadList(SEEN_ERRORS_KEY) || []).filter((k) => !gone.some((id) => k.startsWith(`${id}|`)));
    localStorage.setItem(SEEN_ERRORS_KEY, JSON.stringify(keys));
    const what = plural(gone.length, "failed backup", "failed backups");
    const text = backups.length
      ? `${what} resolved; ${plural(backups.length, "backup is", "backups are")} still failing`
      : `S3 log backups OK again: ${what} resolved`;
    toast(text, "ok", { href: "/settings", text: "Details" });
  }

  /** Poll the backup failures and run incidents; update the bell, toast what is new and
   * what recovered. Resolves to the incidents shown (undefined when the API failed). */
  async function pollFailures() {
    let data;
    try {
      data = await api("GET", `/api/settings/backup-failures?limit=${ROW_LIMIT}`);
    } catch {
      return;
    }
    const rows = data.failures || [];
    const backups = backupIncidents(rows);
    const system = await systemIncidents();
    failures = (system || []).concat(backups, await runIncidents());
    const seen = load(SEEN_KEY);
    const fresh = failures.filter((f) => !seen.has(String(f.id)));
    // the same ongoing failure (same incident, same error) is not toasted again each pass
    const seenErrors = new Set(loadList(SEEN_ERRORS_KEY) || []);
    const legacy = loadList(LEGACY_SEEN_KEY); // "<run id>|<error>" of earlier versions
    if (legacy) {
      legacy.forEach((k) => seenErrors.add(k.startsWith("null|") ? `backup:pass:${k.slice(5)}|${k.slice(5)}` : `backup:${k}`));
      localStorage.removeItem(LEGACY_SEEN_KEY);
    }
    const errorKey = (f) => `${f.id}|${f.error_message}`;
    const novelAll = failures.filter((f) => !seenErrors.has(errorKey(f)) && (f.kind === "backup" || fresh.includes(f)));
    // a new system incident gets its own toast (its title says what it is)
    novelAll.filter((f) => f.kind === "system").slice(0, 3).forEach((f) => {
      toast(f.title, "error", { href: "/settings", text: "Open" });
    });
    const novel = novelAll.filter((f) => f.kind !== "system");
    if (novel.length === 1) {
      const f = novel[0];
      toast(message(f), "error", { href: f.run_id ? `/runs/${f.run_id}` : "/settings", text: "Open" });
    } else if (novel.length > 1) {
      const pipelines = [...new Set(novel.map((f) => f.pipeline_name).filter(Boolean))];
      const what = novel.some((f) => f.kind === "run") ? "Backups or runs failed" : "S3 log backup failed";
      toast(`${what} for ${novel.length} runs (${pipelines.slice(0, 3).join(", ")}${pipelines.length > 3 ? ", …" : ""})`,
        "error", { href: "/settings", text: "Details" });
    }
    for (const f of failures) {
      seen.add(String(f.id));
      seenErrors.add(errorKey(f));
    }
    save(SEEN_KEY, seen);
    localStorage.setItem(SEEN_ERRORS_KEY, JSON.stringify([...seenErrors].slice(-2000)));
    noticeRecoveries(backups);
    if (system) noticeSystemRecoveries(system);
    renderCenter();
    const list = document.getElementById("notif-list");
    if (list) list.dataset.polls = String(Number(list.dataset.polls || 0) + 1); // tests wait on it
    const count = document.getElementById("failure-count");
    if (count) count.textContent = String(rows.filter((f) => !f.resolved_at).length);
    return failures;
  }

  function setupBell() {
    const bell = document.getElementById("bell");
    const center = document.getElementById("notif-center");
    if (!bell || !center) return;
    bell.onclick = () => { center.hidden = !center.hidden; };
    document.addEventListener("click", (ev) => {
      if (!center.hidden && !center.contains(ev.target) && !bell.contains(ev.target)) center.hidden = true;
    });
    document.getElementById("notif-read-all").onclick = () => {
      const r = load(READ_KEY); failures.forEach((f) => r.add(String(f.id))); save(READ_KEY, r); renderCenter();
    };
    document.getElementById("notif-clear").onclick = () => {
      const c = load(CLEARED_KEY); const r = load(READ_KEY);
      failures.forEach((f) => { c.add(String(f.id)); r.add(String(f.id)); });
      save(CLEARED_KEY, c); save(READ_KEY, r); renderCenter();
    };
  }

  function setupRunButtons() {
    document.querySelectorAll("button.run-now").forEach((btn) => {
      btn.onclick = async () => {
        btn.disabled = true;
        try {
          const res = await api("POST", `/api/pipelines/${encodeURIComponent(btn.dataset.pipeline)}/run`);
          window.location.href = `/runs/${res.run_id}`;
        } catch (e) {
          toast(`Could not start ${btn.dataset.pipeline}: ${e.message}`);
          btn.disabled = false;
        }
      };
    });
  }

  document.addEventListener("DOMContentLoaded", () => {
    if (!csrf) return; // not logged in
    setupBell();
    setupRunButtons();
    pollFailures();
    setInterval(pollFailures, POLL_MS);
  });

  // lower case, one character for one: a character whose lower case is longer ("İ")
  // stays as it is, so offsets in the folded text are offsets in the text (the pages'
  // searches mark matches by those offsets; one such character made the run page's
  // search find nothing, an outside audit found)
  function fold(text) {
    const lower = text.toLowerCase();
    if (lower.length === text.length) return lower;
    let out = "";
    for (const ch of text) {
      const l = ch.toLowerCase();
      out += l.length === ch.length ? l : ch;
    }
    return out;
  }

  return { api, toast, pollFailures, role, fold };
})();
