// chart.js — the SVG skeleton the three figures share: an svg, a frame translated by the margins, named <g> layers
// in paint order, and the two axis titles (positioned by each figure); and setChanged, an attribute write that skips
// nodes already holding the value (a redraw on a slider move touches only what moved).

/**
 * Append a chart to `plot` (a d3 selection). `layers` is a list of [key, className] in paint order.
 * Returns { svg, frame, yTitle, xTitle, ...one <g> per layer key }.
 */
export function createChart(plot, ariaLabel, margin, layers) {
  const svg = plot.append("svg").attr("class", "chart").attr("role", "img").attr("aria-label", ariaLabel);
  const frame = svg.append("g").attr("class", "frame").attr("transform", `translate(${margin.left},${margin.top})`);
  const chart = { svg, frame };
  for (const [key, className] of layers) chart[key] = frame.append("g").attr("class", className);
  chart.yTitle = svg.append("text").attr("class", "axis-title").attr("text-anchor", "middle");
  chart.xTitle = svg.append("text").attr("class", "axis-title").attr("text-anchor", "middle");
  return chart;
}

/**
 * For selection.call: set attribute `name` to `value(d, i, nodes)` (or a constant) on the nodes whose attribute
 * differs (compared as the string the browser would store). Setting an equal value again is not free: the browser
 * still restyles the node (and lays out its subtree), which for the hundreds of points of a figure costs milliseconds.
 */
export function setChanged(selection, name, value) {
  selection.each(function (d, i, nodes) {
    const v = typeof value === "function" ? value.call(this, d, i, nodes) : value;
    if (v === null || v === undefined) {
      if (this.hasAttribute(name)) this.removeAttribute(name);
      return;
    }
    const text = String(v);
    if (this.getAttribute(name) !== text) this.setAttribute(name, text);
  });
}

/** For selection.call: set the text of each node to `value(d, i, nodes)` (or a constant) where it differs. */
export function setTextChanged(selection, value) {
  selection.each(function (d, i, nodes) {
    const v = typeof value === "function" ? value.call(this, d, i, nodes) : value;
    const text = v === null || v === undefined ? "" : String(v);
    if (this.textContent !== text) this.textContent = text;
  });
}
