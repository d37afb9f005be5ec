"""Word-level language models on standard splits: a training file, a validation file and a test file each read as
given and scored whole; per-word perplexity is exp(total loss / (words + line ends)) as papers compute it; the
checkpoint kept is the best validation's, and --lr-plateau divides the rate when validation stalls."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import grpc
import pytest
import torch

from rnnserve.training.config import TrainConfig
from rnnserve.training.train import load_model, train
from tests.helpers import ServerThread, run_cli, status_of

TRAIN = "".join(f" the {a} {v} the {b} \n" for a in ("cat", "dog", "bird", "fox") for v in ("sat", "ran", "saw") for b in ("mat", "log", "sun"))
VALID = " the cat saw the sun \n the fox ran the log \n"
TEST = " the dog sat the mat \n the bird saw the cat \n the fox ran \n"


@pytest.fixture
def splits(tmp_path) -> dict[str, Path]:
    paths = {name: tmp_path / f"ptb.{name}.txt" for name in ("train", "valid", "test")}
    for name, text in zip(paths, (TRAIN * 20, VALID, TEST)):
        paths[name].write_text(text)
    return paths


def word_model(splits, tmp_path, **settings) -> TrainConfig:
    return TrainConfig(**{
        "corpus": str(splits["train"]), "val_corpus": str(splits["valid"]), "test_corpus": str(splits["test"]), "tokenizer": "word",
        "vocab_size": 40, "layers": 1, "hidden": 32, "embedding": 16, "batch_size": 4, "bptt": 16, "steps": 60, "eval_every": 1000,
        "out": str(tmp_path / "words.pt"), "quiet": True, **settings,
    })


def total_nll(model, tokenizer, text: str) -> float:
    """The loss of every token of `text`, read after a line end in one pass from a fresh state: by hand."""
    ids = tokenizer.encode("\n") + tokenizer.encode(text)
    with torch.no_grad():
        logits, _ = model(torch.tensor([ids[:-1]]), model.initial_state(1))
        return torch.nn.functional.cross_entropy(logits[0], torch.tensor(ids[1:]), reduction="sum").item()


def test_standard_splits_are_read_as_given_and_perplexity_is_per_word(splits, tmp_path):
    metrics = train(word_model(splits, tmp_path))
    model, tokenizer, _ = load_model(tmp_path / "words.pt")
    for split, text in (("val", VALID), ("test", TEST)):
        words = len(text.split()) + text.count("\n")
        assert (metrics[f"{split}_chars"], metrics[f"{split}_words"]) == (len(text), words)  # the file itself, whole
        assert len(tokenizer.encode(text)) == words  # a token is a word, or a line end
        nll = total_nll(model, tokenizer, text)
        assert metrics[f"{split}_word_perplexity"] == pytest.approx(math.exp(nll / words), rel=1e-3)
        assert metrics[f"{split}_bits_per_char"] == pytest.approx(nll / math.log(2) / len(text), rel=1e-3)
    assert metrics["corpus_chars"] == len(TRAIN * 20)  # all of --corpus trains: nothing of it is held out
    assert metrics["test_word_perplexity"] < 40 / 2, "it learnt the words' order, far better than a uniform guess"


def test_the_best_validation_is_kept_and_a_plateau_divides_the_rate(splits, tmp_path):
    """A validation file of other sentences than the training ones: trained long at a high rate, the model learns the
    training sentences by heart and its validation loss rises; the evaluation of least validation loss is kept."""
    splits["valid"].write_text(" the sun saw the fox \n the mat ran the bird \n")
    config = word_model(splits, tmp_path, steps=400, eval_every=25, lr=3e-2, warmup_steps=0, dropout=0.0, lr_plateau=4.0)
    metrics = train(config)
    _, _, checkpoint = load_model(tmp_path / "words.pt")
    evaluations = checkpoint["progress"]["evaluations"]
    losses = [e["val_loss_nats"] for e in evaluations]
    assert losses[-1] > min(losses), "the run's validation loss rose, as it must for this test to mean anything"
    best = evaluations[losses.index(min(losses))]
    assert metrics["steps"] == best["steps"] and metrics["steps_trained"] == 400 and metrics["val_loss_nats"] == min(losses)
    stalls = sum(loss >= min(losses[:i]) for i, loss in enumerate(losses) if i)
    assert checkpoint["progress"]["lr_scale"] == pytest.approx(4.0 ** -stalls) and stalls >= 1
    model, tokenizer, _ = load_model(tmp_path / "words.pt")
    kept = total_nll(model, tokenizer, splits["valid"].read_text()) / (len(splits["valid"].read_text().split()) + 2)
    assert kept == pytest.approx(min(losses), rel=1e-3), "the checkpoint holds the kept evaluation's weights"
    assert [e["lr"] for e in evaluations][-1] < config.lr / 4  # the curve records the rate it trained at


def test_the_served_model_scores_a_file_as_the_trainer_did(splits, tmp_path):
    """`rnnserve score` sums each step's logprob from the server's Stream: the test file's figures equal the
    trainer's --test-corpus figures, exported into the model's metadata."""
    from rnnserve.export.config import ExportConfig
    from rnnserve.export.exporter import export
    from rnnserve.server.config import ServerConfig

    metrics = train(word_model(splits, tmp_path))
    export(ExportConfig(str(tmp_path / "words.pt"), str(tmp_path / "models"), "ptb", "1"))
    with ServerThread(ServerConfig(repository=str(tmp_path / "models"), host="127.0.0.1", port=0, threads=1)) as running:
        done = run_cli("score", "--target", running.target, "--model", "ptb", str(splits["test"]))
        with running.client() as client:
            shown = json.loads(client.get_model("ptb").metadata_json)["training"]
    assert done.returncode == 0, done.stderr
    figures = re.search(r"(\d+) tokens, (\d+) words and line ends, (\d+) characters: ([\d.]+) nats per token, ([\d.]+) bits per "
                        r"character, per-word perplexity ([\d.]+)", done.stdout)
    assert figures, done.stdout
    tokens, words, chars, nats, bits, perplexity = (float(g) for g in figures.groups())
    assert (words, chars) == (metrics["test_words"], metrics["test_chars"]) and tokens == words
    assert (nats, bits, perplexity) == pytest.approx((metrics["test_loss_nats"], metrics["test_bits_per_char"], metrics["test_word_perplexity"]), rel=1e-3)
    assert shown["test_word_perplexity"] == metrics["test_word_perplexity"]


def test_a_stream_scores_only_what_a_step_before_predicted(client):
    first, second = client.stream("lstm", ["ab", "c"], score=True)
    assert not first.steps[0].HasField("logprob"), "a new session's first token: nothing before it predicted it"
    assert all(s.HasField("logprob") and s.logprob < 0 for s in [*first.steps[1:], *second.steps])  # across messages too
    refused = status_of(lambda: list(client.stream("tagger", ["ab"], score=True)))
    assert refused.code() == grpc.StatusCode.INVALID_ARGUMENT and "start.score" in refused.details()
