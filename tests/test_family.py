"""Every shape served: a classifier (whole text and running), a conditional language model (a label in, a
text out) and an encoder–decoder with attention (a source in, tokens and attention weights out). Each
answer over gRPC equals the PyTorch model's, alone and batched with others."""

from concurrent.futures import ThreadPoolExecutor

import grpc
import numpy as np
import pytest
import torch

from rnnserve.training.tasks import greedy_decode, sequence_probabilities
from rnnserve.training.train import load_model
from tests.helpers import run_cli, status_of

SNIPPETS = [
    "def area(radius):\n    return 3.14159 * radius ** 2\n",
    "The interpreter reads the whole module before it runs any of it.",
    "static PyObject *\nlist_append(PyListObject *self, PyObject *object)\n{",
    "for key, value in sorted(table.items()):\n        print(key, value)",
]
DATES = ["March 5, 2024", "5 Mar 2024", "Tuesday, March 5th, 2024", "05.03.2024", "1999/12/31", "the 2nd of june 1931"]


@pytest.fixture(scope="module")
def torch_models(checkpoints):
    """The PyTorch models the repository fixture exported, from their checkpoints."""
    return {name: load_model(checkpoints[name])[:2] for name in ("kind", "kind_bi", "writer", "dates")}


def _class_probabilities(model, tokenizer, text: str) -> np.ndarray:
    with torch.no_grad():
        logits, _ = model(torch.tensor([tokenizer.encode(text)]), None)
    return sequence_probabilities(torch.softmax(logits.double(), -1), model.config.bidirectional)[0].numpy()


def _by_label(classes) -> dict[str, float]:
    return {c.text: c.probability for c in classes}


@pytest.mark.parametrize("name", ["kind", "kind_bi"])
def test_classifier_answers_for_the_whole_text_as_pytorch_does(name, client, torch_models):
    model, tokenizer = torch_models[name]
    labels = list(client.get_model(name).labels)
    assert labels == ["prose", "python", "c"]
    for text in SNIPPETS:
        classes = client.classify(name, text)
        assert [c.probability for c in classes] == sorted((c.probability for c in classes), reverse=True)
        served = _by_label(classes)
        assert [served[label] for label in labels] == pytest.approx(_class_probabilities(model, tokenizer, text), abs=1e-5)


def test_classifier_tells_kinds_of_text_apart(repository, client):
    document = client.get_model("kind").metadata_json
    assert '"accuracy"' in document
    import json

    assert json.loads(document)["training"]["accuracy"] >= 0.7  # three kinds: chance is 0.33
    guesses = [client.classify("kind", text)[0].text for text in SNIPPETS]
    assert guesses.count("python") >= 1 and "c" in guesses


def test_streaming_classifier_gives_running_probabilities_after_every_chunk(client, torch_models):
    model, tokenizer = torch_models["kind"]
    text = SNIPPETS[2]
    cuts = [0, 10, 25, len(text)]
    chunks = [text[a:b] for a, b in zip(cuts, cuts[1:])]
    responses = list(client.stream("kind", chunks))
    for response, end in zip(responses, cuts[1:], strict=True):
        served = _by_label(response.classes)
        expected = _class_probabilities(model, tokenizer, text[:end])  # the running guess after this prefix
        assert [served[label] for label in ("prose", "python", "c")] == pytest.approx(expected, abs=1e-5)


def test_bidirectional_classifier_refuses_per_step_streaming(client):
    assert list(client.get_model("kind_bi").calls) == ["Infer"]
    error = status_of(lambda: list(client.stream("kind_bi", ["int x;"])))
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "whole input" in error.details() and "Infer" in error.details()


def _torch_conditional_greedy(model, tokenizer, label: int, count: int) -> list[int]:
    with torch.no_grad():
        state = model.initial_state(1, torch.tensor([label]))
        token, out = model.config.bos, []
        for _ in range(count):
            logits, state = model(torch.tensor([[token]]), state)
            token = int(logits[0, -1, : tokenizer.vocab_size].argmax())
            out.append(token)
    return out


def test_conditional_model_writes_from_the_label_it_is_given(client, torch_models):
    model, tokenizer = torch_models["writer"]
    info = client.get_model("writer")
    assert list(info.conditions) == ["prose", "python", "c"] and list(info.calls) == ["Generate"]
    written = {}
    for index, label in enumerate(info.conditions):
        pieces = list(client.generate("writer", label=label, temperature=0.0, max_tokens=24))
        written[label] = [t for p in pieces for t in p.token_ids]
        assert written[label] == _torch_conditional_greedy(model, tokenizer, index, 24)
    assert len({tuple(tokens) for tokens in written.values()}) > 1  # the label changes what is written


def test_conditional_model_needs_a_known_label(client):
    error = status_of(lambda: client.generate_text("writer", max_tokens=5))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT and "prose, python, c" in error.details()
    error = status_of(lambda: client.generate_text("writer", label="poetry", max_tokens=5))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT and "'poetry'" in error.details()
    error = status_of(lambda: client.infer("writer", "abc"))
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION and "Generate" in error.details()
    error = status_of(lambda: client.generate_text("lstm", "The ", label="prose", max_tokens=5))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT and "takes no label" in error.details()


def test_encoder_decoder_decodes_as_pytorch_does_with_attention_over_the_source(client, torch_models):
    model, tokenizer = torch_models["dates"]
    for source in DATES:
        pieces = list(client.generate("dates", source=source))
        assert "".join(p.text for p in pieces) == greedy_decode(model, tokenizer, source)
        assert list(pieces[0].source_tokens) == list(source)
        assert pieces[-1].finish_reason in (3, 1)  # it ended its output, or ran out of max_tokens
        token_count = sum(len(p.token_ids) for p in pieces)
        rows = [list(a.weights) for p in pieces for a in p.attention]
        assert len(rows) == token_count
        assert all(len(row) == len(source) and sum(row) == pytest.approx(1.0, abs=1e-4) for row in rows)


def test_encoder_decoder_attention_equals_pytorch(client, torch_models):
    model, tokenizer = torch_models["dates"]
    source = DATES[2]
    pieces = list(client.generate("dates", source=source, max_tokens=6))
    tokens = [t for p in pieces for t in p.token_ids]
    served = np.array([list(a.weights) for p in pieces for a in p.attention])
    with torch.no_grad():
        state = model.encode(torch.tensor([tokenizer.encode(source)]))
        _, _, weights = model(torch.tensor([[model.config.bos, *tokens[:-1]]]), state, attention=True)
    assert served == pytest.approx(weights[0].numpy(), abs=1e-5)


def test_encoder_decoder_rejects_bad_sources(client):
    error = status_of(lambda: client.generate_text("dates"))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT and "source" in error.details()
    error = status_of(lambda: client.generate_text("dates", source="x" * 49))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT and "longer than the 48" in error.details()
    error = status_of(lambda: client.generate_text("lstm", "The ", source="March 5, 2024"))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT and "takes no source" in error.details()
    assert client.get_model("dates").max_source_tokens == 48


def test_every_shape_batched_equals_alone(server, client):
    """Many sessions of each shape at once through the batcher give what each gives alone."""

    def date(source: str):
        pieces = list(client.generate("dates", source=source))
        return [t for p in pieces for t in p.token_ids], [list(a.weights) for p in pieces for a in p.attention]

    def written(i: int):
        return client.generate_text("writer", label=("prose", "python", "c")[i % 3], seed=i, max_tokens=30)

    def running(text: str):
        return [[c.probability for c in r.classes] for r in client.stream("kind", [text[:20], text[20:]])]

    def calls() -> int:
        return sum(client.get_model(m).runtime_calls for m in ("dates", "writer", "kind"))

    per_model = 8  # the test server's max_sessions
    jobs = [(date, s) for s in (DATES * 2)[:per_model]] + [(written, i) for i in range(per_model)]
    jobs += [(running, t) for t in (SNIPPETS * 2)[:per_model]]
    before = calls()
    alone = [job(arg) for job, arg in jobs]
    calls_alone = calls() - before
    with ThreadPoolExecutor(len(jobs)) as pool:
        together = list(pool.map(lambda job: job[0](job[1]), jobs))
    calls_together = calls() - before - calls_alone
    for one, other in zip(alone, together, strict=True):
        assert _flat(other) == pytest.approx(_flat(one), abs=1e-5)
    assert calls_together < calls_alone  # the steps really were batched


def _flat(value) -> list:
    if isinstance(value, str):
        return [float(ord(c)) for c in value]
    if isinstance(value, (list, tuple)):
        return [x for item in value for x in _flat(item)]
    return [float(value)]


def test_cli_shows_attention_and_classes(server, client):
    expected = client.generate_text("dates", source="5 Mar 2024")
    done = run_cli("generate", "--target", server.target, "--model", "dates", "--source", "5 Mar 2024", "--attention")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0] == expected
    assert len([line for line in lines[1:] if "←" in line]) == len(expected.encode())  # a line per output token
    done = run_cli("infer", "--target", server.target, "--model", "kind", "--top-k", "1", "int main(void) { return 0; }")
    assert done.returncode == 0, done.stderr
    answer = client.classify("kind", "int main(void) { return 0; }")[0]
    assert f"[whole text: {answer.text} {answer.probability:.3f}" in done.stdout
