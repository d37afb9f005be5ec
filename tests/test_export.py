import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from rnnserve.errors import UsageError
from rnnserve.export.graphs import step_graph, to_onnx
from rnnserve.export.verify import ParityError, check_parity, parity_report
from rnnserve.training.train import load_model

MODELS = ["lstm", "gru", "rnn"]


@pytest.mark.parametrize("name", MODELS)
def test_onnx_equals_pytorch(name, repository, checkpoints):
    model, _, _ = load_model(checkpoints[name])
    session = ort.InferenceSession(str(repository / name / "1" / "model.onnx"))
    rng = np.random.default_rng(1)
    tokens = rng.integers(0, model.config.vocab_size, (4, 17))  # [B, T]
    state = [rng.standard_normal((4, model.config.layers, model.config.hidden)).astype(np.float32)
             for _ in model.config.state_names]
    onnx_logits, *onnx_state = session.run(None, {"tokens": tokens, **dict(zip(model.config.state_names, state))})
    with torch.no_grad():
        torch_logits, torch_state = model(torch.from_numpy(tokens), tuple(torch.from_numpy(s).transpose(0, 1) for s in state))
    assert np.abs(onnx_logits - torch_logits.numpy()).max() <= 1e-4
    for ours, theirs in zip(onnx_state, torch_state):
        assert np.abs(ours - theirs.transpose(0, 1).numpy()).max() <= 1e-4


@pytest.mark.parametrize("name", MODELS)
def test_step_by_step_equals_whole_sequence(name, reference):
    ref = reference(name)
    tokens = [5, 17, 3, 9, 12, 1, 7]
    whole, whole_state = ref.run(tokens, ref.initial_state())
    state, steps = ref.initial_state(), []
    for token in tokens:
        logits, state = ref.run([token], state)
        steps.append(logits[0])
    assert np.abs(np.stack(steps) - whole).max() <= 1e-5
    for key in state:
        assert np.abs(state[key] - whole_state[key]).max() <= 1e-5


def test_model_file_describes_itself(repository):
    model = onnx.load(str(repository / "lstm" / "1" / "model.onnx"))
    onnx.checker.check_model(model)
    document = json.loads({p.key: p.value for p in model.metadata_props}["rnnserve"])
    assert document["task"] == "language_model"
    assert document["tokenizer"] == {"kind": "byte"}
    assert [s["name"] for s in document["state"]] == ["h", "c"]
    assert document["state"][0]["shape"] == [2, 32]
    assert document["parity"]["passed"] and document["parity"]["max_abs_diff"] <= 1e-4
    assert document["training"]["val_loss_nats"] > 0
    assert {i.name for i in model.graph.input} == {"tokens", "h", "c"}
    assert [o.name for o in model.graph.output] == ["logits", "h_next", "c_next"]
    assert "LSTM" in {n.op_type for n in model.graph.node}  # the fused operator, not an unrolled loop


def test_char_model_carries_its_vocabulary(repository):
    model = onnx.load(str(repository / "gru" / "1" / "model.onnx"))
    document = json.loads({p.key: p.value for p in model.metadata_props}["rnnserve"])
    assert document["tokenizer"]["kind"] == "char"
    assert len(document["tokenizer"]["vocab"]) == document["architecture"]["vocab_size"]


def test_parity_check_fails_loudly_on_a_wrong_graph(checkpoints):
    lstm, _, _ = load_model(checkpoints["lstm"])
    other, _, _ = load_model(checkpoints["lstm"])
    with torch.no_grad():
        other.head.bias.add_(0.01)  # a graph that is off by a little
    report = parity_report(step_graph(lstm), to_onnx(step_graph(other)))
    assert not report["passed"]
    with pytest.raises(ParityError, match="differs from PyTorch"):
        check_parity(report)


def test_export_refuses_to_overwrite(repository, checkpoints):
    from rnnserve.export.config import ExportConfig
    from rnnserve.export.exporter import export

    with pytest.raises(UsageError, match="--force"):
        export(ExportConfig(str(checkpoints["rnn"]), str(repository), "rnn", "1"))
