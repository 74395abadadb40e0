// compare-data.js — the only module that knows the shape of compare.json (lenskit.compare/1, written by
// `lenskit compare`): the served list of comparisons, loading one, and accessors the compare page's views use.

// the single-file report (`lenskit compare --html`) carries its document inline, under the viewer's id
import { EMBEDDED_ID } from "./data.js";

const SCHEMA_PREFIX = "lenskit.compare/1";
const LABEL_CHARS = 40; // prompt text shown in a side's label
const LENS_CHARS = 40; // a lens kind shown in the note (a hand-edited compare.json may hold any text there)

/** The kind of lens side r's numbers come from, as one short line of text: "logit" when the document predates the
 *  field (no lens entry), null when the entry is not {kind: non-empty string} (a hand-edited document). */
function lensKind(r) {
  if (!("lens" in r) || r.lens === undefined) return "logit";
  const kind = r.lens !== null && typeof r.lens === "object" && !Array.isArray(r.lens) ? r.lens.kind : undefined;
  if (typeof kind !== "string") return null;
  const line = kind.replace(/[\p{Cc}\p{Cf}\p{Zl}\p{Zp}]+/gu, " ").trim(); // one line, no bidi overrides
  if (!line) return null;
  const chars = Array.from(line);
  return chars.length > LENS_CHARS ? chars.slice(0, LENS_CHARS - 1).join("") + "…" : line;
}

/** A name or id from the document as text: a hand-edited object or array (whose toString may not be callable) as "?". */
function shown(x) {
  return typeof x === "string" ? x : typeof x === "number" ? String(x) : "?";
}

const MAX_STAGES = 4097; // as the single-run viewer (data.js): far above any model's 2L+1
const MAX_VALUE = 3.5e38; // log-probabilities and KL are float32-sized numbers

/** Why a compare document (of the known schema) cannot be drawn, as Error naming the field; checked once when it
 *  loads, so a hand-edited document gets one clear message instead of a figure that throws halfway. */
function checkCompare(doc) {
  const fail = (where, what) => { throw new Error(`${where}: ${what}`); };
  const isObj = (x) => x !== null && typeof x === "object" && !Array.isArray(x);
  const isInt = (x, lo, hi) => Number.isInteger(x) && x >= lo && x <= hi;
  const arr = (x, where, n) => {
    if (!Array.isArray(x)) fail(where, "not an array");
    if (n !== undefined && x.length !== n) fail(where, `${x.length} entries, expected ${n}`);
    return x;
  };
  const row = (x, where, n, ok, what) => {
    arr(x, where, n);
    for (let i = 0; i < x.length; i++) if (!ok(x[i])) fail(`${where}[${i}]`, `${what}: ${JSON.stringify(x[i])}`);
  };
  const numOrNull = (v) => v === null || (typeof v === "number" && Number.isFinite(v) && Math.abs(v) <= MAX_VALUE);
  const runs = arr(doc.runs, "runs", 2);
  const S = runs.map((r, k) => {
    const where = `runs[${k}]`;
    if (!isObj(r)) fail(where, "not an object");
    if (!isObj(r.model)) fail(`${where}.model`, "missing or not an object");
    row(r.tokens, `${where}.tokens`, undefined, (t) => typeof t === "string", "not a string");
    if (!isObj(r.stages)) fail(`${where}.stages`, "missing or not an object");
    const n = arr(r.stages.name, `${where}.stages.name`).length;
    if (n < 1 || n > MAX_STAGES) fail(`${where}.stages.name`, `${n} stages (the viewer draws 1 to ${MAX_STAGES})`);
    row(r.stages.name, `${where}.stages.name`, n, (t) => typeof t === "string", "not a string");
    return n;
  });
  if (!isObj(doc.kl)) fail("kl", "missing or not an object");
  row(doc.kl.stage_map, "kl.stage_map", S[0], (v) => isInt(v, 0, S[1] - 1), `not a stage of B (0 to ${S[1] - 1})`);
  const seen = [new Set(), new Set()];
  doc.pairs.forEach((p, i) => {
    const where = `pairs[${i}]`;
    if (!isObj(p)) fail(where, "not an object");
    ["a", "b"].forEach((key, k) => {
      if (!isInt(p[key], 0, runs[k].tokens.length - 1)) fail(`${where}.${key}`, `not a position of side ${"AB"[k]}: ${JSON.stringify(p[key])}`);
      if (seen[k].has(p[key])) fail(`${where}.${key}`, `position ${p[key]} paired twice`);
      seen[k].add(p[key]);
    });
    row(p.next, `${where}.next`, 2, (v) => v === null || typeof v === "string", "not a token text or null");
    [0, 1].forEach((k) => { if (!isInt(arr(p.decide, `${where}.decide`, 2)[k], 0, S[k] - 1)) fail(`${where}.decide[${k}]`, `not a stage of side ${"AB"[k]}`); });
    if (p.kl !== null && p.kl !== undefined) {
      arr(p.kl, `${where}.kl`, 2).forEach((r, k) => row(r, `${where}.kl[${k}]`, S[0], numOrNull, "not a number or null"));
    }
    const tokens = arr(p.tokens, `${where}.tokens`);
    if (tokens.length === 0) fail(`${where}.tokens`, "empty");
    tokens.forEach((t, j) => {
      const at = `${where}.tokens[${j}]`;
      if (!isObj(t)) fail(at, "not an object");
      if (typeof t.text !== "string") fail(`${at}.text`, "not a string");
      row(t.top, `${at}.top`, 2, (v) => v === null || isInt(v, 1, 2 ** 31), "not a rank or null");
      row(t.next, `${at}.next`, 2, (v) => typeof v === "boolean", "not true or false");
      for (const key of ["rank", "logp"]) {
        arr(t[key], `${at}.${key}`, 2).forEach((r, k) => {
          if (r !== null) row(r, `${at}.${key}[${k}]`, S[k], key === "rank" ? (v) => isInt(v, 1, 2 ** 53) : numOrNull,
            key === "rank" ? "not a rank" : "not a number or null");
        });
      }
      if (t.missing !== undefined) row(t.missing, `${at}.missing`, 2, (v) => v === null || typeof v === "string", "not a text or null");
    });
  });
}

/** The comparisons the server offers (runs.json's "compares"): [{name, url}]; the report's one embedded comparison. */
export async function loadCompareList() {
  const embedded = document.getElementById(EMBEDDED_ID);
  if (embedded) return [{ name: embedded.dataset.run || "report", url: null, embedded: true }];
  const res = await fetch("runs.json", { cache: "no-cache" });
  if (!res.ok) throw new Error(`runs.json: HTTP ${res.status}`);
  const list = await res.json();
  return Array.isArray(list.compares) ? list.compares : [];
}

/** Fetch and wrap one comparison. */
export async function loadCompare(entry) {
  if (entry.embedded) return wrapCompare(JSON.parse(document.getElementById(EMBEDDED_ID).textContent));
  const res = await fetch(entry.url, { cache: "no-cache" });
  if (!res.ok) throw new Error(`${entry.url}: HTTP ${res.status}`);
  return wrapCompare(await res.json());
}

/** Accessors over a compare document. Sides are 0 (A) and 1 (B); stages are each side's own stage indices. */
export function wrapCompare(doc) {
  if (!doc || typeof doc !== "object" || typeof doc.schema !== "string" || !doc.schema.startsWith(SCHEMA_PREFIX)) {
    throw new Error(`not a lenskit compare document (schema ${doc && doc.schema}); this viewer reads ${SCHEMA_PREFIX}`);
  }
  if (!Array.isArray(doc.pairs) || doc.pairs.length === 0) {
    throw new Error("this comparison has no aligned positions (its pairs list is empty)");
  }
  checkCompare(doc);
  const runs = doc.runs.map((r) => ({
    name: shown(r.name),
    model: r.model,
    modelId: shown(r.model && r.model.id),
    prompt: r.prompt,
    text: r.text,
    tokens: r.tokens,
    stageCount: r.stages.name.length,
    stageName: (s) => r.stages.name[s],
    stageKind: (s) => r.stages.kind[s],
    // `trace --chat`: the user's message (the text is the chat template's, the same start on both sides)
    message: r.chat && typeof r.chat === "object" && typeof r.chat.user === "string" ? r.chat.user : null,
    lens: lensKind(r), // the lens its numbers come from (compare --lens; absent before it: logit; malformed: null)
  }));
  const pairIndex = [new Map(), new Map()];
  doc.pairs.forEach((p, i) => {
    pairIndex[0].set(p.a, i);
    pairIndex[1].set(p.b, i);
  });
  const stageMap = doc.kl.stage_map;
  const maxVocab = Math.max(...runs.map((r) => (Number.isFinite(r.model.vocab_size) && r.model.vocab_size > 0 ? r.model.vocab_size : 10)));
  return {
    relation: doc.relation,
    align: doc.align,
    source: doc.source,
    vocabulary: doc.vocabulary,
    topK: doc.top_k,
    klAvailable: !!doc.kl.available,
    klWhy: doc.kl.why,
    sameDepth: !!doc.kl.same_depth,
    runs,
    maxVocab,
    pairCount: doc.pairs.length,
    /** Pair index of a position of side k (undefined when that position has no partner). */
    pairOf: (k, pos) => pairIndex[k].get(pos),
    /** B's stage drawn with A's stage s (same relative depth). */
    stageOfB: (s) => stageMap[s],
    /** A stage's relative depth in [0, 1]: where it is drawn on the shared x axis. */
    depth: (k, s) => s / Math.max(1, runs[k].stageCount - 1),
    /** A short description of side k: its model, and its prompt where the prompts differ. */
    label(k) {
      const r = runs[k];
      if (doc.relation !== "prompts") return `${r.name}: ${r.modelId}`;
      const text = r.message !== null ? r.message : shown(r.text);
      const chars = Array.from(text);
      return `${r.name}: “${chars.length > LABEL_CHARS ? chars.slice(0, LABEL_CHARS - 1).join("") + "…" : text}”` +
        (r.message !== null ? " (chat)" : "");
    },
    pair(i) {
      const p = doc.pairs[i];
      return {
        index: i,
        pos: [p.a, p.b],
        end: p.end,
        next: p.next,
        decide: p.decide,
        kl: p.kl, // [A‖B per A stage, B‖A per A stage] or null
        tokenCount: p.tokens.length,
        text: (j) => p.tokens[j].text,
        rank: (j, k) => p.tokens[j].rank[k],
        logp: (j, k) => p.tokens[j].logp[k],
        top: (j, k) => p.tokens[j].top[k],
        isNext: (j, k) => p.tokens[j].next[k],
        missing: (j, k) => p.tokens[j].missing[k],
        /** The index of side k's final top-1 among the pair's tokens. */
        top1: (k) => p.tokens.findIndex((t) => t.top[k] === 1),
      };
    },
  };
}
