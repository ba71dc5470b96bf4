// deeplens widget kit: the helpers every view uses, in one place. deeplens.widgets prepends this file to each
// view's module when it builds the view's `_esm`, after one line it writes from deeplens.style:
//   const PALETTE = { positive: [r, g, b], neutral: [r, g, b], negative: [r, g, b] };
// so the views colour values with the same palette and the same rule as the static HTML and the altair charts.
// Hand-written, no dependencies, plain DOM and SVG. tests/test_widgets.py checks `visible` and `valueColour`
// against deeplens.style over many inputs.

// A float32 binary buffer (a DataView / ArrayBuffer from ipywidgets) as a Float32Array copy; anything else: empty.
function floats(v) {
  if (!v) return new Float32Array(0);
  if (v instanceof ArrayBuffer) return new Float32Array(v.slice(0));
  if (ArrayBuffer.isView(v)) return new Float32Array(v.buffer.slice(v.byteOffset, v.byteOffset + v.byteLength));
  return new Float32Array(0);
}

// Tokens are drawn with their whitespace visible, by the mapping of deeplens.style.visible_whitespace:
// a space is ␣, a newline ↵, a tab ⇥, a carriage return ␍, any other invisible character (other spaces, control
// and format characters) its \x / \u escape.
const GLYPHS = { " ": "␣", "\n": "↵", "\t": "⇥", "\r": "␍" };
const HIDDEN = /[\s\p{Cc}\p{Cf}]/u;

function visible(s) {
  let out = "";
  for (const c of String(s)) {
    if (Object.hasOwn(GLYPHS, c)) out += GLYPHS[c];
    else if (HIDDEN.test(c)) {
      const n = c.codePointAt(0), h = n.toString(16);
      out += n < 0x100 ? "\\x" + h.padStart(2, "0") : n < 0x10000 ? "\\u" + h.padStart(4, "0") : "\\U" + h.padStart(8, "0");
    } else out += c;
  }
  return out;
}

// `a` with three decimals as Python's "%.3f" writes it: exact ties (a = odd / 16) round to even, where toFixed
// would round them up.
function fixed3(a) {
  const t = a * 16;
  if (Number.isInteger(t) && t % 2 === 1) {
    const n = Math.floor(a * 1000);
    return ((n % 2 ? n + 1 : n) / 1000).toFixed(3);
  }
  return a.toFixed(3);
}

// The opacity of value `v` in a view whose values span [lo, hi] (deeplens.style.value_colour's rule).
function valueAlpha(v, lo, hi) {
  let a;
  if (lo < 0 && 0 < hi) a = Math.abs(v) / Math.max(-lo, hi);
  else if (hi <= 0 && lo < 0) a = (hi - v) / (hi - lo);
  else a = hi > lo ? (v - lo) / (hi - lo) : 0;
  return Math.min(Math.max(a, 0), 1);
}

// The CSS colour of `v`: red above zero, blue below, opacity by size; one-sided ranges ramp in one colour.
function valueColour(v, lo, hi) {
  if (!Number.isFinite(v)) return "transparent";
  const negative = (lo < 0 && 0 < hi) ? v < 0 : (hi <= 0 && lo < 0);
  const [r, g, b] = negative ? PALETTE.negative : PALETTE.positive;
  return `rgba(${r},${g},${b},${fixed3(valueAlpha(v, lo, hi))})`;
}

// The ink of text drawn on a value's colour (for `data-ink`): strongly coloured cells take light text in either
// theme (the views' _css: [data-ink="light"]); others keep the theme's text colour.
function ink(v, lo, hi) {
  return Number.isFinite(v) && valueAlpha(v, lo, hi) > 0.6 ? "light" : "theme";
}

const SVG = "http://www.w3.org/2000/svg";   // XML namespace name, not a network import

function svg(tag, attrs) {
  const e = document.createElementNS(SVG, tag);
  for (const k in attrs) e.setAttribute(k, String(attrs[k]));
  return e;
}

// An element with a class (styled by the view's _css) and optional text.
function make(tag, cls, text) {
  const e = document.createElement(tag);
  if (cls) e.className = cls;
  if (text !== undefined) e.textContent = text;
  return e;
}

function div(cls, text) { return make("div", cls, text); }

function fmt(x, digits = 3) {
  if (!Number.isFinite(x)) return "n/a";
  if (x === 0) return "0";
  const a = Math.abs(x);
  return a >= 1e4 || a < 1e-3 ? x.toExponential(digits - 1) : x.toPrecision(digits);
}

// Subscribe `fn` to every event of each [space-separated events, fn] group; returns the unsubscribe function.
function subscribe(model, groups) {
  for (const [evs, fn] of groups) for (const e of evs.split(" ")) model.on(e, fn);
  return () => { for (const [evs, fn] of groups) for (const e of evs.split(" ")) model.off(e, fn); };
}

// Set a trait from the view and send it to Python.
function commit(model, name, value) { model.set(name, value); model.save_changes(); }

// ---- end of the kit; the view follows
