// Playground: one prompt, streamed side by side by the base model, by a deployment, and by the
// base with linear alignment (a preset or a principle, and alpha), through /v1/chat/completions
// with stream: true and the `alignment` extension, exactly what an API client would send.
import { api, readSSE } from "./api.js";
import { clear, h, showError } from "./ui.js";

export async function render(main) {
  const [presets, models] = await Promise.all([api("/admin/v1/presets"), api("/v1/models")]);
  const base = models.data.filter((m) => !m.parent);
  const deployed = models.data.filter((m) => m.parent);
  const prompt = h("textarea", { id: "pg-prompt", text: "Tell me about the ocean." });
  const maxTokens = h("input", { type: "number", id: "pg-max-tokens", min: "1", max: "1024",
                                 value: "48" });
  const temperature = h("input", { type: "number", id: "pg-temperature", min: "0", max: "2",
                                   step: "0.1", value: "0" });
  const baseModel = h("select", { id: "pg-base" },
    base.map((m) => h("option", { value: m.id, text: m.id })));
  const deployment = h("select", { id: "pg-deployment" },
    deployed.length ? deployed.map((m) => h("option", { value: m.id,
      text: `${m.id}${m.version ? ` (version ${m.version})` : ""}` }))
      : h("option", { value: "", text: "nothing deployed" }));
  const preset = h("select", { id: "pg-preset" },
    presets.data.filter((p) => !p.needs_preference).map((p) => h("option", {
      value: p.name, text: `${p.name}: ${p.description}` })),
    h("option", { value: "", text: "my own principle…" }));
  const principle = h("input", { type: "text", id: "pg-principle", class: "hidden",
                                 placeholder: "Answer like a pirate." });
  const alpha = h("input", { type: "range", id: "pg-alpha", min: "0", max: "10", step: "0.5",
                             value: "3" });
  const alphaOut = h("output", { id: "pg-alpha-value", text: "3" });
  alpha.addEventListener("input", () => { alphaOut.textContent = alpha.value; });
  preset.addEventListener("change", () => principle.classList.toggle("hidden", !!preset.value));
  const columns = {
    base: column("Base", baseModel), deployment: column("Deployment", deployment),
    aligned: column("Linear alignment", h("div", { class: "stack" }, preset, principle,
      h("label", {}, h("span", {}, "alpha ", alphaOut), alpha))),
  };
  const run = h("button", { type: "submit", id: "pg-run", text: "Run" });
  const form = h("form", { class: "stack", id: "pg-form" },
    h("label", {}, "Prompt", prompt),
    h("div", { class: "grid" }, h("label", {}, "max_tokens", maxTokens),
      h("label", {}, "temperature", temperature)),
    h("div", { class: "answers" }, Object.values(columns).map((c) => c.panel)),
    h("div", { class: "actions" }, run));
  let abort = new AbortController();
  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    abort.abort();
    abort = new AbortController();
    const common = { messages: [{ role: "user", content: prompt.value }],
                     max_tokens: Number(maxTokens.value), temperature: Number(temperature.value),
                     stream: true, stream_options: { include_usage: true } };
    const alignment = { alpha: Number(alpha.value),
                        ...(preset.value ? { preset: preset.value }
                                         : { principle: principle.value.trim() }) };
    run.disabled = true;
    await Promise.all([
      stream(columns.base, { ...common, model: baseModel.value }, abort.signal),
      deployment.value ? stream(columns.deployment, { ...common, model: deployment.value },
                                abort.signal)
                       : skip(columns.deployment, "Deploy a checkpoint to compare it here."),
      stream(columns.aligned, { ...common, model: baseModel.value, alignment }, abort.signal),
    ]);
    run.disabled = false;
  });
  clear(main, h("h1", { text: "Playground" }), h("section", { class: "panel" }, form));
  return () => abort.abort();
}

function column(title, control) {
  const out = h("pre", { class: "answer", "data-state": "idle" });
  const meta = h("div", { class: "field-help" });
  const key = title.toLowerCase().replace(/\s+/g, "-");
  const panel = h("div", { class: "stack", "data-column": key }, h("h3", { text: title }),
                  control, out, meta);
  return { panel, out, meta };
}

function skip(col, message) {
  col.out.dataset.state = "skipped";
  col.out.textContent = message;
  col.meta.textContent = "";
}

async function stream(col, body, signal) {
  col.out.textContent = "";
  col.meta.textContent = "";
  col.out.dataset.state = "streaming";
  const started = performance.now();
  try {
    const res = await api("/v1/chat/completions", { method: "POST", json: body, raw: true,
                                                    signal });
    const version = res.headers.get("X-Alignserve-Model-Version");
    let usage = null;
    await readSSE(res, (data) => {
      if (data === "[DONE]") return;
      const chunk = JSON.parse(data);
      if (chunk.error) throw new Error(chunk.error.message);
      for (const choice of chunk.choices || []) col.out.textContent += choice.delta?.content || "";
      if (chunk.usage) usage = chunk.usage;
    });
    const secs = (performance.now() - started) / 1000;
    col.meta.textContent = [version && `served by ${version}`,
      usage && `${usage.completion_tokens} tokens`, `${secs.toFixed(1)} s`]
      .filter(Boolean).join(" · ");
    col.out.dataset.state = "done";
  } catch (err) {
    if (err.name === "AbortError") return;
    col.out.dataset.state = "error";
    col.out.textContent = `${err.status ? `${err.status}: ` : ""}${err.message}`;
    if (err.auth) showError(err);
  }
}
