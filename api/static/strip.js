// The nearest normal record as an interpolation strip: one row per changed field, columns
// from the nearest normal record (left) to the actual one (right); a number moves linearly
// between the two, a category, boolean or missing value switches half way. The cells that
// differ from the nearest normal record are highlighted, so the eye follows what changes.

import { asNumber, el, formatNumber, formatValue } from "./dom.js";

export const STRIP_STEPS = [0, 0.25, 0.5, 0.75, 1];

/** The value of a field at share `a` of the way from the normal value to the actual one. */
export function between(normal, actual, a) {
  if (typeof normal === "number" && typeof actual === "number") {
    return normal + (actual - normal) * a;
  }
  return a < 0.5 ? normal : actual;
}

function same(x, y) {
  if (typeof x === "number" && typeof y === "number") return Math.abs(x - y) <= 1e-12 * Math.max(1, Math.abs(y));
  return x === y;
}

/** The strip of `walk` (explanation.nearest_normal), or a note when there is none. */
export function drawStrip(walk) {
  if (!walk) {
    return el("p", { id: "nearest-normal", class: "muted" },
      "Stored before nearest normal records were computed.");
  }
  if (!walk.changes.length) {
    return el("p", { id: "nearest-normal", class: "muted" },
      "The model scores this record normal: nothing to change.");
  }
  const head = el("tr", {}, el("th", {}, "field"),
    ...STRIP_STEPS.map((a) => el("th", {}, a === 0 ? "nearest normal" : a === 1 ? "actual" : `${a * 100} %`)),
    el("th", { title: "nats of (score − nearest normal score)" }, "attribution"));
  const rows = walk.changes.map((c) => el("tr", { "data-field": c.name },
    el("th", { class: "field-name" }, c.name),
    ...STRIP_STEPS.map((a) => {
      const value = between(c.normal, c.actual, a);
      const changed = !same(value, c.normal);
      return el("td", { class: changed ? "strip-cell changed" : "strip-cell", "data-step": a },
        formatValue(value));
    }),
    el("td", { class: "attribution" }, `${formatNumber(c.attribution)} nats`)));
  const total = walk.changes.reduce((s, c) => s + asNumber(c.attribution), 0);
  const reached = walk.reached
    ? `scores normal (p = ${formatNumber(walk.normal_p_value, { p: true })})`
    : `is the best the walk found; still unusual (p = ${formatNumber(walk.normal_p_value, { p: true })})`;
  const along = walk.path.map((p) => formatNumber(p.p_value, { p: true })).join(" → ");
  return el("div", { id: "nearest-normal" },
    el("table", { class: "strip" }, el("thead", {}, head), el("tbody", {}, ...rows)),
    el("p", { class: "muted" },
      `Changing ${walk.changes.length} field${walk.changes.length > 1 ? "s" : ""}, the record ${reached}. `
      + `The attributions add up to ${formatNumber(total)} nats, the score's difference `
      + `(${formatNumber(walk.score)} − ${formatNumber(walk.normal_score)}). p-value along the walk: ${along}.`));
}
