"""The served step graph of a model whose input is values, built around a graph that computes one step per call.

Such graphs come from elsewhere in the shapes their authors chose. Silero VAD takes `input` [batch, 64 + 512] (the
last 64 samples of the previous chunk before 512 new ones, a context its wrapper carries by hand), `state`
[2, batch, 128] (the batch in dim 1) and `sr`, a constant; it answers `output` [batch, 1] and `stateN`. The server
wants one shape for every model: (input [batch, T, *step], state [batch, …]) → (outputs [batch, T, …], next state).

So the graph is wrapped, unchanged, in an ONNX Scan over the T steps, whose body
- moves each state's batch axis to where the graph keeps it, and back (the slab stays batch-major);
- prepends the carried context (the last K values of the previous step's input, a state tensor of its own, so it
  is snapshotted, restored, forked and stored like any state) to the step's values, and keeps the last K for the next;
- feeds the constants fixed when the model was described.

A graph that already takes [batch, T, *step] (an nn.LSTM over frames, exported the natural way, its state
[layers, batch, hidden]) needs no Scan: the same moves and constants wrap it once around all T steps.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

INNER = "graph."  # prefix of the wrapped graph's own inputs and outputs inside the body
BODY = "step."  # prefix of the body's inputs and outputs


@dataclass(frozen=True)
class ValueState:
    input: str
    output: str
    batch_axis: int  # where the graph keeps the batch
    row: tuple[int, ...]  # one sequence's state, batch-major: the graph's shape without its batch axis


@dataclass(frozen=True)
class ValuesLayout:
    """How the wrapped graph's inputs and outputs map to the served ones."""

    input: str  # the graph's input of values: [batch, context + step]
    step: tuple[int, ...]  # the values a step brings (without the context)
    context: int  # values of the previous input carried before the next (0: none); along the last axis
    states: tuple[ValueState, ...]
    constants: dict[str, np.ndarray]  # inputs fixed when the model is described
    outputs: tuple[str, ...]  # per-step outputs, the main one first
    over_steps: bool = False  # the graph takes [batch, T, *step] itself (else one step per call, [batch, context + step])

    @property
    def context_state(self) -> str:
        return f"{self.input}_context"

    @property
    def carried(self) -> list[tuple[str, str]]:
        """(state input, state output) of the served graph, the context last."""
        pairs = [(s.input, s.output) for s in self.states]
        return pairs + ([(self.context_state, f"{self.context_state}_next")] if self.context else [])


def served_graph(model: onnx.ModelProto, layout: ValuesLayout, output_rows: dict[str, tuple[int, ...]]) -> onnx.ModelProto:
    """`model` wrapped as the served step graph. `output_rows`: each per-step output's shape without its batch."""
    copy = onnx.ModelProto()
    copy.CopyFrom(model)  # the wrapped graph's names change; the caller's model stays as it was
    graph = copy.graph
    inner = {v.name: INNER + v.name for v in (*graph.input, *graph.output)}
    _rename(graph, inner)
    before, after = [], []  # the body: what feeds the graph's nodes, the nodes, what takes their outputs
    for state in layout.states:
        before.append(_moved(BODY + state.input, inner[state.input], state.batch_axis, len(state.row) + 1, to_graph=True))
        after.append(_moved(inner[state.output], BODY + state.output, state.batch_axis, len(state.row) + 1, to_graph=False))
    values = BODY + layout.input
    if layout.context:
        before.append(helper.make_node("Concat", [BODY + layout.context_state, values], [inner[layout.input]], axis=-1))
        after += _last_values(inner[layout.input], BODY + layout.context_state + "_next", layout.context)
    else:
        before.append(helper.make_node("Identity", [values], [inner[layout.input]]))
    for name, value in layout.constants.items():
        before.append(helper.make_node("Constant", [], [inner[name]], value=numpy_helper.from_array(value, inner[name])))
    after += [helper.make_node("Identity", [inner[o]], [BODY + o + "_row"]) for o in layout.outputs]
    nodes = [*before, *graph.node, *after]
    if layout.over_steps:
        return _finished(model, _outer(layout, nodes, graph, output_rows, BODY))

    carried = layout.carried
    rows = {s.input: s.row for s in layout.states} | {layout.context_state: (layout.context,)}
    body = helper.make_graph(
        nodes,
        "one_step",
        [_float(BODY + name, ["batch", *rows[name]]) for name, _ in carried] + [_float(values, ["batch", *layout.step])],
        [_float(BODY + output, ["batch", *rows[name]]) for name, output in carried]
        + [_float(BODY + o + "_row", ["batch", *output_rows[o]]) for o in layout.outputs],
    )
    scan = helper.make_node(
        "Scan", [name for name, _ in carried] + [layout.input], [output for _, output in carried] + list(layout.outputs),
        body=body, num_scan_inputs=1, scan_input_axes=[1], scan_output_axes=[1] * len(layout.outputs),
    )
    outer = helper.make_graph(
        [scan],
        "values_over_steps",
        [_float(name, ["batch", *rows[name]]) for name, _ in carried] + [_float(layout.input, ["batch", "T", *layout.step])],
        [_float(o, ["batch", "T", *output_rows[o]]) for o in layout.outputs] + [_float(output, ["batch", *rows[name]]) for name, output in carried],
        initializer=list(graph.initializer),  # the weights, which the body reads from the outer scope
    )
    return _finished(model, outer)


def _outer(layout: ValuesLayout, nodes: list, graph: onnx.GraphProto, output_rows: dict, prefix: str) -> onnx.GraphProto:
    """The served graph of a graph over steps: its nodes in line, the body's names made the served graph's."""
    served = {prefix + name: name for name, _ in layout.carried} | {prefix + output: output for _, output in layout.carried}
    served |= {prefix + layout.input: layout.input} | {prefix + o + "_row": o for o in layout.outputs}
    for node in nodes:
        node.input[:] = [served.get(n, n) for n in node.input]
        node.output[:] = [served.get(n, n) for n in node.output]
    rows = {s.input: s.row for s in layout.states}
    return helper.make_graph(
        nodes,
        "values_steps",
        [_float(name, ["batch", *rows[name]]) for name, _ in layout.carried] + [_float(layout.input, ["batch", "T", *layout.step])],
        [_float(o, ["batch", "T", *output_rows[o]]) for o in layout.outputs] + [_float(output, ["batch", *rows[name]]) for name, output in layout.carried],
        initializer=list(graph.initializer),
    )


def _finished(model: onnx.ModelProto, graph: onnx.GraphProto) -> onnx.ModelProto:
    served = helper.make_model(graph, opset_imports=list(model.opset_import), producer_name="rnnserve describe")
    served.ir_version = model.ir_version
    onnx.checker.check_model(served)
    return served


def _moved(source: str, target: str, batch_axis: int, rank: int, to_graph: bool) -> onnx.NodeProto:
    """A state from batch-major to the graph's layout (or back): its batch axis moves from 0 to `batch_axis`."""
    if batch_axis == 0:
        return helper.make_node("Identity", [source], [target])
    graph_order = [*range(1, batch_axis + 1), 0, *range(batch_axis + 1, rank)]  # graph axis i takes batch-major axis
    batch_major = [batch_axis, *range(batch_axis), *range(batch_axis + 1, rank)]
    return helper.make_node("Transpose", [source], [target], perm=graph_order if to_graph else batch_major)


def _last_values(source: str, target: str, count: int) -> list[onnx.NodeProto]:
    """target = source[..., -count:]."""
    def constant(name: str, values: list[int]) -> onnx.NodeProto:
        return helper.make_node("Constant", [], [name], value=helper.make_tensor(name, TensorProto.INT64, [1], values))

    return [
        constant(target + "_starts", [-count]),
        constant(target + "_ends", [np.iinfo(np.int64).max]),
        constant(target + "_axes", [-1]),
        helper.make_node("Slice", [source, target + "_starts", target + "_ends", target + "_axes"], [target]),
    ]


def _float(name: str, shape: list) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, shape)


def _rename(graph: onnx.GraphProto, names: dict[str, str]) -> None:
    """Renames values everywhere they are used, in nested graphs too (an If's branches read the outer scope)."""
    for node in graph.node:
        node.input[:] = [names.get(n, n) for n in node.input]
        node.output[:] = [names.get(n, n) for n in node.output]
        for attribute in node.attribute:
            for subgraph in [attribute.g] if attribute.HasField("g") else list(attribute.graphs):
                _rename(subgraph, names)
    for value in (*graph.input, *graph.output):
        value.name = names.get(value.name, value.name)
