"""The plugin API from the outside: an out-of-tree adapter registered on ``lenskit.plugins.pm``, forcing adapters with
``--adapter``, and the one-line error for a model family no adapter serves.
"""

from __future__ import annotations

import dataclasses
import json
import sys

import pytest
import transformers as tf
from safetensors import safe_open
from typer.testing import CliRunner

from families import llama
from lenskit import plugins
from lenskit.adapters import Adapter, declaration_problem, registry
from lenskit.cli import app
from lenskit.errors import LenskitError
from lenskit.hookspecs import hookimpl
from lenskit.lenses import LensKind, open_lenses
from lenskit.lenses import registry as lens_registry
from lenskit.plugins import BUILTIN, MAX_REGISTERED, pm
from lenskit.testing import check_adapter, save_tiny_model

PROMPT = "the cat sat on the mat"

LOOKALIKE = Adapter(
    name="test-lookalike",
    family="Test look-alike (out of tree)",
    architectures=("NotARealArchitectureForCausalLM",),
    embed="model.embed_tokens",
    layers="model.layers",
    mid="post_attention_layernorm",
    attn="self_attn",
    ffn="mlp",
    final_norm="model.norm",
    unembed="lm_head",
    quirks=("registered by a test",),
)


class LookalikePlugin:
    """What a third-party package's entry-point module looks like."""

    @hookimpl
    def register_adapters(self, register):
        register(LOOKALIKE)


class ClashingPlugin:
    @hookimpl
    def register_adapters(self, register):
        register(Adapter(name="llama", family="Not Llama", architectures=(), layers="x", final_norm=None))


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def plugin():
    registry()  # load the built-ins first, as the CLI does
    obj = LookalikePlugin()
    pm.register(obj, name="test-lookalike-plugin")
    try:
        yield obj
    finally:
        pm.unregister(obj)


@pytest.fixture(scope="module")
def llama_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("llama")
    save_tiny_model(llama(), folder)
    return folder


def _trace(folder, out, *extra):
    args = ["trace", PROMPT, "-m", str(folder), "-o", str(out), "--device", "cpu", "--dtype", "float32", "-q"]
    return CliRunner().invoke(app, args + ["--no-export", *extra])


def _adapter_of(out) -> str:
    with safe_open(str(out / "trace.safetensors"), framework="pt") as f:
        return json.loads(f.metadata()["lenskit"])["model"]["adapter"]


def test_out_of_tree_adapter_registers_lists_and_traces(plugin, llama_folder, tmp_path):
    reg = registry()
    assert reg["test-lookalike"] == (LOOKALIKE, "test-lookalike-plugin")
    listing = CliRunner().invoke(app, ["adapters"])
    assert listing.exit_code == 0 and "test-lookalike" in listing.output
    result = _trace(llama_folder, tmp_path / "run", "--adapter", "test-lookalike")
    assert result.exit_code == 0, result.output
    assert _adapter_of(tmp_path / "run") == "test-lookalike"
    check_adapter(llama(), "test-lookalike")  # a plugin's own conformance test is this one line
    pm.unregister(plugin)
    assert "test-lookalike" not in registry()
    pm.register(plugin, name="test-lookalike-plugin")  # the fixture unregisters it again


def test_plugin_adapters_stay_out_of_the_builtin_table(plugin):
    from lenskit.adapters import coverage_markdown

    assert "test-lookalike" not in coverage_markdown()
    assert "test-lookalike-plugin" in coverage_markdown(builtin_only=False)


def test_plugin_cannot_replace_a_builtin(capsys):
    registry()
    obj = ClashingPlugin()
    pm.register(obj, name="test-clashing-plugin")
    try:
        reg = registry()
        assert reg["llama"][1] == BUILTIN and reg["llama"][0].family != "Not Llama"  # the built-in is kept
        err = capsys.readouterr().err.splitlines()
        assert err == [("lenskit: warning: plugin test-clashing-plugin: adapter 'llama' clashes with the one from "
                        "lenskit (built-in), which is kept")]
    finally:
        pm.unregister(obj)


class HostilePlugin:
    """Everything a broken plugin can register: wrong types, names unusable on the command line, terminal escapes."""

    calls = 0

    @hookimpl
    def register_adapters(self, register):
        HostilePlugin.calls += 1
        register(None)
        register(Adapter(name="evil\x1b[31m", family="x", architectures=(), layers="x", final_norm=None))
        register(Adapter(name="esc", family="fam\x1b[2J\nnext", architectures=(), layers="x", final_norm=None))
        register(Adapter(name="chars", family="f", architectures="LlamaForCausalLM", layers="x", final_norm=None))
        register(Adapter(name="nolayers", family="f", architectures=(), layers=None, final_norm=None))
        register(Adapter(name="badvariant", family="f", architectures=(), layers="x", final_norm=None,
                         variants=(("a", 1, (("layers", 3),)),)))
        register(dataclasses.replace(LOOKALIKE, name="hostile-ok", architectures=("LlamaForCausalLM", "HostileArch")))
        return [LOOKALIKE]

    @hookimpl
    def register_lenses(self, register):
        def boom(arg, model, stages):
            raise ZeroDivisionError("factory\nbroke")

        for name in ("", "has space", "a:b", "nl\nx", "logit"):
            register(LensKind(name=name, description="d", open=boom))
        register(LensKind(name="boom", description="raises", open=boom))
        register(LensKind(name="wrong", description="returns 42", open=lambda arg, model, stages: 42))


class RaisingPlugin:
    @hookimpl
    def register_adapters(self, register):
        register(dataclasses.replace(LOOKALIKE, name="half-registered"))
        raise RuntimeError("hook broke")


class CataloguePlugin:
    @hookimpl
    def register_adapters(self, register):
        for i in range(MAX_REGISTERED + 1):
            register(dataclasses.replace(LOOKALIKE, name=f"many{i}", architectures=(f"Arch{i}",)))


@pytest.fixture
def hostile():
    registry()
    objs = [(HostilePlugin(), "test-hostile"), (RaisingPlugin(), "test-raising"), (CataloguePlugin(), "test-many")]
    for obj, name in objs:
        pm.register(obj, name=name)
    try:
        yield
    finally:
        for obj, _ in objs:
            pm.unregister(obj)


def test_broken_plugins_are_one_warning_each_and_the_builtins_keep_working(hostile, llama_folder, tmp_path):
    res = CliRunner().invoke(app, ["adapters"])
    assert res.exit_code == 0 and "\x1b" not in res.output + res.stderr
    err = res.stderr.splitlines()
    assert err == [
        ("lenskit: warning: plugin test-hostile: registered NoneType where Adapter belongs; skipped (and 7 more "
         "problems of its adapters)"),
        ("lenskit: warning: plugin test-raising: its register_adapters hook failed and its adapters are skipped: "
         "RuntimeError: hook broke"),
        (f"lenskit: warning: plugin test-many registers {MAX_REGISTERED + 1} adapters (at most {MAX_REGISTERED}); "
         "all are skipped"),
    ]
    reg = registry()
    assert reg["llama"][1] == BUILTIN and reg["hostile-ok"][1] == "test-hostile"
    assert not {"esc", "chars", "nolayers", "badvariant", "half-registered", "many0"} & set(reg)
    result = _trace(llama_folder, tmp_path / "run")  # LlamaForCausalLM stays the built-in's
    assert result.exit_code == 0, result.output
    assert _adapter_of(tmp_path / "run") == "llama"


def test_adapter_problems_are_named(capsys):
    bad = {"family": "f", "architectures": (), "layers": "x", "final_norm": None}
    assert declaration_problem(LOOKALIKE) is None
    assert "name" in declaration_problem(Adapter(name="a b", **bad))
    assert "family" in declaration_problem(Adapter(name="a", **dict(bad, family="")))
    assert "architectures" in declaration_problem(Adapter(name="a", **dict(bad, architectures=("a.b",))))
    assert "final_norm" in declaration_problem(Adapter(name="a", **dict(bad, final_norm=3)))
    assert "parallel" in declaration_problem(Adapter(name="a", parallel="x y", **bad))
    assert "quirks" in declaration_problem(Adapter(name="a", quirks=("\x1b[0m",), **bad))
    assert "variant" in declaration_problem(Adapter(name="a", variants=((1, 2),), **bad))
    assert all(declaration_problem(a) is None for a, _ in registry().values())


def test_broken_lenses_are_skipped_and_a_failing_one_names_its_plugin(hostile, capsys):
    kinds = lens_registry()
    assert kinds["logit"][1] == BUILTIN and {"boom", "wrong"} <= set(kinds)
    assert not {"", "has space", "a:b", "nl\nx"} & set(kinds)
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and err[0].startswith("lenskit: warning: plugin test-hostile: a lens's name") and \
        err[0].endswith("skipped (and 4 more problems of its lens kinds)")
    model = {"fingerprint": "0" * 16}
    assert open_lenses(None, model, [])[0].kind == "logit"  # the built-in still opens
    with pytest.raises(LenskitError, match=r"lens 'boom' \(test-hostile\) failed to open: ZeroDivisionError"):
        open_lenses(["boom"], model, [])
    with pytest.raises(LenskitError, match=r"lens 'wrong' \(test-hostile\) is broken: open\(\) returned int"):
        open_lenses(["wrong"], model, [])


def test_a_slow_hook_runs_once_per_set_of_plugins(hostile):
    HostilePlugin.calls = 0
    for _ in range(3):
        registry()
    assert HostilePlugin.calls <= 1
    extra = LookalikePlugin()
    pm.register(extra, name="test-lookalike-plugin")
    try:
        assert "test-lookalike" in registry() and HostilePlugin.calls <= 2
    finally:
        pm.unregister(extra)
    assert "test-lookalike" not in registry()


def _fake_dist(site, name, module, source):
    info = site / f"{name}-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(f"[lenskit]\n{name} = {module}\n")
    (site / f"{module}.py").write_text(source)


def test_entry_points_that_fail_to_load_are_skipped_with_a_warning(tmp_path, monkeypatch, capsys):
    registry()  # the built-ins first, as the CLI loads them
    site = tmp_path / "site"
    site.mkdir()
    _fake_dist(site, "lkt-importerror", "lkt_importerror", "import lenskit_no_such_module\n")
    _fake_dist(site, "lkt-syntax", "lkt_syntax", "def (:\n")
    _fake_dist(site, "lkt-raises", "lkt_raises", "raise ValueError('at\\nimport')\n")
    _fake_dist(site, "lkt-exits", "lkt_exits", "import sys\nsys.exit(3)\n")
    _fake_dist(site, "lkt-badsig", "lkt_badsig", "from lenskit.hookspecs import hookimpl\n"
               "@hookimpl\ndef register_adapters(reg):\n    pass\n")
    _fake_dist(site, "lkt-good", "lkt_good", "from lenskit.hookspecs import hookimpl\nfrom dataclasses import replace\n"
               "from tests_lookalike import LOOKALIKE\n@hookimpl\ndef register_adapters(register):\n"
               "    register(replace(LOOKALIKE, name='from-entry-point'))\n")
    monkeypatch.syspath_prepend(str(site))
    monkeypatch.setitem(sys.modules, "tests_lookalike", sys.modules[__name__])
    names = ["lkt-importerror", "lkt-syntax", "lkt-raises", "lkt-exits", "lkt-badsig", "lkt-good"]
    try:
        plugins._load_entry_points("lenskit")
        err = capsys.readouterr().err.splitlines()
        assert len(err) == 5 and all(line.startswith("lenskit: warning: plugin 'lkt-") and "0.1) could not be "
                                     "loaded and is skipped: " in line for line in err), err
        assert {line.split("'")[1] for line in err} == set(names[:-1])
        assert registry()["from-entry-point"][1] == "lkt-good 0.1"
    finally:
        for name in names:
            if pm.get_plugin(name) is not None:
                pm.unregister(name=name)
            plugins._providers.pop(name, None)
            sys.modules.pop(name.replace("-", "_"), None)
    assert "from-entry-point" not in registry()


def test_force_builtin_adapter(llama_folder, tmp_path):
    result = _trace(llama_folder, tmp_path / "run", "--adapter", "llama")
    assert result.exit_code == 0, result.output
    assert _adapter_of(tmp_path / "run") == "llama"


def test_force_unknown_adapter_name(llama_folder, tmp_path):
    result = _trace(llama_folder, tmp_path / "run", "--adapter", "no-such-adapter")
    assert result.exit_code == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "no adapter named 'no-such-adapter'" in lines[0] and "llama" in lines[0]


def test_unknown_family_is_one_line(tmp_path):
    config = tf.XGLMConfig(
        vocab_size=128, d_model=32, num_layers=2, attention_heads=4, ffn_dim=64, max_position_embeddings=64,
        pad_token_id=0, bos_token_id=1, eos_token_id=2,
    )
    save_tiny_model(config, tmp_path / "model")
    result = _trace(tmp_path / "model", tmp_path / "run")
    assert result.exit_code == 1
    assert "Traceback" not in result.output + result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, lines
    line = lines[0]
    assert line.startswith("lenskit: error: no adapter for architecture XGLMForCausalLM")
    assert "Llama" in line and "GPT-NeoX / Pythia" in line  # lists the supported families
    assert "--adapter" in line and "Adding a model family" in line  # points to forcing and to the plugin docs
    assert not (tmp_path / "run").exists()


def test_listing_is_an_aligned_table_with_a_header(plugin):
    lines = CliRunner().invoke(app, ["adapters"]).output.splitlines()
    assert lines[0].split() == ["ADAPTER", "FAMILY", "ARCHITECTURES", "PROVIDED", "BY"]
    starts = [lines[0].index(h) for h in ("ADAPTER", "FAMILY", "ARCHITECTURES", "PROVIDED BY")]
    reg = registry()
    assert len(lines) == 1 + len(reg) and all(line == line.rstrip() for line in lines)
    for line in lines[1:]:
        name = line[: starts[1]].strip()
        adapter, provider = reg[name]
        cells = [line[a:b].strip() for a, b in zip(starts, starts[1:] + [None])]
        assert cells == [name, adapter.family, ", ".join(adapter.architectures), provider], line
    assert any(line.endswith("test-lookalike-plugin") for line in lines)


def test_a_provider_name_with_escapes_is_listed_on_one_line():
    registry()
    obj = LookalikePlugin()
    pm.register(obj, name="test-\x1b[31mevil\npkg")
    try:
        res = CliRunner().invoke(app, ["adapters"])
        assert res.exit_code == 0 and "\x1b" not in res.output
        assert next(line for line in res.output.splitlines() if line.startswith("test-lookalike ")).endswith(
            "test- [31mevil pkg")
    finally:
        pm.unregister(obj)
