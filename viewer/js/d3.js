// d3.js — the one place the viewer touches the vendored D3 (vendor/d3.min.js, loaded as a classic script first).
// Every other module imports `d3` from here, so no module reads a window global of its own.

export const d3 = globalThis.d3;

if (!d3) {
  throw new Error("vendor/d3.min.js did not load");
}
