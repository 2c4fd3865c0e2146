// fastflow UI: API helper, backup-failure notifications (bell + toasts), "Run now".
"use strict";

const fastflow = (() => {
  const csrf = document.querySelector('meta[name="csrf-token"]')?.content || "";
  const role = document.querySelector('meta[name="user-role"]')?.content || "";
  const SEEN_KEY = "fastflow.seenFailures";
  const READ_KEY = "fastflow.readFailures";
  const CLEARED_KEY = "fastflow.clearedFailures";
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

  function message(f) {
    if (f.kind === "run") {
      const n = f.failures > 1 ? ` (${f.failures} failed runs)` : "";
      return `Pipeline ${f.pipeline_name} failed: ${f.error_message}${n}`;
    }
    const who = f.run_id ? `${f.pipeline_name} (run ${f.run_id.slice(0, 8)})` : "cleanup pass";
    return `S3 log backup failed: ${who}: ${f.error_message}`;
  }

  // open run-failure incidents, shaped like backup failures for the bell and the toasts
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

  let failures = [];

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
      const a = document.createElement("a");
      a.href = f.run_id ? `/runs/${f.run_id}` : "/settings";
      a.textContent = message(f);
      a.onclick = () => { const r = load(READ_KEY); r.add(String(f.id)); save(READ_KEY, r); };
      const when = document.createElement("small");
      when.textContent = (f.created_at || "").slice(0, 19).replace("T", " ") + " UTC";
      const mark = document.createElement("button");
      mark.type = "button";
      mark.className = "link";
      mark.textContent = "Mark read";
      mark.onclick = (ev) => {
        ev.stopPropagation();
        const r = load(READ_KEY); r.add(String(f.id)); save(READ_KEY, r); renderCenter();
      };
      li.append(a, when, mark);
      list.appendChild(li);
    }
  }

  async function pollFailures() {
    let data;
    try {
      data = await api("GET", "/api/settings/backup-failures");
    } catch {
      return;
    }
    failures = (data.failures || []).filter((f) => !f.resolved_at).concat(await runIncidents());
    const seen = load(SEEN_KEY);
    const fresh = failures.filter((f) => !seen.has(String(f.id)));
    // the same ongoing failure (same run, same error) is not toasted again each pass
    const seenKeys = new Set(JSON.parse(localStorage.getItem("fastflow.seenKeys") || "[]"));
    const novel = fresh.filter((f) => !seenKeys.has(`${f.run_id}|${f.error_message}`));
    if (novel.length === 1) {
      const f = novel[0];
      toast(message(f), "error", { href: f.run_id ? `/runs/${f.run_id}` : "/settings", text: "Open" });
    } else if (novel.length > 1) {
      const pipelines = [...new Set(novel.map((f) => f.pipeline_name).filter(Boolean))];
      const what = novel.some((f) => f.kind === "run") ? "Backups or runs failed" : "S3 log backup failed";
      toast(`${what} for ${novel.length} runs (${pipelines.slice(0, 3).join(", ")}${pipelines.length > 3 ? ", …" : ""})`,
        "error", { href: "/settings", text: "Details" });
    }
    for (const f of fresh) {
      seen.add(String(f.id));
      seenKeys.add(`${f.run_id}|${f.error_message}`);
    }
    save(SEEN_KEY, seen);
    localStorage.setItem("fastflow.seenKeys", JSON.stringify([...seenKeys].slice(-2000)));
    renderCenter();
    const count = document.getElementById("failure-count");
    if (count) count.textContent = String(failures.length);
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

  return { api, toast, pollFailures, role };
})();
