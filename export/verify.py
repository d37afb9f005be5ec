"""Parity of an exported graph against PyTorch: the whole sequence at once (T=n) and, for a graph that carries
state, step by step (T=1, n times, each step fed the state the previous one returned)."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import torch

from rnnserve.contract import PARITY_TOLERANCE
from rnnserve.export.graphs import GraphSpec

TOLERANCE = PARITY_TOLERANCE


class ParityError(RuntimeError):
    pass


def _diffs(names: list[str], got: list[np.ndarray], expected: list[np.ndarray], relative: bool = False) -> dict[str, float]:
    """Each output's largest difference: absolute, or (`relative`) over the expected value's size where that is
    past 1, for values in a series' own units, whose float32 rounding grows with them."""
    return {
        n: float((np.abs(a - b) / (np.maximum(1.0, np.abs(b)) if relative else 1.0)).max()) for n, a, b in zip(names, got, expected)
    }


def parity_report(spec: GraphSpec, model_bytes: bytes, steps: int = 24, batch: int = 3, seed: int = 0) -> dict:
    """Max abs differences of every output between the PyTorch module the graph was exported from and
    onnxruntime running the graph."""
    inputs = spec.sample(batch, steps, torch.Generator().manual_seed(seed))
    with torch.no_grad():
        expected = spec.module(*(inputs[n] for n in spec.input_names))
    expected = [t.numpy() for t in (expected if isinstance(expected, tuple) else (expected,))]

    session = ort.InferenceSession(model_bytes, providers=["CPUExecutionProvider"])
    feeds = {n: t.numpy() for n, t in inputs.items()}
    whole = session.run(spec.output_names, feeds)
    report = {"tolerance": TOLERANCE, "batch": batch, "steps": steps}
    report["max_abs_diff_whole_sequence"] = _diffs(spec.output_names, whole, expected, spec.relative)

    if spec.state:
        stepped = spec.input_names[0]  # token ids, or values
        per_step: dict[str, list[np.ndarray]] = {n: [] for n in spec.per_step}
        for t in range(steps):
            outputs = dict(zip(spec.output_names, session.run(spec.output_names, feeds | {stepped: feeds[stepped][:, t : t + 1]})))
            for name in spec.per_step:
                per_step[name].append(outputs[name])
            feeds |= {state: outputs[output] for state, output in spec.state.items()}
            stepwise = {n: np.concatenate(per_step[n], axis=1) for n in spec.per_step}
        stepwise |= {output: feeds[state] for state, output in spec.state.items()}
        names = [n for n in spec.output_names if n in stepwise]
        report["max_abs_diff_step_by_step"] = _diffs(
            names, [stepwise[n] for n in names], [expected[spec.output_names.index(n)] for n in names], spec.relative
        )
    worst = max(v for key in ("max_abs_diff_whole_sequence", "max_abs_diff_step_by_step") for v in report.get(key, {}).values())
    return report | {"max_abs_diff": worst, "passed": worst <= TOLERANCE}


def check_parity(report: dict, graph: str = "step graph") -> None:
    if not report["passed"]:
        raise ParityError(
            f"{graph}: ONNX output differs from PyTorch by {report['max_abs_diff']:.3g} (tolerance {report['tolerance']:g}): "
            f"whole sequence {report['max_abs_diff_whole_sequence']}, step by step {report.get('max_abs_diff_step_by_step')}"
        )
