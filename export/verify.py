"""Parity of the exported graph against PyTorch: whole sequence (T=n) and step by step (T=1, n times)."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import torch

from export.graphs import state_output_name
from training.models import RecurrentNet

TOLERANCE = 1e-4


class ParityError(RuntimeError):
    pass


def parity_report(model: RecurrentNet, model_bytes: bytes, steps: int = 24, batch: int = 3, seed: int = 0) -> dict:
    """Max abs differences of logits and final state between PyTorch and onnxruntime, for the whole
    sequence at once and, for a model that carries state, for T=1 steps fed their own state back.

    The initial state is random, not zeros, so a graph that ignored its state inputs would fail.
    """
    config = model.config
    names = config.served_state_names
    generator = torch.Generator().manual_seed(seed)
    tokens = torch.randint(0, config.vocab_size, (batch, steps), generator=generator)  # [B, T]
    state = tuple(0.5 * torch.randn(batch, config.layers, config.hidden, generator=generator) for _ in names)
    with torch.no_grad():
        logits, next_state = model.eval()(tokens, tuple(s.transpose(0, 1) for s in state) if names else None)
    expected = [logits.numpy(), *(s.transpose(0, 1).numpy() for s in next_state[: len(names)])]

    session = ort.InferenceSession(model_bytes, providers=["CPUExecutionProvider"])
    feeds = dict(zip(names, (s.numpy() for s in state)))
    whole = session.run(None, {"tokens": tokens.numpy(), **feeds})
    outputs = ["logits", *(state_output_name(n) for n in names)]
    report = {"tolerance": TOLERANCE, "batch": batch, "steps": steps}
    report["max_abs_diff_whole_sequence"] = {n: float(np.abs(a - b).max()) for n, a, b in zip(outputs, whole, expected)}

    if names:
        step_logits = []
        for t in range(steps):
            logits_t, *next_feeds = session.run(None, {"tokens": tokens[:, t : t + 1].numpy(), **feeds})
            step_logits.append(logits_t)
            feeds = dict(zip(names, next_feeds))
        stepwise = [np.concatenate(step_logits, axis=1), *feeds.values()]
        report["max_abs_diff_step_by_step"] = {n: float(np.abs(a - b).max()) for n, a, b in zip(outputs, stepwise, expected)}
    worst = max(v for key in ("max_abs_diff_whole_sequence", "max_abs_diff_step_by_step") for v in report.get(key, {}).values())
    return report | {"max_abs_diff": worst, "passed": worst <= TOLERANCE}


def check_parity(report: dict) -> None:
    if not report["passed"]:
        raise ParityError(
            f"ONNX output differs from PyTorch by {report['max_abs_diff']:.3g} (tolerance {report['tolerance']:g}): "
            f"whole sequence {report['max_abs_diff_whole_sequence']}, step by step {report.get('max_abs_diff_step_by_step')}"
        )
