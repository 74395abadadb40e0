// format.js — how token texts and numbers are shown.
// Token texts come from a tokenizer and may hold anything (markup, control, zero-width and bidi characters): they are
// only ever set with textContent / d3 .text(). In the strip and on axes, invisible characters get visible stand-ins
// (a space as "␣", a newline as "⏎", others as ⟨U+XXXX⟩, a lone surrogate too) and a stack of combining marks past
// MAX_MARKS on one character is cut to a count (⟨+N marks⟩); hovers show the exact text, bidi-isolated and clipped.

const VISIBLE_CHARS = new Map([
  [" ", "␣"],
  ["\n", "⏎"],
  ["\r", "␍"],
  ["\t", "⇥"],
  ["\u00a0", "⍽"],
]);
// Control (Cc), format: zero-width, bidi controls, BOM, tags (Cf), lone surrogates (Cs), every other space and line or
// paragraph separator (Z), blank fillers (Hangul, braille) and the combining grapheme joiner: shown as ⟨U+XXXX⟩.
const INVISIBLE_RE = /[\p{Cc}\p{Cf}\p{Cs}\p{Z}\u034f\u115f\u1160\u17b4\u17b5\u180e\u2800\u3164\uffa0]/u;
const MARK_RE = /\p{M}/u;
const MAX_MARKS = 3; // combining marks kept on one character (scripts need 2–3; "Zalgo" text stacks dozens)
const EMPTY_TOKEN = "∅";
const MAX_LABEL_CHARS = 24;
export const MAX_TOKEN_CHARS = 32; // a token in the strip, the prediction line or a legend

/** Split a token text into parts {text, special}: special parts are stand-ins for invisible characters. */
export function tokenParts(text) {
  if (text === "") return [{ text: EMPTY_TOKEN, special: true }];
  const parts = [];
  let plain = "";
  let marks = 0; // combining marks in a row
  const special = (shown) => {
    if (plain) parts.push({ text: plain, special: false });
    plain = "";
    parts.push({ text: shown, special: true });
  };
  const endMarks = () => {
    if (marks > MAX_MARKS) special(`⟨+${marks - MAX_MARKS} marks⟩`);
    marks = 0;
  };
  for (const ch of text) {
    if (MARK_RE.test(ch)) {
      if (++marks <= MAX_MARKS) plain += ch;
      continue;
    }
    endMarks();
    let shown = VISIBLE_CHARS.get(ch);
    if (shown === undefined && INVISIBLE_RE.test(ch)) {
      shown = `⟨U+${ch.codePointAt(0).toString(16).toUpperCase().padStart(4, "0")}⟩`;
    }
    if (shown === undefined) plain += ch;
    else special(shown);
  }
  endMarks();
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

/** A line of prose (a prompt in a picker): spaces kept, but controls, bidi and other format characters (which could
 *  reorder the text around them) shown as ⟨U+XXXX⟩, tabs and line breaks as spaces, combining-mark stacks cut. */
export function plainLabel(text) {
  return text
    .replace(/[\t\n\r]/g, " ")
    .replace(/[\p{Cc}\p{Cf}\p{Cs}\p{Zl}\p{Zp}]/gu, (ch) => `⟨U+${ch.codePointAt(0).toString(16).toUpperCase().padStart(4, "0")}⟩`)
    .replace(new RegExp(`(\\p{M}{${MAX_MARKS}})\\p{M}+`, "gu"), "$1");
}

/** Whether the visible form differs from the exact text (worth showing both in a hover). */
export function hasInvisible(text) {
  return tokenParts(text).some((p) => p.special);
}

/** Append the token's parts as spans (special ones dimmed) to a d3 selection; text only, never markup. Past `max`
 *  characters (code points) of its visible form the rest is cut to an ellipsis (the hover shows it whole). */
export function appendTokenParts(selection, text, max = Infinity) {
  let left = max;
  for (const part of tokenParts(text)) {
    const chars = Array.from(part.text);
    const cut = chars.length > left;
    const shown = cut ? chars.slice(0, Math.max(0, left - 1)).join("") : part.text;
    if (shown) selection.append("span").attr("class", part.special ? "ws" : null).text(shown);
    if (cut) {
      selection.append("span").attr("class", "ws cut").text("…");
      break;
    }
    left -= chars.length;
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
