// The explorer: filters -> GET /api/flagged (keyset pages), a record -> GET /api/flagged/{id},
// its model's reference clusters -> GET /api/models/{version}, verdicts -> POST .../feedback.
// With a token configured on the server, the page asks for it once per browser tab.

import { clear, el, formatNumber, formatTime, severityClass, svg } from "./dom.js";
import { drawFeatureBars } from "./featurebars.js";
import { clusterColour, drawLatentMap } from "./latentmap.js";

const PAGE_SIZE = 25;
const TOKEN_KEY = "latentwatch.token";
const $ = (id) => document.getElementById(id);

const state = {
  filters: new URLSearchParams(), // the applied filters: edits count once submitted
  cursors: [null], // cursor of each page visited; cursors[i] opens page i
  page: 0,
  next: null,
  records: [],
  selectedId: null,
  detail: null,
  models: new Map(), // version -> model (manifest with latent_map)
  selecting: 0, // ignores answers to superseded selections
};

class AuthNeeded extends Error {}

function setStatus(text, isError = false) {
  $("status").textContent = text;
  $("status").classList.toggle("error", isError);
}

async function api(path, options = {}) {
  const headers = new Headers(options.headers || {});
  const token = sessionStorage.getItem(TOKEN_KEY);
  if (token) headers.set("Authorization", `Bearer ${token}`);
  const response = await fetch(path, { ...options, headers });
  if (response.status === 401) {
    askForToken(token ? "That token was refused." : "This server needs an API token.");
    throw new AuthNeeded();
  }
  if (!response.ok) throw new Error(await errorText(response));
  return response;
}

async function errorText(response) {
  try {
    const body = await response.json();
    if (typeof body.detail === "string") return body.detail;
    if (Array.isArray(body.detail)) {
      return body.detail.map((e) => `${e.loc.slice(1).join(".")}: ${e.msg}`).join("; ");
    }
  } catch {
    // not JSON: fall through
  }
  return `HTTP ${response.status}`;
}

function report(error) {
  if (!(error instanceof AuthNeeded)) setStatus(error.message, true);
}

function askForToken(message) {
  $("token-form").hidden = false;
  $("token-message").textContent = message;
  $("token-input").focus();
}

// --- filters and the list -----------------------------------------------------------------

function filterParams() {
  const params = new URLSearchParams();
  for (const [name, raw] of new FormData($("filters"))) {
    const value = String(raw).trim();
    if (value === "") continue;
    if (name === "start" || name === "end") {
      params.set(name, `${value.length === 16 ? `${value}:00` : value}Z`); // inputs are UTC
    } else {
      params.set(name, value);
    }
  }
  return params;
}

async function loadPage() {
  const params = new URLSearchParams(state.filters); // a cursor belongs to its query
  params.set("limit", PAGE_SIZE);
  const cursor = state.cursors[state.page];
  if (cursor) params.set("cursor", cursor);
  setStatus("Loading…");
  const body = await (await api(`/api/flagged?${params}`)).json();
  state.records = body.records;
  state.next = body.next_cursor;
  renderTable();
  const first = state.page * PAGE_SIZE + 1;
  $("page-info").textContent = body.count ? `${first}–${first + body.count - 1}` : "";
  $("prev-page").disabled = state.page === 0;
  $("next-page").disabled = !state.next;
  setStatus(`${body.count} record${body.count === 1 ? "" : "s"} on this page`);
  const stillListed = state.records.some((r) => r.id === state.selectedId);
  if (!stillListed && state.records.length) await select(state.records[0].id);
  else if (!state.records.length) renderNoDetail();
  else drawMap();
}

function renderTable() {
  const body = clear($("records").tBodies[0]);
  $("empty").hidden = state.records.length > 0;
  for (const r of state.records) {
    const row = el("tr", {
      tabindex: 0, "data-id": r.id, class: r.id === state.selectedId ? "selected" : null,
      onclick: () => select(r.id).catch(report),
      onkeydown: (event) => { if (event.key === "Enter") select(r.id).catch(report); },
    },
      el("td", {}, formatTime(r.scored_time)),
      el("td", {}, r.topic),
      el("td", {}, severityBadge(r.severity)),
      el("td", { class: "num" }, formatNumber(r.score)),
      el("td", { class: "num" }, el("span", { class: "dot", "data-cluster": r.cluster }), r.cluster),
      el("td", {}, r.top_feature ?? "–"),
      el("td", {}, verdictBadge(r.label)),
    );
    row.querySelector(".dot").style.background = clusterColour(r.cluster);
    body.append(row);
  }
}

function severityBadge(severity) {
  return el("span", { class: `badge ${severityClass(severity)}` }, formatNumber(severity));
}

function verdictBadge(label) {
  if (!label) return el("span", { class: "muted" }, "–");
  const text = label === "true_alarm" ? "true alarm" : "false alarm";
  return el("span", { class: `verdict ${label}` }, text);
}

// --- the selected record --------------------------------------------------------------------

async function model(version) {
  if (!state.models.has(version)) {
    state.models.set(version, await (await api(`/api/models/${encodeURIComponent(version)}`)).json());
  }
  return state.models.get(version);
}

async function select(id) {
  const ticket = ++state.selecting;
  state.selectedId = id;
  for (const row of $("records").tBodies[0].rows) {
    row.classList.toggle("selected", Number(row.dataset.id) === id);
  }
  const detail = await (await api(`/api/flagged/${id}`)).json();
  await model(detail.model_version).catch(() => null); // the map is drawn without clusters
  if (ticket !== state.selecting) return;
  state.detail = detail;
  renderDetail(detail);
}

function renderNoDetail() {
  state.selectedId = null;
  state.detail = null;
  clear($("detail")).append(el("p", { class: "empty" }, "Select a record to see why it was flagged."));
}

function renderDetail(d) {
  const where = `${d.topic} [${d.partition}] @ ${d.offset}`;
  clear($("detail")).append(
    el("header", { class: "detail-head" },
      el("div", {},
        el("h2", {}, d.record_id ? `Record ${d.record_id}` : `Flagged record #${d.id}`),
        el("p", { class: "muted" }, `${where} · key ${keyText(d)} · model ${d.model_version}`),
        el("p", { class: "muted" },
          `scored ${formatTime(d.scored_time)} · event ${formatTime(d.event_time)} UTC`),
      ),
      el("div", { class: "severity" }, severityBadge(d.severity), el("small", {}, "severity")),
    ),
    scoreGrid(d),
    el("h3", {}, "Why: fields the model could not reconstruct"),
    drawFeatureBars(d.explanation.features || [], schemaFields(d.model_version)),
    el("h3", {}, "Where: the latent map"),
    el("figure", { class: "map" },
      svg("svg", { id: "latent-map", role: "img", "aria-label": "latent map" }),
      el("figcaption", { id: "map-caption", class: "muted" })),
    el("h3", {}, "Verdict"),
    feedbackForm(d),
    el("h3", {}, "Original record"),
    el("pre", { class: "record" }, JSON.stringify(d.record, null, 2)),
  );
  drawMap();
}

/** The Kafka key as text; a binary key (not UTF-8, or with NUL bytes) comes as hex digits. */
function keyText(d) {
  if (d.key == null) return "–";
  let utf8 = "";
  for (const byte of new TextEncoder().encode(d.key)) utf8 += String.fromCharCode(byte);
  return btoa(utf8) === d.key_base64 ? d.key : `0x${d.key} (binary)`;
}

/** name -> the field's entry in the model's schema (kind, center, scale), when the model is known. */
function schemaFields(version) {
  const fields = state.models.get(version)?.manifest?.schema?.fields ?? [];
  return new Map(fields.map((f) => [f.name, f]));
}

function scoreGrid(d) {
  const cell = (label, value, note) => el("div", { class: "metric" },
    el("span", { class: "metric-label" }, label), el("strong", {}, value),
    note ? el("small", { class: "muted" }, note) : null);
  return el("div", { class: "metrics" },
    cell("score", `${formatNumber(d.score)} nats`, "density + reconstruction"),
    cell("p-value", formatNumber(d.p_value, { p: true }), "combined, calibrated"),
    cell("density", `${formatNumber(d.density)} nats`, `p = ${formatNumber(d.density_p_value, { p: true })}`),
    cell("reconstruction", `${formatNumber(d.reconstruction)} nats`,
      `p = ${formatNumber(d.reconstruction_p_value, { p: true })}`),
    cell("nearest cluster", `C${d.cluster}`, `distance ${formatNumber(d.cluster_distance)}`),
  );
}

function drawMap() {
  const target = $("latent-map");
  const d = state.detail;
  if (!target || !d) return;
  const latentMap = state.models.get(d.model_version)?.manifest?.latent_map;
  const clusters = latentMap?.clusters ?? [];
  const toPoint = (r) => ({ id: r.id, xy: r.explanation.latent_2d, cluster: r.cluster });
  const points = state.records
    .filter((r) => r.model_version === d.model_version && r.explanation?.latent_2d && r.id !== d.id)
    .map(toPoint);
  if (d.explanation?.latent_2d) points.push(toPoint(d));
  drawLatentMap(target, {
    clusters, points, selectedId: d.id, onSelect: (id) => select(id).catch(report),
  });
  $("map-caption").textContent = clusters.length
    ? `${clusters.length} reference clusters (2σ ellipses) of model ${d.model_version}; `
      + `${points.length} flagged records of this page, the selected one ringed.`
    : "This model's manifest has no latent map: only the records are drawn.";
}

function feedbackForm(d) {
  const note = el("input", { id: "feedback-note", type: "text", maxlength: 2000,
    placeholder: "Note (optional): why?" });
  const send = (label) => sendFeedback(d.id, label, note.value).catch(report);
  const history = el("ul", { class: "history" },
    d.feedback.map((f) => el("li", {}, verdictBadge(f.label), ` ${formatTime(f.created_at)} `,
      f.note ? el("q", {}, f.note) : null)));
  return el("div", { class: "feedback" },
    el("div", { class: "feedback-row" },
      el("button", { type: "button", id: "mark-true", class: "true_alarm", onclick: () => send("true_alarm") },
        "True alarm"),
      el("button", { type: "button", id: "mark-false", class: "false_alarm", onclick: () => send("false_alarm") },
        "False alarm"),
      note),
    d.feedback.length ? history : el("p", { class: "muted" }, "No verdict yet."));
}

async function sendFeedback(id, label, note) {
  const response = await api(`/api/flagged/${id}/feedback`, {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify({ label, note: note.trim() || null }),
  });
  const detail = await response.json();
  const listed = state.records.find((r) => r.id === id);
  if (listed) listed.label = detail.label;
  renderTable();
  if (state.selectedId === id) {
    state.detail = detail;
    renderDetail(detail);
  }
  setStatus(`Saved: record ${detail.record_id ?? id} marked as ${label.replace("_", " ")}.`);
}

// --- options, export, start-up ----------------------------------------------------------------

async function loadOptions() {
  const models = await (await api("/api/models")).json();
  const select = clear($("model-select"));
  select.append(el("option", { value: "" }, "any"));
  const features = new Set();
  for (const m of models) {
    state.models.set(m.version, m);
    select.append(el("option", { value: m.version }, `${m.version} (${m.flagged})`));
    for (const field of m.manifest?.schema?.fields ?? []) features.add(field.name);
  }
  clear($("feature-options")).append(...[...features].sort().map((f) => el("option", { value: f })));
  const stats = await (await api("/api/stats?bucket=366d")).json();
  clear($("topic-options")).append(...stats.topics.map((t) => el("option", { value: t.topic })));
}

async function exportRows(format) {
  const params = new URLSearchParams(state.filters);
  params.set("format", format);
  setStatus(`Exporting ${format.toUpperCase()}…`);
  const response = await api(`/api/flagged?${params}`);
  const link = el("a", { href: URL.createObjectURL(await response.blob()), download: `flagged.${format}` });
  link.click();
  URL.revokeObjectURL(link.href);
  const truncated = response.headers.get("X-Latentwatch-Truncated") === "true";
  setStatus(truncated ? "Exported the first rows only: narrow the filters for the rest." : "Exported.");
}

function restart() {
  state.filters = filterParams();
  state.cursors = [null];
  state.page = 0;
  return loadPage();
}

async function start() {
  $("token-form").hidden = true;
  $("forget-token").hidden = !sessionStorage.getItem(TOKEN_KEY);
  await loadOptions();
  await restart();
}

function wire() {
  $("filters").addEventListener("submit", (event) => {
    event.preventDefault();
    restart().catch(report);
  });
  $("filters").addEventListener("reset", () => setTimeout(() => restart().catch(report)));
  $("next-page").addEventListener("click", () => {
    state.cursors[state.page + 1] = state.next;
    state.page += 1;
    loadPage().catch(report);
  });
  $("prev-page").addEventListener("click", () => {
    state.page = Math.max(0, state.page - 1);
    loadPage().catch(report);
  });
  $("export-csv").addEventListener("click", () => exportRows("csv").catch(report));
  $("export-jsonl").addEventListener("click", () => exportRows("jsonl").catch(report));
  $("token-form").addEventListener("submit", (event) => {
    event.preventDefault();
    sessionStorage.setItem(TOKEN_KEY, $("token-input").value.trim());
    $("token-input").value = "";
    start().catch(report);
  });
  $("forget-token").addEventListener("click", () => {
    sessionStorage.removeItem(TOKEN_KEY);
    window.location.reload();
  });
}

wire();
start().catch(report);
