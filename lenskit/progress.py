"""Progress on stderr for the long steps (dequantising, tracing, exporting): a tqdm bar with rate and ETA when stderr
is a terminal, otherwise a plain line every 10% (what a log file or CI wants); nothing at all with ``-q``."""

from __future__ import annotations

import sys
import time


class Progress:
    """``update(n)`` as work is done; ``close()`` at the end. ``log`` is the command's logger (None when quiet)."""

    def __init__(self, total: int, desc: str, unit: str, log=None):
        self.total, self.desc, self.unit, self.log = total, desc, unit, log
        self.done, self.started, self._next = 0, time.perf_counter(), 0.1
        self.bar = None
        if log is not None and total > 0 and sys.stderr.isatty():
            from tqdm import tqdm

            self.bar = tqdm(total=total, desc=f"lenskit: {desc}", unit=f" {unit}", file=sys.stderr, leave=False,
                            mininterval=0.2)

    def update(self, n: int) -> None:
        self.done += n
        if self.bar is not None:
            self.bar.update(n)
        elif self.log is not None and self.total and self.done < self.total and self.done >= self._next * self.total:
            while self._next * self.total <= self.done:
                self._next += 0.1
            self.log(f"{self.desc}: {self.done}/{self.total} {self.unit} ({time.perf_counter() - self.started:.1f}s)")

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
