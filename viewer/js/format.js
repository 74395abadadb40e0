// format.js — how token texts and numbers are shown.
// Token texts come from a tokenizer and may hold anything (markup, control, zero-width and bidi characters): they are
// only ever set with textContent / d3 .text(). In the strip and on axes, invisible characters get visible stand-ins
// (a space as "␣", a newline as "⏎", others as ⟨U+XXXX⟩); hovers show the exact text, bidi-isolated.

const VISIBLE_CHARS = new Map([
  [" ", "␣"],
  ["\n", "⏎"],
  ["\r", "␍"],
  ["\t", "⇥"],
  ["\u00a0", "⍽"],
]);
// Control, zero-width, bidi-control, line/paragraph separators and BOM: shown as ⟨U+XXXX⟩.
const INVISIBLE_RE = /[\u0000-\u001f\u007f-\u009f\u00ad\u061c\u115f\u1160\u180e\u200b-\u200f\u2028-\u202e\u2060-\u206f\ufeff\ufff9-\ufffb]/u;
const EMPTY_TOKEN = "∅";
const MAX_LABEL_CHARS = 24;

/** Split a token text into parts {text, special}: special parts are stand-ins for invisible characters. */
export function tokenParts(text) {
  if (text === "") return [{ text: EMPTY_TOKEN, special: true }];
  const parts = [];
  let plain = "";
  for (const ch of text) {
    let shown = VISIBLE_CHARS.get(ch);
    if (shown === undefined && INVISIBLE_RE.test(ch)) {
      shown = `⟨U+${ch.codePointAt(0).toString(16).toUpperCase().padStart(4, "0")}⟩`;
    }
    if (shown === undefined) {
      plain += ch;
    } else {
      if (plain) parts.push({ text: plain, special: false });
      plain = "";
      parts.push({ text: shown, special: true });
    }
  }
  if (plain) parts.push({ text: plain, special: false });
  return parts;
}

/** The token with visible stand-ins for invisible characters, as one string. */
export function visibleToken(text) {
  return tokenParts(text).map((p) => p.text).join("");
}

/** visibleToken cut to `max` characters (code points) with an ellipsis. */
export function shortToken(text, max = MAX_LABEL_CHARS) {
  const chars = Array.from(visibleToken(text));
  return chars.length <= max ? chars.join("") : chars.slice(0, Math.max(1, max - 1)).join("") + "…";
}

/** Whether the visible form differs from the exact text (worth showing both in a hover). */
export function hasInvisible(text) {
  return tokenParts(text).some((p) => p.special);
}

/** Append the token's parts as spans (special ones dimmed) to a d3 selection; text only, never markup. */
export function appendTokenParts(selection, text) {
  for (const part of tokenParts(text)) {
    selection.append("span").attr("class", part.special ? "ws" : null).text(part.text);
  }
  return selection;
}

/** A number with `digits` significant decimals, a real minus sign, and a sign when asked. */
export function formatNumber(value, digits = 3, signed = false) {
  if (value === null || value === undefined || Number.isNaN(value)) return "–";
  if (!Number.isFinite(value)) return value > 0 ? "∞" : "−∞";
  const s = Math.abs(value) >= 1e5 ? value.toExponential(2) : value.toFixed(digits);
  const out = s.replace("-", "−");
  return signed && value > 0 ? "+" + out : out;
}

/** A rank with thousands separators. */
export function formatRank(rank) {
  return rank.toLocaleString("en-US");
}
