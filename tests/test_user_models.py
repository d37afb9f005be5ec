"""Models written without rnnserve: a plain PyTorch module exported with `export_module`, and a graph exported by
the user's own `torch.onnx.export` made servable with `rnnserve describe`. Both are served and streamed with
exact parity; misuse is refused with a message that says what to change."""

import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from rnnserve.export import ContractError, export_module
from rnnserve.server.sampling import softmax
from rnnserve.text import ByteTokenizer
from tests.helpers import ServerThread, run_cli

ROOT = Path(__file__).resolve().parent.parent
TEXT = "def greet(name):\n    return f'hello {name}'\n"


class GruLM(nn.Module):
    """What a user writes: batch-major state (it transposes for nn.GRU itself)."""

    def __init__(self, vocab=256, hidden=32, layers=2):
        super().__init__()
        self.embed, self.gru, self.out = nn.Embedding(vocab, 16), nn.GRU(16, hidden, layers, batch_first=True), nn.Linear(hidden, vocab)

    def forward(self, tokens, h):
        x, h = self.gru(self.embed(tokens), h.transpose(0, 1).contiguous())
        return self.out(x), h.transpose(0, 1)


class LstmLM(nn.Module):
    """nn.LSTM's own state layout: [layers, batch, hidden] for h and c."""

    def __init__(self, vocab=256, hidden=32):
        super().__init__()
        self.embed, self.lstm, self.out = nn.Embedding(vocab, 16), nn.LSTM(16, hidden, 2, batch_first=True), nn.Linear(hidden, vocab)

    def forward(self, tokens, state):
        x, state = self.lstm(self.embed(tokens), state)
        return self.out(x), state


class NamedStateLstmLM(LstmLM):
    """State by name, as the declaration reads: a dict in, a dict out (nn.LSTM's own layout inside)."""

    def forward(self, tokens, state):
        x, (h, c) = self.lstm(self.embed(tokens), (state["h"], state["c"]))
        return self.out(x), {"c": c, "h": h}  # any order: matched by name


class NamedStateCellLM(nn.Module):
    """A custom LSTM cell stepped in a loop, its state by name and batch-major."""

    def __init__(self, vocab=256, hidden=32):
        super().__init__()
        self.embed, self.cell, self.out = nn.Embedding(vocab, 16), nn.LSTMCell(16, hidden), nn.Linear(hidden, vocab)

    def forward(self, tokens, state):
        h, c, outputs = state["h"], state["c"], []
        for t in range(tokens.size(1)):
            h, c = self.cell(self.embed(tokens[:, t]), (h, c))
            outputs.append(self.out(h))
        return torch.stack(outputs, 1), {"h": h, "c": c}


class CellLM(nn.Module):
    """A custom cell stepped in a Python loop (tracing would unroll it: it is exported inside an ONNX Scan)."""

    def __init__(self, vocab=256, hidden=32):
        super().__init__()
        self.embed, self.cell, self.out = nn.Embedding(vocab, 16), nn.GRUCell(16, hidden), nn.Linear(hidden, vocab)

    def forward(self, tokens, h):
        outputs = []
        for t in range(tokens.size(1)):
            h = self.cell(self.embed(tokens[:, t]), h)
            outputs.append(self.out(torch.tanh(h)))
        return torch.stack(outputs, 1), h


def pytorch_steps(model: nn.Module, tokens: list[int], state) -> np.ndarray:
    """The module's probabilities after each token, one step at a time from `state`."""
    rows = []
    with torch.no_grad():
        for token in tokens:
            logits, state = model(torch.tensor([[token]]), state)
            rows.append(softmax(logits[0, -1].double().numpy()))
    return np.array(rows)


def streamed(client, model: str, chunks: list[str]) -> np.ndarray:
    vocab = client.get_model(model).vocab_size
    rows = []
    for response in client.stream(model, chunks, top_k=vocab):
        for step in response.steps:
            row = np.zeros(vocab)
            for candidate in step.next:
                row[candidate.token_id] = candidate.probability
            rows.append(row)
    return np.array(rows)


def test_the_example_trains_exports_and_serves_a_word_model_exactly(tmp_path):
    done = subprocess.run(
        [sys.executable, ROOT / "examples" / "word_lm.py", "--minutes", "0.1", "--vocab-size", "1500", "--hidden", "64", "--out", tmp_path],
        capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["served_ids"] == result["pytorch_ids"] and len(result["served_ids"]) == 30
    assert result["served"] == result["pytorch"]


def exported_elsewhere(gru: GruLM, path: Path) -> None:
    """The GRU exported by plain torch.onnx.export, as a user's own code would, with its own tensor names."""
    torch.onnx.export(
        gru, (torch.zeros(1, 3, dtype=torch.long), torch.zeros(1, 2, 32)), path, dynamo=False, opset_version=17,
        input_names=["input_ids", "h0"], output_names=["scores", "h1"],
        dynamic_axes={"input_ids": {0: "b", 1: "t"}, "h0": {0: "b"}, "scores": {0: "b", 1: "t"}, "h1": {0: "b"}},
    )


@pytest.fixture(scope="module")
def user_repository(tmp_path_factory):
    """An LSTM exported with export_module (nn.LSTM's state layout), and a GRU exported by torch.onnx.export in
    the user's own code, then described."""
    torch.manual_seed(0)
    repository = tmp_path_factory.mktemp("user_models")
    lstm = LstmLM().eval()
    export_module(lstm, {"h": (2, 32), "c": (2, 32)}, ByteTokenizer(), repository, "user_lstm", state_batch_dim=1)
    cell = CellLM().eval()
    export_module(cell, {"h": (32,)}, ByteTokenizer(), repository, "user_cell")
    named = NamedStateLstmLM().eval()
    export_module(named, {"h": (2, 32), "c": (2, 32)}, ByteTokenizer(), repository, "user_named", state_batch_dim=1)
    named_cell = NamedStateCellLM().eval()
    export_module(named_cell, {"h": (32,), "c": (32,)}, ByteTokenizer(), repository, "user_named_cell")
    gru = GruLM().eval()
    exported = repository.parent / "gru.onnx"
    exported_elsewhere(gru, exported)
    done = run_cli(
        "describe", str(exported), "--state", "h0:h1", "--tokenizer", "byte", "--tokens", "input_ids", "--logits", "scores",
        "--out", str(repository / "user_gru" / "1" / "model.onnx"),
    )
    assert done.returncode == 0, done.stderr
    return repository, {"user_lstm": lstm, "user_gru": gru, "user_cell": cell, "user_named": named, "user_named_cell": named_cell}


@pytest.fixture(scope="module")
def user_server(base_config, user_repository):
    with ServerThread(replace(base_config, repository=str(user_repository[0]))) as running:
        yield running


ZEROS = {
    "user_lstm": (torch.zeros(2, 1, 32), torch.zeros(2, 1, 32)),
    "user_gru": torch.zeros(1, 2, 32),
    "user_cell": torch.zeros(1, 32),
    "user_named": {"h": torch.zeros(2, 1, 32), "c": torch.zeros(2, 1, 32)},
    "user_named_cell": {"h": torch.zeros(1, 32), "c": torch.zeros(1, 32)},
}


@pytest.mark.parametrize("name", list(ZEROS))
def test_a_users_model_streams_and_generates_as_pytorch_does(user_server, user_repository, name):
    model = user_repository[1][name]
    zeros = ZEROS[name]
    tokens = list(TEXT.encode())
    with user_server.client() as client:
        served = streamed(client, name, [TEXT[:10], TEXT[10:]])
        assert np.abs(served - pytorch_steps(model, tokens, zeros)).max() < 1e-5
        generated = [t for piece in client.generate(name, "def ", temperature=0.0, max_tokens=20) for t in piece.token_ids]
    with torch.no_grad():
        logits, state = model(torch.tensor([list(b"def ")]), zeros)
        expected = []
        for _ in range(20):
            expected.append(int(logits[0, -1].argmax()))
            logits, state = model(torch.tensor([[expected[-1]]]), state)
    assert generated == expected


class ReturnsLogitsOnly(nn.Module):
    def __init__(self):
        super().__init__()
        self.inner = GruLM()

    def forward(self, tokens, h):
        return self.inner(tokens, h)[0]


class LastStepOnly(GruLM):
    def forward(self, tokens, h):
        logits, h = super().forward(tokens, h)
        return logits[:, -1], h


class ProjectedLstmLM(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed, self.lstm, self.out = nn.Embedding(256, 16), nn.LSTM(16, 32, 1, batch_first=True, proj_size=8), nn.Linear(8, 256)

    def forward(self, tokens, state):
        x, state = self.lstm(self.embed(tokens), state)
        return self.out(x), state


class ReturnsOtherNames(NamedStateLstmLM):
    def forward(self, tokens, state):
        logits, returned = super().forward(tokens, state)
        return logits, {"hidden": returned["h"], "c": returned["c"]}


class ForgetsItsState(GruLM):
    """Returns a state that does not carry what came before: step by step differs from the whole sequence."""

    def forward(self, tokens, h):
        logits, h2 = super().forward(tokens, h)
        return logits, h


@pytest.mark.parametrize(
    "module, state, kwargs, message",
    [
        (ReturnsLogitsOnly(), {"h": (2, 32)}, {}, "must return (outputs, state), not a Tensor"),
        (LastStepOnly(), {"h": (2, 32)}, {}, "outputs must be [batch, T, outputs]"),
        (LstmLM(), {"h": (2, 32), "c": (2, 32)}, {}, "pass state_batch_dim=1"),
        (GruLM(), {"h": (2, 32), "c": (2, 32)}, {}, "failed"),
        (GruLM(), {"h": (2, 16)}, {}, "failed"),
        (ForgetsItsState(), {"h": (2, 32)}, {}, "not step-compatible"),
        (GruLM(vocab=300), {"h": (2, 32)}, {}, "300 per step, but the tokenizer has 256 tokens"),
        (GruLM(), {"h": (2, 32)}, {"task": "tagger", "labels": ("a", "b")}, "256 per step, but 2 labels"),
        (GruLM(), {"h": (2, 32)}, {"task": "summariser"}, "expected one of language_model, tagger, classifier"),
        (ProjectedLstmLM(), {"h": (1, 8), "c": (1, 32)}, {"state_batch_dim": 1}, "lstm: nn.LSTM with proj_size=8 has no ONNX operator: step nn.LSTMCell"),
        (ReturnsOtherNames(), {"h": (2, 32), "c": (2, 32)}, {"state_batch_dim": 1}, "returned the state {'hidden', 'c'}; the declared state is {h, c}"),
        (NamedStateLstmLM(), {"hidden": (2, 32), "c": (2, 32)}, {"state_batch_dim": 1}, "failed both ways a state can be passed, by name as {'hidden': [2, 3, 32], 'c': [2, 3, 32]}: KeyError: 'h'"),
        (GruLM(), [(2, 32)], {}, "state: expected a dict of name → one sequence's shape"),
        (GruLM(), {"h": "2x32"}, {}, "state['h']: expected one sequence's shape as a tuple of ints"),
    ],
)
def test_export_module_refuses_misuse_in_words(tmp_path, capfd, module, state, kwargs, message):
    with pytest.raises(ContractError) as refused:
        export_module(module, state, ByteTokenizer(), tmp_path, "m", **kwargs)
    assert message in str(refused.value) and "\n" not in str(refused.value)
    assert "graph(" not in capfd.readouterr().out  # none of the exporter's dump of the traced graph
    assert not (tmp_path / "m").exists()


def test_describe_refuses_a_graph_that_does_not_fit(tmp_path):
    lstm = LstmLM().eval()
    raw = tmp_path / "raw_lstm.onnx"  # nn.LSTM's state as it is: [layers, batch, hidden]
    torch.onnx.export(
        lstm, (torch.zeros(1, 3, dtype=torch.long), (torch.zeros(2, 1, 32), torch.zeros(2, 1, 32))), raw, dynamo=False,
        opset_version=17, input_names=["tokens", "h", "c"], output_names=["logits", "h_next", "c_next"],
        dynamic_axes={"tokens": {0: "b", 1: "t"}, "h": {1: "b"}, "c": {1: "b"}, "logits": {0: "b", 1: "t"}},
    )
    cases = [
        (["--state", "h:h_next", "--state", "c:c_next"], "the server keeps state batch-major"),
        (["--state", "h"], "--state 'h': expected INPUT:OUTPUT"),
        (["--state", "x:h_next"], "no 'x' in the graph"),
        (["--state", "h:h_next", "--logits", "scores"], "no 'scores' in the graph"),
    ]
    for flags, message in cases:
        done = run_cli("describe", str(raw), "--tokenizer", "byte", *flags)
        assert done.returncode == 1 and len(done.stderr.splitlines()) == 1 and message in done.stderr, done.stderr
