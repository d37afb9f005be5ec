"""Tiny real models trained in seconds, exported, and served on 127.0.0.1 over real gRPC."""

from __future__ import annotations

import multiprocessing
import shutil
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path

import pytest

from bench.common import free_port
from rnnserve.server.config import ServerConfig
from tests.helpers import KOREAN, Reference, ServerThread, native_unavailable
from tests.redis_process import Redis
from tests.triton_process import triton_call


def _train_and_export(tmp: Path, repo: Path, name: str, **overrides) -> Path:
    """Trains a model, exports it as <repo>/<name>/1, and returns its checkpoint."""
    from rnnserve.export.config import ExportConfig
    from rnnserve.export.exporter import export
    from rnnserve.training.config import TrainConfig
    from rnnserve.training.train import train

    settings = dict(layers=2, hidden=32, embedding=16, batch_size=8, bptt=32, steps=40, eval_every=1000, quiet=True)
    settings.update(overrides)
    checkpoint = tmp / f"{name}.pt"
    train(TrainConfig(out=str(checkpoint), **settings))
    export(ExportConfig(str(checkpoint), str(repo), name, "1"))
    return checkpoint


@dataclass(frozen=True)
class Trained:
    repository: Path  # <repository>/<name>/1/model.onnx for every model
    checkpoints: dict[str, Path]  # name → the checkpoint it was exported from


@pytest.fixture(scope="session")
def corpus_file(tmp_path_factory) -> Path:
    """A small English corpus (a slice of the built-in one) so tiny models train in a second."""
    from rnnserve.training.data import builtin_corpus

    path = tmp_path_factory.mktemp("corpus") / "english.txt"
    path.write_text(builtin_corpus()[:60_000], encoding="utf-8")
    return path


@pytest.fixture(scope="session")
def trained(tmp_path_factory, corpus_file) -> Trained:
    """lstm (byte), gru (char), rnn (byte), LSTMs that have learnt some Korean (`korean` byte, `korean_char` char,
    `korean_bpe` byte-level BPE), a word-level LSTM (`words`),
    word-boundary taggers (`tagger` unidirectional, streams; `tagger_bi` bidirectional, whole input only),
    text-kind classifiers (`kind`, `kind_bi`), a conditional language model (`writer`) and a date-normalising
    encoder–decoder (`dates`)."""
    tmp = tmp_path_factory.mktemp("train")
    repo = tmp_path_factory.mktemp("models")
    english = dict(corpus=str(corpus_file))
    korean = tmp / "korean.txt"
    korean.write_text(KOREAN * 200, encoding="utf-8")
    learns_korean = dict(cell="lstm", layers=1, hidden=64, lr=1e-2, dropout=0.0, warmup_steps=10, bptt=64, corpus=str(korean))
    recipes = {
        "lstm": dict(cell="lstm", **english),
        "gru": dict(cell="gru", tokenizer="char", **english),
        "rnn": dict(cell="rnn", layers=1, **english),
        "korean": dict(steps=300, **learns_korean),
        "korean_char": dict(steps=150, tokenizer="char", **learns_korean),
        "korean_bpe": dict(steps=300, tokenizer="bpe", vocab_size=320, **learns_korean),
        "words": dict(cell="lstm", layers=1, tokenizer="word", vocab_size=600, **english),
        "writer": dict(task="conditional_language_model", layers=1, steps=30),
        "dates": dict(task="date_normaliser", cell="gru", layers=1, hidden=64, steps=250, batch_size=32, lr=1e-2, dropout=0.0),
    }
    for name, bidirectional in (("tagger", False), ("tagger_bi", True)):
        recipes[name] = dict(
            task="boundary_tagger", tokenizer="char", bidirectional=bidirectional, layers=1, hidden=64, steps=300, bptt=64,
            batch_size=16, **english,
        )
    for name, bidirectional in (("kind", False), ("kind_bi", True)):
        recipes[name] = dict(
            task="text_classifier", cell="gru", bidirectional=bidirectional, layers=1, hidden=48, steps=200, bptt=48, batch_size=16, lr=1e-2
        )
    return Trained(repo, {name: _train_and_export(tmp, repo, name, **recipe) for name, recipe in recipes.items()})


@pytest.fixture(scope="session")
def repository(trained) -> Path:
    return trained.repository


@pytest.fixture(scope="session")
def checkpoints(trained) -> dict[str, Path]:
    return trained.checkpoints


@pytest.fixture(scope="session")
def base_config(repository) -> ServerConfig:
    return ServerConfig(repository=str(repository), host="127.0.0.1", port=0, max_sessions=8, threads=1)


@pytest.fixture(scope="session")
def server(base_config):
    """The shared server; where the native front end can be built, also on --native-port (native_target)."""
    config = base_config if native_unavailable() else replace(base_config, native_port=0)
    with ServerThread(config) as running:
        yield running


@pytest.fixture(params=["port", "native-port"])
def any_target(request, server) -> str:
    """The shared server's --port, then its --native-port: a test taking it runs against both front ends."""
    if request.param == "port":
        return server.target
    if server.native_target is None:
        pytest.skip(f"no --native-port: {native_unavailable()}")
    return server.native_target


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


@pytest.fixture(scope="session")
def reference(repository):
    return lambda name: Reference(repository / name / "1" / "model.onnx")



@pytest.fixture(scope="session")
def triton():
    """Triton's client, in a process of its own (tests/triton_calls.py says why it cannot share this one)."""
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        yield lambda name, *args: pool.submit(triton_call, name, *args).result(120)


@pytest.fixture
def redis_server():
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not installed (apt-get install redis-server)")
    server = Redis(free_port()).start()
    yield server
    if server.process.poll() is None:
        server.stop()
