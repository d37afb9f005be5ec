"""Export a recurrent model written without rnnserve: any `nn.Module` whose `forward(tokens, state)` returns
`(outputs, state)` one step or many steps at a time, built on nn.RNN/nn.LSTM/nn.GRU or on a custom cell stepped in
a Python loop (exported as one step inside an ONNX Scan), served like the models `rnnserve train` makes.

    from rnnserve.export import export_module

    export_module(model, {"h": (2, 256), "c": (2, 256)}, "tokenizer.json", "models", "lm", state_batch_dim=1)

`forward` gets the state the way it is written to take it, which export_module finds by calling it: by name, the
dict `{"h": h, "c": c}` (and it returns a dict with the same names), or positionally, one tensor for a single
state and a tuple in the declared order for several (what nn.LSTM takes and returns as `(h, c)`).

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
from rnnserve.errors import one_line
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
    shapes = _state_shapes(state)
    _refuse_unsupported_layers(module)
    graph, outputs = _check_module(module.eval(), shapes, state_batch_dim, tokenizer.vocab_size)
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
    """The user's module with batch-major state: (tokens, *state [B, ...]) → (outputs, *next state [B, ...]).
    `by_name`: the module takes and returns its state as a dict of the declared names; else positionally."""

    def __init__(self, module: nn.Module, names: list[str], batch_dim: int, by_name: bool):
        super().__init__()
        self.module, self.names, self.batch_dim, self.by_name = module, names, batch_dim, by_name

    def forward(self, tokens: torch.Tensor, *state: torch.Tensor):
        theirs = [s.movedim(0, self.batch_dim).contiguous() for s in state]
        passed = dict(zip(self.names, theirs)) if self.by_name else theirs[0] if len(theirs) == 1 else tuple(theirs)
        result = self.module(tokens, passed)
        if not (isinstance(result, (tuple, list)) and len(result) == 2):
            raise ContractError(f"forward(tokens, state) must return (outputs, state), not {_kind(result)}")
        outputs, returned = result
        return (outputs, *(s.movedim(self.batch_dim, 0) for s in self._in_order(returned)))

    def _in_order(self, returned) -> tuple[torch.Tensor, ...]:
        """The returned state as tensors in the declared order, whichever way the module gave it back."""
        declared = ", ".join(self.names)
        if isinstance(returned, dict):
            if set(returned) != set(self.names):
                raise ContractError(f"forward returned the state {{{', '.join(map(repr, returned))}}}; the declared state is {{{declared}}}")
            return tuple(returned[n] for n in self.names)
        returned = (returned,) if isinstance(returned, torch.Tensor) else tuple(returned)
        if len(returned) != len(self.names):
            raise ContractError(f"forward returned {len(returned)} state tensors; {len(self.names)} were declared: {declared}")
        return returned


def _state_shapes(state) -> dict[str, tuple[int, ...]]:
    """The declared state as name → one row's shape, or a ContractError that shows what was passed."""
    example = '{"h": (2, 256), "c": (2, 256)}'
    if not isinstance(state, dict):
        raise ContractError(f"state: expected a dict of name → one sequence's shape, e.g. {example}; got {_kind(state)}")
    shapes = {}
    for name, shape in state.items():
        try:
            shapes[str(name)] = tuple(int(d) for d in ((shape,) if isinstance(shape, int) else shape))
        except (TypeError, ValueError):
            raise ContractError(f"state[{name!r}]: expected one sequence's shape as a tuple of ints, e.g. (2, 256); got {shape!r}") from None
        if not shapes[str(name)] or min(shapes[str(name)]) < 1:
            raise ContractError(f"state[{name!r}]: {shape!r} is not a shape of at least one dimension, each at least 1")
    return shapes


def _refuse_unsupported_layers(module: nn.Module) -> None:
    """Layers the ONNX exporter cannot map to an operator, refused by name before the exporter fails on them."""
    for path, layer in module.named_modules():
        if isinstance(layer, nn.LSTM) and layer.proj_size > 0:
            raise ContractError(
                f"{path or type(module).__name__}: nn.LSTM with proj_size={layer.proj_size} has no ONNX operator: step "
                "nn.LSTMCell and a projection (nn.Linear) in a loop over the steps instead, which is exported as a custom cell"
            )


def _check_module(module: nn.Module, shapes: dict[str, tuple[int, ...]], batch_dim: int, vocab: int) -> tuple[_StepGraph, int]:
    """Runs the module as the server will, finding how its forward takes the state (by name, else positionally);
    returns the step graph and its outputs per step. A ContractError says what does not fit."""
    generator = torch.Generator().manual_seed(0)
    batch, steps = 3, 6
    tokens = torch.randint(0, vocab, (batch, steps), generator=generator)
    state = [0.5 * torch.randn(batch, *shape, generator=generator) for shape in shapes.values()]
    failures = []
    for by_name in (True, False):
        graph = _StepGraph(module, list(shapes), batch_dim, by_name)
        try:
            with torch.no_grad():
                whole, *returned = graph(tokens, *state)
            break
        except ContractError:
            raise
        except Exception as err:
            failures.append(f"{_passing(graph, shapes, batch)}: {type(err).__name__}: {one_line(err)}")
    else:
        raise ContractError(
            f"forward(tokens [{batch}, {steps}], state) failed both ways a state can be passed, {'; and '.join(failures)} "
            f"(each state with its batch in dim {batch_dim}, as state_batch_dim says){_batch_dim_hint(graph)}"
        )
    if whole.dim() != 3 or tuple(whole.shape[:2]) != (batch, steps):
        raise ContractError(f"outputs must be [batch, T, outputs], one row per step: tokens [{batch}, {steps}] gave {list(whole.shape)}")
    for (name, shape), tensor in zip(shapes.items(), returned):
        if tuple(tensor.shape) != (batch, *shape):
            raise ContractError(
                f"state {name!r} came back as {list(tensor.movedim(0, batch_dim).shape)}: with state_batch_dim="
                f"{batch_dim} a row is {list(tensor.shape[1:])}, not the declared {list(shape)}"
                + _batch_dim_hint(graph)
            )
    carried, pieces = state, []
    with torch.no_grad():
        for t in range(steps):
            piece, *carried = graph(tokens[:, t : t + 1], *carried)
            pieces.append(piece)
    difference = float((torch.cat(pieces, dim=1) - whole).abs().max())
    if difference > STEP_CHECK_TOLERANCE:
        raise ContractError(
            f"forward is not step-compatible: feeding its returned state back one step at a time gives outputs "
            f"{difference:.3g} away from the whole sequence at once; the state must carry everything the next step needs"
        )
    return graph, int(whole.shape[-1])


def _passing(graph: _StepGraph, shapes: dict[str, tuple[int, ...]], batch: int) -> str:
    """How the state was passed, for a message: the shapes the module saw."""
    seen = {n: list(torch.empty(batch, *s).movedim(0, graph.batch_dim).shape) for n, s in shapes.items()}
    if graph.by_name:
        return "by name as {" + ", ".join(f"{n!r}: {s}" for n, s in seen.items()) + "}"
    shown = [f"{n} {s}" for n, s in seen.items()]
    return f"positionally as {shown[0]}" if len(shown) == 1 else f"positionally as ({', '.join(shown)})"


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
        return " (if forward hands the state to nn.RNN, nn.LSTM or nn.GRU as it is: they keep the batch in dim 1, so pass state_batch_dim=1)"
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
