// tooltip.js — the one hover box all figures share. Rows are built with d3 .text() only; token texts are shown
// exactly (quoted, whitespace preserved, bidi-isolated) next to their visible form when they hold invisible characters.

import { d3 } from "./d3.js";
import { appendTokenParts, hasInvisible } from "./format.js";

const TOOLTIP_ID = "tooltip";
const OFFSET_PX = 14;

function box() {
  return d3.select(`#${TOOLTIP_ID}`);
}

/**
 * Show the tooltip near a pointer event. `rows` is a list of
 *   {label, value}            a plain text row,
 *   {label, token}            a token text (exact + visible form),
 *   {label, tokens: [text]}   several tokens.
 * `title` is an optional token text shown first.
 */
export function showTooltip(event, { title = null, rows = [] }) {
  const tip = box();
  tip.selectAll("*").remove();
  if (title !== null) {
    appendToken(tip.append("div").attr("class", "tip-title"), title);
  }
  const table = tip.append("div").attr("class", "tip-rows");
  for (const row of rows) {
    table.append("span").attr("class", "tip-label").text(row.label);
    const cell = table.append("span").attr("class", "tip-value");
    if (row.token !== undefined) {
      appendToken(cell, row.token);
    } else if (row.tokens !== undefined) {
      const list = cell.append("span").attr("class", "tip-tokens");
      for (const t of row.tokens) appendToken(list.append("span").attr("class", "tip-token"), t);
    } else {
      cell.text(row.value);
    }
  }
  tip.attr("hidden", null);
  move(event);
}

function appendToken(sel, text) {
  // Quotes outside, text bidi-isolated inside: an RLO in the token cannot flip the quotes or the rest of the row.
  sel.append("q").attr("class", "exact").append("span").attr("class", "exact-text").text(text);
  if (hasInvisible(text)) {
    appendTokenParts(sel.append("span").attr("class", "visible-form"), text);
  }
}

/** Keep the tooltip next to the pointer, inside the window. */
function move(event) {
  const node = box().node();
  if (!node || node.hidden) return;
  const { innerWidth: w, innerHeight: h } = window;
  const r = node.getBoundingClientRect();
  let x = event.clientX + OFFSET_PX;
  let y = event.clientY + OFFSET_PX;
  if (x + r.width > w - 4) x = Math.max(4, event.clientX - OFFSET_PX - r.width);
  if (y + r.height > h - 4) y = Math.max(4, event.clientY - OFFSET_PX - r.height);
  node.style.left = `${x}px`;
  node.style.top = `${y}px`;
}

export function hideTooltip() {
  const tip = box();
  if (!tip.empty() && !tip.node().hidden) tip.attr("hidden", true);
}
