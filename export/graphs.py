"""PyTorch → ONNX step graph: (tokens, state) → (logits, next state), with batch-major state."""

from __future__ import annotations

import io
import warnings

import torch
from torch import nn

from training.models import RecurrentNet

OPSET = 17


class StepGraph(nn.Module):
    """Wraps a RecurrentNet so every state tensor is [batch, layers, hidden]: one sequence is one row,
    which is what lets the server keep all sequences' states in one slab and gather rows into a batch."""

    def __init__(self, model: RecurrentNet):
        super().__init__()
        self.model = model

    def forward(self, tokens: torch.Tensor, *state: torch.Tensor):
        if not state:  # a whole-sequence graph (bidirectional): every call starts from the initial state
            return self.model(tokens, None)[0]
        torch_state = tuple(s.transpose(0, 1).contiguous() for s in state)  # each [layers, B, H]
        logits, next_state = self.model(tokens, torch_state)  # [B, T, V]
        return (logits, *(s.transpose(0, 1) for s in next_state))  # each [B, layers, H]


def state_output_name(name: str) -> str:
    return f"{name}_next"


def export_step_graph(model: RecurrentNet) -> bytes:
    """The serialized ONNX model, T and batch dynamic: a step graph (state in, next state out), or for a
    bidirectional model a whole-sequence graph with no state.

    dynamo=False maps nn.LSTM/GRU/RNN to ONNX's fused recurrent operators, which onnxruntime runs fast;
    the parity check in export/verify.py decides whether the result is right.
    """
    config = model.config
    names = config.served_state_names
    graph = StepGraph(model.eval())
    tokens = torch.zeros(2, 3, dtype=torch.long)
    state = tuple(torch.zeros(2, config.layers, config.hidden) for _ in names)
    state_outputs = [state_output_name(n) for n in names]
    dynamic = {"tokens": {0: "batch", 1: "T"}, "logits": {0: "batch", 1: "T"}}
    dynamic |= {n: {0: "batch"} for n in (*names, *state_outputs)}
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the recurrent-op and batch_first notices are expected here
        torch.onnx.export(
            graph,
            (tokens, *state),
            buffer,
            dynamo=False,
            opset_version=OPSET,
            input_names=["tokens", *names],
            output_names=["logits", *state_outputs],
            dynamic_axes=dynamic,
        )
    return buffer.getvalue()
