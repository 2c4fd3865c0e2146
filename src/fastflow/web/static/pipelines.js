// Pipelines page: "Run with parameters" (a dialog of NAME=value rows, queued through the API).
"use strict";

(() => {
  const dialog = document.getElementById("run-params");
  if (!dialog) return; // not an admin
  const $ = (id) => document.getElementById(id);
  const form = $("run-params-form");
  const rows = $("run-params-rows");
  const rowTemplate = $("run-param-row");
  const errorBox = $("run-params-error");
  const resultBox = $("run-params-result");
  const submit = $("run-params-submit");
  const NAME = /^[A-Za-z_][A-Za-z0-9_]*$/;
  let pipeline = "";

  function addRow(key = "", value = "") {
    const row = rowTemplate.content.firstElementChild.cloneNode(true);
    row.querySelector(".param-key").value = key;
    row.querySelector(".param-value").value = value;
    row.querySelector(".param-remove").onclick = () => {
      row.remove();
      if (!rows.children.length) addRow();
    };
    rows.appendChild(row);
    return row;
  }

  function showError(text, input) {
    errorBox.textContent = text;
    errorBox.hidden = false;
    if (input) {
      input.setAttribute("aria-invalid", "true");
      input.focus();
    }
  }

  function clearMessages() {
    errorBox.hidden = true;
    errorBox.textContent = "";
    resultBox.hidden = true;
    resultBox.textContent = "";
    rows.querySelectorAll("[aria-invalid]").forEach((el) => el.removeAttribute("aria-invalid"));
  }

  // {env} from the rows, or null after showing what is wrong; empty rows are ignored
  function collect() {
    const env = {};
    for (const [i, row] of [...rows.children].entries()) {
      const keyInput = row.querySelector(".param-key");
      const key = keyInput.value.trim();
      const value = row.querySelector(".param-value").value;
      if (!key && !value) continue;
      if (!key) { showError(`Parameter ${i + 1}: the name is empty.`, keyInput); return null; }
      if (!NAME.test(key)) {
        showError(`Parameter ${i + 1}: "${key}" is not a valid name (letters, digits and _, not starting with a digit).`, keyInput);
        return null;
      }
      if (Object.prototype.hasOwnProperty.call(env, key)) {
        showError(`Parameter ${i + 1}: "${key}" is given twice.`, keyInput);
        return null;
      }
      env[key] = value;
    }
    return env;
  }

  function showQueued(runId) {
    resultBox.textContent = "Queued run ";
    const a = document.createElement("a");
    a.id = "run-params-link";
    a.href = `/runs/${encodeURIComponent(runId)}`;
    a.className = "mono";
    a.textContent = runId;
    resultBox.append(a, ".");
    resultBox.hidden = false;
  }

  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    clearMessages();
    const env = collect();
    if (env === null) return;
    submit.disabled = true;
    try {
      const res = await fastflow.api("POST", `/api/pipelines/${encodeURIComponent(pipeline)}/run`, { env });
      showQueued(res.run_id);
    } catch (e) {
      showError(`Could not queue ${pipeline}: ${e.message}`);
    } finally {
      submit.disabled = false;
    }
  });

  function open(name) {
    pipeline = name;
    $("run-params-pipeline").textContent = name;
    clearMessages();
    rows.textContent = "";
    const first = addRow();
    dialog.showModal();
    first.querySelector(".param-key").focus();
  }

  $("run-params-add").onclick = () => addRow().querySelector(".param-key").focus();
  $("run-params-close").onclick = () => dialog.close();
  document.querySelectorAll("button.run-params").forEach((btn) => {
    btn.onclick = () => open(btn.dataset.pipeline);
  });
})();
