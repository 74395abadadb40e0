// ranks.js — Figure 2 "Rank Ordering Evolution": each tracked token's rank among the whole vocabulary (1 = top)
// over the stages, log y axis (rank 1 at the top), the same light/dark striping and hover as Figure 1. With several
// lenses and "compare" on, another lens's ranks of the same tokens are overlaid as dashed curves (path.cmp-curve,
// data-token, data-lens, data-ranks: the ranks, comma-separated, for the tests).

import { d3 } from "./d3.js";
import { createChart, setChanged } from "./chart.js";
import { attachHover, markStage, pointTooltip, renderBands, renderCurves, renderLegend, stageAxis, tokenColor } from "./curves.js";

const HEIGHT = 320;
const MARGIN = { top: 12, right: 14, bottom: 44, left: 62 };

/** Figure 2 inside `root` (its .plot and .legend children); `onStage(s)` when a point is clicked. */
export function createRanks(root, { onStage }) {
  const plot = root.select(".plot");
  const legend = root.select(".legend");
  const { svg, frame, bands, grid, yAxis, xAxis, yTitle, xTitle } = createChart(
    plot, "Figure 2: rank ordering evolution", MARGIN,
    [["bands", "bands"], ["grid", "grid"], ["yAxis", "axis y-axis"], ["xAxis", "axis x-axis"]],
  );
  const marker = frame.append("line").attr("class", "stage-marker");
  const compareLayer = frame.append("g").attr("class", "compare-curves");
  const curvesLayer = frame.append("g").attr("class", "curves");
  const overlay = frame.append("rect").attr("class", "overlay");
  let last = null;
  let axesKey = null; // {run, w} of the axes, grid lines and bands drawn: they do not depend on the position

  /** `cmp`: null, or {lens, label, position} of the lens to overlay (dashed). */
  function draw(run, position, { mode, stage }, width, cmp = null) {
    const w = width - MARGIN.left - MARGIN.right;
    const h = HEIGHT - MARGIN.top - MARGIN.bottom;
    svg.call(setChanged, "width", width).call(setChanged, "height", HEIGHT).call(setChanged, "viewBox", `0 0 ${width} ${HEIGHT}`);
    svg.attr("data-pos", position.pos);
    const S = run.stageCount;
    const n = position.trackedCount;
    const top = position.topCount;
    const x = d3.scaleLinear().domain([0, S - 1]).range([0, w]);
    const y = d3.scaleLog().domain([1, Math.max(10, run.vocabSize)]).range([0, h]).clamp(true);

    const curves = [];
    const points = [];
    for (let j = 0; j < n; j++) {
      const color = tokenColor(j, top);
      const pts = [];
      for (let s = 0; s < S; s++) {
        const rank = position.rank(j, s);
        const p = { j, s, x: x(s), y: y(rank), value: rank, rank, color };
        pts.push(p);
        points.push(p);
      }
      curves.push({ j, cls: j < top ? "top" : "extra", color, points: pts });
    }

    if (axesKey === null || axesKey.run !== run || axesKey.w !== w) {
      const ticks = y.ticks().filter((t) => Math.log10(t) % 1 === 0);
      yAxis.call(d3.axisLeft(y).tickValues(ticks).tickFormat(d3.format("~s")));
      grid.selectAll("line").data(ticks).join("line").attr("x1", 0).attr("x2", w).attr("y1", y).attr("y2", y);
      yTitle.attr("transform", `translate(14,${MARGIN.top + h / 2}) rotate(-90)`).text("rank (1 = top, log scale)");
      renderBands(bands, run, x, h);
      xAxis.attr("transform", `translate(0,${h})`).call(stageAxis(run, x));
      xTitle.attr("x", MARGIN.left + w / 2).attr("y", HEIGHT - 6).text("stage (layer output; light band = attention block)");
      axesKey = { run, w };
    }

    renderCompare(cmp, n, top, x, y, S);
    renderCurves(curvesLayer, curves, (s) => run.stageKind(s), stage);
    overlay.call(setChanged, "width", w).call(setChanged, "height", h);
    attachHover(frame, overlay, points, {
      onHover: (event, p) => pointTooltip(event, run, position, mode, p.j, p.s),
      onClick: (p) => onStage(p.s),
    });
    renderLegend(legend, position);
    last = { x, h };
    setStage(stage);
  }

  function renderCompare(cmp, n, top, x, y, S) {
    const rows = [];
    if (cmp) {
      for (let j = 0; j < n; j++) {
        const ranks = d3.range(S).map((s) => cmp.position.rank(j, s));
        rows.push({ j, ranks, color: tokenColor(j, top), cls: j < top ? "top" : "extra" });
      }
    }
    const line = d3.line().x((_, s) => x(s)).y((r) => y(r));
    compareLayer.attr("data-lens", cmp ? cmp.lens : null);
    compareLayer
      .selectAll("path.cmp-curve")
      .data(rows, (d) => d.j)
      .join("path")
      .attr("class", (d) => `cmp-curve ${d.cls}`)
      .attr("data-token", (d) => d.j)
      .attr("data-lens", cmp ? cmp.lens : null)
      .attr("data-ranks", (d) => d.ranks.join(","))
      .attr("stroke", (d) => d.color)
      .attr("stroke-dasharray", "5 3")
      .attr("d", (d) => line(d.ranks));
  }

  function setStage(stage) {
    if (!last) return;
    marker.call(setChanged, "x1", last.x(stage)).call(setChanged, "x2", last.x(stage)).call(setChanged, "y1", 0).call(setChanged, "y2", last.h)
      .attr("data-stage", stage);
    markStage(curvesLayer, stage);
  }

  return { draw, setStage };
}
