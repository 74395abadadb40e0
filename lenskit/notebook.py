"""Notebooks: the viewer inline in a cell, and the figures' data as pandas DataFrames.

:func:`show` renders the full viewer from the single-file report (:func:`lenskit.report.build_html`) inside an
``<iframe srcdoc=...>`` sandboxed to ``allow-scripts`` only: no server, nothing loaded from the network, and the page
(an opaque origin) can reach neither the notebook nor its kernel. The frame is as wide as the cell; its height follows
the viewer's (the viewer posts its height to the parent page, a few lines of script beside the frame set it) unless a
``height`` is given, and stays at its first height where a frontend runs no script in outputs.

:class:`Export` wraps an export document (``lenskit.export/1`` to ``/4``): ``_repr_html_`` shows it, and
:meth:`Export.scores`, :meth:`Export.ranks`, :meth:`Export.histogram` and :meth:`Export.stats` return what Figures 1-3
draw as DataFrames, for users who plot their own. pandas is optional (``pip install 'lenskit[notebook]'``); it is
imported only by those methods.

    >>> import lenskit
    >>> lenskit.show("runs/demo")                       # a run folder, an export.json, or a document dict
    >>> doc = lenskit.notebook.Export.load("runs/demo")
    >>> doc.ranks(0, pos=4)                             # tracked tokens x stages, rank 1 = top
"""

from __future__ import annotations

import html
import json
import uuid
from pathlib import Path

from .errors import InputError, LenskitError, TraceFileError
from .tokens import is_int, is_number

SANDBOX = "allow-scripts"  # scripts run; no same-origin, forms, popups, top navigation or downloads
DEFAULT_HEIGHT = 1400  # px: the first height of an auto-sized frame (strip + three figures at a cell's width)
MIN_HEIGHT = 240
MAX_AUTO_HEIGHT = 4000
HEIGHT_MESSAGE = "height"  # js/main.js posts {lenskit: "height", height: px} to its parent when framed
MODES = ("raw", "centred", "z", "logprob")
STAT_COLUMNS = ("mean", "std", "lse", "entropy", "kl")
DOC_KEYS = ("model", "lens", "stages", "histogram", "tokens", "prompts")  # what the readers below use, every version


def _index(x):
    """``x`` as a Python int when it is a whole number (int, numpy integer; not bool), else None."""
    from .tokens import as_index

    return as_index(x)

def _shown(x) -> str:
    """``repr(x)`` for a message, shortened (a 10**5000 has no repr at all: Python refuses > 4300 digits)."""
    try:
        r = repr(x)
    except ValueError:
        return "an int of more than 4300 digits"
    return r if len(r) <= 40 else f"{r[:32]}...({len(r)} characters)"


MAX_BINS = 100_000  # far above HIST_BINS: a hand-edited ``histogram.bins`` past this is refused, not allocated
MAX_HEIGHT = 1_000_000  # px


def _is_idx(x, n: int) -> bool:
    """An int (not bool) in ``0 <= x < n``."""
    return is_int(x) and 0 <= x < n


def _text(t: str) -> str:
    """A token text DataFrames can hold: lone surrogates (a dict built in Python, not read from JSON) as U+FFFD."""
    from .tokens import is_utf8

    return t if is_utf8(t) else t.encode("utf-8", "surrogatepass").decode("utf-8", "replace")


def _broken(where: str, what: str):
    return TraceFileError(f"not a usable lenskit export document: {where} {what}")


def _check_doc(doc: dict) -> None:
    """The document-wide fields the readers below index with, checked once (one TraceFileError naming the field,
    not a KeyError, TypeError or IndexError from deep inside a DataFrame method)."""
    if not isinstance(doc["model"], dict):
        raise _broken("'model'", "is not an object")
    names = doc["stages"]["name"]
    if not names or not all(isinstance(x, str) for x in names):
        raise _broken("'stages.name'", "is not a non-empty list of stage names (strings)")
    tokens = doc["tokens"]
    if not isinstance(tokens, list) or not all(isinstance(t, str) for t in tokens):
        raise _broken("'tokens'", "is not a list of token texts (strings)")
    ids = doc.get("token_ids")
    if ids is not None and (not isinstance(ids, list) or len(ids) != len(tokens)
                            or not all(is_int(t) for t in ids)):
        raise _broken("'token_ids'", f"is not a list of {len(tokens)} ints (one per entry of 'tokens')")
    lens = doc["lens"]
    if not isinstance(lens, dict) or not (is_int(lens.get("top_k")) and lens["top_k"] >= 0):
        raise _broken("'lens.top_k'", "is missing or not a whole number >= 0")
    if not (is_int(doc.get("vocab_size")) and 1 <= doc["vocab_size"] <= 2**53):
        raise _broken("'vocab_size'", f"is {_shown(doc.get('vocab_size'))}, not a vocabulary size")
    hg = doc["histogram"]
    if not isinstance(hg, dict):
        raise _broken("'histogram'", "is not an object")
    if not _is_idx(hg.get("bins"), MAX_BINS + 1) or hg["bins"] < 1:
        raise _broken("'histogram.bins'", f"is {_shown(hg.get('bins'))}, not a whole number from 1 to {MAX_BINS}")
    if not (is_number(hg.get("z_min")) and is_number(hg.get("z_max")) and hg["z_min"] < hg["z_max"]):
        raise _broken("'histogram.z_min'/'z_max'", "are not two finite numbers, z_min < z_max")
    for key, top in (("samples", 100), ("sample_order", 62)):  # samples: `--samples` 0..100; order: a shift count
        if (key in hg or key == "samples") and not _is_idx(hg.get(key), top + 1):
            raise _broken(f"'histogram.{key}'", f"is {_shown(hg.get(key))}, not a whole number from 0 to {top}")
    for i, p in enumerate(doc["prompts"]):
        if not isinstance(p, dict) or not isinstance(p.get("tokens"), list) or not isinstance(p.get("positions"), list):
            raise _broken(f"'prompts[{i}]'", "is not an object with 'tokens' and 'positions' lists")
        if not all(_is_idx(t, len(tokens)) for t in p["tokens"]):
            raise _broken(f"'prompts[{i}].tokens'", f"holds a value that is not an index into 'tokens' (0..{len(tokens) - 1})")
        for j, x in enumerate(p["positions"]):
            if not isinstance(x, dict) or not _is_idx(x.get("pos"), len(p["tokens"])):
                raise _broken(f"'prompts[{i}].positions[{j}]'",
                              f"is not an object whose 'pos' is a token position of the prompt (0..{len(p['tokens']) - 1})")


def _check_position(doc: dict, P: dict, where: str) -> None:
    """One position's fields, as the DataFrame methods read them: lengths (tracked x stages), types, index ranges."""
    S, n_tokens, V = len(doc["stages"]["name"]), len(doc["tokens"]), doc["vocab_size"]
    for key in ("tracked", "score", "rank", "mean", "std", "lse", "entropy", "kl", "hist"):
        if key not in P:
            raise _broken(where, f"has no {key!r}")
    tracked = P["tracked"]
    if not isinstance(tracked, list) or not tracked or not all(_is_idx(t, n_tokens) for t in tracked):
        raise _broken(f"{where}: 'tracked'", f"is not a non-empty list of indices into 'tokens' (0..{n_tokens - 1})")
    T = len(tracked)
    if P.get("next") is not None and not _is_idx(P["next"], T):
        raise _broken(f"{where}: 'next'", f"is {_shown(P['next'])}, not null or an index into 'tracked' (0..{T - 1})")
    for key, ok, kind in (("score", is_number, "finite numbers"),
                          ("rank", lambda x: _is_idx(x, V + 1) and x >= 1, f"whole numbers from 1 to {V}")):
        rows = P[key]
        if not isinstance(rows, list) or len(rows) != T or not all(
                isinstance(r, list) and len(r) == S and all(ok(x) for x in r) for r in rows):
            raise _broken(f"{where}: '{key}'", f"is not {T} rows (one per tracked token) of {S} {kind} (one per stage)")
    for key in STAT_COLUMNS:
        v = P[key]
        if not isinstance(v, list) or len(v) != S or not all(is_number(x) for x in v):
            raise _broken(f"{where}: '{key}'", f"is not a list of {S} finite numbers (one per stage)")
    if "bin" in P:
        if not isinstance(P["bin"], list) or len(P["bin"]) != T or not all(
                isinstance(r, list) and len(r) == S and all(_is_idx(x, doc["histogram"]["bins"]) for x in r)
                for r in P["bin"]):
            raise _broken(f"{where}: 'bin'", f"is not {T} rows of {S} histogram bins")
    else:
        edges = P.get("bin_edge")
        if not isinstance(edges, list) or not all(
                isinstance(e, list) and len(e) == 3 and _is_idx(e[0], T) and _is_idx(e[1], S)
                and _is_idx(e[2], doc["histogram"]["bins"]) for e in edges):
            raise _broken(f"{where}: 'bin_edge'", "is not a list of [tracked, stage, bin] index triples")
    h = P["hist"]
    if not isinstance(h, dict) or not all(isinstance(h.get(k), list) and len(h[k]) == S for k in ("lo", "counts", "samples")) \
            or not all(_is_idx(x, doc["histogram"]["bins"]) for x in h["lo"]):
        raise _broken(f"{where}: 'hist'", f"is not an object with 'lo' (bins), 'counts' and 'samples' lists of {S} (one per stage)")


_RESIZE_JS = (
    "(function(){var f=document.getElementById(%s);if(!f)return;"
    "window.addEventListener('message',function(e){"
    "if(!f.isConnected||e.source!==f.contentWindow)return;var d=e.data;"
    "if(!d||d.lenskit!==%s)return;var h=Number(d.height);if(!(h>0))return;"
    "f.style.height=Math.round(Math.min(%d,Math.max(%d,h)))+'px';});})();"
)


def _pandas():
    try:
        import pandas
    except ImportError as e:
        raise LenskitError(
            "the DataFrame API needs pandas, which is not installed: pip install 'lenskit[notebook]' (or pandas)"
        ) from e
    return pandas


class Export:
    """One export document (the dict ``lenskit export`` writes), shown inline by notebooks and read as DataFrames.

    ``prompt`` arguments are prompt indices (0 = the first), ``pos`` a token position in the prompt (negative counts
    from its end; ``None`` = the last exported position, where the model predicts the token after the prompt), and
    ``stage`` a stage index (negative counts from the end) or name (``"embed"``, ``"L3.attn"``, ``"L3.ffn"``).
    """

    def __init__(self, doc: dict, name: str | None = None):
        if not isinstance(doc, dict) or not isinstance(doc.get("schema"), str) or not doc["schema"].startswith("lenskit.export/"):
            raise TraceFileError("not a lenskit export document (no 'schema': 'lenskit.export/N' field)")
        from .schema import SCHEMA_VERSIONS_READ

        if doc["schema"] not in SCHEMA_VERSIONS_READ:
            raise TraceFileError(f"export format {_shown(doc['schema'])} is not one this lenskit reads ({', '.join(SCHEMA_VERSIONS_READ)})")
        missing = [k for k in DOC_KEYS if k not in doc]
        if missing or not isinstance(doc["prompts"], list) or not isinstance(doc.get("stages"), dict) \
                or not isinstance(doc["stages"].get("name"), list):
            raise TraceFileError(f"not a complete lenskit export document: "
                                 f"{'no ' + ', '.join(repr(k) for k in missing) if missing else 'malformed prompts or stages'}")
        _check_doc(doc)
        if name is not None and not isinstance(name, str):
            raise InputError(f"name {_shown(name)}: a string or None")
        self.doc = doc
        self.name = name or str(doc["model"].get("id", "report"))

    @classmethod
    def load(cls, path) -> "Export":
        """Read a run folder's ``export.json`` (or an export file itself)."""
        from .schema import EXPORT_FILE

        if not isinstance(path, (str, Path)):
            raise InputError(f"Export.load wants a run folder or an export.json path (str or Path), "
                             f"not {type(path).__name__}")
        path = Path(path).expanduser()
        try:
            file = path / EXPORT_FILE if path.is_dir() else path
            found = file.is_file()
        except (OSError, ValueError) as e:
            raise TraceFileError(f"{path}: cannot read it ({e.strerror or e})" if isinstance(e, OSError)
                                 else f"{path}: cannot read it ({e})") from e
        if not found:
            raise TraceFileError(f"{path}: no {EXPORT_FILE} there (run `lenskit export {path}` first)" if path.is_dir()
                                 else f"{path}: no such file")
        import orjson

        try:
            doc = orjson.loads(file.read_bytes())
        except (OSError, ValueError) as e:
            raise TraceFileError(f"{file}: cannot read it as JSON ({e})") from e
        return cls(doc, name=(path if path.is_dir() else file.parent).name or None)

    def __repr__(self) -> str:
        m = self.doc.get("model", {})
        return (f"<lenskit Export {m.get('id')!s}: {len(self.doc['prompts'])} prompt(s), {len(self.stage_names)} stages, "
                f"{self.doc['schema']}>")

    # ---- inline viewer

    def html(self, height: int | None = None) -> str:
        """The notebook output: the single-file viewer in a sandboxed iframe (and, when auto-sized, its resizer)."""
        return viewer_iframe(self.doc, height=height, name=self.name)

    def _repr_html_(self) -> str:
        return self.html()

    def show(self, height: int | None = None):
        """Display the viewer in the current notebook cell (see :func:`show`)."""
        return show(self, height=height)

    # ---- the document's shape

    @property
    def stage_names(self) -> list[str]:
        return list(self.doc["stages"]["name"])

    def prompt_tokens(self, prompt: int = 0) -> list[str]:
        """The prompt's token texts."""
        p = self._prompt(prompt)
        return [self.doc["tokens"][i] for i in p["tokens"]]

    def positions(self, prompt: int = 0) -> list[int]:
        """The token positions of ``prompt`` that were exported."""
        return [x["pos"] for x in self._prompt(prompt)["positions"]]

    def _prompt(self, prompt: int) -> dict:
        prompts = self.doc["prompts"]
        i = _index(prompt)
        if i is None or not -len(prompts) <= i < len(prompts):
            traced = [p.get("index", j) for j, p in enumerate(prompts)]
            note = "" if traced == list(range(len(prompts))) else (
                f"; they are the trace's prompt(s) {', '.join(map(str, traced))}, in that order")
            raise InputError(f"prompt {_shown(prompt)}: this export has prompts 0..{len(prompts) - 1}{note}")
        return prompts[i]

    def _position(self, prompt: int, pos: int | None) -> dict:
        p = self._prompt(prompt)
        if not p["positions"]:
            raise InputError(f"prompt {prompt} has no exported positions")
        if pos is None:
            return self._checked(prompt, p["positions"][-1])
        want = _index(pos)
        if want is None:
            raise InputError(f"position {_shown(pos)}: give a token position (an int; negative counts from the end) or None")
        if want < 0:
            want += len(p["tokens"])
        for x in p["positions"]:
            if x["pos"] == want:
                return self._checked(prompt, x)
        have = [x["pos"] for x in p["positions"]]
        shown = ", ".join(map(str, have[:12])) + (" …" if len(have) > 12 else "")
        raise InputError(f"position {_shown(pos)} of prompt {prompt} was not exported (exported: {shown}; the prompt has "
                         f"{len(p['tokens'])} tokens)")

    def _checked(self, prompt, P: dict) -> dict:
        _check_position(self.doc, P, f"prompts[{_index(prompt) % len(self.doc['prompts'])}] position {P['pos']}")
        return P

    def _stage(self, stage) -> int:
        names = self.stage_names
        if isinstance(stage, str):
            if stage not in names:
                raise InputError(f"no stage named {_shown(stage)} (stages: {', '.join(names[:2])}{' … ' + names[-1] if len(names) > 2 else ''})")
            return names.index(stage)
        i = _index(stage)
        if i is None or not -len(names) <= i < len(names):
            raise InputError(f"stage {_shown(stage)}: this export has stages 0..{len(names) - 1} (or their names)")
        return i % len(names)

    def _tracked_index(self, P: dict):
        """Index (token texts) and the tokens' ids and roles ("#1".., "next", "tracked") for a position."""
        pd = _pandas()
        top = min(self.doc["lens"]["top_k"], len(P["tracked"]))
        texts = [_text(self.doc["tokens"][t]) for t in P["tracked"]]
        ids = [self.doc["token_ids"][t] if "token_ids" in self.doc else None for t in P["tracked"]]
        roles = [f"#{j + 1}" if j < top else "next" if j == P.get("next") else "tracked" for j in range(len(texts))]
        return pd.Index(texts, name="token"), ids, roles

    def _frame(self, P: dict, rows, prompt: int, what: str):
        pd = _pandas()
        index, ids, roles = self._tracked_index(P)
        df = pd.DataFrame(rows, index=index, columns=pd.Index(self.stage_names, name="stage"))
        df.attrs.update({"what": what, "prompt": prompt, "pos": P["pos"], "token_ids": ids, "roles": roles})
        return df

    # ---- the figures' data

    def scores(self, prompt: int = 0, pos: int | None = None, mode: str = "raw"):
        """Figure 1: the tracked tokens' scores (rows: final top-k in rank order, then the actual next token and
        ``--track`` tokens; index = token text) at every stage (columns = stage names). ``mode``: ``raw`` logits,
        ``centred`` (score − mean), ``z`` ((score − mean) / std) or ``logprob`` (score − logsumexp).
        ``df.attrs`` has the tokens' ``token_ids`` and ``roles``."""
        if mode not in MODES:
            raise InputError(f"mode {_shown(mode)}: one of {', '.join(MODES)}")
        P = self._position(prompt, pos)
        mean, std, lse = P["mean"], P["std"], P["lse"]
        rows = []
        for row in P["score"]:
            if mode == "centred":
                row = [x - m for x, m in zip(row, mean)]
            elif mode == "z":
                row = [(x - m) / s if s > 0 else 0.0 for x, m, s in zip(row, mean, std)]
            elif mode == "logprob":
                row = [x - e for x, e in zip(row, lse)]
            rows.append(list(row))
        df = self._frame(P, rows, prompt, f"score ({mode})")
        df.attrs["mode"] = mode
        return df

    def ranks(self, prompt: int = 0, pos: int | None = None):
        """Figure 2: the tracked tokens' ranks among the whole vocabulary (1 = top) at every stage; same layout as
        :meth:`scores`."""
        P = self._position(prompt, pos)
        return self._frame(P, [list(r) for r in P["rank"]], prompt, "rank")

    def histogram(self, prompt: int = 0, pos: int | None = None, stage=-1):
        """Figure 3: the z-scored histogram of all vocabulary scores at one stage: one row per bin (index ``bin``)
        with its edges ``z_lo``/``z_hi``, ``count``, ``samples`` (the texts of the tokens a sparse bin lists; empty
        for denser bins) and ``tracked`` (the tracked tokens that fall in it)."""
        from .schema import histogram, tracked_bins

        pd = _pandas()
        P = self._position(prompt, pos)
        s = self._stage(stage)
        hg, tokens = self.doc["histogram"], self.doc["tokens"]
        where = f"prompts[{_index(prompt) % len(self.doc['prompts'])}] position {P['pos']}: 'hist'"
        try:  # the Base64 strings (schema.histogram decodes them) are checked only by decoding them
            counts, samples = histogram(self.doc, P)
            tb = tracked_bins(self.doc, P)[:, s]
        except (ValueError, TypeError, IndexError, KeyError, OverflowError, MemoryError) as e:
            raise _broken(where, f"cannot be decoded ({e})") from e
        if counts.shape != (len(self.stage_names), hg["bins"]) or not all(
                _is_idx(t, len(tokens)) for got in samples for ids in got.values() for t in ids):
            raise _broken(where, "decodes to counts or sample tokens out of range")
        width = (hg["z_max"] - hg["z_min"]) / hg["bins"]
        df = pd.DataFrame(
            {
                "z_lo": [hg["z_min"] + b * width for b in range(hg["bins"])],
                "z_hi": [hg["z_min"] + (b + 1) * width for b in range(hg["bins"])],
                "count": counts[s].tolist(),
                "samples": [[_text(tokens[t]) for t in samples[s].get(b, [])] for b in range(hg["bins"])],
                "tracked": [[_text(tokens[P["tracked"][j]]) for j in range(len(tb)) if tb[j] == b] for b in range(hg["bins"])],
            },
            index=pd.RangeIndex(hg["bins"], name="bin"),
        )
        df.attrs.update({"what": "histogram", "prompt": prompt, "pos": P["pos"], "stage": self.stage_names[s]})
        return df

    def stats(self, prompt: int = 0, pos: int | None = None):
        """Per stage (index = stage names) the vocabulary scores' ``mean``, ``std``, ``lse`` (log-sum-exp), the lens
        distribution's ``entropy`` and ``kl`` = KL(final ‖ stage), in nats."""
        pd = _pandas()
        P = self._position(prompt, pos)
        df = pd.DataFrame({c: list(P[c]) for c in STAT_COLUMNS}, index=pd.Index(self.stage_names, name="stage"))
        df.attrs.update({"what": "stats", "prompt": prompt, "pos": P["pos"]})
        return df


def _as_export(run_or_doc) -> Export:
    if isinstance(run_or_doc, Export):
        return run_or_doc
    if isinstance(run_or_doc, dict):
        return Export(run_or_doc)
    if isinstance(run_or_doc, (str, Path)):
        return Export.load(run_or_doc)
    raise InputError(
        f"lenskit.show wants a run folder, an export.json path, an export document (dict) or an Export, "
        f"not {type(run_or_doc).__name__}"
    )


def viewer_iframe(doc: dict, height: int | None = None, name: str | None = None) -> str:
    """The single-file viewer for ``doc`` in a sandboxed ``<iframe srcdoc>`` as wide as its container: ``height``
    in px, or ``None`` to follow the viewer's height (with a small script beside the frame)."""
    from .report import build_html

    if height is not None:
        px = _index(height)
        if px is None or not MIN_HEIGHT <= px <= MAX_HEIGHT:
            raise InputError(f"height {_shown(height)}: a whole number of pixels from {MIN_HEIGHT} to {MAX_HEIGHT}")
        height = px
    if not isinstance(doc, dict):
        raise InputError(f"viewer_iframe wants an export document (dict), not {type(doc).__name__}")
    if name is not None and not isinstance(name, str):
        raise InputError(f"name {_shown(name)}: a string or None")
    page = build_html(doc, run_name=name)
    # In a single-quoted attribute only & and ' need escaping (the page's JSON is full of double quotes, few of these).
    srcdoc = page.replace("&", "&amp;").replace("'", "&#39;")
    frame_id = "lenskit-" + uuid.uuid4().hex[:16]
    title = html.escape(f"lenskit viewer: {doc.get('model', {}).get('id', '')}", quote=True)
    out = (
        f'<iframe id="{frame_id}" class="lenskit-viewer" title="{title}" sandbox="{SANDBOX}" referrerpolicy="no-referrer" '
        f'style="display:block;width:100%;height:{height or DEFAULT_HEIGHT}px;border:0" srcdoc=\'{srcdoc}\'></iframe>'
    )
    if height is None:
        js = _RESIZE_JS % (json.dumps(frame_id), json.dumps(HEIGHT_MESSAGE), MAX_AUTO_HEIGHT, MIN_HEIGHT)
        out += f"\n<script>{js}</script>"
    return out


class InlineViewer:
    """What :func:`show` returns outside IPython: an object notebooks display (``_repr_html_``), or ``.html``."""

    def __init__(self, html_text: str):
        self.html = html_text

    def _repr_html_(self) -> str:
        return self.html


def show(run_or_doc, height: int | None = None):
    """Show the full viewer inline in a notebook cell (Jupyter, JupyterLab, VS Code, Colab-style frontends).

    ``run_or_doc``: a run folder, an ``export.json`` path, an export document (dict) or an :class:`Export`.
    ``height``: the frame's height in px; by default it follows the viewer's own height. Inside IPython the viewer
    is displayed now and ``None`` returned; elsewhere an :class:`InlineViewer` (``_repr_html_``, ``.html``) is returned.
    """
    export = _as_export(run_or_doc)
    view = InlineViewer(export.html(height=height))
    try:
        from IPython import get_ipython
        from IPython.display import display
    except ImportError:
        return view
    if get_ipython() is None:
        return view
    display(view)
    return None
