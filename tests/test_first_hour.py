"""A new user's first hour, through the real `rnnserve` command: train on Korean text with either tokenizer (samples
and all), export, serve, stream and generate whole characters; progress that suits a log; checkpoints that are
never lost or silently replaced."""

import re
import subprocess
import sys

import pytest

from rnnserve.errors import UsageError
from rnnserve.server.config import ServerConfig
from rnnserve.training.config import TrainConfig
from rnnserve.training.train import load_model, train
from tests.helpers import KOREAN, ServerThread, run_cli

TINY = ["--layers", "1", "--hidden", "48", "--embedding", "16", "--batch-size", "8", "--bptt", "32", "--lr", "0.01"]


@pytest.fixture(scope="module")
def korean_corpus(tmp_path_factory):
    path = tmp_path_factory.mktemp("korean") / "ko.txt"
    path.write_text(KOREAN * 100, encoding="utf-8")
    return path


@pytest.mark.parametrize("tokenizer", ["char", "byte"])
def test_train_export_serve_and_stream_korean(tmp_path, korean_corpus, tokenizer):
    checkpoint, models = tmp_path / "ko.pt", tmp_path / "models"
    trained = run_cli(
        "train", "--corpus", str(korean_corpus), "--tokenizer", tokenizer, "--steps", "120", "--eval-every", "60",
        "--out", str(checkpoint), *TINY,
    )
    assert trained.returncode == 0, trained.stderr
    samples = re.findall(r"  sample: '(.*)'", trained.stdout)
    assert len(samples) == 2 and all(s.startswith("안녕하세") for s in samples), trained.stdout  # the corpus's own opening
    exported = run_cli("export", str(checkpoint), "--repository", str(models), "--name", "ko")
    assert exported.returncode == 0, exported.stderr

    config = ServerConfig(repository=str(models), port=0, threads=1)
    with ServerThread(config) as running:
        streamed = run_cli("stream", "--target", running.target, "--model", "ko", "--top-k", "1", input="안녕하세요\n")
        assert streamed.returncode == 0, streamed.stderr
        shown = [line.split(" → ")[0].strip() for line in streamed.stdout.splitlines() if " → " in line]
        assert shown == ["'안'", "'녕'", "'하'", "'세'", "'요'", "'\\n'"]  # whole characters, never escaped bytes
        with running.client() as client:
            for max_tokens in (40, 41, 42):
                text = client.generate_text("ko", "오늘은 ", temperature=0.0, max_tokens=max_tokens)
                assert "\ufffd" not in text and sum("가" <= ch <= "힣" for ch in text) >= 5, text


def test_a_failing_sample_never_loses_the_checkpoint(tmp_path, korean_corpus, monkeypatch, capsys):
    from rnnserve.training.tasks import LanguageModel

    def broken_sample(*args, **kwargs):
        raise RuntimeError("the sample broke")

    monkeypatch.setattr(LanguageModel, "sample", broken_sample)
    out = tmp_path / "m.pt"
    metrics = train(TrainConfig(corpus=str(korean_corpus), steps=20, eval_every=10, hidden=16, layers=1, out=str(out)))
    assert metrics["steps"] == 20
    assert load_model(out)[2]["progress"]["step"] == 20
    assert capsys.readouterr().out.count("sample failed: the sample broke") == 2


def test_force_replaces_a_checkpoint_and_resume_continues_it(tmp_path, korean_corpus):
    settings = dict(corpus=str(korean_corpus), hidden=16, layers=1, eval_every=1000, quiet=True, out=str(tmp_path / "m.pt"))
    train(TrainConfig(steps=10, **settings))
    with pytest.raises(UsageError, match="exists: pass --resume"):
        train(TrainConfig(steps=10, **settings))
    assert train(TrainConfig(steps=5, force=True, **settings))["steps"] == 5
    assert train(TrainConfig(steps=15, resume=True, **settings))["steps"] == 15


def test_progress_off_a_terminal_is_lines_not_redraws(tmp_path, korean_corpus):
    done = subprocess.run(
        [sys.executable, "-m", "rnnserve", "train", "--corpus", str(korean_corpus), "--steps", "30", "--eval-every", "1000",
         "--progress-interval-s", "0", "--out", str(tmp_path / "m.pt"), *TINY],
        capture_output=True, text=True, timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert "\r" not in done.stderr
    lines = done.stderr.splitlines()
    assert len(lines) == 30 and lines[-1].startswith("30/30 steps (100%)"), done.stderr
    assert all(re.match(r"\d+/30 steps \(\d+%\).*, loss \d+\.\d+", line) for line in lines), done.stderr


def test_a_resumed_run_reads_its_own_corpus_unless_given_another(tmp_path, korean_corpus, corpus_file):
    settings = dict(tokenizer="char", hidden=16, layers=1, eval_every=1000, quiet=True, out=str(tmp_path / "ko.pt"))
    train(TrainConfig(corpus=str(korean_corpus), steps=5, **settings))
    metrics = train(TrainConfig(steps=10, resume=True, **settings))  # no --corpus: the Korean text, not the built-in one
    assert metrics["steps"] == 10 and metrics["corpus"] == str(korean_corpus)
    with pytest.raises(UsageError, match=rf"--corpus {corpus_file}: \d+ character\(s\) not in the model's vocabulary.*learnt from {korean_corpus}"):
        train(TrainConfig(corpus=str(corpus_file), steps=15, resume=True, **settings))
