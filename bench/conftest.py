"""Benchmarks report each subject as a ratio to a baseline measured in the same run (machines are noisy).

Tests in one ``group`` named ``baseline``/``subject`` via ``benchmark.extra_info['role']``; the summary at the end
prints subject/baseline ratios of the median times.
"""

import os

os.environ.setdefault("LENSKIT_LOAD_PLUGINS", "0")
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def pytest_terminal_summary(terminalreporter, config):
    session = getattr(config, "_benchmarksession", None)
    if session is None or not session.benchmarks:
        return
    groups: dict = {}
    for b in session.benchmarks:
        if b.stats is None:
            continue
        groups.setdefault(b.group, []).append(b)
    terminalreporter.section("lenskit ratios (median time / baseline median, same run)")
    for group, benches in sorted(groups.items(), key=lambda kv: str(kv[0])):
        base = [b for b in benches if b.extra_info.get("role") == "baseline"]
        for b in benches:
            if b.extra_info.get("role") == "paired":  # its own baseline, round by round (see its docstring)
                terminalreporter.write_line(f"{group:>16} | {b.name:<44} median ratio {b.extra_info['median_ratio']:5.2f}x  "
                                            f"rounds {b.extra_info['ratios']}  bare {b.extra_info['bare_s']}")
        if not base:
            continue
        b0 = base[0].stats.median
        for b in benches:
            extra = {k: v for k, v in b.extra_info.items() if k != "role"}
            terminalreporter.write_line(
                f"{group:>16} | {b.name:<44} median {b.stats.median:8.3f}s  ratio {b.stats.median / b0:5.2f}x  {extra or ''}"
            )
