"""Tiny real models trained in seconds, exported, and served on 127.0.0.1 over real gRPC."""

from __future__ import annotations

import asyncio
import re
import threading
import urllib.request
from dataclasses import replace
from pathlib import Path

import grpc
import numpy as np
import onnxruntime as ort
import pytest

from client import RnnServeClient
from server.app import start
from server.config import ServerConfig

KOREAN = "안녕하세요. 오늘은 날씨가 좋습니다. 우리는 공원에서 산책을 합니다. 한국어 문장을 배웁니다.\n"


def _train_and_export(tmp: Path, repo: Path, name: str, **overrides) -> None:
    from export.config import ExportConfig
    from export.exporter import export
    from training.config import TrainConfig
    from training.train import train

    settings = dict(layers=2, hidden=32, embedding=16, batch_size=8, bptt=32, steps=40, eval_every=1000, quiet=True)
    settings.update(overrides)
    checkpoint = tmp / f"{name}.pt"
    train(TrainConfig(out=str(checkpoint), **settings))
    export(ExportConfig(str(checkpoint), str(repo), name, "1"))


@pytest.fixture(scope="session")
def corpus_file(tmp_path_factory) -> Path:
    """A small English corpus (a slice of the built-in one) so tiny models train in a second."""
    from training.data import builtin_corpus

    path = tmp_path_factory.mktemp("corpus") / "english.txt"
    path.write_text(builtin_corpus()[:60_000], encoding="utf-8")
    return path


@pytest.fixture(scope="session")
def repository(tmp_path_factory, corpus_file) -> Path:
    """lstm (byte), gru (char), rnn (byte), a byte LSTM that has learnt some Korean, word-boundary
    taggers (`tagger` unidirectional, streams; `tagger_bi` bidirectional, whole input only), text-kind
    classifiers (`kind`, `kind_bi`), a conditional language model (`writer`) and a date-normalising
    encoder–decoder (`dates`)."""
    tmp = tmp_path_factory.mktemp("train")
    repo = tmp_path_factory.mktemp("models")
    _train_and_export(tmp, repo, "lstm", cell="lstm", corpus=str(corpus_file))
    _train_and_export(tmp, repo, "gru", cell="gru", tokenizer="char", corpus=str(corpus_file))
    _train_and_export(tmp, repo, "rnn", cell="rnn", layers=1, corpus=str(corpus_file))
    korean = tmp / "korean.txt"
    korean.write_text(KOREAN * 200, encoding="utf-8")
    _train_and_export(
        tmp, repo, "korean", cell="lstm", layers=1, hidden=64, steps=300, lr=1e-2, dropout=0.0, warmup_steps=10, bptt=64,
        corpus=str(korean),
    )
    for name, bidirectional in (("tagger", False), ("tagger_bi", True)):
        _train_and_export(
            tmp, repo, name, task="boundary_tagger", tokenizer="char", bidirectional=bidirectional, layers=1, hidden=64,
            steps=300, bptt=64, batch_size=16, corpus=str(corpus_file),
        )
    for name, bidirectional in (("kind", False), ("kind_bi", True)):
        _train_and_export(
            tmp, repo, name, task="text_classifier", cell="gru", bidirectional=bidirectional, layers=1, hidden=48, steps=200,
            bptt=48, batch_size=16, lr=1e-2,
        )
    _train_and_export(tmp, repo, "writer", task="conditional_language_model", layers=1, steps=30)
    _train_and_export(
        tmp, repo, "dates", task="date_normaliser", cell="gru", layers=1, hidden=64, steps=250, batch_size=32, lr=1e-2, dropout=0.0
    )
    return repo


class ServerThread:
    """A real rnnserve server on its own event loop in a background thread, on a free loopback port."""

    def __init__(self, config: ServerConfig, io_binding: bool | None = None):
        self._config = config
        self._io_binding = io_binding
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)

    def __enter__(self) -> ServerThread:
        self._thread.start()
        self.app = self.call(start(self._config, self._io_binding))
        self.target = f"127.0.0.1:{self.app.port}"
        return self

    def __exit__(self, *exc) -> None:
        self.call(self.app.stop(0.5))
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)

    def call(self, coroutine):
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result(30)

    def client(self) -> RnnServeClient:
        return RnnServeClient(self.target, timeout_s=30)


@pytest.fixture(scope="session")
def base_config(repository) -> ServerConfig:
    return ServerConfig(repository=str(repository), host="127.0.0.1", port=0, max_sessions=8, threads=1)


@pytest.fixture(scope="session")
def server(base_config):
    with ServerThread(base_config) as running:
        yield running


@pytest.fixture
def make_server(base_config):
    """A server with some settings changed, for tests of limits; stopped at the end of the test."""
    servers = []

    def make(io_binding: bool | None = None, **changes) -> ServerThread:
        running = ServerThread(replace(base_config, **changes), io_binding).__enter__()
        servers.append(running)
        return running

    yield make
    for running in servers:
        running.__exit__(None, None, None)


@pytest.fixture
def client(server):
    with server.client() as connected:
        yield connected


class Reference:
    """The exported model run directly in-process with onnxruntime: the independent reference."""

    def __init__(self, path: Path):
        self.session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        self.state_inputs = [i for i in self.session.get_inputs() if i.name != "tokens"]

    def initial_state(self) -> dict[str, np.ndarray]:
        return {i.name: np.zeros([1, *i.shape[1:]], np.float32) for i in self.state_inputs}

    def run(self, tokens: list[int], state: dict[str, np.ndarray]) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """logits [T, V] and the next state."""
        logits, *next_state = self.session.run(None, {"tokens": np.array([tokens], np.int64), **state})
        return logits[0], dict(zip(state, next_state))

    def greedy(self, prompt: list[int], count: int) -> list[int]:
        logits, state = self.run(prompt, self.initial_state())
        out = []
        for _ in range(count):
            out.append(int(np.argmax(logits[-1])))
            logits, state = self.run([out[-1]], state)
        return out


@pytest.fixture(scope="session")
def reference(repository):
    return lambda name: Reference(repository / name / "1" / "model.onnx")


def status_of(call) -> grpc.StatusCode:
    """Runs `call` (which must fail) and returns its gRPC status code."""
    with pytest.raises(grpc.RpcError) as caught:
        call()
    return caught.value


def scrape(running, name: str, **labels) -> float:
    """The value of one series on the server's /metrics page (0 when it has none yet)."""
    text = urllib.request.urlopen(f"http://127.0.0.1:{running.app.metrics_server.port}/metrics", timeout=10).read().decode()
    total = 0.0
    for line in text.splitlines():
        match = re.fullmatch(rf"{name}\{{(.*)\}} (\S+)", line) or re.fullmatch(rf"{name} (\S+)", line)
        if not match:
            continue
        found = dict(re.findall(r'(\w+)="([^"]*)"', match.group(1))) if match.re.groups == 2 else {}
        if all(found.get(k) == v for k, v in labels.items()):
            total += float(match.groups()[-1])
    return total
