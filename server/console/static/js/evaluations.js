// Evaluations: the runs `alignserve eval` wrote under $ALIGNSERVE_HOME/eval, each with the
// comparison table and the charts the command drew (fetched with the key, shown as blobs).
import { api } from "./api.js";
import { clear, h, showError, table } from "./ui.js";

export async function render(main, params) {
  return params[0] ? renderRun(main, params[0]) : renderList(main);
}

async function renderList(main) {
  const runs = await api("/admin/v1/evaluations");
  clear(main, h("h1", { text: "Evaluations" }),
    h("section", { class: "panel" },
      h("p", { class: "muted", text: "Runs of `alignserve eval` whose output folder is under " +
        "$ALIGNSERVE_HOME/eval (the default)." }),
      table(["run", "created", "configurations", "suites", "charts"],
        runs.data.map((r) => ({ attrs: { "data-run": r.id }, cells: [
          h("a", { href: `#/evaluations/${encodeURIComponent(r.id)}`, text: r.id }),
          r.created || "–", r.configs.join(", "),
          Object.entries(r.suites).map(([s, v]) => `${s} (${v.n})`).join(", "),
          String(r.charts.length)] })), { id: "evaluations-table" })));
}

async function renderRun(main, id) {
  const run = await api(`/admin/v1/evaluations/${encodeURIComponent(id)}`);
  const urls = [];
  const charts = h("div", { class: "charts", id: "eval-charts" });
  const report = run.report;
  clear(main, h("p", {}, h("a", { href: "#/evaluations", text: "← Evaluations" })),
    h("h1", { text: `Evaluation ${id}` }),
    h("p", { class: "muted", text: `created ${run.created || "–"} · ${run.elapsed_s ?? "–"} s` }),
    h("section", { class: "panel" }, h("h2", { text: "Results" }),
      run.table ? table(run.table.headers, run.table.rows, { id: "eval-table" })
        : h("p", { class: "muted", text: "no results.md in this run" })),
    h("section", { class: "panel" }, h("h2", { text: "Charts" }), charts),
    h("section", { class: "panel" }, h("h2", { text: "Suites and configurations" }),
      table(["suite", "prompts", "harmful", "description"],
        Object.entries(run.suites).map(([s, v]) => [s, String(v.n), v.harmful ? "yes" : "no",
                                                    v.description || ""])),
      table(["configuration", "model", "alignment"], (report.configs || []).map((c) => [
        c.name, c.model || "–", c.alignment ? JSON.stringify(c.alignment) : "–"])),
      report.notes && report.notes.length
        ? h("ul", {}, report.notes.map((n) => h("li", { text: n }))) : null,
      report.command ? h("pre", { text: report.command }) : null));
  for (const name of run.charts) {
    try {
      const res = await api(`/admin/v1/evaluations/${encodeURIComponent(id)}/charts/${name}`,
                            { raw: true });
      const url = URL.createObjectURL(await res.blob());
      urls.push(url);
      charts.append(h("figure", {}, h("img", { src: url, alt: name, class: "eval-chart" }),
        h("figcaption", { class: "muted", text: name })));
    } catch (err) {
      showError(err);
    }
  }
  return () => urls.forEach((u) => URL.revokeObjectURL(u));
}
