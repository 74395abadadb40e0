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
  if (!doc || typeof doc.schema !== "string" || !doc.schema.startsWith(SCHEMA_PREFIX)) {
    throw new Error(`not a lenskit compare document (schema ${doc && doc.schema}); this viewer reads ${SCHEMA_PREFIX}`);
  }
  if (!Array.isArray(doc.pairs) || doc.pairs.length === 0) {
    throw new Error("this comparison has no aligned positions (its pairs list is empty)");
  }
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
  const maxVocab = Math.max(...runs.map((r) => r.model.vocab_size || 10));
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
