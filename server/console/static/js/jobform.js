// The submit form, built from the job spec's JSON Schema (GET /admin/v1/jobs/schema): one set
// of fields per method with its defaults, bounds and choices. Only values that differ from a
// default are sent, so the server's defaults (and its validation) stay the single source.
import { api, ApiError } from "./api.js";
import { clear, h, showError } from "./ui.js";

const SKIP = new Set(["method", "dataset"]);

function deref(schema, defs) {
  if (schema.$ref) return defs[schema.$ref.split("/").pop()];
  return schema;
}

// {schema, nullable}: `X | None` fields arrive as anyOf [X, {type: null}].
function unwrap(prop, defs) {
  if (prop.anyOf) {
    const real = prop.anyOf.filter((s) => s.type !== "null");
    if (real.length === 1) return { schema: { ...deref(real[0], defs), ...pick(prop) }, nullable: true };
  }
  return { schema: { ...deref(prop, defs), ...pick(prop) }, nullable: false };
}

const pick = (p) => Object.fromEntries(["default", "description", "title"]
  .filter((k) => k in p).map((k) => [k, p[k]]));

function input(path, s, required) {
  const attrs = { "data-path": path, name: path, id: `job-${path.replace(/\./g, "-")}` };
  let el;
  if (s.enum) {
    // No default (or a null one): an empty first choice, so leaving it alone sends nothing.
    const blank = s.default === undefined || s.default === null
      ? h("option", { value: "", text: "(default)" }) : null;
    el = h("select", attrs, blank, s.enum.map((v) => h("option", { value: v, text: v })));
    if (s.default !== undefined && s.default !== null) el.value = s.default;
    el.dataset.kind = "string";
  } else if (s.type === "boolean") {
    el = h("input", { ...attrs, type: "checkbox", checked: s.default === true });
    el.dataset.kind = "boolean";
  } else if (s.type === "integer" || s.type === "number") {
    const min = s.minimum ?? s.exclusiveMinimum, max = s.maximum ?? s.exclusiveMaximum;
    el = h("input", { ...attrs, type: "number", step: s.type === "integer" ? "1" : "any",
                      min, max, placeholder: s.default ?? "" });
    if (s.default !== undefined && s.default !== null) el.value = String(s.default);
    el.dataset.kind = s.type;
  } else if (s.type === "array") {
    el = h("input", { ...attrs, type: "text", placeholder: "comma-separated (default if empty)" });
    el.dataset.kind = "list";
  } else if (s.type === "object") {
    el = h("input", { ...attrs, type: "text", placeholder: '{"name": 1.0}' });
    el.dataset.kind = "json";
  } else {
    el = h("input", { ...attrs, type: "text", placeholder: s.default ?? "" });
    if (typeof s.default === "string") el.value = s.default;
    el.dataset.kind = "string";
  }
  if (s.default !== undefined) el.dataset.default = JSON.stringify(s.default);
  if (required) el.dataset.required = "1";
  return el;
}

function fields(model, defs, prefix) {
  const out = [];
  const required = new Set(model.required || []);
  for (const [name, prop] of Object.entries(model.properties || {})) {
    if (!prefix && SKIP.has(name)) continue;
    const path = prefix ? `${prefix}.${name}` : name;
    const { schema, nullable } = unwrap(prop, defs);
    if (schema.properties) {  // a nested spec: its own group
      const group = h("fieldset", { "data-group": path, "data-nullable": nullable ? "1" : null },
        h("legend", { text: nullable ? `${name} (optional)` : name }),
        fields(schema, defs, path));
      out.push(h("details", { open: name === "hyperparameters" || name === "deploy" },
        h("summary", { text: schema.description ? `${name}: ${schema.description}` : name }),
        group));
      continue;
    }
    const el = input(path, schema, required.has(name) && !nullable);
    const label = h("label",
      { class: el.type === "checkbox" ? "inline" : null, "data-field": path },
      el.type === "checkbox" ? [el, name] : [name, el]);
    if (schema.description) label.append(h("span", { class: "field-help",
                                                     text: schema.description }));
    out.push(label);
  }
  return out;
}

function value(el) {
  const kind = el.dataset.kind;
  if (kind === "boolean") return el.checked;
  const raw = el.value.trim();
  if (raw === "") return undefined;
  if (kind === "integer" || kind === "number") return Number(raw);
  if (kind === "list") return raw.split(",").map((x) => x.trim()).filter(Boolean);
  if (kind === "json") return JSON.parse(raw);
  return raw;
}

function setPath(obj, path, v) {
  const parts = path.split(".");
  let at = obj;
  for (const p of parts.slice(0, -1)) at = at[p] = at[p] || {};
  at[parts.at(-1)] = v;
}

// The body: method, dataset, and every field whose value is not its default.
export function collect(form) {
  const body = { method: form.querySelector("#job-method").value,
                 dataset: form.querySelector("#job-dataset").value };
  for (const el of form.querySelectorAll("[data-path]")) {
    if (el.id === "job-method" || el.id === "job-dataset") continue;
    const v = value(el);
    const dflt = el.dataset.default === undefined ? undefined : JSON.parse(el.dataset.default);
    if (v === undefined || JSON.stringify(v) === JSON.stringify(dflt)) continue;
    setPath(body, el.dataset.path, v);
  }
  return body;
}

function markInvalid(form, err) {
  for (const old of form.querySelectorAll(".field-error")) old.remove();
  for (const old of form.querySelectorAll(".invalid")) old.classList.remove("invalid");
  const target = err.param && form.querySelector(`[data-path="${CSS.escape(err.param)}"]`);
  const note = h("div", { class: "field-error", id: "job-form-error", text: err.message });
  if (target) {
    target.classList.add("invalid");
    const details = target.closest("details");
    if (details) details.open = true;
    target.closest("label").append(note);
    target.focus();
  } else {
    form.querySelector(".actions").before(note);
  }
}

export function jobForm(schema, datasets, onCreated) {
  const defs = schema.schema.$defs;
  const mapping = schema.schema.discriminator.mapping;
  const method = h("select", { id: "job-method", "data-path": "method" },
    schema.methods.map((m) => h("option", { value: m, text: m })));
  const dataset = h("select", { id: "job-dataset", "data-path": "dataset", required: true });
  const body = h("div", { class: "stack" });
  const form = h("form", { class: "stack", id: "job-form", novalidate: true },
    h("div", { class: "grid" }, h("label", {}, "method", method),
      h("label", { "data-field": "dataset" }, "dataset", dataset)),
    body,
    h("div", { class: "actions" }, h("button", { type: "submit", text: "Start job" })));

  function rebuild() {
    const formats = schema.formats[method.value];
    const usable = datasets.filter((d) => formats.includes(d.format)).reverse();
    clear(dataset, usable.length
      ? usable.map((d) => h("option", { value: d.id,
          text: `${d.id} · ${d.filename || d.format} · ${d.records} records` }))
      : h("option", { value: "", text: `no ${formats.join("/")} dataset yet` }));
    clear(body, fields(defs[mapping[method.value].split("/").pop()], defs, ""));
  }
  method.addEventListener("change", rebuild);
  rebuild();

  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    let payload;
    try {
      payload = collect(form);
    } catch (err) {  // a JSON field that does not parse
      markInvalid(form, { message: `not valid JSON: ${err.message}` });
      return;
    }
    try {
      const job = await api("/admin/v1/jobs", { method: "POST", json: payload });
      onCreated(job);
    } catch (err) {
      if (err instanceof ApiError && !err.auth && err.status === 400) markInvalid(form, err);
      else showError(err);
    }
  });
  return form;
}
