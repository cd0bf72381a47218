// The 2-D latent map: the model's reference clusters (centre and 2-sigma ellipse, from the
// manifest's latent_map) and flagged records at their latent_2d, the selected one ringed.
// Both live on the same PCA plane of the latent space, so distance on the map is meaningful.
// The view frames the reference clusters: one record far away must not shrink them to a dot.
// Records beyond the frame are drawn on its edge, in their direction, as marked arrows.

import { asNumber, clear, svg } from "./dom.js";

export const CLUSTER_COLOURS = ["#2f6fb0", "#d1782b", "#3b9a5a", "#8d5bb7", "#b8433f", "#7a6a55",
  "#c45b9a", "#5f8f8f"];
const WIDTH = 460;
const HEIGHT = 300;
const PAD = 18;
const MARGIN = 0.35; // records this far (in frame sizes) around the clusters stay in the frame
const LABEL_H = 14;

export function clusterColour(cluster) {
  return CLUSTER_COLOURS[Math.abs(cluster) % CLUSTER_COLOURS.length];
}

/** Semi-axes (2 sigma) and angle of the major axis (radians) of a 2x2 covariance. */
export function ellipseAxes(covariance) {
  const [[a, b1], [b2, d]] = covariance;
  const b = (b1 + b2) / 2;
  const mean = (a + d) / 2;
  const spread = Math.sqrt(((a - d) / 2) ** 2 + b * b);
  return {
    major: 2 * Math.sqrt(Math.max(mean + spread, 0)),
    minor: 2 * Math.sqrt(Math.max(mean - spread, 0)),
    angle: 0.5 * Math.atan2(2 * b, a - d),
  };
}

function quantile(sorted, q) {
  const i = (sorted.length - 1) * q;
  const lo = Math.floor(i);
  return sorted[lo] + (sorted[Math.ceil(i)] - sorted[lo]) * (i - lo);
}

/** The box to frame: the clusters' 2-sigma boxes; without clusters, the middle 80 % of the
 * records (robust to a few far ones). Then widened by the records within MARGIN of it. */
export function frameBox(clusters, points) {
  let box = null;
  const grow = (b, x0, x1, y0, y1) => (b
    ? { x0: Math.min(b.x0, x0), x1: Math.max(b.x1, x1), y0: Math.min(b.y0, y0), y1: Math.max(b.y1, y1) }
    : { x0, x1, y0, y1 });
  for (const c of clusters) {
    const r = ellipseAxes(c.covariance_2d).major;
    box = grow(box, c.center_2d[0] - r, c.center_2d[0] + r, c.center_2d[1] - r, c.center_2d[1] + r);
  }
  const finite = points.filter((p) => p.xy.every(Number.isFinite));
  if (!box && finite.length) {
    const xs = finite.map((p) => p.xy[0]).sort((a, b) => a - b);
    const ys = finite.map((p) => p.xy[1]).sort((a, b) => a - b);
    box = { x0: quantile(xs, 0.1), x1: quantile(xs, 0.9), y0: quantile(ys, 0.1), y1: quantile(ys, 0.9) };
  }
  if (!box) return { x0: -1, x1: 1, y0: -1, y1: 1 };
  const size = Math.max(box.x1 - box.x0, box.y1 - box.y0, 1e-6);
  const reach = { x0: box.x0 - MARGIN * size, x1: box.x1 + MARGIN * size,
    y0: box.y0 - MARGIN * size, y1: box.y1 + MARGIN * size };
  for (const p of finite) {
    const [x, y] = p.xy;
    if (x >= reach.x0 && x <= reach.x1 && y >= reach.y0 && y <= reach.y1) box = grow(box, x, x, y, y);
  }
  return box;
}

/** Where on the frame's edge a point outside it is drawn: along the line from the centre. */
function clampToFrame(px, py, inner) {
  const cx = WIDTH / 2;
  const cy = HEIGHT / 2;
  const dx = px - cx;
  const dy = py - cy;
  const t = Math.min(
    dx ? (dx > 0 ? inner.x1 - cx : inner.x0 - cx) / dx : Infinity,
    dy ? (dy > 0 ? inner.y1 - cy : inner.y0 - cy) / dy : Infinity,
  );
  return { x: cx + dx * t, y: cy + dy * t, angle: Math.atan2(dy, dx) };
}

/** Label positions that do not overlap each other: each label tries a few spots around its
 * cluster's centre, then moves down until it is clear. */
export function placeLabels(anchors) {
  const placed = [];
  const overlaps = (a, b) => a.x < b.x + b.w && b.x < a.x + a.w && a.y < b.y + b.h && b.y < a.y + a.h;
  for (const { x, y, text } of anchors) {
    const w = 8 * text.length + 4;
    const spots = [[7, -19], [7, 5], [-w - 7, -19], [-w - 7, 5]].map(([dx, dy]) => ({
      x: x + dx, y: y + dy, w, h: LABEL_H,
    }));
    let box = spots.find((s) => !placed.some((p) => overlaps(s, p)));
    if (!box) {
      box = { ...spots[0] };
      while (placed.some((p) => overlaps(box, p))) box.y += LABEL_H;
    }
    box.x = Math.min(Math.max(box.x, 2), WIDTH - w - 2);
    box.y = Math.min(Math.max(box.y, 2), HEIGHT - LABEL_H - 2);
    placed.push(box);
  }
  return placed;
}

/**
 * Draw into `target` (an <svg>). clusters: latent_map.clusters; points: [{id, xy, cluster}];
 * onSelect(id) is called when a point is clicked; path: [[x, y], ...] the selected record's
 * walk to its nearest normal record, drawn dashed with its end marked.
 */
export function drawLatentMap(target, { clusters, points: given, selectedId, onSelect, path = null }) {
  clear(target);
  target.setAttribute("viewBox", `0 0 ${WIDTH} ${HEIGHT}`);
  const points = given.map((p) => ({ ...p, xy: p.xy.map(asNumber) }));
  const box = frameBox(clusters, points);
  const scale = Math.min(
    (WIDTH - 2 * PAD) / Math.max(box.x1 - box.x0, 1e-9),
    (HEIGHT - 2 * PAD) / Math.max(box.y1 - box.y0, 1e-9),
  );
  const cx = (box.x0 + box.x1) / 2;
  const cy = (box.y0 + box.y1) / 2;
  // y grows upwards on the map, downwards in SVG
  const px = (x) => WIDTH / 2 + (x - cx) * scale;
  const py = (y) => HEIGHT / 2 - (y - cy) * scale;

  target.append(svg("rect", { class: "map-frame", x: 0.5, y: 0.5, width: WIDTH - 1, height: HEIGHT - 1 }));
  if (px(0) > 0 && px(0) < WIDTH) {
    target.append(svg("line", { class: "map-axis", x1: px(0), x2: px(0), y1: 0, y2: HEIGHT }));
  }
  if (py(0) > 0 && py(0) < HEIGHT) {
    target.append(svg("line", { class: "map-axis", x1: 0, x2: WIDTH, y1: py(0), y2: py(0) }));
  }

  const layer = svg("g", { class: "clusters" });
  const anchors = [];
  for (const c of clusters) {
    const { major, minor, angle } = ellipseAxes(c.covariance_2d);
    const [x, y] = [px(c.center_2d[0]), py(c.center_2d[1])];
    const colour = clusterColour(c.cluster);
    const share = c.share === undefined ? "" : ` · ${Math.round(c.share * 100)}% of training data`;
    layer.append(
      svg("ellipse", {
        class: "cluster-ellipse", "data-cluster": c.cluster, cx: x, cy: y,
        rx: major * scale, ry: minor * scale, stroke: colour, fill: colour,
        transform: `rotate(${(-angle * 180) / Math.PI} ${x} ${y})`,
      }, svg("title", {}, `cluster ${c.cluster}: 2-sigma region${share}`)),
      svg("path", { class: "cluster-centre", d: `M${x - 5} ${y}h10M${x} ${y - 5}v10`, stroke: colour }),
    );
    anchors.push({ x, y, text: `C${c.cluster}`, colour, cluster: c.cluster });
  }
  const labels = svg("g", { class: "labels" }); // drawn last: over the records, with a halo
  placeLabels(anchors).forEach((spot, i) => {
    labels.append(svg("text", {
      class: "cluster-label", "data-cluster": anchors[i].cluster, x: spot.x + 2,
      y: spot.y + LABEL_H - 3, fill: anchors[i].colour,
    }, anchors[i].text));
  });
  target.append(layer);

  const inner = { x0: PAD / 2, x1: WIDTH - PAD / 2, y0: PAD / 2, y1: HEIGHT - PAD / 2 };
  const dots = svg("g", { class: "points" });
  const ordered = [...points].sort((a, b) => (a.id === selectedId) - (b.id === selectedId));
  for (const p of ordered) {
    const selected = p.id === selectedId;
    const [x, y] = [px(p.xy[0]), py(p.xy[1])];
    const inside = x >= inner.x0 && x <= inner.x1 && y >= inner.y0 && y <= inner.y1;
    const where = p.xy.map((v) => (Number.isFinite(v) ? v.toPrecision(3) : String(v))).join(", ");
    const common = {
      "data-id": p.id, fill: clusterColour(p.cluster), onclick: () => onSelect(p.id),
    };
    if (inside) {
      dots.append(svg("circle", {
        ...common, class: selected ? "record-point selected" : "record-point",
        cx: x, cy: y, r: selected ? 7 : 4.5,
      }, svg("title", {}, `record ${p.id} (cluster ${p.cluster})`)));
      continue;
    }
    // NaN coordinates have no direction: such a record sits at the centre of the edge below
    const edge = Number.isNaN(x) || Number.isNaN(y)
      ? { x: WIDTH / 2, y: inner.y1, angle: Math.PI / 2 }
      : clampToFrame(x, y, inner);
    const size = selected ? 9 : 7;
    const degrees = (edge.angle * 180) / Math.PI;
    dots.append(svg("path", {
      ...common, class: selected ? "record-point outlier selected" : "record-point outlier",
      d: `M${size} 0L${-size * 0.7} ${size * 0.7}L${-size * 0.7} ${-size * 0.7}Z`,
      transform: `translate(${edge.x} ${edge.y}) rotate(${degrees})`,
      "data-x": edge.x, "data-y": edge.y,
    }, svg("title", {}, `record ${p.id} (cluster ${p.cluster}): far outside this view, at (${where})`)));
  }
  const walk = svg("g", { class: "walk" });
  const steps = (path ?? []).map((xy) => xy.map(asNumber)).filter((xy) => xy.every(Number.isFinite));
  if (steps.length > 1) {
    walk.append(svg("polyline", {
      class: "walk-path", points: steps.map(([x, y]) => `${px(x)},${py(y)}`).join(" "),
    }, svg("title", {}, "the walk to the nearest normal record")));
    const [ex, ey] = steps[steps.length - 1];
    walk.append(svg("circle", { class: "walk-end", cx: px(ex), cy: py(ey), r: 5 },
      svg("title", {}, "the nearest normal record")));
  }
  target.append(walk, dots, labels);
}
