"""`rnnserve describe`: the metadata for a step graph exported elsewhere (say by `torch.onnx.export` in a user's
own code), written into the file once the graph is checked against the contract, so the server can serve it.

The graph must map (token ids [batch, T], state [batch, ...]) to (per-step outputs [batch, T, outputs], next
state): state batch-major, one row per sequence. Its token input and output may have any names (they are renamed
to `tokens` and `logits`); each state is named as its input and output pair, `--state h:h_next`. The check runs
the graph: it must accept a batch, answer one output row per step, and give step by step what it gives for the
whole sequence.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

from rnnserve.contract import (
    DEFAULT_SAMPLING,
    PARITY_TOLERANCE,
    USER_TASKS,
    ContractError,
    OutputSpec,
    StateSpec,
    metadata_entry,
    model_document,
)
from rnnserve.errors import one_line
from rnnserve.text import HFTokenizer, Tokenizer, make_tokenizer


def describe(
    path: str | os.PathLike,
    states: list[tuple[str, str]],
    tokenizer: Tokenizer | str,
    task: str = "language_model",
    labels: tuple[str, ...] = (),
    tokens_input: str = "tokens",
    logits_output: str = "logits",
    out: str | os.PathLike | None = None,
) -> Path:
    """Checks the graph at `path`, writes it with its metadata to `out` (default: in place) and returns where."""
    if task not in USER_TASKS:
        raise ContractError(f"--task {task!r}: expected one of {', '.join(USER_TASKS)}")
    if isinstance(tokenizer, str):
        tokenizer = make_tokenizer(tokenizer, "") if tokenizer == "byte" else HFTokenizer.from_file(tokenizer)
    model = load_graph(path)
    for name, values, flag in ((tokens_input, model.graph.input, "--tokens"), (logits_output, model.graph.output, "--logits")):
        if name not in {v.name for v in values}:
            raise ContractError(f"no {name!r} in the graph ({', '.join(v.name for v in values)}): name it with {flag}")
    _rename(model, {tokens_input: "tokens", logits_output: "logits"})
    inputs = {i.name: i for i in model.graph.input}
    outputs = {o.name: o for o in model.graph.output}
    _expect(inputs, "tokens", onnx.TensorProto.INT64, 2, "the token ids, int64 [batch, T] (name it with --tokens)")
    _expect(outputs, "logits", onnx.TensorProto.FLOAT, 3, "the per-step outputs, float [batch, T, outputs] (name it with --logits)")
    specs = []
    for name, output in states:
        row = _expect(inputs, name, onnx.TensorProto.FLOAT, None, "a state input (--state INPUT:OUTPUT)")
        _expect(outputs, output, onnx.TensorProto.FLOAT, len(row) + 1, f"the next value of state {name!r}")
        specs.append(StateSpec(name, output, row))
    if not specs:
        raise ContractError("name the graph's state with --state INPUT:OUTPUT (for an LSTM: --state h:h_next --state c:c_next)")
    unnamed = sorted(set(inputs) - {"tokens", *(s.name for s in specs)})
    if unnamed:
        raise ContractError(f"the graph has inputs that are neither tokens nor state: {', '.join(unnamed)}")

    width, parity = _run_checks(model, specs, tokenizer.vocab_size)
    if task == "language_model" and width != tokenizer.vocab_size:
        raise ContractError(f"a language model's outputs are next-token logits: {width} per step, but the tokenizer has {tokenizer.vocab_size} tokens")
    if task != "language_model" and len(labels) != width:
        raise ContractError(f"a {task}'s outputs are its labels: {width} per step, but {len(labels)} labels were given (--labels)")
    document = model_document(
        USER_TASKS[task][0], {"vocab_size": tokenizer.vocab_size, "cell": "custom", "source": Path(path).name},
        tokenizer.spec(), specs, [OutputSpec("logits", width, USER_TASKS[task][1], tuple(labels))], streaming=True,
        sequence_output="last" if task == "classifier" else "", sampling=DEFAULT_SAMPLING if task == "language_model" else None,
        parity=parity, exported_with={"producer": model.producer_name, "by": "rnnserve describe"},
    )
    return save_described(model, document, Path(out) if out else Path(path))


def load_graph(path: str | os.PathLike) -> onnx.ModelProto:
    try:
        return onnx.load(os.fspath(path))
    except FileNotFoundError:
        raise
    except Exception as err:
        raise ContractError(f"not an ONNX model: {type(err).__name__}: {one_line(err)}") from None


def save_described(model: onnx.ModelProto, document: dict, target: Path) -> Path:
    """Writes the model with the document as its only metadata, atomically (a half-written file is never served)."""
    del model.metadata_props[:]
    entry = model.metadata_props.add()
    entry.key, entry.value = metadata_entry(document)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(target.name + ".tmp")
    onnx.save(model, tmp)
    os.replace(tmp, target)
    return target


def _rename(model: onnx.ModelProto, names: dict[str, str]) -> None:
    names = {old: new for old, new in names.items() if old != new}
    for node in model.graph.node:
        node.input[:] = [names.get(n, n) for n in node.input]
        node.output[:] = [names.get(n, n) for n in node.output]
    for value in (*model.graph.input, *model.graph.output):
        value.name = names.get(value.name, value.name)


def _expect(values: dict, name: str, dtype: int, rank: int | None, what: str) -> tuple[int, ...]:
    """The per-row shape of a graph input or output that must have this type, batch first (and this rank)."""
    if name not in values:
        raise ContractError(f"no {name!r} in the graph ({', '.join(values)}): expected {what}")
    tensor = values[name].type.tensor_type
    dims = [d.dim_value if d.HasField("dim_value") else None for d in tensor.shape.dim]
    if tensor.elem_type != dtype:
        raise ContractError(f"{name!r} is {onnx.TensorProto.DataType.Name(tensor.elem_type)}: expected {what}")
    if rank is not None and len(dims) != rank:
        raise ContractError(f"{name!r} has {len(dims)} dimensions: expected {what}")
    if rank is None:  # state: the batch dynamic and first, the row static
        if len(dims) < 2 or dims[0] is not None or None in dims[1:]:
            shown = ["batch" if d is None else d for d in dims]
            raise ContractError(
                f"state {name!r} is {shown}: the server keeps state batch-major, [batch, …] with the batch first and "
                "dynamic and the rest fixed (nn.LSTM's is [layers, batch, hidden]: transpose it in the exported module, "
                "or export with rnnserve.export.export_module)"
            )
    return tuple(dims[1:])


def _run_checks(model: onnx.ModelProto, specs: list[StateSpec], vocab: int) -> tuple[int, dict]:
    """Runs the graph on a batch: the outputs' shapes, and step by step against the whole sequence."""
    try:
        session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    except Exception as err:
        raise ContractError(f"onnxruntime cannot load the graph: {one_line(err)}") from None
    rng = np.random.default_rng(0)
    batch, steps = 3, 6
    tokens = rng.integers(0, vocab, (batch, steps), dtype=np.int64)
    state = {s.name: (0.5 * rng.standard_normal((batch, *s.shape))).astype(np.float32) for s in specs}
    names = ["logits", *(s.output for s in specs)]
    try:
        whole, *returned = session.run(names, {"tokens": tokens, **state})
    except Exception as err:
        raise ContractError(f"the graph fails on tokens [{batch}, {steps}] and a batch of state: {one_line(err)}") from None
    if whole.shape[:2] != (batch, steps):
        raise ContractError(f"logits must be [batch, T, outputs]: tokens [{batch}, {steps}] gave {list(whole.shape)}")
    for spec, value in zip(specs, returned):
        if value.shape != (batch, *spec.shape):
            raise ContractError(f"state output {spec.output!r} is {list(value.shape)}, not [batch, {', '.join(map(str, spec.shape))}]")
    carried, pieces = dict(state), []
    for t in range(steps):
        piece, *next_state = session.run(names, {"tokens": tokens[:, t : t + 1], **carried})
        pieces.append(piece)
        carried = {s.name: v for s, v in zip(specs, next_state)}
    difference = float(np.abs(np.concatenate(pieces, axis=1) - whole).max())
    if difference > PARITY_TOLERANCE:
        raise ContractError(
            f"the graph is not step-compatible: feeding its state outputs back one step at a time gives logits {difference:.3g} "
            "away from the whole sequence at once (check the --state pairs)"
        )
    return int(whole.shape[-1]), {"max_abs_diff_step_vs_whole": difference, "tolerance": PARITY_TOLERANCE, "passed": True, "max_abs_diff": difference}
