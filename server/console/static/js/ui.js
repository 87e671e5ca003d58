// DOM helpers. Text always goes in through textContent (never innerHTML): answers, file names
// and error messages are data, not markup. Styles are classes only (the CSP forbids inline ones).

export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k === "class") el.className = v;
    else if (k === "text") el.textContent = v;
    else if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
    else if (k === "value") el.value = v;
    else if (k === "checked") el.checked = !!v;
    else el.setAttribute(k, v === true ? "" : String(v));
  }
  append(el, children);
  return el;
}

function append(el, children) {
  for (const c of children.flat()) {
    if (c === undefined || c === null || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
}

export function clear(el, ...children) {
  el.replaceChildren();
  append(el, children);
  return el;
}

export function table(headers, rows, attrs = {}) {
  return h("div", { class: "table-wrap" },
    h("table", attrs,
      h("thead", {}, h("tr", {}, headers.map((x) => h("th", {}, x)))),
      h("tbody", {}, rows.length ? rows.map((r) => h("tr", r.attrs || {},
        (r.cells || r).map((c) => h("td", {}, c))))
        : h("tr", {}, h("td", { colspan: headers.length, class: "muted", text: "none yet" })))));
}

export function badge(status) {
  return h("span", { class: `badge ${status}`, "data-status": status, text: status });
}

export function tile(label, value, attrs = {}) {
  return h("div", { class: "tile", ...attrs },
    h("div", { class: "label", text: label }), h("div", { class: "value", text: value }));
}

export function when(ts) {
  if (ts === null || ts === undefined) return "–";
  return new Date(ts * 1000).toLocaleString();
}

export function num(x, digits = 4) {
  if (x === null || x === undefined || Number.isNaN(x)) return "–";
  return Number.isInteger(x) ? String(x) : Number(x).toPrecision(digits);
}

export function seconds(x) {
  return x === null || x === undefined ? "–" : `${Number(x).toFixed(2)} s`;
}

export function phases(p) {
  if (!p) return "–";
  return Object.entries(p).map(([k, v]) => `${k.replace(/_s$/, "")} ${seconds(v)}`).join(" · ");
}

const banner = (id) => document.getElementById(id);

export function showError(err) {
  const el = banner("error");
  const status = err && err.status ? `${err.status}: ` : "";
  el.textContent = status + (err && err.message ? err.message : String(err));
  el.dataset.status = err && err.status ? String(err.status) : "";
  el.hidden = false;
}

export function notify(message) {
  const el = banner("notice");
  el.textContent = message;
  el.hidden = false;
}

export function clearBanners() {
  for (const id of ["error", "notice"]) banner(id).hidden = true;
}

// A confirmation in the page's own <dialog> (resolves true on Confirm).
export function confirmAction(message, okLabel = "Confirm") {
  const dialog = banner("confirm");
  banner("confirm-text").textContent = message;
  banner("confirm-ok").textContent = okLabel;
  dialog.returnValue = "";
  dialog.showModal();
  return new Promise((resolve) => {
    dialog.addEventListener("close", () => resolve(dialog.returnValue === "ok"), { once: true });
  });
}

// A Chart.js line chart over steps; `series` maps a label to [[x, y], ...].
const COLORS = ["#2457c5", "#d9480f", "#16794a", "#7048e8", "#c2255c", "#868e96"];

export function lineChart(canvas, { yLabel = "", xLabel = "step" } = {}) {
  return new window.Chart(canvas, {
    type: "line",
    data: { datasets: [] },
    options: {
      animation: false, responsive: true, maintainAspectRatio: false, parsing: false,
      scales: { x: { type: "linear", title: { display: true, text: xLabel } },
                y: { title: { display: !!yLabel, text: yLabel } } },
      plugins: { legend: { labels: { boxWidth: 12 } } },
    },
  });
}

export function setSeries(chart, series) {
  const names = Object.keys(series);
  chart.data.datasets = names.map((name, i) => ({
    label: name, data: series[name].map(([x, y]) => ({ x, y })),
    borderColor: COLORS[i % COLORS.length], backgroundColor: COLORS[i % COLORS.length],
    pointRadius: 3, borderWidth: 2,
  }));
  chart.update();
  // For tests and screenshots: how many points the chart holds now.
  chart.canvas.dataset.points = String(Math.max(0, ...names.map((n) => series[n].length)));
}
