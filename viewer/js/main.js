// main.js — boots the viewer: loads the run list (served: runs.json; single file: the embedded run), restores the
// view state from the URL, builds the overview grid, the strip and the three figures, and links them: every change of run, prompt,
// position, stage, mode, view, y-range, lens or lens comparison goes through one state store, redraws what depends on
// it and updates the URL.

import { d3 } from "./d3.js";
import { MODES, loadRun, loadRunList } from "./data.js";
import { plainLabel } from "./format.js";
import { VIEWS, Y_RANGES, createState, firstThatLoads, readUrlState, writeUrlState } from "./state.js";
import { createStrip } from "./strip.js";
import { GRID_COLOURS, createGrid } from "./grid.js";
import { createEvolution } from "./evolution.js";
import { createRanks } from "./ranks.js";
import { createHistogram } from "./histogram.js";
import { hideTooltip } from "./tooltip.js";

const RESIZE_DEBOUNCE_MS = 120;
const MIN_PLOT_WIDTH = 480;

/** Where the view opens when the URL says nothing: the last exported position, where the model predicts the token
 *  after the prompt (for "The capital of France is": " is", predicting " Paris"). */
function defaultPosition(run, prompt) {
  const exported = run.exportedPositions(prompt);
  return exported[exported.length - 1];
}

/** The number of the sorted `list` nearest to `x` (the lower one of a tie). */
function nearest(list, x) {
  let best = list[0];
  for (const v of list) if (Math.abs(v - x) < Math.abs(best - x)) best = v;
  return best;
}

/** Framed by a notebook (lenskit.show: a sandboxed iframe), tell the parent page the viewer's height, now and on every
 *  change, so a few lines of script there can fit the frame to it. Only a number is sent. */
function reportHeightToParent() {
  if (window.parent === window) return;
  const post = () => {
    const height = Math.ceil(document.documentElement.getBoundingClientRect().height);
    window.parent.postMessage({ lenskit: "height", height }, "*");
  };
  post();
  if (typeof ResizeObserver === "function") new ResizeObserver(post).observe(document.body);
}

function clampInt(v, lo, hi, fallback) {
  return Number.isInteger(v) && v >= lo && v <= hi ? v : fallback;
}

function showStatus(message, isError = false) {
  d3.select("#status").classed("error", isError).text(message).attr("hidden", message ? null : true);
}

async function boot() {
  const started = performance.now();
  const root = d3.select(document.documentElement);
  root.attr("data-state", "loading");
  const runs = await loadRunList();
  if (runs.length === 0) throw new Error("no runs to show");
  const wanted = readUrlState();
  const first = runs.find((r) => r.name === wanted.run) || runs[0];
  // The wanted run, else the next one that loads and has something to draw: one broken run does not stop the page.
  const shown = await firstThatLoads(runs, first, async (entry) => {
    const candidate = await loadRun(entry);
    if (!d3.range(candidate.promptCount).some((p) => candidate.exportedPositions(p).length > 0)) {
      throw new Error(`run ${entry.name} has no ${candidate.promptCount === 0 ? "prompts" : "exported positions"}`);
    }
    return candidate;
  });
  let run = shown.value;
  let runName = shown.entry.name;
  const skipped = shown.error ? `${String(shown.error.message || shown.error)} — showing ${runName}` : "";

  const state = createState({});
  const strip = createStrip(d3.select("#strip-section"), { onPosition: (pos) => state.set({ pos }) });
  const onStage = (stage) => state.set({ stage });
  const evolution = createEvolution(d3.select("#fig-evolution"), { onStage });
  const ranks = createRanks(d3.select("#fig-ranks"), { onStage });
  const histogram = createHistogram(d3.select("#fig-histogram"), { onStage });
  const grid = createGrid(d3.select("#fig-grid"), {
    onSelect: (patch) => state.set(patch),
    onColour: (colour) => state.set({ grid: colour }),
  });

  /** A complete, valid state for `run` (or `target`, a run not shown yet, named `name`), starting from `want` (URL
   *  values or the previous state). A prompt with no exported positions is skipped for the first one that has some. */
  function resolve(want, target = run, name = runName) {
    const drawable = d3.range(target.promptCount).filter((p) => target.exportedPositions(p).length > 0);
    if (drawable.length === 0) {
      throw new Error(target.promptCount === 0 ? `run ${name} has no prompts` : `run ${name} has no exported positions`);
    }
    const wantPrompt = clampInt(want.prompt, 0, target.promptCount - 1, drawable[0]);
    const prompt = drawable.includes(wantPrompt) ? wantPrompt : drawable[0];
    const exported = target.exportedPositions(prompt);
    // A position that was not exported (a link to a trace exported with --positions): the nearest one that was.
    const pos = prompt === wantPrompt && Number.isInteger(want.pos) ? nearest(exported, want.pos) : defaultPosition(target, prompt);
    return {
      run: want.run,
      prompt,
      pos,
      stage: clampInt(want.stage, 0, target.stageCount - 1, target.stageCount - 1),
      mode: MODES.includes(want.mode) ? want.mode : "raw",
      view: VIEWS.includes(want.view) ? want.view : "panels",
      yrange: Y_RANGES.includes(want.yrange) ? want.yrange : "layers",
      grid: GRID_COLOURS.includes(want.grid) ? want.grid : "prob",
      // Several lenses only: which one the figures show, and whether Figure 2 overlays another (else not in the URL).
      lens: target.lenses.length > 1 ? clampInt(want.lens, 0, target.lenses.length - 1, 0) : undefined,
      cmp: target.lenses.length > 1 && want.cmp === 1 ? 1 : undefined,
    };
  }

  // Pickers and toggles.
  const runSelect = d3.select("#run-select");
  runSelect
    .selectAll("option")
    .data(runs)
    .join("option")
    .attr("value", (r) => r.name)
    .text((r) => r.name);
  d3.select("#run-picker").attr("hidden", runs.length > 1 ? null : true);
  /** Go to the view `want` (loading another run first when it names one). */
  async function apply(want) {
    const entry = runs.find((r) => r.name === want.run);
    if (entry && entry.name !== runName) {
      showStatus(`loading ${entry.name} …`);
      try {
        // Load and check the run before showing it: one that cannot be drawn leaves the current one in place.
        const next = await loadRun(entry);
        const s = resolve({ ...want, run: entry.name }, next, entry.name);
        run = next;
        runName = entry.name;
        showStatus("");
        state.set(s);
      } catch (err) {
        showStatus(String(err.message || err), true);
        runSelect.property("value", runName);
      }
      return;
    }
    state.set(resolve({ ...want, run: runName }));
    writeUrlState(state.get()); // a link that resolves to the view already shown still gets the URL of what is shown
  }
  runSelect.on("change", function () {
    apply({ ...state.get(), run: this.value, prompt: 0 });
  });
  // A link edited or pasted into the address bar of an open viewer changes only the fragment: follow it.
  window.addEventListener("hashchange", () => apply({ ...state.get(), ...readUrlState() }));
  const promptSelect = d3.select("#prompt-select");
  promptSelect.on("change", function () {
    state.set(resolve({ ...state.get(), prompt: Number(this.value), pos: undefined }));
  });
  d3.selectAll("input[name=mode]").on("change", function () {
    state.set({ mode: this.value });
  });
  d3.select("#shared-axis").on("change", function () {
    state.set({ view: this.checked ? "shared" : "panels" });
  });
  d3.select("#y-embed").on("change", function () {
    state.set({ yrange: this.checked ? "all" : "layers" });
  });
  const lensSelect = d3.select("#lens-select");
  lensSelect.on("change", function () {
    state.set({ lens: Number(this.value) });
  });
  d3.select("#lens-cmp").on("change", function () {
    state.set({ cmp: this.checked ? 1 : undefined });
  });

  function fillPrompts() {
    promptSelect
      .selectAll("option")
      .data(d3.range(run.promptCount))
      .join("option")
      .attr("value", (p) => p)
      .property("disabled", (p) => run.exportedPositions(p).length === 0)
      .text((p) => `${p}: ${Array.from(plainLabel(run.promptLabel(p))).slice(0, 60).join("")}` +
        (run.exportedPositions(p).length === 0 ? " (no positions exported)" : ""));
    d3.select("#prompt-picker").attr("hidden", run.promptCount > 1 ? null : true);
    d3.select("#model-info").text(run.modelSummary);
    const lenses = d3.range(run.lenses.length);
    lensSelect
      .selectAll("option")
      .data(lenses)
      .join("option")
      .attr("value", (k) => k)
      .text((k) => `${k}: ${run.lensLabel(k)}`);
    d3.select("#lens-picker").attr("hidden", lenses.length > 1 ? null : true);
    d3.select("#lens-compare").attr("hidden", lenses.length > 1 ? null : true);
  }

  /** The lens Figure 2 overlays when comparing: the second lens, or the first while the second is shown. */
  function compareLens(s) {
    if (!s.cmp || run.lenses.length < 2) return null;
    return s.lens === 1 ? 0 : 1;
  }

  function drawAll(s, changed) {
    const t0 = performance.now();
    const lens = s.lens || 0;
    const position = run.position(s.prompt, s.pos, lens);
    const cmpLens = compareLens(s);
    const cmp = cmpLens === null ? null : { lens: cmpLens, label: run.lensLabel(cmpLens), position: run.position(s.prompt, s.pos, cmpLens) };
    // Read the layout once, before any DOM write (all plots share the card width; the grid's card may differ).
    const width = Math.max(MIN_PLOT_WIDTH, d3.select("#fig-evolution .plot").node().clientWidth || 900);
    const gridWidth = Math.max(MIN_PLOT_WIDTH, d3.select("#fig-grid .grid-plot").node().clientWidth || width);
    // Then what needs a clean layout, before the figures' DOM writes would force the browser to lay the page out in the
    // middle of a redraw: the URL (the browser saves the scroll position with it) and the grid (moving its
    // scrollbar to the selection).
    writeUrlState(s);
    if (["run", "prompt", "lens", "resize", "grid"].some((k) => changed.has(k))) {
      grid.draw(run, s, gridWidth);
    } else if (changed.has("pos") || changed.has("stage")) {
      grid.select(s);
    }
    if (changed.has("run")) fillPrompts();
    runSelect.property("value", s.run);
    promptSelect.property("value", s.prompt);
    d3.selectAll("input[name=mode]").property("checked", function () {
      return this.value === s.mode;
    });
    d3.select("#shared-axis").property("checked", s.view === "shared");
    d3.select("#y-embed").property("checked", s.yrange === "all");
    lensSelect.property("value", lens);
    d3.select("#lens-cmp").property("checked", Boolean(s.cmp));
    d3.select("#lens-compare .lens-cmp-label").text(run.lenses.length > 1 ? `(dashed: ${run.lensLabel(lens === 1 ? 0 : 1)})` : "");
    const full = ["run", "prompt", "pos", "lens", "resize"].some((k) => changed.has(k));
    if (full || changed.has("mode") || changed.has("view") || changed.has("yrange")) {
      evolution.draw(run, position, s, width);
    } else if (changed.has("stage")) {
      evolution.setStage(s.stage);
    }
    if (full || changed.has("mode") || changed.has("cmp")) {
      ranks.draw(run, position, s, width, cmp);
    } else if (changed.has("stage")) {
      ranks.setStage(s.stage);
    }
    let failed = null;
    if (full || changed.has("stage")) {
      try {
        histogram.draw(run, position, s.stage, width); // decodes the position's histogram strings: may throw
      } catch (err) {
        failed = err;
      }
    }
    if (full) strip.draw(run, s.prompt, position);
    root.attr("data-draw-ms", (performance.now() - t0).toFixed(2));
    if (failed) throw failed;
  }

  // A document that passed the load-time checks can still hold a part that does not decode (a histogram string):
  // say so above the figures instead of stopping the page; the pickers, sliders and other runs keep working.
  let drawError = false;
  function redraw(s, changed) {
    try {
      drawAll(s, changed);
      if (drawError) showStatus("");
      drawError = false;
    } catch (err) {
      drawError = true;
      showStatus(`run ${runName}: cannot draw prompt ${s.prompt}, position ${s.pos}: ${String(err.message || err)}`, true);
    }
  }
  state.subscribe((s, changed) => {
    hideTooltip();
    redraw(s, changed);
  });
  state.set(resolve(runName === first.name ? { ...wanted, run: runName } : { run: runName }));
  if (skipped) showStatus(skipped, true); // the wanted run is broken: say so above the one shown instead

  // Keys: ←/→ position, Shift+←/→ stage (not while typing in a control).
  document.addEventListener("keydown", (event) => {
    const tag = event.target && event.target.tagName;
    if (tag === "INPUT" || tag === "SELECT" || tag === "TEXTAREA" || event.altKey || event.ctrlKey || event.metaKey) return;
    if (event.key !== "ArrowLeft" && event.key !== "ArrowRight") return;
    const delta = event.key === "ArrowLeft" ? -1 : 1;
    const s = state.get();
    if (event.shiftKey) {
      state.set({ stage: Math.min(run.stageCount - 1, Math.max(0, s.stage + delta)) });
    } else {
      strip.step(s.pos, delta);
    }
    event.preventDefault();
  });

  let resizeTimer = null;
  window.addEventListener("resize", () => {
    clearTimeout(resizeTimer);
    resizeTimer = setTimeout(() => redraw(state.get(), new Set(["resize"])), RESIZE_DEBOUNCE_MS);
  });

  // For tests and curious users: boot-to-drawn time, and time since navigation start when everything was drawn.
  root.attr("data-ready-ms", (performance.now() - started).toFixed(1)).attr("data-ready-at", performance.now().toFixed(1));
  root.attr("data-state", "ready");
  reportHeightToParent();
}

boot().catch((err) => {
  showStatus(`lenskit viewer: ${err && err.message ? err.message : err}`, true);
  d3.select(document.documentElement).attr("data-state", "error");
  console.error(err);
});
