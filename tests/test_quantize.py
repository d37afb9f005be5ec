"""int8 export: what it costs in validation loss is measured, reported consistently and bounded by a limit the
user sets, the model file says it is quantized, and the server serves it exactly as onnxruntime runs it in-process.

What int8 costs a model trained for a few seconds depends on how training rounded on this CPU, so the fixture keeps
the int8 graph whatever it cost (force) and the tests check that the figure is measured and reported truthfully;
the refusal is tested with a limit no model can meet."""

import json

import numpy as np
import onnxruntime as ort
import pytest

from rnnserve.errors import UsageError
from rnnserve.export.config import ExportConfig
from rnnserve.export.exporter import export
from rnnserve.server.config import ServerConfig
from rnnserve.server.sampling import softmax
from tests.helpers import Reference, ServerThread


@pytest.fixture(scope="module")
def int8_repository(tmp_path_factory, checkpoints):
    repository = tmp_path_factory.mktemp("int8")
    for name in ("lstm", "gru"):
        export(ExportConfig(str(checkpoints[name]), str(repository), name, "1", quantize="int8", force=True))
    return repository


def metadata(path) -> dict:
    return json.loads(ort.InferenceSession(str(path)).get_modelmeta().custom_metadata_map["rnnserve"])


@pytest.mark.parametrize("name", ["lstm", "gru"])
def test_int8_export_reports_what_it_cost_and_bought(int8_repository, repository, name):
    quantization = metadata(int8_repository / name / "1" / "model.onnx")["quantization"]
    assert quantization["kind"] == "int8"
    assert abs(quantization["val_loss_nats_int8"] - quantization["val_loss_nats_fp32"] - quantization["val_loss_increase_nats"]) < 1e-4
    fp32_loss = metadata(repository / name / "1" / "model.onnx")["training"]["val_loss_nats"]
    assert abs(quantization["val_loss_nats_fp32"] - fp32_loss) < 1e-3  # measured on the very batches training used
    assert 0 < quantization["val_loss_nats_int8"] < 2 * fp32_loss  # a quantized model of this one, not another
    assert quantization["file_bytes_int8"] < quantization["file_bytes_fp32"]
    assert quantization["step_speedup_batch_1"] > 0 and quantization["step_speedup_batch_64"] > 0


def test_int8_that_costs_more_than_the_limit_is_refused_and_nothing_written(tmp_path, checkpoints, repository):
    fp32_loss = metadata(repository / "lstm" / "1" / "model.onnx")["training"]["val_loss_nats"]
    impossible = -(fp32_loss + 1.0)  # a loss cannot fall below zero, so int8 cannot be this much better
    with pytest.raises(UsageError, match=r"validation loss rose by -?\d\.\d{4} nats/token \(over --max-loss-increase-nats -\d"):
        export(ExportConfig(str(checkpoints["lstm"]), str(tmp_path), "lstm", "1", quantize="int8", max_loss_increase_nats=impossible))
    assert not (tmp_path / "lstm").exists()


def test_an_int8_model_is_served_exactly_as_onnxruntime_runs_it(int8_repository):
    reference = Reference(int8_repository / "lstm" / "1" / "model.onnx")
    # at most 8 bytes: a prompt that long is always one onnxruntime call (server/pieces.py's smallest piece), and int8's
    # dynamic quantization scales each call's activations as a whole, so a prompt split by timing would differ slightly
    prompt = "return "
    with ServerThread(ServerConfig(repository=str(int8_repository), port=0, threads=1)) as running, running.client() as client:
        assert "int8" in json.loads(client.get_model("lstm").metadata_json)["quantization"]["kind"]
        pieces = list(client.generate("lstm", prompt, temperature=0.0, max_tokens=40))
        assert [t for p in pieces for t in p.token_ids] == reference.greedy(list(prompt.encode()), 40)
        steps = [s for r in client.stream("lstm", [prompt], top_k=3) for s in r.steps]
    logits, _ = reference.run(list(prompt.encode()), reference.initial_state())
    expected = np.sort(softmax(logits.astype(np.float64)), axis=-1)[:, ::-1][:, :3]
    assert np.abs(np.array([[c.probability for c in s.next] for s in steps]) - expected).max() < 1e-5
