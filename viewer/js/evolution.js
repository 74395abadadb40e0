// evolution.js — Figure 1 "Logit Evolution": the score of each final top-k token over all stages.
// "panels" view (as in the post): each token its own short curve, side by side in final-rank order (top-1 left);
// "shared" view: all curves over one stage axis. Display modes: raw score, score − mean, z-score, log-probability.
// Segments into an attention stage are light, into an FFN stage dark; hover shows layer, block, score, change, rank.
// y-range: by default from the stages after the embedding (the embedding's scores, e.g. mean ≈ 63 on SmolLM2, would
// flatten every other stage); a point outside it is drawn at the axis edge with a triangle marker (true value on
// hover). The "yrange" state ("all") includes every stage.

import { d3 } from "./d3.js";
import { createChart, setChanged, setTextChanged } from "./chart.js";
import { shortToken } from "./format.js";
import { MODE_LABELS, attachHover, markStage, pointTooltip, renderBands, renderCurves, renderLegend, stageAxis, tokenColor } from "./curves.js";

const HEIGHT = 372;
const MARGIN = { top: 14, right: 14, bottom: 74, left: 62 };
const PANEL_GAP = 6;
const EXTRA_GAP = 18;
const LABEL_CHAR_PX = 6.6;
const Y_PAD = 0.05;
const PANEL_TICK_PX = 4;
const PANEL_TICK_LABEL_MIN_PX = 44; // a panel narrower than this gets tick marks only, no labels
const PANEL_MID_LABEL_MIN_PX = 78; // … narrower than this: labels at both ends only
const PANEL_MINOR_EVERY_PX = 7; // minor ticks (layer outputs) no closer than this

/** Figure 1 inside `root` (its .plot and .legend children); `onStage(s)` when a point is clicked. */
export function createEvolution(root, { onStage }) {
  const plot = root.select(".plot");
  const legend = root.select(".legend");
  const { svg, frame, bands, grid, panels, yAxis, xAxis, yTitle, xTitle, markers, curvesLayer } = createChart(
    plot, "Figure 1: logit evolution", MARGIN,
    [["bands", "bands"], ["grid", "grid"], ["panels", "panels"], ["yAxis", "axis y-axis"], ["xAxis", "axis x-axis"],
      ["markers", "markers"], ["curvesLayer", "curves"]],
  );
  const overlay = frame.append("rect").attr("class", "overlay");
  let last = null;
  let stageAxisKey = null; // {run, w} of the shared stage axis drawn (null: none)
  let panelTicksKey = null; // {run, key} of the panels' stage ticks drawn (null: none)

  /** Redraw for a Position; `width` is the plot width in px (read once by the caller, to avoid layout thrash). */
  function draw(run, position, { mode, view, stage, yrange }, width) {
    const w = width - MARGIN.left - MARGIN.right;
    const h = HEIGHT - MARGIN.top - MARGIN.bottom;
    svg.call(setChanged, "width", width).call(setChanged, "height", HEIGHT).call(setChanged, "viewBox", `0 0 ${width} ${HEIGHT}`);
    svg.attr("data-view", view).attr("data-mode", mode).attr("data-pos", position.pos).attr("data-yrange", yrange);
    const S = run.stageCount;
    const n = position.trackedCount;
    const top = position.topCount;

    // x: one panel per token (panels) or one shared stage axis.
    const extras = n - top;
    const pw = view === "panels" ? (w - PANEL_GAP * (n - 1) - (extras > 0 ? EXTRA_GAP : 0)) / n : w;
    const panelX = (j) => (view === "panels" ? j * (pw + PANEL_GAP) + (j >= top ? EXTRA_GAP : 0) : 0);
    const sx = d3.scaleLinear().domain([0, S - 1]).range([0, pw]);
    const x = (j, s) => panelX(j) + sx(s);

    // y: shared by all tokens; from the stages after the embedding unless yrange is "all".
    const from = yrange === "all" || S < 2 ? 0 : 1;
    let lo = Infinity;
    let hi = -Infinity;
    for (let j = 0; j < n; j++) {
      for (let s = from; s < S; s++) {
        const v = position.value(mode, j, s);
        if (v < lo) lo = v;
        if (v > hi) hi = v;
      }
    }
    if (!(hi > lo)) { lo -= 1; hi += 1; }
    const pad = (hi - lo) * Y_PAD;
    const y = d3.scaleLinear().domain([lo - pad, hi + pad]).nice().range([h, 0]);
    const [yLo, yHi] = y.domain();
    svg.attr("data-y-min", yLo).attr("data-y-max", yHi);

    const curves = [];
    const points = [];
    for (let j = 0; j < n; j++) {
      const color = tokenColor(j, top);
      const pts = [];
      for (let s = 0; s < S; s++) {
        const value = position.value(mode, j, s);
        const clipped = value > yHi ? "above" : value < yLo ? "below" : null;
        const yy = clipped === "above" ? 0 : clipped === "below" ? h : y(value);
        const p = { j, s, x: x(j, s), y: yy, value, rank: position.rank(j, s), color, clipped };
        pts.push(p);
        points.push(p);
      }
      curves.push({ j, cls: j < top ? "top" : "extra", color, points: pts });
    }

    yAxis.call(d3.axisLeft(y).ticks(6).tickFormat(d3.format("~g")));
    grid.selectAll("line").data(y.ticks(6)).join("line").attr("x1", 0).attr("x2", w).attr("y1", y).attr("y2", y);
    yTitle.call(setChanged, "transform", `translate(14,${MARGIN.top + h / 2}) rotate(-90)`).call(setTextChanged, MODE_LABELS[mode]);

    // Panels: background, token label under each; or the shared stage axis.
    const panelData = view === "panels" ? d3.range(n) : [];
    const panel = panels
      .selectAll("g.panel")
      .data(panelData)
      .join((enter) => {
        const g = enter.append("g").attr("class", "panel");
        g.append("rect").attr("class", "panel-bg");
        g.append("g").attr("class", "panel-ticks");
        g.append("text").attr("class", "panel-rank").attr("text-anchor", "middle");
        g.append("text").attr("class", "panel-label").attr("text-anchor", "middle");
        return g;
      })
      .call(setChanged, "data-token", (j) => j);
    panel.select("rect.panel-bg").call(setChanged, "x", (j) => panelX(j)).call(setChanged, "y", 0).call(setChanged, "width", pw).call(setChanged, "height", h);
    const maxChars = Math.max(3, Math.floor(pw / LABEL_CHAR_PX));
    panel
      .select("text.panel-rank")
      .call(setChanged, "x", (j) => panelX(j) + pw / 2)
      .call(setChanged, "y", h + 30)
      .call(setChanged, "fill", (j) => tokenColor(j, top))
      .call(setTextChanged, (j) => (j < top ? `#${j + 1}` : j === position.nextIndex ? "next" : "tracked"));
    panel
      .select("text.panel-label")
      .call(setChanged, "x", (j) => panelX(j) + pw / 2)
      .call(setChanged, "y", h + 46)
      .call(setTextChanged, (j) => shortToken(position.tokenText(j), maxChars));
    if (view === "panels") {
      // The panels' stage ticks depend on the run and the panels' count and width only.
      const key = `${n}|${top}|${pw}|${h}`;
      if (panelTicksKey === null || panelTicksKey.run !== run || panelTicksKey.key !== key) {
        renderPanelTicks(panel, run, panelX, sx, pw, h);
        panelTicksKey = { run, key };
      }
      stageAxisKey = null;
      bands.selectAll("*").remove();
      xAxis.selectAll("*").remove();
      xTitle.call(setChanged, "x", MARGIN.left + w / 2).call(setChanged, "y", HEIGHT - 6)
        .call(setTextChanged, "each panel: one token's score from the embedding (left) to the last layer (right), in final-rank order");
    } else {
      panelTicksKey = null;
      // The stage axis and its bands depend on the run and the width only: drawn again when those change.
      if (stageAxisKey === null || stageAxisKey.run !== run || stageAxisKey.w !== w) {
        renderBands(bands, run, (s) => sx(s), h);
        xAxis.attr("transform", `translate(0,${h})`).call(stageAxis(run, sx));
        stageAxisKey = { run, w };
      }
      xTitle.call(setChanged, "x", MARGIN.left + w / 2).call(setChanged, "y", HEIGHT - 8)
        .call(setTextChanged, "stage (layer output; light band = attention block)");
    }

    renderCurves(curvesLayer, curves, (s) => run.stageKind(s), stage);
    renderClipMarks(curvesLayer);
    overlay.call(setChanged, "width", w).call(setChanged, "height", h);
    attachHover(frame, overlay, points, {
      onHover: (event, p) => pointTooltip(event, run, position, mode, p.j, p.s, p.clipped),
      onClick: (p) => onStage(p.s),
    });
    renderLegend(legend, position);
    last = { sx, panelX, pw, n: view === "panels" ? n : 1, h };
    setStage(stage);
  }

  /** Move the stage marker(s) only. */
  function setStage(stage) {
    if (!last) return;
    const { sx, panelX, n, h } = last;
    markers
      .selectAll("line.stage-marker")
      .data(d3.range(n))
      .join("line")
      .call(setChanged, "class", "stage-marker")
      .call(setChanged, "x1", (j) => panelX(j) + sx(stage))
      .call(setChanged, "x2", (j) => panelX(j) + sx(stage))
      .call(setChanged, "y1", 0)
      .call(setChanged, "y2", h)
      .attr("data-stage", stage);
    markStage(curvesLayer, stage);
  }

  return { draw, setStage };
}

/** The stage ticks under each small-multiple panel: a tick at the embedding, at every few layer outputs and at the
 *  last stage; labels "emb", the middle layer and the last layer where the panel is wide enough. */
function renderPanelTicks(panel, run, panelX, sx, pw, h) {
  const S = run.stageCount;
  const L = run.layerCount;
  const perLayer = Math.max(1, Math.ceil(PANEL_MINOR_EVERY_PX / Math.max(1e-6, sx(2) - sx(0))));
  const minor = [];
  for (let i = perLayer - 1; i < L - 1; i += perLayer) minor.push(2 * i + 2);
  const labelled = [0, S - 1];
  if (pw >= PANEL_MID_LABEL_MIN_PX && L >= 4) labelled.splice(1, 0, 2 * Math.floor((L - 1) / 2) + 2);
  const ticks = [...new Set([0, ...minor, S - 1])].map((s) => ({ s, major: labelled.includes(s) }));
  const label = (s) => (s === 0 ? "emb" : `L${run.stageLayer(s)}`);
  const anchor = (s) => (s === 0 ? "start" : s === S - 1 ? "end" : "middle");
  panel.each(function (j) {
    const g = d3.select(this).select("g.panel-ticks").call(setChanged, "transform", `translate(${panelX(j)},${h})`);
    g.selectAll("line.panel-tick")
      .data(ticks)
      .join("line")
      .call(setChanged, "class", (t) => (t.major ? "panel-tick major" : "panel-tick"))
      .call(setChanged, "x1", (t) => sx(t.s))
      .call(setChanged, "x2", (t) => sx(t.s))
      .call(setChanged, "y1", 0)
      .call(setChanged, "y2", (t) => (t.major ? PANEL_TICK_PX + 1 : PANEL_TICK_PX - 1))
      .call(setChanged, "data-stage", (t) => t.s);
    g.selectAll("text.panel-tick-label")
      .data(pw >= PANEL_TICK_LABEL_MIN_PX ? ticks.filter((t) => t.major) : [])
      .join("text")
      .call(setChanged, "class", "panel-tick-label")
      .call(setChanged, "x", (t) => sx(t.s))
      .call(setChanged, "y", PANEL_TICK_PX + 11)
      .call(setChanged, "text-anchor", (t) => anchor(t.s))
      .call(setChanged, "data-stage", (t) => t.s)
      .call(setTextChanged, (t) => label(t.s));
  });
}

/** A triangle at the axis edge for each point outside the y-range (pointing the way its true value lies). */
function renderClipMarks(layer) {
  layer
    .selectAll("g.curve")
    .selectAll("path.clip-mark")
    .data((d) => d.points.filter((p) => p.clipped))
    .join("path")
    .attr("class", "clip-mark")
    .attr("d", (p) => (p.clipped === "above" ? "M0,-1L-4.5,6L4.5,6Z" : "M0,1L-4.5,-6L4.5,-6Z"))
    .attr("transform", (p) => `translate(${p.x.toFixed(1)},${p.y.toFixed(1)})`)
    .attr("data-stage", (p) => p.s)
    .attr("data-value", (p) => p.value)
    .attr("data-clipped", (p) => p.clipped);
}
