"""The classic teaching example: a vanilla RNN on "hello" learns to predict "ello" from "hell" —
in PyTorch, in the exported ONNX file, and over gRPC from a served session."""

from dataclasses import replace

import pytest
import torch

from rnnserve.export.config import ExportConfig
from rnnserve.export.exporter import export
from rnnserve.training.config import TrainConfig
from rnnserve.training.train import load_model, train
from tests.helpers import ServerThread


def test_vanilla_rnn_learns_hello_and_serves_the_same_predictions(tmp_path, base_config):
    corpus = tmp_path / "hello.txt"
    corpus.write_text("hello" * 400)
    checkpoint = tmp_path / "hello.pt"
    train(TrainConfig(
        corpus=str(corpus), tokenizer="char", cell="rnn", layers=1, hidden=8, embedding=4, dropout=0.0,
        batch_size=4, bptt=10, lr=1e-2, warmup_steps=5, steps=150, val_fraction=0.1, eval_every=1000,
        out=str(checkpoint), quiet=True,
    ))
    model, tokenizer, _ = load_model(checkpoint)
    assert tokenizer.chars == ("e", "h", "l", "o")
    with torch.no_grad():
        logits, _ = model(torch.tensor([tokenizer.encode("hell")]), model.initial_state(1))
    assert "".join(tokenizer.chars[i] for i in logits[0].argmax(-1).tolist()) == "ello"

    export(ExportConfig(str(checkpoint), str(tmp_path / "models"), "hello", "1"))
    with ServerThread(replace(base_config, repository=str(tmp_path / "models"))) as server, server.client() as client:
        (response,) = client.stream("hello", ["hell"], top_k=1)
        assert "".join(step.next[0].text for step in response.steps) == "ello"
        served = [step.next[0].probability for step in response.steps]
    expected = torch.softmax(logits[0], -1).max(-1).values.tolist()
    assert served == pytest.approx(expected, abs=1e-5)
