// Search page: the form's query (q, pipeline, status, since, until, limit, regex,
// case_sensitive) is sent to /api/search; its NDJSON stream is read as it comes and shown
// grouped by run (newest first), each line linking to the run page at that line.
"use strict";

(() => {
  const form = document.getElementById("search-form");
  if (!form) return;
  const statusLine = document.getElementById("search-status-line");
  const results = document.getElementById("search-results");
  const params = new URLSearchParams(window.location.search);
  const q = params.get("q") || "";
  if (!q) return;
  const regex = params.get("regex") === "true";
  const caseSensitive = params.get("case_sensitive") === "true";
  const limit = Number(params.get("limit") || 1000);

  const query = new URLSearchParams({ q });
  for (const [from, to] of [["pipeline", "pipeline_name"], ["status", "status"], ["since", "since"],
    ["until", "until"], ["limit", "limit"], ["regex", "regex"], ["case_sensitive", "case_sensitive"]]) {
    const value = params.get(from);
    if (value) query.set(to, value);
  }

  const groups = new Map(); // run id -> { list, count }
  let matches = 0;
  const skipped = [];

  function highlighted(text) { // plain text: every occurrence of q in a <mark>
    const frag = document.createDocumentFragment();
    if (regex) { frag.append(text); return frag; }
    const hay = caseSensitive ? text : fastflow.fold(text);
    const needle = caseSensitive ? q : fastflow.fold(q);
    let pos = 0;
    for (let i = hay.indexOf(needle); i >= 0; i = hay.indexOf(needle, i + needle.length)) {
      if (i > pos) frag.append(text.slice(pos, i));
      const m = document.createElement("mark");
      m.textContent = text.slice(i, i + needle.length);
      frag.append(m);
      pos = i + needle.length;
    }
    if (pos < text.length) frag.append(text.slice(pos));
    return frag;
  }

  function runLink(hit, line) {
    // the run page's box searches plain text: a regular expression would find nothing
    // there, so its results link to the line alone
    const query = regex ? "" : `?q=${encodeURIComponent(q)}`;
    const href = `/runs/${hit.run_id}${query}` + (line ? `#L${line}` : "");
    const a = document.createElement("a");
    a.href = href;
    return a;
  }

  function group(hit) {
    let g = groups.get(hit.run_id);
    if (g) return g;
    const section = document.createElement("section");
    section.className = "card search-run";
    section.dataset.runId = hit.run_id;
    const head = document.createElement("h2");
    const name = document.createElement("span");
    name.textContent = hit.pipeline_name;
    const link = runLink(hit, 0);
    link.className = "mono";
    link.textContent = hit.run_id.slice(0, 8);
    const when = document.createElement("small");
    when.className = "muted";
    when.textContent = ` started ${hit.started_at.replace("T", " ").slice(0, 19)} UTC`;
    const count = document.createElement("span");
    count.className = "badge-count";
    head.append(name, " ", link, when, " ", count);
    const list = document.createElement("ol");
    list.className = "search-lines";
    section.append(head, list);
    results.append(section);
    g = { list, count, n: 0 };
    groups.set(hit.run_id, g);
    return g;
  }

  function add(hit) {
    const g = group(hit);
    const li = document.createElement("li");
    const link = runLink(hit, hit.line);
    link.className = "ln";
    link.textContent = String(hit.line);
    link.title = `line ${hit.line} in the run's log`;
    const text = document.createElement("code");
    text.append(highlighted(hit.text));
    li.append(link, text);
    g.list.append(li);
    g.n += 1;
    g.count.textContent = `${g.n} ${g.n === 1 ? "match" : "matches"}`;
    matches += 1;
  }

  function summary(done) {
    const runs = groups.size;
    let text = `${matches.toLocaleString()} ${matches === 1 ? "match" : "matches"} in ${runs.toLocaleString()} ${runs === 1 ? "run" : "runs"}`;
    if (!done) text += " · searching…";
    else if (!matches) text = "No match.";
    if (done && matches >= limit) text += ` · stopped at the limit of ${limit.toLocaleString()}: narrow the search or raise the limit`;
    if (skipped.length) text += ` · ${skipped.length} ${skipped.length === 1 ? "run" : "runs"} could not be searched (${skipped[0]})`;
    statusLine.textContent = text;
    statusLine.className = done ? "muted done" : "muted";
  }

  function handle(item) {
    if (item.error && !item.run_id) throw new Error(item.error);
    if (item.error) { skipped.push(`${item.run_id.slice(0, 8)}: ${item.error}`); return; }
    add(item);
  }

  async function run() {
    summary(false);
    const res = await fetch(`/api/search?${query}`, { credentials: "same-origin" });
    if (!res.ok) {
      let detail = res.statusText;
      try { detail = (await res.json()).detail; } catch { /* not JSON */ }
      throw new Error(typeof detail === "string" ? detail : JSON.stringify(detail));
    }
    const reader = res.body.getReader();
    const decoder = new TextDecoder();
    let buf = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buf += decoder.decode(value, { stream: true });
      let nl;
      while ((nl = buf.indexOf("\n")) >= 0) {
        const line = buf.slice(0, nl);
        buf = buf.slice(nl + 1);
        if (line) handle(JSON.parse(line));
      }
      summary(false);
    }
    if (buf.trim()) handle(JSON.parse(buf));
    summary(true);
  }

  run().catch((e) => {
    statusLine.className = "error done";
    statusLine.textContent = `Search failed: ${e.message}`;
  });
})();
