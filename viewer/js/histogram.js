// histogram.js — Figure 3 "Histogram of Logits": at one position and one stage (the stage slider), the z-scored
// scores of the whole vocabulary in the export's bins, log counts; bins holding tracked tokens are drawn lighter and
// marked with the tokens' colours; hovering a bin shows its count, z range and sample tokens (the sparse bins' tokens).

import { d3 } from "./d3.js";
import { createChart, setChanged, setTextChanged } from "./chart.js";
import { formatNumber, formatRank } from "./format.js";
import { tokenColor } from "./curves.js";
import { showTooltip, hideTooltip } from "./tooltip.js";

const HEIGHT = 300;
const MARGIN = { top: 16, right: 14, bottom: 44, left: 62 };
const Y_MIN = 0.6; // log axis floor, so a bin of count 1 still shows as a bar
const MARK_RADIUS = 3.5;
const MARK_STEP = 8;

/** Figure 3 inside `root` (.plot, .stage-slider, .stage-label, .stage-stats); `onStage(s)` when the slider moves. */
export function createHistogram(root, { onStage }) {
  const plot = root.select(".plot");
  const slider = root.select(".stage-slider");
  const label = root.select(".stage-label");
  const stats = root.select(".stage-stats");
  const { svg, grid, barsLayer, marksLayer, yAxis, xAxis, yTitle, xTitle } = createChart(
    plot, "Figure 3: histogram of logits", MARGIN,
    [["grid", "grid"], ["barsLayer", "bars"], ["marksLayer", "marks"], ["yAxis", "axis y-axis"], ["xAxis", "axis x-axis"]],
  );

  slider.on("input", function () {
    onStage(Number(this.value));
  });
  let shown = null; // {run, position} drawn: what a bar's hover describes
  let yAxisKey = null; // the y domain, height and width the y axis and grid lines were drawn for
  let xAxisKey = null; // {run, w} of the x axis drawn (it does not depend on the position or the stage)

  function draw(run, position, stage, width) {
    const w = width - MARGIN.left - MARGIN.right;
    const h = HEIGHT - MARGIN.top - MARGIN.bottom;
    svg.call(setChanged, "width", width).call(setChanged, "height", HEIGHT).call(setChanged, "viewBox", `0 0 ${width} ${HEIGHT}`);
    svg.attr("data-pos", position.pos).attr("data-stage", stage);
    slider.attr("min", 0).attr("max", run.stageCount - 1).property("value", stage);
    label.call(setTextChanged, `${run.stageLabel(stage)}  (stage ${stage} of ${run.stageCount - 1})`);
    stats.call(
      setTextChanged,
      `mean ${formatNumber(position.mean(stage), 3)} · std ${formatNumber(position.std(stage), 3)} · ` +
        `entropy ${formatNumber(position.entropy(stage), 3)} nats · KL(final ‖ stage) ${formatNumber(position.kl(stage), 3)} nats`,
    );

    const x = d3.scaleLinear().domain([run.zMin, run.zMax]).range([0, w]);
    let y, hist;
    try {
      y = d3.scaleLog().domain([Y_MIN, position.maxBinCount * 1.3]).range([h, 0]);
      hist = position.histogram(stage); // decodes the position's histogram strings
    } catch (err) {
      // A string that does not decode (a hand-edited document): no bars rather than another position's.
      shown = null;
      barsLayer.selectAll("rect.bin").remove();
      marksLayer.selectAll("circle.mark").remove();
      stats.call(setTextChanged, `histogram not drawn: ${String(err.message || err)}`);
      svg.attr("data-error", "");
      throw err;
    }
    svg.attr("data-error", null);

    // Tracked tokens by bin.
    const trackedIn = new Map();
    for (let j = 0; j < position.trackedCount; j++) {
      const b = position.bin(j, stage);
      if (!trackedIn.has(b)) trackedIn.set(b, []);
      trackedIn.get(b).push(j);
    }
    const bins = hist.bins.map((d) => ({ ...d, tracked: trackedIn.get(d.bin) || [] }));

    shown = { run, position };
    barsLayer
      .selectAll("rect.bin")
      .data(bins, (d) => d.bin)
      .join((enter) => enter.append("rect")
        .on("pointerenter pointermove", (event, d) => binTooltip(event, shown.run, shown.position, d))
        .on("pointerleave", hideTooltip))
      .call(setChanged, "class", (d) => (d.tracked.length ? "bin tracked" : "bin"))
      .call(setChanged, "x", (d) => x(d.z0) + 0.5)
      .call(setChanged, "width", (d) => Math.max(1, x(d.z1) - x(d.z0) - 1))
      .call(setChanged, "y", (d) => y(d.count))
      .call(setChanged, "height", (d) => Math.max(0, h - y(d.count)))
      .attr("data-bin", (d) => d.bin)
      .attr("data-count", (d) => d.count)
      .attr("data-tracked", (d) => (d.tracked.length ? d.tracked.join(" ") : null));

    const marks = [];
    for (const d of bins) {
      d.tracked.forEach((j, k) => marks.push({ j, bin: d.bin, cx: x((d.z0 + d.z1) / 2), cy: y(d.count) - MARK_RADIUS - 2 - k * MARK_STEP }));
    }
    marksLayer
      .selectAll("circle.mark")
      .data(marks)
      .join((enter) => enter.append("circle").attr("class", "mark").attr("r", MARK_RADIUS))
      .call(setChanged, "cx", (m) => m.cx)
      .call(setChanged, "cy", (m) => Math.max(MARK_RADIUS, m.cy))
      .call(setChanged, "fill", (m) => tokenColor(m.j, position.topCount))
      .attr("data-token", (m) => m.j)
      .attr("data-bin", (m) => m.bin);

    const yKey = `${y.domain()}|${h}|${w}`; // a position's y range is the same at every stage
    if (yKey !== yAxisKey) {
      const ticks = y.ticks().filter((t) => t >= 1 && Math.log10(t) % 1 === 0);
      yAxis.call(d3.axisLeft(y).tickValues(ticks).tickFormat(d3.format("~s")));
      grid.selectAll("line").data(ticks).join("line").attr("x1", 0).attr("x2", w).attr("y1", y).attr("y2", y);
      yAxisKey = yKey;
    }
    if (xAxisKey === null || xAxisKey.run !== run || xAxisKey.w !== w) {
      xAxis.attr("transform", `translate(0,${h})`).call(d3.axisBottom(x).ticks(10));
      yTitle.attr("transform", `translate(14,${MARGIN.top + h / 2}) rotate(-90)`).text("tokens per bin (log)");
      xTitle.attr("x", MARGIN.left + w / 2).attr("y", HEIGHT - 6).text("z-score of the logit: (score − mean) / std at this stage");
      xAxisKey = { run, w };
    }
  }

  return { draw };
}

function binTooltip(event, run, position, d) {
  const rows = [
    { label: "bin", value: `${d.bin}: z ∈ [${formatNumber(d.z0, 2)}, ${formatNumber(d.z1, 2)})` },
    { label: "tokens", value: formatRank(d.count) },
    d.samples.length
      ? { label: d.samples.length < d.count ? "samples" : "all", tokens: d.samples }
      : { label: "samples", value: `none stored (only bins of ≤ ${run.samplesPerBin} tokens list theirs)` },
  ];
  if (d.tracked.length) {
    rows.push({ label: "tracked", tokens: d.tracked.map((j) => position.tokenText(j)) });
  }
  showTooltip(event, { rows });
}
