"""The export step against its floor: a bare float32 matmul of the same shapes ([S*T, D] x [D, V]), same run."""

import pytest
import torch

from lenskit.export import ExportOptions, export_document
from lenskit.weights import lens_for_trace


@pytest.fixture(scope="module")
def real(tmp_path_factory):
    from typer.testing import CliRunner

    from lenskit.cli import app
    from lenskit.store import read_trace

    out = tmp_path_factory.mktemp("bench") / "run"
    res = CliRunner().invoke(app, ["trace", "-o", str(out), "-q", "--no-export"])
    assert res.exit_code == 0, res.output
    trace = read_trace(out)
    lens, tok = lens_for_trace(trace.meta)
    return trace, lens, tok


@pytest.mark.benchmark(group="export")
def test_bare_float32_matmul(benchmark, real):
    trace, lens, _ = real
    S, T, D = trace.stages(0).shape
    V = lens.weight.shape[0]
    benchmark.extra_info.update(role="baseline", shape=f"{S * T}x{D}x{V}", gflop=round(2 * S * T * D * V / 1e9))
    benchmark.pedantic(_bare_matmul(trace, lens), rounds=3, warmup_rounds=1)


def _bare_matmul(trace, lens):
    """The floor of :func:`test_bare_float32_matmul` as a function: the same shapes and 1,024-row blocks."""
    stages = trace.stages(0).float()  # [S, T, D]
    S, T, D = stages.shape
    with torch.inference_mode():
        x = lens.normed(stages.reshape(S * T, D))  # [S*T, D]
    w_t = lens.weight.t().contiguous()  # [D, V]
    out = torch.empty(1024, w_t.shape[1])

    @torch.inference_mode()
    def matmul():
        for i in range(0, S * T, 1024):
            xb = x[i: i + 1024]
            torch.matmul(xb, w_t, out=out[: len(xb)])

    return matmul


@pytest.mark.benchmark(group="export-interleaved")
def test_export_interleaved(benchmark, real):
    """The float32 export step, each round right after a bare float32 matmul round (timed in the round's setup): a
    shared VM's speed drifts over minutes, so each round's ratio compares two runs seconds apart. ``extra_info``
    holds every round's ratio and their median (the figure the README quotes)."""
    import time

    trace, lens, tok = real
    stages = trace.stages(0)
    matmul = _bare_matmul(trace, lens)
    bare: list[float] = []

    def setup():
        t0 = time.perf_counter()
        matmul()
        bare.append(time.perf_counter() - t0)

    matmul()  # warm-up of the floor (the subject's warm-up round below runs after one more)
    benchmark.pedantic(
        lambda: export_document(trace.meta, lens, tok, lambda i: (lambda p0, p1: stages[:, p0:p1]), ExportOptions()),
        setup=setup, rounds=5, warmup_rounds=1,
    )
    times = [d for d in benchmark.stats.stats.data]
    ratios = sorted(t / b for t, b in zip(times, bare[-len(times):]))
    benchmark.extra_info.update(role="paired", bare_s=[round(b, 3) for b in bare[-len(times):]],
                                ratios=[round(r, 3) for r in ratios], median_ratio=round(ratios[len(ratios) // 2], 3))


@pytest.mark.parametrize("kernels", ["fused", "torch"])
@pytest.mark.parametrize("precision", ["float32", "fast", "bf16"])
@pytest.mark.benchmark(group="export")
def test_export_step(benchmark, real, precision, kernels, monkeypatch):
    """``kernels="torch"``: the statistics' torch implementation (``LENSKIT_KERNELS=torch``), the fused numba
    kernel's reference; fast mode always uses it, so only its float32 run is measured."""
    if kernels == "torch" and precision != "float32":
        pytest.skip("fast mode always runs the torch statistics; bf16 differs from float32 only in the GEMM")
    if kernels == "torch":
        monkeypatch.setenv("LENSKIT_KERNELS", "torch")
    trace, lens, tok = real
    stages = trace.stages(0)
    benchmark.extra_info.update(role="subject", precision=precision, kernels=kernels)
    opts = ExportOptions(precision=precision)
    benchmark.pedantic(
        lambda: export_document(trace.meta, lens, tok, lambda i: (lambda p0, p1: stages[:, p0:p1]), opts),
        rounds=3 if precision == "float32" else 1, warmup_rounds=1 if precision == "float32" else 0,
    )


needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")


def _gflop(trace, lens):
    S, T = len(trace.meta["stages"]), len(trace.meta["prompts"][0]["token_ids"])
    D, V = lens.weight.shape[1], lens.weight.shape[0]
    return 2 * S * T * D * V / 1e9


@needs_cuda
@pytest.mark.benchmark(group="export-cuda")
def test_bare_bf16_matmul_cuda(benchmark, real):
    """The GPU floor: a bare bf16 matmul of the same shapes, on the GPU, synchronised around the clock."""
    trace, lens, _ = real
    stages = trace.stages(0).float()  # [S, T, D]
    S, T, D = stages.shape
    with torch.inference_mode():
        x = lens.normed(stages.reshape(S * T, D)).cuda().bfloat16()  # [S*T, D]
    w_t = lens.weight.t().contiguous().cuda().bfloat16()  # [D, V]
    gflop = _gflop(trace, lens)
    benchmark.extra_info.update(role="baseline", gflop=round(gflop))

    @torch.inference_mode()
    def matmul():
        for i in range(0, S * T, 4096):
            torch.matmul(x[i: i + 4096], w_t)
        torch.cuda.synchronize()

    benchmark.pedantic(matmul, rounds=5, warmup_rounds=2)
    benchmark.extra_info["tflops"] = round(gflop / benchmark.stats.stats.median / 1000, 1)


@needs_cuda
@pytest.mark.parametrize("precision", ["float32", "fast", "bf16"])
@pytest.mark.benchmark(group="export-cuda")
def test_export_step_cuda(benchmark, real, precision):
    trace, lens, tok = real
    stages = trace.stages(0)
    gflop = _gflop(trace, lens)
    benchmark.extra_info.update(role="subject", precision=precision)
    opts = ExportOptions(precision=precision, device="cuda")

    def run():
        export_document(trace.meta, lens, tok, lambda i: (lambda p0, p1: stages[:, p0:p1]), opts)
        torch.cuda.synchronize()

    benchmark.pedantic(run, rounds=3, warmup_rounds=1)
    benchmark.extra_info["tflops"] = round(gflop / benchmark.stats.stats.median / 1000, 1)
