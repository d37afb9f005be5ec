"""How much of a long input the engine runs in one call, so that other sessions' steps run in between.

A long input (a prompt, a chunk, a KServe batch's rows) runs in pieces, each a call of its own, and its rows still
get one answer each. A piece is what the engine has measured to take about the budget: as many steps as fit, and
first, when one step of all its rows is over the budget, as few rows as fit one step (or a single step of 64 rows of
a large model would be what others wait for). The budget is `budget_s` while other sessions are being served, and
`idle_budget_s` when none have been for `others_recent_s`: pieces cost the long input itself (each call gathers
state and starts anew, and a step reads all the weights whatever its width, so 16 rows a call can take twice as
long as 64 in all), and with nobody waiting, only a newcomer's first step waits for a larger piece. Until a call of
about that many rows has been measured, a piece is `first_row_steps` rows × steps. A single step is never split:
its rows are independent steps (streams, a [B, 1] batch) that would only wait longer in smaller calls.

Pure arithmetic on measured seconds, kept apart from the engine thread so it can be tested without one.
"""

from __future__ import annotations

BUDGET_S = 0.002  # the most a piece should take while others are served: what another session's step may wait for
IDLE_BUDGET_S = 0.016  # the most it should take while nobody else is served: what a newcomer's first step may wait for
FIRST_ROW_STEPS = 64  # a piece's rows × steps before anything is measured
MIN_ROW_STEPS = 8  # a piece is at least this many rows × steps (or one step): smaller calls cost mostly themselves
OTHERS_RECENT_S = 1.0  # rows are split while other steps were served this recently


def bucket(rows: int) -> int:
    """Rows rounded up to a power of two: calls of about the same width share a measurement."""
    return 1 << (rows - 1).bit_length()


class Pieces:
    def __init__(self, budget_s: float = BUDGET_S, idle_budget_s: float = IDLE_BUDGET_S, first_row_steps: int = FIRST_ROW_STEPS,
                 min_row_steps: int = MIN_ROW_STEPS, others_recent_s: float = OTHERS_RECENT_S):
        self.budget_s = budget_s
        self.idle_budget_s = idle_budget_s
        self.first_row_steps = first_row_steps
        self.min_row_steps = min_row_steps
        self.others_recent_s = others_recent_s
        self._step_s: dict[int, float] = {}  # bucket of rows → seconds per step, a moving average of calls
        self._others_at: float | None = None  # when steps other than a long input's were last served

    def others_served(self, at: float) -> None:
        """Steps that are not a long input's pieces ran at `at` (time.perf_counter()): others are being served."""
        self._others_at = at

    def plan(self, rows: int, steps: int, now: float) -> tuple[int, int]:
        """(rows, steps) of the next piece of a `rows` × `steps` input at `now`: the whole of it when it fits."""
        if steps <= 1:
            return rows, steps
        per_step = self.step_seconds(rows)
        if per_step is None:
            return rows, min(steps, max(1, self.first_row_steps // rows))
        others = self._others_at is not None and now - self._others_at < self.others_recent_s
        budget = self.budget_s if others else self.idle_budget_s
        while rows > 1 and per_step > budget:  # a step of these rows is over the budget: fewer rows
            rows = (rows + 1) // 2
            per_step = self.step_seconds(rows)
        fit = max(1, self.min_row_steps // rows, int(budget / per_step))
        return rows, min(steps, fit)

    def step_seconds(self, rows: int) -> float | None:
        """Seconds a step of `rows` rows takes: measured at that width, or scaled in proportion to rows from the
        nearest width measured (an estimate until that width runs); None before any call was measured."""
        wanted = bucket(rows)
        if wanted in self._step_s:
            return self._step_s[wanted]
        if not self._step_s:
            return None
        nearest = min(self._step_s, key=lambda measured: max(measured, wanted) / min(measured, wanted))
        return self._step_s[nearest] * wanted / nearest

    def measured(self, rows: int, steps: int, seconds: float) -> None:
        """A call of `rows` × `steps` took `seconds`. Calls under min_row_steps are not counted: in them the call's
        own cost (the gather, onnxruntime's start) would be taken for the steps'."""
        if rows * steps < self.min_row_steps:
            return
        key, per_step = bucket(rows), seconds / steps
        self._step_s[key] = per_step if key not in self._step_s else 0.8 * self._step_s[key] + 0.2 * per_step
