// curves.js — what Figures 1 and 2 share: token colours, curves striped by block (segments that end at an attention
// stage drawn light, at an FFN stage dark), the stage axis, the token legend, and nearest-point hover (Delaunay).
// Every curve is a <g class="curve" data-token=j> with three paths (attention segments, FFN segments, and segments
// to a point clipped at the axis edge, faint and dashed) and one <circle class="pt"> per stage carrying
// data-stage / data-value / data-rank (what the tests compare with the JSON; data-value is the true value even where
// the point is drawn clipped).

import { d3 } from "./d3.js";
import { setChanged, setTextChanged } from "./chart.js";
import { MAX_TOKEN_CHARS, appendTokenParts, formatNumber, formatRank } from "./format.js";
import { showTooltip, hideTooltip } from "./tooltip.js";

export const TOKEN_COLORS = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#17becf", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22"];
export const EXTRA_COLOR = "#444444";
export const LIGHTEN = 0.62; // attention segments: this far towards white
export const DARKEN = 0.18; // FFN segments: this far towards black (light and dark differ even at ~1.5 px a stage)
export const HOVER_RADIUS_PX = 28;
export const POINT_RADIUS = 2.6;
export const MAX_STAGE_TICKS = 13;
export const MODE_LABELS = {
  raw: "score (logit)",
  centred: "score − mean",
  z: "z-score",
  logprob: "log-probability",
};

/** Colour of tracked token j: one of ten for the top-k, dark grey for the next token / --track extras. */
export function tokenColor(j, topCount) {
  return j < topCount ? TOKEN_COLORS[j % TOKEN_COLORS.length] : EXTRA_COLOR;
}

export function lightColor(color) {
  return d3.interpolateRgb(color, "#ffffff")(LIGHTEN);
}

export function darkColor(color) {
  return d3.interpolateRgb(color, "#000000")(DARKEN);
}

/** "attn" segments end at an attention stage, "ffn" ones at an FFN stage, "clip" ones touch a clipped point (one of
 *  the others only where neither end is clipped); one SVG path (several subpaths) each. */
function segmentPath(points, kindOf, kind) {
  let d = "";
  for (let i = 1; i < points.length; i++) {
    const a = points[i - 1];
    const b = points[i];
    const clipped = Boolean(a.clipped || b.clipped);
    if (kind === "clip" ? !clipped : clipped || kindOf(b.s) !== kind) continue;
    d += `M${a.x.toFixed(1)},${a.y.toFixed(1)}L${b.x.toFixed(1)},${b.y.toFixed(1)}`;
  }
  return d || null;
}

/**
 * Draw `curves` ([{j, cls, color, points: [{s, x, y, value, rank}]}]) into `layer`, marking the points at `stage`.
 * A position change reuses the nodes (the join keeps the curves in token order) and writes only what changed: the
 * geometry and colours are set where they differ (an equal value set again still costs a style and layout pass).
 */
export function renderCurves(layer, curves, kindOf, stage) {
  const groups = layer
    .selectAll("g.curve")
    .data(curves, (d) => d.j)
    .join((enter) => {
      const g = enter.append("g");
      g.append("path").attr("class", "seg seg-attn");
      g.append("path").attr("class", "seg seg-ffn");
      g.append("path").attr("class", "seg seg-clip");
      return g;
    })
    .call(setChanged, "class", (d) => `curve ${d.cls}`)
    .call(setChanged, "data-token", (d) => d.j)
    .call(setChanged, "fill", (d) => d.color);
  groups.select("path.seg-attn").attr("d", (d) => segmentPath(d.points, kindOf, "attn")).call(setChanged, "stroke", (d) => lightColor(d.color));
  groups.select("path.seg-ffn").attr("d", (d) => segmentPath(d.points, kindOf, "ffn")).call(setChanged, "stroke", (d) => darkColor(d.color));
  groups.select("path.seg-clip").attr("d", (d) => segmentPath(d.points, kindOf, "clip")).call(setChanged, "stroke", (d) => d.color);
  // A curve's points are its stages in order: a circle keeps its stage (and radius) for good; the rest is written in
  // one pass, where it differs from what this circle was last given (kept on the node: cheaper than reading the
  // attributes back; nothing else writes them).
  groups
    .selectAll("circle.pt")
    .data((d) => d.points)
    .join((enter) => enter.append("circle").attr("class", "pt").attr("r", POINT_RADIUS).attr("data-stage", (p) => p.s))
    .each(function (p) {
      const was = this.lenskitPoint || {};
      if (was.x !== p.x) this.setAttribute("cx", p.x);
      if (was.y !== p.y) this.setAttribute("cy", p.y);
      if (was.value !== p.value) this.setAttribute("data-value", p.value);
      if (was.rank !== p.rank) this.setAttribute("data-rank", p.rank);
      this.lenskitPoint = { x: p.x, y: p.y, value: p.value, rank: p.rank };
    });
  markStage(layer, stage);
}

/** Move the "at-stage" mark to another stage without redrawing (only the points that gain or lose it change). */
export function markStage(layer, stage) {
  layer.selectAll("circle.pt.at-stage").filter((p) => p.s !== stage).classed("at-stage", false);
  layer.selectAll("circle.pt:not(.at-stage)").filter((p) => p.s === stage).classed("at-stage", true);
}

/** Faint bands behind the attention segments of a shared stage axis. */
export function renderBands(layer, run, x, height) {
  const S = run.stageCount;
  const bands = [];
  for (let s = 1; s < S; s++) if (run.stageKind(s) === "attn") bands.push(s);
  layer
    .selectAll("rect.band-attn")
    .data(bands)
    .join("rect")
    .call(setChanged, "class", "band-attn")
    .call(setChanged, "x", (s) => x(s - 1))
    .call(setChanged, "width", (s) => Math.max(0, x(s) - x(s - 1)))
    .call(setChanged, "y", 0)
    .call(setChanged, "height", height);
}

/** Bottom axis over stages: "emb", then L0, L1, … at each layer's output (thinned to ≤ MAX_STAGE_TICKS). */
export function stageAxis(run, x) {
  const S = run.stageCount;
  const L = run.layerCount;
  const step = Math.max(1, Math.ceil((L + 1) / MAX_STAGE_TICKS));
  const ticks = [0];
  for (let i = 0; i < L; i++) {
    if ((i + 1) % step === 0 || i === L - 1) ticks.push(Math.min(S - 1, 2 * i + 2));
  }
  return d3
    .axisBottom(x)
    .tickValues([...new Set(ticks)])
    .tickFormat((s) => (s === 0 ? "emb" : `L${run.stageLayer(s)}`));
}

/** Token legend (colour, final rank, visible text) plus the light/dark block key, into an HTML container. The items
 *  are joined by token index: a position change rewrites only the tags, colours and texts that differ. */
export function renderLegend(container, position) {
  const items = [];
  for (let j = 0; j < position.trackedCount; j++) {
    const extra = j >= position.topCount;
    items.push({
      j,
      color: tokenColor(j, position.topCount),
      tag: extra ? (j === position.nextIndex ? "next" : "tracked") : `#${j + 1}`,
      text: position.tokenText(j),
      extra,
    });
  }
  let list = container.select("div.legend-tokens");
  if (list.empty()) {
    container.selectAll("*").remove();
    list = container.append("div").attr("class", "legend-tokens");
    const key = container.append("div").attr("class", "legend-blocks");
    const a = key.append("span").attr("class", "legend-item");
    a.append("span").attr("class", "swatch-line").style("background", lightColor(TOKEN_COLORS[0]));
    a.append("span").text("attention block");
    const f = key.append("span").attr("class", "legend-item");
    f.append("span").attr("class", "swatch-line").style("background", darkColor(TOKEN_COLORS[0]));
    f.append("span").text("FFN block");
  }
  list
    .selectAll("span.legend-item")
    .data(items, (it) => it.j)
    .join((enter) => {
      const item = enter.append("span")
        .on("pointerenter pointermove", function (event) { showTooltip(event, { title: this.lenskitText }); })
        .on("pointerleave", hideTooltip);
      item.append("span").attr("class", "swatch");
      item.append("span").attr("class", "legend-tag");
      item.append("span").attr("class", "tok-text");
      return item;
    })
    .call(setChanged, "class", (it) => (it.extra ? "legend-item extra" : "legend-item"))
    .call(setChanged, "data-token", (it) => it.j)
    .each(function (it) {
      const item = d3.select(this);
      this.lenskitText = it.text; // the exact text, for the hover (the label may be cut)
      const swatch = item.select("span.swatch");
      if (swatch.property("lenskitColor") !== it.color) swatch.style("background", it.color).property("lenskitColor", it.color);
      item.select("span.legend-tag").call(setTextChanged, it.tag);
      const text = item.select("span.tok-text");
      if (text.property("lenskitToken") !== it.text) {
        text.selectAll("*").remove();
        appendTokenParts(text, it.text, MAX_TOKEN_CHARS);
        text.property("lenskitToken", it.text);
      }
    });
}

/** Tooltip rows for point (token j, stage s) of a Position; `clipped` ("above"/"below") when drawn at the axis edge. */
export function pointTooltip(event, run, position, mode, j, s, clipped = null) {
  const value = position.value(mode, j, s);
  const prev = s > 0 ? position.value(mode, j, s - 1) : null;
  const prevRank = s > 0 ? position.rank(j, s - 1) : null;
  const rank = position.rank(j, s);
  const kind = run.stageKind(s);
  const rows = [
    { label: "stage", value: `${s} (${run.stageName(s)})` },
    { label: "layer", value: kind === "embed" ? "– (embedding)" : String(run.stageLayer(s)) },
    { label: "block", value: kind === "embed" ? "embedding" : kind === "attn" ? "attention" : "FFN" },
    { label: MODE_LABELS[mode], value: formatNumber(value, 3) },
    { label: "change", value: prev === null ? "–" : formatNumber(value - prev, 3, true) },
    {
      label: "rank",
      value: `${formatRank(rank)} of ${formatRank(run.vocabSize)}` + (prevRank === null || prevRank === rank ? "" : ` (was ${formatRank(prevRank)})`),
    },
    { label: "probability", value: formatNumber(position.prob(j, s), 4) },
    {
      label: "final rank",
      value: j < position.topCount ? `#${j + 1}` : j === position.nextIndex ? `${formatRank(position.rank(j, run.stageCount - 1))} (actual next token)` : `${formatRank(position.rank(j, run.stageCount - 1))} (tracked)`,
    },
  ];
  if (clipped) {
    rows.splice(4, 0, { label: "drawn", value: `clipped at the ${clipped === "above" ? "top" : "bottom"} of the y-range (its value is off the axis)` });
  }
  showTooltip(event, { title: position.tokenText(j), rows });
}

/**
 * Nearest-point hover and click on a plot: `overlay` is a transparent rect over the plot area of `frame` (a <g>),
 * `points` all drawn points [{j, s, x, y}]. Calls onHover(event, point) / onLeave() / onClick(point).
 */
export function attachHover(frame, overlay, points, { onHover, onClick }) {
  let delaunay = null; // built on the first pointer event over this drawing, not on every redraw
  const dot = frame.selectAll("circle.hover-dot").data([0]).join("circle").attr("class", "hover-dot").attr("r", 5).attr("visibility", "hidden");
  const nearest = (event) => {
    const [mx, my] = d3.pointer(event, frame.node());
    if (!delaunay) delaunay = d3.Delaunay.from(points, (p) => p.x, (p) => p.y);
    const i = delaunay.find(mx, my);
    if (i < 0) return null;
    const p = points[i];
    return Math.hypot(p.x - mx, p.y - my) <= HOVER_RADIUS_PX ? p : null;
  };
  overlay
    .on("pointermove", (event) => {
      const p = nearest(event);
      if (!p) {
        dot.attr("visibility", "hidden");
        hideTooltip();
        return;
      }
      dot.attr("cx", p.x).attr("cy", p.y).attr("stroke", p.color).attr("visibility", "visible").raise();
      onHover(event, p);
    })
    .on("pointerleave", () => {
      dot.attr("visibility", "hidden");
      hideTooltip();
    })
    .on("click", (event) => {
      const p = nearest(event);
      if (p) onClick(p);
    });
}
