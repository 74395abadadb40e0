"""Reading a corpus: documents streamed, in a fixed order, from text files, stdin, JSONL, Parquet and ``datasets``
folders, each with a global index; a document that cannot be used is yielded with its problem, never raised.

* a text file (any other suffix) is one document, decoded as strict UTF-8;
* ``.jsonl`` / ``.ndjson``: one document per non-blank line, its ``text`` field;
* ``.parquet``: one document per row of the ``text`` column, read in record batches (pyarrow);
* a folder written by ``datasets``' ``save_to_disk`` (it holds ``state.json``): ``datasets.load_from_disk``;
* any other folder: its supported files, recursively, in sorted path order;
* ``-``: stdin, as JSONL when it starts with ``{``, else one document.

Problems a document can have (counted by the survey): ``empty`` (no text but whitespace), ``unreadable`` (not
UTF-8, bad JSON, no string ``text`` field), ``too_long`` (more characters than the survey accepts).
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from .errors import InputError
from .tokens import is_utf8

JSONL_SUFFIXES = (".jsonl", ".ndjson")
PARQUET_SUFFIXES = (".parquet",)
TEXT_FIELD = "text"
PROBLEMS = ("empty", "unreadable", "too_long")
DEMO_SOURCE = "<pydoc_data.topics>"  # the demo corpus that ships with Python (see :func:`demo_texts`)


@dataclass
class Doc:
    """One document: its index in the whole corpus, where it came from, and its text or what is wrong with it."""

    index: int
    source: str  # "path" or "path:line" / "path:row"
    text: str | None
    problem: str | None = None


def _is_dataset_folder(p: Path) -> bool:
    return p.is_dir() and (p / "state.json").is_file() and (p / "dataset_info.json").is_file()


def expand_sources(sources: list[str]) -> list[str]:
    """Check every source exists and expand plain folders into their files (sorted); ``-`` stays as is."""
    out: list[str] = []
    for s in sources:
        if s in ("-", DEMO_SOURCE):
            out.append(s)
            continue
        p = Path(s).expanduser()
        if not p.exists():
            raise InputError(f"corpus not found: {s}")
        if p.is_dir() and not _is_dataset_folder(p):
            files = sorted(str(f) for f in p.rglob("*") if f.is_file() and not f.name.startswith("."))
            if not files:
                raise InputError(f"corpus folder {s} holds no files")
            out.extend(files)
        else:
            out.append(str(p))
    if out.count("-") > 1:
        raise InputError("stdin ('-') can be read only once")
    return out


def _checked(index: int, source: str, text, max_chars: int) -> Doc:
    if not isinstance(text, str) or not is_utf8(text):
        return Doc(index, source, None, "unreadable")
    if not text.strip():
        return Doc(index, source, None, "empty")
    if len(text) > max_chars:
        return Doc(index, source, None, "too_long")
    return Doc(index, source, text)


def _jsonl_lines(lines, source: str, start: int, max_chars: int) -> Iterator[Doc]:
    i = start
    for n, raw in enumerate(lines, 1):
        if not raw.strip():
            continue
        where = f"{source}:{n}"
        try:
            obj = json.loads(raw.decode("utf-8") if isinstance(raw, bytes) else raw)
            text = obj.get(TEXT_FIELD) if isinstance(obj, dict) else None
        except (UnicodeDecodeError, ValueError):
            text = None
        yield _checked(i, where, text, max_chars)
        i += 1


def _parquet(path: str, start: int, max_chars: int) -> Iterator[Doc]:
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise InputError(f"reading {path} needs pyarrow: pip install 'lenskit[corpus]'") from None
    try:
        f = pq.ParquetFile(path)
    except Exception as e:  # noqa: BLE001 (pyarrow raises several types)
        raise InputError(f"cannot read Parquet file {path}: {' '.join(str(e).split())[:200]}") from None
    if TEXT_FIELD not in f.schema_arrow.names:
        raise InputError(f"Parquet file {path} has no '{TEXT_FIELD}' column (columns: {', '.join(f.schema_arrow.names)})")
    i, row = start, 0
    for batch in f.iter_batches(columns=[TEXT_FIELD], batch_size=256):
        for text in batch.column(0).to_pylist():
            yield _checked(i, f"{path}:{row}", text, max_chars)
            i, row = i + 1, row + 1


def _dataset(path: str, start: int, max_chars: int) -> Iterator[Doc]:
    try:
        import datasets
    except ImportError:
        raise InputError(f"reading the datasets folder {path} needs datasets: pip install 'lenskit[corpus]'") from None
    try:
        ds = datasets.load_from_disk(path)
    except Exception as e:  # noqa: BLE001
        raise InputError(f"cannot load the datasets folder {path}: {' '.join(str(e).split())[:200]}") from None
    if isinstance(ds, datasets.DatasetDict):
        raise InputError(f"{path} is a DatasetDict ({', '.join(ds)}); name one split's folder")
    if TEXT_FIELD not in ds.column_names:
        raise InputError(f"dataset {path} has no '{TEXT_FIELD}' column (columns: {', '.join(ds.column_names)})")
    col = ds.select_columns([TEXT_FIELD])
    for row in range(len(col)):
        yield _checked(start + row, f"{path}:{row}", col[row][TEXT_FIELD], max_chars)


def _one_file(path: str, start: int, max_chars: int) -> Iterator[Doc]:
    try:
        data = Path(path).read_bytes()
        text = data.decode("utf-8")
    except (OSError, UnicodeDecodeError):
        text = None
    yield _checked(start, path, text, max_chars)


def _demo(start: int, max_chars: int) -> Iterator[Doc]:
    for k, (key, text) in enumerate(demo_texts()):
        yield _checked(start + k, f"{DEMO_SOURCE}:{key}", text, max_chars)


def _stdin(start: int, max_chars: int) -> Iterator[Doc]:
    data = sys.stdin.buffer.read()
    if data.lstrip()[:1] == b"{":
        yield from _jsonl_lines(data.splitlines(), "<stdin>", start, max_chars)
        return
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        text = None
    yield _checked(start, "<stdin>", text, max_chars)


def iter_documents(sources: list[str], max_chars: int = 10_000_000) -> Iterator[Doc]:
    """Every document of ``sources`` (as returned by :func:`expand_sources`), in order, indexed from 0."""
    i = 0
    for s in sources:
        if s == "-":
            it = _stdin(i, max_chars)
        elif s == DEMO_SOURCE:
            it = _demo(i, max_chars)
        elif _is_dataset_folder(Path(s)):
            it = _dataset(s, i, max_chars)
        elif s.endswith(PARQUET_SUFFIXES):
            it = _parquet(s, i, max_chars)
        elif s.endswith(JSONL_SUFFIXES):
            it = _jsonl_file(s, i, max_chars)
        else:
            it = _one_file(s, i, max_chars)
        for doc in it:
            yield doc
            i = doc.index + 1


def _jsonl_file(path: str, start: int, max_chars: int) -> Iterator[Doc]:
    try:
        f = open(path, "rb")
    except OSError as e:
        raise InputError(f"cannot read {path}: {e.strerror or e}") from None
    with f:
        yield from _jsonl_lines(f, path, start, max_chars)


def count_documents(sources: list[str]) -> int | None:
    """How many documents ``sources`` hold, cheaply (line counts, Parquet metadata); None when stdin is one."""
    n = 0
    for s in sources:
        if s == "-":
            return None
        if s == DEMO_SOURCE:
            n += len(demo_texts())
        elif _is_dataset_folder(Path(s)):
            try:
                import datasets

                n += len(datasets.load_from_disk(s))
            except Exception:  # noqa: BLE001 (reported when it is read)
                return None
        elif s.endswith(PARQUET_SUFFIXES):
            try:
                import pyarrow.parquet as pq

                n += pq.ParquetFile(s).metadata.num_rows
            except Exception:  # noqa: BLE001
                return None
        elif s.endswith(JSONL_SUFFIXES):
            with open(s, "rb") as f:
                n += sum(1 for line in f if line.strip())
        else:
            n += 1
    return n


DEMO_CHARS = 600  # the demo keeps the start of each topic (~130 tokens): a CPU surveys ~5-10 tokens/s


def demo_texts() -> list[tuple[str, str]]:
    """The demo corpus that ships with Python: ``(topic, first DEMO_CHARS characters)`` of the help topics of
    ``pydoc_data.topics`` (English prose about the language), in key order."""
    from pydoc_data.topics import topics

    return [(k, topics[k][:DEMO_CHARS]) for k in sorted(topics)]
