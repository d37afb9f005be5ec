"""Writes server/slab_graphs/{gather,scatter}.onnx: the device-side row gather and scatter of the state slab.

The server cannot import onnx (the serving image stays small), so these two tiny, model-independent graphs
are made here, committed, and never edited by hand; a test fails when they are stale.
Usage: python scripts/gen_slab_graphs.py [OUTPUT_DIR]
"""

import sys
from pathlib import Path

import onnx
from onnx import TensorProto, helper

OPSET = 17


def tensor(name: str, dtype: int, shape: list):
    """Sizes left open: one graph serves every state tensor (viewed as [rows, row_size]) and batch size."""
    return helper.make_tensor_value_info(name, dtype, shape)


def gather_graph() -> onnx.ModelProto:
    """rows [B, row_size] = slab [slab_rows, row_size] at indices [B]."""
    node = helper.make_node("Gather", ["slab", "indices"], ["rows"], axis=0)
    graph = helper.make_graph(
        [node], "slab_gather",
        [tensor("slab", TensorProto.FLOAT, ["slab_rows", "row_size"]), tensor("indices", TensorProto.INT64, ["batch"])],
        [tensor("rows", TensorProto.FLOAT, ["batch", "row_size"])],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="rnnserve")


def scatter_graph() -> onnx.ModelProto:
    """next_slab = slab with rows [B, row_size] written at indices [B, 1]."""
    node = helper.make_node("ScatterND", ["slab", "indices", "rows"], ["next_slab"])
    graph = helper.make_graph(
        [node], "slab_scatter",
        [
            tensor("slab", TensorProto.FLOAT, ["slab_rows", "row_size"]),
            tensor("indices", TensorProto.INT64, ["batch", 1]),
            tensor("rows", TensorProto.FLOAT, ["batch", "row_size"]),
        ],
        [tensor("next_slab", TensorProto.FLOAT, ["slab_rows", "row_size"])],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="rnnserve")


def main() -> None:
    out = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).resolve().parent.parent / "server" / "slab_graphs"
    out.mkdir(parents=True, exist_ok=True)
    for name, model in (("gather", gather_graph()), ("scatter", scatter_graph())):
        model.ir_version = 8  # readable by every onnxruntime this project supports
        onnx.checker.check_model(model)
        onnx.save(model, out / f"{name}.onnx")


if __name__ == "__main__":
    main()
