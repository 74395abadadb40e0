// compare-chart.js — what the compare page's two figures share: token colours, the relative-depth stage axis (the
// two models may have different depths: a stage is drawn at its depth in [0, 1]), attention bands, the selected-stage
// marker and the decision-stage lines.

import { d3 } from "./d3.js";

const PALETTE = d3.schemeTableau10.concat(["#393b79", "#637939", "#8c6d31", "#843c39", "#7b4173", "#3182bd",
  "#e6550d", "#31a354", "#756bb1", "#636363"]);
const MAX_TICKS = 7;

/** The colour of the pair's j-th token (same in both models and both figures). */
export function colorOf(j) {
  return PALETTE[j % PALETTE.length];
}

/** x position of side k's stage s on a panel whose depth scale is `x` ([0, 1] -> px). */
export function stageX(cmp, x, k, s) {
  return x(cmp.depth(k, s));
}

/** Light bands behind side k's attention stages. */
export function renderBands(layer, cmp, x, k, height) {
  const run = cmp.runs[k];
  const half = (x(1) - x(0)) / Math.max(1, run.stageCount - 1) / 2;
  const attn = d3.range(run.stageCount).filter((s) => run.stageKind(s) === "attn");
  layer.selectAll("rect").data(attn).join("rect").attr("class", "band-attn")
    .attr("x", (s) => stageX(cmp, x, k, s) - half).attr("width", 2 * half).attr("y", 0).attr("height", height);
}

/** A bottom axis naming a few of side k's stages (embedding, evenly spaced layers, the last stage). */
export function stageAxis(cmp, x, k) {
  const run = cmp.runs[k];
  const S = run.stageCount;
  const step = Math.max(1, Math.ceil((S - 1) / (MAX_TICKS - 1)));
  const stages = d3.range(0, S, step);
  if (stages[stages.length - 1] !== S - 1) stages.push(S - 1);
  return d3.axisBottom(x).tickValues(stages.map((s) => cmp.depth(k, s)))
    .tickFormat((d) => run.stageName(Math.round(d * (S - 1))));
}

/** Vertical lines where the sides in `sides` decide (solid A, dashed B), labelled with the stage name. */
export function renderDecisions(layer, cmp, pair, x, sides, height) {
  const data = sides.map((k) => ({ k, s: pair.decide[k] }));
  layer.selectAll("line").data(data).join("line")
    .attr("class", (d) => `decide-line side-${"ab"[d.k]}`)
    .attr("data-side", (d) => "ab"[d.k]).attr("data-stage", (d) => d.s)
    .attr("x1", (d) => stageX(cmp, x, d.k, d.s)).attr("x2", (d) => stageX(cmp, x, d.k, d.s))
    .attr("y1", 0).attr("y2", height);
  layer.selectAll("text").data(data).join("text").attr("class", "decide-label")
    .attr("x", (d) => stageX(cmp, x, d.k, d.s) - 3).attr("y", (d) => 10 + 12 * d.k).attr("text-anchor", "end")
    .text((d) => `${"AB"[d.k]} decides: ${cmp.runs[d.k].stageName(d.s)}`);
}

/** The selected stage (side k's stage s, drawn at its depth) as a dashed red line. */
export function renderStageMarker(line, cmp, x, k, stage, height) {
  const xs = stageX(cmp, x, k, stage);
  line.attr("class", "stage-marker").attr("x1", xs).attr("x2", xs).attr("y1", 0).attr("y2", height)
    .attr("data-stage", stage);
}

/** A's stage nearest to a pointer at panel x coordinate `px`. */
export function stageAt(cmp, x, px) {
  const S = cmp.runs[0].stageCount;
  return Math.max(0, Math.min(S - 1, Math.round(x.invert(px) * (S - 1))));
}
