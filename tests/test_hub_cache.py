"""A hub id goes through the ordinary from_pretrained path: from the local hub cache, pinned revision recorded, and
the hub never contacted unless the user asks (--allow-download, or HF_HUB_OFFLINE=0 set explicitly)."""

import json
import os
import subprocess
import sys

from conftest import llama_config, save_model

COMMIT = "0123456789abcdef0123456789abcdef01234567"


def test_hub_id_from_the_offline_cache(tmp_path):
    cache = tmp_path / "hub"
    snap = cache / "models--tiny-org--tiny-llama" / "snapshots" / COMMIT
    save_model(snap, llama_config())
    (cache / "models--tiny-org--tiny-llama" / "refs").mkdir(parents=True)
    (cache / "models--tiny-org--tiny-llama" / "refs" / "main").write_text(COMMIT)
    env = dict(os.environ, HF_HUB_CACHE=str(cache), LENSKIT_LOAD_PLUGINS="0")
    env.pop("HF_HUB_OFFLINE", None)  # not offline: a hub that is contacted at all fails the test
    env["HF_ENDPOINT"] = "http://127.0.0.1:9"  # the discard port: nothing listens
    run = tmp_path / "run"
    cli = [sys.executable, "-m", "lenskit.cli"]
    res = subprocess.run([*cli, "trace", "the cat sat", "-m", "tiny-org/tiny-llama", "-o", str(run), "-q"],
                         env=env, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    meta = json.loads(subprocess.run(
        [sys.executable, "-c", f"from lenskit.store import read_trace; import json; print(json.dumps(read_trace({str(run)!r}).meta))"],
        env=env, capture_output=True, text=True, check=True).stdout)
    assert meta["model"]["id"] == "tiny-org/tiny-llama"
    assert meta["model"]["source"]["path"].endswith(COMMIT) and meta["model"]["source"]["commit"] == COMMIT
    # export from the saved trace finds the weights in the cache, offline
    res = subprocess.run([*cli, "export", str(run), "-o", str(tmp_path / "e.json"), "-q"], env=env, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    # an id that is not in the cache: one line, no traceback
    for cmd in (["trace", "hi"], ["survey", "--demo"], ["adapters", "--check"]):
        res = subprocess.run([*cli, *cmd, "-m", "tiny-org/absent", "-o", str(tmp_path / "r2")] if cmd[0] != "adapters"
                             else [*cli, *cmd, "tiny-org/absent"], env=env, capture_output=True, text=True)
        assert res.returncode == 1 and "Traceback" not in res.stderr, res.stderr
        assert res.stderr.strip().splitlines()[-1].startswith(
            "lenskit: error: model 'tiny-org/absent' is not on this machine"), res.stderr
        assert "Retrying" not in res.stderr and not (tmp_path / "r2").exists()


def test_allow_download_lets_from_pretrained_reach_the_hub(tmp_path, monkeypatch):
    """--allow-download (or HF_HUB_OFFLINE=0) hands a missing hub id to from_pretrained without local_files_only."""
    import transformers
    from typer.testing import CliRunner

    from lenskit.cli import app

    seen = []

    def fake(name, **kw):
        seen.append((name, kw.get("local_files_only", False)))
        raise OSError("no network in tests")

    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", fake)
    for extra, env in ((["--allow-download"], {}), ([], {"HF_HUB_OFFLINE": "0"})):
        res = CliRunner().invoke(app, ["trace", "hi", "-m", "tiny-org/absent", "-o", str(tmp_path / "r"), *extra],
                                 env=env)
        assert res.exit_code == 1 and "cannot load model 'tiny-org/absent'" in res.stderr
    assert seen == [("tiny-org/absent", False)] * 2
