"""Training progress for people: a bar that redraws itself on a terminal, and a plain line every few seconds
anywhere else (a log file or a pipe would fill up with redraws)."""

from __future__ import annotations

import sys
import time

from tqdm import tqdm


class ProgressReport:
    """Counts steps (with a step budget) or seconds (with a time budget) towards `total`."""

    def __init__(self, total: int, done: int, unit: str, quiet: bool, interval_s: float):
        self._total, self._unit, self._interval_s = total, unit, interval_s
        self._quiet = quiet
        self._bar = None
        if not quiet and sys.stderr.isatty():
            self._bar = tqdm(
                total=total,
                initial=done,
                unit=unit,
                # with a time budget the bar counts seconds; its rate would only say "1 s/s"
                bar_format=None if unit == "step" else "{l_bar}{bar}| {n_fmt}/{total_fmt} s [{elapsed}<{remaining}{postfix}]",
                dynamic_ncols=True,
                mininterval=1.0,
            )
        self._started = time.monotonic()
        self._first = done
        self._last_line = float("-inf")

    def update(self, done: int, **figures: str) -> None:
        """`done` steps or seconds of `total` so far; `figures` (loss, speed) are shown beside them."""
        if self._bar is not None:
            self._bar.update(done - self._bar.n)
            self._bar.set_postfix(figures, refresh=False)
        elif not self._quiet and time.monotonic() - self._last_line >= self._interval_s:
            self._last_line = time.monotonic()
            print(self._line(done, figures), file=sys.stderr, flush=True)

    def write(self, message: str) -> None:
        """A message (an evaluation, a sample) on its own line, on standard output."""
        if self._quiet:
            return
        if self._bar is not None:
            self._bar.write(message)
        else:
            print(message, flush=True)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()

    def _line(self, done: int, figures: dict[str, str]) -> str:
        elapsed = time.monotonic() - self._started
        rate = (done - self._first) / elapsed if elapsed > 0 else 0.0
        remaining = f", about {tqdm.format_interval((self._total - done) / rate)} left" if rate > 0 else ""
        shown = "".join(f", {name} {value}" for name, value in figures.items())
        return f"{done}/{self._total} {self._unit}s ({100 * done / self._total:.0f}%){remaining}{shown}"
