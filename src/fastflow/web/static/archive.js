// Archive page: the pipeline filter lists every pipeline that can have archived runs —
// the pipelines found now and the pipelines named in the archive ledger (a deleted
// pipeline's runs stay archived). The server renders the names of the page shown; this
// adds the others, keeping the selection.
"use strict";

(() => {
  const select = document.getElementById("archive-pipeline");
  if (!select) return;

  async function names() {
    const found = new Set();
    const [pipelines, entries] = await Promise.allSettled([
      fastflow.api("GET", "/api/pipelines"),
      fastflow.api("GET", "/api/archive?limit=1000"),
    ]);
    if (pipelines.status === "fulfilled") pipelines.value.forEach((p) => found.add(p.name));
    if (entries.status === "fulfilled") entries.value.forEach((e) => found.add(e.pipeline_name));
    return found;
  }

  document.addEventListener("DOMContentLoaded", async () => {
    const all = await names();
    const selected = select.value;
    [...select.options].forEach((o) => { if (o.value) all.add(o.value); });
    const options = [...all].filter(Boolean).sort().map((name) => {
      const o = document.createElement("option");
      o.value = name;
      o.textContent = name;
      o.selected = name === selected;
      return o;
    });
    const any = document.createElement("option");
    any.value = "";
    any.textContent = "all";
    select.replaceChildren(any, ...options);
    select.dataset.loaded = String(options.length);
  });
})();
