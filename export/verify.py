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
    """Max abs differences of logits and final state between PyTorch and onnxruntime.

    The initial state is random, not zeros, so a graph that ignored its state inputs would fail.
    """
    config = model.config
    generator = torch.Generator().manual_seed(seed)
    tokens = torch.randint(0, config.vocab_size, (batch, steps), generator=generator)  # [B, T]
    state = tuple(0.5 * torch.randn(batch, config.layers, config.hidden, generator=generator) for _ in config.state_names)
    with torch.no_grad():
        logits, next_state = model.eval()(tokens, tuple(s.transpose(0, 1) for s in state))
    expected = [logits.numpy(), *(s.transpose(0, 1).numpy() for s in next_state)]

    session = ort.InferenceSession(model_bytes, providers=["CPUExecutionProvider"])
    feeds = dict(zip(config.state_names, (s.numpy() for s in state)))
    whole = session.run(None, {"tokens": tokens.numpy(), **feeds})

    step_logits = []
    for t in range(steps):
        logits_t, *next_feeds = session.run(None, {"tokens": tokens[:, t : t + 1].numpy(), **feeds})
        step_logits.append(logits_t)
        feeds = dict(zip(config.state_names, next_feeds))
    stepwise = [np.concatenate(step_logits, axis=1), *feeds.values()]

    names = ["logits", *(state_output_name(n) for n in config.state_names)]
    whole_diff = {n: float(np.abs(a - b).max()) for n, a, b in zip(names, whole, expected)}
    step_diff = {n: float(np.abs(a - b).max()) for n, a, b in zip(names, stepwise, expected)}
    worst = max(*whole_diff.values(), *step_diff.values())
    return {
        "tolerance": TOLERANCE,
        "batch": batch,
        "steps": steps,
        "max_abs_diff_whole_sequence": whole_diff,
        "max_abs_diff_step_by_step": step_diff,
        "max_abs_diff": worst,
        "passed": worst <= TOLERANCE,
    }


def check_parity(report: dict) -> None:
    if not report["passed"]:
        raise ParityError(
            f"ONNX output differs from PyTorch by {report['max_abs_diff']:.3g} (tolerance {report['tolerance']:g}): "
            f"whole sequence {report['max_abs_diff_whole_sequence']}, step by step {report['max_abs_diff_step_by_step']}"
        )
