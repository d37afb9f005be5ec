import math

import pytest
import torch

from rnnserve.errors import UsageError
from rnnserve.training.batches import Batch, batchify, chunks
from rnnserve.training.config import TrainConfig
from rnnserve.training.data import builtin_corpus, unigram_entropy_bits
from rnnserve.training.models import ModelConfig, RecurrentNet
from rnnserve.training.train import evaluate, load_model, train


def test_builtin_corpus_is_english_text_without_download():
    text = builtin_corpus()
    assert len(text) > 300_000
    assert "statement" in text


def test_training_lowers_validation_loss(tmp_path, corpus_file):
    config = TrainConfig(
        corpus=str(corpus_file), hidden=128, layers=1, embedding=16, batch_size=16, bptt=32, steps=150, lr=1e-2,
        eval_every=1000, out=str(tmp_path / "m.pt"), quiet=True,
    )
    metrics = train(config)
    # An untrained byte model predicts uniformly: ln(256) = 5.55 nats per token.
    assert metrics["val_loss_nats"] < math.log(256) - 2.0
    # ...and it uses context: clearly below the text's unigram entropy
    assert metrics["val_bits_per_char"] < metrics["unigram_bits_per_char"] - 0.3
    model, _, checkpoint = load_model(tmp_path / "m.pt")
    assert checkpoint["progress"]["step"] == 150
    assert model.config == ModelConfig(256, "lstm", 1, 128, 16, 0.1)


def test_same_seed_gives_the_same_model(tmp_path, corpus_file):
    settings = dict(corpus=str(corpus_file), cell="gru", hidden=16, layers=1, embedding=8, batch_size=4, bptt=16,
                    steps=10, eval_every=1000, quiet=True)
    train(TrainConfig(out=str(tmp_path / "a.pt"), **settings))
    train(TrainConfig(out=str(tmp_path / "b.pt"), **settings))
    a, _, _ = load_model(tmp_path / "a.pt")
    b, _, _ = load_model(tmp_path / "b.pt")
    for (name, pa), (_, pb) in zip(a.state_dict().items(), b.state_dict().items()):
        assert torch.equal(pa, pb), name


def test_resume_continues_from_the_checkpoint(tmp_path, corpus_file):
    settings = dict(corpus=str(corpus_file), hidden=32, layers=1, embedding=8, batch_size=8, bptt=32,
                    eval_every=1000, out=str(tmp_path / "m.pt"), quiet=True)
    first = train(TrainConfig(steps=40, **settings))
    second = train(TrainConfig(steps=100, resume=True, **settings))
    assert second["steps"] == 100
    assert second["val_loss_nats"] < first["val_loss_nats"]


def test_resume_without_a_checkpoint_says_so(tmp_path):
    with pytest.raises(UsageError, match="no checkpoint"):
        train(TrainConfig(resume=True, out=str(tmp_path / "missing.pt"), quiet=True))


@pytest.mark.parametrize("cell", ["rnn", "lstm", "gru"])
def test_every_cell_stacks_layers(cell):
    model = RecurrentNet(ModelConfig(50, cell, layers=3, hidden=8, embedding=4))
    tokens = torch.randint(0, 50, (2, 5))
    logits, state = model(tokens, model.initial_state(2))
    assert logits.shape == (2, 5, 50)
    assert all(s.shape == (3, 2, 8) for s in state)
    assert len(state) == (2 if cell == "lstm" else 1)


def test_evaluate_matches_an_independent_cross_entropy():
    torch.manual_seed(0)
    model = RecurrentNet(ModelConfig(20, "gru", layers=1, hidden=8, embedding=4, dropout=0.0))
    ids = torch.randint(0, 20, (400,)).tolist()
    inputs, targets = batchify(ids[:-1], 4), batchify(ids[1:], 4)
    with torch.no_grad():
        logits, _ = model(inputs, model.initial_state(4))
        expected = torch.nn.functional.cross_entropy(logits.flatten(0, 1), targets.flatten()).item()
    batches = [Batch(x, y, fresh=i == 0) for i, (x, y) in enumerate(chunks(inputs, targets, 30))]
    loss, window_logits = evaluate(model, batches)  # windows carry the state: same as one pass
    assert loss == pytest.approx(expected, rel=1e-5)
    assert torch.allclose(torch.cat(window_logits, dim=1), logits, atol=1e-6)


def test_unigram_entropy():
    assert unigram_entropy_bits("abab") == pytest.approx(1.0)
    assert unigram_entropy_bits("aaaa") == 0.0
