// The API Access page. Every piece of server data reaches the DOM through
// textContent or setAttribute, never as HTML. A secret lives only in the open
// secret dialog and in one closure variable; both are cleared when it closes.

import { ApiError, all, call, clearToken, setToken, token, wsPath } from "./api.js";
import { deniedOf, sparkline, usageChart } from "./chart.js";

/** The cap the page shows when the workspace record sets none: keys.max_per_workspace's default. */
const DEFAULT_MAX_KEYS = 10;
const WS_RE = /^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$/;

const $ = (id) => document.getElementById(id);

const state = {
  ws: "",
  record: null,
  keys: [],
  tab: "keys",
  usageKey: null,
  auditCursor: "",
  loadSeq: 0,
  maxKeys: undefined, // the key cap the server reported with the key list
};

// ------------------------------------------------------------ small helpers

function h(tag, attrs, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "class") {
      e.className = v;
    } else if (k.startsWith("on")) {
      e.addEventListener(k.slice(2), v);
    } else {
      e.setAttribute(k, v);
    }
  }
  for (const c of children) {
    e.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return e;
}

function fmtTime(iso) {
  if (!iso) {
    return null;
  }
  const d = new Date(iso);
  return h("time", { datetime: iso }, d.toLocaleString(undefined, { dateStyle: "medium", timeStyle: "short" }));
}

/** Says msg to screen readers (the polite status region). */
function announce(msg) {
  const s = $("status");
  s.textContent = "";
  // A new text node in a later task is announced even when msg repeats.
  setTimeout(() => {
    s.textContent = msg;
  }, 50);
}

/** Shows (and announces) a page-level error; "" hides it. */
function showError(msg) {
  const e = $("error");
  e.textContent = msg;
  e.hidden = !msg;
}

/** Shows an error in a form's alert box and marks the offending field. */
function formError(box, msg, field) {
  box.textContent = msg;
  box.hidden = !msg;
  if (field) {
    field.setAttribute("aria-invalid", "true");
    field.focus();
  }
}

function clearFormErrors(form) {
  for (const f of form.querySelectorAll("[aria-invalid]")) {
    f.removeAttribute("aria-invalid");
  }
  for (const b of form.querySelectorAll("[role=alert]")) {
    b.textContent = "";
    b.hidden = true;
  }
}

/** A 401 after signing in means the token is no longer accepted: sign out, say why. */
function authLost(e) {
  if (e instanceof ApiError && e.status === 401) {
    signOut("Your admin token is no longer accepted (401). Sign in again.");
    return true;
  }
  return false;
}

function explain(e) {
  if (!(e instanceof ApiError)) {
    return "Something went wrong: " + String(e && e.message ? e.message : e);
  }
  switch (e.status) {
    case 403:
      return "This admin token is not allowed for workspace " + state.ws + " (403): " + e.message;
    case 409:
      return e.message + " (409)";
    case 0:
      return e.message;
    default:
      return e.message + " (" + e.status + ")";
  }
}

// ------------------------------------------------------------ dialogs

/**
 * Opens a modal dialog and remembers where focus was, to return it there when
 * the dialog closes (or to fallback when that element is gone or disabled).
 */
function openDialog(dlg, returnTo, first) {
  dlg.returnTo = returnTo || document.activeElement;
  dlg.showModal();
  if (first) {
    first.focus();
  }
}

function restoreFocus(dlg) {
  let back = dlg.returnTo;
  dlg.returnTo = null;
  if (back && !back.isConnected && back.dataset.action) {
    // The row was drawn again: return to the same button of the same key, if it is still listed.
    const row = back.closest("tr");
    const id = row && row.dataset.keyId;
    back = id ? document.querySelector(`tr[data-key-id="${CSS.escape(id)}"] [data-action="${back.dataset.action}"]`) : null;
  }
  if (back && back.isConnected && !back.disabled && !back.closest("[hidden]")) {
    back.focus();
  } else if (!$("workspace-view").hidden) {
    $(state.tab === "audit" ? "audit-h" : "keys-h").focus();
  } else {
    $("main").focus();
  }
}

for (const dlg of document.querySelectorAll("dialog")) {
  dlg.addEventListener("close", () => {
    if (dlg.handOff) {
      dlg.handOff = false; // focus goes on to the next dialog, which returns it later
      return;
    }
    restoreFocus(dlg);
  });
  for (const b of dlg.querySelectorAll("[data-close]")) {
    b.addEventListener("click", () => dlg.close());
  }
}

// ------------------------------------------------------------ secret, shown once

let secret = null; // the one copy the page holds, while the secret dialog is open

function showSecret(view, what, returnTo) {
  secret = view.key;
  const slot = $("secret-slot");
  slot.replaceChildren(
    h("p", { id: "secret-label", class: "muted" }, "API key"),
    h("output", { id: "secret-value", "aria-labelledby": "secret-label" }, secret),
  );
  $("secret-for").textContent = (what === "refreshed" ? "New secret of " : "Secret of ") + view.name + " (" + view.display + ").";
  $("copy-status").textContent = "";
  openDialog($("secret-dialog"), returnTo, $("secret-copy"));
}

/** Removes the secret from the DOM and from this page's memory; nothing stored it anywhere else. */
function forgetSecret() {
  secret = null;
  $("secret-slot").replaceChildren();
  $("secret-for").textContent = "";
  $("copy-status").textContent = "";
}

// Cleared before the dialog closes (Done, Escape), and on close whatever closed it.
$("secret-dialog").addEventListener("cancel", forgetSecret);
$("secret-dialog").addEventListener("close", forgetSecret);

$("secret-done").addEventListener("click", () => {
  forgetSecret();
  $("secret-dialog").close();
});

$("secret-copy").addEventListener("click", async () => {
  if (secret === null) {
    return;
  }
  let ok = false;
  try {
    await navigator.clipboard.writeText(secret);
    ok = true;
  } catch {
    // Fall back to copying the selected text of the shown secret.
    const out = $("secret-value");
    if (out) {
      const range = document.createRange();
      range.selectNodeContents(out);
      const sel = window.getSelection();
      sel.removeAllRanges();
      sel.addRange(range);
      ok = document.execCommand("copy");
      sel.removeAllRanges();
    }
  }
  $("copy-status").textContent = ok ? "Copied to the clipboard." : "Copying failed: select the key and copy it yourself.";
});

// ------------------------------------------------------------ views

const TOP = ["signin-view", "workspaces-view", "workspace-view"];

function showTop(id) {
  for (const v of TOP) {
    $(v).hidden = v !== id;
  }
  $("session").hidden = id === "signin-view";
}

function setTab(tab) {
  state.tab = tab;
  const current = tab === "usage" ? "keys" : tab; // a key's usage belongs to the keys view
  for (const b of document.querySelectorAll(".tabs button")) {
    if (b.dataset.view === current) {
      b.setAttribute("aria-current", "page");
    } else {
      b.removeAttribute("aria-current");
    }
  }
  $("keys-view").hidden = tab !== "keys";
  $("usage-view").hidden = tab !== "usage";
  $("audit-view").hidden = tab !== "audit";
}

// ------------------------------------------------------------ sign in / out

$("signin-form").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  const input = $("token");
  const err = $("signin-err");
  input.removeAttribute("aria-invalid");
  err.hidden = true;
  const t = input.value.trim();
  if (!t) {
    err.textContent = "Enter an admin token.";
    err.hidden = false;
    input.setAttribute("aria-invalid", "true");
    input.focus();
    return;
  }
  $("signin-submit").disabled = true;
  try {
    const list = await listWorkspaces(t);
    setToken(t);
    input.value = "";
    showError("");
    enterWorkspaces(list);
    announce("Signed in.");
  } catch (e) {
    err.textContent = e instanceof ApiError && e.status === 401
      ? "Sign-in failed: this admin token was not accepted (401 Unauthorized). Check that you pasted the whole token."
      : "Sign-in failed: " + explain(e);
    err.hidden = false;
    input.setAttribute("aria-invalid", "true");
    input.focus();
  } finally {
    $("signin-submit").disabled = false;
  }
});

/** GET /v1/workspaces with token t: the workspace records it may see. */
async function listWorkspaces(t) {
  try {
    return await all("/v1/workspaces", t);
  } catch (e) {
    // A server without workspace records answers 404 only after accepting the token.
    if (e instanceof ApiError && e.status === 404) {
      return [];
    }
    throw e;
  }
}

function signOut(why) {
  clearToken();
  state.ws = "";
  state.record = null;
  state.keys = [];
  state.usageKey = null;
  state.loadSeq++;
  for (const dlg of document.querySelectorAll("dialog")) {
    if (dlg.open) {
      dlg.handOff = true;
      dlg.close();
    }
  }
  $("keys-body").replaceChildren();
  $("audit-body").replaceChildren();
  $("usage-chart").replaceChildren();
  $("usage-body").replaceChildren();
  $("ws-list").replaceChildren();
  $("ws-options").replaceChildren();
  $("ws-input").value = "";
  $("session-ws").textContent = "";
  showTop("signin-view");
  showError(why || "");
  $("token").focus();
  announce(why ? "Signed out." : "Signed out. The admin token is forgotten.");
}

$("sign-out").addEventListener("click", () => signOut(""));

// ------------------------------------------------------------ workspaces

function enterWorkspaces(list) {
  const ul = $("ws-list");
  const opts = $("ws-options");
  ul.replaceChildren();
  opts.replaceChildren();
  for (const w of list) {
    opts.append(h("option", { value: w.id }));
    const bits = ["up to " + (w.max_keys || DEFAULT_MAX_KEYS) + " keys"];
    if (w.rate_limit) {
      bits.push("rate " + w.rate_limit);
    }
    if (w.disabled) {
      bits.push("disabled");
    }
    ul.append(h("li", {},
      h("button", { type: "button", class: "secondary", "data-ws": w.id, onclick: () => openWorkspace(w.id) }, w.id),
      h("p", { class: "hint" }, bits.join(" · "))));
  }
  $("ws-empty").hidden = list.length > 0;
  $("session-ws").textContent = "";
  showTop("workspaces-view");
  $("ws-input").focus();
}

$("ws-form").addEventListener("submit", (ev) => {
  ev.preventDefault();
  const input = $("ws-input");
  const ws = input.value.trim();
  input.removeAttribute("aria-invalid");
  $("ws-err").hidden = true;
  if (!WS_RE.test(ws)) {
    $("ws-err").textContent = "A workspace ID is 1-128 ASCII letters, digits, '.', '_' or '-', starting with a letter or digit.";
    $("ws-err").hidden = false;
    input.setAttribute("aria-invalid", "true");
    input.focus();
    return;
  }
  openWorkspace(ws);
});

$("back-to-workspaces").addEventListener("click", async () => {
  showError("");
  try {
    enterWorkspaces(await listWorkspaces(token()));
  } catch (e) {
    if (!authLost(e)) {
      showError(explain(e));
    }
  }
});

async function openWorkspace(ws) {
  const seq = ++state.loadSeq;
  showError("");
  const prevWs = state.ws;
  state.ws = ws;
  try {
    let record = null;
    try {
      record = await call("GET", wsPath(ws));
    } catch (e) {
      if (!(e instanceof ApiError && e.status === 404)) {
        throw e;
      }
    }
    const keys = await all(wsPath(ws, "api-keys"));
    if (seq !== state.loadSeq) {
      return;
    }
    state.record = record;
    state.keys = keys;
    state.maxKeys = keys.maxKeys;
  } catch (e) {
    state.ws = prevWs;
    if (authLost(e)) {
      return;
    }
    const msg = e instanceof ApiError && e.status === 403
      ? "This admin token is not allowed for workspace " + ws + " (403 Forbidden)."
      : "Could not open workspace " + ws + ": " + explain(e);
    $("ws-err").textContent = msg;
    $("ws-err").hidden = false;
    $("ws-input").setAttribute("aria-invalid", "true");
    return;
  }
  $("ws-name").textContent = ws;
  $("session-ws").textContent = "Workspace " + ws;
  showTop("workspace-view");
  setTab("keys");
  renderKeys();
  $("wsname-h").focus();
  announce("Opened workspace " + ws + ": " + countText() + ".");
}

// ------------------------------------------------------------ keys

// maxKeys is the workspace's key cap as the server reports it with the key
// list (record, then config, then default; 0 = unbounded).
function maxKeys() {
  if (typeof state.maxKeys === "number") {
    return state.maxKeys;
  }
  return (state.record && state.record.max_keys) || DEFAULT_MAX_KEYS;
}

function countText() {
  const max = maxKeys();
  return max > 0 ? state.keys.length + " of " + max + " keys" : state.keys.length + " keys";
}

function keyStatus(k) {
  const now = Date.now();
  if (k.disabled) {
    return ["Disabled", "status-disabled"];
  }
  if (state.record && state.record.disabled) {
    return ["Disabled (workspace)", "status-disabled"];
  }
  if (k.expires_at && Date.parse(k.expires_at) <= now) {
    return ["Expired", "status-expired"];
  }
  if (k.not_before && Date.parse(k.not_before) > now) {
    return ["Not yet valid", "status-pending"];
  }
  return ["Active", "status-active"];
}

async function reloadKeys() {
  const seq = ++state.loadSeq;
  try {
    const keys = await all(wsPath(state.ws, "api-keys"));
    if (seq !== state.loadSeq) {
      return;
    }
    state.keys = keys;
    state.maxKeys = keys.maxKeys;
    renderKeys();
  } catch (e) {
    if (!authLost(e)) {
      showError("Could not list the keys: " + explain(e));
    }
  }
}

function renderKeys() {
  const n = state.keys.length, max = maxKeys();
  $("key-count").textContent = countText();
  const atCap = max > 0 && n >= max;
  const create = $("create-open");
  create.disabled = atCap;
  const reason = $("cap-reason");
  reason.hidden = !atCap;
  reason.textContent = atCap
    ? "You can't create another key: this workspace holds " + n + " of its " + max + " keys. Delete a key first."
    : "";
  if (atCap) {
    create.setAttribute("aria-describedby", "cap-reason");
  } else {
    create.removeAttribute("aria-describedby");
  }
  $("keys-empty").hidden = n > 0;
  $("keys-table").hidden = n === 0;
  const body = $("keys-body");
  body.replaceChildren();
  for (const k of state.keys) {
    const [status, cls] = keyStatus(k);
    const spark = h("span", { class: "spark", "data-key": k.id }, h("span", { class: "spark-n" }, String(k.requests_30d ?? "…")));
    const row = h("tr", { "data-key-id": k.id },
      h("td", { "data-label": "Name", class: "name" }, k.name),
      h("td", { "data-label": "Key" }, h("code", { class: "display" }, k.display)),
      h("td", { "data-label": "Created" }, fmtTime(k.created_at)),
      h("td", { "data-label": "Last used" }, fmtTime(k.last_used_at) || "Never"),
      h("td", { "data-label": "Expires" }, fmtTime(k.expires_at) || "Never"),
      h("td", { "data-label": "Status" }, h("span", { class: cls + " status" }, status)),
      h("td", { "data-label": "Requests, 30 days" }, spark),
      h("td", { "data-label": "Actions" }, h("span", { class: "actions" },
        h("button", { type: "button", class: "secondary small", "data-action": "usage", "aria-label": "Usage of " + k.name, onclick: () => openUsage(k) }, "Usage"),
        h("button", { type: "button", class: "secondary small", "data-action": "refresh", "aria-label": "Refresh " + k.name, onclick: (ev) => openRefresh(k, ev.currentTarget) }, "Refresh"),
        h("button", { type: "button", class: "danger small", "data-action": "delete", "aria-label": "Delete " + k.name, onclick: (ev) => openDelete(k, ev.currentTarget) }, "Delete"))),
    );
    body.append(row);
  }
  loadSparklines(state.keys, state.ws);
}

/** Fills each row's 30-day sparkline from the usage API (granularity=day). */
async function loadSparklines(keys, ws) {
  await Promise.all(keys.map(async (k) => {
    let u;
    try {
      u = await call("GET", wsPath(ws, "api-keys", k.id, "usage") + "?granularity=day");
    } catch (e) {
      authLost(e);
      return; // the number from the list stays
    }
    const cell = document.querySelector(`.spark[data-key="${CSS.escape(k.id)}"]`);
    if (!cell || state.ws !== ws || !u || !Array.isArray(u.buckets)) {
      return;
    }
    const values = u.buckets.map((b) => (Number(b.allowed) || 0) + deniedOf(b));
    const total = k.requests_30d ?? values.reduce((a, b) => a + b, 0);
    cell.replaceChildren(
      sparkline(values, total + " requests in the last 30 days, by day"),
      h("span", { class: "spark-n", "aria-hidden": "true" }, String(total)));
  }));
}

// ------------------------------------------------------------ create

$("create-open").addEventListener("click", (ev) => {
  const form = $("create-form");
  form.reset();
  clearFormErrors(form);
  $("create-date-row").hidden = true;
  openDialog($("create-dialog"), ev.currentTarget, $("create-name"));
});

$("create-expiry").addEventListener("change", () => {
  $("create-date-row").hidden = $("create-expiry").value !== "date";
});

$("create-form").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  const form = $("create-form");
  const box = $("create-err");
  clearFormErrors(form);
  const name = $("create-name").value;
  if (!name.trim()) {
    formError(box, "Name: enter a name for the key, such as what it is for.", $("create-name"));
    return;
  }
  const body = { name };
  const exp = $("create-expiry").value;
  if (exp === "date") {
    const d = $("create-date").value;
    if (!d) {
      formError(box, "Expiry date: pick a date, or choose another expiry.", $("create-date"));
      return;
    }
    body.expires_at = new Date(d + "T23:59:59").toISOString();
  } else if (exp) {
    body.expires_in_seconds = Number(exp);
  }
  const rate = $("create-rate").value.trim();
  if (rate) {
    body.rate_limit = rate;
  }
  $("create-submit").disabled = true;
  let view;
  try {
    view = await call("POST", wsPath(state.ws, "api-keys"), body);
  } catch (e) {
    if (authLost(e)) {
      return;
    }
    const field = { name: "create-name", rate_limit: "create-rate", expires_at: "create-date", expires_in_seconds: "create-expiry" }[e.field];
    formError(box, "The key was not created: " + explain(e), field ? $(field) : null);
    return;
  } finally {
    $("create-submit").disabled = false;
  }
  const dlg = $("create-dialog");
  const back = dlg.returnTo;
  dlg.handOff = true;
  dlg.close();
  form.reset();
  showSecret(view, "created", back);
  announce("Created API key " + view.name + ".");
  reloadKeys();
});

// ------------------------------------------------------------ refresh

let refreshing = null;

function refreshText() {
  const g = Number($("refresh-grace").value);
  const opt = $("refresh-grace").selectedOptions[0];
  $("refresh-what").textContent = g === 0
    ? "The old secret stops working at once: anything still using it is denied as soon as you refresh."
    : "The old secret keeps working for " + opt.textContent.replace(/^After /, "") + ", then stops working.";
}

$("refresh-grace").addEventListener("change", refreshText);

function openRefresh(k, btn) {
  refreshing = k;
  const form = $("refresh-form");
  form.reset();
  clearFormErrors(form);
  $("refresh-name").textContent = k.name;
  refreshText();
  openDialog($("refresh-dialog"), btn, $("refresh-grace"));
}

$("refresh-form").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  const k = refreshing;
  if (!k) {
    return;
  }
  $("refresh-submit").disabled = true;
  let view;
  try {
    view = await call("POST", wsPath(state.ws, "api-keys", k.id, "refresh"), { grace_seconds: Number($("refresh-grace").value) });
  } catch (e) {
    if (!authLost(e)) {
      formError($("refresh-err"), "The key was not refreshed: " + explain(e));
    }
    return;
  } finally {
    $("refresh-submit").disabled = false;
  }
  refreshing = null;
  const dlg = $("refresh-dialog");
  const back = dlg.returnTo;
  dlg.handOff = true;
  dlg.close();
  showSecret(view, "refreshed", back);
  announce("Refreshed API key " + view.name + ".");
  reloadKeys();
});

// ------------------------------------------------------------ delete

let deleting = null;

function openDelete(k, btn) {
  deleting = k;
  clearFormErrors($("delete-form"));
  $("delete-name").textContent = k.name;
  openDialog($("delete-dialog"), btn);
}

$("delete-form").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  const k = deleting;
  if (!k) {
    return;
  }
  $("delete-submit").disabled = true;
  try {
    await call("DELETE", wsPath(state.ws, "api-keys", k.id));
  } catch (e) {
    if (!authLost(e)) {
      formError($("delete-err"), "The key was not deleted: " + explain(e));
    }
    return;
  } finally {
    $("delete-submit").disabled = false;
  }
  deleting = null;
  state.keys = state.keys.filter((x) => x.id !== k.id);
  renderKeys();
  $("delete-dialog").close(); // its button is gone: focus goes to the keys heading
  announce("Deleted API key " + k.name + ".");
  reloadKeys();
});

// ------------------------------------------------------------ usage

function openUsage(k) {
  state.usageKey = k;
  $("usage-name").textContent = k.name;
  $("usage-granularity").value = "hour";
  setTab("usage");
  $("usage-h").focus();
  loadUsage();
}

$("usage-granularity").addEventListener("change", loadUsage);

$("usage-back").addEventListener("click", () => {
  const id = state.usageKey && state.usageKey.id;
  setTab("keys");
  const btn = id && document.querySelector(`tr[data-key-id="${CSS.escape(id)}"] [data-action=usage]`);
  (btn || $("keys-h")).focus();
});

async function loadUsage() {
  const k = state.usageKey;
  if (!k) {
    return;
  }
  const g = $("usage-granularity").value;
  let u;
  try {
    u = await call("GET", wsPath(state.ws, "api-keys", k.id, "usage") + "?granularity=" + g);
  } catch (e) {
    if (!authLost(e)) {
      showError("Could not read the usage of " + k.name + ": " + explain(e));
    }
    return;
  }
  if (state.usageKey !== k || $("usage-granularity").value !== g) {
    return;
  }
  const buckets = u.buckets || [];
  const t = u.totals || { allowed: 0, denied: {} };
  const denied = deniedOf(t);
  const reasons = Object.entries(t.denied || {}).filter(([, n]) => n > 0).map(([r, n]) => r.replaceAll("_", " ") + " " + n);
  const period = g === "hour" ? "last 24 hours" : "last 30 days";
  $("usage-totals").textContent = "In the " + period + ": " + t.allowed + " allowed, " + denied + " denied" + (reasons.length ? " (" + reasons.join(", ") + ")" : "") + ".";
  $("usage-chart").replaceChildren(usageChart(buckets, g, "Requests of " + k.name + " in the " + period + ", by " + g + ": " + t.allowed + " allowed, " + denied + " denied"));
  const body = $("usage-body");
  body.replaceChildren();
  for (const b of buckets) {
    body.append(h("tr", {}, h("td", {}, fmtTime(b.start)), h("td", {}, String(b.allowed)), h("td", {}, String(deniedOf(b)))));
  }
}

// ------------------------------------------------------------ audit

for (const b of document.querySelectorAll(".tabs button")) {
  b.addEventListener("click", () => {
    showError("");
    setTab(b.dataset.view);
    if (b.dataset.view === "audit") {
      $("audit-body").replaceChildren();
      state.auditCursor = "";
      loadAudit();
      $("audit-h").focus();
    } else {
      reloadKeys();
      $("keys-h").focus();
    }
  });
}

const KINDS = {
  created: "Created",
  refreshed: "Refreshed",
  deleted: "Deleted",
  updated: "Updated",
  workspace_updated: "Workspace updated",
  denied_after_revoke: "Denied after revoke",
};

async function loadAudit() {
  const ws = state.ws;
  let page;
  try {
    page = await call("GET", wsPath(ws, "audit") + "?limit=100" + (state.auditCursor ? "&cursor=" + encodeURIComponent(state.auditCursor) : ""));
  } catch (e) {
    if (!authLost(e)) {
      showError("Could not read the audit trail: " + explain(e));
    }
    return;
  }
  if (state.ws !== ws) {
    return;
  }
  const body = $("audit-body");
  for (const ev of page.items || []) {
    body.append(h("tr", { "data-seq": String(ev.seq) },
      h("td", { "data-label": "When" }, fmtTime(ev.at)),
      h("td", { "data-label": "What" }, KINDS[ev.kind] || ev.kind),
      h("td", { "data-label": "Key" }, ev.key_id ? h("code", {}, ev.key_id) : "—"),
      h("td", { "data-label": "Who" }, ev.actor),
      h("td", { "data-label": "Detail" }, ev.detail || "")));
  }
  state.auditCursor = page.next_cursor || "";
  $("audit-more").hidden = !state.auditCursor;
  const n = body.children.length;
  $("audit-table").hidden = n === 0;
  $("audit-empty").hidden = n > 0;
}

$("audit-more").addEventListener("click", loadAudit);

// ------------------------------------------------------------ start

async function start() {
  if (!token()) {
    showTop("signin-view");
    return;
  }
  try {
    enterWorkspaces(await listWorkspaces(token()));
  } catch (e) {
    if (!authLost(e)) {
      showTop("signin-view");
      showError("Could not reach the admin API: " + explain(e));
    }
  }
}

start();
