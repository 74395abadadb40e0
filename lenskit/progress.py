"""Progress on stderr for the long steps (dequantising a GGUF, tracing, exporting): a tqdm bar with rate and ETA when
stderr is a terminal, otherwise plain ``lenskit: ...`` lines (what a log file or CI wants); nothing at all with ``-q``.

This module owns progress output: commands make a ``log`` with :func:`progress_logger` (None when quiet) and long
steps wrap their work in a :class:`Progress`.
"""

from __future__ import annotations

import sys
import time


def progress_logger(quiet: bool):
    """A ``log(msg)`` that writes ``lenskit: msg`` to stderr unless ``quiet`` (then None).

    The stream is the one in place now, so the lines still show while transformers' own chatter is redirected.
    """
    if quiet:
        return None
    err = sys.stderr
    return lambda msg: print(f"lenskit: {msg}", file=err, flush=True)


def is_terminal(stream) -> bool:
    """Whether ``stream`` is an interactive terminal (where a carriage-return bar belongs)."""
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return False


class Progress:
    """``update(n)`` as work is done, ``note(msg)`` to say what is being done, ``close()`` at the end.

    ``log`` is the command's logger (None when quiet: silent). On a terminal: a tqdm bar (``unit="%"``: a percentage
    bar for work measured in shares, not counts), the notes shown beside it. Elsewhere, plain lines through ``log``:
    one every ``every`` of the total, or, with ``every=None``, each note instead.
    """

    def __init__(self, total: float | None, desc: str, unit: str, log=None, every: float | None = 0.1):
        self.total, self.desc, self.unit, self.log, self.every = total, desc, unit, log, every
        self.done, self.started, self._tick = 0, time.perf_counter(), 0
        self.bar = None
        stream = sys.stderr  # now: a step may redirect sys.stderr later (models.quiet_transformers)
        if log is not None and (total is None or total > 0) and is_terminal(stream):  # None: a counter, no ETA
            from tqdm import tqdm

            fmt = "{desc}: {percentage:3.0f}%|{bar}| [{elapsed}<{remaining}{postfix}]" if unit == "%" else None
            self.bar = tqdm(total=total, desc=f"lenskit: {desc}", unit=f" {unit}", file=stream, leave=False,
                            mininterval=0.2, bar_format=fmt)

    def update(self, n: float) -> None:
        self.done += n
        if self.bar is not None:
            self.bar.update(n)
        elif self.log is not None and self.every and self.total and self.done < self.total:
            tick = int(self.done / self.total / self.every + 1e-9)  # how many ``every``s are done
            if tick <= self._tick:
                return
            self._tick = tick
            count = f"{self.done / self.total:.0%}" if self.unit == "%" else f"{self.done}/{self.total} {self.unit}"
            self.log(f"{self.desc}: {count} ({time.perf_counter() - self.started:.1f}s)")

    def update_to(self, done: float) -> None:
        """Move to ``done`` (never backwards)."""
        if done > self.done:
            self.update(done - self.done)

    def note(self, msg: str) -> None:
        """Say what is being done now: beside the bar, or as a plain line when ``every`` is None."""
        if self.bar is not None:
            self.bar.set_postfix_str(msg)
        elif self.log is not None and self.every is None:
            self.log(msg)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
