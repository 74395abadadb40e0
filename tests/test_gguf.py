"""Damaged and hostile GGUF files, and lenskit's cache of their dequantized copies: each failure is one line, and no
failure leaves a cache entry that a later run would trust (or trip over)."""

import os
import struct
import time

import pytest
from conftest import assert_clean_error
from gguf_fixture import write_tiny_gguf
from typer.testing import CliRunner

from lenskit import gguf_cache as models
from lenskit.cli import app
from lenskit.errors import ModelError, OutputError


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    """Every test here has its own cache: the shared one of the default model is never touched."""
    monkeypatch.setenv("LENSKIT_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


@pytest.fixture
def tiny_gguf(tmp_path):
    return write_tiny_gguf(tmp_path / "tiny.gguf")


def entries(cache):
    """Everything in the cache's GGUF folder (entries and temp folders alike)."""
    folder = cache / "gguf"
    return sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []


HEADER = b"GGUF" + struct.pack("<I", 3)


@pytest.mark.parametrize("data, expected", [
    (b"", "is empty"),
    (b"PK\x03\x04" + bytes(100), "is not a GGUF file"),
    (b"GGUF", "is truncated"),
    (HEADER + bytes(4), "is truncated"),
    (b"GGUF" + struct.pack("<IQQ", 99, 1, 1) + bytes(100), "GGUF version 99"),
    (HEADER + struct.pack("<QQ", 10 ** 15, 16) + bytes(1000), "claims 1000000000000000 tensors"),
    (HEADER + struct.pack("<QQ", 8, 10 ** 15) + bytes(1000), "1000000000000000 metadata entries"),
])
def test_hostile_header_refused_at_once(tmp_path, private_cache, data, expected):
    """Told apart from a GGUF in microseconds, before transformers starts (seconds) or the reader walks garbage."""
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(data)
    with pytest.raises(ModelError, match=expected) as e:
        models.ensure_gguf_cached(bad)
    assert "\n" not in str(e.value)
    assert entries(private_cache) == []


def test_hostile_header_via_cli(tmp_path):
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(HEADER + struct.pack("<QQ", 10 ** 15, 10 ** 15))
    result = CliRunner().invoke(app, ["trace", "hi", "-m", str(bad), "-o", str(tmp_path / "r")])
    assert_clean_error(result, "is damaged or truncated", tmp_path / "r")


def test_truncated_gguf_leaves_no_entry(tiny_gguf, tmp_path, private_cache):
    """Cut inside the metadata, the tensor descriptions or the tensor data: one line naming a damaged file, no entry;
    the whole file then dequantizes as usual."""
    data = tiny_gguf.read_bytes()
    for cut in (40, 300, len(data) // 2, len(data) - 8):
        bad = tmp_path / f"cut{cut}.gguf"
        bad.write_bytes(data[:cut])
        with pytest.raises(ModelError, match="damaged or truncated") as e:
            models.ensure_gguf_cached(bad)
        assert "\n" not in str(e.value)
        assert entries(private_cache) == []
    folder = models.ensure_gguf_cached(tiny_gguf)
    assert entries(private_cache) == [folder.name]


def test_missing_metadata_is_named(tmp_path):
    bad = tmp_path / "bad.gguf"
    write_tiny_gguf(bad)
    data = bad.read_bytes().replace(b"tokenizer.ggml.scores", b"tokenizer.ggml.scorez")
    bad.write_bytes(data)
    with pytest.raises(ModelError, match="its metadata lacks 'scores'"):
        models.ensure_gguf_cached(bad)


def test_failed_save_leaves_nothing(tiny_gguf, private_cache, monkeypatch):
    """A full disk while saving: one line, no temp folder (4x the GGUF) and no entry; the next run makes it."""
    import safetensors.torch

    def full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(safetensors.torch, "save_model", full)
    with pytest.raises(OutputError, match="No space left on device"):
        models.ensure_gguf_cached(tiny_gguf)
    assert entries(private_cache) == []
    monkeypatch.undo()
    monkeypatch.setenv("LENSKIT_CACHE", str(private_cache))
    assert models.ensure_gguf_cached(tiny_gguf).name in entries(private_cache)


def test_incomplete_entry_is_remade(tiny_gguf, private_cache):
    """An entry short of its weights (removed by hand, copied in part) is made again, not trusted nor in the way."""
    folder = models.ensure_gguf_cached(tiny_gguf)
    (folder / "model.safetensors").unlink()
    assert models.ensure_gguf_cached(tiny_gguf) == folder
    assert (folder / "model.safetensors").is_file() and entries(private_cache) == [folder.name]


def test_entry_made_meanwhile_wins(tmp_path):
    """Two processes dequantizing one file: the second rename finds a complete entry and keeps it."""
    target, tmp = tmp_path / "entry", tmp_path / ".tmp-x"
    for folder, text in ((target, "first"), (tmp, "second")):
        folder.mkdir()
        for name in models.GGUF_CACHE_FILES:
            (folder / name).write_text(text)
    models._install_gguf_entry(tmp, target)
    assert (target / "config.json").read_text() == "first"


def test_stale_temp_folders_swept(tiny_gguf, private_cache):
    """A killed run's temp folder goes on the next dequantization; a fresh one (a live run's) stays."""
    from lenskit.files import STALE_SECONDS

    (private_cache / "gguf" / ".tmp-k2j4h5g6").mkdir(parents=True)  # tempfile's names: 8 random characters
    (private_cache / "gguf" / ".tmp-a1b2c3d4").mkdir()
    (private_cache / "gguf" / ".tmp-notes").mkdir()  # not a name lenskit makes: kept however old
    day_ago = time.time() - STALE_SECONDS - 60
    for name in (".tmp-k2j4h5g6", ".tmp-notes"):
        os.utime(private_cache / "gguf" / name, (day_ago, day_ago))
    folder = models.ensure_gguf_cached(tiny_gguf)
    assert entries(private_cache) == sorted([".tmp-a1b2c3d4", ".tmp-notes", folder.name])


def test_gguf_name_with_line_break(tmp_path, private_cache):
    """Refused before dequantizing (a trace cannot record it: it failed after the whole trace); the cache stays empty."""
    odd = write_tiny_gguf(tmp_path / "new\nline.gguf")
    result = CliRunner().invoke(app, ["trace", "hi", "-m", str(odd), "-o", str(tmp_path / "r")])
    assert_clean_error(result, "line break", tmp_path / "r")
    assert entries(private_cache) == []


def test_cache_folder_name_is_one_short_line(tmp_path):
    odd = tmp_path / ("x\n" * 60 + "y" * 120 + ".gguf")  # 245 bytes: a file name holds 255
    odd.write_bytes(b"GGUF")
    name = models.gguf_cache_folder(odd).name
    assert "\n" not in name and len(name) <= 100 + 17


def test_unwritable_cache_refused_before_dequantizing(tiny_gguf, tmp_path, monkeypatch):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    monkeypatch.setenv("LENSKIT_CACHE", str(blocker / "cache"))
    with pytest.raises(ModelError, match="cannot write lenskit's cache folder"):
        models.ensure_gguf_cached(tiny_gguf)


def test_files_differing_only_in_the_middle_get_their_own_entries(tmp_path):
    """Two same-named GGUF files of one size whose first and last MiB agree (the default model's tensor table lies
    beyond the first MiB) must not share a cache entry: the key includes the modification time and pieces of the
    middle, so another quantization of one model (different bytes throughout) gets its own even at the same time."""
    a, b = tmp_path / "a" / "m.gguf", tmp_path / "b" / "m.gguf"
    for p, middle in ((a, b"\0"), (b, b"\1")):
        p.parent.mkdir()
        p.write_bytes(b"GGUF" + b"x" * (3 << 20) + middle + b"y" * (3 << 20))
    os.utime(b, ns=(os.stat(a).st_mtime_ns + 10**9,) * 2)
    assert models.gguf_cache_folder(a) != models.gguf_cache_folder(b)
    os.utime(b, ns=(os.stat(a).st_mtime_ns,) * 2)  # same name, size, ends and time, one byte apart: one entry (the
    assert models.gguf_cache_folder(a) == models.gguf_cache_folder(b)  # key's limit: a byte between its pieces)
    ends = b"x" * (1 << 20)
    b.write_bytes(ends + bytes(range(256)) * (16 << 12) + ends)  # other tensor data throughout, same size
    a.write_bytes(ends + bytes(range(255, -1, -1)) * (16 << 12) + ends)
    os.utime(b, ns=(os.stat(a).st_mtime_ns,) * 2)
    assert os.stat(a).st_size == os.stat(b).st_size
    assert models.gguf_cache_folder(a) != models.gguf_cache_folder(b)


def test_an_entry_of_a_changed_file_is_replaced_not_kept(tiny_gguf, private_cache, tmp_path):
    """A GGUF file that changed (here: a new modification time) gets a new entry, and its old one -- never usable
    again, ~4x the file's size -- is deleted; the entry of another file of the same name stays."""
    (tmp_path / "sub").mkdir()
    other = write_tiny_gguf(tmp_path / "sub" / "tiny.gguf")
    old, kept = models.ensure_gguf_cached(tiny_gguf), models.ensure_gguf_cached(other)
    os.utime(tiny_gguf, ns=(os.stat(tiny_gguf).st_mtime_ns + 10**9,) * 2)
    new = models.ensure_gguf_cached(tiny_gguf)
    assert new != old and not old.exists() and new.exists() and kept.exists()
    assert entries(private_cache) == sorted([new.name, kept.name])
