// piston-inspector console: plain JavaScript over the service's own HTTP API, no libraries.
// Every piece of data reaches the page through textContent (never innerHTML), so object
// keys, reasons and labels cannot inject markup.
"use strict";

const TOKEN_KEY = "piston-admin-token";
const state = { view: null, production: null, models: [], info: null, jobTimer: null,
  review: { job: null, items: [], classes: [], current: 0, urls: [] } };

// ---------------------------------------------------------------------------------- helpers
function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k === "class") el.className = v;
    else if (k === "style") Object.assign(el.style, v);
    else if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
    else el.setAttribute(k, v === true ? "" : v);
  }
  for (const c of children.flat(Infinity)) {
    if (c === null || c === undefined || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return el;
}
const $ = (id) => document.getElementById(id);
const pct = (x) => (x === null || x === undefined ? "–" : `${(100 * x).toFixed(1)}%`);
const num = (x, d = 3) => (x === null || x === undefined ? "–" : Number(x).toFixed(d));
const when = (iso) => (iso ? new Date(iso).toLocaleString(undefined,
  { dateStyle: "medium", timeStyle: "short" }) : "–");

function toast(message, isError = false) {
  const el = $("toast");
  el.textContent = message;
  el.className = isError ? "toast error" : "toast";
  el.hidden = false;
  clearTimeout(toast.timer);
  toast.timer = setTimeout(() => { el.hidden = true; }, isError ? 9000 : 4000);
}

const token = () => sessionStorage.getItem(TOKEN_KEY) || "";

class ApiError extends Error {
  constructor(status, kind, message) { super(message); this.status = status; this.kind = kind; }
}

// One call to the service: JSON in and out, the token when asked, the API's own message on failure.
async function api(path, { method = "GET", body, admin = false, raw = false } = {}) {
  const headers = {};
  if (admin) {
    if (!token()) throw new ApiError(0, "no_token", "Set the admin token first (top right).");
    headers.Authorization = `Bearer ${token()}`;
  }
  let payload = body;  // FormData: the browser writes the multipart header itself
  if (body !== undefined && !(body instanceof FormData)) {
    headers["Content-Type"] = "application/json";
    payload = JSON.stringify(body);
  }
  let response;
  try {
    response = await fetch(path, { method, headers, body: payload });
  } catch (err) {
    throw new ApiError(0, "network", `The service did not answer (${err.message}).`);
  }
  if (!response.ok) {
    let detail = { error: `${response.status} ${response.statusText}` };
    try { detail = await response.json(); } catch (_) { /* not JSON: keep the status line */ }
    let message = detail.error || detail.detail || JSON.stringify(detail);
    if (response.status === 401) message = `The admin token was refused: ${message}`;
    throw new ApiError(response.status, detail.kind || "", message);
  }
  if (raw) return response;
  return response.status === 204 ? null : response.json();
}

// ------------------------------------------------------------------------------ token + nav
function showTokenState() {
  const set = Boolean(token());
  $("token-button").textContent = set ? "Admin token: set" : "Admin token: not set";
  $("token-button").classList.toggle("set", set);
  document.querySelectorAll(".needs-token").forEach((el) => { el.hidden = set; });
}

function setupToken() {
  $("token-button").addEventListener("click", () => {
    $("token-input").value = "";
    $("token-dialog").showModal();
    $("token-input").focus();
  });
  $("token-dialog").addEventListener("close", () => {
    const choice = $("token-dialog").returnValue;
    if (choice === "save" && $("token-input").value.trim()) {
      sessionStorage.setItem(TOKEN_KEY, $("token-input").value.trim());
    } else if (choice === "clear") {
      sessionStorage.removeItem(TOKEN_KEY);
    }
    showTokenState();
    show(state.view || "models", true);
  });
}

function show(view, force = false) {
  if (!["models", "try", "jobs", "review", "monitor"].includes(view)) view = "models";
  if (view === state.view && !force) return;
  state.view = view;
  document.querySelectorAll(".view").forEach((el) => { el.hidden = el.id !== `view-${view}`; });
  document.querySelectorAll("#tabs a").forEach((a) => a.classList.toggle("active", a.dataset.view === view));
  clearInterval(state.jobTimer);
  if (view === "models") loadModels();
  if (view === "jobs") { loadJobs(); state.jobTimer = setInterval(loadJobs, 2000); }
  if (view === "review") loadReviewJobs();
  if (view === "monitor") { loadMonitor(); state.jobTimer = setInterval(loadMonitor, 3000); }  // live.js
}

function route() {
  const [view, query] = location.hash.replace(/^#/, "").split("?");
  if (view === "review" && query) {
    const job = new URLSearchParams(query).get("job");
    if (job) state.review.wanted = job;
  }
  show(view || "models", true);
}

async function loadServing() {
  try {
    state.info = await api("/model");
    $("serving").replaceChildren("serving: ", h("b", {}, state.info.version || "nothing yet"),
      state.info.drifting ? h("a", { class: "pill bad", href: "#monitor", id: "serving-drift" }, "drifting") : "");
  } catch (err) {
    $("serving").textContent = `serving: ${err.message}`;
  }
}

// ----------------------------------------------------------------------------------- models
// /admin/models answers a list of bundles (or {bundles: [...]}); fields are read defensively
// so the page shows what the service knows.
function bundleList(data) {
  const list = Array.isArray(data) ? data : (data.bundles || data.models || []);
  return list.slice().sort((a, b) => String(b.created_at || b.version)
    .localeCompare(String(a.created_at || a.version)));
}

function metric(b, name) {
  if (b[name] !== undefined) return b[name];
  if (name === "accuracy" && b.test_accuracy !== undefined) return b.test_accuracy;
  return b.metrics ? b.metrics[name] : undefined;
}

function recalls(b) {
  if (b.recall && Object.keys(b.recall).length) return b.recall;
  const perClass = b.per_class || (b.metrics && b.metrics.per_class);
  if (perClass) return Object.fromEntries(Object.entries(perClass).map(([c, m]) => [c, m.recall]));
  const out = {};
  for (const g of b.gates || []) {
    const m = /^recall\[(.+)\]$/.exec(g.name);
    if (m) out[m[1]] = g.value;
  }
  return out;
}

function inputSize(b) {  // [width, height], from the console's bundle details
  return Array.isArray(b.input_size) ? `input ${b.input_size[0]}×${b.input_size[1]} px` : "";
}

function gatesCell(b) {
  const gates = b.gates || [];
  const passed = b.gates_passed !== undefined ? b.gates_passed : gates.every((g) => g.passed);
  const failed = gates.filter((g) => !g.passed).length;
  const label = passed ? "pass" : (gates.length ? `fail (${failed})` : "fail");
  if (!gates.length) return h("span", { class: `pill ${passed ? "ok" : "bad"}` }, label);
  return h("details", { class: "gates" },
    h("summary", {}, h("span", { class: `pill ${passed ? "ok" : "bad"}` }, label)),
    h("ul", {}, gates.map((g) => h("li", { class: g.passed ? "pass" : "fail" },
      `${g.passed ? "✓" : "✗"} ${g.name} ${num(g.value)} (bar ${g.threshold})`))));
}

function reviewLine(b) {  // the test split's review band, beside accuracy
  if (b.review_share === undefined || b.review_share === null) return null;
  return h("div", { class: "muted small", title: "test split: share sent to review, accuracy"
    + " of the accepted ones, expected calibration error" },
  `review ${pct(b.review_share)} · accepted ${pct(b.accepted_accuracy)} · ECE ${num(b.ece, 3)}`);
}

function modelRow(b) {
  const isProd = b.version === state.production;
  const rec = recalls(b);
  const actions = h("div", { class: "row-actions" },
    h("button", { class: "ghost small", type: "button", onclick: () => openReport(b.version) }, "Report"),
    isProd
      ? h("button", { class: "danger small", type: "button", "data-action": "rollback",
        onclick: () => askMove("rollback", b) }, "Roll back")
      : [h("button", { class: "small", type: "button", "data-action": "promote",
        onclick: () => askMove("promote", b) }, "Promote"),
      h("button", { class: "ghost small", type: "button", "data-action": "shadow",
        onclick: () => askShadow(b) }, "Shadow")]);  // live.js
  return h("tr", { class: isProd ? "production" : "", "data-version": b.version },
    h("td", {}, h("div", { class: "version" }, b.version),
      isProd ? h("span", { class: "pill prod" }, "production") : null),
    h("td", { class: "num nowrap" }, when(b.created_at)),
    h("td", { class: "nowrap" }, b.arch || "", h("div", { class: "muted small" }, inputSize(b))),
    h("td", {}, gatesCell(b)),
    h("td", { class: "num" }, pct(metric(b, "accuracy")), reviewLine(b)),
    h("td", { class: "num" }, num(metric(b, "macro_f1"))),
    h("td", {}, h("div", { class: "recall" }, Object.entries(rec).map(([c, r]) => [
      h("span", {}, c), h("span", { class: "meter" }, h("i", { style: { width: `${100 * (r || 0)}%` } })),
      h("span", { class: "num" }, num(r, 2))]))),
    h("td", { class: "fingerprint", title: b.data_fingerprint || "" },
      (b.data_fingerprint || "–").slice(0, 12)),
    h("td", {}, actions));
}

function historyItem(m) {
  return h("li", { class: m.action },
    h("div", {}, h("b", {}, m.action === "rollback" ? "Rolled back" : "Promoted"), " to ",
      h("span", { class: "version" }, m.version), m.previous ? ` from ${m.previous}` : "",
      m.forced ? " " : "", m.forced ? h("span", { class: "pill warn" }, "forced") : null),
    h("div", { class: "when" }, `${when(m.at)} · by ${m.by}`),
    h("div", { class: "why" }, m.reason));
}

async function loadModels() {
  if (!token()) { $("models-table").tBodies[0].replaceChildren(); $("history").replaceChildren(); return; }
  try {
    const [models, history, extra] = await Promise.all([api("/admin/models", { admin: true }),
      api("/admin/history", { admin: true }), api("api/models", { admin: true })]);
    const moves = Array.isArray(history) ? history : (history.moves || history.history || []);
    state.models = bundleList(models).map((b) => ({ ...(extra.bundles[b.version] || {}), ...b }));
    const marked = state.models.find((b) => b.production);
    state.production = (models && models.production) || (marked && marked.version)
      || (moves.length ? moves[moves.length - 1].version : null);
    state.lastMove = moves.length ? moves[moves.length - 1] : null;
    $("models-table").tBodies[0].replaceChildren(...(state.models.length
      ? state.models.map(modelRow)
      : [h("tr", {}, h("td", { colspan: 9, class: "muted" }, "No bundle in the registry yet."))]));
    $("history").replaceChildren(...(moves.length ? moves.slice().reverse().map(historyItem)
      : [h("li", { class: "muted" }, "Nothing has been in production yet.")]));
  } catch (err) {
    toast(err.message, true);
  }
}

function askMove(action, bundle) {
  const dialog = $("move-dialog");
  const previous = (state.lastMove && state.lastMove.previous) || "the version before it";
  $("move-title").textContent = action === "promote"
    ? `Promote ${bundle.version} to production` : `Roll back production (${bundle.version})`;
  $("move-detail").textContent = action === "promote"
    ? `Production is ${state.production || "empty"} now; the service swaps within seconds.`
    : `Production goes back to ${previous}.`;
  const failed = bundle.gates_passed === false;
  $("move-force-row").hidden = !(action === "promote" && failed);
  $("move-force").checked = false;
  $("move-reason").value = "";
  dialog.dataset.action = action;
  dialog.dataset.version = bundle.version;
  dialog.showModal();
  $("move-reason").focus();
}

async function doMove(action, version, reason, force) {
  const expected = state.production || "none";  // "none": nothing in production yet
  const body = action === "promote" ? { version, reason, force, expected } : { reason, expected };
  try {
    const answer = await api(`/admin/${action}`, { method: "POST", body, admin: true });
    const to = (answer.move && answer.move.version) || version;
    toast(`${action === "promote" ? "Promoted" : "Rolled back"}: production is ${to} now.`
      + (answer.shadow ? ` Its shadow: ${answer.shadow}.` : ""));
  } catch (err) {
    if (err.kind === "stale") {
      toast(`Refused: production moved since this page loaded (${err.message}). `
        + "The table is refreshed: check it and try again.", true);
    } else {
      toast(err.message, true);
    }
  }
  await loadModels();
  loadServing();
}

function setupMoves() {
  const dialog = $("move-dialog");
  dialog.addEventListener("close", () => {
    if (dialog.returnValue !== "go") return;
    const reason = $("move-reason").value.trim();
    if (!reason) { toast("A move needs a reason.", true); return; }
    doMove(dialog.dataset.action, dialog.dataset.version, reason, $("move-force").checked);
  });
}

async function openReport(version) {
  try {
    const response = await api(`api/models/${encodeURIComponent(version)}/report`,
      { admin: true, raw: true });
    const html = await response.text();
    // Shown only in the sandboxed frame: a blob: tab would run it with the console's origin.
    $("report-title").textContent = `Evaluation report · ${version}`;
    $("report-frame").srcdoc = html;
    $("report-dialog").showModal();
  } catch (err) {
    toast(err.message, true);
  }
}

// ----------------------------------------------------------------------------------- try it
// The review threshold an answer labelled `label` by `version` was held to: its class's own
// where the bundle has one, else the global one.
async function threshold(version, label) {
  if (!state.info || state.info.version !== version) await loadServing();
  if (!state.info || state.info.version !== version) return null;
  const own = state.info.class_thresholds && state.info.class_thresholds[label];
  return own === undefined || own === null ? state.info.threshold : own;
}

// A heatmap laid over the image in `stage` (a .stage holding it): the PNG stretched to the
// image, the box in percent of the original pixels; shown while an ancestor has .heat-on.
function layHeat(stage, explanation) {
  stage.querySelectorAll(".heat, .heat-box").forEach((e) => e.remove());
  if (!explanation) return;
  const b = explanation.box, w = explanation.image_width, ht = explanation.image_height;
  stage.append(
    h("img", { class: "heat", alt: `heatmap of ${explanation.label}`,
      src: `data:image/png;base64,${explanation.heatmap_png}` }),
    h("span", { class: "heat-box", title: `hottest region for ${explanation.label}`, style: {
      left: `${100 * b.x0 / w}%`, top: `${100 * b.y0 / ht}%`,
      width: `${100 * (b.x1 - b.x0) / w}%`, height: `${100 * (b.y1 - b.y0) / ht}%` } }));
}

async function classify(file) {
  $("try-stage").hidden = true;
  layHeat($("try-stage"), null);
  if (file.type.startsWith("image/")) {
    URL.revokeObjectURL($("try-preview").src);
    $("try-preview").src = URL.createObjectURL(file);
    $("try-stage").hidden = false;
  }
  $("drop-hint").textContent = file.name;
  $("try-result").hidden = true;
  $("try-error").hidden = true;
  try {
    const form = new FormData();
    form.append("image", file, file.name);  // multipart, so any file reaches the decoder
    form.append("explain", "true");  // one image, for a person: always with its heatmap
    const r = await api("/classify", { method: "POST", body: form });
    layHeat($("try-stage"), r.explanation);
    const b = r.explanation && r.explanation.box;
    $("try-box-text").textContent = b ? `x ${b.x0}–${b.x1}, y ${b.y0}–${b.y1} px`
      + ` of ${r.explanation.image_width}×${r.explanation.image_height}` : "–";
    const limit = await threshold(r.model_version, r.label);
    $("try-label").textContent = r.label;
    $("try-review").textContent = r.needs_review ? "needs review" : "confident";
    $("try-review").className = `pill ${r.needs_review ? "warn" : "ok"}`;
    const probs = Object.entries(r.probabilities).sort((a, b) => b[1] - a[1]);
    $("try-bars").replaceChildren(...probs.flatMap(([c, p]) => [
      h("span", {}, c),
      h("span", { class: `track${c === r.label ? " top" : ""}` }, h("i", { style: { width: `${100 * p}%` } }),
        c === r.label && limit !== null ? h("b", { style: { left: `${100 * limit}%` }, title: "review threshold" }) : null),
      h("span", { class: "num" }, pct(p))]));
    $("try-confidence").textContent = pct(r.confidence);
    $("try-threshold").textContent = limit === null ? "–"
      : `${pct(limit)} (below it, an answer is flagged for review)`;
    $("try-version").textContent = r.model_version;
    $("try-result").hidden = false;
  } catch (err) {
    $("try-error").replaceChildren(h("b", {}, "Refused: "), err.message);
    $("try-error").hidden = false;
  }
}

function setupTry() {
  const drop = $("drop");
  ["dragenter", "dragover"].forEach((e) => drop.addEventListener(e, (ev) => {
    ev.preventDefault(); drop.classList.add("over");
  }));
  ["dragleave", "drop"].forEach((e) => drop.addEventListener(e, () => drop.classList.remove("over")));
  drop.addEventListener("drop", (ev) => {
    ev.preventDefault();
    if (ev.dataTransfer.files.length) classify(ev.dataTransfer.files[0]);
  });
  const heatTry = () => $("drop").classList.toggle("heat-on", $("try-heatmap").checked);
  $("try-heatmap").addEventListener("change", heatTry);
  heatTry();
  $("try-file").addEventListener("change", () => {
    if ($("try-file").files.length) classify($("try-file").files[0]);
    $("try-file").value = "";
  });
}

// ------------------------------------------------------------------------------------- jobs
// The server marks each job `ended` and `succeeded` (piston/job_record.py owns the states).
function jobFraction(j) {
  if (j.succeeded) return 1;
  if (j.kind === "score" && j.total) return Math.min(1, ((j.scored || 0) + (j.errors || 0)) / j.total);
  if (j.kind === "retrain" && j.progress && j.progress.epochs) {
    return Math.min(1, (j.progress.epoch || 0) / j.progress.epochs);
  }
  return 0;
}

function stateClass(j) {
  return j.ended ? (j.succeeded ? "ok" : "bad") : "warn";
}

function jobStats(j) {
  const stat = (k, v) => h("span", {}, `${k} `, h("b", {}, v));
  if (j.kind === "score") {
    const labels = Object.entries(j.by_label || {}).map(([k, v]) => stat(k, v));
    return [stat("scored", `${(j.scored || 0) + (j.errors || 0)}${j.total !== undefined ? ` / ${j.total}` : ""}`),
      ...labels, stat("needs review", j.needs_review || 0), stat("errors", j.errors || 0),
      j.skipped ? stat("skipped", j.skipped) : null,
      j.images_per_second ? stat("images/s", j.images_per_second) : null,
      j.model_version ? stat("model", j.model_version) : null];
  }
  const p = j.progress || {};
  return [p.stage ? stat("stage", p.stage) : null,
    p.epochs ? stat("epoch", `${p.epoch || 0} / ${p.epochs}`) : null,
    p.val_accuracy !== undefined ? stat("val accuracy", pct(p.val_accuracy)) : null,
    j.version ? stat("bundle", j.version) : null,
    j.promoted !== undefined ? stat("promoted", j.promoted ? "yes" : "no") : null];
}

function jobCard(j) {
  const f = jobFraction(j);
  const bar = j.ended ? (j.succeeded ? "done" : "failed") : "";
  const where = j.kind === "score" ? `${j.src || "?"} → ${j.out || "?"}` : `data set ${j.dataset || "?"}`;
  return h("div", { class: "job", "data-job": j.job_id },
    h("div", { class: "title" }, h("b", {}, j.kind === "score" ? "Scoring" : "Retraining"),
      h("span", { class: `pill ${stateClass(j)}` }, j.state), h("span", { class: "id" }, j.job_id)),
    h("div", { class: "muted small" }, when(j.submitted_at),
      j.kind === "score" && j.succeeded
        ? [" · ", h("a", { href: `#review?job=${j.job_id}` }, "Review queue")] : null),
    h("div", { class: `progress ${bar}` }, h("i", { style: { width: `${(100 * f).toFixed(1)}%` } })),
    h("div", { class: "stats" }, jobStats(j)),
    h("div", { class: "where" }, where, j.reason ? ` · ${j.reason}` : ""));
}

async function loadJobs() {
  if (!token()) { $("jobs-list").replaceChildren(); return; }
  try {
    const { jobs } = await api("api/jobs", { admin: true });
    $("jobs-list").replaceChildren(...(jobs.length ? jobs.map(jobCard)
      : [h("div", { class: "empty" }, "No jobs in the last week.")]));
  } catch (err) {
    clearInterval(state.jobTimer);
    toast(err.message, true);
  }
}

function setupJobs() {
  $("score-form").addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const form = new FormData(ev.target);
    try {
      const r = await api("/jobs/score", { method: "POST", admin: true,
        body: { src: form.get("src").trim(), out: form.get("out").trim() } });
      toast(`Scoring job ${r.job_id} queued.`);
      loadJobs();
    } catch (err) { toast(err.message, true); }
  });
  $("retrain-form").addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const form = new FormData(ev.target);
    const body = { promote_if_better: form.get("promote_if_better") === "on" };
    if (form.get("dataset").trim()) body.dataset = form.get("dataset").trim();
    try {
      const r = await api("/admin/retrain", { method: "POST", admin: true, body });
      toast(`Retraining job ${r.job_id} queued.`);
      loadJobs();
    } catch (err) { toast(err.message, true); }
  });
}

// ----------------------------------------------------------------------------- review queue
async function loadReviewJobs() {
  if (!token()) return;
  try {
    const { jobs } = await api("api/jobs", { admin: true });
    const done = jobs.filter((j) => j.kind === "score" && j.succeeded);
    const select = $("review-job");
    const keep = state.review.wanted || select.value;
    select.replaceChildren(...(done.length ? done.map((j) => h("option", { value: j.job_id },
      `${when(j.finished_at || j.submitted_at)} · ${(j.needs_review || 0) + (j.errors || 0)} flagged · ${j.src || j.job_id}`))
      : [h("option", { value: "" }, "no finished scoring job")]));
    if (keep && done.some((j) => j.job_id === keep)) select.value = keep;
    state.review.wanted = null;
    if (select.value) await openQueue(select.value);
    else $("review-grid").replaceChildren(h("div", { class: "empty" }, "Nothing to review."));
  } catch (err) { toast(err.message, true); }
}

async function openQueue(jobId) {
  const r = state.review;
  r.urls.forEach((u) => URL.revokeObjectURL(u));
  Object.assign(r, { job: jobId, items: [], urls: [], current: 0 });
  const q = await api(`api/jobs/${jobId}/review`, { admin: true });
  r.items = q.items;
  r.classes = q.classes;
  $("review-where").textContent = `Source ${q.src} · answers go to ${q.reviewed_file}`;
  const first = r.items.findIndex((i) => !i.answer);
  r.current = first < 0 ? 0 : first;
  $("review-grid").replaceChildren(...(r.items.length ? r.items.map(reviewCard)
    : [h("div", { class: "empty" }, "This job flagged nothing: nothing to review.")]));
  reviewProgress();
  markCurrent();
  loadThumbnails(jobId);
}

function reviewCard(item, index) {
  const pic = h("div", { class: "pic" }, "loading…");
  if (!item.predicted) pic.dataset.unreadable = "1";
  const choices = h("div", { class: "choices" }, state.review.classes.map((c, k) =>
    h("button", { type: "button", "data-class": c, title: `key ${k + 1}`,
      class: [c === item.answer ? "chosen" : "", c === item.predicted ? "predicted" : ""].join(" "),
      onclick: (ev) => { ev.stopPropagation(); answer(index, c); } }, `${k + 1} ${c}`)));
  const reason = item.reason && item.reason !== "low confidence" ? item.reason : null;
  return h("div", { class: `thumb${item.answer ? " answered" : ""}`, "data-key": item.image_path,
    onclick: () => { state.review.current = index; markCurrent(); } },
  pic,
  h("div", { class: "meta" },
    h("div", { class: "key", title: item.image_path }, item.image_path),
    h("div", {}, item.predicted
      ? ["predicted ", h("b", {}, item.predicted), ` · ${pct(item.confidence)}`]
      : h("span", { class: "pill bad" }, "unreadable")),
    reason ? h("div", { class: "muted small" }, reason) : null),
  choices);
}

async function loadThumbnails(jobId) {
  const r = state.review;
  const cards = [...$("review-grid").querySelectorAll(".thumb")];
  let next = 0;
  async function worker() {
    while (next < cards.length && r.job === jobId) {
      const card = cards[next++];
      const pic = card.querySelector(".pic");
      try {
        const response = await api(`api/jobs/${jobId}/thumbnail?key=${encodeURIComponent(card.dataset.key)}`,
          { admin: true, raw: true });
        const url = URL.createObjectURL(await response.blob());
        r.urls.push(url);
        pic.replaceChildren(h("span", { class: "stage" }, h("img", { src: url, alt: card.dataset.key })));
        if (state.review.heat) loadHeat(jobId, card);
      } catch (err) {
        pic.textContent = err.message;
      }
    }
  }
  await Promise.all([worker(), worker(), worker(), worker()]);
}

// Heatmaps of the flagged images, drawn on demand by the serving model, two at a time.
async function loadHeat(jobId, card) {
  const stage = card.querySelector(".stage");
  if (!stage || card.dataset.heat || card.querySelector(".pic").dataset.unreadable) return;
  card.dataset.heat = "loading";
  try {
    const got = await api(`api/jobs/${jobId}/heatmap?key=${encodeURIComponent(card.dataset.key)}`,
      { admin: true });
    if (state.review.job !== jobId) return;
    layHeat(stage, got.explanation);
    card.dataset.heat = "shown";
  } catch (err) {
    card.dataset.heat = "";
    toast(err.message, true);
  }
}

async function showHeatmaps() {
  const r = state.review;
  r.heat = $("review-heatmaps").checked;
  $("review-grid").classList.toggle("heat-on", r.heat);
  if (!r.heat || !r.job) return;
  const cards = [...$("review-grid").querySelectorAll(".thumb")];
  const jobId = r.job;
  async function worker() {
    while (cards.length && r.job === jobId && r.heat) await loadHeat(jobId, cards.shift());
  }
  await Promise.all([worker(), worker()]);
}

function reviewProgress() {
  const r = state.review;
  const done = r.items.filter((i) => i.answer).length;
  $("review-progress").textContent = r.items.length ? `${done} of ${r.items.length} reviewed` : "";
  $("review-retrain").disabled = done === 0;
}

function markCurrent() {
  const cards = $("review-grid").querySelectorAll(".thumb");
  cards.forEach((c, i) => c.classList.toggle("current", i === state.review.current));
  const card = cards[state.review.current];
  if (card) card.scrollIntoView({ block: "nearest" });
}

async function answer(index, target) {
  const r = state.review;
  const item = r.items[index];
  if (!item) return;
  try {
    await api(`api/jobs/${r.job}/review`, { method: "POST", admin: true,
      body: { image_path: item.image_path, target } });
  } catch (err) { toast(err.message, true); return; }
  item.answer = target;
  const card = $("review-grid").querySelectorAll(".thumb")[index];
  card.classList.add("answered");
  card.querySelectorAll(".choices button").forEach((b) => b.classList.toggle("chosen", b.dataset.class === target));
  const next = r.items.findIndex((i, k) => k > index && !i.answer);
  r.current = next < 0 ? Math.min(index + 1, r.items.length - 1) : next;
  reviewProgress();
  markCurrent();
}

function setupReview() {
  $("review-heatmaps").addEventListener("change", () => showHeatmaps());
  $("review-job").addEventListener("change", () => {
    if ($("review-job").value) openQueue($("review-job").value).catch((e) => toast(e.message, true));
  });
  document.addEventListener("keydown", (ev) => {
    if (state.view !== "review" || ev.target.closest("input, select, textarea, dialog")) return;
    const r = state.review;
    if (/^[1-9]$/.test(ev.key) && r.classes[Number(ev.key) - 1]) {
      answer(r.current, r.classes[Number(ev.key) - 1]);
    } else if (ev.key === "ArrowRight" || ev.key === "ArrowLeft") {
      const step = ev.key === "ArrowRight" ? 1 : -1;
      r.current = Math.max(0, Math.min(r.items.length - 1, r.current + step));
      markCurrent();
    } else {
      return;
    }
    ev.preventDefault();
  });
  $("review-retrain").addEventListener("click", async () => {
    const r = state.review;
    const done = r.items.filter((i) => i.answer).length;
    if (!window.confirm(`Retrain on the data set plus the ${done} reviewed image(s)?`)) return;
    try {
      const answer = await api(`api/jobs/${r.job}/retrain`, { method: "POST", admin: true, body: {} });
      toast(`Retraining job ${answer.job_id} queued on ${answer.dataset}.`);
    } catch (err) { toast(err.message, true); }
  });
}

// ------------------------------------------------------------------------------------ start
document.addEventListener("DOMContentLoaded", () => {
  setupToken();
  setupMoves();
  setupTry();
  setupJobs();
  setupReview();
  $("models-refresh").addEventListener("click", loadModels);
  $("report-close").addEventListener("click", () => $("report-dialog").close());
  showTokenState();
  loadServing();
  window.addEventListener("hashchange", route);
  route();
});
