// Run page: pin a run (with a reason) or unpin it; the page reloads to show the result.
"use strict";

(() => {
  const form = document.getElementById("pin-form");
  if (!form) return;
  const runId = form.dataset.runId;
  const out = document.getElementById("pin-result");

  async function send(method, body) {
    out.className = "muted";
    out.textContent = method === "POST" ? "Pinning…" : "Unpinning…";
    try {
      await fastflow.api(method, `/api/runs/${runId}/pin`, body);
      window.location.reload();
    } catch (e) {
      out.className = "error";
      out.textContent = e.message;
    }
  }

  form.onsubmit = (ev) => {
    ev.preventDefault();
    const reason = document.getElementById("pin-reason-input").value.trim();
    if (!reason) {
      out.className = "error";
      out.textContent = "Say why this run must be kept.";
      return;
    }
    send("POST", { reason });
  };
  const unpin = document.getElementById("unpin-run");
  if (unpin) unpin.onclick = () => send("DELETE");
})();
