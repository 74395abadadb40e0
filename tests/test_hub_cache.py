"""A hub id goes through the ordinary from_pretrained path: offline, from the hub cache, pinned revision recorded."""

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
    env = dict(os.environ, HF_HUB_CACHE=str(cache), HF_HUB_OFFLINE="1", LENSKIT_LOAD_PLUGINS="0")
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
    res = subprocess.run([*cli, "trace", "hi", "-m", "tiny-org/absent", "-o", str(tmp_path / "r2")], env=env, capture_output=True, text=True)
    assert res.returncode == 1 and "Traceback" not in res.stderr
    assert res.stderr.strip().splitlines()[-1].startswith("lenskit: error: cannot load model 'tiny-org/absent'")
