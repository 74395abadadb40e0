// state.js — the view state (run, prompt, position, stage, mode, view, yrange, grid colour, lens, compare) shared by
// all figures, and its mirror in the URL (#run=…&prompt=…&pos=…&stage=…&mode=…&view=…&yrange=…&grid=…, and for
// exports with several lenses &lens=k (index into lens.lenses) &cmp=1 (Figure 2 overlays another lens), written
// with history.replaceState so a link reproduces the view; the fragment works from file:// too). Listeners get the set of keys that changed.

export const STATE_KEYS = ["run", "prompt", "pos", "stage", "mode", "view", "yrange", "grid", "lens", "cmp"];
export const NUMERIC_KEYS = new Set(["prompt", "pos", "stage", "lens", "cmp"]);
export const VIEWS = ["panels", "shared"];
// Figure 1's y-range: "layers" (default) from the stages after the embedding, the embedding drawn clipped; "all".
export const Y_RANGES = ["layers", "all"];

/** The wanted one of `entries` (runs or comparisons), else the next one `load(entry)` opens without throwing:
 *  {entry, value, error}, `error` the first failure (as `describe(entry, err)` words it; null when the wanted one
 *  loaded). One broken document does not stop a page; when none loads, the first failure is thrown. */
export async function firstThatLoads(entries, wanted, load, describe = (entry, err) => err) {
  let error = null;
  for (const entry of [wanted, ...entries.filter((e) => e !== wanted)]) {
    try {
      return { entry, value: await load(entry), error };
    } catch (err) {
      error = error || describe(entry, err);
    }
  }
  throw error;
}

/** A tiny store: get(), set(patch) notifies subscribers with the changed keys. */
export function createState(initial) {
  let current = { ...initial };
  const listeners = [];
  return {
    get: () => current,
    set(patch) {
      const changed = new Set();
      for (const [k, v] of Object.entries(patch)) {
        if (current[k] !== v) changed.add(k);
      }
      if (changed.size === 0) return;
      current = { ...current, ...patch };
      for (const fn of listeners) fn(current, changed);
    },
    subscribe(fn) { listeners.push(fn); },
  };
}

/** State values found in the page's URL (query string, then fragment); indices parsed (digits only), unknown keys dropped. Another
 * page (compare.js) passes its own ``keys``/``numeric``. */
export function readUrlState(location = window.location, keys = STATE_KEYS, numeric = NUMERIC_KEYS) {
  const out = {};
  const sources = [new URLSearchParams(location.search), new URLSearchParams(location.hash.replace(/^#/, ""))];
  for (const params of sources) {
    for (const key of keys) {
      const raw = params.get(key);
      if (raw === null) continue;
      if (numeric.has(key)) {
        // indices only: "3.7", "-1", "1e3", "3abc" are not positions (the default is used and the URL rewritten)
        if (/^\d{1,9}$/.test(raw.trim())) out[key] = Number(raw.trim());
      } else {
        out[key] = raw;
      }
    }
  }
  return out;
}

/** Write the state into the URL fragment without adding history entries. */
export function writeUrlState(state, keys = STATE_KEYS) {
  const params = new URLSearchParams();
  for (const key of keys) {
    if (state[key] !== undefined && state[key] !== null) params.set(key, String(state[key]));
  }
  const url = new URL(window.location.href);
  url.hash = params.toString();
  try {
    window.history.replaceState(null, "", url.href);
  } catch (err) {
    // Some embedders forbid it; the view still works, only the link does not follow.
  }
}
