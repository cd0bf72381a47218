// The selected record: severity, the score split into density and reconstruction, why (the
// feature bars), where (the latent map), the verdict form and history, the original record.

import { clear, el, formatNumber, formatTime, severityClass, svg } from "./dom.js";
import { drawFeatureBars } from "./featurebars.js";
import { drawLatentMap } from "./latentmap.js";
import { drawStrip } from "./strip.js";

export function severityBadge(severity, flagSeverity) {
  const title = typeof flagSeverity === "number"
    ? `severity ${formatNumber(severity)}; this model flags from ${formatNumber(flagSeverity)}`
    : `severity ${formatNumber(severity)}`;
  return el("span", { class: `badge ${severityClass(severity, flagSeverity)}`, title },
    formatNumber(severity));
}

export function verdictBadge(label) {
  if (!label) return el("span", { class: "muted" }, "–");
  const text = label === "true_alarm" ? "true alarm" : "false alarm";
  return el("span", { class: `verdict ${label}` }, text);
}

/** name -> the field's entry in the model's schema (kind, center, scale), when known. */
/** The Kafka key as text; a binary key (not UTF-8, or with NUL bytes) comes as hex digits. */
function keyText(d) {
  if (d.key == null) return "–";
  let utf8 = "";
  for (const byte of new TextEncoder().encode(d.key)) utf8 += String.fromCharCode(byte);
  return btoa(utf8) === d.key_base64 ? d.key : `0x${d.key} (binary)`;
}

function schemaFields(model) {
  const fields = model?.manifest?.schema?.fields ?? [];
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

function feedbackForm(d, onVerdict) {
  const note = el("input", { id: "feedback-note", type: "text", maxlength: 2000,
    placeholder: "Note (optional): why?" });
  const send = (label) => onVerdict(d.id, label, note.value);
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

/**
 * Fill `target` with record `d`. model: its /api/models entry (or undefined); onVerdict(id,
 * label, note) posts feedback; onClose goes back to the list (on a phone the detail covers it).
 */
export function renderDetail(target, d, { model, onVerdict, onClose }) {
  const where = `${d.topic} [${d.partition}] @ ${d.offset}`;
  clear(target).append(
    el("button", { type: "button", id: "close-detail", class: "quiet close", onclick: onClose },
      "← Back to the list"),
    el("header", { class: "detail-head" },
      el("div", { class: "detail-title" },
        el("h2", {}, d.record_id ? `Record ${d.record_id}` : `Flagged record #${d.id}`),
        el("p", { class: "muted" }, `${where} · key ${keyText(d)} · model ${d.model_version}`),
        el("p", { class: "muted" },
          `scored ${formatTime(d.scored_time)} · event ${formatTime(d.event_time)} UTC`),
      ),
      el("div", { class: "severity" }, severityBadge(d.severity, model?.flag_severity),
        el("small", {}, "severity")),
    ),
    scoreGrid(d),
    el("h3", {}, "What would be normal: the nearest normal record"),
    drawStrip(d.explanation.nearest_normal),
    el("h3", {}, d.explanation.nearest_normal
      ? "Why: fields by their share of the score"
      : "Why: fields the model could not reconstruct"),
    drawFeatureBars(d.explanation.features || [], schemaFields(model)),
    el("h3", {}, "Where: the latent map"),
    el("figure", { class: "map" },
      svg("svg", { id: "latent-map", role: "img", "aria-label": "latent map" }),
      el("figcaption", { id: "map-caption", class: "muted" })),
    el("h3", {}, "Verdict"),
    feedbackForm(d, onVerdict),
    el("h3", {}, "Original record"),
    el("pre", { class: "record" }, JSON.stringify(d.record, null, 2)),
  );
}

export function renderNoDetail(target) {
  clear(target).append(el("p", { class: "empty" }, "Select a record to see why it was flagged."));
}

/** The map of record `d`'s model, with `records` (the page) scored by the same model. */
export function drawMap(d, model, records, onSelect) {
  const target = document.getElementById("latent-map");
  if (!target || !d) return;
  const clusters = model?.manifest?.latent_map?.clusters ?? [];
  const toPoint = (r) => ({ id: r.id, xy: r.explanation.latent_2d, cluster: r.cluster });
  const points = records
    .filter((r) => r.model_version === d.model_version && r.explanation?.latent_2d && r.id !== d.id)
    .map(toPoint);
  if (d.explanation?.latent_2d) points.push(toPoint(d));
  const walk = d.explanation?.nearest_normal;
  const path = walk?.path?.length ? [walk.latent_2d, ...walk.path.map((p) => p.latent_2d)] : null;
  drawLatentMap(target, { clusters, points, selectedId: d.id, onSelect, path });
  const outside = target.querySelectorAll(".outlier").length;
  document.getElementById("map-caption").textContent = (clusters.length
    ? `${clusters.length} reference clusters (2σ ellipses) of model ${d.model_version}; `
      + `${points.length} flagged records of this page, the selected one ringed.`
    : "This model's manifest has no latent map: only the records are drawn.")
    + (outside ? ` ${outside} far outside the clusters: arrows on the edge point their way.` : "")
    + (path ? " The dashed line is the walk to its nearest normal record." : "");
}
