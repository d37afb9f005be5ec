"""Triton's own client (tritonclient[grpc], unmodified) against rnnserve: it reads the metadata, runs
sequences with infer and with a stream, and gets the same outputs as the native API for the same inputs."""

import numpy as np
import pytest

from rnnserve.server.sampling import softmax

CHUNKS = [list(b"The server keeps "), list(b"the state "), list(b"between requests.")]


def native_distributions(client, model: str, chunks: list[list[int]]) -> list[np.ndarray]:
    """Every step's whole output distribution from the native Stream API, chunk by chunk."""
    vocab = client.get_model(model).vocab_size
    distributions = []
    for response in client.stream(model, chunks, top_k=vocab):
        rows = np.zeros((len(response.steps), vocab))
        for row, step in enumerate(response.steps):
            for candidate in step.next:
                rows[row, candidate.token_id] = candidate.probability
        distributions.append(rows)
    return distributions


def test_server_and_model_metadata_through_tritons_client(any_target, triton):
    facts = triton("server_facts", any_target, "lstm")
    assert facts["live"] and facts["ready"] and facts["model_ready"]
    assert "sequence" in facts["extensions"]
    assert facts["inputs"] == [("tokens", "INT64", [-1, -1])]
    assert facts["outputs"] == [("logits", "FP32", [-1, -1, 256])]
    assert (facts["max_batch_size"], facts["idle_us"]) == (64, 300_000_000)


@pytest.mark.parametrize("sequence_id", [4242, "conversation-7"])
def test_a_sequence_with_infer_equals_the_native_stream(any_target, client, triton, sequence_id):
    logits = triton("infer_sequence", any_target, "lstm", CHUNKS, sequence_id)
    expected = native_distributions(client, "lstm", CHUNKS)
    assert [a.shape for a in logits] == [(1, len(c), 256) for c in CHUNKS]
    for got, want in zip(logits, expected):
        assert np.abs(softmax(got[0].astype(np.float64)) - want).max() < 1e-5


def test_a_sequence_over_a_stream_equals_the_native_stream_and_survives_an_error(any_target, client, triton):
    logits, errors = triton("stream_sequence", any_target, "rnn", CHUNKS, 99)
    assert len(errors) == 1 and "1000000 is outside the vocabulary" in errors[0]
    expected = native_distributions(client, "rnn", CHUNKS)
    for got, want in zip(logits, expected, strict=True):
        assert np.abs(softmax(got[0].astype(np.float64)) - want).max() < 1e-5


def test_text_as_bytes_equals_the_native_infer(any_target, client, triton):
    text = "print('hello')"
    logits = triton("infer_text", any_target, "lstm", text)
    native = client.infer("lstm", text, top_k=256)
    assert logits.shape == (1, len(text), 256)
    probabilities = np.array([[c.probability for c in sorted(s.next, key=lambda c: c.token_id)] for s in native])
    assert np.abs(softmax(logits[0].astype(np.float64)) - probabilities).max() < 1e-5
