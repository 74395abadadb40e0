// grid.js — the overview grid (the classic logit-lens picture): token positions across, all 2L+1 stages down
// (embedding at the top, the model's output at the bottom), each cell the token the stage itself ranks first
// (`stage_top` of the export), coloured by its probability, by the final top-1's rank at that stage, or by
// KL(final ‖ stage). Drawn on one canvas, only the visible columns (1,024 positions × 65 stages stay fast): token
// texts go through fillText, never into markup. Hover a cell for the stage's top-N; click it to select its position
// and stage in the three figures below. A cell whose top-1 is the actual next token gets an orange underline.
// The selection (the position's column, the (position, stage) cell) is stroked on a second, transparent canvas on
// top, so a selection change repaints that one and the stage gutter, not the cells; the scroll offset is kept here,
// so a repaint never reads layout (it runs while the figures below are being redrawn).

import { d3 } from "./d3.js";
import { formatNumber, formatRank, shortToken } from "./format.js";
import { hideTooltip, showTooltip } from "./tooltip.js";

export const GRID_COLOURS = ["prob", "rank", "kl"];
const CELL_MIN_W = 44; // px per position; wider when the prompt fits the card
const CELL_MAX_W = 120;
const CELL_H = 13; // px per stage
const LABEL_W = 62; // the frozen stage-name column
const HEADER_H = 18; // the frozen row of input tokens
const FONT = '10px ui-monospace, "DejaVu Sans Mono", Menlo, Consolas, monospace';
const CHAR_W = 6.1; // px per character of FONT (monospace), to cut labels without measuring each
const DARK_TEXT_FROM = 0.55; // colour strength above which a cell's text is white
const ATTN_BAND = "#e3e9f2"; // gutter stripes: attention rows light, FFN rows dark (as Figure 1's segments)
const FFN_BAND = "#9fb0c8";
const NEXT_MARK = "#d97706";
const ACCENT = "#1f77b4";
const COLOUR_SCALES = {
  prob: d3.interpolateBlues,
  rank: d3.interpolateGreens,
  kl: d3.interpolatePurples,
};
const LUT_SIZE = 256; // colours precomputed per scale: interpolating a d3 colour per cell costs more than drawing it
const LUTS = {};
function colourOf(scale, t) {
  let lut = LUTS[scale];
  if (!lut) {
    lut = LUTS[scale] = Array.from({ length: LUT_SIZE }, (_, k) => d3.color(COLOUR_SCALES[scale]((k / (LUT_SIZE - 1)) * 0.92 + 0.04)).formatHex());
  }
  return lut[Math.round(t * (LUT_SIZE - 1))];
}
const LEGENDS = {
  prob: ["p of the stage's top-1:", "0", "1"],
  rank: ["rank of the final top-1 (log):", "vocab", "1"],
  kl: ["KL(final ‖ stage), log scale:", "max", "0"],
};

/** The grid inside `root` (.grid-plot, .grid-scrollbar, .grid-legend, radio inputs name=grid-colour).
 *  `onSelect({pos, stage})` on a click (stage omitted for a click on the header row). */
export function createGrid(root, { onSelect, onColour }) {
  const plot = root.select(".grid-plot");
  const canvas = plot.append("canvas").attr("class", "grid-canvas").attr("role", "img")
    .attr("aria-label", "overview grid: each stage's own top-1 token at each position").node();
  const overlay = plot.append("canvas").attr("class", "grid-selection").attr("aria-hidden", "true").node();
  const scrollbar = root.select(".grid-scrollbar");
  const spacer = scrollbar.append("div").attr("class", "grid-spacer");
  const legend = root.select(".grid-legend");
  root.selectAll("input[name=grid-colour]").on("change", function () { onColour(this.value); });

  let view = null; // {run, grid, prompt, colour, sel: {pos, stage}, cellW, width, height}
  let scrollX = 0; // the scrollbar's scrollLeft, updated where it changes (set here, or its scroll event)
  let painted = null; // {scrollX, stage} of the last repaint of the cells and the gutter
  const labels = new Map(); // `${index}:${chars}` -> shortened visible text
  const drawn = new Map(); // cell -> {text, fill} of the last redraw (read by tests through canvas.lenskitGrid)

  function label(run, index, chars) {
    const key = `${index}:${chars}`;
    let hit = labels.get(key);
    if (hit === undefined) {
      hit = shortToken(run.tokenText(index), chars);
      labels.set(key, hit);
    }
    return hit;
  }

  /** Colour strength in [0, 1] of cell c (1 = darkest: sure, decided, close to the final). */
  function strength(c) {
    const g = view.grid;
    if (view.colour === "rank") return 1 - Math.log(g.rank[c]) / Math.log(Math.max(2, view.run.vocabSize));
    if (view.colour === "kl") return 1 - Math.log1p(g.kl[c]) / view.klLog;
    return Math.exp(g.logp[c]);
  }

  function layout(width) {
    const P = view.grid.positions.length;
    view.width = Math.max(LABEL_W + CELL_MIN_W, width);
    view.cellW = Math.min(CELL_MAX_W, Math.max(CELL_MIN_W, (view.width - LABEL_W) / P));
    view.height = HEADER_H + view.grid.stageCount * CELL_H;
    const content = P * view.cellW; // the scrollbar spans the cells only (it starts under the first column)
    spacer.style("width", `${content}px`);
    scrollbar.style("display", content > view.width - LABEL_W + 0.5 ? null : "none");
    const dpr = window.devicePixelRatio || 1;
    for (const c of [canvas, overlay]) {
      c.width = Math.round(view.width * dpr);
      c.height = Math.round(view.height * dpr);
      c.style.width = `${view.width}px`;
      c.style.height = `${view.height}px`;
    }
    scrollX = scrollbar.node().scrollLeft || 0; // the new content width may have clamped it
  }

  /** Paint the visible columns: header, stage gutter, cells, selection. */
  function redraw() {
    const t0 = performance.now();
    const { run, grid, cellW } = view;
    const S = grid.stageCount;
    const P = grid.positions.length;
    const dpr = window.devicePixelRatio || 1;
    const ctx = canvas.getContext("2d");
    ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
    ctx.clearRect(0, 0, view.width, view.height);
    ctx.font = FONT;
    ctx.textBaseline = "middle";
    ctx.textAlign = "center";
    const i0 = Math.max(0, Math.floor(scrollX / cellW));
    const i1 = Math.min(P, Math.ceil((scrollX + view.width - LABEL_W) / cellW));
    const chars = Math.max(1, Math.floor((cellW - 4) / CHAR_W));
    drawn.clear();
    ctx.save();
    ctx.beginPath();
    ctx.rect(LABEL_W, 0, view.width - LABEL_W, view.height);
    ctx.clip();
    for (let i = i0; i < i1; i++) {
      const x = LABEL_W + i * cellW - scrollX;
      ctx.fillStyle = "#1d2330";
      ctx.fillText(label(run, grid.inputs[i], chars), x + cellW / 2, HEADER_H / 2 + 1);
      for (let s = 0; s < S; s++) {
        const c = i * S + s;
        const y = HEADER_H + s * CELL_H;
        const t = Math.min(1, Math.max(0, strength(c)));
        const fill = colourOf(view.colour, t);
        ctx.fillStyle = fill;
        ctx.fillRect(x, y, cellW - 1, CELL_H - 1);
        const text = label(run, grid.top[c], chars);
        ctx.fillStyle = t > DARK_TEXT_FROM ? "#ffffff" : "#1d2330";
        ctx.fillText(text, x + cellW / 2, y + CELL_H / 2);
        if (grid.top[c] === grid.next[i]) {
          ctx.fillStyle = NEXT_MARK;
          ctx.fillRect(x + 2, y + CELL_H - 3, cellW - 5, 2);
        }
        drawn.set(c, { text, fill });
      }
    }
    ctx.restore();
    paintGutter(ctx);
    paintSelection();
    painted = { scrollX, stage: view.sel.stage };
    const ms = performance.now() - t0;
    canvas.dataset.drawMs = ms.toFixed(2);
    canvas.dataset.cellsDrawn = String(drawn.size);
    canvas.dataset.firstColumn = String(i0);
  }

  /** The frozen stage gutter: embed, then per layer an attention row (light band) and an FFN row (dark band); the
   *  selected stage's name in the accent colour. */
  function paintGutter(ctx) {
    const { run, grid } = view;
    const S = grid.stageCount;
    ctx.clearRect(0, 0, LABEL_W, view.height);
    ctx.font = FONT;
    ctx.textBaseline = "middle";
    ctx.textAlign = "right";
    for (let s = 0; s < S; s++) {
      const y = HEADER_H + s * CELL_H;
      const kind = run.stageKind(s);
      ctx.fillStyle = kind === "attn" ? ATTN_BAND : kind === "ffn" ? FFN_BAND : "#ffffff";
      ctx.fillRect(LABEL_W - 6, y, 5, CELL_H - 1);
      ctx.fillStyle = s === view.sel.stage ? ACCENT : kind === "attn" ? "#8a94a6" : "#1d2330";
      const name = kind === "embed" ? "embed" : kind === "attn" ? `L${run.stageLayer(s)} attn` : `L${run.stageLayer(s)} ffn`;
      ctx.fillText(name, LABEL_W - 9, y + CELL_H / 2);
    }
  }

  /** The selection on the overlay canvas: the position's column and the (position, stage) cell, clipped to the cells. */
  function paintSelection() {
    const dpr = window.devicePixelRatio || 1;
    const ctx = overlay.getContext("2d");
    ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
    ctx.clearRect(0, 0, view.width, view.height);
    const si = view.grid.positions.indexOf(view.sel.pos);
    if (si < 0) return;
    const { cellW } = view;
    ctx.save();
    ctx.beginPath();
    ctx.rect(LABEL_W, 0, view.width - LABEL_W, view.height);
    ctx.clip();
    const x = LABEL_W + si * cellW - scrollX;
    ctx.strokeStyle = ACCENT;
    ctx.lineWidth = 1;
    ctx.strokeRect(x - 0.5, 0.5, cellW, view.height - 1);
    ctx.lineWidth = 2.5;
    ctx.strokeRect(x - 1, HEADER_H + view.sel.stage * CELL_H - 1, cellW + 1, CELL_H + 1);
    ctx.restore();
  }

  /** The cell under a pointer event: {i, s} (s = -1 on the header row), or null. */
  function cellAt(event) {
    const r = canvas.getBoundingClientRect();
    const x = event.clientX - r.left;
    const y = event.clientY - r.top;
    if (x < LABEL_W || y < 0 || y >= view.height) return null;
    const i = Math.floor((x - LABEL_W + scrollX) / view.cellW);
    if (i < 0 || i >= view.grid.positions.length) return null;
    const s = y < HEADER_H ? -1 : Math.floor((y - HEADER_H) / CELL_H);
    return s < view.grid.stageCount ? { i, s } : null;
  }

  function hover(event) {
    const hit = view && cellAt(event);
    if (!hit) {
      hideTooltip();
      return;
    }
    const { run, grid, prompt } = view;
    const pos = grid.positions[hit.i];
    if (hit.s < 0) {
      showTooltip(event, { title: run.tokenText(grid.inputs[hit.i]), rows: [{ label: "position", value: String(pos) }] });
      return;
    }
    const position = run.position(prompt, pos, grid.lens);
    const s = hit.s;
    const c = hit.i * grid.stageCount + s;
    const rows = [
      { label: "position", value: `${pos}` },
      { label: "input", token: run.tokenText(grid.inputs[hit.i]) },
      { label: "stage", value: `${run.stageName(s)} · ${run.stageLabel(s)}` },
    ];
    for (let j = 0; j < position.stageTopCount; j++) {
      const t = position.stageTop(s, j);
      rows.push({ label: `#${j + 1} · p ${formatNumber(t.prob, 3)}`, token: t.text });
    }
    rows.push({ label: "final top-1", token: position.tokenText(0) });
    rows.push({ label: "its rank here", value: formatRank(grid.rank[c]) });
    rows.push({ label: "KL(final ‖ stage)", value: `${formatNumber(grid.kl[c], 3)} nats` });
    showTooltip(event, { title: position.stageTop(s, 0).text, rows });
  }

  d3.select(canvas)
    .on("pointermove", hover)
    .on("pointerleave", hideTooltip)
    .on("click", (event) => {
      const hit = view && cellAt(event);
      if (!hit) return;
      const pos = view.grid.positions[hit.i];
      onSelect(hit.s < 0 ? { pos } : { pos, stage: hit.s });
    })
    .on("wheel", (event) => {
      const dx = event.deltaX || (event.shiftKey ? event.deltaY : 0);
      if (!dx || scrollbar.style("display") === "none") return;
      scrollbar.node().scrollLeft += dx;
      event.preventDefault();
    });
  scrollbar.on("scroll", () => {
    scrollX = scrollbar.node().scrollLeft || 0;
    if (view) requestAnimationFrame(redraw);
  });

  /** Bring the selected column into view (the strip or the keys may have moved it); whether it scrolled. */
  function reveal() {
    const i = view.grid.positions.indexOf(view.sel.pos);
    const visible = view.width - LABEL_W;
    const x = i * view.cellW;
    if (x < scrollX || x + view.cellW > scrollX + visible) {
      const node = scrollbar.node();
      node.scrollLeft = Math.max(0, x - visible / 2);
      const moved = (node.scrollLeft || 0) !== scrollX;
      scrollX = node.scrollLeft || 0;
      return moved;
    }
    return false;
  }

  /** Draw the grid of `s.prompt` as lens `s.lens` sees it (hidden when the export has no stage_top). */
  function draw(run, s, width) {
    const grid = run.grid(s.prompt, s.lens || 0);
    root.attr("hidden", grid ? null : true);
    if (!grid) {
      view = null;
      return;
    }
    const wanted = s.lens || 0;
    root.select(".grid-lens-note")
      .attr("hidden", wanted === grid.lens ? true : null)
      .text(wanted === grid.lens ? "" : `This grid shows lens ${grid.lens} (${run.lensLabel(grid.lens)}): the export has no per-stage top tokens for lens ${wanted} (${run.lensLabel(wanted)}).`);
    let klMax = 0;
    for (let c = 0; c < grid.kl.length; c++) if (grid.kl[c] > klMax) klMax = grid.kl[c];
    if (!view || view.run !== run) labels.clear();
    view = { run, grid, prompt: s.prompt, colour: s.grid, sel: { pos: s.pos, stage: s.stage }, klLog: Math.log1p(klMax) || 1 };
    root.selectAll("input[name=grid-colour]").property("checked", function () { return this.value === s.grid; });
    drawLegend();
    layout(width);
    canvas.dataset.positions = String(grid.positions.length);
    canvas.dataset.stages = String(grid.stageCount);
    canvas.dataset.colour = s.grid;
    canvas.dataset.lens = String(grid.lens);
    reveal();
    redraw();
  }

  /** The selection changed (position or stage): repaint the cells only where the grid scrolled, else the
   *  selection (and the gutter, for a new stage). */
  function select(s) {
    if (!view) return;
    view.sel = { pos: s.pos, stage: s.stage };
    if (reveal() || !painted || painted.scrollX !== scrollX) {
      redraw();
      return;
    }
    if (painted.stage !== s.stage) {
      const ctx = canvas.getContext("2d");
      const dpr = window.devicePixelRatio || 1;
      ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
      paintGutter(ctx);
      painted.stage = s.stage;
    }
    paintSelection();
  }

  function drawLegend() {
    const [title, lo, hi] = LEGENDS[view.colour];
    legend.selectAll("*").remove();
    legend.append("span").attr("class", "control-label").text(`${title} ${lo}`);
    const ramp = legend.append("span").attr("class", "grid-ramp");
    for (let k = 0; k <= 8; k++) ramp.append("span").style("background", colourOf(view.colour, k / 8));
    legend.append("span").attr("class", "control-label").text(hi);
    legend.append("span").attr("class", "grid-next-key").text("▁ top-1 = actual next token");
  }

  // For tests: layout and what the last repaint drew, per cell.
  canvas.lenskitGrid = {
    cellCentre(i, s) {
      const x = LABEL_W + (i + 0.5) * view.cellW - scrollX;
      return { x, y: s < 0 ? HEADER_H / 2 : HEADER_H + (s + 0.5) * CELL_H };
    },
    drawnCell(i, s) { return drawn.get(i * view.grid.stageCount + s) || null; },
    redraw() { const t0 = performance.now(); redraw(); return performance.now() - t0; },
    scrollTo(x) { scrollbar.node().scrollLeft = x; scrollX = scrollbar.node().scrollLeft || 0; redraw(); return scrollX; },
  };

  return { draw, select };
}
