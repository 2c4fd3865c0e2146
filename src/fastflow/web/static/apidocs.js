// The API reference at /docs: rendered here from /openapi.json, with no script or style
// from anywhere else (the page keeps the strict Content-Security-Policy of every page).
"use strict";

(function () {
  const METHODS = ["get", "post", "put", "patch", "delete"];

  function el(tag, text, cls) {
    const node = document.createElement(tag);
    if (text !== undefined && text !== null) node.textContent = String(text);
    if (cls) node.className = cls;
    return node;
  }

  function refName(schema) {
    if (!schema) return "";
    if (schema.$ref) return schema.$ref.split("/").pop();
    if (schema.type === "array") return `array of ${refName(schema.items) || "values"}`;
    if (schema.anyOf) return schema.anyOf.map(refName).filter(Boolean).join(" | ");
    return schema.type || "";
  }

  function parameters(op) {
    const params = op.parameters || [];
    if (!params.length) return null;
    const table = el("table");
    const head = el("tr");
    ["name", "in", "type", "required", "description"].forEach((h) => head.appendChild(el("th", h)));
    table.appendChild(head);
    for (const p of params) {
      const row = el("tr");
      row.appendChild(el("td", p.name, "mono"));
      row.appendChild(el("td", p.in));
      row.appendChild(el("td", refName(p.schema)));
      row.appendChild(el("td", p.required ? "yes" : "no"));
      row.appendChild(el("td", p.description || (p.schema && p.schema.description) || ""));
      table.appendChild(row);
    }
    return table;
  }

  function operation(path, method, op) {
    const section = el("section", null, "api-op");
    section.dataset.path = path;
    section.dataset.method = method;
    const title = el("h3");
    title.appendChild(el("span", method.toUpperCase(), "api-method"));
    title.appendChild(document.createTextNode(" "));
    title.appendChild(el("span", path, "mono"));
    section.appendChild(title);
    if (op.summary) section.appendChild(el("p", op.summary));
    if (op.description) section.appendChild(el("pre", op.description, "api-description"));
    const table = parameters(op);
    if (table) section.appendChild(table);
    const body = op.requestBody && op.requestBody.content;
    if (body) {
      const kinds = Object.entries(body).map(([type, c]) => `${type} ${refName(c.schema)}`.trim());
      section.appendChild(el("p", `Body: ${kinds.join(", ")}`));
    }
    const codes = Object.keys(op.responses || {});
    if (codes.length) section.appendChild(el("p", `Responses: ${codes.join(", ")}`));
    return section;
  }

  async function render() {
    const root = document.getElementById("api-docs");
    let spec;
    try {
      const res = await fetch("/openapi.json", { credentials: "same-origin" });
      if (!res.ok) throw new Error(`HTTP ${res.status}`);
      spec = await res.json();
    } catch (e) {
      root.textContent = `Could not load /openapi.json (${e.message}).`;
      return;
    }
    root.textContent = "";
    root.appendChild(el("p", `${spec.info.title} ${spec.info.version}. The machine-readable description is at /openapi.json.`));
    for (const [path, item] of Object.entries(spec.paths || {})) {
      for (const method of METHODS) {
        if (item[method]) root.appendChild(operation(path, method, item[method]));
      }
    }
    root.dataset.rendered = "true";
  }

  document.addEventListener("DOMContentLoaded", render);
})();
