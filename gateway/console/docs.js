// Renders /api/v1/openapi.json: operations grouped by tag, with parameters, request body
// and answers (schemas shown as JSON, references to components linked). No dependencies.

const main = document.getElementById("doc");

function el(tag, attrs = {}, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, v);
  for (const c of children) e.append(c instanceof Node ? c : document.createTextNode(String(c)));
  return e;
}

function schemaBlock(schema) {
  const pre = el("pre");
  const text = JSON.stringify(schema, null, 2);
  // Link "$ref": "#/components/schemas/X" to the component's section.
  let last = 0;
  for (const m of text.matchAll(/"#\/components\/schemas\/([^"]+)"/g)) {
    pre.append(text.slice(last, m.index));
    pre.append(el("a", { href: `#schema-${m[1]}` }, m[0]));
    last = m.index + m[0].length;
  }
  pre.append(text.slice(last));
  return pre;
}

function operation(path, method, op) {
  const head = el("summary", {},
    el("span", { class: "method" }, method.toUpperCase()),
    el("span", { class: "path" }, path), " ",
    el("span", { class: "muted" }, op.summary || ""));
  if (op.security) head.append(el("span", { class: "auth" }, op.description ? "admin token" : "token"));
  const box = el("details", { id: op.operationId || "" }, head);
  if (op.description) box.append(el("p", {}, op.description));
  if (op.parameters?.length) {
    const t = el("table", {}, el("tr", {}, el("th", {}, "parameter"), el("th", {}, "in"), el("th", {}, "")));
    for (const p of op.parameters) {
      t.append(el("tr", {}, el("td", { class: "path" }, p.name), el("td", {}, p.in), el("td", {}, p.description || "")));
    }
    box.append(t);
  }
  const body = op.requestBody?.content?.["application/json"]?.schema;
  if (body) box.append(el("h4", {}, "Request body"), schemaBlock(body));
  for (const [status, r] of Object.entries(op.responses || {})) {
    box.append(el("h4", {}, `${status === "default" ? "Otherwise" : status}: ${r.description}`));
    for (const [media, c] of Object.entries(r.content || {})) {
      if (c.schema) box.append(el("div", { class: "muted" }, media), schemaBlock(c.schema));
    }
  }
  return box;
}

async function render() {
  const resp = await fetch("/api/v1/openapi.json");
  if (!resp.ok) throw new Error(`openapi.json answered ${resp.status}`);
  const doc = await resp.json();
  main.replaceChildren(
    el("p", {}, doc.info.description),
    el("p", { class: "muted" }, `OpenAPI ${doc.openapi}, msgxc ${doc.info.version}. `,
      "Authenticated operations take a JWT as Authorization: Bearer."));
  const byTag = new Map();
  for (const [path, item] of Object.entries(doc.paths)) {
    for (const [method, op] of Object.entries(item)) {
      const tag = op.tags?.[0] || "other";
      if (!byTag.has(tag)) byTag.set(tag, []);
      byTag.get(tag).push(operation(path, method, op));
    }
  }
  for (const [tag, ops] of byTag) main.append(el("h2", { id: `tag-${tag}` }, tag), ...ops);
  main.append(el("h2", {}, "Schemas"));
  for (const [name, schema] of Object.entries(doc.components.schemas)) {
    main.append(el("details", { id: `schema-${name}` }, el("summary", { class: "path" }, name), schemaBlock(schema)));
  }
  document.body.dataset.ready = "true";
}

render().catch((e) => {
  main.replaceChildren(el("p", { class: "error" }, `Could not load the API document: ${e.message}`));
});
