// corpus.js — the Corpus page: reads a `lenskit survey` run's survey.json (lenskit.survey/1) and draws the per-stage
// curves (attention / FFN stages marked apart), the decision-stage histogram, the block effects and the example list
// (each example links to the single-prompt viewer on the run's export.json). Strings from data go through .text() only.

import { d3 } from "./d3.js";

const SIZE = { width: 460, height: 220 };
const MARGIN = { top: 12, right: 14, bottom: 34, left: 52 };
const CURVES = [
  { key: "ce", title: "Lens cross-entropy of the next token (bits)", get: (d) => d.per_stage.ce_bits, quantiles: true, field: { mean: "ce_bits.mean", p10: "ce_bits.p10", p90: "ce_bits.p90" } },
  { key: "agreement", title: "Top-1 agreement with the model", get: (d) => ({ mean: d.per_stage.agreement }), domain: [0, 1], field: { mean: "agreement" } },
  { key: "kl", title: "KL(final ‖ stage) (bits)", get: (d) => d.per_stage.kl_bits, quantiles: true, field: { mean: "kl_bits.mean", p10: "kl_bits.p10", p90: "kl_bits.p90" } },
  { key: "entropy", title: "Entropy (bits)", get: (d) => d.per_stage.entropy_bits, quantiles: true, field: { mean: "entropy_bits.mean", p10: "entropy_bits.p10", p90: "entropy_bits.p90" } },
  { key: "next_at1", title: "Next token at rank 1 / ≤ 10", get: (d) => ({ mean: d.per_stage.next_rank.at1, p90: d.per_stage.next_rank.le10 }), domain: [0, 1], field: { mean: "next_rank.at1", p90: "next_rank.le10" } },
];
const CLASS_TITLES = {
  decided_late: "Decided late (only in the last layer)",
  decided_then_lost: "Decided, then lost, then decided again",
  confident_wrong_early: "Confidently wrong, decided early",
};

// What render draws (removed before drawing another survey; the figures' frames too, else empty cards pile up).
const DRAWN = "#curves > *, #decision > .corpus-card, #blocks > .corpus-card, #examples > :not(h2)";
const MAX_STAGES = 4097; // as the single-run viewer (data.js)

/** Why a survey document (lenskit.survey/1) cannot be drawn, as Error naming the field (a hand-edited document):
 *  the fields the page reads, with the lengths and types it draws. */
function checkSurvey(doc) {
  const fail = (where, what) => { throw new Error(`${where}: ${what}`); };
  const isObj = (x) => x !== null && typeof x === "object" && !Array.isArray(x);
  const obj = (x, where) => { if (!isObj(x)) fail(where, "missing or not an object"); return x; };
  const row = (x, where, n, ok, what) => {
    if (!Array.isArray(x)) fail(where, "not an array");
    if (n !== undefined && x.length !== n) fail(where, `${x.length} entries, expected ${n}`);
    for (let i = 0; i < x.length; i++) if (!ok(x[i])) fail(`${where}[${i}]`, `${what}: ${JSON.stringify(x[i])}`);
  };
  const num = (v) => typeof v === "number" && Number.isFinite(v);
  const numOrNull = (v) => v === null || num(v);
  for (const k of ["model", "corpus", "options", "stages", "per_stage", "decision", "blocks", "examples"]) obj(doc[k], k);
  const S = Array.isArray(doc.stages.name) ? doc.stages.name.length : 0;
  if (S < 1 || S > MAX_STAGES) fail("stages.name", `not 1 to ${MAX_STAGES} stages`);
  row(doc.stages.name, "stages.name", S, (v) => typeof v === "string", "not a string");
  row(doc.stages.kind, "stages.kind", S, (v) => typeof v === "string", "not a string");
  obj(doc.corpus.bad, "corpus.bad");
  for (const spec of CURVES) {
    let data;
    try {
      data = spec.get(doc);
    } catch (err) {
      fail(`per_stage.${spec.field.mean}`, "missing");
    }
    obj(data, `per_stage.${spec.field.mean}`);
    for (const [q, field] of Object.entries(spec.field)) {
      if (q === "mean" || data[q] !== undefined) row(data[q], `per_stage.${field}`, S, numOrNull, "not a number or null");
    }
  }
  for (const k of ["right", "wrong"]) row(doc.decision[k], `decision.${k}`, S, (v) => Number.isInteger(v) && v >= 0, "not a count");
  const b = doc.blocks;
  row(b.stage, "blocks.stage", undefined, (v) => Number.isInteger(v) && v >= 0 && v < S, "not a stage");
  for (const k of ["mean_delta_log2_rank", "p05", "p95"]) row(b[k], `blocks.${k}`, b.stage.length, numOrNull, "not a number or null");
  for (const [cls, list] of Object.entries(doc.examples)) {
    row(list, `examples.${cls}`, undefined, isObj, "not an object");
    list.forEach((ex, i) => {
      if (!(Number.isInteger(ex.decision) && ex.decision >= 0 && ex.decision < S)) fail(`examples.${cls}[${i}].decision`, "not a stage");
    });
  }
}

function status(text, isError) {
  const el = d3.select("#status");
  el.attr("hidden", text ? null : true).classed("error", !!isError).text(text || "");
}

function frame(parent, title) {
  const card = parent.append("div").attr("class", "corpus-card");
  card.append("h2").text(title);
  const svg = card.append("svg").attr("viewBox", `0 0 ${SIZE.width} ${SIZE.height}`).attr("role", "img").attr("aria-label", title);
  const g = svg.append("g").attr("transform", `translate(${MARGIN.left},${MARGIN.top})`);
  return { card, svg, g, w: SIZE.width - MARGIN.left - MARGIN.right, h: SIZE.height - MARGIN.top - MARGIN.bottom };
}

function stageAxis(f, doc, x) {
  const names = doc.stages.name;
  const step = Math.max(1, Math.ceil(names.length / 8));
  const ticks = names.map((_, i) => i).filter((i) => i % step === 0 || i === names.length - 1);
  f.g.append("g").attr("transform", `translate(0,${f.h})`)
    .call(d3.axisBottom(x).tickValues(ticks).tickFormat((i) => names[i]));
}

function attnBands(f, doc, x) {
  const bw = x(1) - x(0);
  f.g.append("g").selectAll("rect").data(doc.stages.kind.map((k, i) => [k, i]).filter(([k]) => k === "attn"))
    .join("rect").attr("class", "band-attn").attr("x", ([, i]) => x(i) - bw / 2).attr("width", bw)
    .attr("y", 0).attr("height", f.h);
}

function marks(g, doc, x, y, values) {
  const pts = values.map((v, i) => ({ v, i, kind: doc.stages.kind[i], name: doc.stages.name[i] })).filter((p) => p.v !== null);
  g.selectAll(".mark").data(pts).join((enter) => enter.append("path"))
    .attr("class", (p) => `mark mark-${p.kind}`)
    .attr("d", (p) => d3.symbol(p.kind === "embed" ? d3.symbolSquare : d3.symbolCircle, 28)())
    .attr("transform", (p) => `translate(${x(p.i)},${y(p.v)})`)
    .append("title").text((p) => `${p.name}: ${d3.format(".4~g")(p.v)}`);
}

function drawCurve(parent, doc, spec) {
  const data = spec.get(doc);
  const f = frame(parent, spec.title);
  const n = doc.stages.name.length;
  const x = d3.scaleLinear().domain([-0.5, n - 0.5]).range([0, f.w]);
  const all = [data.mean, data.p10, data.p90].filter(Boolean).flat().filter((v) => v !== null);
  const y = d3.scaleLinear().domain(spec.domain || [Math.min(0, d3.min(all)), d3.max(all) || 1]).nice().range([f.h, 0]);
  attnBands(f, doc, x);
  if (spec.quantiles && data.p10) {
    const area = d3.area().defined((_, i) => data.p10[i] !== null).x((_, i) => x(i)).y0((_, i) => y(data.p10[i])).y1((_, i) => y(data.p90[i]));
    f.g.append("path").attr("class", "band-q").attr("d", area(data.mean));
  } else if (data.p90) {
    f.g.append("path").attr("class", "curve").attr("stroke-dasharray", "4 3")
      .attr("d", d3.line().defined((v) => v !== null).x((_, i) => x(i)).y((v) => y(v))(data.p90));
  }
  f.g.append("path").attr("class", "curve").attr("d", d3.line().defined((v) => v !== null).x((_, i) => x(i)).y((v) => y(v))(data.mean));
  marks(f.g.append("g"), doc, x, y, data.mean);
  f.g.append("g").call(d3.axisLeft(y).ticks(5));
  stageAxis(f, doc, x);
  if (spec.quantiles) f.card.append("p").attr("class", "caption").text("Line: mean; band: 10th–90th percentile.");
}

function drawDecision(doc) {
  const host = d3.select("#decision");
  const f = frame(host, "");
  f.card.select("h2").remove();
  const n = doc.stages.name.length;
  const x = d3.scaleBand().domain(d3.range(n)).range([0, f.w]).padding(0.1);
  const right = doc.decision.right, wrong = doc.decision.wrong;
  const y = d3.scaleLinear().domain([0, d3.max(right.map((r, i) => r + wrong[i])) || 1]).nice().range([f.h, 0]);
  const bars = f.g.append("g");
  for (const [cls, vals, base] of [["bar-right", right, right.map(() => 0)], ["bar-wrong", wrong, right]]) {
    bars.append("g").selectAll("rect").data(vals.map((v, i) => [v, i])).join("rect").attr("class", cls)
      .attr("x", ([, i]) => x(i)).attr("width", x.bandwidth())
      .attr("y", ([v, i]) => y(base[i] + v)).attr("height", ([v, i]) => y(base[i]) - y(base[i] + v))
      .append("title").text(([v, i]) => `${doc.stages.name[i]}: ${v} ${cls === "bar-right" ? "right" : "wrong"}`);
  }
  f.g.append("g").call(d3.axisLeft(y).ticks(5));
  const step = Math.max(1, Math.ceil(n / 8));
  f.g.append("g").attr("transform", `translate(0,${f.h})`)
    .call(d3.axisBottom(x).tickValues(d3.range(0, n, step)).tickFormat((i) => doc.stages.name[i]));
}

function drawBlocks(doc) {
  const host = d3.select("#blocks");
  const f = frame(host, "");
  f.card.select("h2").remove();
  const b = doc.blocks;
  const rows = b.stage.map((s, j) => ({ s, kind: doc.stages.kind[s], name: doc.stages.name[s], mean: b.mean_delta_log2_rank[j], lo: b.p05[j], hi: b.p95[j] }))
    .filter((r) => r.mean !== null);
  const x = d3.scaleBand().domain(rows.map((r) => r.s)).range([0, f.w]).padding(0.15);
  const ext = d3.extent(rows.flatMap((r) => [r.mean, r.lo, r.hi, 0]));
  const y = d3.scaleLinear().domain(ext[0] === undefined ? [-1, 1] : ext).nice().range([f.h, 0]);
  f.g.append("g").selectAll("line").data(rows).join("line").attr("class", "whisker")
    .attr("x1", (r) => x(r.s) + x.bandwidth() / 2).attr("x2", (r) => x(r.s) + x.bandwidth() / 2)
    .attr("y1", (r) => y(r.lo)).attr("y2", (r) => y(r.hi));
  f.g.append("g").selectAll("rect").data(rows).join("rect").attr("class", (r) => `bar-${r.kind}`)
    .attr("x", (r) => x(r.s)).attr("width", x.bandwidth())
    .attr("y", (r) => y(Math.max(0, r.mean))).attr("height", (r) => Math.abs(y(r.mean) - y(0)))
    .append("title").text((r) => `${r.name}: mean ${d3.format(".3~g")(r.mean)}, p05 ${r.lo}, p95 ${r.hi}`);
  f.g.append("line").attr("class", "whisker").attr("x1", 0).attr("x2", f.w).attr("y1", y(0)).attr("y2", y(0));
  f.g.append("g").call(d3.axisLeft(y).ticks(5));
  const step = Math.max(1, Math.ceil(rows.length / 8));
  f.g.append("g").attr("transform", `translate(0,${f.h})`)
    .call(d3.axisBottom(x).tickValues(rows.filter((_, j) => j % step === 0).map((r) => r.s)).tickFormat((s) => doc.stages.name[s]));
  f.card.append("p").attr("class", "legend").text("Light bars: attention blocks; dark bars: feed-forward blocks.");
}

function drawExamples(doc, runName) {
  const host = d3.select("#examples");
  for (const [cls, title] of Object.entries(CLASS_TITLES)) {
    const list = doc.examples[cls] || [];
    host.append("h3").text(`${title} (${list.length})`);
    for (const ex of list) {
      const row = host.append("div").attr("class", "example");
      const ctx = row.append("div").attr("class", "ctx");
      ctx.append("span").text(ex.before);
      ctx.append("span").attr("class", "tokx").text(ex.token);
      ctx.append("span").text(ex.after ? ` → ${ex.after}` : "");
      const meta = row.append("div").attr("class", "meta");
      meta.append("span").text(`model: ${JSON.stringify(ex.top1)} (p ${ex.p_top1}) · next: ${JSON.stringify(ex.next)} · `
        + `${ex.right ? "right" : "wrong"} · decided at ${doc.stages.name[ex.decision]} · ${ex.source} token ${ex.pos} `);
      if (ex.prompt !== null && ex.prompt !== undefined) {
        const params = new URLSearchParams({ run: runName, prompt: String(ex.prompt), pos: String(ex.prompt_pos) });
        meta.append("a").attr("href", `index.html#${params.toString()}`).text("open");
      }
    }
  }
}

function render(doc, runName) {
  d3.selectAll(DRAWN).remove();
  d3.select("#model-info").text(`${doc.model.id} · ${doc.model.n_layers} layers · ${doc.model.vocab_size} tokens`);
  const c = doc.corpus;
  const bad = Object.entries(c.bad).map(([k, v]) => `${k} ${v}`).join(", ");
  d3.select("#summary").text(`${c.documents} documents, ${c.positions} positions, ${c.windows} windows of ≤ `
    + `${doc.options.max_tokens} tokens; model top-1 accuracy ${d3.format(".1%")(c.model_accuracy || 0)}; skipped: ${bad}.`);
  const curves = d3.select("#curves");
  for (const spec of CURVES) drawCurve(curves, doc, spec);
  drawDecision(doc);
  drawBlocks(doc);
  drawExamples(doc, runName);
}

async function main() {
  try {
    const runs = (await (await fetch("runs.json")).json()).runs.filter((r) => r.survey);
    if (!runs.length) { status("No survey runs are served: `lenskit survey ... -o RUN` then `lenskit serve RUN`.", true); return; }
    const want = new URLSearchParams(window.location.hash.replace(/^#/, "")).get("run");
    const select = d3.select("#survey-select");
    select.selectAll("option").data(runs).join("option").attr("value", (r) => r.name).text((r) => r.name);
    d3.select("#survey-picker").attr("hidden", runs.length > 1 ? null : true);
    const load = async (name) => {
      const run = runs.find((r) => r.name === name) || runs[0];
      select.property("value", run.name);
      status("loading …");
      const doc = await (await fetch(run.survey)).json();
      try { window.history.replaceState(null, "", `#run=${encodeURIComponent(run.name)}`); } catch (err) { /* embedded */ }
      try {
        if (!doc || typeof doc !== "object" || doc.schema !== "lenskit.survey/1") {
          throw new Error(`unknown survey format ${JSON.stringify(doc && doc.schema)}`);
        }
        checkSurvey(doc);
        render(doc, run.name);
        status("");
      } catch (err) {
        // Nothing of a survey that cannot be drawn stays half drawn (nor of the one shown before); the picker still works.
        d3.selectAll(DRAWN).remove();
        d3.selectAll("#model-info, #summary").text("");
        status(`Cannot show the survey ${run.name}: ${err.message || err}`, true);
      }
    };
    select.on("change", (ev) => load(ev.target.value).catch((err) => status(`Cannot show the survey: ${err.message}`, true)));
    await load(want);
  } catch (err) {
    status(`Cannot show the survey: ${err.message}`, true);
  }
}

main();
