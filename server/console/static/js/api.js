// Calls to the service. The admin key lives in sessionStorage only (gone when the tab closes),
// travels as an Authorization header, never in a URL or a cookie; `credentials: "omit"` keeps
// every cookie out of the console's requests too.
const KEY = "alignserve.console.key";

export const session = {
  key() { return sessionStorage.getItem(KEY); },
  set(key) { sessionStorage.setItem(KEY, key); },
  clear() { sessionStorage.removeItem(KEY); },
};

export class ApiError extends Error {
  constructor(status, message, param = null, code = null) {
    super(message);
    this.status = status;
    this.param = param;
    this.code = code;
  }
  get auth() { return this.status === 401 || this.status === 403; }
}

async function toError(res) {
  let message = res.statusText || "request failed";
  let param = null, code = null;
  try {
    const body = await res.json();
    if (body && body.error) ({ message, param, code } = body.error);
  } catch { /* not JSON: keep the status text */ }
  return new ApiError(res.status, message, param, code);
}

// fetch with the key; resolves to the parsed JSON (or the Response with raw: true).
export async function api(path, { method = "GET", json, form, signal, raw = false,
                                  auth = true, headers = {} } = {}) {
  const init = { method, signal, cache: "no-store", credentials: "omit", headers: { ...headers } };
  if (auth) {
    const key = session.key();
    if (key) init.headers.Authorization = `Bearer ${key}`;
  }
  if (json !== undefined) {
    init.headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(json);
  } else if (form !== undefined) {
    init.body = form;
  }
  let res;
  try {
    res = await fetch(path, init);
  } catch (err) {
    if (err.name === "AbortError") throw err;
    throw new ApiError(0, `the server did not answer (${err.message})`);
  }
  if (!res.ok) throw await toError(res);
  return raw ? res : res.json();
}

// Server-sent events over a fetch body: EventSource cannot send an Authorization header.
// Calls onEvent(data, id) for each event; resolves when the stream ends.
export async function readSSE(res, onEvent) {
  const reader = res.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buffer += decoder.decode(value, { stream: true });
    let cut;
    while ((cut = buffer.search(/\r?\n\r?\n/)) >= 0) {
      const block = buffer.slice(0, cut);
      buffer = buffer.slice(cut).replace(/^\r?\n\r?\n/, "");
      let data = [], id = null;
      for (const line of block.split(/\r?\n/)) {
        if (line.startsWith("data:")) data.push(line.slice(5).replace(/^ /, ""));
        else if (line.startsWith("id:")) id = line.slice(3).trim();
      }
      if (data.length) onEvent(data.join("\n"), id);
    }
  }
}

// Prometheus text format -> [{name, labels, value}] (comments and HELP/TYPE lines skipped).
export function parsePrometheus(text) {
  const samples = [];
  const line = /^([a-zA-Z_:][\w:]*)(?:\{(.*)\})?\s+(\S+)/;
  const label = /(\w+)="((?:[^"\\]|\\.)*)"/g;
  for (const row of text.split("\n")) {
    if (!row || row.startsWith("#")) continue;
    const m = line.exec(row);
    if (!m) continue;
    const labels = {};
    for (const l of (m[2] || "").matchAll(label)) labels[l[1]] = l[2].replace(/\\(.)/g, "$1");
    samples.push({ name: m[1], labels, value: Number(m[3]) });
  }
  return samples;
}

// The sum of a metric's samples (optionally those matching a label filter).
export function total(samples, name, filter = () => true) {
  return samples.filter((s) => s.name === name && filter(s.labels))
    .reduce((acc, s) => acc + s.value, 0);
}

// For features a server may not have (deployments on an engine that cannot deploy): a 503
// resolves to `fallback`; every other error, a refused key above all, still throws.
export async function unlessUnavailable(promise, fallback) {
  try {
    return await promise;
  } catch (err) {
    if (err instanceof ApiError && err.status === 503) return fallback;
    throw err;
  }
}
