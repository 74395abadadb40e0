// data.js — the only module that knows the export JSON's shape (lenskit.export/4 and the older /3, /2 and /1, see
// lenskit/schema.py) and the server's /runs.json. It turns them into plain accessors: stages, prompts, positions, and per position the tracked
// tokens' scores/ranks/bins, the per-stage statistics and the histogram (bins with their sample tokens).
// Nothing here touches the DOM except reading the JSON embedded by the single-file report.

export const SCHEMA_VERSION = "lenskit.export/4";
export const SCHEMA_V3 = "lenskit.export/3"; // still read: VLQ histogram strings, stage_top.logp (not .surprisal)
export const SCHEMA_V2 = "lenskit.export/2"; // still read: version 3 less the lenses (one logit lens)
export const SCHEMA_V1 = "lenskit.export/1"; // still read: plain count/sample arrays, stored tracked bins
const PER_LENS = ["score", "rank", "bin_edge", "mean", "std", "lse", "entropy", "kl", "hist", "stage_top"]; // a lens's own fields
const VLQ_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
const VLQ_DIGIT = new Int8Array(128).fill(-1);
for (let i = 0; i < VLQ_ALPHABET.length; i++) VLQ_DIGIT[VLQ_ALPHABET.charCodeAt(i)] = i;

/** Base64 VLQ (as in source maps: 5 bits a digit, least significant first, bit 32 = more digits, sign in bit 0). */
export function decodeVlq(text) {
  const out = [];
  let value = 0;
  let shift = 0;
  for (let i = 0; i < text.length; i++) {
    const d = VLQ_DIGIT[text.charCodeAt(i)];
    if (d === undefined || d < 0) throw new Error(`bad VLQ digit ${JSON.stringify(text[i])}`);
    value += (d & 31) * 2 ** shift; // not <<: values may pass 2^31
    if (d & 32) {
      shift += 5;
      continue;
    }
    const half = Math.floor(value / 2);
    out.push(value % 2 ? -half : half);
    value = 0;
    shift = 0;
  }
  if (shift) throw new Error("truncated VLQ string");
  return out;
}

/** Base64 Exp-Golomb (lenskit.schema.exp_golomb_encode): 6 bits a Base64 digit, most significant first, zero-padded;
 *  per number n of order k, q = (n >> k) + 1 as floor(log2 q) zero bits then q in binary, then n's low k bits.
 *  `order`: one k for all numbers, or a function (i) => k of the i-th number. */
export function decodeExpGolomb(text, order) {
  const digits = new Uint8Array(text.length);
  for (let i = 0; i < text.length; i++) {
    const d = VLQ_DIGIT[text.charCodeAt(i)];
    if (d === undefined || d < 0) throw new Error(`bad Base64 digit ${JSON.stringify(text[i])}`);
    digits[i] = d;
  }
  const bit = (p) => (digits[(p / 6) | 0] >> (5 - (p % 6))) & 1;
  const size = digits.length * 6;
  const out = [];
  let p = 0;
  for (;;) {
    let zeros = 0;
    while (p < size && !bit(p)) { p++; zeros++; }
    if (p === size) {
      if (zeros >= 6) throw new Error("Exp-Golomb string padded with a whole zero digit");
      return out;
    }
    const k = typeof order === "function" ? order(out.length) : order;
    if (!(k >= 0)) throw new Error(`no Exp-Golomb order for number ${out.length}`);
    const end = p + zeros + 1 + k; // as many digits after the leading 1 as zeros before it, then k
    if (end > size) throw new Error("truncated Exp-Golomb string");
    let w = 0;
    for (; p < end; p++) w = w * 2 + bit(p); // not <<: values may pass 2^31
    out.push(w - 2 ** k);
  }
}

/** Zigzag back to signed (lenskit.schema.unzigzag): 2d -> d, 2d + 1 -> -d - 1. */
function unzigzag(z) { return z % 2 ? -(z + 1) / 2 : z / 2; }

/** Exp-Golomb order of a count's change given the bin's count c at the previous stage (lenskit.schema.count_orders):
 *  floor(log2(c + 1) / 2), for counts below 2^32. */
function countOrder(c) { return (31 - Math.clz32(c + 1)) >> 1; }

/** Log-probability of the j-th of stage s's own top tokens (version 4 stores its surprisal, version 3 logp). */
function stageTopLogp(t, s, j) { return t.surprisal ? -t.surprisal[s][j] : t.logp[s][j]; }
export const EMBEDDED_ID = "lenskit-data";
export const RUNS_URL = "runs.json";
export const MODES = ["raw", "centred", "z", "logprob"];
export const KIND_LABELS = { embed: "embedding", attn: "attention", ffn: "FFN" };

/** The run list: served mode fetches runs.json; the single-file report carries one embedded run. */
export async function loadRunList() {
  const embedded = document.getElementById(EMBEDDED_ID);
  if (embedded) {
    return [{ name: embedded.dataset.run || "report", url: null, embedded: true }];
  }
  const res = await fetch(RUNS_URL, { cache: "no-cache" });
  if (!res.ok) throw new Error(`cannot load ${RUNS_URL}: HTTP ${res.status}`);
  const body = await res.json();
  return body.runs.map((r) => ({ name: String(r.name), url: String(r.url), embedded: false }));
}

/** Load one run of the list as a Run. */
export async function loadRun(entry) {
  let doc;
  if (entry.embedded) {
    doc = JSON.parse(document.getElementById(EMBEDDED_ID).textContent);
  } else {
    const res = await fetch(entry.url, { cache: "no-cache" });
    if (!res.ok) throw new Error(`cannot load run ${entry.name}: HTTP ${res.status}`);
    doc = await res.json();
  }
  try {
    return new Run(doc);
  } catch (err) {
    throw new Error(`run ${entry.name}: ${err.message || err}`);
  }
}

// Limits of a document the viewer draws (far above any real export: a model has 2L+1 stages; a histogram 100 bins).
export const MAX_STAGES = 4097;
export const MAX_BINS = 10000;
export const MAX_POSITIONS = 100000; // per prompt: the strip and the grid draw every exported position
const MAX_SCORE = 3.5e38; // scores and statistics are float32 values

/** Why `doc` (a parsed export of a known schema) cannot be drawn, as Error; checked once when it loads, in one pass
 *  over its arrays, so a hand-edited or truncated document gets one clear message instead of a figure that throws. */
function checkDocument(doc, v1, vlq) {
  const fail = (where, what) => { throw new Error(`${where}: ${what}`); };
  const isObj = (x) => x !== null && typeof x === "object" && !Array.isArray(x);
  const isInt = (x, lo, hi) => Number.isInteger(x) && x >= lo && x <= hi;
  const isNum = (x) => typeof x === "number" && Number.isFinite(x) && Math.abs(x) <= MAX_SCORE;
  const arr = (x, where, n) => {
    if (!Array.isArray(x)) fail(where, "not an array");
    if (n !== undefined && x.length !== n) fail(where, `${x.length} entries, expected ${n}`);
    return x;
  };
  const nums = (x, where, n) => {
    arr(x, where, n);
    for (let i = 0; i < x.length; i++) if (!isNum(x[i])) fail(`${where}[${i}]`, `not a number: ${JSON.stringify(x[i])}`);
  };
  const ints = (x, where, n, lo, hi) => {
    arr(x, where, n);
    for (let i = 0; i < x.length; i++) if (!isInt(x[i], lo, hi)) fail(`${where}[${i}]`, `not an integer in [${lo}, ${hi}]: ${JSON.stringify(x[i])}`);
  };
  for (const k of ["model", "lens", "stages", "histogram"]) if (!isObj(doc[k])) fail(k, "missing or not an object");
  const st = doc.stages;
  arr(st.name, "stages.name");
  const S = st.name.length;
  if (S < 1 || S > MAX_STAGES) fail("stages.name", `${S} stages (the viewer draws 1 to ${MAX_STAGES})`);
  arr(st.kind, "stages.kind", S);
  st.kind.forEach((k, s) => { if (typeof k !== "string" || !Object.prototype.hasOwnProperty.call(KIND_LABELS, k)) fail(`stages.kind[${s}]`, `unknown kind ${JSON.stringify(k)}`); });
  ints(st.layer, "stages.layer", S, -1, MAX_STAGES);
  st.name.forEach((n, s) => { if (typeof n !== "string") fail(`stages.name[${s}]`, "not a string"); });
  const h = doc.histogram;
  if (!isInt(h.bins, 1, MAX_BINS)) fail("histogram.bins", `not an integer in [1, ${MAX_BINS}]: ${JSON.stringify(h.bins)}`);
  if (!(isNum(h.z_min) && isNum(h.z_max) && h.z_min < h.z_max)) fail("histogram", "z_min and z_max are not numbers with z_min < z_max");
  if (!isInt(h.samples, 0, 2 ** 31)) fail("histogram.samples", "not a count");
  if (!v1 && !vlq && !isInt(h.sample_order, 0, 52)) fail("histogram.sample_order", "not an integer in [0, 52]");
  if (!isInt(doc.lens.top_k, 0, 2 ** 31)) fail("lens.top_k", "not a count");
  if (!isInt(doc.vocab_size, 1, 2 ** 53)) fail("vocab_size", `not a vocabulary size: ${JSON.stringify(doc.vocab_size)}`);
  const lenses = doc.lens.lenses === undefined ? [{ kind: "logit" }] : arr(doc.lens.lenses, "lens.lenses");
  if (lenses.length < 1) fail("lens.lenses", "empty");
  lenses.forEach((l, k) => {
    if (!isObj(l)) fail(`lens.lenses[${k}]`, "not an object");
    if (typeof l.kind !== "string") fail(`lens.lenses[${k}].kind`, "not a string");
    if (l.source !== undefined && l.source !== null && typeof l.source !== "string") fail(`lens.lenses[${k}].source`, "not a string or null");
  });
  const T = arr(doc.tokens, "tokens").length;
  doc.tokens.forEach((t, i) => { if (typeof t !== "string") fail(`tokens[${i}]`, "not a string"); });
  arr(doc.token_ids, "token_ids", T);
  const perLens = (x, where, nTracked) => {
    arr(x.score, `${where}.score`, nTracked).forEach((row, j) => nums(row, `${where}.score[${j}]`, S));
    // ranks are 1 + the number of tokens scoring higher: 1..vocab_size (else Figure 2 draws off its axis)
    arr(x.rank, `${where}.rank`, nTracked).forEach((row, j) => ints(row, `${where}.rank[${j}]`, S, 1, doc.vocab_size));
    for (const k of ["mean", "std", "lse", "entropy", "kl"]) nums(x[k], `${where}.${k}`, S);
    if (v1) {
      arr(x.bin, `${where}.bin`, nTracked).forEach((row, j) => ints(row, `${where}.bin[${j}]`, S, 0, h.bins - 1));
    } else {
      arr(x.bin_edge, `${where}.bin_edge`).forEach((e, i) => {
        ints(e, `${where}.bin_edge[${i}]`, 3, 0, 2 ** 31);
        if (e[0] >= nTracked || e[1] >= S || e[2] >= h.bins) fail(`${where}.bin_edge[${i}]`, "outside the tracked tokens, stages or bins");
      });
    }
    if (!isObj(x.hist)) fail(`${where}.hist`, "missing or not an object");
    ints(x.hist.lo, `${where}.hist.lo`, S, 0, h.bins - 1);
    for (const k of ["counts", "samples"]) {
      arr(x.hist[k], `${where}.hist.${k}`, S).forEach((c, s) => {
        if (v1 ? !Array.isArray(c) : typeof c !== "string") fail(`${where}.hist.${k}[${s}]`, v1 ? "not an array" : "not a string");
      });
    }
    if (x.stage_top !== undefined && x.stage_top !== null) {
      const t = x.stage_top;
      if (!isObj(t)) fail(`${where}.stage_top`, "not an object");
      const rows = arr(t.tokens, `${where}.stage_top.tokens`, S);
      const n = Array.isArray(rows[0]) ? rows[0].length : 0;
      if (n < 1) fail(`${where}.stage_top.tokens[0]`, "not a non-empty array");
      rows.forEach((row, s) => ints(row, `${where}.stage_top.tokens[${s}]`, n, 0, T - 1));
      const key = t.surprisal !== undefined ? "surprisal" : "logp";
      arr(t[key], `${where}.stage_top.${key}`, S).forEach((row, s) => nums(row, `${where}.stage_top.${key}[${s}]`, n));
    }
  };
  arr(doc.prompts, "prompts").forEach((p, i) => {
    const where = `prompts[${i}]`;
    if (!isObj(p)) fail(where, "not an object");
    if (typeof p.text !== "string") fail(`${where}.text`, "not a string");
    ints(p.tokens, `${where}.tokens`, undefined, 0, T - 1);
    const positions = arr(p.positions, `${where}.positions`);
    if (positions.length > MAX_POSITIONS) fail(`${where}.positions`, `${positions.length} positions (the viewer draws at most ${MAX_POSITIONS})`);
    const seen = new Set();
    positions.forEach((x, q) => {
      const at = `${where}.positions[${q}]`;
      if (!isObj(x)) fail(at, "not an object");
      if (!isInt(x.pos, 0, p.tokens.length - 1)) fail(`${at}.pos`, `not a token position of the prompt: ${JSON.stringify(x.pos)}`);
      if (seen.has(x.pos)) fail(`${at}.pos`, `position ${x.pos} listed twice`);
      seen.add(x.pos);
      ints(x.tracked, `${at}.tracked`, undefined, 0, T - 1);
      if (x.tracked.length < 1) fail(`${at}.tracked`, "empty");
      if (x.next !== null && x.next !== undefined && !isInt(x.next, 0, x.tracked.length - 1)) fail(`${at}.next`, "not an index into tracked");
      perLens(x, at, x.tracked.length);
      if (lenses.length > 1) {
        arr(x.lenses, `${at}.lenses`, lenses.length - 1).forEach((own, k) => {
          if (!isObj(own)) fail(`${at}.lenses[${k}]`, "not an object");
          perLens(own, `${at}.lenses[${k}]`, x.tracked.length);
        });
      }
    });
  });
}

/** A name from the document as text: a hand-edited object or array (whose toString may not be callable) as "?". */
function shown(x) {
  return typeof x === "string" ? x : typeof x === "number" ? String(x) : "?";
}

/** One export document. */
export class Run {
  constructor(doc) {
    if (!doc || typeof doc !== "object" || ![SCHEMA_VERSION, SCHEMA_V3, SCHEMA_V2, SCHEMA_V1].includes(doc.schema)) {
      throw new Error(`not a ${SCHEMA_VERSION} (or ${SCHEMA_V3}, ${SCHEMA_V2}, ${SCHEMA_V1}) document (schema: ${doc && doc.schema})`);
    }
    this._doc = doc;
    this._v1 = doc.schema === SCHEMA_V1;
    this._vlq = doc.schema === SCHEMA_V2 || doc.schema === SCHEMA_V3; // histogram strings: VLQ, else Exp-Golomb
    checkDocument(doc, this._v1, this._vlq);
    this._positions = new Map();
  }

  get modelId() { return shown(this._doc.model.id); }
  get modelSummary() {
    const m = this._doc.model;
    const lens = this._doc.lens;
    return `${shown(m.id)} · ${shown(m.architecture)} · ${shown(m.dtype)} · ${lens.norm ? "final norm applied" : "raw projection"} · vocab ${typeof this.vocabSize === "number" ? this.vocabSize.toLocaleString("en-US") : "?"}`;
  }
  get vocabSize() { return this._doc.vocab_size; }
  /** The export's lenses [{kind, source, fingerprint, description, covered?}]; the first is a position's own. */
  get lenses() {
    return this._doc.lens.lenses || [{ kind: "logit", source: null, fingerprint: this._doc.model.fingerprint }];
  }
  /** "logit", "tuned (lenses/smollm2)": a short label for lens `k`. */
  lensLabel(k) {
    const l = this.lenses[k];
    const src = l.source ? String(l.source).split(/[\\/]/).filter(Boolean).pop() : null;
    return src ? `${l.kind} (${src})` : String(l.kind);
  }
  get topK() { return this._doc.lens.top_k; }
  /** N of each position's stage_top (every stage's own top-N tokens), 0 when the export has none (older ones). */
  get stageTopN() {
    const first = this._doc.prompts[0] && this._doc.prompts[0].positions[0];
    return first && first.stage_top ? first.stage_top.tokens[0].length : 0;
  }

  /**
   * The overview grid of prompt `p` as lens `lens` saw it (falls back to lens 0 where that lens has no stage_top),
   * built once: `positions` (token positions, in order), and per cell
   * c = i * stageCount + s (position i, stage s) typed arrays: `top` the stage's own top-1 (string-table index),
   * `logp` its log-probability, `rank` the final top-1's rank there, `kl` KL(final ‖ stage); `next` per position the
   * string-table index of the actual next token (-1 at the last one). null when the export has no stage_top.
   */
  grid(p, lens = 0) {
    if (!this._grids) this._grids = new Map();
    const key = `${p}:${lens}`;
    if (this._grids.has(key)) return this._grids.get(key);
    const all = this._doc.prompts[p].positions;
    const own = lens > 0 && all.length && all[0].lenses && all[0].lenses[lens - 1];
    if (lens > 0 && !(own && own.stage_top)) {
      const fallback = this.grid(p, 0);
      this._grids.set(key, fallback);
      return fallback;
    }
    // A lens's own fields, with the position's shared ones (pos, tracked, next).
    const raw = lens > 0 ? all.map((x) => ({ ...x.lenses[lens - 1], pos: x.pos })) : all;
    let out = null;
    if (raw.length && raw[0].stage_top) {
      const S = this.stageCount;
      const n = raw.length * S;
      const top = new Int32Array(n);
      const logp = new Float32Array(n);
      const rank = new Float64Array(n);
      const kl = new Float32Array(n);
      const next = new Int32Array(raw.length);
      const tokens = this._doc.prompts[p].tokens;
      raw.forEach((x, i) => {
        const t = x.stage_top;
        const r0 = x.rank[0];
        for (let s = 0; s < S; s++) {
          const c = i * S + s;
          top[c] = t.tokens[s][0];
          logp[c] = stageTopLogp(t, s, 0);
          rank[c] = r0[s];
          kl[c] = x.kl[s];
        }
        next[i] = x.pos + 1 < tokens.length ? tokens[x.pos + 1] : -1;
      });
      out = { lens, positions: raw.map((x) => x.pos), stageCount: S, top, logp, rank, kl, next, inputs: raw.map((x) => tokens[x.pos]) };
    }
    this._grids.set(key, out);
    return out;
  }

  // Stages
  get stageCount() { return this._doc.stages.name.length; }
  stageName(s) { return this._doc.stages.name[s]; }
  stageKind(s) { return this._doc.stages.kind[s]; }
  stageLayer(s) { return this._doc.stages.layer[s]; }
  get layerCount() { return Math.max(-1, ...this._doc.stages.layer) + 1; }
  /** "Embedding", "Layer 12 · after attention", "Layer 12 · after FFN". */
  stageLabel(s) {
    const kind = this.stageKind(s);
    if (kind === "embed") return "Embedding";
    return `Layer ${this.stageLayer(s)} · after ${KIND_LABELS[kind]}`;
  }

  // Histogram layout
  get binCount() { return this._doc.histogram.bins; }
  get zMin() { return this._doc.histogram.z_min; }
  get zMax() { return this._doc.histogram.z_max; }
  get samplesPerBin() { return this._doc.histogram.samples; }
  /** How many sample tokens a bin of `count` tokens lists: v2 all of a sparse bin's (≤ samples) and none of a
   *  denser one's; v1 up to `samples` of every bin's. */
  samplesInBin(count) {
    const per = this.samplesPerBin;
    if (this._v1) return Math.min(per, count);
    return count <= per ? count : 0;
  }
  /** One stage's `hist.samples` as string-table indices (v1: a plain array; v2, v3: VLQ; v4: Exp-Golomb). */
  decodeSamples(stored) {
    if (this._v1) return stored;
    return this._vlq ? decodeVlq(stored) : decodeExpGolomb(stored, this._doc.histogram.sample_order);
  }
  binEdges(b) {
    const w = (this.zMax - this.zMin) / this.binCount;
    return [this.zMin + b * w, this.zMin + (b + 1) * w];
  }
  /** The bin of a z-score (lenskit.schema.z_bin: same float64 operations, so the same bin). */
  zBin(score, mean, std) {
    const z = std > 0 ? (score - mean) / std : 0;
    const b = Math.floor((z - this.zMin) / ((this.zMax - this.zMin) / this.binCount));
    return Math.min(this.binCount - 1, Math.max(0, b));
  }

  // Strings
  tokenText(index) { return this._doc.tokens[index]; }
  tokenId(index) { return this._doc.token_ids[index]; }

  // Prompts and positions
  get promptCount() { return this._doc.prompts.length; }
  promptText(p) { return this._doc.prompts[p].text; }
  /** What names prompt p in a picker: the user's message of a chat prompt (its text opens with the same template
   *  for every prompt), else its text. */
  promptLabel(p) {
    const chat = this._doc.prompts[p].chat;
    return chat && typeof chat.user === "string" ? `${chat.user} (chat)` : this.promptText(p);
  }
  promptTokenTexts(p) { return this._doc.prompts[p].tokens.map((i) => this._doc.tokens[i]); }
  promptTokenIds(p) { return this._doc.prompts[p].tokens.map((i) => this._doc.token_ids[i]); }
  /** Token positions (numbers in the prompt) that were exported, in order. */
  exportedPositions(p) { return this._doc.prompts[p].positions.map((x) => x.pos); }
  /** The Position for token position `pos` of prompt `p` as lens `lens` (index into `lenses`) saw it, or null when
   *  it was not exported. All lenses share the tracked tokens (the first lens's final top-k). */
  position(p, pos, lens = 0) {
    const key = `${p}:${pos}:${lens}`;
    let hit = this._positions.get(key);
    if (hit === undefined) {
      let raw = this._doc.prompts[p].positions.find((x) => x.pos === pos);
      if (raw && lens > 0) {
        const own = raw.lenses && raw.lenses[lens - 1];
        if (!own) throw new Error(`position ${pos} has no data for lens ${lens}`);
        raw = { pos: raw.pos, tracked: raw.tracked, next: raw.next };
        for (const k of PER_LENS) raw[k] = own[k];
      }
      hit = raw ? new Position(this, raw) : null;
      this._positions.set(key, hit);
    }
    return hit;
  }
}

/** One token position: tracked tokens `j` (the first `topCount` are the final top-k, top-1 first) × stages `s`. */
export class Position {
  constructor(run, raw) {
    this._run = run;
    this._raw = raw;
    this._hist = new Map();
  }

  get pos() { return this._raw.pos; }
  get trackedCount() { return this._raw.tracked.length; }
  get topCount() { return Math.min(this._run.topK, this._raw.tracked.length); }
  /** Index into the tracked tokens of the actual next token, or null (last position). */
  get nextIndex() { return this._raw.next; }
  tokenText(j) { return this._run.tokenText(this._raw.tracked[j]); }
  tokenId(j) { return this._run.tokenId(this._raw.tracked[j]); }
  score(j, s) { return this._raw.score[j][s]; }
  rank(j, s) { return this._raw.rank[j][s]; }
  /** Histogram bin of tracked token j at stage s (v2: recomputed from the rounded numbers, exceptions in bin_edge). */
  bin(j, s) {
    if (this._raw.bin) return this._raw.bin[j][s];
    if (!this._binEdge) {
      this._binEdge = new Map();
      for (const [jj, ss, b] of this._raw.bin_edge) this._binEdge.set(`${jj}:${ss}`, b);
    }
    const fixed = this._binEdge.get(`${j}:${s}`);
    if (fixed !== undefined) return fixed;
    return this._run.zBin(this._raw.score[j][s], this._raw.mean[s], this._raw.std[s]);
  }
  mean(s) { return this._raw.mean[s]; }
  std(s) { return this._raw.std[s]; }
  lse(s) { return this._raw.lse[s]; }
  entropy(s) { return this._raw.entropy[s]; }
  kl(s) { return this._raw.kl[s]; }
  /** How many of each stage's own top tokens the export holds (0: none). */
  get stageTopCount() { return this._raw.stage_top ? this._raw.stage_top.tokens[0].length : 0; }
  /** The j-th of stage s's own top tokens: {text, id, logp, prob}. */
  stageTop(s, j) {
    const t = this._raw.stage_top;
    const index = t.tokens[s][j];
    const logp = stageTopLogp(t, s, j);
    return { text: this._run.tokenText(index), id: this._run.tokenId(index), logp, prob: Math.exp(logp) };
  }

  /** The score of tracked token j at stage s in a display mode: raw, centred (−mean), z ((−mean)/std), logprob (−lse). */
  value(mode, j, s) {
    const x = this._raw.score[j][s];
    switch (mode) {
      case "centred": return x - this._raw.mean[s];
      case "z": return this._raw.std[s] > 0 ? (x - this._raw.mean[s]) / this._raw.std[s] : 0;
      case "logprob": return x - this._raw.lse[s];
      default: return x;
    }
  }

  /** Probability of tracked token j at stage s (softmax over the whole vocabulary). */
  prob(j, s) { return Math.exp(this._raw.score[j][s] - this._raw.lse[s]); }

  /** Per stage the counts of bins lo.. (v2 and later store each as its change from the previous stage, v4 as
   *  zigzagged Exp-Golomb codes whose order follows the previous stage's count: decoded once). */
  get _counts() {
    if (this._countRows === undefined) {
      const h = this._raw.hist;
      if (this._run._v1) {
        h.counts.forEach((row, s) => {
          if (h.lo[s] + row.length > this._run.binCount || !row.every((c) => Number.isInteger(c) && c >= 0)) {
            throw new Error(`position ${this.pos}: hist.counts[${s}] holds counts outside the bins or not counts`);
          }
        });
        this._countRows = h.counts;
      } else {
        const prev = new Float64Array(this._run.binCount);
        this._countRows = h.counts.map((text, s) => {
          const lo = h.lo[s];
          const order = (i) => (lo + i < prev.length ? countOrder(prev[lo + i]) : -1);
          const deltas = this._run._vlq ? decodeVlq(text) : decodeExpGolomb(text, order).map(unzigzag);
          const row = deltas.map((d, i) => d + prev[lo + i]);
          if (lo + row.length > prev.length || !row.every((c) => Number.isInteger(c) && c >= 0)) {
            throw new Error(`position ${this.pos}: hist.counts[${s}] decodes to counts outside the ${prev.length} bins or below 0`);
          }
          prev.fill(0);
          row.forEach((c, i) => { prev[lo + i] = c; });
          return row;
        });
      }
    }
    return this._countRows;
  }

  /** Largest bin count over all stages (a stable y range while the stage changes). */
  get maxBinCount() {
    if (this._maxCount === undefined) {
      let m = 1;
      for (const row of this._counts) for (const c of row) if (c > m) m = c;
      this._maxCount = m;
    }
    return this._maxCount;
  }

  /** Histogram at stage s: non-empty bins [{bin, count, z0, z1, samples: [text], sampleIds: [id]}]. */
  histogram(s) {
    let hit = this._hist.get(s);
    if (hit) return hit;
    const h = this._raw.hist;
    const lo = h.lo[s];
    const counts = this._counts[s];
    const flat = this._run.decodeSamples(h.samples[s]);
    const nTokens = this._run._doc.tokens.length;
    if (!flat.every((t) => Number.isInteger(t) && t >= 0 && t < nTokens)) {
      throw new Error(`position ${this.pos}: hist.samples[${s}] names tokens outside the string table`);
    }
    const bins = [];
    let offset = 0;
    for (let i = 0; i < counts.length; i++) {
      const count = counts[i];
      const n = this._run.samplesInBin(count);
      if (count > 0) {
        const idx = flat.slice(offset, offset + n);
        const [z0, z1] = this._run.binEdges(lo + i);
        bins.push({
          bin: lo + i,
          count,
          z0,
          z1,
          samples: idx.map((t) => this._run.tokenText(t)),
          sampleIds: idx.map((t) => this._run.tokenId(t)),
        });
      }
      offset += n;
    }
    hit = { bins };
    this._hist.set(s, hit);
    return hit;
  }
}
