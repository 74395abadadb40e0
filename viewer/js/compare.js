// compare.js — boots the compare page (compare.html): loads the served comparisons (runs.json "compares"), restores
// the view from the URL (#cmp=…&pair=…&stage=…&view=overlay|side), draws the two token strips, the rank figure and the
// KL figure, and links them through one small state store. Token texts are set with .text() only.

import { d3 } from "./d3.js";
import { MAX_TOKEN_CHARS, appendTokenParts, formatNumber } from "./format.js";
import { hideTooltip } from "./tooltip.js";
import { loadCompare, loadCompareList } from "./compare-data.js";
import { createCompareRanks } from "./compare-ranks.js";
import { createCompareKl } from "./compare-kl.js";
import { firstThatLoads, readUrlState, writeUrlState } from "./state.js";

const STATE_KEYS = ["cmp", "pair", "stage", "view"];
const NUMERIC_KEYS = new Set(["pair", "stage"]);
const VIEWS = ["overlay", "side"];
const RESIZE_DEBOUNCE_MS = 120;
const MIN_PLOT_WIDTH = 480;

function showStatus(message, isError = false) {
  d3.select("#status").classed("error", isError).text(message).attr("hidden", message ? null : true);
}

function clampInt(v, lo, hi, fallback) {
  return Number.isInteger(v) && v >= lo && v <= hi ? v : fallback;
}

const ALIGN_NOTES = {
  position: "Positions are paired one by one (the same tokens on both sides).",
  start: "The prompts' first tokens are paired (the prompts differ in length).",
  end: "The prompts' last tokens are paired, so the next-token predictions meet (the prompts differ in length).",
  chars: "The models tokenize the text differently: positions are paired by character offset — where both have read exactly the same characters of the text. Greyed tokens end inside the other model's token and have no partner.",
};

function relationNote(cmp) {
  const [a, b] = cmp.runs;
  const through = (kind) => (kind === null ? "an unnamed lens" : `the ${kind} lens`); // null: a malformed lens entry
  const lens = a.lens === b.lens ? (a.lens === "logit" ? "" : ` Both through ${through(a.lens)}.`)
    : ` A through ${through(a.lens)}, B through ${through(b.lens)}.`;
  if (cmp.relation === "models") return `One prompt on two models: A = ${a.modelId}, B = ${b.modelId}.${lens}`;
  if (cmp.relation === "prompts") return `One model (${a.modelId}) on two prompts.${lens}`;
  return `One model (${a.modelId}) on one prompt, twice.${lens}`;
}

function drawStrip(el, cmp, k, pair, onPair) {
  const run = cmp.runs[k];
  const toks = el.selectAll("span.tok").data(run.tokens).join((enter) => enter.append("span").each(function (t) {
    appendTokenParts(d3.select(this), t, MAX_TOKEN_CHARS); // the title holds the whole text
  }));
  toks.attr("class", (_, pos) => {
    const i = cmp.pairOf(k, pos);
    return `tok${i === undefined ? " unaligned" : ""}${pos === pair.pos[k] ? " selected" : ""}`;
  })
    .attr("data-pos", (_, pos) => pos)
    .attr("title", (t, pos) => `${"AB"[k]} position ${pos}: ${JSON.stringify(t)}${cmp.pairOf(k, pos) === undefined ? " (no partner)" : ""}`);
  toks.each(function (_, pos) {
    d3.select(this).on("click", () => {
      const i = cmp.pairOf(k, pos);
      if (i !== undefined) onPair(i);
    });
  });
}

function drawSummary(el, cmp, pair, stage) {
  el.selectAll("*").remove();
  for (const k of [0, 1]) {
    el.append("span").attr("class", "pred-label").text(`${"AB"[k]} (${k === 0 ? "solid" : "dashed"})`);
    const row = el.append("span");
    const j = pair.top1(k);
    const last = cmp.runs[k].stageCount - 1;
    if (j < 0) {
      row.append("span").text("top-1 not listed"); // a hand-edited document: no token has top 1 on this side
    } else {
      row.append("span").text("top-1 ");
      appendTokenParts(row.append("span").attr("class", "tok").attr("title", pair.text(j)), pair.text(j), MAX_TOKEN_CHARS);
      const logp = pair.logp(j, k);
      if (logp && logp[last] !== null) row.append("span").text(` p = ${formatNumber(Math.exp(logp[last]), 3)}`);
    }
    row.append("span").text(` · decides at ${cmp.runs[k].stageName(pair.decide[k])} (stage ${pair.decide[k]} of ${last})`);
    if (pair.next[k] !== null) {
      row.append("span").text(" · actual next ");
      appendTokenParts(row.append("span").attr("class", "tok").attr("title", pair.next[k]), pair.next[k], MAX_TOKEN_CHARS);
    }
  }
  if (pair.kl) {
    const sb = cmp.stageOfB(stage);
    el.append("span").attr("class", "pred-label").text("KL");
    el.append("span").text(`at ${cmp.runs[0].stageName(stage)}${cmp.sameDepth ? "" : ` / ${cmp.runs[1].stageName(sb)}`}: ` +
      `KL(A ‖ B) = ${formatNumber(pair.kl[0][stage], 4)} nats, KL(B ‖ A) = ${formatNumber(pair.kl[1][stage], 4)} nats; ` +
      `at the last stage ${formatNumber(pair.kl[0][pair.kl[0].length - 1], 4)} / ${formatNumber(pair.kl[1][pair.kl[1].length - 1], 4)}`);
  }
}

async function boot() {
  const started = performance.now();
  const root = d3.select(document.documentElement);
  root.attr("data-state", "loading");
  const list = await loadCompareList();
  if (list.length === 0) throw new Error("no comparisons to show: serve a folder written by `lenskit compare` (lenskit serve OUT)");
  const wanted = readUrlState(window.location, STATE_KEYS, NUMERIC_KEYS);
  const wantedEntry = list.find((c) => c.name === wanted.cmp) || list[0];
  // The wanted comparison, else the next one that loads: one broken compare.json does not stop the page.
  const shown = await firstThatLoads(list, wantedEntry, loadCompare, (candidate, err) =>
    new Error(list.length > 1 ? `${candidate.name}: ${err.message || err}` : String(err.message || err)));
  const entry = shown.entry;
  const cmp = shown.value;
  if (shown.error) showStatus(`${shown.error.message} — showing ${entry.name}`, true);
  if (entry.embedded) d3.select("#single-runs").attr("hidden", true); // a single-file report has no other pages

  if (list.length > 1) {
    d3.select("#cmp-picker").attr("hidden", null);
    d3.select("#cmp-select").selectAll("option").data(list).join("option")
      .attr("value", (d) => d.name).property("selected", (d) => d.name === entry.name).text((d) => d.name);
    d3.select("#cmp-select").on("change", (event) => {
      writeUrlState({ cmp: event.target.value }, STATE_KEYS);
      window.location.reload();
    });
  }
  d3.select("#model-info").text(`A: ${cmp.label(0)} · B: ${cmp.label(1)} · ${cmp.pairCount} aligned position(s)`);
  d3.select("#align-note").text([relationNote(cmp), ALIGN_NOTES[cmp.align],
    cmp.source === "exports" ? "Computed from the two export.json files only: a token an export did not track has no curve on that side, and there is no KL." : "",
    cmp.vocabulary === "separate" ? "The vocabularies differ: tokens are matched by text, and a token that is not one token of a model has no curve there." : "",
  ].filter(Boolean).join(" "));

  const S = cmp.runs[0].stageCount;
  let state = {
    cmp: entry.name,
    pair: clampInt(wanted.pair, 0, cmp.pairCount - 1, cmp.pairCount - 1),
    stage: clampInt(wanted.stage, 0, S - 1, S - 1),
    view: VIEWS.includes(wanted.view) ? wanted.view : "overlay",
  };
  let hidden = new Set();
  const set = (patch) => {
    const next = { ...state, ...patch };
    if (STATE_KEYS.every((k) => next[k] === state[k])) return;
    if (next.pair !== state.pair) hidden = new Set();
    state = next;
    drawAll();
  };
  const ranks = createCompareRanks(d3.select("#fig-cmp-ranks"), {
    onStage: (stage) => set({ stage }),
    onToggle: (j) => {
      hidden = new Set(hidden);
      if (hidden.has(j)) hidden.delete(j); else hidden.add(j);
      drawAll();
    },
  });
  const kl = createCompareKl(d3.select("#fig-cmp-kl"), { onStage: (stage) => set({ stage }) });
  const pairSlider = d3.select("#pair-slider").attr("max", cmp.pairCount - 1)
    .on("input", (event) => set({ pair: Number(event.target.value) }));
  const stageSlider = d3.select("#stage-slider").attr("max", S - 1)
    .on("input", (event) => set({ stage: Number(event.target.value) }));
  d3.selectAll("input[name=view]").on("change", (event) => set({ view: event.target.value }));

  function drawAll() {
    const pair = cmp.pair(state.pair);
    const width = Math.max(MIN_PLOT_WIDTH, d3.select("#fig-cmp-ranks .plot").node().clientWidth);
    drawStrip(d3.select("#strip-a"), cmp, 0, pair, (i) => set({ pair: i }));
    drawStrip(d3.select("#strip-b"), cmp, 1, pair, (i) => set({ pair: i }));
    pairSlider.property("value", state.pair);
    stageSlider.property("value", state.stage);
    d3.selectAll("input[name=view]").property("checked", function () { return this.value === state.view; });
    const [pa, pb] = pair.pos;
    d3.select("#pair-label").text(`${state.pair + 1} of ${cmp.pairCount}: A position ${pa}, B position ${pb}` +
      (pair.end !== null && pair.end !== undefined ? ` (both have read ${pair.end} characters)` : ""));
    d3.select("#stage-label").text(`${cmp.runs[0].stageName(state.stage)}` +
      (cmp.sameDepth ? "" : ` (B: ${cmp.runs[1].stageName(cmp.stageOfB(state.stage))})`));
    drawSummary(d3.select("#summary"), cmp, pair, state.stage);
    ranks.draw(cmp, pair, { ...state, hidden }, width);
    kl.draw(cmp, pair, state, width);
    writeUrlState(state, STATE_KEYS);
  }

  document.addEventListener("keydown", (event) => {
    if (event.target && ["INPUT", "SELECT", "TEXTAREA"].includes(event.target.tagName)) return;  // sliders step themselves
    const step = event.key === "ArrowRight" ? 1 : event.key === "ArrowLeft" ? -1 : 0;
    if (!step) return;
    event.preventDefault();
    if (event.shiftKey) set({ stage: Math.max(0, Math.min(S - 1, state.stage + step)) });
    else set({ pair: Math.max(0, Math.min(cmp.pairCount - 1, state.pair + step)) });
  });
  let resizeTimer = null;
  window.addEventListener("resize", () => {
    clearTimeout(resizeTimer);
    resizeTimer = setTimeout(drawAll, RESIZE_DEBOUNCE_MS);
  });
  document.addEventListener("scroll", hideTooltip, { passive: true });

  drawAll();
  root.attr("data-ready-ms", (performance.now() - started).toFixed(1)).attr("data-ready-at", performance.now().toFixed(1));
  root.attr("data-state", "ready");
}

boot().catch((err) => {
  d3.select(document.documentElement).attr("data-state", "error");
  showStatus(`Cannot show the comparison: ${err.message}`, true);
});
