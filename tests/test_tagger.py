"""Many-to-many aligned: restore the word boundaries of text whose spaces were removed, per character."""

import json

import grpc
import numpy as np
import onnx
import pytest

from rnnserve.server.sampling import softmax
from rnnserve.training.train import load_model
from tests.helpers import status_of

TEXT = "Thereturnstatementleavesthecurrentfunctioncall"


def test_taggers_learn_where_words_end_and_reading_both_ways_helps(checkpoints):
    uni = load_model(checkpoints["tagger"])[2]["progress"]["metrics"]
    bi = load_model(checkpoints["tagger_bi"])[2]["progress"]["metrics"]
    assert uni["task"] == "boundary_tagger"
    assert uni["boundary_f1"] > 0.4
    assert bi["boundary_f1"] > uni["boundary_f1"]


def test_tagger_files_describe_their_labels_and_state(repository):
    def document(name):
        model = onnx.load(str(repository / name / "1" / "model.onnx"))
        return model, json.loads({p.key: p.value for p in model.metadata_props}["rnnserve"])

    uni_model, uni = document("tagger")
    bi_model, bi = document("tagger_bi")
    assert uni["outputs"][0]["labels"] == bi["outputs"][0]["labels"] == ["no_boundary", "boundary"]
    assert uni["streaming"] and [s["name"] for s in uni["state"]] == ["h", "c"]
    assert not bi["streaming"] and bi["state"] == [] and [i.name for i in bi_model.graph.input] == ["tokens"]
    assert uni["parity"]["passed"] and bi["parity"]["passed"]
    assert "sampling" not in uni


def test_served_calls_follow_the_metadata(client):
    assert list(client.get_model("tagger").calls) == ["Infer", "Stream"]
    assert list(client.get_model("tagger_bi").calls) == ["Infer"]
    error = status_of(lambda: list(client.stream("tagger_bi", [TEXT])))
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION and "Infer" in error.details()
    error = status_of(lambda: client.generate_text("tagger", TEXT))
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION


@pytest.mark.parametrize("name", ["tagger", "tagger_bi"])
def test_infer_tags_every_character_like_in_process_onnxruntime(name, client, reference, repository):
    ref = reference(name)
    vocab = json.loads(client.get_model(name).metadata_json)["tokenizer"]["vocab"]
    logits, _ = ref.run([vocab.index(ch) for ch in TEXT], ref.initial_state())
    expected = softmax(logits.astype(np.float64))  # [T, 2]
    steps = client.infer(name, TEXT, top_k=2)
    assert [s.token_text for s in steps] == list(TEXT)
    for step, probs in zip(steps, expected, strict=True):
        by_label = {c.text: c.probability for c in step.next}
        assert by_label["boundary"] == pytest.approx(probs[1], abs=1e-5)
        assert by_label["no_boundary"] == pytest.approx(probs[0], abs=1e-5)


def test_a_streaming_tagger_tags_each_character_as_it_arrives(client):
    whole = client.infer("tagger", TEXT, top_k=2)
    streamed = [s for r in client.stream("tagger", list(TEXT), top_k=2) for s in r.steps]
    assert [c.probability for s in streamed for c in s.next] == pytest.approx(
        [c.probability for s in whole for c in s.next], abs=1e-6
    )
