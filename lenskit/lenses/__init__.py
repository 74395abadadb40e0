"""Lenses as plugins: the registry of lens kinds (``register_lenses`` hook) and ``--lens NAME[:ARG]`` specs.

Built-ins (``logit``, ``tuned``) register through the same hook as third-party lenses (:mod:`lenskit.plugins`).
See :mod:`lenskit.lenses.protocol` for what a lens is to the engine.
"""

from __future__ import annotations

import re

from ..errors import InputError
from .protocol import LensKind, StageLens, Translator

__all__ = ["LensKind", "StageLens", "Translator", "DEFAULT_LENS", "registry", "parse_lens_spec", "open_lenses",
           "logit_lens"]

DEFAULT_LENS = "logit"
SPEC = re.compile(r"([A-Za-z][A-Za-z0-9_.-]*)(?::(.*))?", re.ASCII | re.DOTALL)
NAME = re.compile(r"[A-Za-z][A-Za-z0-9_.-]{0,63}", re.ASCII)  # a lens kind's name: what ``--lens NAME`` can say


def registry() -> dict[str, tuple[LensKind, str]]:
    """``{name: (kind, provider)}`` of every registered lens kind."""
    from ..plugins import collect_lenses

    return collect_lenses()


def kind_problem(kind: LensKind) -> str | None:
    """What is wrong with a lens kind a plugin registers (a name ``--lens`` cannot say, a description that is not
    one printable line, an ``open`` that is not callable), or None."""
    if not isinstance(kind.name, str) or not NAME.fullmatch(kind.name):
        return f"a lens's name must be a letter, then letters, digits and _ . - (at most 64), not {ascii(kind.name)[:80]}"
    if not (isinstance(kind.description, str) and len(kind.description) <= 500 and kind.description.isprintable()):
        return f"lens '{kind.name}': its description must be printable text of at most 500 characters"
    if not callable(kind.open) or not isinstance(kind.takes_arg, bool):
        return f"lens '{kind.name}': open must be callable and takes_arg True or False"
    return None


def parse_lens_spec(spec: str) -> tuple[LensKind, str | None]:
    """``"logit"`` / ``"tuned:PATH"`` -> (kind, argument); unknown kinds and missing or extra arguments refused."""
    from ..tokens import one_line

    m = SPEC.fullmatch(spec.strip())
    kinds = registry()
    if not m or m.group(1) not in kinds:
        raise InputError(f"unknown lens '{one_line(spec, 200)}': use one of {', '.join(sorted(kinds))} (e.g. logit, "
                         "tuned:LENS_DIR)")
    kind, arg = kinds[m.group(1)][0], m.group(2)
    if kind.takes_arg and not (arg or "").strip():
        raise InputError(f"--lens {kind.name} needs an argument: {kind.name}:PATH")
    if not kind.takes_arg and arg is not None:
        raise InputError(f"--lens {kind.name} takes no argument (got '{one_line(arg, 200)}')")
    return kind, arg


def open_lenses(specs: list[str] | None, model: dict, stages: list) -> list[StageLens]:
    """Open each ``--lens`` spec against a trace's ``model`` section and stage table (no model weights needed)."""
    import os

    specs = list(specs or [DEFAULT_LENS])
    seen: dict = {}  # (kind, resolved source) -> the spec that opened it
    out = []
    for spec in specs:
        kind, arg = parse_lens_spec(spec)
        lens = _open(kind, arg, model, stages)
        key = (lens.kind, os.path.realpath(lens.source) if lens.source else None)
        if key in seen:  # the same lens however it is spelled ("logit", " logit", "tuned:d", "tuned:d/")
            raise InputError(f"--lens {spec.strip()} is given twice" + (f" (as --lens {seen[key]})"
                             if seen[key] != spec.strip() else ""))
        seen[key] = spec.strip()
        out.append(lens)
    return out


def _open(kind: LensKind, arg: str | None, model: dict, stages: list) -> StageLens:
    """``kind.open(...)``; a plugin's failure or wrong result is a one-line error naming the package that provides it."""
    from ..errors import LenskitError

    provider = registry().get(kind.name, (None, "?"))[1]
    try:
        lens = kind.open(arg, model, stages)
    except LenskitError:
        raise
    except Exception as e:  # noqa: BLE001 -- whatever a plugin's factory raises
        raise LenskitError(f"lens '{kind.name}' ({provider}) failed to open: {type(e).__name__}: {e}") from None
    if not isinstance(lens, StageLens) or not isinstance(lens.kind, str) or not (
            lens.source is None or isinstance(lens.source, str)):
        raise LenskitError(f"lens '{kind.name}' ({provider}) is broken: open() returned {type(lens).__name__}, "
                           "not a StageLens")
    return lens


def logit_lens(head) -> StageLens:
    """The logit lens bound to ``head`` (a :class:`lenskit.lens.Lens`)."""
    from .logit import LOGIT

    return LOGIT.open(None, {"fingerprint": head.fingerprint()}, []).bind(head)
