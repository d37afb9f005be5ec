"""The model contract: what export writes is what the server reads, through one module."""

import json

import pytest

from rnnserve.contract import (
    DEFAULT_SAMPLING,
    NO_SAMPLING,
    BadModelFile,
    EncoderSpec,
    OutputSpec,
    StateSpec,
    metadata_entry,
    model_document,
    read_card,
)


def test_a_written_document_reads_back_as_the_same_model():
    state = [StateSpec("h", "h_next", (2, 8)), StateSpec("memory", "", (5, 8)), StateSpec("mask", "", (5,))]
    outputs = [OutputSpec("logits", 260, "next token"), OutputSpec("attention", "S", "weights over the source")]
    document = model_document(
        "date_normaliser", {"vocab_size": 260, "cell": "gru"}, {"kind": "byte"}, state, outputs, streaming=True,
        encoder=EncoderSpec("encoder.onnx", "source", max_source_tokens=5), special_tokens=(256, 257),
        sampling=DEFAULT_SAMPLING, parity={"max_abs_diff": 1e-6},
    )
    card = read_card("dates", "3", dict([metadata_entry(document)]))
    assert (card.name, card.version, card.task, card.vocab_size, card.output_size) == ("dates", "3", "date_normaliser", 260, 260)
    assert card.state == tuple(state)
    assert card.encoder == EncoderSpec("encoder.onnx", "source", max_source_tokens=5)
    assert (card.bos, card.eos, card.extra_outputs, card.sampling) == (256, 257, ("attention",), DEFAULT_SAMPLING)
    assert card.document["parity"] == {"max_abs_diff": 1e-6}
    assert card.output_widths == {"logits": 260, "attention": 5}


def test_a_classifier_reads_back_with_its_labels_and_no_sampling():
    document = model_document(
        "text_classifier", {"vocab_size": 256}, {"kind": "byte"}, [StateSpec("h", "h_next", (1, 4))],
        [OutputSpec("logits", 3, "classes", ("prose", "python", "c"))], streaming=True, sequence_output="last",
    )
    card = read_card("kind", "1", dict([metadata_entry(document)]))
    assert (card.labels, card.sequence_output, card.sampling, card.generates) == (("prose", "python", "c"), "last", NO_SAMPLING, False)


@pytest.mark.parametrize(
    "metadata, message",
    [
        ({}, "no 'rnnserve' metadata entry"),
        ({"rnnserve": "{not json"}, "metadata is not JSON"),
        ({"rnnserve": json.dumps({"schema_version": 99})}, "schema_version 99, this server reads 1"),
        ({"rnnserve": json.dumps({"schema_version": 1, "task": "language_model"})}, "malformed metadata document"),
    ],
)
def test_a_bad_document_is_refused_with_a_reason(metadata, message):
    with pytest.raises(BadModelFile, match=message):
        read_card("m", "1", metadata)

