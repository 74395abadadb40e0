"""The built-in ``tuned`` lens: a fitted per-stage affine translator ``h + A_s h + b_s`` before the model's own
final norm and unembedding (Belrose et al. 2023's tuned lens, for all 2L+1 stages), and its folder on disk.

A lens folder holds ``lens.safetensors`` (``translator.weight`` ``[S, D, D]``, ``translator.bias`` ``[S, D]``) and
``lens.json``: the format, the model it was fitted for (``fingerprint`` = the trace's ``model.fingerprint``, id,
stage count, hidden size), which stages are covered, and how it was made (fit options and held-out KL, or the
tuned-lens files it was imported from). ``--lens tuned:LENS_DIR`` refuses a lens made for another model.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from ..errors import InputError
from ..hookspecs import hookimpl
from ..tokens import error_line, is_int, one_line
from .protocol import LensKind, StageLens, Translator

FORMAT = "lenskit.lens/1"
MAX_DIM = 1 << 20  # far past any model's stage count or hidden size: a lens.json saying more is damaged
WEIGHTS_FILE = "lens.safetensors"
CONFIG_FILE = "lens.json"
DESCRIPTION = "tuned lens: a fitted affine translator per stage (h + A_s h + b_s), then the model's final norm and unembedding"


def check_lens_files(folder: Path) -> None:
    """InputError when ``lens.json`` or ``lens.safetensors`` of lens folder ``folder`` is there but is no regular file
    (a FIFO would be waited on for ever, a device read without end); missing files are for the readers to name."""
    import os
    import stat


    for name in (CONFIG_FILE, WEIGHTS_FILE):
        path = Path(folder).expanduser() / name
        try:
            mode = os.stat(path).st_mode  # follows links: a link to a regular file is fine
        except OSError:
            continue
        if not stat.S_ISREG(mode):
            raise InputError(f"{one_line(str(path), 300)} is not a regular file (a FIFO, device or folder): name a lens "
                             "folder made by `lenskit fit-lens`")


def read_config(folder: Path) -> dict:
    """``LENS_DIR/lens.json``, checked for the keys lenskit needs."""
    folder = Path(folder).expanduser()
    path = folder / CONFIG_FILE
    if not folder.is_dir():
        raise InputError(f"lens folder not found: {folder}")
    check_lens_files(folder)
    try:
        cfg = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InputError(f"{folder} is not a lenskit lens folder (no {CONFIG_FILE}; `lenskit fit-lens --import` "
                         "converts a tuned-lens folder)") from None
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as e:
        raise InputError(f"cannot read {path}: {e}") from None
    if not isinstance(cfg, dict) or cfg.get("format") != FORMAT or not isinstance(cfg.get("model"), dict):
        raise InputError(f"{path} is not a {FORMAT} lens config")
    for key in ("fingerprint", "n_stages", "hidden_size"):
        if key not in cfg["model"]:
            raise InputError(f"{path}: model.{key} is missing")
    m = cfg["model"]
    if not isinstance(m["fingerprint"], str):
        raise InputError(f"{path}: model.fingerprint is not a string")
    for key in ("n_stages", "hidden_size"):  # JSON true is no count, nor is "7"
        if not (is_int(m[key]) and 0 < m[key] <= MAX_DIM):
            raise InputError(f"{path}: model.{key} is not a positive integer")
    covered = cfg.get("covered")
    if covered is not None and not (isinstance(covered, list) and len(covered) == m["n_stages"]
                                    and all(isinstance(c, bool) for c in covered)):
        raise InputError(f"{path}: covered is not a list of {m['n_stages']} true/false values (one per stage)")
    return cfg


def check_model(cfg: dict, folder: Path, model: dict, n_stages: int) -> None:
    """Refuse a lens fitted for another model (fingerprint of the model's head, stage count)."""
    mine = cfg["model"]
    if mine["fingerprint"] != model.get("fingerprint"):
        raise InputError(f"the lens in {folder} was fitted for {mine.get('id', 'another model')} (fingerprint "
                         f"{mine['fingerprint']}), not this model ({model.get('id')}, {model.get('fingerprint')})")
    if n_stages and mine["n_stages"] != n_stages:
        raise InputError(f"the lens in {folder} has {mine['n_stages']} stages; the trace has {n_stages}")


def load_translator(folder: Path, cfg: dict) -> Translator:
    """The translator tensors of a lens folder, shapes checked against its config."""
    from safetensors import SafetensorError, safe_open

    path = Path(folder).expanduser() / WEIGHTS_FILE
    S, D = cfg["model"]["n_stages"], cfg["model"]["hidden_size"]
    try:
        with safe_open(str(path), framework="pt") as f:
            w, b = f.get_tensor("translator.weight"), f.get_tensor("translator.bias")
    except (OSError, SafetensorError, KeyError) as e:
        raise InputError(f"cannot read {path}: {error_line(e)}") from None
    if tuple(w.shape) != (S, D, D) or tuple(b.shape) != (S, D):
        raise InputError(f"{path}: translator shapes {tuple(w.shape)}, {tuple(b.shape)} do not match "
                         f"{S} stages x hidden size {D}")
    if not (torch.isfinite(w).all() and torch.isfinite(b).all()):
        raise InputError(f"{path}: the translator holds NaN or infinite values")
    covered = cfg.get("covered") or [True] * S
    return Translator(w.float(), b.float(), [bool(c) for c in covered])


def save_lens(folder: Path, translator: Translator, model: dict, stages: list, info: dict) -> None:
    """Write ``lens.safetensors`` and ``lens.json`` into ``folder`` (created if missing), as one change.

    Both are written in full to temporary files beside their targets first (a full disk or an error leaves the old
    lens as it was); then the old ``lens.json`` goes, the weights are renamed into place, and the new ``lens.json``
    last. An interrupt in between leaves a folder without ``lens.json`` -- refused as "not a lenskit lens folder" --
    never new weights under the old config or the other way round. (Renaming a whole temporary folder into place
    would be one step, but a lens folder may hold other files: ``fit-lens``'s checkpoint, the user's own.)"""
    from safetensors.torch import save_file

    from ..errors import OutputError
    from ..files import atomic_write_all

    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise OutputError(f"cannot write to {folder}: {e.strerror or e}") from None
    tensors = {"translator.weight": translator.weight.detach().float().cpu().contiguous(),
               "translator.bias": translator.bias.detach().float().cpu().contiguous()}
    cfg = {
        "format": FORMAT,
        "kind": "tuned",
        "model": dict(model, n_stages=translator.n_stages, hidden_size=translator.hidden_size),
        "stages": [s["name"] for s in stages],
        "covered": [bool(c) for c in translator.covered],
        "translator_fingerprint": translator.fingerprint(),
        **info,
    }
    text = json.dumps(cfg, indent=1) + "\n"
    atomic_write_all([(folder / WEIGHTS_FILE, lambda tmp: save_file(tensors, tmp, metadata={"format": FORMAT})),
                      (folder / CONFIG_FILE, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))],
                     before_renames=lambda: (folder / CONFIG_FILE).unlink(missing_ok=True),  # no lens until the last
                     what=f"the lens into {folder}")


def open_tuned(arg: str | None, model: dict, stages: list) -> StageLens:
    folder = Path(arg).expanduser()
    cfg = read_config(folder)
    check_model(cfg, folder, model, len(stages))
    translator = load_translator(folder, cfg)
    extra = {"imported_from": cfg["imported_from"]} if cfg.get("imported_from") else {}
    return StageLens(kind="tuned", description=DESCRIPTION, model_fingerprint=model["fingerprint"],
                     translator=translator, source=str(folder), extra=extra)


TUNED = LensKind(name="tuned", description=DESCRIPTION, open=open_tuned, takes_arg=True)


@hookimpl
def register_lenses(register):
    register(TUNED)
