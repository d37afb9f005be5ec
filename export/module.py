"""Export a recurrent model written without rnnserve: any `nn.Module` whose `forward(tokens, state)` returns
`(outputs, state)` one step or many steps at a time, built on nn.RNN/nn.LSTM/nn.GRU or on a custom cell stepped in
a Python loop (exported as one step inside an ONNX Scan), served like the models `rnnserve train` makes.

    from rnnserve.export import export_module

    export_module(model, {"h": (2, 256), "c": (2, 256)}, "tokenizer.json", "models", "lm", state_batch_dim=1)

The module is checked before anything is written: that it runs on a batch of token ids, returns one output per
step and a state of the declared shapes, and that feeding its returned state back step by step gives what the
whole sequence gives (what the server relies on). The exported graph is parity-checked against the module, whole
sequence and step by step, as every export is.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import onnx
import onnxruntime as ort
import torch
from torch import nn

from rnnserve.contract import DEFAULT_SAMPLING, USER_TASKS, ContractError, OutputSpec, SamplingDefaults, StateSpec, model_document
from rnnserve.export.graphs import GraphSpec, state_output_name, to_onnx
from rnnserve.export.metadata import attach
from rnnserve.export.scan import scan_over_steps
from rnnserve.export.verify import check_parity, parity_report
from rnnserve.text import HFTokenizer, Tokenizer

STEP_CHECK_TOLERANCE = 1e-5


def export_module(
    module: nn.Module,
    state: dict[str, Sequence[int]],
    tokenizer: Tokenizer | str | os.PathLike,
    repository: str | os.PathLike,
    name: str,
    version: str = "1",
    *,
    task: str = "language_model",
    labels: Sequence[str] = (),
    state_batch_dim: int = 0,
    sampling: SamplingDefaults = DEFAULT_SAMPLING,
    description: dict | None = None,
    force: bool = False,
) -> Path:
    """Writes `repository/name/version/model.onnx` and returns its path.

    `state`: the module's state tensors in the order `forward` takes and returns them, each with the shape of one
    sequence's row (without the batch dimension); the server starts each sequence from zeros. One state tensor is
    passed as a tensor, several as a tuple. `state_batch_dim`: where the batch is in the module's state tensors
    (1 for the hidden state of `nn.RNN`, `nn.LSTM` and `nn.GRU`). `tokenizer`: one of rnnserve's, or the path of a
    Hugging Face `tokenizer.json`. `task`: "language_model" (outputs are next-token logits; it can generate),
    "tagger" or "classifier" (outputs are `labels`). `description`: anything to keep in the metadata (training
    figures, a name for people).
    """
    if task not in USER_TASKS:
        raise ContractError(f"task {task!r}: expected one of {', '.join(USER_TASKS)}")
    if not state:
        raise ContractError("state: name at least one state tensor (a model without state needs no per-step serving)")
    tokenizer = HFTokenizer.from_file(os.fspath(tokenizer)) if isinstance(tokenizer, (str, os.PathLike)) else tokenizer
    target = Path(repository) / name / version / "model.onnx"
    if target.exists() and not force:
        raise FileExistsError(f"{target} exists: pass force=True to overwrite it, or choose another version")
    shapes = {n: tuple(int(d) for d in shape) for n, shape in state.items()}
    graph = _StepGraph(module.eval(), list(shapes), state_batch_dim)
    outputs = _check_module(graph, shapes, tokenizer.vocab_size)
    if task == "language_model" and outputs != tokenizer.vocab_size:
        raise ContractError(f"a language model's outputs are next-token logits: {outputs} per step, but the tokenizer has {tokenizer.vocab_size} tokens")
    if task != "language_model" and len(labels) != outputs:
        raise ContractError(f"a {task}'s outputs are its labels: {outputs} per step, but {len(labels)} labels were given")

    spec = _graph_spec(graph, shapes, tokenizer.vocab_size)
    model_bytes = to_onnx(spec)
    if not _takes_any_length(model_bytes, spec):  # a Python loop over the steps, unrolled by tracing: scan one step
        model_bytes = scan_over_steps(to_onnx(spec, steps=1), spec.state)
    report = parity_report(spec, model_bytes)
    check_parity(report)
    document = model_document(
        USER_TASKS[task][0],
        {"vocab_size": tokenizer.vocab_size, "cell": "custom", "source": type(module).__name__},
        tokenizer.spec(),
        [StateSpec(n, state_output_name(n), shape) for n, shape in shapes.items()],
        [OutputSpec("logits", outputs, USER_TASKS[task][1], tuple(labels))],
        streaming=True,
        sequence_output="last" if task == "classifier" else "",
        sampling=sampling if task == "language_model" else None,
        parity=report,
        exported_with={"torch": torch.__version__, "onnx": onnx.__version__, "by": "export_module"},
        **({"description": description} if description else {}),
    )
    onnx_model = attach(model_bytes, document)
    onnx.checker.check_model(onnx_model, full_check=True)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.parent / (target.name + ".tmp")
    onnx.save(onnx_model, tmp)
    os.replace(tmp, target)
    return target


class _StepGraph(nn.Module):
    """The user's module with batch-major state: (tokens, *state [B, ...]) → (outputs, *next state [B, ...])."""

    def __init__(self, module: nn.Module, names: list[str], batch_dim: int):
        super().__init__()
        self.module, self.names, self.batch_dim = module, names, batch_dim

    def forward(self, tokens: torch.Tensor, *state: torch.Tensor):
        theirs = tuple(s.movedim(0, self.batch_dim).contiguous() for s in state)
        result = self.module(tokens, theirs[0] if len(theirs) == 1 else theirs)
        if not (isinstance(result, (tuple, list)) and len(result) == 2):
            raise ContractError(f"forward(tokens, state) must return (outputs, state), not {_kind(result)}")
        outputs, returned = result
        returned = (returned,) if isinstance(returned, torch.Tensor) else tuple(returned)
        if len(returned) != len(state):
            raise ContractError(f"forward returned {len(returned)} state tensors; {len(state)} were declared: {', '.join(self.names)}")
        return (outputs, *(s.movedim(self.batch_dim, 0) for s in returned))


def _check_module(graph: _StepGraph, shapes: dict[str, tuple[int, ...]], vocab: int) -> int:
    """Runs the module as the server will and returns its outputs per step; ContractError says what does not fit."""
    generator = torch.Generator().manual_seed(0)
    batch, steps = 3, 6
    tokens = torch.randint(0, vocab, (batch, steps), generator=generator)
    state = [0.5 * torch.randn(batch, *shape, generator=generator) for shape in shapes.values()]
    with torch.no_grad():
        try:
            whole, *returned = graph(tokens, *state)
        except ContractError:
            raise
        except Exception as err:
            shown = ", ".join(f"{n} {[batch, *s]}" for n, s in shapes.items())
            raise ContractError(
                f"forward(tokens [{batch}, {steps}], state) failed with state {shown} (batch first; moved to dim "
                f"{graph.batch_dim} for the module): {type(err).__name__}: {err}{_batch_dim_hint(graph)}"
            ) from None
        if whole.dim() != 3 or tuple(whole.shape[:2]) != (batch, steps):
            raise ContractError(f"outputs must be [batch, T, outputs], one row per step: tokens [{batch}, {steps}] gave {list(whole.shape)}")
        for (name, shape), tensor in zip(shapes.items(), returned):
            if tuple(tensor.shape) != (batch, *shape):
                raise ContractError(
                    f"state {name!r} came back as {list(tensor.movedim(0, graph.batch_dim).shape)}: with state_batch_dim="
                    f"{graph.batch_dim} a row is {list(tensor.shape[1:])}, not the declared {list(shape)}"
                    + _batch_dim_hint(graph)
                )
        carried, pieces = state, []
        for t in range(steps):
            piece, *carried = graph(tokens[:, t : t + 1], *carried)
            pieces.append(piece)
        difference = float((torch.cat(pieces, dim=1) - whole).abs().max())
    if difference > STEP_CHECK_TOLERANCE:
        raise ContractError(
            f"forward is not step-compatible: feeding its returned state back one step at a time gives outputs "
            f"{difference:.3g} away from the whole sequence at once; the state must carry everything the next step needs"
        )
    return int(whole.shape[-1])


def _takes_any_length(model_bytes: bytes, spec: GraphSpec) -> bool:
    """Whether the traced graph answers T steps for T other than the example's."""
    session = ort.InferenceSession(model_bytes, providers=["CPUExecutionProvider"])
    feeds = {n: t.numpy() for n, t in spec.sample(2, 5, torch.Generator().manual_seed(1)).items()}
    try:
        return session.run(["logits"], feeds)[0].shape[1] == 5
    except Exception:  # shapes fixed by the trace
        return False


def _batch_dim_hint(graph: _StepGraph) -> str:
    recurrent = any(isinstance(m, nn.RNNBase) for m in graph.module.modules())
    if recurrent and graph.batch_dim == 0:
        return " (nn.RNN, nn.LSTM and nn.GRU keep the batch in dim 1 of their state: pass state_batch_dim=1)"
    return ""


def _graph_spec(graph: _StepGraph, shapes: dict[str, tuple[int, ...]], vocab: int) -> GraphSpec:
    names = list(shapes)
    outputs = ["logits", *(state_output_name(n) for n in names)]
    dynamic = {"tokens": {0: "batch", 1: "T"}, "logits": {0: "batch", 1: "T"}} | {n: {0: "batch"} for n in names + outputs[1:]}

    def sample(batch: int, steps: int, generator: torch.Generator) -> dict[str, torch.Tensor]:
        return {"tokens": torch.randint(0, vocab, (batch, steps), generator=generator)} | {
            n: 0.5 * torch.randn(batch, *shape, generator=generator) for n, shape in shapes.items()
        }

    return GraphSpec(graph.eval(), ["tokens", *names], outputs, dynamic, sample, state={n: state_output_name(n) for n in names}, per_step=("logits",))


def _kind(value) -> str:
    return f"a {type(value).__name__}" + (f" of {len(value)}" if isinstance(value, (tuple, list)) else "")
