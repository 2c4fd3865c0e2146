// Settings page: save, object path preview, S3 test, cleanup now, notification tests.
"use strict";

(() => {
  const form = document.getElementById("settings-form");
  if (!form) return;
  const $ = (id) => document.getElementById(id);

  function preview() {
    const prefix = (form.elements.s3_prefix.value || "").replace(/^\/+|\/+$/g, "");
    const base = (prefix ? prefix + "/" : "") + "{pipeline}/{run_id}/";
    $("preview-log").textContent = base + "run.log";
    $("preview-metrics").textContent = base + "metrics.jsonl";
  }
  form.elements.s3_prefix.addEventListener("input", preview);
  preview();

  function collect() {
    const out = {};
    for (const el of form.elements) {
      if (!el.name || el.disabled) continue;
      if (el.type === "checkbox") out[el.name] = el.checked;
      else if (el.type === "password") { if (el.value) out[el.name] = el.value; }
      else if (el.type === "number") out[el.name] = el.value === "" ? null : Number(el.value);
      else out[el.name] = el.value === "" ? null : el.value;
    }
    if (typeof out.email_recipients === "string") out.email_recipients = out.email_recipients;
    return out;
  }

  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const result = $("settings-result");
    result.className = "muted";
    result.textContent = "Saving…";
    try {
      await fastflow.api("PUT", "/api/settings", collect());
      result.className = "ok";
      result.textContent = "Saved.";
      for (const el of form.querySelectorAll('input[type="password"]')) el.value = "";
    } catch (e) {
      result.className = "error";
      result.textContent = `Not saved: ${e.message}`;
    }
  });

  const s3btn = $("s3-test");
  if (s3btn) s3btn.onclick = async () => {
    const out = $("s3-test-result");
    s3btn.disabled = true;
    out.className = "muted";
    out.textContent = "Testing…";
    try {
      const r = await fastflow.api("POST", "/api/settings/s3/test");
      out.className = r.ok ? "ok" : "error";
      out.textContent = `${r.ok ? "Connection OK" : r.error} (tested ${r.tested_at.slice(0, 19).replace("T", " ")} UTC)`;
    } catch (e) {
      out.className = "error";
      out.textContent = e.message;
    } finally {
      s3btn.disabled = false;
    }
  };

  const cleanBtn = $("cleanup-now");
  if (cleanBtn) cleanBtn.onclick = async () => {
    const out = $("cleanup-result");
    cleanBtn.disabled = true;
    out.className = "muted";
    out.textContent = "Cleanup pass running…";
    try {
      const s = await fastflow.api("POST", "/api/settings/cleanup/force");
      out.className = s.backup_failures ? "error" : "ok";
      out.textContent = `Cleanup finished in ${s.duration_s.toFixed(1)} s: ${s.archived_runs} archived, ` +
        `${s.deleted_runs} runs deleted, ${s.truncated_logs} logs truncated, ${s.backup_failures} backup failures, ` +
        `${s.skipped_runs} skipped.` + (s.config_error ? ` ${s.config_error}` : "");
      await fastflow.pollFailures();
    } catch (e) {
      out.className = "error";
      out.textContent = e.status === 409 ? `Another cleanup pass is running (${e.message}).` : `Cleanup failed: ${e.message}`;
    } finally {
      cleanBtn.disabled = false;
    }
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
