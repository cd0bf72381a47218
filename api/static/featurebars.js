// The "why" of a record: for each explained field, the record's value (actual) beside the value
// the model reconstructed (expected), and the field's part of the reconstruction score.
// A numeric field gets both values as marks on one axis of its own, shaded with the model's
// typical range when the manifest's schema has it; the distance between the marks is what the
// model could not explain. A categorical or boolean field shows the two values as text.

import { el, formatNumber, formatValue } from "./dom.js";

const TYPICAL_SCALES = 2; // the shaded band: the field's centre ± 2 scales (robust sigmas)
const PAD = 0.06; // of the axis span on each side, so that a mark at an end stays whole

const finite = (value) => typeof value === "number" && Number.isFinite(value);
const isMissing = (value) => value === null || value === undefined;

/** Whether a field can be drawn on a number line: its manifest kind (when known) is numeric,
 * expected is a number and actual is a number or missing. */
function isNumericFeature(feature, field) {
  if (field?.kind && field.kind !== "numeric") return false;
  return finite(feature.expected) && (isMissing(feature.actual) || finite(feature.actual));
}

/** The model's typical range of a numeric field, [centre - 2 scale, centre + 2 scale], or null
 * when the manifest does not say. */
function typicalRange(field) {
  if (!field || !finite(field.center) || !finite(field.scale) || field.scale <= 0) return null;
  return [field.center - TYPICAL_SCALES * field.scale, field.center + TYPICAL_SCALES * field.scale];
}

/** One axis for a field, with every value given (and the typical range) inside it, padded:
 * a function from a value to its position in percent of the axis. */
function featureAxis(values, range) {
  const points = [...values, ...(range ?? [])].filter(finite);
  let lo = Math.min(...points);
  let hi = Math.max(...points);
  if (!(hi > lo)) { // one value only: centre it
    const half = Math.abs(lo) * 0.1 || 1;
    lo -= half;
    hi += half;
  }
  const pad = (hi - lo) * PAD;
  lo -= pad;
  hi += pad;
  return (value) => (100 * (value - lo)) / (hi - lo);
}

function placed(tag, attributes, left, width = null) {
  const node = el(tag, attributes);
  node.style.left = `${left}%`;
  if (width !== null) node.style.width = `${width}%`;
  return node;
}

function numericPicture(f, field) {
  const range = typicalRange(field);
  const at = featureAxis([f.actual, f.expected], range);
  const label = `${f.name}: actual ${formatValue(f.actual)}, expected ${formatValue(f.expected)}`;
  const track = el("span", { class: "feature-scale", role: "img", "aria-label": label });
  if (range) {
    const [from, to] = range.map(at);
    const [lo, hi] = range.map((value) => formatNumber(value));
    const title = `typical: ${lo} to ${hi} (the model's centre ± ${TYPICAL_SCALES} scales)`;
    track.append(placed("span", { class: "typical", title }, from, to - from));
  }
  if (!isMissing(f.actual)) {
    const [a, b] = [at(f.actual), at(f.expected)].sort((x, y) => x - y);
    track.append(placed("span", { class: "gap" }, a, b - a));
  }
  track.append(placed("span", {
    class: "mark expected", "data-value": f.expected, title: `expected ${formatValue(f.expected)}`,
  }, at(f.expected)));
  if (!isMissing(f.actual)) {
    track.append(placed("span", {
      class: "mark actual", "data-value": f.actual, title: `actual ${formatValue(f.actual)}`,
    }, at(f.actual)));
  }
  return [
    track,
    el("span", { class: "feature-values" },
      el("span", { class: "actual" }, formatValue(f.actual)),
      el("span", { class: "muted" }, " vs "),
      el("span", { class: "expected" }, formatValue(f.expected))),
  ];
}

function textPicture(f) {
  const same = formatValue(f.actual) === formatValue(f.expected);
  return el("span", { class: "feature-categories" },
    el("span", { class: "value actual", title: "actual: the record's value" }, formatValue(f.actual)),
    el("span", { class: "muted" }, same ? " = expected " : " ≠ expected "),
    el("span", { class: "value expected", title: "expected: what the model reconstructed" },
      formatValue(f.expected)));
}

function contribution(f, largest) {
  const fill = el("span", { class: "fill" });
  fill.style.width = `${Math.max(2, (100 * (f.contribution || 0)) / largest)}%`;
  const share = isMissing(f.share) ? "" : ` · ${Math.round(f.share * 100)}%`;
  return el("span", { class: "feature-contribution", title: "contribution to the reconstruction score" },
    `${formatNumber(f.contribution)} nats${share}`,
    el("span", { class: "contribution-bar" }, fill));
}

function legend(withRange) {
  const item = (sample, text) => el("span", { class: "legend-item" }, el("span", { class: sample }), text);
  return el("div", { class: "feature-legend muted" },
    item("mark actual", "actual (the record)"),
    item("mark expected", "expected (reconstructed)"),
    withRange ? item("typical", `typical range (centre ± ${TYPICAL_SCALES} scales)`) : null);
}

/** The explained fields, most surprising first; ``fields`` maps a name to its manifest schema
 * entry (kind, center, scale), possibly empty. */
export function drawFeatureBars(features, fields = new Map()) {
  if (!features.length) return el("p", { class: "muted" }, "No field explanation stored.");
  const largest = Math.max(...features.map((f) => f.contribution || 0), 1e-9);
  const list = el("div", { class: "features" });
  let numeric = false;
  let withRange = false;
  for (const f of features) {
    const field = fields.get(f.name);
    const onAxis = isNumericFeature(f, field);
    numeric ||= onAxis;
    withRange ||= onAxis && typicalRange(field) !== null;
    list.append(el("div", {
      class: "feature-row", "data-feature": f.name, "data-kind": onAxis ? "numeric" : "text",
    },
      el("span", { class: "feature-name" }, f.name),
      onAxis ? numericPicture(f, field) : textPicture(f),
      contribution(f, largest),
    ));
  }
  return el("div", {}, numeric ? legend(withRange) : null, list);
}
