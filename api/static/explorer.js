// The explorer: the view (filters, time range, sort, selected record: also the page's URL) ->
// GET /api/flagged (keyset pages), the timeline and total from GET /api/stats, a record ->
// GET /api/flagged/{id}, its model (reference clusters, flagging threshold) -> GET /api/models,
// live against shadow models over the timeline's window -> GET /api/models/compare[/topics],
// verdicts -> POST .../feedback. Auto-refresh counts what arrived since the load and offers it.

import { AuthNeeded, TOKEN_KEY, api, getJson, whenAuthNeeded } from "./api.js";
import { comparisons, renderComparisons } from "./compare.js";
import { clear, el, formatNumber, formatTime } from "./dom.js";
import { drawMap, renderDetail, renderNoDetail, severityBadge, verdictBadge } from "./detail.js";
import { clusterColour } from "./latentmap.js";
import { bucketFloor, bucketLabel, chooseBucket, drawTimeline } from "./timeline.js";
import {
  FILTER_NAMES, RANGES, emptyView, filterParams, parseUtc, readView, showUtc, timeBounds, writeView,
} from "./view.js";

const PAGE_SIZE = 25;
const $ = (id) => document.getElementById(id);
const phone = window.matchMedia("(max-width: 760px)");

const state = {
  view: readView(window.location.search), // applied: edits in the form count once submitted
  loadedAt: new Date(), // relative ranges are resolved against it, until the next load
  cursors: [null], // cursor of each page visited; cursors[i] opens page i
  page: 0,
  next: null,
  records: [],
  total: null,
  detail: null,
  models: new Map(), // version -> /api/models entry (manifest, flag_severity)
  selecting: 0, // ignores answers to superseded selections
  loading: 0, // ignores answers to superseded page loads
  overviewing: 0, // and to superseded timeline loads
  comparing: 0, // and to superseded comparisons
  timeline: null,
  since: null, // {start, count}: matching records at or after the newest one at load time
  timer: null,
};

function setStatus(text, isError = false) {
  $("status").textContent = text;
  $("status").classList.toggle("error", isError);
}

function report(error) {
  if (!(error instanceof AuthNeeded)) setStatus(error.message, true);
}

function askForToken(message) {
  $("token-form").hidden = false;
  $("token-message").textContent = message;
  $("token-input").focus();
}

function keepUrl() {
  const url = `${window.location.pathname}${writeView(state.view)}`;
  window.history.replaceState(null, "", url);
}

/** The API's filter parameters of the current load (absolute times). */
function baseParams() {
  return filterParams(state.view, state.loadedAt);
}

// --- the filter form <-> the view ----------------------------------------------------------

function viewToForm(view) {
  const form = $("filters");
  form.elements.range.value = view.range;
  form.elements.start.value = view.range === "custom" ? showUtc(view.start) : "";
  form.elements.end.value = view.range === "custom" ? showUtc(view.end) : "";
  for (const name of FILTER_NAMES) {
    const field = form.elements[name];
    const value = view.filters[name] ?? (name === "time_field" ? "scored" : "");
    if (field.tagName === "SELECT" && ![...field.options].some((o) => o.value === value)) {
      field.append(el("option", { value }, value));
    }
    field.value = value;
  }
  $("refresh").value = String(view.refresh);
  for (const th of $("records").tHead.querySelectorAll("th[data-sort]")) {
    const sorted = th.dataset.sort === view.sort;
    th.setAttribute("aria-sort", sorted ? (view.desc ? "descending" : "ascending") : "none");
  }
}

/** The view the form describes (sort, selection and refresh kept), or an Error. */
function formToView() {
  const form = $("filters");
  const view = { ...state.view, filters: {}, id: null, start: null, end: null };
  view.range = form.elements.range.value;
  if (view.range === "custom") {
    for (const side of ["start", "end"]) {
      const text = form.elements[side].value.trim();
      if (!text) continue;
      view[side] = parseUtc(text);
      if (!view[side]) {
        return new Error(`${side === "start" ? "From" : "To"} "${text}" is not a UTC time: `
          + "write it as 2026-11-01 13:05 (24-hour clock)");
      }
    }
    if (!view.start && !view.end) view.range = "all";
  }
  for (const name of FILTER_NAMES) {
    const value = String(form.elements[name].value).trim();
    if (value !== "" && !(name === "time_field" && value === "scored")) view.filters[name] = value;
  }
  return view;
}

// --- the table ------------------------------------------------------------------------------

function flagSeverity(version) {
  return state.models.get(version)?.flag_severity ?? null;
}

function renderTable() {
  const body = clear($("records").tBodies[0]);
  $("empty").hidden = state.records.length > 0;
  for (const r of state.records) {
    const text = (value) => el("td", { class: "text", title: value ?? "" }, value ?? "–");
    const row = el("tr", {
      tabindex: 0, "data-id": r.id, class: r.id === state.view.id ? "selected" : null,
      onclick: () => select(r.id).catch(report),
      onkeydown: (event) => { if (event.key === "Enter") select(r.id).catch(report); },
    },
      el("td", { class: "time" }, formatTime(r.scored_time)),
      text(r.topic),
      el("td", {}, severityBadge(r.severity, flagSeverity(r.model_version))),
      el("td", { class: "num" }, formatNumber(r.score)),
      el("td", { class: "num wide" }, el("span", { class: "dot" }), r.cluster),
      el("td", { class: "text wide", title: r.top_feature ?? "" }, r.top_feature ?? "–"),
      el("td", { class: "wide" }, verdictBadge(r.label)),
    );
    row.querySelector(".dot").style.background = clusterColour(r.cluster);
    body.append(row);
  }
  renderPageInfo();
}

function renderPageInfo() {
  const first = state.page * PAGE_SIZE + 1;
  const shown = state.records.length;
  const of = state.total === null ? "" : ` of ${state.total.toLocaleString("en")}`;
  $("page-info").textContent = shown ? `${first}–${first + shown - 1}${of}` : "";
  $("prev-page").disabled = state.page === 0;
  $("next-page").disabled = !state.next;
}

function failedLoad(error) {
  // never leave the rows of another query under an error: they would look like its answer
  state.records = [];
  state.next = null;
  clear($("records").tBodies[0]);
  $("page-info").textContent = "";
  $("empty").hidden = false;
  $("empty").textContent = error instanceof AuthNeeded ? "" : `Could not load: ${error.message}`;
  report(error);
}

async function loadPage() {
  const ticket = ++state.loading;
  const params = baseParams();
  params.set("sort", state.view.sort);
  params.set("desc", String(state.view.desc));
  params.set("limit", PAGE_SIZE);
  const cursor = state.cursors[state.page];
  if (cursor) params.set("cursor", cursor); // a cursor belongs to its query
  setStatus("Loading…");
  let body;
  try {
    body = await getJson(`/api/flagged?${params}`);
  } catch (error) {
    if (ticket === state.loading) failedLoad(error);
    return;
  }
  if (ticket !== state.loading) return;
  state.records = body.records;
  state.next = body.next_cursor;
  $("empty").textContent = "No flagged records match these filters.";
  renderTable();
  setStatus(`${body.count} record${body.count === 1 ? "" : "s"} on this page`);
  if (state.view.id && (!state.detail || state.detail.id !== state.view.id)) {
    await select(state.view.id); // a shared link may point beyond this page
  } else if (!state.view.id && state.records.length && !phone.matches) {
    await select(state.records[0].id, { open: false });
  } else if (!state.view.id) {
    renderNoDetail($("detail"));
  } else {
    redrawMap(); // the page's records around the selected one
  }
}

// --- the timeline, the total and what arrived since -----------------------------------------

async function first(params, desc) {
  const query = new URLSearchParams(params);
  query.set("limit", "1");
  query.set("desc", String(desc));
  const { records } = await getJson(`/api/flagged?${query}`);
  if (!records.length) return null;
  return state.view.filters.time_field === "event" ? records[0].event_time : records[0].scored_time;
}

async function loadOverview() {
  const ticket = ++state.overviewing;
  const params = baseParams();
  const bounds = timeBounds(state.view, state.loadedAt);
  const [newest, oldest] = await Promise.all([
    first(params, true), bounds.start ? null : first(params, false),
  ]);
  if (ticket !== state.overviewing) return;
  state.since = null;
  if (!newest) {
    state.total = 0;
    state.timeline = null;
    renderOverview();
    loadComparisons(bounds.start, bounds.end).catch(report); // never holding the view up
    return;
  }
  let fromMs = Date.parse(bounds.start ?? oldest);
  let toMs = bounds.end ? Date.parse(bounds.end)
    : state.view.range in RANGES ? state.loadedAt.getTime() : Date.parse(newest) + 1;
  const bucket = chooseBucket(Math.max(toMs - fromMs, 1000) / 1000);
  if (!bounds.start) fromMs = bucketFloor(fromMs, bucket.seconds); // whole first and last bars
  if (!bounds.end && !(state.view.range in RANGES)) {
    toMs = bucketFloor(toMs - 1, bucket.seconds) + bucket.seconds * 1000;
  }
  const stats = new URLSearchParams(params);
  stats.set("bucket", bucket.label);
  stats.set("start", new Date(fromMs).toISOString());
  if (!(state.view.range in RANGES)) stats.set("end", new Date(toMs).toISOString());
  const answer = await getJson(`/api/stats?${stats}`);
  if (ticket !== state.overviewing) return;
  state.total = answer.total;
  state.timeline = { buckets: answer.buckets, bucketSeconds: answer.bucket_seconds, fromMs, toMs };
  if (!bounds.end) state.since = { start: newest, count: await countSince(newest) };
  if (ticket !== state.overviewing) return;
  renderOverview();
  loadComparisons(new Date(fromMs).toISOString(), new Date(toMs).toISOString()).catch(report);
}

/** Live against shadow over the timeline's window (the API's last 24 h when it is open). */
async function loadComparisons(start, end) {
  const ticket = ++state.comparing;
  const found = await comparisons(state.view.filters.topic, start, end);
  if (ticket === state.comparing) renderComparisons($("compare"), found);
}

/** Matching records at or after ``start`` (the newest one at load, included). */
async function countSince(start) {
  const params = baseParams();
  params.set("start", start);
  params.set("bucket", "366d");
  return (await getJson(`/api/stats?${params}`)).total;
}

function renderOverview() {
  const total = state.total ?? 0;
  $("total").textContent = `${total.toLocaleString("en")} flagged record${total === 1 ? "" : "s"}`;
  renderPageInfo();
  $("new-records").hidden = true;
  const t = state.timeline;
  const caption = $("timeline-caption");
  if (!t) {
    clear($("timeline"));
    caption.textContent = "Nothing flagged matches these filters.";
    return;
  }
  const shares = t.buckets.some((b) => typeof b.flagged_share === "number");
  caption.textContent = `per ${bucketLabel(t.bucketSeconds)}`
    + (shares ? "; the line: share of the scored records that were flagged" : "")
    + ". Click a bar to show only its records.";
  drawTimeline($("timeline"), {
    ...t, picked: state.view.range === "custom" ? state.view : null,
    onPick: (start, end) => {
      applyView({ ...state.view, range: "custom", start, end, id: null }).catch(report);
    },
  });
}

async function tick() {
  if (!state.since || document.hidden) return;
  const count = await countSince(state.since.start);
  const fresh = count - state.since.count;
  const notice = $("new-records");
  notice.hidden = fresh <= 0;
  notice.textContent = `${fresh} new record${fresh === 1 ? "" : "s"} · show`;
}

function restartTimer() {
  clearInterval(state.timer);
  state.timer = state.view.refresh
    ? setInterval(() => tick().catch(report), state.view.refresh * 1000) : null;
}

// --- the selected record --------------------------------------------------------------------

async function model(version) {
  if (!state.models.has(version)) {
    state.models.set(version, await getJson(`/api/models/${encodeURIComponent(version)}`));
  }
  return state.models.get(version);
}

async function select(id, { open = true } = {}) {
  const ticket = ++state.selecting;
  state.view.id = id;
  keepUrl();
  for (const row of $("records").tBodies[0].rows) {
    row.classList.toggle("selected", Number(row.dataset.id) === id);
  }
  const detail = await getJson(`/api/flagged/${id}`);
  const known = await model(detail.model_version).catch(() => undefined); // drawn without it
  if (ticket !== state.selecting) return;
  state.detail = detail;
  renderDetail($("detail"), detail, { model: known, onVerdict: verdict, onClose: closeDetail });
  redrawMap();
  if (open && phone.matches) {
    document.body.classList.add("detail-open");
    $("detail").scrollTop = 0;
  }
}

function closeDetail() {
  document.body.classList.remove("detail-open");
  $("records").querySelector("tr.selected")?.focus();
}

function redrawMap() {
  const d = state.detail;
  if (!d) return;
  drawMap(d, state.models.get(d.model_version), state.records, (id) => select(id).catch(report));
}

function verdict(id, label, note) {
  sendFeedback(id, label, note).catch(report);
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
  if (state.view.id === id) {
    state.detail = detail;
    renderDetail($("detail"), detail, {
      model: state.models.get(detail.model_version), onVerdict: verdict, onClose: closeDetail,
    });
    redrawMap();
  }
  setStatus(`Saved: record ${detail.record_id ?? id} marked as ${label.replace("_", " ")}.`);
}

// --- options, export, start-up ----------------------------------------------------------------

async function loadOptions() {
  const models = await getJson("/api/models");
  const chooser = clear($("model-select"));
  chooser.append(el("option", { value: "" }, "any"));
  const features = new Set();
  for (const m of models) {
    state.models.set(m.version, m);
    chooser.append(el("option", { value: m.version }, `${m.version} (${m.flagged})`));
    for (const field of m.manifest?.schema?.fields ?? []) features.add(field.name);
  }
  clear($("feature-options")).append(...[...features].sort().map((f) => el("option", { value: f })));
  const stats = await getJson("/api/stats?bucket=366d");
  clear($("topic-options")).append(...stats.topics.map((t) => el("option", { value: t.topic })));
}

async function exportRows(format) {
  const params = baseParams();
  params.set("sort", state.view.sort);
  params.set("desc", String(state.view.desc));
  params.set("format", format);
  setStatus(`Exporting ${format.toUpperCase()}…`);
  const response = await api(`/api/flagged?${params}`);
  const link = el("a", { href: URL.createObjectURL(await response.blob()), download: `flagged.${format}` });
  link.click();
  URL.revokeObjectURL(link.href);
  const truncated = response.headers.get("X-Latentwatch-Truncated") === "true";
  setStatus(truncated ? "Exported the first rows only: narrow the filters for the rest." : "Exported.");
}

/** Show ``view``: from the first page, with a new "now" for relative ranges. */
async function applyView(view, { overview = true } = {}) {
  state.view = view;
  state.loadedAt = new Date();
  state.cursors = [null];
  state.page = 0;
  if (!view.id) state.detail = null;
  viewToForm(view);
  keepUrl();
  if (overview) {
    state.total = null;
    await Promise.all([loadPage(), loadOverview().catch(report)]);
  } else {
    await loadPage();
  }
}

async function start() {
  $("token-form").hidden = true;
  $("forget-token").hidden = !sessionStorage.getItem(TOKEN_KEY);
  await loadOptions();
  await applyView(state.view);
  restartTimer();
}

function wire() {
  whenAuthNeeded(askForToken);
  if (phone.matches) $("filter-panel").open = false;
  $("filters").addEventListener("submit", (event) => {
    event.preventDefault();
    const view = formToView();
    if (view instanceof Error) setStatus(view.message, true);
    else applyView(view).catch(report);
  });
  $("filters").addEventListener("reset", () => {
    setTimeout(() => applyView({ ...emptyView(), refresh: state.view.refresh }).catch(report));
  });
  for (const side of ["start", "end"]) { // typing a time chooses the from-to range
    $("filters").elements[side].addEventListener("input", () => {
      $("filters").elements.range.value = "custom";
    });
  }
  for (const th of $("records").tHead.querySelectorAll("th[data-sort]")) {
    th.querySelector("button").addEventListener("click", () => {
      const same = state.view.sort === th.dataset.sort;
      const view = { ...state.view, sort: th.dataset.sort, desc: same ? !state.view.desc : true };
      applyView(view, { overview: false }).catch(report);
    });
  }
  $("next-page").addEventListener("click", () => {
    state.cursors[state.page + 1] = state.next;
    state.page += 1;
    loadPage().catch(report);
  });
  $("prev-page").addEventListener("click", () => {
    state.page = Math.max(0, state.page - 1);
    loadPage().catch(report);
  });
  $("new-records").addEventListener("click", () => applyView(state.view).catch(report));
  $("refresh").addEventListener("change", () => {
    state.view.refresh = Number($("refresh").value);
    keepUrl();
    restartTimer();
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
  let resizing = null;
  window.addEventListener("resize", () => {
    clearTimeout(resizing);
    resizing = setTimeout(renderOverview, 150);
  });
}

wire();
start().catch(report);
