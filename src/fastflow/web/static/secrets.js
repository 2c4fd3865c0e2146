// Secrets page: set (write-only) and delete secrets through /api/secrets; values are
// only ever sent, never received, and the value field is cleared after each attempt.
"use strict";

(() => {
  const form = document.getElementById("secret-form");
  if (!form) return; // not an admin
  const $ = (id) => document.getElementById(id);
  const NAME = /^[A-Z_][A-Z0-9_]*$/;
  const nameInput = $("secret-name");
  const valueInput = $("secret-value");
  const result = $("secret-result");
  const tbody = document.querySelector("#secrets-table tbody");

  function say(text, kind) {
    result.className = kind;
    result.textContent = text;
  }

  function invalid(input, text) {
    input.setAttribute("aria-invalid", "true");
    input.focus();
    say(text, "error");
  }

  function fill(name) {
    nameInput.value = name;
    valueInput.value = "";
    valueInput.focus();
    say(`Enter the new value of ${name}.`, "muted");
  }

  function rowOf(name) {
    return [...tbody.querySelectorAll("tr[data-secret]")].find((tr) => tr.dataset.secret === name);
  }

  function missingOf(name) {
    return [...document.querySelectorAll("#secrets-missing-list li")].find((li) => li.dataset.missing === name);
  }

  function syncEmpty() {
    $("secrets-empty").hidden = tbody.querySelector("tr[data-secret]") !== null;
    $("secrets-missing").hidden = !document.querySelector("#secrets-missing-list li");
  }

  function wire(tr) {
    tr.querySelector(".secret-replace").onclick = () => fill(tr.dataset.secret);
    tr.querySelector(".secret-delete").onclick = () => remove(tr.dataset.secret);
  }

  // the row of a secret object {name, updated_at, pipelines}, created in name order
  function upsertRow(s) {
    let tr = rowOf(s.name);
    if (!tr) {
      tr = $("secret-row").content.firstElementChild.cloneNode(true);
      tr.dataset.secret = s.name;
      for (const btn of tr.querySelectorAll("button")) btn.dataset.secret = s.name;
      tr.querySelector(".name").textContent = s.name;
      wire(tr);
      const after = [...tbody.querySelectorAll("tr[data-secret]")].find((r) => r.dataset.secret > s.name);
      tbody.insertBefore(tr, after || $("secrets-empty"));
    }
    const time = document.createElement("time");
    time.dateTime = s.updated_at;
    time.textContent = s.updated_at.slice(0, 19).replace("T", " ");
    tr.querySelector(".updated").replaceChildren(time);
    tr.querySelector(".pipelines").textContent = s.pipelines.length ? s.pipelines.join(", ") : "–";
    const li = missingOf(s.name);
    if (li) li.remove();
    syncEmpty();
  }

  function addMissing(name, pipelines) {
    const li = document.createElement("li");
    li.dataset.missing = name;
    const span = document.createElement("span");
    span.className = "mono";
    span.textContent = name;
    const btn = document.createElement("button");
    btn.type = "button";
    btn.className = "link secret-replace";
    btn.textContent = "Set";
    btn.onclick = () => fill(name);
    li.append(span, ` — ${pipelines.join(", ")} `, btn);
    $("secrets-missing-list").appendChild(li);
  }

  async function remove(name) {
    const tr = rowOf(name);
    const users = tr ? tr.querySelector(".pipelines").textContent : "";
    const warning = users && users !== "–" ? `\nRuns of ${users} will fail until it is set again.` : "";
    if (!window.confirm(`Delete secret ${name}?${warning}`)) return;
    try {
      const res = await fastflow.api("DELETE", `/api/secrets/${encodeURIComponent(name)}`);
      if (tr) tr.remove();
      if (res.pipelines.length) addMissing(name, res.pipelines);
      syncEmpty();
      say(`Deleted ${name}.`, "ok");
    } catch (e) {
      say(`Not deleted: ${e.message}`, "error");
    }
  }

  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    nameInput.removeAttribute("aria-invalid");
    valueInput.removeAttribute("aria-invalid");
    const name = nameInput.value.trim();
    const value = valueInput.value;
    if (!NAME.test(name)) {
      invalid(nameInput, "The name must be upper-case letters, digits and _, not starting with a digit.");
      return;
    }
    if (!value) {
      invalid(valueInput, "Enter a value.");
      return;
    }
    const save = $("secret-save");
    save.disabled = true;
    say("Saving…", "muted");
    try {
      const s = await fastflow.api("PUT", `/api/secrets/${encodeURIComponent(name)}`, { value });
      upsertRow(s);
      nameInput.value = "";
      if (s.warnings && s.warnings.length) {
        say(`Saved ${s.name}, but: ${s.warnings.join(" ")}`, "warn");
      } else {
        say(`Saved ${s.name}.`, "ok");
      }
    } catch (e) {
      say(`Not saved: ${e.message}`, "error");
    } finally {
      valueInput.value = ""; // never left in the page
      save.disabled = false;
    }
  });

  tbody.querySelectorAll("tr[data-secret]").forEach(wire);
  document.querySelectorAll("#secrets-missing-list .secret-replace").forEach((btn) => {
    btn.onclick = () => fill(btn.dataset.secret);
  });
})();
