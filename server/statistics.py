"""A model version's cumulative statistics as Triton keeps them (its ModelStatistics call), so that Triton's tools,
perf_analyzer above all, show the server's own side of what they measure: requests, queueing, compute, executions.

Two threads write, each its own fields: the event loop counts requests as they finish (success, fail, the last
inference), the engine thread counts executions and what each request in them waited and cost (queue, compute,
per batch size). Plain integers, then, with no lock: a field with one writer never loses an update."""

from __future__ import annotations

import time
from dataclasses import dataclass, field


@dataclass(slots=True)
class Duration:
    """A cumulative count and duration, as Triton's StatisticDuration."""

    count: int = 0
    ns: int = 0

    def add(self, seconds: float, count: int = 1) -> None:
        self.count += count
        self.ns += int(seconds * 1e9)


@dataclass(slots=True)
class BatchDurations:
    """The executions of one batch size."""

    compute_input: Duration = field(default_factory=Duration)
    compute_infer: Duration = field(default_factory=Duration)
    compute_output: Duration = field(default_factory=Duration)


@dataclass(slots=True)
class InferenceStatistics:
    success: Duration = field(default_factory=Duration)
    fail: Duration = field(default_factory=Duration)
    queue: Duration = field(default_factory=Duration)
    compute_input: Duration = field(default_factory=Duration)
    compute_infer: Duration = field(default_factory=Duration)
    compute_output: Duration = field(default_factory=Duration)
    inference_count: int = 0
    execution_count: int = 0
    last_inference_ms: int = 0
    batches: dict[int, BatchDurations] = field(default_factory=dict)

    def request(self, seconds: float, succeeded: bool, requests: int = 1) -> None:
        """Requests finished (the event loop): one, or a multiplexed message's many that took `seconds` each."""
        (self.success if succeeded else self.fail).add(seconds * requests, requests)
        if succeeded:
            self.last_inference_ms = int(time.time() * 1000)

    def execution(self, rows: int, waits_s: list[float], infer_s: float, output_s: float) -> None:
        """One onnxruntime call of `rows` sequences (the engine thread). Each request in it is charged the whole
        call, as Triton charges every request of a batch; `waits_s`: the queue waits of the requests that queued."""
        self.execution_count += 1
        self.inference_count += rows
        self.queue.add(sum(waits_s), len(waits_s))
        self.compute_input.add(0.0, rows)
        self.compute_infer.add(infer_s * rows, rows)
        self.compute_output.add(output_s * rows, rows)
        batch = self.batches.get(rows)
        if batch is None:
            batch = self.batches[rows] = BatchDurations()
        batch.compute_input.add(0.0)
        batch.compute_infer.add(infer_s)
        batch.compute_output.add(output_s)
