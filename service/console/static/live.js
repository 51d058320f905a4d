// piston-inspector console: evidence from live traffic. The shadow of a candidate (matrix,
// figures, disagreeing images) and the drift watch's windows drawn as SVG charts.
// Uses console.js's helpers (h, $, api, toast, pct, num, state); text only via textContent.
"use strict";

const SVG_NS = "http://www.w3.org/2000/svg";
const PALETTE = ["#2f6fde", "#e0843a", "#3aa676", "#b04fc9", "#c9b32f", "#d24d57", "#4fb7c9"];

function svg(tag, attrs, ...children) {
  const el = document.createElementNS(SVG_NS, tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v !== null && v !== undefined) el.setAttribute(k, String(v));
  }
  for (const c of children.flat(Infinity)) {
    if (c === null || c === undefined) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return el;
}

const clock = (iso) => new Date(iso).toLocaleTimeString(undefined, { hour: "2-digit", minute: "2-digit" });
const day = (iso) => new Date(iso).toLocaleDateString(undefined, { month: "short", day: "numeric" });

// ------------------------------------------------------------------------------------ charts
const W = 340, H = 150, PAD = { l: 48, r: 10, t: 22, b: 22 };

function frame(title, max, fmt, windows, label) {
  const g = svg("svg", { viewBox: `0 0 ${W} ${H}`, class: "chart", role: "img", "aria-label": title });
  g.append(svg("text", { x: PAD.l, y: 14, class: "chart-title" }, title));
  const y0 = H - PAD.b, y1 = PAD.t;
  g.append(svg("line", { x1: PAD.l, x2: W - PAD.r, y1: y0, y2: y0, class: "axis" }));
  g.append(svg("text", { x: PAD.l - 4, y: y0, class: "tick", "text-anchor": "end" }, fmt(0)));
  g.append(svg("text", { x: PAD.l - 4, y: y1 + 8, class: "tick", "text-anchor": "end" }, fmt(max)));
  if (windows.length) {
    g.append(svg("text", { x: PAD.l, y: H - 6, class: "tick" }, label(windows[0].start)));
    g.append(svg("text", { x: W - PAD.r, y: H - 6, class: "tick", "text-anchor": "end" },
      label(windows[windows.length - 1].start)));
  }
  return g;
}

function xAt(i, n) { return PAD.l + (n <= 1 ? 0.5 : i / (n - 1)) * (W - PAD.l - PAD.r); }
function yAt(v, max) { return H - PAD.b - (max ? v / max : 0) * (H - PAD.b - PAD.t); }

// One figure per window as a line (gaps where a window had no images), the test split dashed.
function lineChart(title, windows, pick, { max = 1, floor = 1e-9, fmt = (v) => pct(v), baseline = null, label = clock } = {}) {
  const values = windows.map(pick);
  const known = values.filter((v) => v !== null && v !== undefined);
  const top = max === "auto" ? Math.max(floor, ...known, baseline || 0) * 1.15 : max;
  const g = frame(title, top, fmt, windows, label);
  if (baseline !== null && baseline !== undefined) {
    const y = yAt(baseline, top);
    g.append(svg("line", { x1: PAD.l, x2: W - PAD.r, y1: y, y2: y, class: "baseline" }));
    g.append(svg("text", { x: W - PAD.r, y: y - 3, class: "tick", "text-anchor": "end" }, `test split ${fmt(baseline)}`));
  }
  let path = "";
  values.forEach((v, i) => {
    if (v === null || v === undefined) { path += " "; return; }
    const cmd = path === "" || path.endsWith(" ") ? "M" : "L";
    path += `${cmd}${xAt(i, values.length).toFixed(1)},${yAt(v, top).toFixed(1)}`;
  });
  if (path.trim()) g.append(svg("path", { d: path.trim(), class: "line" }));
  values.forEach((v, i) => {
    if (v === null || v === undefined) return;
    g.append(svg("circle", { cx: xAt(i, values.length), cy: yAt(v, top), r: 2.5, class: "dot" },
      svg("title", {}, `${clock(windows[i].start)}: ${fmt(v)} (${windows[i].images} images)`)));
  });
  return g;
}

function barChart(title, windows, label = clock) {
  const top = Math.max(1, ...windows.map((w) => w.images));
  const g = frame(title, top, (v) => String(Math.round(v)), windows, label);
  const n = windows.length, bw = Math.max(2, (W - PAD.l - PAD.r) / Math.max(n, 1) - 2);
  windows.forEach((w, i) => {
    const x = PAD.l + i * (W - PAD.l - PAD.r) / Math.max(n, 1);
    const y = yAt(w.images, top);
    g.append(svg("rect", { x, y, width: bw, height: H - PAD.b - y, class: "bar" },
      svg("title", {}, `${label(w.start)}: ${w.images} images`)));
  });
  return g;
}

// Class mix: a stacked bar per window, and the test split's mix as the last bar.
function mixChart(windows, test, classes) {
  const g = frame("Class mix (last bar: test split)", 1, (v) => pct(v), windows, clock);
  const bars = [...windows.map((w) => ({ mix: w.class_mix, images: w.images, name: clock(w.start) })),
    { mix: test.class_mix || {}, images: 1, name: "test split", test: true }];
  const n = bars.length, step = (W - PAD.l - PAD.r) / n, bw = Math.max(2, step - 3);
  bars.forEach((b, i) => {
    let y = H - PAD.b;
    if (!b.images) return;
    classes.forEach((c, k) => {
      const share = b.mix[c] || 0;
      const hgt = share * (H - PAD.b - PAD.t);
      y -= hgt;
      g.append(svg("rect", { x: PAD.l + i * step, y, width: bw, height: hgt, style: `fill: ${PALETTE[k % PALETTE.length]}`,
        class: b.test ? "seg test" : "seg" }, svg("title", {}, `${b.name}: ${c} ${pct(share)}`)));
    });
  });
  return g;
}

function legend(classes) {
  return h("div", { class: "legend" }, classes.map((c, k) =>
    h("span", {}, h("i", { style: { background: PALETTE[k % PALETTE.length] } }), c)));
}

// -------------------------------------------------------------------------------- drift view
function versionCard(v) {
  const windows = v.windows || [];
  const classes = [...new Set([...Object.keys(v.test_split.class_mix || {}),
    ...windows.flatMap((w) => Object.keys(w.class_mix || {}))])].sort();
  const seen = windows.filter((w) => w.images);
  const verdict = v.drifting
    ? h("span", { class: "pill bad", "data-drift": "drifting" }, "drifting")
    : h("span", { class: "pill ok", "data-drift": "steady" }, seen.length ? "steady" : "no traffic yet");
  const judged = v.judged;
  return h("div", { class: "card monitor-card", "data-version": v.version },
    h("div", { class: "verdict" }, h("span", { class: "version" }, v.version), verdict,
      v.version === (state.monitor && state.monitor.serving) ? h("span", { class: "pill prod" }, "serving") : null),
    v.reasons.length ? h("ul", { class: "reasons" }, v.reasons.map((r) => h("li", {}, r))) : null,
    judged ? h("p", { class: "muted small" }, `Judged: the window from ${clock(judged.start)}, ${judged.images} images; `
      + `test split: ${v.test_split.images || "–"} images.`) : null,
    h("div", { class: "charts" },
      barChart("Images per window", windows),
      mixChart(windows, v.test_split, classes),
      lineChart("Review share", windows, (w) => w.review_share, { baseline: v.test_split.review_share }),
      lineChart("Mean confidence", windows, (w) => w.mean_confidence),
      lineChart("Novelty share", windows, (w) => w.novelty_share, { baseline: v.test_split.novelty_share }),
      lineChart("Mean brightness", windows, (w) => w.mean_brightness, { fmt: (x) => num(x, 2) }),
      lineChart("Megapixels per image", windows, (w) => w.mean_megapixels, { max: "auto", fmt: (x) => num(x, 2) }),
      lineChart("Errors per window", windows, (w) => Object.values(w.errors || {}).reduce((a, b) => a + b, 0),
        { max: "auto", floor: 1, fmt: (x) => String(Math.round(x)) })),
    legend(classes),
    h("details", {}, h("summary", {}, "By day"), dayTable(v.days || [])));
}

function dayTable(days) {
  const rows = days.filter((d) => d.images || Object.keys(d.errors || {}).length);
  if (!rows.length) return h("p", { class: "muted" }, "No traffic in the last days.");
  return h("table", { class: "grid" },
    h("thead", {}, h("tr", {}, ["Day", "Images", "Review", "Confidence", "Novel", "Brightness", "Errors"].map((c) => h("th", {}, c)))),
    h("tbody", {}, rows.map((d) => h("tr", {},
      h("td", {}, day(d.start)), h("td", { class: "num" }, d.images), h("td", { class: "num" }, pct(d.review_share)),
      h("td", { class: "num" }, num(d.mean_confidence)), h("td", { class: "num" }, pct(d.novelty_share)),
      h("td", { class: "num" }, num(d.mean_brightness, 2)),
      h("td", {}, Object.entries(d.errors || {}).map(([k, n]) => `${k} ${n}`).join(", ") || "–")))));
}

// ------------------------------------------------------------------------------- shadow panel
function shadowPanel(r) {
  const panel = $("shadow-panel");
  if (!r || !r.spec) {
    panel.replaceChildren(h("p", { class: "muted" },
      "No shadow. Pick \u201cShadow\u201d beside a bundle on the Models page to score a share of live images with it too."));
    return;
  }
  const s = r.spec;
  const labels = [...new Set([...Object.keys(r.matrix), ...Object.values(r.matrix).flatMap((row) => Object.keys(row))])].sort();
  const matrix = h("table", { class: "grid matrix", id: "shadow-matrix" },
    h("thead", {}, h("tr", {}, h("th", {}, "production \u2193 / candidate \u2192"), labels.map((c) => h("th", {}, c)))),
    h("tbody", {}, labels.map((p) => h("tr", {}, h("th", {}, p), labels.map((c) => {
      const n = (r.matrix[p] || {})[c] || 0;
      return h("td", { class: `num ${p === c ? "agree" : (n ? "disagree" : "")}` }, n);
    })))));
  const dropped = Object.entries(r.dropped || {}).map(([k, n]) => `${k.replace("_", " ")} ${n}`).join(", ") || "none";
  const figures = h("table", { class: "grid figures" },
    h("thead", {}, h("tr", {}, h("th", {}, ""), h("th", {}, `production ${s.production}`), h("th", {}, `candidate ${s.version}`))),
    h("tbody", {},
      h("tr", {}, h("th", {}, "mean confidence"), h("td", { class: "num" }, num(r.mean_confidence.production)), h("td", { class: "num" }, num(r.mean_confidence.candidate))),
      h("tr", {}, h("th", {}, "sent to review"), h("td", { class: "num" }, `${r.needs_review.production ?? 0} (${pct(r.review_share.production)})`),
        h("td", { class: "num" }, `${r.needs_review.candidate ?? 0} (${pct(r.review_share.candidate)})`)),
      h("tr", {}, h("th", {}, "latency per image"), h("td", { class: "num" }, `${num(r.latency_ms.production, 1)} ms`), h("td", { class: "num" }, `${num(r.latency_ms.candidate, 1)} ms`))));
  const samples = h("div", { class: "thumbs shadow-samples" }, (r.samples || []).map((x) =>
    h("figure", { class: "card" }, x.thumbnail ? h("img", { src: x.thumbnail, alt: "" }) : null,
      h("figcaption", {}, h("div", {}, `production: ${x.production} ${num(x.production_confidence, 2)}`),
        h("div", {}, `candidate: ${x.candidate} ${num(x.candidate_confidence, 2)}`)))));
  panel.replaceChildren(
    h("div", { class: "verdict" }, h("b", { id: "shadow-headline" }, r.headline),
      h("span", { class: `pill ${r.active ? "ok" : "warn"}` }, r.active ? "running" : `ended: ${s.ended_reason}`),
      r.active ? h("button", { class: "danger small", type: "button", id: "shadow-stop", onclick: stopShadow }, "Stop shadow") : null),
    h("p", { class: "muted small" }, `${s.version} against production ${s.production} on ${pct(s.share)} of live images since ${when(s.started_at)}. `
      + `Picked ${r.offered}, compared ${r.compared}, dropped ${dropped}, failed ${r.failed}.`),
    h("div", { class: "shadow-grid" }, matrix, figures),
    r.samples && r.samples.length ? h("h3", {}, "Images they disagree on (newest first)") : null, samples);
}

async function stopShadow() {
  try {
    await api("/admin/shadow/stop", { method: "POST", admin: true, body: {} });
    toast("Shadow stopped: its figures stay here until they expire.");
  } catch (err) { toast(err.message, true); }
  loadMonitor();
}

function askShadow(bundle) {
  $("shadow-title").textContent = `Shadow ${bundle.version}`;
  $("shadow-detail").textContent = `It scores a share of live images after production `
    + `(${state.production || "none"}) has answered; answers never wait for it.`;
  $("shadow-dialog").dataset.version = bundle.version;
  $("shadow-dialog").showModal();
}

async function startShadow(version, share) {
  try {
    const answer = await api("/admin/shadow", { method: "POST", admin: true,
      body: { version, share, expected: state.production || "none" } });
    toast(`Shadowing ${answer.shadow.version} on ${pct(answer.shadow.share)} of live images.`);
    location.hash = "#monitor";
  } catch (err) { toast(err.message, true); }
}

// ------------------------------------------------------------------------------------- load
async function loadMonitor() {
  if (!token()) { $("monitor-versions").replaceChildren(); $("shadow-panel").replaceChildren(); return; }
  try {
    const [monitor, shadow] = await Promise.all([api("/admin/monitor", { admin: true }),
      api("/admin/shadow", { admin: true })]);
    state.monitor = monitor;
    shadowPanel(shadow);
    loadServing();  // the header's "drifting" mark
    $("monitor-bounds").textContent = `Windows of ${monitor.bounds.window_s} s; a window with at least `
      + `${monitor.bounds.min_images} images drifts when its class mix moves more than ${monitor.bounds.max_class_shift} `
      + `(total variation) or its review share more than ${monitor.bounds.max_review_shift} from the test split.`;
    $("monitor-versions").replaceChildren(...monitor.versions.map(versionCard));
  } catch (err) {
    toast(err.message, true);
  }
}

document.addEventListener("DOMContentLoaded", () => {
  const dialog = $("shadow-dialog");
  dialog.addEventListener("close", () => {
    if (dialog.returnValue !== "go") return;
    const share = Number($("shadow-share").value);
    if (!(share > 0 && share <= 1)) { toast("The share is a fraction in (0, 1].", true); return; }
    startShadow(dialog.dataset.version, share);
  });
});
