"""`rnnserve describe --input …`: a graph whose input is values (audio samples, sensor frames, a time series) made
servable: one that computes one step per call ([batch, context + values]) or one that takes [batch, T, values]
itself, wrapped as the served step graph (export/values_graph.py), checked by running it, and written with its
metadata.

The check runs the graph as its author would, a row at a time with the context and state carried by hand, and the
served graph on a batch of those rows over several steps in one call and one step per call: all three must agree.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

from rnnserve.contract import PARITY_TOLERANCE, VALUE_TASKS, ContractError, InputSpec, OutputSpec, StateSpec, model_document
from rnnserve.errors import one_line
from rnnserve.export.describe import load_graph, save_described
from rnnserve.export.values_graph import ValuesLayout, ValueState, served_graph

CHECK_BATCH, CHECK_STEPS = 3, 5


def describe_values(
    path: str | os.PathLike,
    states: list[tuple[str, str]],
    model_input: str,
    step: int,
    task: str = "values",
    context: int = 0,
    constants: dict[str, str] | None = None,
    sample_rate: int = 0,
    out: str | os.PathLike | None = None,
) -> Path:
    """Checks the graph at `path` (one step per call: `model_input` [batch, context + step] float, the states, the
    constants), writes the served graph with its metadata to `out` (default: in place) and returns where."""
    if task not in VALUE_TASKS:
        raise ContractError(f"--task {task!r}: a model that takes values is one of {', '.join(VALUE_TASKS)}")
    if step < 1 or context < 0:
        raise ContractError(f"--input {model_input}:{step} --context {context}: a step brings at least one value, and the context is not negative")
    if task == "vad" and sample_rate <= 0:
        raise ContractError("a voice activity detector takes audio: say its sample rate with --sample-rate (Silero VAD: 16000)")
    model = load_graph(path)
    inputs = {i.name: i for i in model.graph.input}
    outputs = {o.name: o for o in model.graph.output}
    if model_input not in inputs:
        raise ContractError(f"no input {model_input!r} in the graph ({', '.join(inputs)}): name its input of values with --input NAME:VALUES")
    if _dtype(inputs[model_input]) != np.float32:
        raise ContractError(f"{model_input!r} is {_type_name(inputs[model_input])}: the values a step takes must be float32")
    rank = len(_dims(inputs[model_input]))
    if rank not in (2, 3):
        raise ContractError(f"{model_input!r} has {rank} dimensions: expected [batch, context + values] (a step a call) or [batch, T, values]")
    if rank == 3 and context:
        raise ContractError(f"--context is for a graph of one step per call; {model_input!r} is [batch, T, values]: it sees its steps itself")
    value_states = [_state(inputs, outputs, name, output) for name, output in states]
    if not value_states:
        raise ContractError("name the graph's state with --state INPUT:OUTPUT (Silero VAD: --state state:stateN)")
    fixed = _constants(inputs, constants or {}, {model_input, *(s.input for s in value_states)})
    per_step = tuple(name for name in outputs if name not in {s.output for s in value_states})
    layout = ValuesLayout(model_input, (step,), context, tuple(value_states), fixed, per_step, over_steps=rank == 3)

    rows = _run_as_authored(model, layout)
    served = served_graph(model, layout, rows)
    parity = _check_served(served, model, layout)
    if task == "vad" and rows[per_step[0]] != (1,):
        raise ContractError(f"a voice activity detector's first output is one probability a chunk: {per_step[0]!r} has {list(rows[per_step[0]])} a row")
    bad = [name for name, row in rows.items() if len(row) != 1]
    if bad:
        raise ContractError(f"outputs {', '.join(map(repr, bad))} are not one row of values a step: the server answers [T, values] per output")
    document = model_document(
        VALUE_TASKS[task][0], {"cell": "custom", "source": Path(path).name}, {"kind": "none"},
        [StateSpec(s.input, s.output, s.row) for s in value_states] + ([StateSpec(layout.context_state, f"{layout.context_state}_next", (context,))] if context else []),
        [OutputSpec(name, rows[name][0], VALUE_TASKS[task][1] if name == per_step[0] else "an output of the model after each step") for name in per_step],
        streaming=True, model_input=InputSpec(model_input, "float32", (step,), sample_rate), parity=parity,
        exported_with={"producer": model.producer_name, "by": "rnnserve describe"},
        described={"context": context, "constants": {k: v.tolist() for k, v in fixed.items()}, "batch_axes": {s.input: s.batch_axis for s in value_states}},
    )
    return save_described(served, document, Path(out) if out else Path(path))


def _state(inputs: dict, outputs: dict, name: str, output: str) -> ValueState:
    if name not in inputs:
        raise ContractError(f"no input {name!r} in the graph ({', '.join(inputs)}): expected a state input (--state INPUT:OUTPUT)")
    if output not in outputs:
        raise ContractError(f"no output {output!r} in the graph ({', '.join(outputs)}): expected the next value of state {name!r}")
    if _dtype(inputs[name]) != np.float32:
        raise ContractError(f"state {name!r} is {_type_name(inputs[name])}: the server keeps float32 state")
    dims = _dims(inputs[name])
    dynamic = [axis for axis, d in enumerate(dims) if d is None]
    if len(dynamic) != 1:
        shown = ["?" if d is None else d for d in dims]
        raise ContractError(
            f"state {name!r} is {shown}: expected every dimension fixed but the batch, so the server knows where the batch is "
            "and what one sequence's state is"
        )
    return ValueState(name, output, dynamic[0], tuple(d for d in dims if d is not None))


def _constants(inputs: dict, given: dict[str, str], used: set[str]) -> dict[str, np.ndarray]:
    unknown = sorted(set(given) - set(inputs))
    if unknown:
        raise ContractError(f"--constant {unknown[0]}: the graph has no such input ({', '.join(inputs)})")
    missing = sorted(set(inputs) - used - set(given))
    if missing:
        raise ContractError(f"the graph has inputs that are neither values nor state: {', '.join(missing)} (fix each with --constant NAME=VALUE)")
    fixed = {}
    for name, text in given.items():
        dtype = _dtype(inputs[name])
        if _dims(inputs[name]):
            raise ContractError(f"--constant {name}: {name!r} is not a scalar ({_type_name(inputs[name])} {_dims(inputs[name])})")
        try:
            fixed[name] = np.array(text, dtype=dtype)
        except ValueError:
            raise ContractError(f"--constant {name}={text}: not a {np.dtype(dtype).name}") from None
    return fixed


def _run_as_authored(model: onnx.ModelProto, layout: ValuesLayout) -> dict[str, tuple[int, ...]]:
    """Runs the graph once on a batch: each per-step output's row shape; refuses what does not fit."""
    session = _session(model, "the graph")
    batch = CHECK_BATCH
    feeds = _authored_feeds(layout, np.random.default_rng(0), batch)
    try:
        results = dict(zip([o.name for o in session.get_outputs()], session.run(None, feeds)))
    except Exception as err:
        raise ContractError(f"the graph fails on {layout.input} {list(feeds[layout.input].shape)} and a batch of state: {one_line(err)}") from None
    for state in layout.states:
        expected = feeds[state.input].shape
        if results[state.output].shape != expected:
            raise ContractError(f"state output {state.output!r} is {list(results[state.output].shape)}, not {list(expected)} like {state.input!r}")
    rows, leading = {}, (batch, CHECK_STEPS) if layout.over_steps else (batch,)
    for name in layout.outputs:
        if results[name].shape[: len(leading)] != leading:
            expected = "[batch, T, …]" if layout.over_steps else "the batch first"
            raise ContractError(f"output {name!r} is {list(results[name].shape)} for {list(feeds[layout.input].shape)} in: expected {expected}")
        rows[name] = tuple(results[name].shape[len(leading) :])
    return rows


def _check_served(served: onnx.ModelProto, model: onnx.ModelProto, layout: ValuesLayout) -> dict:
    """The served graph over CHECK_STEPS steps of a batch, in one call and a step a call, against the graph run a
    row at a time as its author would (context and state carried by hand)."""
    authored, wrapped = _session(model, "the graph"), _session(served, "the wrapped graph")
    rng = np.random.default_rng(1)
    values = rng.standard_normal((CHECK_BATCH, CHECK_STEPS, *layout.step)).astype(np.float32)
    start = {s.input: (0.5 * rng.standard_normal((CHECK_BATCH, *s.row))).astype(np.float32) for s in layout.states}
    if layout.context:
        start[layout.context_state] = rng.standard_normal((CHECK_BATCH, layout.context)).astype(np.float32)
    expected = np.stack([_row_by_hand(authored, layout, values[b], {k: v[b] for k, v in start.items()}) for b in range(CHECK_BATCH)])
    names = [*layout.outputs, *(output for _, output in layout.carried)]
    whole = wrapped.run(names, {layout.input: values, **start})[0]
    state, pieces = dict(start), []
    for t in range(CHECK_STEPS):
        results = wrapped.run(names, {layout.input: values[:, t : t + 1], **state})
        pieces.append(results[0])
        state = dict(zip([name for name, _ in layout.carried], results[len(layout.outputs) :]))
    differences = {"one_call": float(np.abs(whole - expected).max()), "step_by_step": float(np.abs(np.concatenate(pieces, axis=1) - expected).max())}
    if max(differences.values()) > PARITY_TOLERANCE:
        raise ContractError(
            f"served in batches, the graph does not give what it gives a row at a time with its context and state carried by "
            f"hand (largest difference {max(differences.values()):.3g}): check --state, --context and --input"
        )
    return {"max_abs_diff_served_vs_by_hand": differences, "tolerance": PARITY_TOLERANCE, "passed": True, "max_abs_diff": max(differences.values())}


def _row_by_hand(session: ort.InferenceSession, layout: ValuesLayout, values: np.ndarray, start: dict[str, np.ndarray]) -> np.ndarray:
    """One row's main output [T, …], stepping the graph as its own wrapper does (Silero's OnnxWrapper)."""
    state = {s.input: np.expand_dims(start[s.input], 0) for s in layout.states}  # batch 1, batch-major
    if layout.over_steps:  # the graph sees all the steps itself
        feeds = {layout.input: values[None], **layout.constants} | {s.input: np.moveaxis(state[s.input], 0, s.batch_axis) for s in layout.states}
        return dict(zip([o.name for o in session.get_outputs()], session.run(None, feeds)))[layout.outputs[0]][0]
    context = start.get(layout.context_state, np.zeros(0, np.float32))[None]
    outputs = []
    for t in range(len(values)):
        step_input = np.concatenate([context, values[t][None]], axis=-1)
        feeds = {layout.input: step_input, **layout.constants}
        feeds |= {s.input: np.moveaxis(state[s.input], 0, s.batch_axis) for s in layout.states}
        results = dict(zip([o.name for o in session.get_outputs()], session.run(None, feeds)))
        outputs.append(results[layout.outputs[0]][0])
        state = {s.input: np.moveaxis(results[s.output], s.batch_axis, 0) for s in layout.states}
        context = step_input[:, step_input.shape[-1] - layout.context :]
    return np.stack(outputs)


def _authored_feeds(layout: ValuesLayout, rng: np.random.Generator, batch: int) -> dict[str, np.ndarray]:
    shape = (batch, CHECK_STEPS, layout.step[0]) if layout.over_steps else (batch, layout.context + layout.step[0])
    feeds = {layout.input: rng.standard_normal(shape).astype(np.float32), **layout.constants}
    for s in layout.states:
        feeds[s.input] = np.moveaxis((0.5 * rng.standard_normal((batch, *s.row))).astype(np.float32), 0, s.batch_axis)
    return feeds


def _session(model: onnx.ModelProto, what: str) -> ort.InferenceSession:
    try:
        return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    except Exception as err:
        raise ContractError(f"onnxruntime cannot load {what}: {one_line(err)}") from None


def _dims(value: onnx.ValueInfoProto) -> list[int | None]:
    return [d.dim_value if d.HasField("dim_value") else None for d in value.type.tensor_type.shape.dim]


def _dtype(value: onnx.ValueInfoProto):
    return onnx.helper.tensor_dtype_to_np_dtype(value.type.tensor_type.elem_type)


def _type_name(value: onnx.ValueInfoProto) -> str:
    return onnx.TensorProto.DataType.Name(value.type.tensor_type.elem_type)
