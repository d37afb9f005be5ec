"""PyTorch → ONNX graphs with batch-major state (one sequence is one row, which is what lets the server keep
all sequences' states in one slab and gather rows into a batch).

Every model has a step graph, (tokens, state) → (per-step outputs, next state). A model whose initial state
depends on a request also has an encoder graph: a class label → the state (conditional language model), or
a source text → the decoder's state and the memory it attends over (encoder–decoder).
"""

from __future__ import annotations

import contextlib
import io
import os
import sys
import tempfile
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import torch
from torch import nn

from rnnserve.contract import ContractError

OPSET = 17
ENCODER_FILE = "encoder.onnx"


def state_output_name(name: str) -> str:
    return f"{name}_next"


@dataclass
class GraphSpec:
    """A graph to export and check: the wrapper module, how to make inputs for it, and what flows where."""

    module: nn.Module
    input_names: list[str]
    output_names: list[str]
    dynamic: dict[str, dict[int, str]]
    sample: Callable[[int, int, torch.Generator], dict[str, torch.Tensor]]  # (batch, steps, generator) → inputs
    state: dict[str, str] = field(default_factory=dict)  # state input → the output carried into it next step
    per_step: tuple[str, ...] = ()  # outputs with a T axis (axis 1)
    relative: bool = False  # parity relative to each value's size past 1 (values in a series' own units: ppm, say)


class _StepGraph(nn.Module):
    """RecurrentNet, batch-major: (tokens, *state [B, layers, H]) → (logits, *next state)."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, tokens: torch.Tensor, *state: torch.Tensor):
        if not state:  # a whole-sequence graph (bidirectional): every call starts from the initial state
            return self.model(tokens, None)[0]
        logits, next_state = self.model(tokens, tuple(s.transpose(0, 1).contiguous() for s in state))
        return (logits, *(s.transpose(0, 1) for s in next_state))


class _ValueStepGraph(nn.Module):
    """ValueNet, batch-major: (values [B, T, F], *state [B, layers, H]) → (*what a client is answered, *next state)."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, values: torch.Tensor, *state: torch.Tensor):
        recurrent = len(self.model.config.state_names)  # in PyTorch's layout; a forecaster's last values are batch-major
        theirs = (*(s.transpose(0, 1).contiguous() for s in state[:recurrent]), *state[recurrent:])
        head, next_state = self.model(values, theirs)
        return (*self.model.served(head, values), *(s.transpose(0, 1) for s in next_state[:recurrent]), *next_state[recurrent:])


def _value_step_graph(model) -> GraphSpec:
    config = model.config
    recurrent = list(config.served_state_names)
    served = list(config.value_outputs)
    outputs = [*served, *(state_output_name(n) for n in recurrent)]
    dynamic = {"values": {0: "batch", 1: "T"}} | {n: {0: "batch", 1: "T"} for n in served}
    dynamic |= {n: {0: "batch"} for n in (*recurrent, *(state_output_name(n) for n in recurrent))}

    def sample(batch: int, steps: int, generator: torch.Generator) -> dict[str, torch.Tensor]:
        """Values around the training data's own (raw units), and a random state."""
        values = torch.randn(batch, steps, config.inputs, generator=generator) * model.input_scale + model.input_mean
        state = _random_state(model, batch, generator)
        if "previous" in state:  # a forecaster's last values read, in the data's range too
            state["previous"] = state["previous"] * model.input_scale + model.input_mean
        return {"values": values} | state

    return GraphSpec(
        _ValueStepGraph(model).eval(), ["values", *recurrent], outputs, dynamic, sample,
        state={n: state_output_name(n) for n in recurrent}, per_step=tuple(served), relative=True,
    )


class _DecoderStepGraph(nn.Module):
    """EncoderDecoder's decoder, batch-major: (tokens, *recurrent, memory, mask) → (logits, *next recurrent,
    attention). Memory and mask do not change from step to step: the server keeps them, they are not output."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, tokens: torch.Tensor, *state: torch.Tensor):
        *recurrent, memory, mask = state
        logits, next_state, attention = self.model(
            tokens, (*(s.transpose(0, 1).contiguous() for s in recurrent), memory, mask), attention=True
        )
        return (logits, *(s.transpose(0, 1) for s in next_state[: len(recurrent)]), attention)


class _EncoderGraph(nn.Module):
    """label [B] → initial state, or source [B, S] → (*recurrent, memory, mask); batch-major."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor):
        if self.model.config.encoder_decoder:
            *recurrent, memory, mask = self.model.encode(x)
            return (*(s.transpose(0, 1) for s in recurrent), memory, mask)
        return tuple(s.transpose(0, 1) for s in self.model.initial_state(x.size(0), x))


def _random_state(model, batch: int, generator: torch.Generator) -> dict[str, torch.Tensor]:
    """Random, not zeros, so a graph that ignored its state inputs would fail the parity check."""
    config = model.config
    state = {n: 0.5 * torch.randn(batch, *config.state_shape(n), generator=generator) for n in config.served_state_names}
    if config.encoder_decoder:
        source = 7
        state["memory"] = torch.randn(batch, source, config.hidden, generator=generator)
        lengths = torch.randint(1, source + 1, (batch,), generator=generator)
        state["mask"] = (torch.arange(source)[None, :] < lengths[:, None]).float()
    return state


def step_graph(model) -> GraphSpec:
    config = model.config
    if config.inputs:
        return _value_step_graph(model)
    recurrent = list(config.served_state_names)
    names = [*recurrent, "memory", "mask"] if config.encoder_decoder else recurrent
    outputs = ["logits", *(state_output_name(n) for n in recurrent)] + (["attention"] if config.encoder_decoder else [])
    dynamic = {"tokens": {0: "batch", 1: "T"}, "logits": {0: "batch", 1: "T"}}
    dynamic |= {n: {0: "batch"} for n in (*recurrent, *(state_output_name(n) for n in recurrent))}
    if config.encoder_decoder:
        dynamic |= {"memory": {0: "batch", 1: "S"}, "mask": {0: "batch", 1: "S"}, "attention": {0: "batch", 1: "T", 2: "S"}}

    def sample(batch: int, steps: int, generator: torch.Generator) -> dict[str, torch.Tensor]:
        return {"tokens": torch.randint(0, config.vocab_size, (batch, steps), generator=generator)} | _random_state(model, batch, generator)

    module = _DecoderStepGraph(model) if config.encoder_decoder else _StepGraph(model)
    return GraphSpec(
        module.eval(), ["tokens", *names], outputs, dynamic, sample,
        state={n: state_output_name(n) for n in recurrent},
        per_step=("logits", "attention") if config.encoder_decoder else ("logits",),
    )


def encoder_graph(model) -> GraphSpec | None:
    """None for a model whose every sequence starts from zeros."""
    config = model.config
    recurrent = list(config.state_names)
    if config.encoder_decoder:

        def sample(batch: int, steps: int, generator: torch.Generator) -> dict[str, torch.Tensor]:
            return {"source": torch.randint(0, config.vocab_size - 2, (1, steps), generator=generator)}  # one unpadded source

        outputs = [*recurrent, "memory", "mask"]
        dynamic = {"source": {0: "batch", 1: "S"}, "memory": {0: "batch", 1: "S"}, "mask": {0: "batch", 1: "S"}}
        dynamic |= {n: {0: "batch"} for n in recurrent}
        return GraphSpec(_EncoderGraph(model).eval(), ["source"], outputs, dynamic, sample)
    if config.conditions:

        def sample(batch: int, steps: int, generator: torch.Generator) -> dict[str, torch.Tensor]:
            return {"label": torch.arange(config.conditions)}

        dynamic = {"label": {0: "batch"}} | {n: {0: "batch"} for n in recurrent}
        return GraphSpec(_EncoderGraph(model).eval(), ["label"], recurrent, dynamic, sample)
    return None


def to_onnx(spec: GraphSpec, steps: int = 3) -> bytes:
    """The serialized ONNX graph, batch and T dynamic (traced with an example of `steps` steps).

    dynamo=False maps nn.LSTM/GRU/RNN to ONNX's fused recurrent operators, which onnxruntime runs fast;
    the parity check in export/verify.py decides whether the result is right. A module the exporter cannot map is
    refused with the exporter's own first line (ContractError), not its dump of the traced graph.
    """
    example = spec.sample(2, steps, torch.Generator().manual_seed(0))
    buffer = io.BytesIO()
    try:
        with warnings.catch_warnings(), _graph_dumps_dropped():
            warnings.simplefilter("ignore")  # the recurrent-op and batch_first notices are expected here
            torch.onnx.export(
                spec.module,
                tuple(example[n] for n in spec.input_names),
                buffer,
                dynamo=False,
                opset_version=OPSET,
                input_names=spec.input_names,
                output_names=spec.output_names,
                dynamic_axes=spec.dynamic,
            )
    except torch.onnx.errors.OnnxExporterError as err:
        raise ContractError(f"torch.onnx.export cannot export this module: {exporter_reason(err)}") from None
    return buffer.getvalue()


def exporter_reason(err: Exception) -> str:
    """The exporter's reason in a line: its first line, without the traced value it names ("[Caused by …")."""
    first = (str(err).strip().splitlines() or [type(err).__name__])[0]
    return first.split("[Caused by")[0].split(" Please feel free to request support")[0].strip()


@contextlib.contextmanager
def _graph_dumps_dropped() -> Iterator[None]:
    """torch's TorchScript exporter writes the whole traced graph to stdout (file descriptor 1, from C++) when an
    export fails; what the export writes there is kept aside and passed on only if it succeeds."""
    sys.stdout.flush()
    saved = os.dup(1)
    with tempfile.TemporaryFile() as kept:
        os.dup2(kept.fileno(), 1)
        succeeded = False
        try:
            yield
            succeeded = True
        finally:
            sys.stdout.flush()
            os.dup2(saved, 1)
            os.close(saved)
            if succeeded:
                kept.seek(0)
                os.write(1, kept.read())
