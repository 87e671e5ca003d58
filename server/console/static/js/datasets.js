// Datasets: upload JSONL (validated by the server; a refusal names the line and field, shown
// here next to that line of the file), and the stored datasets with their formats and counts.
import { api, ApiError } from "./api.js";
import { clear, h, notify, showError, table, when } from "./ui.js";

export async function render(main) {
  const [list, schema] = await Promise.all([api("/admin/v1/datasets"),
                                            api("/admin/v1/jobs/schema")]);
  const file = h("input", { type: "file", id: "dataset-file", accept: ".jsonl,.json,.txt",
                            required: true });
  const format = h("select", { id: "dataset-format" },
    h("option", { value: "", text: "detect from the first line" }),
    schema.dataset_formats.map((f) => h("option", { value: f, text: f })));
  const errors = h("div", { id: "upload-error" });
  const form = h("form", { class: "stack", id: "upload-form" },
    h("label", {}, "JSONL file", file),
    h("label", {}, "Format", format),
    h("div", { class: "actions" }, h("button", { type: "submit", text: "Upload" })),
    errors);
  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    clear(errors);
    if (!file.files.length) return;
    const body = new FormData();
    body.append("file", file.files[0]);
    if (format.value) body.append("format", format.value);
    try {
      const ds = await api("/admin/v1/datasets", { method: "POST", form: body });
      notify(`Uploaded ${ds.id}: ${ds.records} ${ds.format} records.`);
      await render(main);
    } catch (err) {
      if (!(err instanceof ApiError) || err.auth) { showError(err); return; }
      clear(errors, await explain(err, file.files[0]));
    }
  });

  const counts = {};
  for (const d of list.data) {
    counts[d.format] = counts[d.format] || { datasets: 0, records: 0 };
    counts[d.format].datasets += 1;
    counts[d.format].records += d.records;
  }
  clear(main,
    h("h1", { text: "Datasets" }),
    h("div", { class: "grid" },
      h("section", { class: "panel" }, h("h2", { text: "Upload" }), form,
        h("p", { class: "muted", text: "Formats by method: " + Object.entries(schema.formats)
          .map(([m, f]) => `${m}: ${f.join(" / ")}`).join("; ") })),
      h("section", { class: "panel" }, h("h2", { text: "By format" }),
        table(["format", "datasets", "records"], Object.entries(counts).map(([f, c]) =>
          [f, String(c.datasets), String(c.records)])))),
    h("section", { class: "panel" }, h("h2", { text: "All datasets" }),
      table(["id", "file", "format", "records", "bytes", "sha256", "created"],
        list.data.slice().reverse().map((d) => ({ attrs: { "data-dataset": d.id }, cells: [
          h("code", { text: d.id }), d.filename || "–", d.format, String(d.records),
          String(d.bytes), h("code", { text: d.sha256.slice(0, 12) }), when(d.created_at)] })),
        { id: "datasets-table" })));
}

// The validator's message ("line 3: field 'rejected': missing required field") and, when it
// names a line, that line of the operator's own file, read locally (it never left the browser
// again).
async function explain(err, upload) {
  const box = h("div", { class: "error-line", "data-error-status": String(err.status) },
    h("div", { class: "field-error", id: "upload-error-message",
               text: `${err.status}: ${err.message}` }));
  const m = /^line (\d+):/.exec(err.message);
  if (m && upload.size < 64 * 1024 * 1024) {
    const lines = (await upload.text()).split(/\r?\n/);
    const n = Number(m[1]);
    const text = lines[n - 1] ?? "";
    box.append(h("pre", { id: "upload-error-line" },
      h("span", { class: "lineno", text: `${n} | ` }),
      text.length > 400 ? `${text.slice(0, 400)}…` : text));
  }
  if (err.param) box.append(h("div", { class: "field-help", text: `field: ${err.param}` }));
  return box;
}
