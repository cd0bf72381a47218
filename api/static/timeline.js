// The timeline above the table: flagged records per time bucket (bars) and, where the
// consumers' per-minute counts can tell, the flagged share of the records scored (a line),
// from GET /api/stats. A click (or Enter) on a bucket narrows the table to that bucket.

import { clear, svg } from "./dom.js";

const BUCKETS = [
  [60, "1m"], [120, "2m"], [300, "5m"], [600, "10m"], [900, "15m"], [1_800, "30m"],
  [3_600, "1h"], [7_200, "2h"], [10_800, "3h"], [21_600, "6h"], [43_200, "12h"],
  [86_400, "1d"], [172_800, "2d"], [604_800, "7d"], [2_592_000, "30d"], [7_776_000, "90d"],
  [31_622_400, "366d"],
];
export const MAX_BARS = 120;
const HEIGHT = 130;
const MARGIN = { left: 40, right: 52, top: 10, bottom: 20 };

/** The smallest bucket that cuts ``spanSeconds`` into at most MAX_BARS bars. */
export function chooseBucket(spanSeconds) {
  for (const [seconds, label] of BUCKETS) {
    if (spanSeconds / seconds <= MAX_BARS) return { seconds, label };
  }
  const [seconds, label] = BUCKETS[BUCKETS.length - 1];
  return { seconds, label };
}

/** Aligned to the epoch, as the API aligns its buckets. */
export function bucketFloor(ms, seconds) {
  return Math.floor(ms / (seconds * 1000)) * seconds * 1000;
}

function timeLabel(ms, spanMs) {
  const iso = new Date(ms).toISOString();
  if (spanMs <= 2 * 86_400_000) return iso.slice(11, 16);
  if (spanMs <= 90 * 86_400_000) return `${iso.slice(5, 10)} ${iso.slice(11, 16)}`;
  return iso.slice(0, 10);
}

const TICK_STEPS_S = [60, 300, 900, 1_800, 3_600, 10_800, 21_600, 43_200, 86_400, 604_800,
  2_592_000, 31_536_000];

/** Round times (whole minutes, quarter hours, hours, days...) for the axis, at most ``most``. */
export function tickTimes(fromMs, toMs, most) {
  const span = toMs - fromMs;
  const stepS = TICK_STEPS_S.find((s) => span / (s * 1000) <= Math.max(most, 1))
    ?? TICK_STEPS_S[TICK_STEPS_S.length - 1];
  const step = stepS * 1000;
  const ticks = [];
  for (let ms = Math.ceil(fromMs / step) * step; ms <= toMs; ms += step) ticks.push(ms);
  return ticks;
}

function niceMax(value) {
  if (value <= 0) return 1;
  const step = 10 ** Math.floor(Math.log10(value));
  return [1, 2, 5, 10].map((m) => m * step).find((v) => v >= value);
}

function percent(share) {
  const value = share * 100;
  return `${value >= 1 ? value.toFixed(1) : value.toPrecision(2)} %`;
}

/**
 * Draw into ``target`` (an <svg>, drawn at its current width). buckets: /api/stats buckets;
 * [fromMs, toMs): the range shown; picked: {start, end} of the time range of the table, shown
 * as picked when it is one bucket; onPick(startIso, endIso) is called for a click on a bucket.
 */
export function drawTimeline(target, { buckets, bucketSeconds, fromMs, toMs, picked, onPick }) {
  clear(target);
  const width = Math.max(target.getBoundingClientRect().width, 240);
  target.setAttribute("viewBox", `0 0 ${width} ${HEIGHT}`);
  const plot = { x0: MARGIN.left, x1: width - MARGIN.right, y0: MARGIN.top, y1: HEIGHT - MARGIN.bottom };
  const span = Math.max(toMs - fromMs, bucketSeconds * 1000);
  const x = (ms) => plot.x0 + ((ms - fromMs) / span) * (plot.x1 - plot.x0);
  const top = niceMax(Math.max(0, ...buckets.map((b) => b.count)));
  const y = (count) => plot.y1 - (count / top) * (plot.y1 - plot.y0);
  const shares = buckets.filter((b) => typeof b.flagged_share === "number");
  const topShare = shares.length ? Math.max(...shares.map((b) => b.flagged_share)) || 1 : 1;
  const yShare = (share) => plot.y1 - (share / topShare) * (plot.y1 - plot.y0);

  target.append(
    svg("line", { class: "axis", x1: plot.x0, x2: plot.x1, y1: plot.y1, y2: plot.y1 }),
    svg("text", { class: "tick", x: plot.x0 - 6, y: plot.y0 + 8, "text-anchor": "end" }, String(top)),
    svg("text", { class: "tick", x: plot.x0 - 6, y: plot.y1, "text-anchor": "end" }, "0"),
  );
  if (shares.length) {
    target.append(svg("text", { class: "tick share", x: plot.x1 + 6, y: plot.y0 + 8 }, percent(topShare)));
  }
  for (const ms of tickTimes(fromMs, fromMs + span, (plot.x1 - plot.x0) / 90)) {
    target.append(svg("text", { class: "tick", x: x(ms), y: HEIGHT - 5, "text-anchor": "middle" },
      timeLabel(ms, span)));
  }

  const step = bucketSeconds * 1000;
  const layer = svg("g", { class: "buckets" });
  for (const b of buckets) {
    const start = Date.parse(b.start);
    if (start + step <= fromMs || start >= fromMs + span) continue;
    const left = Math.max(x(start), plot.x0);
    const right = Math.min(x(start + step), plot.x1);
    const endIso = new Date(start + step).toISOString().replace(".000Z", "Z");
    const startIso = b.start;
    const scored = typeof b.scored === "number" && b.scored > 0
      ? ` of ${b.scored.toLocaleString("en")} scored (${percent(b.flagged_share)})` : "";
    const label = `${startIso.replace("T", " ").replace("Z", "")} UTC, ${bucketLabel(bucketSeconds)}: `
      + `${b.count} flagged${scored}. Click to show only these.`;
    const pick = () => onPick(startIso, endIso);
    layer.append(svg("g", {
      class: picked?.start === startIso && picked?.end === endIso ? "bucket picked" : "bucket",
      "data-start": startIso,
      "data-end": endIso, "data-count": b.count, tabindex: 0, role: "button", "aria-label": label,
      onclick: pick, onkeydown: (event) => { if (event.key === "Enter") pick(); },
    },
      svg("title", {}, label),
      svg("rect", { class: "hit", x: left, y: plot.y0, width: Math.max(right - left, 1), height: plot.y1 - plot.y0 }),
      b.count > 0 ? svg("rect", {
        class: "bar", x: left + 0.5, y: y(b.count), width: Math.max(right - left - 1, 1),
        height: Math.max(plot.y1 - y(b.count), 1),
      }) : null,
    ));
  }
  target.append(layer);
  if (shares.length > 1) {
    const points = shares.map((b) => `${x(Date.parse(b.start) + step / 2)},${yShare(b.flagged_share)}`);
    target.append(svg("polyline", { class: "share-line", points: points.join(" ") }));
  }
}

/** "15m" -> "15 min", for labels. */
export function bucketLabel(seconds) {
  const [, label] = BUCKETS.find(([s]) => s === seconds) ?? [seconds, `${seconds}s`];
  return label.replace(/m$/, " min").replace(/h$/, " h").replace(/d$/, " d");
}
