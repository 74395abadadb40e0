// strip.js — the prompt as a strip of tokens (invisible characters shown as stand-ins), the selected position
// highlighted and its actual next token outlined; clicking a token, the position slider or the ←/→ keys select a
// position; a line under it names the actual next token and the model's top-1.

import { MAX_TOKEN_CHARS, appendTokenParts, formatNumber, formatRank } from "./format.js";
import { showTooltip, hideTooltip } from "./tooltip.js";

/** The strip inside `root` (.strip, .pos-slider, .pos-label, .prediction); `onPosition(pos)` on a selection. */
export function createStrip(root, { onPosition }) {
  const strip = root.select(".strip");
  const slider = root.select(".pos-slider");
  const label = root.select(".pos-label");
  const prediction = root.select(".prediction");
  let exported = [];
  let built = null;
  let nodes = []; // the token spans by position (a redraw touches the two it marks, not every span of a long prompt)
  let marked = []; // the spans marked selected / next by the last redraw

  slider.on("input", function () {
    const pos = exported[Number(this.value)];
    if (pos !== undefined) onPosition(pos);
  });

  /** Rebuild the token spans (only when the run or prompt changed). */
  function build(run, prompt) {
    const key = `${run.modelId}|${prompt}|${run.promptCount}`;
    if (built && built.run === run && built.key === key) return;
    built = { run, key };
    exported = run.exportedPositions(prompt);
    const has = new Set(exported);
    const texts = run.promptTokenTexts(prompt);
    const ids = run.promptTokenIds(prompt);
    strip.selectAll("*").remove();
    nodes = [];
    marked = [];
    texts.forEach((text, i) => {
      const span = strip
        .append("span")
        .attr("class", has.has(i) ? "tok" : "tok not-exported")
        .attr("data-pos", i)
        .attr("tabindex", -1);
      nodes.push(span.node());
      appendTokenParts(span, text, MAX_TOKEN_CHARS);
      span
        .on("click", () => {
          if (has.has(i)) onPosition(i);
        })
        .on("pointerenter pointermove", (event) =>
          showTooltip(event, {
            title: text,
            rows: [
              { label: "position", value: String(i) },
              { label: "token id", value: String(ids[i]) },
            ],
          }),
        )
        .on("pointerleave", hideTooltip);
    });
    slider.attr("min", 0).attr("max", Math.max(0, exported.length - 1)).attr("step", 1);
  }

  function draw(run, prompt, position) {
    build(run, prompt);
    const pos = position.pos;
    for (const el of marked) el.classList.remove("selected", "next");
    const node = nodes[pos];
    const after = nodes[pos + 1];
    if (node) node.classList.add("selected");
    if (after) after.classList.add("next");
    marked = [node, after].filter(Boolean);
    if (node) requestAnimationFrame(() => scrollIntoStrip(node, strip.node()));
    slider.property("value", exported.indexOf(pos));
    label.text(`position ${pos} of ${run.promptTokenTexts(prompt).length - 1}`);

    prediction.selectAll("*").remove();
    const last = run.stageCount - 1;
    const addToken = (text, cls) => appendTokenParts(prediction.append("span").attr("class", `tok ${cls}`), text, MAX_TOKEN_CHARS)
      .on("pointerenter pointermove", (event) => showTooltip(event, { title: text }))
      .on("pointerleave", hideTooltip);
    prediction.append("span").attr("class", "pred-label").text("after ");
    addToken(run.promptTokenTexts(prompt)[pos], "selected");
    prediction.append("span").attr("class", "pred-label").text(" the model's top-1 is ");
    addToken(position.tokenText(0), "top1");
    prediction.append("span").attr("class", "pred-num").text(` (p = ${formatNumber(position.prob(0, last), 3)})`);
    const j = position.nextIndex;
    if (j === null || j === undefined) {
      prediction.append("span").attr("class", "pred-label").text(" · last position: no actual next token");
    } else {
      prediction.append("span").attr("class", "pred-label").text(" · actual next token ");
      addToken(position.tokenText(j), "next");
      const r = position.rank(j, last);
      prediction
        .append("span")
        .attr("class", r === 1 ? "pred-num hit" : "pred-num miss")
        .attr("data-next-rank", r)
        .text(` (rank ${formatRank(r)}, p = ${formatNumber(position.prob(j, last), 3)})`);
    }
  }

  /** Move to the previous/next exported position (delta = ±1). */
  function step(current, delta) {
    const i = exported.indexOf(current);
    const k = Math.min(exported.length - 1, Math.max(0, i + delta));
    if (exported[k] !== undefined && exported[k] !== current) onPosition(exported[k]);
  }

  return { draw, step, exportedPositions: () => exported };
}

/** Scroll the strip (not the page) so that the selected token is visible. */
function scrollIntoStrip(node, container) {
  const a = node.getBoundingClientRect();
  const b = container.getBoundingClientRect();
  if (a.top < b.top) container.scrollTop -= b.top - a.top + 4;
  else if (a.bottom > b.bottom) container.scrollTop += a.bottom - b.bottom + 4;
}
