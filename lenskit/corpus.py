"""Reading a corpus: documents streamed, in a fixed order, from text files, stdin, JSONL, Parquet and ``datasets``
folders, each with a global index; a document that cannot be used is yielded with its problem, never raised.

* a text file (any other suffix) is one document, decoded as strict UTF-8;
* ``.jsonl`` / ``.ndjson``: one document per non-blank line, its ``text`` field;
* ``.parquet``: one document per row of the ``text`` column, read in record batches (pyarrow);
* a folder written by ``datasets``' ``save_to_disk`` (it holds ``state.json``): ``datasets.load_from_disk``;
* any other folder: its regular files, recursively, in sorted path order (dot files and dot folders left out);
* ``-``: stdin, as JSONL when it starts with ``{``, else one document.

Problems a document can have (counted by the survey): ``empty`` (no text but whitespace), ``unreadable`` (not
UTF-8, bad JSON, no string ``text`` field), ``too_long`` (more characters than the survey accepts).

Nothing is read without a bound: a text file or stdin document past ``max_chars`` characters, or a JSONL line past
:func:`line_limit` bytes, is ``too_long`` once that many bytes have been seen (a 500 MB line or an endless stream never
fills memory). Sources must be regular files (a FIFO would be waited on for ever and cannot be read twice, a device
like ``/dev/zero`` never ends): pipes go through ``-``.
"""

from __future__ import annotations

import io
import json
import os
import stat
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from .errors import InputError
from .tokens import is_utf8, one_line

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


def _kind(p: Path, s: str) -> int:
    """The mode of source ``p`` (links followed); InputError when it is missing, unreachable or no regular file or
    folder (a FIFO, socket or device: one would hang or never end, and a survey reads its sources twice)."""
    try:
        mode = os.stat(p).st_mode
    except (FileNotFoundError, NotADirectoryError):
        raise InputError(f"corpus not found: {one_line(s, 300)}") from None
    except (OSError, ValueError) as e:  # too long a name, a loop of links, no permission, a NUL byte
        raise InputError(f"cannot read the corpus {one_line(s, 300)}: {getattr(e, 'strerror', None) or e}") from None
    if not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
        raise InputError(f"corpus {one_line(s, 300)} is not a regular file (a FIFO, socket or device); save it to a "
                         "file, or pipe it to '-'")
    return mode


def _hidden(rel: Path) -> bool:
    """A dot file, or a file in a dot folder (``.git``, a survey's ``.RUN.survey-partial`` checkpoints when -o is
    inside the corpus: surveyed, they would change the corpus a ``--resume`` must find unchanged)."""
    return any(part.startswith(".") for part in rel.parts)


def expand_sources(sources: list[str]) -> list[str]:
    """Check every source is a regular file or folder and expand plain folders into their regular files (sorted);
    ``-`` stays as is."""
    out: list[str] = []
    for s in sources:
        if s in ("-", DEMO_SOURCE):
            out.append(s)
            continue
        p = Path(s).expanduser()
        if stat.S_ISDIR(_kind(p, s)) and not _is_dataset_folder(p):
            files = sorted(str(f) for f in p.rglob("*") if f.is_file() and not _hidden(f.relative_to(p)))
            if not files:
                raise InputError(f"corpus folder {one_line(s, 300)} holds no regular files (dot files and dot "
                                 "folders are left out)")
            out.extend(files)
        else:
            out.append(str(p))
    if out.count("-") > 1:
        raise InputError("stdin ('-') can be read only once")
    if "-" in out and _stdin_is_terminal():  # it would wait, silently, for text typed after the model loads
        raise InputError("'-' reads the corpus from stdin, which is a terminal here: pipe text or JSONL into it "
                         "(e.g. cat docs.jsonl | lenskit ... -), or name files")
    return out


def _stdin_is_terminal() -> bool:
    try:
        return sys.stdin is not None and sys.stdin.isatty()
    except (AttributeError, ValueError, OSError):  # a replaced or closed stdin
        return False


def _checked(index: int, source: str, text, max_chars: int) -> Doc:
    if not isinstance(text, str) or not is_utf8(text):
        return Doc(index, source, None, "unreadable")
    if not text.strip():
        return Doc(index, source, None, "empty")
    if len(text) > max_chars:
        return Doc(index, source, None, "too_long")
    return Doc(index, source, text)


TOO_LONG = b"\0too long\0"  # what :func:`bounded_lines` yields for a line past its limit (never a real line)
CHUNK = 1 << 20
BOM = b"\xef\xbb\xbf"  # UTF-8's byte order mark
MAX_CHARS = 1 << 40  # far past any document a tokenizer takes: bounds stay plain machine integers


def line_limit(max_chars: int) -> int:
    """Bytes a JSONL line may take: a ``text`` of ``max_chars`` characters written as ``\\uXXXX`` escapes (6 bytes
    each), with 1 MiB for the other fields. A longer line's text cannot be within ``max_chars``."""
    return 6 * min(max_chars, MAX_CHARS) + CHUNK


def bounded_lines(f, limit: int) -> Iterator[bytes]:
    """The lines of binary file ``f``, each read up to ``limit`` bytes: a longer one is skipped in 1 MiB pieces (never
    held whole) and yielded as :data:`TOO_LONG`."""
    while True:
        line = f.readline(limit + 1)
        if not line:
            return
        if len(line) <= limit or line.endswith(b"\n") and len(line) == limit + 1:
            yield line
            continue
        while line and not line.endswith(b"\n"):  # the rest of the long line
            line = f.readline(CHUNK)
        yield TOO_LONG


def _jsonl_lines(lines, source: str, start: int, max_chars: int) -> Iterator[Doc]:
    i = start
    for n, raw in enumerate(lines, 1):
        if n == 1 and raw is not TOO_LONG:  # a byte order mark (Windows editors write one) would make line 1 bad JSON
            raw = raw.removeprefix(BOM if isinstance(raw, bytes) else BOM.decode("utf-8"))
        if raw is not TOO_LONG and not raw.strip():
            continue
        where = f"{source}:{n}"
        if raw is TOO_LONG:
            yield Doc(i, where, None, "too_long")
            i += 1
            continue
        try:
            obj = json.loads(raw.decode("utf-8") if isinstance(raw, bytes) else raw)
            text = obj.get(TEXT_FIELD) if isinstance(obj, dict) else None
        except (UnicodeDecodeError, ValueError, RecursionError):  # RecursionError: JSON nested thousands deep
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
    batches = f.iter_batches(columns=[TEXT_FIELD], batch_size=256)
    while True:
        try:  # a damaged row group is found only when it is read, after earlier rows were surveyed
            batch = next(batches, None)
            texts = batch.column(0).to_pylist() if batch is not None else []
        except Exception as e:  # noqa: BLE001 (pyarrow raises OSError, ArrowInvalid and others)
            why = " ".join(str(e).split())[:200]
            raise InputError(f"cannot read Parquet file {path} at row {row}: {why}") from None
        if batch is None:
            return
        for text in texts:
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


def _read_upto(f, limit: int) -> bytes:
    """At most ``limit + 1`` bytes of binary file ``f``, read in 1 MiB pieces (``f.read(limit + 1)`` would allocate
    the whole bound up front, even for a short file)."""
    parts, n = [], 0
    while n <= limit:
        piece = f.read(min(CHUNK, limit + 1 - n))
        if not piece:
            break
        parts.append(piece)
        n += len(piece)
    return b"".join(parts)


def _read_document(f, max_chars: int, head: bytes = b"") -> tuple[str | None, str | None]:
    """``(text, problem)`` of one document: ``head`` (bytes already read) then binary file ``f``. At most 4 bytes a
    character are read (UTF-8), so a longer file or an endless stream is ``too_long`` without being held whole."""
    limit = 4 * min(max_chars, MAX_CHARS)
    data = head + _read_upto(f, limit - len(head)) if len(head) <= limit else head
    if len(data) > limit:
        return None, "too_long"
    try:
        return data.decode("utf-8"), None
    except UnicodeDecodeError:
        return None, "unreadable"


def _one_file(path: str, start: int, max_chars: int) -> Iterator[Doc]:
    try:
        with open(path, "rb") as f:
            text, problem = _read_document(f, max_chars)
    except OSError:
        text, problem = None, "unreadable"
    yield _checked(start, path, text, max_chars) if problem is None else Doc(start, path, None, problem)


def _demo(start: int, max_chars: int) -> Iterator[Doc]:
    for k, (key, text) in enumerate(demo_texts()):
        yield _checked(start + k, f"{DEMO_SOURCE}:{key}", text, max_chars)


def _stdin(start: int, max_chars: int) -> Iterator[Doc]:
    """stdin streamed: JSONL line by line when its first non-blank byte is ``{``, else one bounded document."""
    f = sys.stdin.buffer
    head = b""
    while len(head) <= 4 * min(max_chars, MAX_CHARS) and not head.strip():  # leading blanks are bounded too
        piece = f.read1(CHUNK) if hasattr(f, "read1") else f.read(CHUNK)
        if not piece:
            break
        head += piece
    if head.removeprefix(BOM).lstrip()[:1] == b"{":
        lines = bounded_lines(io.BufferedReader(_Chain(head, f), CHUNK), line_limit(max_chars))
        yield from _jsonl_lines(lines, "<stdin>", start, max_chars)
        return
    text, problem = _read_document(f, max_chars, head)
    yield _checked(start, "<stdin>", text, max_chars) if problem is None else Doc(start, "<stdin>", None, problem)


class _Chain(io.RawIOBase):
    """The bytes ``head`` already read, then the rest of binary file ``f``, as one stream (``readline`` included)."""

    def __init__(self, head: bytes, f):
        super().__init__()
        self.head, self.f = head, f

    def readable(self) -> bool:
        return True

    def readinto(self, b) -> int:
        if self.head:
            piece, self.head = self.head[:len(b)], self.head[len(b):]
        else:
            piece = self.f.read1(len(b)) if hasattr(self.f, "read1") else self.f.read(len(b))
        b[:len(piece)] = piece
        return len(piece)


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
        yield from _jsonl_lines(bounded_lines(f, line_limit(max_chars)), path, start, max_chars)


def count_documents(sources: list[str], max_chars: int = 10_000_000) -> int | None:
    """How many documents ``sources`` hold, cheaply (line counts, Parquet metadata); None when stdin is one or a
    file cannot be read (the survey then reports it)."""
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
            try:
                with open(s, "rb") as f:
                    n += sum(1 for line in bounded_lines(f, line_limit(max_chars)) if line.strip())
            except OSError:
                return None
        else:
            n += 1
    return n


DEMO_CHARS = 600  # the demo keeps the start of each topic (~130 tokens): a CPU surveys ~5-10 tokens/s


def demo_texts() -> list[tuple[str, str]]:
    """The demo corpus that ships with Python: ``(topic, first DEMO_CHARS characters)`` of the help topics of
    ``pydoc_data.topics`` (English prose about the language), in key order."""
    from pydoc_data.topics import topics

    return [(k, topics[k][:DEMO_CHARS]) for k in sorted(topics)]
