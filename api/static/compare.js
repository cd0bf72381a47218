// The live model against its shadow model, per topic, over the explorer's time window: the
// topics with shadow scores there from GET /api/models/compare/topics, each one's comparison
// from GET /api/models/compare. The section stays hidden when no topic has a shadow model.

import { NotFound, getJson } from "./api.js";
import { clear, el, formatTime } from "./dom.js";

const MAX_TOPICS = 5; // without a topic filter, the first topics with a shadow model

function pct(value) {
  return typeof value === "number" ? `${(100 * value).toFixed(2)} %` : "–";
}

/** The comparison of ``topic`` over [start, end) (ISO times; either may be null), or null. */
async function comparison(topic, start, end) {
  const params = new URLSearchParams({ topic });
  if (start) params.set("start", start);
  if (end) params.set("end", end);
  try {
    return await getJson(`/api/models/compare?${params}`);
  } catch (error) {
    if (error instanceof NotFound) return null;
    throw error;
  }
}

function sideRow(role, side) {
  return el("tr", { "data-role": role },
    el("th", { scope: "row" }, role),
    el("td", { class: "version" }, side.version),
    el("td", { class: "num", "data-field": "fpr" }, pct(side.fpr)),
    el("td", { class: "num", "data-field": "flagged" }, side.flagged.toLocaleString("en")),
    el("td", { class: "num", "data-field": "flag_rate" }, pct(side.flag_rate)),
    el("td", { class: "num", "data-field": "precision" },
      `${pct(side.precision)} (${side.labelled} labelled)`),
  );
}

function render(result) {
  const rank = typeof result.rank_correlation === "number"
    ? result.rank_correlation.toFixed(2) : "–";
  return el("div", { class: "comparison", "data-topic": result.topic },
    el("h3", {}, `${result.topic}: ${result.scored.toLocaleString("en")} records scored by both`),
    el("table", {},
      el("thead", {}, el("tr", {},
        el("th", {}, ""), el("th", {}, "Model"), el("th", { class: "num" }, "Calibrated"),
        el("th", { class: "num" }, "Flagged"), el("th", { class: "num" }, "Flag rate"),
        el("th", { class: "num" }, "Precision"))),
      el("tbody", {}, sideRow("live", result.live), sideRow("shadow", result.shadow)),
    ),
    el("p", { class: "muted summary" },
      `Flagged by both ${result.both_flagged} of ${result.either_flagged} `
      + `(overlap ${pct(result.overlap)}); score rank correlation ${rank}; `
      + `${result.unlabelled_shadow_only} shadow-only flags nobody labelled. `
      + `${formatTime(result.start)} – ${formatTime(result.end)} UTC.`),
  );
}

/** The comparisons over [start, end) of ``topic`` (or, without one, of the first topics with
 * shadow scores in the window). */
export async function comparisons(topic, start, end) {
  const params = new URLSearchParams();
  if (start) params.set("start", start);
  if (end) params.set("end", end);
  const { topics } = await getJson(`/api/models/compare/topics?${params}`);
  const chosen = topic ? topics.filter((t) => t === topic) : topics.slice(0, MAX_TOPICS);
  const results = await Promise.all(chosen.map((t) => comparison(t, start, end)));
  return results.filter((r) => r !== null);
}

/** Fill ``section`` with ``results``; hidden when there are none. */
export function renderComparisons(section, results) {
  clear(section.querySelector(".comparisons")).append(...results.map(render));
  section.hidden = results.length === 0;
}
