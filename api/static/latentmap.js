// The 2-D latent map: the model's reference clusters (centre and 2-sigma ellipse, from the
// manifest's latent_map) and flagged records at their latent_2d, the selected one ringed.
// Both live on the same PCA plane of the latent space, so distance on the map is meaningful.

import { clear, svg } from "./dom.js";

export const CLUSTER_COLOURS = ["#2f6fb0", "#d1782b", "#3b9a5a", "#8d5bb7", "#b8433f", "#7a6a55",
  "#c45b9a", "#5f8f8f"];
const WIDTH = 460;
const HEIGHT = 300;
const PAD = 18;

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

function bounds(clusters, points) {
  const xs = [];
  const ys = [];
  for (const c of clusters) {
    const r = ellipseAxes(c.covariance_2d).major;
    xs.push(c.center_2d[0] - r, c.center_2d[0] + r);
    ys.push(c.center_2d[1] - r, c.center_2d[1] + r);
  }
  for (const p of points) {
    xs.push(p.xy[0]);
    ys.push(p.xy[1]);
  }
  if (!xs.length) return { x0: -1, x1: 1, y0: -1, y1: 1 };
  return { x0: Math.min(...xs), x1: Math.max(...xs), y0: Math.min(...ys), y1: Math.max(...ys) };
}

/**
 * Draw into `target` (an <svg>). clusters: latent_map.clusters; points: [{id, xy, cluster}];
 * onSelect(id) is called when a point is clicked.
 */
export function drawLatentMap(target, { clusters, points, selectedId, onSelect }) {
  clear(target);
  target.setAttribute("viewBox", `0 0 ${WIDTH} ${HEIGHT}`);
  const box = bounds(clusters, points);
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
  if (box.x0 < 0 && box.x1 > 0) {
    target.append(svg("line", { class: "map-axis", x1: px(0), x2: px(0), y1: 0, y2: HEIGHT }));
  }
  if (box.y0 < 0 && box.y1 > 0) {
    target.append(svg("line", { class: "map-axis", x1: 0, x2: WIDTH, y1: py(0), y2: py(0) }));
  }

  const layer = svg("g", { class: "clusters" });
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
      svg("text", { class: "cluster-label", x: x + 7, y: y - 7, fill: colour }, `C${c.cluster}`),
    );
  }
  target.append(layer);

  const dots = svg("g", { class: "points" });
  const ordered = [...points].sort((a, b) => (a.id === selectedId) - (b.id === selectedId));
  for (const p of ordered) {
    const selected = p.id === selectedId;
    dots.append(
      svg("circle", {
        class: selected ? "record-point selected" : "record-point", "data-id": p.id,
        cx: px(p.xy[0]), cy: py(p.xy[1]), r: selected ? 7 : 4.5, fill: clusterColour(p.cluster),
        onclick: () => onSelect(p.id),
      }, svg("title", {}, `record ${p.id} (cluster ${p.cluster})`)),
    );
  }
  target.append(dots);
}
