// The hspi dashboard: reads the service's /v1 API with the key typed above; no library, no build step.
// The key lives in this tab's sessionStorage and goes out only as an Authorization header.  Every value
// from the API is put on the page as text (textContent), never as markup: labels and endpoints are
// whatever a client sent.
"use strict";

const KEY_ITEM = "hspi.apiKey";
const HEADS = ["hardware", "dtype", "engine", "kernel", "full"];
const COLOURS = { hardware: "#1565c0", dtype: "#c62828", engine: "#2e7d32", kernel: "#ef6c00", full: "#6a1b9a" };
// lines drawn widest first, so heads whose posteriors coincide (often all at 1.0) stay visible as stripes
const DRAW_ORDER = ["full", "hardware", "engine", "kernel", "dtype"];
const WIDTHS = { full: 9, hardware: 7, engine: 5, kernel: 3, dtype: 1.5 };
const STATUSES = ["queued", "running", "done", "failed", "cancelled", "interrupted"];
const VERDICTS = ["consistent", "inconsistent", "inconclusive", "unknown-platform", "identified", "wrong-model", "nondeterministic"];
const ACTIVE = ["queued", "running"];
const REFRESH_MS = 3000; // an audit or scan still running is read again this often
const MAX_ANSWERS_SHOWN = 1000;
const SVG_NS = "http://www.w3.org/2000/svg";

let renderCount = 0; // a newer page replaces an older one still loading
let refreshTimer = null;

// -- small DOM helpers ---------------------------------------------------------------------------
function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (name === "class") node.className = value;
    else node.setAttribute(name, value === true ? "" : String(value));
  }
  for (const child of children.flat(Infinity)) {
    if (child === null || child === undefined) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

function svgEl(tag, attrs, ...children) {
  const node = document.createElementNS(SVG_NS, tag);
  for (const [name, value] of Object.entries(attrs || {})) node.setAttribute(name, String(value));
  for (const child of children) node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  return node;
}

function when(value) {
  return value ? new Date(value).toISOString().replace("T", " ").slice(0, 19) + " UTC" : "-";
}

function claimText(claim) {
  const parts = Object.entries(claim || {}).map(([k, v]) => `${k}=${v}`);
  return parts.length ? parts.join(", ") : "-";
}

function word(kind, value) {
  return el("span", { class: value ? `${kind}-${value}` : null }, value || "-");
}

function countsText(counts) {
  const parts = Object.entries(counts || {}).map(([k, n]) => `${n} ${k}`);
  return parts.length ? parts.join(", ") : "none";
}

// -- the API -------------------------------------------------------------------------------------
class ApiError extends Error {}

async function api(path, params) {
  const key = sessionStorage.getItem(KEY_ITEM);
  if (!key) throw new ApiError("Enter an API key (scope read or more) above to read the service.");
  const url = new URL(path, window.location.origin);
  for (const [name, value] of Object.entries(params || {})) {
    if (value !== null && value !== undefined && value !== "") url.searchParams.set(name, value);
  }
  let response;
  try {
    response = await fetch(url, {
      headers: { Authorization: `Bearer ${key}`, Accept: "application/json" },
      cache: "no-store",
      credentials: "omit",
      referrerPolicy: "no-referrer",
    });
  } catch (exc) {
    throw new ApiError(`the service did not answer (${exc.message})`);
  }
  let body = null;
  try {
    body = await response.json();
  } catch (exc) {
    body = null;
  }
  if (!response.ok) throw new ApiError(`${response.status}: ${(body && body.detail) || response.statusText}`);
  return body;
}

// -- routing -------------------------------------------------------------------------------------
function route() {
  const hash = window.location.hash.replace(/^#/, "") || "/audits";
  const [path, query] = hash.split("?", 2);
  return { parts: path.split("/").filter(Boolean), params: new URLSearchParams(query || "") };
}

async function render() {
  const mine = ++renderCount;
  clearTimeout(refreshTimer);
  const { parts, params } = route();
  const page = document.getElementById("page");
  document.getElementById("nav-audits").className = parts[0] !== "scans" ? "current" : "";
  document.getElementById("nav-scans").className = parts[0] === "scans" ? "current" : "";
  let content;
  let again = false;
  try {
    if (parts[0] === "scans" && parts[1]) [content, again] = await scanPage(decodeURIComponent(parts[1]));
    else if (parts[0] === "scans") content = await scansPage();
    else if (parts[0] === "audits" && parts[1]) [content, again] = await auditPage(decodeURIComponent(parts[1]));
    else content = await auditsPage(params);
  } catch (exc) {
    if (!(exc instanceof ApiError)) console.error(exc);
    content = el("p", { class: "error", id: "error" }, exc.message);
  }
  if (mine !== renderCount) return; // the person went elsewhere meanwhile
  page.replaceChildren(content);
  document.body.dataset.loaded = String(mine);
  if (again) refreshTimer = setTimeout(render, REFRESH_MS);
}

// -- the audits list -----------------------------------------------------------------------------
async function modelNames() {
  try {
    const body = await api("/v1/classifiers");
    return [...new Set(body.data.map((c) => c.model))].sort();
  } catch (exc) {
    return [];
  }
}

function select(name, label, values, current) {
  const box = el("select", { name, id: `filter-${name}` }, el("option", { value: "" }, "any"));
  for (const value of values) box.append(el("option", { value, selected: value === current }, value));
  return el("label", {}, label, box);
}

function filterForm(params, models) {
  const form = el(
    "form",
    { class: "filters", id: "filters" },
    select("status", "status", STATUSES, params.get("status")),
    select("verdict", "verdict", VERDICTS, params.get("verdict")),
    select("model", "model", models.includes(params.get("model")) || !params.get("model") ? models : [...models, params.get("model")], params.get("model")),
    el("label", {}, "endpoint", el("input", { name: "endpoint", id: "filter-endpoint", value: params.get("endpoint") || "" })),
    el("label", {}, "label", el("input", { name: "label", id: "filter-label", value: params.get("label") || "" })),
    el("button", { type: "submit", id: "filter-apply" }, "Filter"),
    el("a", { href: "#/audits" }, "clear"),
  );
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    const chosen = new URLSearchParams();
    for (const [name, value] of new FormData(form)) if (value) chosen.set(name, value);
    window.location.hash = `#/audits?${chosen}`;
  });
  return form;
}

async function auditsPage(params) {
  const filters = {};
  for (const name of ["status", "verdict", "model", "endpoint", "label", "scan_id", "cursor"]) filters[name] = params.get(name);
  const [list, models] = await Promise.all([api("/v1/audits", { ...filters, limit: 50 }), modelNames()]);
  const rows = list.data.map((a) =>
    el(
      "tr",
      { "data-audit": a.id },
      el("td", {}, el("a", { href: `#/audits/${a.id}`, class: "mono" }, a.id.slice(0, 8))),
      el("td", {}, when(a.created_at)),
      el("td", { class: "status" }, word("status", a.status)),
      el("td", { class: "verdict" }, word("verdict", a.verdict)),
      el("td", { class: "endpoint mono" }, a.endpoint),
      el("td", { class: "model" }, a.model),
      el("td", {}, claimText(a.claim)),
      el("td", {}, a.label || ""),
      el("td", { class: "num" }, a.progress.answers),
      el("td", { class: "num" }, `${a.progress.queries}/${a.progress.budget_queries}`),
      el("td", {}, a.progress.leading.full || "-"),
    ),
  );
  const table = el(
    "table",
    { id: "audits" },
    el("tr", {}, ["audit", "created", "status", "verdict", "endpoint", "model", "claim", "label", "answers", "queries", "platform (leading)"].map((t) => el("th", {}, t))),
    rows,
  );
  const next = new URLSearchParams(params);
  next.set("cursor", list.next_cursor || "");
  return el(
    "section",
    {},
    el("h2", {}, "Audits"),
    filterForm(params, models),
    rows.length ? table : el("p", { class: "note", id: "empty" }, "No audit matches these filters."),
    list.next_cursor ? el("p", { class: "pager" }, el("a", { href: `#/audits?${next}`, id: "next-page" }, "next page")) : null,
  );
}

// -- one audit -----------------------------------------------------------------------------------
async function allAnswers(id) {
  const answers = [];
  let after = -1;
  while (answers.length < MAX_ANSWERS_SHOWN) {
    const page = await api(`/v1/audits/${encodeURIComponent(id)}/answers`, { after, limit: 500 });
    answers.push(...page.data);
    if (page.next_index === null) break;
    after = page.next_index;
  }
  return answers;
}

function facts(pairs) {
  return el("dl", { class: "facts" }, pairs.filter(([, v]) => v !== null && v !== undefined && v !== "").map(([k, v]) => [el("dt", {}, k), el("dd", { "data-fact": k }, v)]));
}

function headsTable(heads) {
  const rows = HEADS.filter((h) => heads[h]).map((h) => {
    const head = heads[h];
    const best = head.guesses[0];
    return el(
      "tr",
      { "data-head": h },
      el("td", {}, h),
      el("td", {}, best ? best.label : "-"),
      el("td", { class: "num" }, best ? best.probability.toFixed(3) : "-"),
      el("td", {}, head.claimed || "-"),
      el("td", {}, word("verdict", head.verdict)),
      el("td", {}, head.basis),
      el("td", {}, head.why),
    );
  });
  return el("table", { id: "heads" }, el("tr", {}, ["head", "leading", "probability", "claimed", "verdict", "basis", "why"].map((t) => el("th", {}, t))), rows);
}

function posteriorPlot(points) {
  // one line per head: the posterior of that head's leading value after each answer (x: answers so far)
  const width = 760, height = 280, left = 46, right = 16, top = 12, bottom = 36;
  const n = points.length;
  const x = (i) => left + (n <= 1 ? 0 : (i / (n - 1)) * (width - left - right));
  const y = (p) => top + (1 - p) * (height - top - bottom);
  const plot = svgEl("svg", { class: "plot", id: "posterior-plot", width, height, viewBox: `0 0 ${width} ${height}`, role: "img" });
  plot.append(svgEl("title", {}, "each head's posterior of its leading value against the number of answers"));
  for (const p of [0, 0.25, 0.5, 0.75, 1]) {
    plot.append(svgEl("line", { class: "grid", x1: left, x2: width - right, y1: y(p), y2: y(p) }));
    plot.append(svgEl("text", { x: left - 6, y: y(p) + 4, "text-anchor": "end" }, p.toFixed(2)));
  }
  plot.append(svgEl("line", { class: "axis", x1: left, x2: left, y1: top, y2: height - bottom }));
  plot.append(svgEl("line", { class: "axis", x1: left, x2: width - right, y1: height - bottom, y2: height - bottom }));
  const step = Math.max(1, Math.ceil(n / 12));
  for (let i = 0; i < n; i += step) plot.append(svgEl("text", { x: x(i), y: height - bottom + 14, "text-anchor": "middle" }, i + 1));
  plot.append(svgEl("text", { x: (left + width - right) / 2, y: height - 4, "text-anchor": "middle" }, "answers"));
  plot.append(svgEl("text", { x: 12, y: (top + height - bottom) / 2, "text-anchor": "middle", transform: `rotate(-90 12 ${(top + height - bottom) / 2})` }, "posterior"));
  const legend = el("p", { class: "legend", id: "plot-legend" });
  const legendItems = {};
  for (const head of DRAW_ORDER) {
    let d = "";
    let drawn = 0;
    let pen = "M";
    points.forEach((point, i) => {
      const reading = point.heads[head];
      if (!reading) {
        pen = "M"; // no reading yet: the line starts at the first scored answer
        return;
      }
      d += `${pen}${x(i).toFixed(1)},${y(reading.probability).toFixed(1)} `;
      pen = "L";
      drawn += 1;
    });
    if (!drawn) continue;
    const path = svgEl("path", { class: "head", d: d.trim(), stroke: COLOURS[head], "stroke-width": WIDTHS[head], "stroke-linejoin": "round", "data-head": head, "data-points": drawn });
    const last = points[n - 1].heads[head];
    path.append(svgEl("title", {}, `${head}: ${last ? `${last.label} (${last.probability.toFixed(3)})` : "-"} after ${n} answers`));
    plot.append(path);
    const swatch = el("i");
    swatch.style.background = COLOURS[head];
    legendItems[head] = el("span", {}, swatch, `${head}: ${last ? `${last.label} ${last.probability.toFixed(3)}` : "-"}`);
  }
  legend.append(...HEADS.filter((h) => legendItems[h]).map((h) => legendItems[h]));
  return [plot, legend];
}

function answersTable(answers) {
  const short = (list, digits) => list.slice(0, 5).map((v) => (digits === undefined ? v : Number(v).toFixed(digits))).join(" ") + (list.length > 5 ? " ..." : "");
  const rows = answers.map((a) =>
    el(
      "tr",
      { "data-answer": a.index },
      el("td", { class: "num" }, a.index),
      el("td", { class: "num" }, a.probe_id),
      el("td", {}, a.tier),
      el("td", {}, a.complete ? "yes" : "no"),
      el("td", { class: "num" }, a.queries_so_far),
      el("td", { class: "mono" }, short(a.ids)),
      el("td", { class: "mono" }, short(a.values, 4)),
      el("td", {}, HEADS.filter((h) => a.leading[h]).map((h) => `${h}=${a.leading[h]}`).join(", ")),
      el("td", {}, a.note),
    ),
  );
  return el("table", { id: "answers" }, el("tr", {}, ["#", "probe", "tier", "complete", "queries", "token ids", "values", "leading after it", "note"].map((t) => el("th", {}, t))), rows);
}

// a model-agnostic audit: its checks and its requests (it has no reference answers nor posteriors)
function agnosticPage(audit) {
  const report = audit.agnostic_report;
  const parts = [
    el("h2", {}, "Model-agnostic audit ", el("span", { class: "mono" }, audit.id)),
    facts([
      ["status", word("status", audit.status)],
      ["endpoint", el("span", { class: "mono", id: "endpoint" }, audit.endpoint)],
      ["label", audit.label],
      ["created", when(audit.created_at)],
      ["finished", audit.finished_at ? when(audit.finished_at) : null],
      ["queries", `${audit.progress.queries} of ${audit.progress.budget_queries}`],
      ["stopped", audit.stop],
      ["reason", report ? report.reason : null],
      ["tier", report ? report.tier : null],
      ["error", audit.error],
    ]),
  ];
  if (report) {
    const checks = Object.entries(report.checks).map(([name, c]) =>
      el("tr", {}, el("td", {}, name), el("td", {}, c.verdict), el("td", { class: "num" }, `${Math.round(c.probability * 100)}%`), el("td", {}, c.reason)),
    );
    parts.push(el("h3", {}, "Checks"), el("table", { id: "checks" }, el("tr", {}, ["check", "reading", "probability", "why"].map((t) => el("th", {}, t))), checks));
    const requests = report.evidence.map((r) =>
      el("tr", {}, el("td", { class: "num" }, r.index), el("td", {}, r.step), el("td", { class: "mono" }, `${r.method} ${r.path}`), el("td", { class: "num" }, r.status ?? "-"), el("td", {}, r.problem)),
    );
    parts.push(el("h3", {}, `Requests (${report.evidence.length})`), el("table", { id: "requests" }, el("tr", {}, ["#", "step", "request", "status", "problem"].map((t) => el("th", {}, t))), requests));
  }
  return [el("section", { id: "audit" }, parts), ACTIVE.includes(audit.status)];
}

async function auditPage(id) {
  const path = `/v1/audits/${encodeURIComponent(id)}`;
  const first = await api(path);
  if (first.kind === "model-agnostic") return agnosticPage(first);
  const [audit, trace, answers] = await Promise.all([api(path), api(`${path}/posteriors`), allAnswers(id)]);
  const report = audit.report;
  const parts = [
    el("h2", {}, "Audit ", el("span", { class: "mono" }, audit.id)),
    facts([
      ["status", word("status", audit.status)],
      ["verdict", word("verdict", audit.verdict)],
      ["endpoint", el("span", { class: "mono", id: "endpoint" }, audit.endpoint)],
      ["model", audit.model],
      ["claim", claimText(audit.claim)],
      ["label", audit.label],
      ["scan", audit.scan_id ? el("a", { href: `#/scans/${audit.scan_id}` }, audit.scan_id.slice(0, 8)) : null],
      ["created", when(audit.created_at)],
      ["finished", audit.finished_at ? when(audit.finished_at) : null],
      ["queries", `${audit.progress.queries} of ${audit.progress.budget_queries}`],
      ["answers", audit.progress.answers],
      ["stopped", audit.stop],
      ["reason", report ? report.reason : null],
      ["tier", report ? report.tier : null],
      ["matched class", report && report.matched_class ? `${report.matched_class.name} (${report.matched_class.members.length} platforms)` : null],
      // one prompt asked again when nothing known fit (audit/repeat_check.py)
      ["one prompt again", report && report.determinism ? `${report.determinism.verdict}: ${report.determinism.reason}` : null],
      ["error", audit.error],
    ]),
  ];
  if (report) parts.push(el("h3", {}, "Heads"), headsTable(report.heads));
  parts.push(el("h3", {}, "Evidence over queries"));
  if (trace.data.length) {
    parts.push(el("p", { class: "note" }, "Each head's posterior probability of its leading value after each answer (the leader may change from one answer to the next: the answers below name it)" + (trace.note ? ` (${trace.note})` : "") + "."));
    parts.push(...posteriorPlot(trace.data));
  } else {
    parts.push(el("p", { class: "note", id: "no-plot" }, trace.note || "no answers yet"));
  }
  parts.push(el("h3", {}, `Answers (${answers.length})`), answersTable(answers));
  return [el("section", { id: "audit" }, parts), ACTIVE.includes(audit.status)];
}

// -- scans ---------------------------------------------------------------------------------------
async function scansPage() {
  const list = await api("/v1/scans");
  const rows = list.data.map((s) =>
    el(
      "tr",
      { "data-scan": s.id },
      el("td", {}, el("a", { href: `#/scans/${s.id}` }, s.name)),
      el("td", { class: "mono" }, s.source),
      el("td", {}, when(s.created_at)),
      el("td", {}, s.finished_at ? when(s.finished_at) : "running or stopped"),
      el("td", { class: "num" }, s.total),
      el("td", {}, countsText(s.counts)),
    ),
  );
  return el(
    "section",
    {},
    el("h2", {}, "Scans"),
    rows.length
      ? el("table", { id: "scans" }, el("tr", {}, ["scan", "targets file", "started", "finished", "targets", "audits"].map((t) => el("th", {}, t))), rows)
      : el("p", { class: "note", id: "empty" }, "No scan is recorded in this database (hspi scan records them)."),
  );
}

async function scanAudits(id) {
  const audits = [];
  let cursor = null;
  do {
    const page = await api("/v1/audits", { scan_id: id, limit: 200, cursor });
    audits.push(...page.data);
    cursor = page.next_cursor;
  } while (cursor && audits.length < MAX_ANSWERS_SHOWN);
  return audits;
}

async function scanPage(id) {
  const [scan, audits] = await Promise.all([api(`/v1/scans/${encodeURIComponent(id)}`), scanAudits(id)]);
  const verdicts = {};
  for (const a of audits) verdicts[a.verdict || "-"] = (verdicts[a.verdict || "-"] || 0) + 1;
  audits.sort((a, b) => (a.label || a.endpoint).localeCompare(b.label || b.endpoint));
  const rows = audits.map((a) => {
    const claimed = Object.keys(a.claim || {});
    const leading = [...claimed.filter((h) => h !== "full"), "full"].filter((h) => a.progress.leading[h]).map((h) => `${h}=${a.progress.leading[h]}`);
    return el(
      "tr",
      { "data-audit": a.id },
      el("td", {}, el("a", { href: `#/audits/${a.id}` }, a.label || a.id.slice(0, 8))),
      el("td", { class: "mono" }, a.endpoint),
      el("td", {}, claimText(a.claim)),
      el("td", { class: "status" }, word("status", a.status)),
      el("td", { class: "verdict" }, word("verdict", a.verdict)),
      el("td", {}, leading.join(", ") || "-"),
      el("td", { class: "num" }, `${a.progress.queries}/${a.progress.budget_queries}`),
      el("td", {}, a.error || a.stop || ""),
    );
  });
  const section = el(
    "section",
    { id: "scan" },
    el("h2", {}, "Scan ", el("span", { id: "scan-name" }, scan.name)),
    facts([
      ["targets file", el("span", { class: "mono" }, scan.source)],
      ["started", when(scan.created_at)],
      ["finished", scan.finished_at ? when(scan.finished_at) : "not yet"],
      ["targets", scan.total],
      ["audits", el("span", { id: "scan-counts" }, countsText(scan.counts))],
      ["verdicts", el("span", { id: "scan-verdicts" }, countsText(verdicts))],
    ]),
    el("h3", {}, "Targets"),
    el("table", { id: "scan-audits" }, el("tr", {}, ["target", "endpoint", "claim", "status", "verdict", "leading (claimed heads, platform)", "queries", "stopped / error"].map((t) => el("th", {}, t))), rows),
  );
  return [section, audits.some((a) => ACTIVE.includes(a.status))];
}

// -- the key -------------------------------------------------------------------------------------
function showKeyState() {
  const key = sessionStorage.getItem(KEY_ITEM);
  document.getElementById("key-state").textContent = key ? `key ${key.split("_")[1] || ""} in use for this tab` : "no key";
}

function setUp() {
  const form = document.getElementById("key-form");
  const input = document.getElementById("key-input");
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    const key = input.value.trim();
    if (key) sessionStorage.setItem(KEY_ITEM, key);
    input.value = "";
    showKeyState();
    render();
  });
  document.getElementById("key-forget").addEventListener("click", () => {
    sessionStorage.removeItem(KEY_ITEM);
    showKeyState();
    render();
  });
  window.addEventListener("hashchange", render);
  showKeyState();
  render();
}

setUp();
