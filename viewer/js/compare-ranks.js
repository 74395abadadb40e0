// compare-ranks.js — the compare page's rank figure: every token of the pair (the union of both models' final top
// tokens, and each side's actual next token) as its rank among the whole vocabulary over the stages, log y axis,
// A solid and B dashed, overlaid on one stage axis or side by side; decision stages and the selected stage marked.

import { d3 } from "./d3.js";
import { createChart } from "./chart.js";
import { MAX_TOKEN_CHARS, appendTokenParts, formatNumber, formatRank } from "./format.js";
import { hideTooltip, showTooltip } from "./tooltip.js";
import { colorOf, renderBands, renderDecisions, renderStageMarker, stageAt, stageAxis, stageX } from "./compare-chart.js";

const HEIGHT = 360;
const MARGIN = { top: 14, right: 14, bottom: 44, left: 62 };
const PANEL_GAP = 46;
const HOVER_PX = 40;

function roles(pair, j) {
  const out = [];
  for (const k of [0, 1]) {
    if (pair.top(j, k) !== null) out.push(`${"AB"[k]} #${pair.top(j, k)}`);
    if (pair.isNext(j, k)) out.push(`next in ${"AB"[k]}`);
  }
  return out.join(" · ");
}

/** The rank figure inside `root`; `onStage(s)` when a point is clicked (A's stage), `onToggle(j)` for the legend. */
export function createCompareRanks(root, { onStage, onToggle }) {
  const plot = root.select(".plot");
  const legend = root.select(".legend");
  const { svg, frame, yTitle, xTitle } = createChart(plot, "rank curves of both models", MARGIN, [["panels", "panels"]]);


  function draw(cmp, pair, { stage, view, hidden }, width) {
    const sidesPerPanel = view === "side" ? [[0], [1]] : [[0, 1]];
    const w = width - MARGIN.left - MARGIN.right;
    const h = HEIGHT - MARGIN.top - MARGIN.bottom;
    const pw = (w - PANEL_GAP * (sidesPerPanel.length - 1)) / sidesPerPanel.length;
    svg.attr("width", width).attr("height", HEIGHT).attr("viewBox", `0 0 ${width} ${HEIGHT}`)
      .attr("data-pair", pair.index).attr("data-view", view);
    const x = d3.scaleLinear().domain([0, 1]).range([0, pw]);
    const y = d3.scaleLog().domain([1, Math.max(10, cmp.maxVocab)]).range([0, h]).clamp(true);
    const ticks = y.ticks().filter((t) => Math.abs(Math.log10(t) % 1) < 1e-9);
    const line = d3.line().x((d) => d.x).y((d) => d.y);

    const panels = frame.select(".panels").selectAll("g.panel").data(sidesPerPanel, (d) => d.join(""))
      .join((enter) => {
        const g = enter.append("g").attr("class", "panel");
        for (const cls of ["bands", "grid", "axis y-axis", "axis x-axis", "curves", "decisions", "marks"]) {
          g.append("g").attr("class", cls);
        }
        g.append("line").attr("class", "stage-marker");
        g.append("text").attr("class", "panel-title");
        g.append("circle").attr("class", "hover-dot").attr("r", 4).attr("hidden", true);
        g.append("rect").attr("class", "overlay");
        return g;
      });
    panels.attr("transform", (_, i) => `translate(${i * (pw + PANEL_GAP)},0)`);
    panels.each(function (sides, i) {
      const g = d3.select(this);
      const k0 = sides[0];
      renderBands(g.select(".bands"), cmp, x, k0, h);
      g.select(".grid").selectAll("line").data(ticks).join("line").attr("x1", 0).attr("x2", pw).attr("y1", y).attr("y2", y);
      g.select(".y-axis").call(d3.axisLeft(y).tickValues(ticks).tickFormat(d3.format("~s")));
      g.select(".x-axis").attr("transform", `translate(0,${h})`).call(stageAxis(cmp, x, k0));
      g.select(".panel-title").attr("x", 4).attr("y", -3)
        .text(sidesPerPanel.length > 1 ? `${"AB"[k0]} — ${cmp.label(k0)}` : "");

      const curves = [];
      const marks = [];
      for (let j = 0; j < pair.tokenCount; j++) {
        for (const k of sides) {
          const ranks = pair.rank(j, k);
          if (!ranks) continue;
          const pts = ranks.map((r, s) => ({ x: stageX(cmp, x, k, s), y: y(r) }));
          const sk = k === 0 ? stage : cmp.stageOfB(stage);
          curves.push({ j, k, pts, off: hidden.has(j) });
          if (!hidden.has(j)) marks.push({ j, k, s: sk, rank: ranks[sk], x: stageX(cmp, x, k, sk), y: y(ranks[sk]) });
        }
      }
      g.select(".curves").selectAll("path").data(curves).join("path")
        .attr("class", (c) => `cmp-curve side-${"ab"[c.k]}${c.off ? " dim" : ""}`)
        .attr("data-token", (c) => c.j).attr("data-side", (c) => "ab"[c.k])
        .attr("stroke", (c) => colorOf(c.j)).attr("d", (c) => line(c.pts));
      g.select(".marks").selectAll("circle").data(marks).join("circle").attr("class", "at-stage")
        .attr("r", 3).attr("fill", (m) => colorOf(m.j)).attr("cx", (m) => m.x).attr("cy", (m) => m.y)
        .attr("data-token", (m) => m.j).attr("data-side", (m) => "ab"[m.k]).attr("data-stage", (m) => m.s)
        .attr("data-rank", (m) => m.rank);
      renderDecisions(g.select(".decisions"), cmp, pair, x, sides, h);
      renderStageMarker(g.select(".stage-marker"), cmp, x, k0, k0 === 0 ? stage : cmp.stageOfB(stage), h);

      const dot = g.select(".hover-dot");
      g.select(".overlay").attr("width", pw).attr("height", h)
        .on("mousemove", (event) => {
          const [px, py] = d3.pointer(event, g.node());
          const sA = stageAt(cmp, x, px);
          let best = null;
          for (const c of curves) {
            if (c.off) continue;
            const s = c.k === 0 ? sA : cmp.stageOfB(sA);
            const p = c.pts[s];
            const d = Math.hypot(p.x - px, p.y - py);
            if (d <= HOVER_PX && (!best || d < best.d)) best = { d, c, s, p };
          }
          if (!best) {
            dot.attr("hidden", true);
            hideTooltip();
            return;
          }
          const { c, s, p } = best;
          dot.attr("hidden", null).attr("cx", p.x).attr("cy", p.y).attr("stroke", colorOf(c.j));
          const logp = pair.logp(c.j, c.k);
          showTooltip(event, {
            title: pair.text(c.j),
            rows: [
              { label: "model", value: `${"AB"[c.k]} (${c.k === 0 ? "solid" : "dashed"}) — ${cmp.label(c.k)}` },
              { label: "stage", value: cmp.runs[c.k].stageName(s) },
              { label: "rank", value: formatRank(pair.rank(c.j, c.k)[s]) },
              { label: "p", value: logp ? formatNumber(Math.exp(logp[s]), 4) : "–" },
              { label: "role", value: roles(pair, c.j) || "–" },
            ],
          });
        })
        .on("mouseleave", () => {
          dot.attr("hidden", true);
          hideTooltip();
        })
        .on("click", (event) => onStage(stageAt(cmp, x, d3.pointer(event, g.node())[0])));
    });
    yTitle.attr("transform", `translate(14,${MARGIN.top + h / 2}) rotate(-90)`).text("rank (1 = top, log scale)");
    xTitle.attr("x", MARGIN.left + w / 2).attr("y", HEIGHT - 6)
      .text(cmp.sameDepth ? "stage (light band = attention block)" : "relative depth (the models differ in depth; light band = attention block)");
    renderCompareLegend(legend, cmp, pair, hidden, onToggle);

  }

  return { draw };
}

function renderCompareLegend(container, cmp, pair, hidden, onToggle) {
  container.selectAll("*").remove();
  const styles = container.append("div").attr("class", "legend-blocks");
  for (const k of [0, 1]) {
    const item = styles.append("span").attr("class", "legend-item");
    item.append("svg").attr("width", 24).attr("height", 8).append("line").attr("x1", 0).attr("x2", 24)
      .attr("y1", 4).attr("y2", 4).attr("stroke", "#1d2330").attr("stroke-width", 2)
      .attr("stroke-dasharray", k === 1 ? "6 3" : null);
    item.append("span").text(`${"AB"[k]}: ${cmp.label(k)}`);
  }
  const tokens = container.append("div").attr("class", "legend-tokens");
  for (let j = 0; j < pair.tokenCount; j++) {
    const item = tokens.append("span").attr("class", `legend-item${hidden.has(j) ? " off" : ""}`)
      .attr("data-token", j).attr("title", `${pair.text(j)} (click to hide or show)`);
    item.append("span").attr("class", "swatch").style("background", colorOf(j));
    appendTokenParts(item.append("span").attr("class", "tok-text"), pair.text(j), MAX_TOKEN_CHARS);
    item.append("span").attr("class", "legend-roles").text(roles(pair, j));
    for (const k of [0, 1]) {
      if (pair.missing(j, k)) item.append("span").attr("class", "legend-gap").text(`no ${"AB"[k]} curve: ${pair.missing(j, k)}`);
    }
    item.on("click", () => onToggle(j));
  }
}
