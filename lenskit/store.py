"""The trace file ``RUN_DIR/trace.safetensors``: a public contract.

* tensor ``prompt.{i}.stages``: ``[S, T, D]`` residual stream, S = 2L+1, in the model's dtype, one per prompt;
* metadata key ``lenskit``: a JSON document (see :func:`build_metadata`) with ``format``, ``lenskit_version``,
  ``model``, ``stages`` and ``prompts``.

Writes go to a temporary name in the same folder and are renamed into place, so a failed run leaves no partial file.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from . import __version__
from .errors import OutputError, TraceFileError

TRACE_FORMAT = 1
TRACE_FILE = "trace.safetensors"
META_KEY = "lenskit"


def default_mode(mode: int = 0o666) -> int:
    """``mode`` less the process umask (temp files are created private; finished ones get the usual permissions)."""
    umask = os.umask(0)
    os.umask(umask)
    return mode & ~umask


def atomic_write(path: Path, write) -> None:
    """Call ``write(tmp_path)`` then rename ``tmp_path`` to ``path``; remove the temp file on any failure."""
    path = Path(path)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as e:
        raise OutputError(f"cannot write to {path.parent}: {e.strerror or e}") from None
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, default_mode())
        os.replace(tmp, path)
    except OSError as e:
        raise OutputError(f"cannot write {path}: {e.strerror or e}") from None
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def write_trace(path: Path, stages: list[torch.Tensor], meta: dict) -> None:
    """Write one ``[S, T, D]`` tensor per prompt and the metadata document, atomically."""
    tensors = {f"prompt.{i}.stages": s.contiguous() for i, s in enumerate(stages)}
    atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata={META_KEY: json.dumps(meta, ensure_ascii=False)}))


@dataclass
class Trace:
    """A trace file opened for reading: metadata now, stage tensors on demand."""

    path: Path
    meta: dict

    @property
    def n_prompts(self) -> int:
        return len(self.meta["prompts"])

    def stages(self, i: int) -> torch.Tensor:
        """Stage tensor of prompt ``i``: ``[S, T, D]``."""
        try:
            with safe_open(str(self.path), framework="pt") as f:
                return f.get_tensor(f"prompt.{i}.stages")
        except (SafetensorError, OSError, RuntimeError) as e:
            raise TraceFileError(f"{self.path}: cannot read prompt {i}: {e}") from None


def trace_path(run: Path) -> Path:
    """Accept a run folder or the trace file itself."""
    run = Path(run)
    return run / TRACE_FILE if run.is_dir() else run


def read_trace(run: Path) -> Trace:
    """Open and validate a trace (format version, stage/prompt shapes); raise :class:`TraceFileError` if unusable."""
    path = trace_path(run)
    if not path.is_file():
        raise TraceFileError(f"no trace at {path}: run `lenskit trace ... -o {run}` first")
    try:
        with safe_open(str(path), framework="pt") as f:
            raw = (f.metadata() or {}).get(META_KEY)
            keys = set(f.keys())
            shapes = {k: f.get_slice(k).get_shape() for k in keys}
    except (SafetensorError, OSError, RuntimeError, ValueError) as e:
        raise TraceFileError(f"{path} is not a readable safetensors file ({str(e).splitlines()[0] if str(e) else e})") from None
    if raw is None:
        raise TraceFileError(f"{path} has no lenskit metadata: it was not written by `lenskit trace`")
    try:
        meta = json.loads(raw)
    except ValueError:
        raise TraceFileError(f"{path}: its lenskit metadata is not valid JSON") from None
    fmt = meta.get("format")
    if fmt != TRACE_FORMAT:
        raise TraceFileError(f"{path} is trace format {fmt!r}; this lenskit reads format {TRACE_FORMAT}: re-run `lenskit trace`")
    n_stages = len(meta.get("stages", []))
    for i, p in enumerate(meta.get("prompts", [])):
        key = f"prompt.{i}.stages"
        shape = shapes.get(key)
        if shape is None or len(shape) != 3 or shape[0] != n_stages or shape[1] != len(p["token_ids"]):
            raise TraceFileError(f"{path}: tensor {key} is missing or has the wrong shape {shape}")
    try:  # a truncated file fails here rather than mid-export
        size = path.stat().st_size
        with open(path, "rb") as fh:
            header = int.from_bytes(fh.read(8), "little")
        if size < 8 + header:
            raise TraceFileError(f"{path} is truncated")
    except OSError as e:
        raise TraceFileError(f"cannot read {path}: {e}") from None
    return Trace(path=path, meta=meta)


def build_metadata(model_info: dict, stages: list[dict], prompts: list[dict]) -> dict:
    """The ``lenskit`` metadata document of a trace file."""
    return {
        "format": TRACE_FORMAT,
        "lenskit_version": __version__,
        "model": model_info,
        "stages": stages,
        "prompts": prompts,
    }
