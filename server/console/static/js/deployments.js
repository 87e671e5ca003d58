// Checkpoints and deployments: checkpoint manifests (with evaluation-gate results where a
// checkpoint carries them), every version of every deployment with its swap phases and gate
// outcome, and deploy / roll back / remove, each behind a confirmation.
import { api, unlessUnavailable } from "./api.js";
import { badge, clear, confirmAction, h, notify, num, phases, seconds, showError, table,
         when } from "./ui.js";

// Deploy a checkpoint under a name (a new version of it); onDone gets the deployment record.
export function deployForm(checkpoint, defaultName, onDone) {
  const name = h("input", { type: "text", id: "deploy-name", required: true,
                            pattern: "[A-Za-z0-9._\\-]+", value: defaultName || "" });
  const mode = h("select", { id: "deploy-mode" },
    h("option", { value: "adapter", text: "adapter (LoRA next to the base)" }),
    h("option", { value: "full", text: "full (replace the weights)" }));
  const result = h("div", { id: "deploy-result" });
  const form = h("form", { class: "stack", id: "deploy-form" },
    h("p", {}, "Deploy ", h("code", { text: checkpoint })),
    h("label", {}, "Served name", name), h("label", {}, "Mode", mode),
    h("div", { class: "actions" }, h("button", { type: "submit", text: "Deploy…" })), result);
  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const body = { checkpoint, name: name.value.trim(), mode: mode.value };
    if (!await confirmAction(`Deploy ${checkpoint} as '${body.name}' (${body.mode})? ` +
                             "It becomes the live version of that name on every replica.",
                             "Deploy")) return;
    clear(result, h("p", { class: "muted", text: "Verifying, loading and smoke-testing…" }));
    try {
      const record = await api("/admin/v1/deployments", { method: "POST", json: body });
      clear(result, outcome(record));
      onDone(record);
    } catch (err) {
      clear(result);
      showError(err);
    }
  });
  return form;
}

function outcome(r) {
  return h("p", { class: r.status === "live" ? "" : "field-error", "data-outcome": r.status },
    badge(r.status), ` ${r.label || r.name}`,
    r.status === "live" ? ` live in ${seconds(r.swap_seconds)} (${phases(r.phases)})`
                        : `: ${r.reason || "refused"}`);
}

// Manifest entries that hold evaluation or gate results (their key names it).
function gateEntries(manifest) {
  return Object.entries(manifest || {}).filter(([k]) => /gate|eval/i.test(k));
}

function manifestView(m) {
  const gates = gateEntries(m.manifest);
  return h("div", { class: "stack", "data-manifest": m.id },
    gates.length ? h("div", {}, h("h3", { text: "Evaluation gate" }),
      gates.map(([k, v]) => h("div", {}, h("strong", { text: k }),
        h("pre", { text: JSON.stringify(v, null, 2) }))))
      : h("p", { class: "muted", text: "No evaluation-gate results in this manifest." }),
    h("details", {}, h("summary", { text: "manifest.json" }),
      h("pre", { text: JSON.stringify(m.manifest, null, 2) })));
}

async function act(message, label, call, rerender) {
  if (!await confirmAction(message, label)) return;
  try {
    const r = await call();
    notify(r.deleted ? `${r.name} removed` : `${r.label || r.name} is ${r.status}` +
      (r.swap_seconds ? ` (${seconds(r.swap_seconds)}: ${phases(r.phases)})` : ""));
  } catch (err) {
    showError(err);
  }
  await rerender();
}

export async function render(main) {
  const [deployments, checkpoints] = await Promise.all([
    unlessUnavailable(api("/admin/v1/deployments"), null), api("/admin/v1/checkpoints")]);
  const rerender = () => render(main).catch(showError);
  const byName = new Map();
  for (const d of deployments ? deployments.data : []) {
    if (!byName.has(d.name)) byName.set(d.name, []);
    byName.get(d.name).push(d);
  }
  const enc = encodeURIComponent;
  const names = [...byName.entries()].map(([name, versions]) => {
    const live = versions.find((v) => v.status === "live");
    return h("section", { class: "panel", "data-deployment": name },
      h("h2", {}, `${name} `, live ? badge("live") : badge("retired"),
        live ? h("span", { class: "muted", "data-live-version": String(live.version),
                           text: ` version ${live.version} · ${live.checkpoint} · ${live.mode}` })
             : h("span", { class: "muted", text: " nothing live" })),
      h("div", { class: "actions" },
        h("button", { class: "secondary", "data-action": "rollback", disabled: !live,
          text: "Roll back", onclick: () => act(
            `Roll '${name}' back to the version before ${live.version}?`, "Roll back",
            () => api(`/admin/v1/deployments/${enc(name)}/rollback`, { method: "POST" }),
            rerender) }),
        h("button", { class: "danger", "data-action": "remove", disabled: !live,
          text: "Remove", onclick: () => act(
            `Remove '${name}'? Requests for it fail until it is deployed again.`, "Remove",
            () => api(`/admin/v1/deployments/${enc(name)}`, { method: "DELETE" }), rerender) })),
      table(["version", "status", "checkpoint", "mode", "swap", "phases", "replicas", "created", ""],
        versions.slice().reverse().map((v) => ({ attrs: { "data-version": String(v.version) },
          cells: [String(v.version ?? "–"), badge(v.status), h("code", { text: v.checkpoint }),
            v.mode, seconds(v.swap_seconds), phases(v.phases),
            (v.replicas || []).map((r) => `${r.replica_id}: ${r.state}`).join(", ") || "–",
            when(v.created_at),
            v.status === "failed" ? h("span", { class: "field-error", text: v.reason || "" })
              : v.status === "retired" ? h("button", { class: "secondary", text: "Make live",
                "data-action": "make-live", onclick: () => act(
                  `Make version ${v.version} of '${name}' live again?`, "Make live",
                  () => api(`/admin/v1/deployments/${enc(name)}/rollback?version=${v.version}`,
                            { method: "POST" }), rerender) }) : ""] }))));
  });
  const detail = h("div", { id: "checkpoint-detail" });
  clear(main, h("h1", { text: "Checkpoints & deployments" }),
    h("h2", { text: "Deployments" }),
    names.length ? names : h("p", { class: "muted", text: deployments ? "Nothing deployed yet."
      : "This server's engine cannot deploy checkpoints." }),
    h("section", { class: "panel" }, h("h2", { text: "Checkpoints" }),
      table(["id", "job", "method", "format", "final loss", "created", ""],
        checkpoints.data.slice().reverse().map((c) => ({ attrs: { "data-checkpoint": c.id }, cells: [
          h("code", { text: c.id }), h("a", { href: `#/jobs/${c.job_id}`, text: c.job_id }),
          c.method, c.format || "–", num(c.final_metrics?.loss), when(c.created_at),
          h("span", { class: "actions" },
            h("button", { class: "secondary", text: "Manifest", onclick: async () => {
              try { clear(detail, manifestView(await api(
                `/admin/v1/checkpoints/${enc(c.id)}/manifest`))); }
              catch (err) { showError(err); }
            } }),
            h("button", { text: "Deploy…", "data-action": "deploy", onclick: () => clear(detail,
              deployForm(c.id, c.deploy?.name, () => setTimeout(rerender, 1500))) }))] })),
        { id: "checkpoints-table" }),
      detail));
}
