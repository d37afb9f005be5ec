"""int8 step graphs for the CPU: onnxruntime's dynamic quantization of the recurrent and MatMul weights (and the
embedding), judged by what it costs in validation loss and what it buys in speed and size."""

from __future__ import annotations

import logging
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
from onnxruntime.quantization import QuantType, quantize_dynamic

from rnnserve.training.batches import IGNORE

QUANTIZED_OPS = ["LSTM", "MatMul", "Gather"]  # onnxruntime has no int8 GRU or RNN: their MatMuls are quantized alone


def quantize_int8(model_bytes: bytes) -> bytes:
    """The graph with int8 weights, quantized dynamically (activations are quantized per call, at run time)."""
    with tempfile.TemporaryDirectory() as tmp:
        source, target = Path(tmp) / "fp32.onnx", Path(tmp) / "int8.onnx"
        source.write_bytes(model_bytes)
        logging.disable(logging.WARNING)  # its advice to pre-process is for convolutional image models
        try:
            quantize_dynamic(source, target, weight_type=QuantType.QInt8, op_types_to_quantize=QUANTIZED_OPS)
        finally:
            logging.disable(logging.NOTSET)
        return target.read_bytes()


def _session(model_bytes: bytes) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.log_severity_level = 3  # no notices about the quantized operators
    return ort.InferenceSession(model_bytes, options, providers=["CPUExecutionProvider"])


def validation_loss(model_bytes: bytes, batches, state: dict[str, str]) -> float:
    """Mean loss in nats per (unpadded) target of the graph over the task's validation batches, the state carried
    from batch to batch as in training (`state`: state input → the output that feeds it)."""
    session = _session(model_bytes)
    shapes = {i.name: i.shape[1:] for i in session.get_inputs() if i.name in state}
    carried: dict[str, np.ndarray] = {}
    total, count = 0.0, 0
    for batch in batches:
        tokens = batch.inputs.numpy()
        if batch.fresh or not carried:
            carried = {name: np.zeros([tokens.shape[0], *shapes[name]], np.float32) for name in state}
        logits, *rest = session.run(["logits", *state.values()], {"tokens": tokens, **carried})
        carried = dict(zip(state, rest))
        targets = batch.targets.numpy()
        kept = targets != IGNORE
        shifted = logits - logits.max(-1, keepdims=True)
        log_probs = shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))  # [B, T, V]
        picked = np.take_along_axis(log_probs, np.where(kept, targets, 0)[..., None], -1)[..., 0]
        total -= float(picked[kept].sum())
        count += int(kept.sum())
    return total / count


def step_seconds(model_bytes: bytes, batch: int, steps: int = 200) -> float:
    """Seconds per single step (T=1) of `batch` sequences, as the server runs them (idle threads not spinning)."""
    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    session = ort.InferenceSession(model_bytes, options, providers=["CPUExecutionProvider"])
    feeds = {i.name: np.zeros([batch, *i.shape[1:]], np.float32) for i in session.get_inputs() if i.name != "tokens"}
    feeds["tokens"] = np.ones((batch, 1), np.int64)
    for _ in range(steps // 10):  # warm up
        session.run(None, feeds)
    started = time.perf_counter()
    for _ in range(steps):
        session.run(None, feeds)
    return (time.perf_counter() - started) / steps


def quantization_report(fp32: bytes, int8: bytes, batches, state: dict[str, str]) -> dict:
    """What int8 changes: validation loss (both graphs through onnxruntime), step speed at batch 1 and 64, size."""
    fp32_loss, int8_loss = validation_loss(fp32, batches, state), validation_loss(int8, batches, state)
    report = {
        "kind": "int8",
        "method": "onnxruntime dynamic quantization, per-tensor int8 weights",
        "operators": QUANTIZED_OPS,
        "val_loss_nats_fp32": round(fp32_loss, 5),
        "val_loss_nats_int8": round(int8_loss, 5),
        "val_loss_increase_nats": round(int8_loss - fp32_loss, 5),
        "file_bytes_fp32": len(fp32),
        "file_bytes_int8": len(int8),
    }
    for batch in (1, 64):
        report[f"step_speedup_batch_{batch}"] = round(step_seconds(fp32, batch) / step_seconds(int8, batch), 2)
    return report
