"""The server asks a model's metadata what it can do, never its cell type or task name."""

import json
from dataclasses import replace

import grpc
import onnx
import pytest

from tests.helpers import ServerThread, status_of


@pytest.fixture(scope="module")
def whole_sequence_server(repository, base_config, tmp_path_factory):
    """The rnn test model, its metadata rewritten to say: needs the whole input; outputs are labels."""
    model = onnx.load(str(repository / "rnn" / "1" / "model.onnx"))
    entry = next(p for p in model.metadata_props if p.key == "rnnserve")
    document = json.loads(entry.value)
    document["streaming"] = False
    document["outputs"][0]["labels"] = [f"class{i}" for i in range(256)]
    entry.value = json.dumps(document)
    root = tmp_path_factory.mktemp("contract")
    (root / "whole" / "1").mkdir(parents=True)
    onnx.save(model, str(root / "whole" / "1" / "model.onnx"))
    with ServerThread(replace(base_config, repository=str(root))) as running:
        yield running


def test_a_whole_sequence_model_offers_infer_only(whole_sequence_server):
    with whole_sequence_server.client() as client:
        info = client.get_model("whole")
        assert list(info.calls) == ["Infer"] and not info.streaming
        error = status_of(lambda: list(client.stream("whole", ["abc"])))
        assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "cannot stream per step" in error.details() and "Infer" in error.details()
        error = status_of(lambda: client.generate_text("whole", "abc"))
        assert error.code() == grpc.StatusCode.FAILED_PRECONDITION and "does not generate" in error.details()


def test_labelled_outputs_are_named_by_their_labels(whole_sequence_server, client):
    with whole_sequence_server.client() as labelled:
        steps = labelled.infer("whole", "abc", top_k=3)
    plain = client.infer("rnn", "abc", top_k=3)
    for labelled_step, plain_step in zip(steps, plain, strict=True):
        assert [c.text for c in labelled_step.next] == [f"class{c.token_id}" for c in plain_step.next]
        assert [c.probability for c in labelled_step.next] == pytest.approx([c.probability for c in plain_step.next])
