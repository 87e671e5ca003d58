// Overview: the served model, engine health, live throughput and queue depth (from /metrics),
// requests by deployment version, and what is live under each deployment name.
import { api, parsePrometheus, total, unlessUnavailable } from "./api.js";
import { clear, h, lineChart, setSeries, showError, table, tile } from "./ui.js";

const POLL_MS = 2000;
const WINDOW = 60;  // points kept in the throughput chart (two minutes)

export async function render(main) {
  // The admin call comes first: a key that may not use the console sees nothing else.
  const deployments = await unlessUnavailable(api("/admin/v1/deployments"), { data: [] });
  const models = await api("/v1/models");
  const base = models.data.filter((m) => !m.parent);
  const tiles = h("div", { class: "tiles", id: "overview-tiles" });
  const canvas = h("canvas", { "data-chart": "throughput" });
  const versions = h("div", { id: "by-version" });
  const live = deployments.data.filter((d) => d.status === "live");
  clear(main,
    h("h1", { text: "Overview" }),
    tiles,
    h("section", { class: "panel" }, h("h2", { text: "Throughput" }),
      h("div", { class: "chart-box" }, canvas)),
    h("div", { class: "grid" },
      h("section", { class: "panel" }, h("h2", { text: "Requests by deployment version" }),
        versions),
      h("section", { class: "panel" }, h("h2", { text: "Live deployments" }),
        table(["name", "version", "checkpoint", "mode"], live.map((d) => [
          d.name, String(d.version), d.checkpoint, d.mode])))));
  const chart = lineChart(canvas, { xLabel: "seconds ago", yLabel: "per second" });
  const points = { "completion tokens/s": [], "requests/s": [] };
  let last = null;
  const started = Date.now();

  async function poll() {
    let health, samples;
    try {
      const res = await fetch("/health", { cache: "no-store", credentials: "omit" });
      health = res.ok ? await res.json() : { status: `not ready (${res.status})` };
      const text = await (await fetch("/metrics", { cache: "no-store", credentials: "omit" }))
        .text();
      samples = parsePrometheus(text);
    } catch (err) {
      showError(err);
      return;
    }
    const now = { t: (Date.now() - started) / 1000,
                  tokens: total(samples, "alignserve_completion_tokens_total"),
                  requests: total(samples, "alignserve_requests_total") };
    if (last) {
      const dt = Math.max(now.t - last.t, 1e-3);
      points["completion tokens/s"].push([now.t, (now.tokens - last.tokens) / dt]);
      points["requests/s"].push([now.t, (now.requests - last.requests) / dt]);
      for (const k of Object.keys(points)) points[k] = points[k].slice(-WINDOW);
      const rate = points["completion tokens/s"].at(-1)[1];
      setSeries(chart, Object.fromEntries(Object.entries(points).map(([k, v]) =>
        [k, v.map(([t, y]) => [t - now.t, y])])));
      tiles.dataset.tokensPerS = rate.toFixed(2);
    }
    last = now;
    clear(tiles,
      tile("Model", base.map((m) => m.id).join(", ") || "–"),
      tile("Engine", health.status, { "data-health": health.status }),
      tile("Running", String(total(samples, "alignserve_running_requests"))),
      tile("Queue depth", String(total(samples, "alignserve_queue_depth")), { id: "queue-depth" }),
      tile("Completion tokens/s",
           points["completion tokens/s"].length
             ? points["completion tokens/s"].at(-1)[1].toFixed(1) : "…"),
      tile("Requests (total)", String(total(samples, "alignserve_requests_total"))));
    const byVersion = samples.filter((s) => s.name === "alignserve_requests_by_version_total");
    clear(versions, table(["model", "version", "requests"],
      byVersion.map((s) => [s.labels.model, s.labels.version, String(s.value)])));
  }

  await poll();
  const timer = setInterval(poll, POLL_MS);
  return () => { clearInterval(timer); chart.destroy(); };
}
