// Jobs: the list (status, progress) with the submit form, and one job's page: stages, live
// events (the SSE stream, read with fetch), loss / reward / accuracy curves that grow while it
// trains, cancel, and deploy once it has a checkpoint.
import { api, readSSE } from "./api.js";
import { deployForm } from "./deployments.js";
import { jobForm } from "./jobform.js";
import { badge, clear, confirmAction, h, lineChart, notify, setSeries, showError, table,
         when } from "./ui.js";

const TERMINAL = new Set(["succeeded", "failed", "cancelled"]);
const POLL_MS = 2000;

export async function render(main, params) {
  return params[0] ? renderJob(main, params[0]) : renderList(main);
}

function progress(job) {
  return h("span", { class: "actions" },
    h("progress", { max: String(job.total_steps || 1), value: String(job.step || 0) }),
    `${job.step || 0}/${job.total_steps}`);
}

async function renderList(main) {
  const [jobs, schema, datasets] = await Promise.all([
    api("/admin/v1/jobs"), api("/admin/v1/jobs/schema"), api("/admin/v1/datasets")]);
  const list = h("div", { id: "jobs-list" });
  const form = jobForm(schema, datasets.data, (job) => { location.hash = `#/jobs/${job.id}`; });
  clear(main, h("h1", { text: "Jobs" }),
    h("section", { class: "panel" }, h("details", { open: !jobs.data.length },
      h("summary", { text: "New job" }), form)),
    h("section", { class: "panel" }, h("h2", { text: "All jobs" }), list));
  const draw = (data) => clear(list, table(
    ["id", "method", "status", "progress", "dataset", "created", "checkpoint"],
    data.map((j) => ({ attrs: { "data-job": j.id }, cells: [
      h("a", { href: `#/jobs/${j.id}`, text: j.id }), j.method, badge(j.status), progress(j),
      j.config.dataset, when(j.created_at), j.checkpoint_id || "–"] }))));
  draw(jobs.data);
  const timer = setInterval(async () => {
    try { draw((await api("/admin/v1/jobs")).data); } catch (err) { showError(err); }
  }, POLL_MS * 2);
  return () => clearInterval(timer);
}

// Metric rows -> the three charts' series. Keys vary by method: DPO logs rewards/*, AfD rm/*.
function curves(rows) {
  const pick = (test) => {
    const series = {};
    for (const row of rows) {
      for (const [k, v] of Object.entries(row)) {
        if (k !== "step" && test(k) && Number.isFinite(v)) (series[k] = series[k] || []).push([row.step, v]);
      }
    }
    return series;
  };
  return {
    loss: pick((k) => k === "loss" || k.startsWith("nll")),
    reward: pick((k) => (k.startsWith("rewards/") || k.startsWith("rm/reward")) && !k.includes("accuracy")),
    accuracy: pick((k) => k.includes("accuracy")),
  };
}

// "stage dpo: preparing" / "stage dpo: training 2 steps" events -> an ordered stage list.
function stages(events, job) {
  const found = new Map();
  for (const e of events) {
    const m = /^stage (\S+): (.*)$/.exec(e.message);
    if (m) found.set(m[1], m[2]);
  }
  const names = [...found.keys()];
  return names.map((name, i) => {
    const done = i < names.length - 1 || job.status === "succeeded";
    const state = done ? "done" : (TERMINAL.has(job.status) ? job.status : "running");
    return h("li", { "data-stage": name }, badge(state), ` ${name}: ${found.get(name)}`);
  });
}

async function renderJob(main, id) {
  let job = await api(`/admin/v1/jobs/${encodeURIComponent(id)}`);
  const abort = new AbortController();
  const events = [];
  const head = h("div", { id: "job-head" });
  const stageList = h("ol", { class: "plain stages", id: "job-stages" });
  const log = h("ol", { class: "events", id: "job-events" });
  const canvases = Object.fromEntries(["loss", "reward", "accuracy"].map((k) =>
    [k, h("canvas", { "data-chart": k })]));
  const boxes = Object.fromEntries(Object.entries(canvases).map(([k, c]) =>
    [k, h("section", { class: "panel", "data-curve": k }, h("h3", { text: k }),
      h("div", { class: "chart-box" }, c))]));
  const actions = h("div", { class: "actions", id: "job-actions" });
  const deployBox = h("div", { id: "job-deploy" });
  clear(main, h("p", {}, h("a", { href: "#/jobs", text: "← Jobs" })),
    h("h1", { text: `Job ${id}` }),
    h("section", { class: "panel" }, head, actions, deployBox),
    h("div", { class: "charts" }, Object.values(boxes)),
    h("div", { class: "grid" },
      h("section", { class: "panel" }, h("h2", { text: "Stages" }), stageList),
      h("section", { class: "panel" }, h("h2", { text: "Events" }), log)),
    h("section", { class: "panel" }, h("details", {}, h("summary", { text: "Resolved config" }),
      h("pre", { text: JSON.stringify(job.config, null, 2) }))));
  const charts = Object.fromEntries(Object.entries(canvases).map(([k, c]) =>
    [k, lineChart(c, { yLabel: k })]));

  function drawHead() {
    clear(head, h("div", { class: "tiles" },
      h("div", { class: "tile" }, h("div", { class: "label", text: "status" }),
        h("div", { class: "value", id: "job-status", "data-status": job.status }, badge(job.status))),
      h("div", { class: "tile" }, h("div", { class: "label", text: "progress" }),
        h("div", { class: "value" }, progress(job))),
      h("div", { class: "tile" }, h("div", { class: "label", text: "method" }),
        h("div", { class: "value", text: job.method })),
      h("div", { class: "tile" }, h("div", { class: "label", text: "checkpoint" }),
        h("div", { class: "value mono", id: "job-checkpoint", text: job.checkpoint_id || "–" }))),
      h("p", { class: "muted", text: `created ${when(job.created_at)} · started ` +
        `${when(job.started_at)} · finished ${when(job.finished_at)} · attempts ${job.attempts}` }),
      job.error ? h("p", { class: "field-error", id: "job-error", text: job.error }) : null,
      // Evaluation-gate results, when the job record carries them (a gated deploy).
      Object.entries(job).filter(([k, v]) => /gate|evaluation/i.test(k) && v).map(([k, v]) =>
        h("details", { open: true, "data-gate": k }, h("summary", { text: k }),
          h("pre", { text: JSON.stringify(v, null, 2) }))));
    clear(actions);
    if (!TERMINAL.has(job.status)) {
      actions.append(h("button", { class: "danger", id: "job-cancel",
        disabled: job.cancel_requested, text: job.cancel_requested ? "Cancelling…" : "Cancel",
        onclick: async () => {
          if (!await confirmAction(`Cancel job ${id}?`, "Cancel job")) return;
          try { job = await api(`/admin/v1/jobs/${id}/cancel`, { method: "POST" }); drawHead(); }
          catch (err) { showError(err); }
        } }));
    }
    if (job.checkpoint_id && !deployBox.childElementCount) {
      actions.append(h("button", { id: "job-deploy-open", text: "Deploy checkpoint…",
        onclick: () => clear(deployBox, deployForm(job.checkpoint_id, job.config?.deploy?.name,
          (r) => notify(`${r.label || r.name} is ${r.status}`))) }));
    }
  }

  async function refresh() {
    job = await api(`/admin/v1/jobs/${id}`);
    const rows = (await api(`/admin/v1/jobs/${id}/metrics`)).data;
    drawHead();
    const series = curves(rows);
    for (const [k, chart] of Object.entries(charts)) {
      boxes[k].classList.toggle("hidden", k !== "loss" && !Object.keys(series[k]).length);
      setSeries(chart, series[k]);
    }
    clear(stageList, stages(events, job));
  }

  async function follow() {
    // Reconnects after a dropped connection from the last event seen (the route's `after`).
    let after = 0;
    while (!abort.signal.aborted) {
      try {
        const res = await api(`/admin/v1/jobs/${id}/events?after=${after}`,
                              { raw: true, signal: abort.signal });
        let ended = false;
        await readSSE(res, (data) => {
          if (data === "[DONE]") { ended = true; return; }
          const e = JSON.parse(data);
          after = e.id;
          events.push(e);
          log.append(h("li", { class: e.level === "error" ? "field-error" : "" },
            h("span", { class: "muted", text: `${new Date(e.created_at * 1000).toLocaleTimeString()} ` }),
            e.message, e.data ? h("code", { text: ` ${JSON.stringify(e.data)}` }) : null));
          log.scrollTop = log.scrollHeight;
          clear(stageList, stages(events, job));
        });
        if (ended) return;
      } catch (err) {
        if (abort.signal.aborted) return;
        showError(err);
        if (err.auth) return;
      }
      await new Promise((r) => setTimeout(r, POLL_MS));
    }
  }

  await refresh();
  follow();
  const timer = setInterval(async () => {
    try {
      await refresh();
      if (TERMINAL.has(job.status)) clearInterval(timer);  // final numbers drawn: stop polling
    } catch (err) { showError(err); }
  }, POLL_MS);
  return () => {
    clearInterval(timer);
    abort.abort();
    Object.values(charts).forEach((c) => c.destroy());
  };
}
