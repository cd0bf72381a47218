// Small DOM and formatting helpers. Record values are untrusted text: they are only ever set
// with textContent (never innerHTML), so a record cannot inject markup into the page.

const SVG_NS = "http://www.w3.org/2000/svg";

function build(element, attributes, children) {
  for (const [name, value] of Object.entries(attributes || {})) {
    if (value === undefined || value === null || value === false) continue;
    if (name === "class") element.setAttribute("class", value);
    else if (name.startsWith("on")) element.addEventListener(name.slice(2), value);
    else element.setAttribute(name, value === true ? "" : String(value));
  }
  for (const child of children.flat()) {
    if (child === undefined || child === null || child === false) continue;
    element.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return element;
}

/** An HTML element: el("td", {class: "num"}, "3.2"). */
export function el(tag, attributes, ...children) {
  return build(document.createElement(tag), attributes, children);
}

/** An SVG element, same signature as el(). */
export function svg(tag, attributes, ...children) {
  return build(document.createElementNS(SVG_NS, tag), attributes, children);
}

export function clear(element) {
  element.replaceChildren();
  return element;
}

/** "2026-11-01 12:00:03" from an ISO-8601 UTC time (24-hour clock, always UTC). */
export function formatTime(iso) {
  if (!iso) return "–";
  return iso.replace("T", " ").replace(/(\.\d+)?(Z|[+-]00:00)$/, "");
}

const NON_FINITE = { Infinity: Infinity, "-Infinity": -Infinity, NaN: NaN };

/** A number as the API serves it: a JSON number, or "Infinity" / "-Infinity" / "NaN". */
export function asNumber(value) {
  if (typeof value === "string" && value in NON_FINITE) return NON_FINITE[value];
  return value;
}

/** Short, readable numbers: 3 significant digits for small ones, p-values in e-notation. */
export function formatNumber(served, { p = false } = {}) {
  const value = asNumber(served);
  if (value === null || value === undefined) return "–";
  if (typeof value !== "number") return String(value);
  if (Number.isNaN(value)) return "NaN";
  if (!Number.isFinite(value)) return value > 0 ? "∞" : "−∞";
  if (p && value !== 0 && value < 0.001) return value.toExponential(1);
  if (Number.isInteger(value)) return String(value);
  const digits = Math.abs(value) >= 100 ? 1 : Math.abs(value) >= 1 ? 2 : 3;
  return value.toFixed(digits);
}

/** A record's value for display: numbers formatted, everything else as JSON-ish text. */
export function formatValue(value) {
  if (value === null || value === undefined) return "missing";
  if (typeof value === "number") return formatNumber(value);
  if (typeof value === "string") return value;
  return JSON.stringify(value);
}

/**
 * The colour band of a severity, relative to the severity its model flags from (the
 * model's threshold, /api/models flag_severity): grey below it, then the rest of the scale to
 * 100 in three equal bands. Without a known threshold the whole 0..100 scale is banded.
 */
export function severityClass(served, flagSeverity = null) {
  const severity = asNumber(served);
  const from = typeof flagSeverity === "number" ? flagSeverity : 0;
  if (!(severity >= from)) return "sev-below";
  const t = (severity - from) / Math.max(100 - from, 1e-9);
  if (t >= 2 / 3) return "sev-high";
  if (t >= 1 / 3) return "sev-mid";
  return "sev-low";
}
