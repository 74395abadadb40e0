// compare-kl.js — the compare page's KL figure: KL(A ‖ B) and KL(B ‖ A) between the two models' lens distributions
// at every stage of the selected pair (nats, linear), attention bands, decision stages and the selected stage.
// Where the document has no KL (two vocabularies, or export-only data) it says why instead.

import { d3 } from "./d3.js";
import { createChart } from "./chart.js";
import { formatNumber } from "./format.js";
import { hideTooltip, showTooltip } from "./tooltip.js";
import { renderBands, renderDecisions, renderStageMarker, stageAt, stageAxis, stageX } from "./compare-chart.js";

const HEIGHT = 240;
const MARGIN = { top: 14, right: 14, bottom: 44, left: 62 };
const DIRECTIONS = [
  { key: "ab", label: "KL(A ‖ B)" },
  { key: "ba", label: "KL(B ‖ A)" },
];

/** The KL figure inside `root`; `onStage(s)` when the plot is clicked (A's stage). */
export function createCompareKl(root, { onStage }) {
  const plot = root.select(".plot");
  const empty = root.select(".kl-empty");
  const { svg, frame, bands, grid, yAxis, xAxis, curves, decisions, marks, yTitle, xTitle } = createChart(
    plot, "KL divergence between the two models per stage", MARGIN,
    [["bands", "bands"], ["grid", "grid"], ["yAxis", "axis y-axis"], ["xAxis", "axis x-axis"], ["curves", "curves"],
      ["decisions", "decisions"], ["marks", "marks"]],
  );
  const marker = frame.append("line").attr("class", "stage-marker");
  const overlay = frame.append("rect").attr("class", "overlay");

  function draw(cmp, pair, { stage }, width) {
    if (!pair.kl) {
      svg.attr("hidden", true);
      empty.attr("hidden", null).text(`No KL for this comparison: ${cmp.klWhy || "not computed"}.`);
      return;
    }
    svg.attr("hidden", null);
    empty.attr("hidden", true);
    const w = width - MARGIN.left - MARGIN.right;
    const h = HEIGHT - MARGIN.top - MARGIN.bottom;
    svg.attr("width", width).attr("height", HEIGHT).attr("viewBox", `0 0 ${width} ${HEIGHT}`).attr("data-pair", pair.index);
    const x = d3.scaleLinear().domain([0, 1]).range([0, w]);
    const top = d3.max(pair.kl.flat().filter((v) => v !== null)) || 1;
    const y = d3.scaleLinear().domain([0, top * 1.05]).nice().range([h, 0]);
    renderBands(bands, cmp, x, 0, h);
    grid.selectAll("line").data(y.ticks(5)).join("line").attr("x1", 0).attr("x2", w).attr("y1", y).attr("y2", y);
    yAxis.call(d3.axisLeft(y).ticks(5));
    xAxis.attr("transform", `translate(0,${h})`).call(stageAxis(cmp, x, 0));
    yTitle.attr("transform", `translate(14,${MARGIN.top + h / 2}) rotate(-90)`).text("KL (nats)");
    xTitle.attr("x", MARGIN.left + w / 2).attr("y", HEIGHT - 6)
      .text(cmp.sameDepth ? "stage" : "stage of A (B at the same relative depth)");
    const line = d3.line().defined((v) => v !== null).x((_, s) => stageX(cmp, x, 0, s)).y((v) => y(v));
    curves.selectAll("path").data(DIRECTIONS).join("path").attr("class", (d) => `kl-curve dir-${d.key}`)
      .attr("data-dir", (d) => d.key).attr("d", (d, i) => line(pair.kl[i]));
    marks.selectAll("circle").data(DIRECTIONS).join("circle").attr("r", 3.5)
      .attr("class", (d) => `kl-mark dir-${d.key}`).attr("fill", (d) => (d.key === "ab" ? "#1f77b4" : "#d97706"))
      .attr("cx", stageX(cmp, x, 0, stage)).attr("cy", (d, i) => y(pair.kl[i][stage] ?? 0))
      .attr("data-dir", (d) => d.key).attr("data-stage", stage).attr("data-value", (d, i) => pair.kl[i][stage]);
    renderDecisions(decisions, cmp, pair, x, [0, 1], h);
    renderStageMarker(marker, cmp, x, 0, stage, h);
    overlay.attr("width", w).attr("height", h)
      .on("mousemove", (event) => {
        const s = stageAt(cmp, x, d3.pointer(event, frame.node())[0]);
        const sb = cmp.stageOfB(s);
        showTooltip(event, {
          rows: [
            { label: "stage", value: cmp.sameDepth ? cmp.runs[0].stageName(s) : `A ${cmp.runs[0].stageName(s)} · B ${cmp.runs[1].stageName(sb)}` },
            ...DIRECTIONS.map((d, i) => ({ label: d.label, value: `${formatNumber(pair.kl[i][s], 4)} nats` })),
          ],
        });
      })
      .on("mouseleave", hideTooltip)
      .on("click", (event) => onStage(stageAt(cmp, x, d3.pointer(event, frame.node())[0])));
  }

  return { draw };
}
