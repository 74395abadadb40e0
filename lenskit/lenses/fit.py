"""Fitting a tuned lens for all 2L+1 stages (``lenskit fit-lens``), and importing a tuned-lens package lens.

The fit streams: a batch of token sequences is run through the model with lenskit's capture hooks, its ``[S, N, D]``
stages are used for one optimizer step and dropped -- stages are never stored. The loss is the tuned lens paper's:
per stage, KL(final || lens(h_s)) with the model's own final distribution as the target, averaged over tokens;
the translators are independent, so each stage's loss is back-propagated on its own (one ``[N, V]`` graph at a time).

Before the KL steps, by default, each translator starts from a weighted least-squares fit of the final stage from
stage s (``--init lstsq``: one streaming pass accumulating ``[D+1, D+1]`` Gram matrices, ridge towards the
identity, tokens weighted by 1 / mean square of the final state, as the final norm sees it). It costs about one KL
step over the same tokens on a CPU and starts the KL steps far below the logit lens: on a CPU, where a KL step over
all stages costs ~2 s per 100 tokens for a 49k vocabulary, that is what makes a short fit useful.
``--init identity`` starts from the logit lens, as tuned-lens does.

A held-out split (every k-th sequence) measures KL(final || stage) per stage for the logit lens (once) and the
tuned lens (at the end, and every ``eval_every`` steps); both go into ``lens.json``. A checkpoint
(``LENS_DIR/checkpoint.safetensors``: translators, Adam state, step) is written atomically every
``checkpoint_every`` steps; running the same command again resumes from it.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import stat
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from ..errors import InputError
from ..tokens import error_line, is_int
from .protocol import Translator
from .tuned import save_lens

CHECKPOINT_FILE = "checkpoint.safetensors"
MIN_SEQ = 8  # shorter tails of a document are dropped


@dataclass
class FitOptions:
    """How to fit (recorded in ``lens.json``; a checkpoint resumes only with the same options, ``steps`` aside)."""

    steps: int = 250
    seq_len: int = 128
    batch: int = 8  # sequences per step
    lr: float = 1e-4  # Adam; measured on the default model after the least-squares start
    init: str = "lstsq"  # "lstsq" | "identity"
    init_tokens: int = 16384  # tokens of the least-squares pass
    ridge: float = 1e-3  # least-squares ridge, relative to the mean diagonal of the Gram matrix
    heldout: float = 0.1  # share of sequences held out (every k-th), capped by heldout_tokens
    heldout_tokens: int = 2048
    max_tokens: int | None = None  # read at most this many corpus tokens
    stages: str | None = None  # stages to fit, e.g. "0-20,40"; default: all but the last (identity)
    eval_every: int = 0  # held-out evaluation every N steps (0: at the end only)
    checkpoint_every: int = 25
    seed: int = 0


def parse_stages(spec: str | None, n_stages: int) -> list[int]:
    """``"0-20,40"`` -> sorted stage indices (negative count from the end); default all but the last."""
    if spec is None:
        return list(range(n_stages - 1))
    from ..export import parse_positions

    return parse_positions(spec, n_stages, "--stages", "stage", "the model has {n} stages")


def token_sequences(tokenizer, texts, seq_len: int, max_tokens: int | None = None) -> list[np.ndarray]:
    """Each document tokenized (with the tokenizer's special tokens) and cut into sequences of ``seq_len`` tokens,
    each an int32 array: ~4 bytes a token where a list of Python ints took ~36 (a 1 GB corpus ~9 GB)."""
    out, total = [], 0
    for text in texts:
        ids = np.asarray(tokenizer(text, add_special_tokens=True)["input_ids"], dtype=np.int64)
        if ids.size and (ids.min() < 0 or ids.max() > np.iinfo(np.int32).max):
            raise InputError(f"the tokenizer gave token ids outside 0..2^31-1 ({int(ids.min())}..{int(ids.max())})")
        for i in range(0, len(ids), seq_len):
            part = ids[i: i + seq_len]
            if len(part) >= MIN_SEQ:
                out.append(part.astype(np.int32))
                total += len(part)
            if max_tokens is not None and total >= max_tokens:
                return out
    return out


def split_heldout(seqs: list, share: float, max_tokens: int) -> tuple[list, list]:
    """Every k-th sequence held out (k = 1/share), at most ``max_tokens`` of them; the rest train."""
    if len(seqs) < 2:
        raise InputError(f"the corpus gives {len(seqs)} sequence(s); fitting needs at least 2 (one held out)")
    k = max(2, round(1 / share)) if share > 0 else len(seqs)
    held, train, n = [], [], 0
    for i, s in enumerate(seqs):
        if i % k == k - 1 and n < max_tokens:
            held.append(s)
            n += len(s)
        else:
            train.append(s)
    if not held:
        held, train = train[-1:], train[:-1]
    return train, held


class Fitter:
    """The model, its head (a float32 copy, frozen) and the translators being fitted."""

    def __init__(self, loaded, fit_stages: list[int]):
        from ..adapters import get_module
        from ..lens import lens_from_model

        self.loaded = loaded
        self.device = loaded.device
        head = lens_from_model(loaded.model, loaded.adapter).to(self.device, torch.float32)
        for mod in (head.norm, head.pre):
            if mod is not None:
                mod.requires_grad_(False)
        head.weight = head.weight.detach()
        head.bias = head.bias.detach() if head.bias is not None else None
        self.head = head
        self.S = 2 * len(get_module(loaded.model, loaded.adapter.layers)) + 1
        self.D = head.hidden_size
        self.stages = fit_stages
        self.A = torch.nn.Parameter(torch.zeros(self.S, self.D, self.D, device=self.device))  # [S, D, D]
        self.b = torch.nn.Parameter(torch.zeros(self.S, self.D, device=self.device))  # [S, D]
        self.opt = None

    def logits(self, h: torch.Tensor) -> torch.Tensor:
        """``[N, D]`` -> ``[N, V]`` through the model's head (differentiable; no inference mode)."""
        x = self.head.normed(h)
        return self.head.finish(torch.nn.functional.linear(x, self.head.weight, self.head.bias))

    def capture(self, seqs: list) -> torch.Tensor:
        """Stages of a batch of sequences, ``[S, N, D]`` float32 on the fitting device (N = all their tokens)."""
        from ..capture import capture_stages

        parts = [capture_stages(self.loaded.model, self.loaded.adapter, torch.as_tensor(s, dtype=torch.long))
                 for s in seqs]  # [S, T, D]
        return torch.cat(parts, dim=1).to(self.device, torch.float32).clone()  # [S, N, D] (a normal tensor)

    def target(self, h_last: torch.Tensor):
        """Final distribution: log-probs ``[N, V]``, probs, and sum p log p ``[N]``."""
        with torch.no_grad():
            logp = torch.log_softmax(self.logits(h_last), -1)  # [N, V]
            p = logp.exp()
            return p, (p * logp).sum(-1)

    def translate(self, h: torch.Tensor, s: int) -> torch.Tensor:
        return h + h @ self.A[s].t() + self.b[s]  # [N, D]

    def kl(self, h: torch.Tensor, p: torch.Tensor, plogp: torch.Tensor) -> torch.Tensor:
        """Per token KL(p || softmax(head(h))): ``[N]``."""
        z = self.logits(h)  # [N, V]
        return plogp - (p * z).sum(-1) + torch.logsumexp(z, -1)

    # ---- least-squares start

    def lstsq_init(self, batches, ridge: float, bar=None) -> None:
        """A_s, b_s from a weighted ridge regression of the final stage on stage s (streamed Gram matrices)."""
        D = self.D
        G = torch.zeros(len(self.stages), D + 1, D + 1, dtype=torch.float64, device=self.device)
        C = torch.zeros(len(self.stages), D + 1, D, dtype=torch.float64, device=self.device)
        for seqs in batches:
            with torch.no_grad():
                H = self.capture(seqs)  # [S, N, D]
                y = H[-1]  # [N, D]
                w = 1.0 / y.pow(2).mean(-1).clamp_min(1e-12)  # [N]: the final norm's view of the error
                X = H[self.stages]  # [k, N, D]
                X = torch.cat([X, X.new_ones(X.shape[0], X.shape[1], 1)], 2)  # [k, N, D+1]
                Xw = (X * w[None, :, None]).transpose(1, 2)  # [k, D+1, N]
                G += torch.bmm(Xw, X).double()  # [k, D+1, D+1]
                C += torch.bmm(Xw, y.expand(X.shape[0], -1, -1)).double()  # [k, D+1, D]
            if bar is not None:
                bar(sum(len(s) for s in seqs))
        eye = torch.eye(D + 1, D, dtype=torch.float64, device=self.device)  # identity map, zero bias
        with torch.no_grad():
            for k, s in enumerate(self.stages):
                lam = ridge * G[k].diagonal().mean().clamp_min(1e-12)
                M = torch.linalg.solve(G[k] + lam * torch.eye(D + 1, dtype=torch.float64, device=self.device),
                                       C[k] + lam * eye)  # [D+1, D]: y ~ x M
                self.A[s].copy_((M[:D] - eye[:D]).t().float())
                self.b[s].copy_(M[D].float())

    # ---- KL steps

    def make_optimizer(self, lr: float) -> None:
        self.opt = torch.optim.Adam([self.A, self.b], lr=lr)

    def step(self, seqs: list) -> float:
        """One Adam step on a batch; returns the mean KL over the fitted stages (before the step)."""
        with torch.no_grad():
            H = self.capture(seqs)  # [S, N, D]
        p, plogp = self.target(H[-1])
        self.opt.zero_grad(set_to_none=False)
        total = 0.0
        for s in self.stages:
            loss = self.kl(self.translate(H[s], s), p, plogp).mean()
            loss.backward()  # each stage's graph is freed right away
            total += loss.item()
        self.opt.step()
        return total / max(1, len(self.stages))

    @torch.no_grad()
    def heldout_kl(self, held: list, batch: int, logit: list[float] | None = None) -> list[float]:
        """Mean KL(final || stage) per stage over the held-out tokens: the logit lens's, or given ``logit`` (its
        result), the tuned lens's (stages not fitted are identity: their logit-lens values are reused)."""
        todo = self.stages if logit is not None else range(self.S - 1)
        sums = torch.zeros(self.S, dtype=torch.float64)
        n = 0
        for i in range(0, len(held), batch):
            H = self.capture(held[i: i + batch])
            p, plogp = self.target(H[-1])
            for s in todo:
                h = self.translate(H[s], s) if logit is not None else H[s]
                sums[s] += self.kl(h, p, plogp).double().sum().item()
            n += H.shape[1]
        out = [round(float(x) / n, 5) for x in sums]
        if logit is not None:
            out = [out[s] if s in set(todo) else logit[s] for s in range(self.S)]
        return out

    def translator(self) -> Translator:
        covered = [s in set(self.stages) for s in range(self.S)]
        return Translator(self.A.detach().cpu().clone(), self.b.detach().cpu().clone(), covered)

    # ---- checkpoint

    def save_checkpoint(self, path: Path, meta: dict) -> None:
        from safetensors.torch import save_file

        from ..files import atomic_write

        tensors = {"A": self.A.detach().cpu().contiguous(), "b": self.b.detach().cpu().contiguous()}
        if self.opt is not None:
            for i, st in self.opt.state_dict()["state"].items():
                for k, v in st.items():
                    tensors[f"opt.{i}.{k}"] = v.detach().cpu().reshape(v.shape).contiguous()
        atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata={"lenskit_fit": json.dumps(meta)}))

    def load_checkpoint(self, path: Path, lr: float, key: dict) -> dict:
        """The state saved by :meth:`save_checkpoint` for a fit of ``key`` (options, model, corpus), its translators
        and Adam state loaded; InputError for a checkpoint of another fit or a damaged one (never half-loaded)."""
        from safetensors import SafetensorError, safe_open

        damaged = f"{path} is damaged or incomplete ({{}}); delete it to start over"
        try:
            with safe_open(str(path), framework="pt") as f:
                meta = json.loads((f.metadata() or {}).get("lenskit_fit", "null"))
                if not isinstance(meta, dict):
                    raise InputError(damaged.format("no fit state in its metadata"))
                if meta.get("key") != key:
                    raise InputError(f"{path} is from a fit with other options, model or corpus; delete it to start over")
                t = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (safe_open is not a dict)
        except (OSError, SafetensorError, ValueError, RecursionError) as e:  # ValueError: its metadata is not JSON
            raise InputError(damaged.format(error_line(e, 200))) from None
        S, D = self.S, self.D
        step, kl = meta.get("step"), meta.get("logit_kl")
        if not (is_int(step) and step >= 0):
            raise InputError(damaged.format(f"step {step!r}"))
        if not (isinstance(kl, list) and len(kl) == S and all(isinstance(x, (int, float)) for x in kl)):
            raise InputError(damaged.format("no held-out KL of the logit lens"))
        if not isinstance(meta.get("history", []), list):
            raise InputError(damaged.format("its loss history is not a list"))
        shapes = {"A": (S, D, D), "b": (S, D)}
        for i, name in enumerate(("A", "b")):  # Adam's moments have the shape of their parameter
            for k in ("exp_avg", "exp_avg_sq"):
                shapes[f"opt.{i}.{k}"] = shapes[name]
        for k, v in t.items():
            want = shapes.get(k, () if k.startswith("opt.") and k.endswith(".step") else None)
            if want is None or tuple(v.shape) != want or not v.is_floating_point() or not torch.isfinite(v).all():
                raise InputError(damaged.format(f"tensor {k} is not what this model's fit saves"))
        if "A" not in t or "b" not in t:
            raise InputError(damaged.format("no translators"))
        with torch.no_grad():
            self.A.copy_(t["A"])
            self.b.copy_(t["b"])
        self.make_optimizer(lr)
        state = {}
        for i in (0, 1):
            keys = {k.split(".", 2)[2]: v for k, v in t.items() if k.startswith(f"opt.{i}.")}
            if keys:
                state[i] = {k: v.to(self.device) if k != "step" else v for k, v in keys.items()}
        if state:
            sd = self.opt.state_dict()
            sd["state"] = state
            self.opt.load_state_dict(sd)
        return meta


def _digest(seqs: list) -> str:
    """The corpus's sequences, hashed as their JSON lists (as when they were lists: checkpoints stay valid)."""
    h = hashlib.sha256()
    for s in seqs:
        h.update(json.dumps(np.asarray(s).tolist()).encode())
    return h.hexdigest()[:16]


def check_lens_dir(out: Path) -> None:
    """Refuse, before any work, a lens folder ``fit-lens`` must not write into: a dangling link, or a folder whose
    ``lens.json``, ``lens.safetensors`` or ``checkpoint.safetensors`` lenskit did not write (they would be replaced)."""
    from ..errors import OutputError
    from ..store import safetensors_metadata
    from .tuned import CONFIG_FILE, FORMAT, WEIGHTS_FILE, read_config

    out = Path(out)
    if out.is_symlink() and not out.exists():
        raise OutputError(f"-o {out} is a symbolic link to nothing; name a real folder")
    if out.exists() and not out.is_dir():
        raise OutputError(f"-o {out} exists and is not a folder; name a folder")
    if not out.is_dir():
        above = next((p for p in Path(os.path.abspath(out)).parents if p.exists() or p.is_symlink()), None)
        if above is not None and not above.is_dir():  # the fit would fail at its first checkpoint, after the model
            raise OutputError(f"cannot write to {out}: {above} is not a folder")
        return
    from ..store import TRACE_FILE

    if (out / TRACE_FILE).exists() or (out / "compare.json").exists():  # `trace --force` would then refuse the run
        raise OutputError(f"-o {out} is a lenskit run or comparison folder; a lens needs a folder of its own")

    def ours(path: Path) -> bool:
        if path.is_symlink() or not path.is_file():
            return False
        if path.name == CONFIG_FILE:
            try:
                read_config(out)  # a lenskit lens config, or InputError
            except InputError:
                return False
            return True
        meta = safetensors_metadata(path)
        return meta.get("format") == FORMAT if path.name == WEIGHTS_FILE else "lenskit_fit" in meta

    for name in (CONFIG_FILE, WEIGHTS_FILE, CHECKPOINT_FILE):
        path = out / name
        if (path.exists() or path.is_symlink()) and not ours(path):
            raise OutputError(f"-o {out}: {name} there was not written by lenskit fit-lens and would be replaced; "
                              "move it or name another folder")


def model_record(loaded) -> dict:
    """What a lens records about its model (the fingerprint is the trace's ``model.fingerprint``)."""
    from ..capture import fingerprint_info

    info = fingerprint_info(loaded)
    return {k: info[k] for k in ("id", "revision", "fingerprint", "architecture", "adapter", "n_layers", "vocab_size")}


def fit_lens(loaded, texts, out_dir: Path, opts: FitOptions, log=None, quiet: bool = False) -> dict:
    """Fit a tuned lens on ``texts`` and write ``out_dir``; returns the ``lens.json`` document's ``fit`` section.

    One fit at a time writes a lens folder (:func:`lenskit.files.hold_folder`): a second would resume from the
    first's checkpoint while it runs, and the two would overwrite each other's checkpoints and lens files."""
    out_dir = Path(out_dir).expanduser()
    with hold_lens_dir(out_dir):
        return _fit_lens(loaded, texts, out_dir, opts, log, quiet)


def hold_lens_dir(out_dir: Path):
    """:func:`lenskit.files.hold_folder` for a lens folder: one ``fit-lens`` (fit or ``--import``) writes it at a
    time; another meanwhile is refused with one line."""
    from ..files import hold_folder

    return hold_folder(Path(out_dir), f"-o {out_dir}: another lenskit fit-lens is writing this lens folder now; wait "
                       "for it to finish or name another folder")


def _fit_lens(loaded, texts, out_dir: Path, opts: FitOptions, log, quiet: bool) -> dict:
    """:func:`fit_lens` with the lens folder made and held."""
    from ..capture import stage_names

    torch.manual_seed(opts.seed)
    seqs = token_sequences(loaded.tokenizer, texts, opts.seq_len, opts.max_tokens)
    train, held = split_heldout(seqs, opts.heldout, opts.heldout_tokens)
    fitter = Fitter(loaded, [])
    fitter.stages = parse_stages(opts.stages, fitter.S)
    stages = stage_names((fitter.S - 1) // 2)
    model = model_record(loaded)
    n_train = sum(len(s) for s in train)
    if log:
        log(f"corpus: {len(seqs)} sequences of <= {opts.seq_len} tokens: {n_train} training tokens, "
            f"{sum(len(s) for s in held)} held out; fitting {len(fitter.stages)} of {fitter.S} stages")
    order = torch.randperm(len(train), generator=torch.Generator().manual_seed(opts.seed)).tolist()

    def batch_at(i: int) -> list:  # the i-th training batch, cycling through a fixed shuffled order
        return [train[order[(i * opts.batch + j) % len(train)]] for j in range(opts.batch)]

    key = {k: v for k, v in asdict(opts).items() if k not in ("steps", "eval_every", "checkpoint_every")}
    key.update(model=model["fingerprint"], corpus=_digest(seqs))
    ckpt = out_dir / CHECKPOINT_FILE
    state = {"step": 0, "key": key}
    if ckpt.is_file():
        state = fitter.load_checkpoint(ckpt, opts.lr, key)
        if log:
            log(f"resuming from {ckpt} at step {state['step']}")
    else:
        state["logit_kl"] = fitter.heldout_kl(held, opts.batch)
        if opts.init == "lstsq":
            n_batches = max(1, math.ceil(opts.init_tokens / max(1, opts.batch * opts.seq_len)))
            started = time.perf_counter()
            fitter.lstsq_init((batch_at(-1 - i) for i in range(n_batches)), opts.ridge)
            elapsed = time.perf_counter() - started
            state["init"] = {"tokens": n_batches * opts.batch * opts.seq_len, "seconds": round(elapsed, 2)}
            if log:
                log(f"least-squares start: {state['init']['tokens']} tokens in {elapsed:.1f}s")
        fitter.make_optimizer(opts.lr)
        state["heldout_after_init"] = fitter.heldout_kl(held, opts.batch, state["logit_kl"]) if opts.eval_every else None
        fitter.save_checkpoint(ckpt, state)
    if fitter.opt is None:
        fitter.make_optimizer(opts.lr)

    from tqdm import tqdm

    bar = tqdm(total=opts.steps, initial=min(state["step"], opts.steps), desc="lenskit: fit-lens", unit=" steps",
               file=sys.stderr, disable=quiet, mininterval=0.5, dynamic_ncols=True)
    history = state.get("history", [])
    tokens, started = 0, time.perf_counter()
    while state["step"] < opts.steps:
        batch = batch_at(state["step"])
        loss = fitter.step(batch)
        state["step"] += 1
        tokens += sum(len(s) for s in batch)
        rate = tokens / (time.perf_counter() - started)
        bar.update(1)
        bar.set_postfix(loss=f"{loss:.3f}", tok_s=f"{rate:.0f}")
        history.append(round(loss, 5))
        state["history"] = history
        if opts.eval_every and state["step"] % opts.eval_every == 0:
            state.setdefault("evals", []).append({"step": state["step"], "kl": fitter.heldout_kl(held, opts.batch, state["logit_kl"])})
        if state["step"] % opts.checkpoint_every == 0 or state["step"] == opts.steps:
            fitter.save_checkpoint(ckpt, state)
    bar.close()
    fit_seconds = time.perf_counter() - started
    tuned_kl = fitter.heldout_kl(held, opts.batch, state["logit_kl"])
    fit = {
        "options": asdict(opts),
        "train_tokens": n_train,
        "heldout_tokens": sum(len(s) for s in held),
        "steps": state["step"],
        "init": state.get("init"),
        "tokens_per_second": round(tokens / fit_seconds, 1) if tokens else None,
        "loss_history": history,
        "heldout_kl": {"logit": state["logit_kl"], "tuned": tuned_kl,
                       "after_init": state.get("heldout_after_init"), "during": state.get("evals")},
    }
    translator = fitter.translator()
    if not (torch.isfinite(translator.weight).all() and torch.isfinite(translator.bias).all()):
        raise InputError("the fit diverged (the translator holds NaN or infinity); lower --lr or use --init identity")
    save_lens(out_dir, translator, model, stages, {"fit": fit})
    ckpt.unlink(missing_ok=True)
    return fit


# ---- tuned-lens (Belrose et al.) lenses


TUNED_CONFIG_BYTES = 1 << 20  # a tuned-lens config.json is a few hundred bytes


def _regular(path: Path, what: str) -> int | None:
    """The size of ``path`` (links followed); None when it is missing; InputError when it is not a regular file (a
    FIFO would be waited on for ever, a device read without end)."""
    try:
        st = os.stat(path)
    except (FileNotFoundError, NotADirectoryError):
        return None
    except OSError as e:
        raise InputError(f"cannot read {path}: {e.strerror or e}") from None
    if not stat.S_ISREG(st.st_mode):
        raise InputError(f"{path} is not a regular file (a FIFO, device or folder); {what}")
    return st.st_size


def check_tuned_lens_folder(src: Path) -> dict:
    """The checked ``config.json`` of tuned-lens folder ``src`` (``d_model`` and ``num_hidden_layers`` positive
    integers), and its ``params.pt`` a regular file: before the model loads, and before ``torch.load`` opens a FIFO
    (waited on for ever) or a device (read without end)."""
    from .tuned import MAX_DIM

    src = Path(src).expanduser()
    if not src.is_dir():
        raise InputError(f"--import {src}: " + ("not a folder" if src.exists() else "folder not found"))
    path = src / "config.json"
    size = _regular(path, "name a tuned-lens folder (config.json + params.pt)")
    if size is None:
        raise InputError(f"{src} is not a tuned-lens folder (no config.json)")
    if size > TUNED_CONFIG_BYTES:
        raise InputError(f"{path} is {size} bytes: not a tuned-lens config (a few hundred bytes)")
    try:
        cfg = json.loads(path.read_bytes().decode("utf-8"))
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as e:
        raise InputError(f"cannot read {path}: {' '.join(str(e).split())[:200] or type(e).__name__}") from None
    if not isinstance(cfg, dict) or "d_model" not in cfg or "num_hidden_layers" not in cfg:
        raise InputError(f"{path} is not a tuned-lens config (d_model, num_hidden_layers)")
    for key in ("d_model", "num_hidden_layers"):  # JSON true, 2.5 or "32" is no size
        if not (is_int(cfg[key]) and 0 < cfg[key] <= MAX_DIM):
            raise InputError(f"{path}: {key} {str(cfg[key])[:40]} is not a positive integer")
    if cfg.get("lens_type", "linear_tuned_lens") != "linear_tuned_lens":
        raise InputError(f"{src}: lens type {str(cfg.get('lens_type'))[:60]!r} is not a linear tuned lens")
    if _regular(src / "params.pt", "name a tuned-lens folder (config.json + params.pt)") is None:
        raise InputError(f"{src} has no params.pt")
    return cfg


def import_tuned_lens(src: Path, loaded, out_dir: Path, log=None) -> dict:
    """Convert a tuned-lens folder (``config.json`` + ``params.pt``) for ``loaded``'s model to a lenskit lens folder.

    tuned-lens keeps one ``Linear(d_model, d_model)`` translator per hidden state 0..L-1 (``h + W h + b``; state i
    is what layer i receives), saved as ``layer_translators.state_dict()`` (keys ``{i}.weight`` / ``{i}.bias``).
    State 0 is lenskit's stage 0 (``embed``), state i >= 1 the output of layer i-1: stage 2i. Attention stages and
    the last stage have no translator there: identity, recorded as not covered. Parameters are read with
    ``torch.load(weights_only=True)`` only.
    """
    from ..capture import stage_names

    src = Path(src).expanduser()
    cfg = check_tuned_lens_folder(src)  # again: the command checked it before the model loaded, but files change
    try:
        state = torch.load(src / "params.pt", map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise InputError(f"{src} has no params.pt") from None
    except Exception as e:  # noqa: BLE001 (weights_only refuses anything but tensors and plain containers)
        raise InputError(f"cannot read {src / 'params.pt'} as plain tensors: {error_line(e)}") from None
    if not isinstance(state, dict) or not all(isinstance(k, str) for k in state):
        raise InputError(f"{src / 'params.pt'} does not hold a state dict (names -> tensors)")
    state = {k.removeprefix("layer_translators."): v for k, v in state.items()}
    fitter_model = model_record(loaded)
    L, D = cfg["num_hidden_layers"], cfg["d_model"]
    from ..lens import lens_from_model

    head = lens_from_model(loaded.model, loaded.adapter)
    if L != fitter_model["n_layers"] or D != head.hidden_size:
        raise InputError(f"the tuned lens in {src} is for {L} layers x d_model {D}; the model has "
                         f"{fitter_model['n_layers']} layers x {head.hidden_size}")
    S = 2 * L + 1
    tr = Translator.identity(S, D)
    for i in range(L):
        w = state.get(f"{i}.weight")
        if not isinstance(w, torch.Tensor) or tuple(w.shape) != (D, D):
            raise InputError(f"{src / 'params.pt'}: translator {i} weight missing or not [{D}, {D}]")
        b = state.get(f"{i}.bias")
        if b is not None and (not isinstance(b, torch.Tensor) or tuple(b.shape) != (D,)):
            raise InputError(f"{src / 'params.pt'}: translator {i} bias is not [{D}]")
        tr.weight[2 * i] = w.float()
        if b is not None:
            tr.bias[2 * i] = b.float()
        tr.covered[2 * i] = True
    if not (torch.isfinite(tr.weight).all() and torch.isfinite(tr.bias).all()):
        raise InputError(f"{src / 'params.pt'} holds NaN or infinite values")
    info = {"imported_from": {"path": str(src), "format": "tuned-lens", "config": cfg,
                              "mapping": "hidden state i -> stage 2i (embed, L{i-1}.ffn); attention and last stages: identity"}}
    save_lens(out_dir, tr, fitter_model, stage_names(L), info)
    if log:
        log(f"imported {L} translators from {src} (stages {', '.join(str(2 * i) for i in range(L))}; "
            f"{S - L} stages identity)")
    return info
