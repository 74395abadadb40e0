"""Every default a ``--help`` states matches the code (issue 12, item 6).

For every command and parameter of the real CLI:

* Typer's own ``[default: X]`` shows the declared default;
* each default the help text states in words -- ``Default: X``, ``(default: X)``, ``(default X)``, ``(X by default)``,
  ``None: X`` for an optional argument, ``(auto: X)`` for what ``auto`` picks -- is checked: against the declared
  default where that says it (``10``, ``auto``, a flag's name, ``never`` for an off flag), otherwise by an entry of
  :data:`CODE_DEFAULTS` that checks the phrase against the constant or function the code really uses. A stated
  default with neither fails, naming the option: new help text that states a default needs its check here;
* defaults shared with the library (``load_model``'s, ``ExportOptions``') are the library's;
* a command's own help mentioning a URL or an export format version agrees with the declared defaults and the schema.
"""

from __future__ import annotations

import dataclasses
import inspect
import ipaddress
import re
from pathlib import Path
from unittest import mock

import click
import pytest
import torch
import typer

from lenskit.cli import app

# "Default: X." / "(default: X)" / "(default X)" / "default is X" / "(X by default)" / "None: X" / "None and no --file: X"
STATED = (
    re.compile(r"\bdefault(?::|\s+is\b)\s*(?P<v>[^;)\]]+?)(?=[;)\]]|\.(?:\s|$)|$)", re.IGNORECASE),
    re.compile(r"\(default\s+(?P<v>[^:;)]+)\)", re.IGNORECASE),
    re.compile(r"\((?P<v>[^()]+?) by default\)", re.IGNORECASE),
    re.compile(r"(?:^|(?<=\. ))None(?: and [^:]+)?:\s*(?P<v>[^.;]+)"),
)
AUTO = re.compile(r"\(auto:\s*(?P<v>[^)]+)\)")
SHOWN = re.compile(r"\[default: (?P<v>[^;\]]+)")
OFF_WORDS = ("never", "off", "no", "none", "false", "not")


def _commands():
    group = typer.main.get_command(app)
    return sorted(group.commands.items())


def _params():
    for name, cmd in _commands():
        for p in cmd.params:
            if p.name != "help":
                yield name, cmd, p


def _help(p) -> str:
    return " ".join((getattr(p, "help", None) or "").split())


def _stated(text: str) -> list[str]:
    found = []
    for pattern in STATED:
        found += [m.group("v").strip() for m in pattern.finditer(text)]
    return found


# --- checks of stated defaults against the code (command, parameter) -> check(phrase) ------------------------------


def _model_default(phrase):
    from lenskit.models import DEFAULT_MODEL_NAME

    return DEFAULT_MODEL_NAME in phrase


def _run_dir_default(phrase):
    from lenskit.commands.trace import default_run_dir

    d = default_run_dir("MODEL")
    return (phrase == "runs/<model>-<time>" and d.parent == Path("runs")
            and re.fullmatch(r"MODEL-[0-9]{8}-[0-9]{6}", d.name) is not None)


def _example_default(phrase):
    from lenskit.commands.trace import example_text, read_prompts

    return phrase == "the standard test paragraph" and read_prompts([], []) == [example_text()] and \
        example_text().startswith("Community Involvement")


def _export_output_default(phrase):
    from lenskit.schema import EXPORT_FILE

    return phrase.startswith(f"RUN/{EXPORT_FILE}")


def _all_positions(phrase):
    from lenskit.export import parse_positions

    return phrase == "all" and parse_positions(None, 5) == [0, 1, 2, 3, 4]


def _all_prompts(phrase):
    from lenskit.export import ExportOptions

    return phrase == "all" and ExportOptions().prompt is None


def _memory_default(phrase):
    from lenskit.planning import CPU_BUDGET, auto_max_memory

    cpu = auto_max_memory(torch.device("cpu"))
    free = 64 * CPU_BUDGET
    with mock.patch.object(torch.cuda, "mem_get_info", lambda device=None: (free, 2 * free)):
        gpu = auto_max_memory(torch.device("cuda"))
    gpu_ok = "GPU" not in phrase or ("1/8 of free GPU memory" in phrase and gpu == free // 8)
    return cpu == CPU_BUDGET and cpu % (1 << 20) == 0 and f"{cpu >> 20} MiB on CPU" in phrase and gpu_ok


def _loopback(phrase):
    host = _declared("serve", "host")
    return phrase == "this machine only" and ipaddress.ip_address(host).is_loopback


def _scan_depth(phrase):
    from lenskit.server import SCAN_DEPTH

    return f"up to {SCAN_DEPTH} levels below" in phrase


def _survey_dir_default(phrase):
    from lenskit.commands.survey import _default_dir

    d = _default_dir("MODEL")
    return (phrase == "runs/survey-<model>-<time>" and d.parent == Path("runs")
            and re.fullmatch(r"survey-MODEL-[0-9]{8}-[0-9]{6}", d.name) is not None)


def _survey_max_tokens(phrase):
    from lenskit.commands.survey import DEFAULT_MAX_TOKENS

    return phrase == f"the model's context, at most {DEFAULT_MAX_TOKENS}"


def _all_but_last_stage(phrase):
    from lenskit.lenses.fit import parse_stages

    return phrase == "all but the last" and parse_stages(None, 5) == [0, 1, 2, 3]


# (command or "*", parameter) -> check(phrase): the phrase states what the code really does
CODE_DEFAULTS = {
    ("*", "model"): _model_default,
    ("*", "max_memory"): _memory_default,
    ("survey", "output"): _survey_dir_default,
    ("survey", "max_tokens"): _survey_max_tokens,
    ("fit-lens", "stages"): _all_but_last_stage,
    ("trace", "output"): _run_dir_default,
    ("trace", "prompts"): _example_default,
    ("export", "output"): _export_output_default,
    ("export", "positions"): _all_positions,
    ("export", "prompt"): _all_prompts,
    ("serve", "host"): _loopback,
    ("serve", "run_dirs"): _scan_depth,
}


def _auto_device(phrase, monkeypatch):
    from lenskit.models import resolve_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    with_cuda = resolve_device("auto").type
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    return phrase == "CUDA when present" and with_cuda == "cuda" and resolve_device("auto").type != "cuda"


def _auto_dtype(phrase, monkeypatch):
    from lenskit.models import resolve_dtype

    return (phrase == "float32 on CPU, bfloat16 on GPU" and resolve_dtype("auto", torch.device("cpu")) == torch.float32
            and resolve_dtype("auto", torch.device("cuda")) == torch.bfloat16)


# What "auto" picks, by the declared option name
AUTO_MEANS = {"device": _auto_device, "dtype": _auto_dtype}


def _declared(command: str, param: str):
    cmd = dict(_commands())[command]
    return next(p for p in cmd.params if p.name == param).default


def _shown(p, default) -> str | None:
    """How Typer shows a declared default (None where it shows none)."""
    if default is None or (isinstance(default, bool) and not p.secondary_opts):
        return None
    if isinstance(default, bool):
        names = p.opts if default else p.secondary_opts
        return names[0].lstrip("-")
    return str(default)


def _matches_declared(p, phrase: str) -> bool:
    d = p.default
    if isinstance(d, bool):
        if p.secondary_opts:
            flag = (p.opts if d else p.secondary_opts)[0].lstrip("-")
            return re.search(rf"\b{re.escape(flag)}\b", phrase) is not None
        words = re.findall(r"[a-z]+", phrase.lower())
        return (not d and any(w in OFF_WORDS for w in words)) or (d and any(w in ("on", "yes", "always") for w in words))
    if d is None or isinstance(d, (list, tuple)):
        return False
    return re.search(rf"(?<![\w.]){re.escape(str(d))}(?![\w])", phrase) is not None


# --- the tests -----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("command,cmd,p", list(_params()), ids=[f"{c}-{p.name}" for c, _, p in _params()])
def test_typer_shows_the_declared_default(command, cmd, p):
    record = p.get_help_record(click.Context(cmd, info_name=command))
    shown = SHOWN.search(record[1]) if record else None
    want = _shown(p, p.default) if getattr(p, "show_default", True) else None
    assert (shown.group("v").strip() if shown else None) == want, f"lenskit {command} {p.opts[0]}: {record}"


@pytest.mark.parametrize("command,cmd,p", list(_params()), ids=[f"{c}-{p.name}" for c, _, p in _params()])
def test_stated_defaults_match_the_code(command, cmd, p, monkeypatch):
    text = _help(p)
    for phrase in _stated(text):
        check = CODE_DEFAULTS.get((command, p.name)) or CODE_DEFAULTS.get(("*", p.name))
        if check is not None:
            assert check(phrase), f"lenskit {command} {p.opts[0]}: help says the default is {phrase!r}; the code disagrees"
        else:
            assert _matches_declared(p, phrase), (
                f"lenskit {command} {p.opts[0]}: help says the default is {phrase!r} but the option declares "
                f"{p.default!r}; fix the help, or add a check of the code's real default to CODE_DEFAULTS"
            )
    for m in AUTO.finditer(text):
        assert p.default == "auto" or "auto" in text.split("|")[0], f"lenskit {command} {p.opts[0]}: (auto: ...) on a non-auto option"
        check = AUTO_MEANS.get(p.name)
        assert check is not None, f"lenskit {command} {p.opts[0]}: help says what auto means; add its check to AUTO_MEANS"
        assert check(m.group("v").strip(), monkeypatch), f"lenskit {command} {p.opts[0]}: 'auto: {m.group('v')}' is not what the code does"


def test_every_code_default_check_is_used():
    stated = [(c, p.name) for c, _, p in _params() if _stated(_help(p))]
    used = set(stated) | {("*", name) for _, name in stated}
    present = {"*"} | {name for name, _ in _commands()}
    assert {k for k in CODE_DEFAULTS if k[0] in present} <= used, f"stale CODE_DEFAULTS entries: {sorted(set(CODE_DEFAULTS) - used)}"


def test_the_parser_finds_the_phrases():
    assert _stated("Run folder to create. Default: runs/<model>-<time>.") == ["runs/<model>-<time>"]
    assert _stated("Budget, e.g. 256M. Default: 256 MiB on CPU, 1/8 of free GPU memory.") == [
        "256 MiB on CPU, 1/8 of free GPU memory"]
    assert _stated("Download (default: never; or set X).") == ["never"]
    assert _stated("Tokens per position (default 10).") == ["10"]
    assert _stated("Samples per bin (3 by default).") == ["3"]
    assert _stated("None and no --file: the standard test paragraph.") == ["the standard test paragraph"]
    assert _stated("Open the viewer in the default browser.") == []


def test_cli_defaults_are_the_library_defaults():
    """An option passed on to the library declares the library's own default (``load_model``, ``ExportOptions``)."""
    from lenskit.export import ExportOptions
    from lenskit.models import load_model

    library = {k: v.default for k, v in inspect.signature(load_model).parameters.items()}
    library_export = {f.name: f.default for f in dataclasses.fields(ExportOptions) if f.default is not dataclasses.MISSING}
    checked = 0
    for command, _, p in _params():
        for source, values in (("load_model", library if command in ("trace", "adapters") else {}),
                               ("ExportOptions", library_export if command in ("trace", "export") else {})):
            if p.name in values and p.default is not None:
                assert p.default == values[p.name], f"lenskit {command} {p.opts[0]} defaults to {p.default!r}, {source} to {values[p.name]!r}"
                checked += 1
    assert checked >= 8


def test_command_help_agrees_with_defaults_and_schema():
    from lenskit.schema import SCHEMA_VERSION, SCHEMA_VERSIONS_READ

    for name, cmd in _commands():
        text = " ".join((cmd.help or "").split())
        for version in re.findall(r"lenskit\.export/[0-9]+", text):
            assert version == SCHEMA_VERSION or (version in SCHEMA_VERSIONS_READ and "read" in text), (
                f"lenskit {name} --help names {version}; lenskit writes {SCHEMA_VERSION}")
        for host, port in re.findall(r"https?://([0-9.]+|localhost):([0-9]+)/", text):
            assert (host, int(port)) == (_declared(name, "host"), _declared(name, "port")), f"lenskit {name}: {text}"


def test_command_list_shows_each_first_paragraph_unwrapped():
    """`lenskit --help` lists every command by its docstring's whole first paragraph, joined into one line (Typer
    kept the docstring's line breaks: "(comparison counting),⏎ z-score ...")."""
    from typer.testing import CliRunner

    for info in app.registered_commands:
        first = " ".join(info.callback.__doc__.strip().split("\n\n")[0].split())
        assert info.short_help == first, info.name
    res = CliRunner().invoke(app, ["--help"], env={"COLUMNS": "400"})
    assert "exact ranks (comparison counting), z-score histograms" in res.output
