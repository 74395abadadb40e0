// chart.js — the SVG skeleton the three figures share: an svg, a frame translated by the margins, named <g> layers
// in paint order, and the two axis titles (positioned by each figure).

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
