"""Generate over real gRPC against the model run in-process on onnxruntime."""

import json
import time

import pytest

from rnnserve.client import RnnServeClient
from rnnserve.text import tokenizer_from_spec
from rnnserve.v1 import rnnserve_pb2 as pb
from tests.helpers import ReferenceSampler, together

PROMPT = "The return statement "


@pytest.mark.parametrize("name", ["lstm", "gru", "rnn"])
def test_greedy_text_equals_in_process_onnxruntime(name, client, reference):
    info = client.get_model(name)
    tokenizer = tokenizer_from_spec(json.loads(info.metadata_json)["tokenizer"])
    expected_ids = reference(name).greedy(tokenizer.encode(PROMPT), 40)
    pieces = list(client.generate(name, PROMPT, temperature=0.0, max_tokens=40))
    assert [t for p in pieces for t in p.token_ids] == expected_ids
    expected_text = b"".join(tokenizer.token_bytes(t) for t in expected_ids).decode("utf-8", errors="replace")
    assert "".join(p.text for p in pieces) == expected_text
    assert pieces[-1].finish_reason == pb.FINISH_REASON_LENGTH
    assert pieces[-1].generated_tokens == 40 and pieces[-1].prompt_tokens == len(tokenizer.encode(PROMPT))


def test_same_seed_same_text_different_seed_different_text(client):
    settings = dict(temperature=1.0, max_tokens=60)
    first = client.generate_text("lstm", PROMPT, seed=7, **settings)
    again = client.generate_text("lstm", PROMPT, seed=7, **settings)
    other = client.generate_text("lstm", PROMPT, seed=8, **settings)
    assert first == again
    assert first != other


def test_seeded_sampling_matches_a_reference_sampler(client, reference):
    """temperature + top-k + top-p through the server equal the same sampler over in-process logits."""
    ref, sampler = reference("lstm"), ReferenceSampler(temperature=0.9, top_k=20, top_p=0.9, seed=123)
    logits, state = ref.run(list(PROMPT.encode()), ref.initial_state())
    expected = []
    for _ in range(30):
        expected.append(sampler.sample(logits[-1]))
        logits, state = ref.run([expected[-1]], state)
    pieces = client.generate("lstm", PROMPT, temperature=0.9, top_k=20, top_p=0.9, seed=123, max_tokens=30)
    assert [t for p in pieces for t in p.token_ids] == expected


def test_concurrent_generations_each_sample_with_their_own_settings(client, reference):
    """Rows sampled together, each with its own temperature, top-k, top-p and seed, draw exactly what each
    would draw alone from the per-row reference sampler."""
    ref = reference("lstm")
    settings = [
        dict(temperature=t, top_k=k, top_p=p, seed=seed)
        for seed, (t, k, p) in enumerate([(0.0, 0, 1.0), (0.7, 0, 1.0), (1.0, 5, 1.0), (1.3, 0, 0.8), (0.9, 40, 0.95),
                                          (2.0, 1, 1.0), (0.5, 0, 0.3), (1.0, 255, 0.99)])
    ]

    def expected(setting: dict) -> list[int]:
        sampler = ReferenceSampler(**setting)
        logits, state = ref.run(list(PROMPT.encode()), ref.initial_state())
        tokens = []
        for _ in range(25):
            tokens.append(sampler.sample(logits[-1]))
            logits, state = ref.run([tokens[-1]], state)
        return tokens

    def served(setting: dict) -> list[int]:
        return [t for piece in client.generate("lstm", PROMPT, max_tokens=25, **setting) for t in piece.token_ids]

    assert together([lambda s=s: served(s) for s in settings]) == [expected(s) for s in settings]


def test_pieces_coalesce_while_the_client_lags(server, client):
    """A client that reads slowly gets several tokens per piece, never a character cut in half, and exactly the
    text a fast client gets. (A small receive window makes the lag reach the server quickly.)"""
    settings = dict(temperature=0.0, max_tokens=600)
    fast = list(client.generate("korean", "안녕하세요. ", **settings))
    small_window = [("grpc.http2.lookahead_bytes", 1024), ("grpc.http2.bdp_probe", 0)]
    with RnnServeClient(server.target, timeout_s=30, options=small_window) as lagging:
        slow = []
        for piece in lagging.generate("korean", "안녕하세요. ", **settings):
            slow.append(piece)
            time.sleep(0.002)
    assert [t for p in slow for t in p.token_ids] == [t for p in fast for t in p.token_ids]
    assert "".join(p.text for p in slow) == "".join(p.text for p in fast)
    assert len(slow) * 4 < sum(len(p.token_ids) for p in slow)  # pieces did coalesce
    for piece in slow[:-1]:
        assert piece.text.encode() == bytes(piece.token_ids)  # whole characters, none held over or cut


def test_stop_string_ends_generation_and_is_not_returned(client):
    full = client.generate_text("lstm", PROMPT, temperature=0.0, max_tokens=80)
    stop = full[10:13]
    pieces = list(client.generate("lstm", PROMPT, temperature=0.0, max_tokens=80, stop=[stop]))
    text = "".join(p.text for p in pieces)
    assert text == full[: full.index(stop)]
    assert pieces[-1].finish_reason == pb.FINISH_REASON_STOP


def test_prompt_is_consumed_in_a_few_runtime_calls(client):
    from rnnserve.server.pieces import MIN_ROW_STEPS

    before = client.get_model("rnn").runtime_calls
    client.generate_text("rnn", "x" * 300, temperature=0.0, max_tokens=5)
    # the 300 prompt tokens in pieces of at least MIN_ROW_STEPS (not a call per token), then a call per generated
    # token after the first
    calls = client.get_model("rnn").runtime_calls - before - 4
    assert 1 <= calls <= -(-300 // MIN_ROW_STEPS)


def test_pieces_arrive_as_they_are_produced(client):
    """Streamed, not sent in one message at the end (tokens written while a piece is being sent go out together
    in the next: the engine does not wait for the client)."""
    pieces = list(client.generate("lstm", PROMPT, temperature=0.0, max_tokens=300))
    assert len(pieces) >= 2


def test_model_defaults_apply_when_settings_are_unset(client):
    info = client.get_model("lstm")
    assert info.default_sampling.max_tokens == 200
    pieces = list(client.generate("lstm", PROMPT, seed=1))
    assert pieces[-1].generated_tokens == 200


def test_list_and_get_models(client):
    names = [m.name for m in client.list_models()]
    assert names == [
        "dates", "gru", "kind", "kind_bi", "korean", "korean_bpe", "korean_char", "lstm", "rnn", "tagger", "tagger_bi", "words", "writer"
    ]
    info = client.get_model("lstm")
    assert (info.cell, info.layers, info.hidden, info.vocab_size) == ("lstm", 2, 32, 256)
    assert [s.name for s in info.state] == ["h", "c"] and list(info.state[0].shape) == [2, 32]
    assert list(info.providers) == ["CPUExecutionProvider"]
    assert info.streaming and info.versions == ["1"]
