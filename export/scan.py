"""A step graph for a model that loops over its steps in Python (a custom cell): tracing unrolls such a loop to the
example's number of steps, so instead the one-step graph is exported and wrapped in an ONNX Scan over the steps,
which takes any T. The Scan carries the state from step to step, exactly as the server does between calls."""

from __future__ import annotations

import onnx
from onnx import TensorProto, helper

STEP = "step_"  # prefix of the Scan body's own names, which must not shadow the outer graph's


def scan_over_steps(one_step: bytes, state: dict[str, str]) -> bytes:
    """`one_step`: a graph (tokens [B, 1], *state) → (logits [B, 1, V], *next state). The result takes tokens
    [B, T] with the same state inputs and gives logits [B, T, V] and the state after the last step."""
    step = onnx.load_from_string(one_step)
    graph = step.graph
    names = {n: STEP + n for n in [*state, *state.values(), "tokens", "logits"]}
    for node in graph.node:
        node.input[:] = [names.get(n, n) for n in node.input]
        node.output[:] = [names.get(n, n) for n in node.output]
    inputs = {value.name: value for value in graph.input}
    outputs = {value.name: value for value in graph.output}
    axis_one = helper.make_node("Constant", [], [STEP + "axis"], value=helper.make_tensor("axis", TensorProto.INT64, [1], [1]))
    body = helper.make_graph(
        [
            axis_one,
            helper.make_node("Unsqueeze", [STEP + "token", STEP + "axis"], [STEP + "tokens"]),  # [B] → [B, 1]
            *graph.node,
            helper.make_node("Squeeze", [STEP + "logits", STEP + "axis"], [STEP + "logits_row"]),  # [B, 1, V] → [B, V]
        ],
        "one_step",
        [_renamed(inputs[n], STEP + n) for n in state] + [helper.make_tensor_value_info(STEP + "token", TensorProto.INT64, ["batch"])],
        [_renamed(outputs[o], STEP + o) for o in state.values()]
        + [helper.make_tensor_value_info(STEP + "logits_row", TensorProto.FLOAT, ["batch", _last_dim(outputs["logits"])])],
    )
    scan = helper.make_node(
        "Scan", [*state, "tokens"], [*state.values(), "logits"], body=body, num_scan_inputs=1, scan_input_axes=[1], scan_output_axes=[1]
    )
    outer = helper.make_graph(
        [scan],
        "scan_over_steps",
        [helper.make_tensor_value_info("tokens", TensorProto.INT64, ["batch", "T"])] + [inputs[n] for n in state],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", "T", _last_dim(outputs["logits"])])]
        + [outputs[o] for o in state.values()],
        initializer=list(graph.initializer),  # the weights, which the body reads from the outer scope
    )
    model = helper.make_model(outer, opset_imports=list(step.opset_import), producer_name="rnnserve")
    model.ir_version = step.ir_version
    onnx.checker.check_model(model)
    return model.SerializeToString()


def _renamed(value: onnx.ValueInfoProto, name: str) -> onnx.ValueInfoProto:
    renamed = onnx.ValueInfoProto()
    renamed.CopyFrom(value)
    renamed.name = name
    return renamed


def _last_dim(value: onnx.ValueInfoProto) -> int | str:
    dim = value.type.tensor_type.shape.dim[-1]
    return dim.dim_value if dim.HasField("dim_value") else "outputs"
