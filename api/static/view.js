// What the page shows, as plain data, and its place in the page's own URL: a link to the page
// opens the same filters, time range, sort order and selected record (for an incident channel).
// Pure functions: no DOM, no fetch.

/** Relative time ranges: name -> seconds back from now. */
export const RANGES = { "1h": 3_600, "24h": 86_400, "7d": 604_800 };
export const REFRESH_CHOICES = [0, 10, 30, 60]; // seconds; 0 = off
const DEFAULT_REFRESH = 30;
/** Filters that go to the API as they are (the time range is handled apart). */
export const FILTER_NAMES = [
  "time_field", "min_severity", "topic", "model_version", "cluster", "top_feature",
];

/** The default view: everything, newest first, nothing selected. */
export function emptyView() {
  return {
    range: "all", start: null, end: null, filters: {}, sort: "time", desc: true, id: null,
    refresh: DEFAULT_REFRESH,
  };
}

/** "2026-11-01 13:05" or "2026-11-01T13:05:00Z" -> "2026-11-01T13:05:00Z"; null if not a
 * UTC time in that form. Inputs are always UTC, on a 24-hour clock. */
export function parseUtc(text) {
  const match = /^(\d{4})-(\d{2})-(\d{2})(?:[ T](\d{2}):(\d{2})(?::(\d{2}))?(?:\.\d+)?)?Z?$/
    .exec(String(text).trim());
  if (!match) return null;
  const [, y, mo, d, h = "00", mi = "00", s = "00"] = match;
  const iso = `${y}-${mo}-${d}T${h}:${mi}:${s}Z`;
  const parsed = new Date(iso);
  // Date rolls 2026-02-31 over to March: refuse what does not read back the same
  if (Number.isNaN(parsed.getTime()) || parsed.toISOString().slice(0, 19) !== iso.slice(0, 19)) {
    return null;
  }
  return iso;
}

/** "2026-11-01T13:05:00Z" -> "2026-11-01 13:05:00", as the time inputs show it. */
export function showUtc(iso) {
  return iso ? iso.replace("T", " ").replace(/(\.\d+)?Z$/, "") : "";
}

/** The view in a URL's query string (the page's own parameters). */
export function readView(search) {
  const query = new URLSearchParams(search);
  const view = emptyView();
  const range = query.get("range");
  if (range in RANGES) view.range = range;
  for (const side of ["start", "end"]) {
    const iso = query.get(side) && parseUtc(query.get(side));
    if (iso) {
      view[side] = iso;
      view.range = "custom";
    }
  }
  for (const name of FILTER_NAMES) {
    const value = (query.get(name) ?? "").trim();
    if (value !== "") view.filters[name] = value;
  }
  if (query.get("sort") === "score") view.sort = "score";
  if (query.get("desc") === "false") view.desc = false;
  const id = Number(query.get("id"));
  if (Number.isSafeInteger(id) && id > 0) view.id = id;
  const refresh = Number(query.get("refresh") ?? DEFAULT_REFRESH);
  if (REFRESH_CHOICES.includes(refresh)) view.refresh = refresh;
  return view;
}

/** The query string of a view: only what differs from the default, so links stay short. */
export function writeView(view) {
  const query = new URLSearchParams();
  if (view.range in RANGES) query.set("range", view.range);
  if (view.range === "custom") {
    if (view.start) query.set("start", view.start);
    if (view.end) query.set("end", view.end);
  }
  for (const name of FILTER_NAMES) {
    if (view.filters[name] !== undefined) query.set(name, view.filters[name]);
  }
  if (view.sort !== "time") query.set("sort", view.sort);
  if (!view.desc) query.set("desc", "false");
  if (view.id) query.set("id", String(view.id));
  if (view.refresh !== DEFAULT_REFRESH) query.set("refresh", String(view.refresh));
  const text = query.toString();
  return text ? `?${text}` : "";
}

/** The [start, end) the view selects at time ``now`` (a Date), as ISO strings or null. */
export function timeBounds(view, now) {
  if (view.range in RANGES) {
    return { start: new Date(now.getTime() - RANGES[view.range] * 1000).toISOString(), end: null };
  }
  if (view.range === "custom") return { start: view.start, end: view.end };
  return { start: null, end: null };
}

/** The API's filter parameters for the view at ``now`` (no sort, no paging). */
export function filterParams(view, now) {
  const params = new URLSearchParams();
  const { start, end } = timeBounds(view, now);
  if (start) params.set("start", start);
  if (end) params.set("end", end);
  for (const name of FILTER_NAMES) {
    if (view.filters[name] !== undefined) params.set(name, view.filters[name]);
  }
  return params;
}
