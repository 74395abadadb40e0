"""Option types shared by several commands, declared once and checked by Typer before any command body runs.

Parsing is strict: ASCII digits only (``int("٣")`` is 3 in Python, a token id nobody meant), finite positive sizes
with a unit, devices of the forms lenskit supports. A bad value is one ``lenskit: error: Invalid value ...`` line
(exit 1, as every lenskit error).
"""

from __future__ import annotations

import math
import re
import sys

import typer

from ..errors import InputError
from ..schema import PRECISIONS  # noqa: F401  (re-exported: the one list of --precision values)

DEVICES = re.compile(r"auto|cpu|mps|cuda(:[0-9]{1,3})?", re.ASCII)
SIZE = re.compile(r"([0-9]+(?:\.[0-9]+)?)\s*([KMGT]?)(?:I?B)?", re.ASCII | re.IGNORECASE)
SIZE_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
DTYPES = ("auto", "float32", "bfloat16", "float16")
MODEL_HELP = "Hub id, local folder or .gguf file. Default: the embedded SmolLM2-135M-Instruct."
DOWNLOAD_HELP = ("Let the hub download the model when it is not on this machine (default: never: a hub id is read from "
                 "the local Hugging Face cache only; or set HF_HUB_OFFLINE=0).")


def device(value: str) -> str:
    if not DEVICES.fullmatch(value):
        raise typer.BadParameter(f"unknown device '{value}': use auto, cpu, cuda, cuda:N or mps")
    return value


def choice(kind: str, *allowed: str):
    """A callback accepting exactly one of ``allowed`` (a Typer enum without an Enum class); ``kind`` names it."""

    def check(value: str) -> str:
        if value not in allowed:
            raise typer.BadParameter(f"unknown {kind} '{value}': use one of {', '.join(allowed)}")
        return value

    return check


def require_stream(name: str, what: str) -> None:
    """InputError when the standard stream ``name`` (``stdin`` or ``stdout``) that ``what`` reads or writes was closed
    by the shell (``<&-``, ``>&-``: Python has None there), before any work."""
    if getattr(sys, name) is None:
        raise InputError(f"{what} uses {name}, but {name} is closed; "
                         f"{'give a file instead' if name == 'stdin' else 'name a file with -o'}")


def size(value: str | None) -> int | None:
    """``"256M"``, ``"2G"``, ``"1.5GiB"``, ``"1000000"`` -> bytes (a positive, finite number with an optional unit)."""
    if value is None:
        return None
    m = SIZE.fullmatch(value.strip())
    if not m:
        raise typer.BadParameter(f"'{value}': use a size such as 256M, 2G or 1.5GiB")
    n = float(m.group(1)) * SIZE_UNITS[m.group(2).upper()]
    if not math.isfinite(n) or n < 1 or n > 1 << 50:
        raise typer.BadParameter(f"'{value}': give a size between 1 byte and 1P")
    return int(n)
