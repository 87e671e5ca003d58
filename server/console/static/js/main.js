// The console's shell: sign-in, navigation (hash routes, so the page itself stays one static
// file) and the error banner. Each page module exports render(main, params) and may return a
// cleanup function that stops its polling and streams when the operator navigates away.
import { api, ApiError, session } from "./api.js";
import { clear, clearBanners, h, showError } from "./ui.js";
import * as overview from "./overview.js";
import * as datasets from "./datasets.js";
import * as jobs from "./jobs.js";
import * as deployments from "./deployments.js";
import * as evaluations from "./evaluations.js";
import * as playground from "./playground.js";

const PAGES = { overview, datasets, jobs, deployments, evaluations, playground };
const main = document.getElementById("main");
let cleanup = null;

function signIn(message) {
  document.getElementById("sign-out").hidden = true;
  const key = h("input", { type: "password", id: "admin-key", name: "admin-key",
                           autocomplete: "off", required: true });
  const form = h("form", { class: "stack", id: "signin-form" },
    h("label", {}, "Admin key", key),
    h("p", { class: "muted", text: "Kept in this tab's session storage only and sent as an " +
      "Authorization header; closing the tab forgets it." }),
    h("div", { class: "actions" }, h("button", { type: "submit", text: "Sign in" })));
  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    clearBanners();
    session.set(key.value.trim());
    try {
      await api("/admin/v1/jobs/schema");  // admin only: a user key is refused here (403)
    } catch (err) {
      session.clear();
      showError(err);
      return;
    }
    route();
  });
  clear(main, h("section", { class: "panel signin" }, h("h1", { text: "Sign in" }), form));
  if (message) showError(message);
  key.focus();
}

async function route() {
  if (cleanup) { cleanup(); cleanup = null; }
  clearBanners();
  if (!session.key()) { signIn(); return; }
  document.getElementById("sign-out").hidden = false;
  const [name, ...params] = (location.hash.replace(/^#\/?/, "") || "overview").split("/");
  const page = PAGES[name] || overview;
  for (const a of document.querySelectorAll("#nav a")) {
    a.classList.toggle("active", a.dataset.page === (PAGES[name] ? name : "overview"));
  }
  document.getElementById("nav").classList.remove("open");
  clear(main, h("p", { class: "muted", text: "Loading…" }));
  main.dataset.page = name;
  try {
    cleanup = (await page.render(main, params.map(decodeURIComponent))) || null;
  } catch (err) {
    // A refused key shows the refusal and nothing else: no half-rendered page.
    if (err instanceof ApiError && err.auth) clear(main, h("p", { class: "muted",
      text: "This key cannot use the console (an admin key is needed)." }));
    else clear(main);
    showError(err);
  }
}

document.getElementById("sign-out").addEventListener("click", () => {
  session.clear();
  location.hash = "#/overview";
  route();
});
document.getElementById("nav-toggle").addEventListener("click", (ev) => {
  const nav = document.getElementById("nav");
  nav.classList.toggle("open");
  ev.currentTarget.setAttribute("aria-expanded", String(nav.classList.contains("open")));
});
window.addEventListener("hashchange", route);
route();
