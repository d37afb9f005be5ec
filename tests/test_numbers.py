"""Models trained on numbers (`--task frame_classifier`, `--task forecaster`): trained here for a fixed short budget on
the data aeon and statsmodels ship, exported, served, and streamed over real gRPC; the served answers equal the
PyTorch model's, frame by frame and whole, and each model beats the trivial baseline of its kind by a margin."""

from __future__ import annotations

import uuid
from pathlib import Path

import numpy as np
import pytest

from rnnserve.client import forecast_of, forecast_request, outputs_of
from rnnserve.server.config import ServerConfig
from tests.helpers import ServerThread, run_cli

pytest.importorskip("aeon", reason="the [series] extra (in dev) installs aeon, which ships the UEA datasets")
pytest.importorskip("statsmodels", reason="the [series] extra (in dev) installs statsmodels, which ships co2 and sunspots")
torch = pytest.importorskip("torch")

SMALL = dict(layers=1, hidden=48, batch_size=16, eval_every=1000, quiet=True)
TRAINED = {  # name → the training settings: a fixed seed and budget in steps
    "vowels": dict(task="frame_classifier", dataset="JapaneseVowels", steps=150, **SMALL),
    "motions": dict(task="frame_classifier", dataset="BasicMotions", steps=150, **SMALL),
    "sunspots": dict(task="forecaster", dataset="sunspots", steps=200, bptt=32, val_fraction=0.1, **SMALL),
}


@pytest.fixture(scope="module")
def number_models(tmp_path_factory) -> tuple[Path, dict[str, dict], dict[str, Path]]:
    from rnnserve.export.config import ExportConfig
    from rnnserve.export.exporter import export
    from rnnserve.training.config import TrainConfig
    from rnnserve.training.train import train

    tmp = tmp_path_factory.mktemp("numbers")
    metrics, checkpoints = {}, {}
    for name, settings in TRAINED.items():
        checkpoints[name] = tmp / f"{name}.pt"
        metrics[name] = train(TrainConfig(out=str(checkpoints[name]), **settings))
        export(ExportConfig(str(checkpoints[name]), str(tmp / "models"), name, "1"))
    return tmp / "models", metrics, checkpoints


@pytest.fixture(scope="module")
def number_server(number_models):
    with ServerThread(ServerConfig(repository=str(number_models[0]), host="127.0.0.1", port=0, threads=1)) as running:
        yield running


def in_process(checkpoint: Path, values: np.ndarray) -> tuple[np.ndarray, ...]:
    """What the PyTorch model answers after each step of one sequence [T, F]: its served outputs, each [T, ·]."""
    from rnnserve.training.train import load_model

    model, _, _ = load_model(checkpoint)
    with torch.no_grad():
        x = torch.from_numpy(values)[None]
        head, _ = model(x, None)
        return tuple(t[0].numpy() for t in model.served(head, x))


def test_each_model_beats_the_trivial_baseline(number_models):
    _, metrics, _ = number_models
    for name in ("vowels", "motions"):  # the commonest class: 1/9 of JapaneseVowels' test split, 1/4 of BasicMotions'
        assert metrics[name]["accuracy"] >= metrics[name]["majority_accuracy"] + 0.3, metrics[name]
    sun = metrics["sunspots"]  # persistence: next year's activity is this year's
    assert sun["mase"] <= 0.85 * sun["persistence_mase"], sun
    assert 0 < sun["coverage_90"] <= 1 and sun["held_out_steps"] == 31, sun


def test_a_streamed_classifier_answers_what_pytorch_does_frame_by_frame_and_whole(number_models, number_server):
    from aeon.datasets import load_classification

    _, _, checkpoints = number_models
    sequences, labels = load_classification("JapaneseVowels", split="test")
    with number_server.client() as client:
        for frames, label in zip(sequences[:4], labels[:4]):
            frames = np.ascontiguousarray(np.asarray(frames, np.float32).T)  # [T, 12] raw coefficients
            (expected,) = in_process(checkpoints["vowels"], frames)
            by_frame = list(client.stream("vowels", [frames[t : t + 1] for t in range(len(frames))]))
            whole = list(client.stream("vowels", [frames]))
            streamed = np.concatenate([outputs_of(r)["probabilities"] for r in by_frame])
            np.testing.assert_allclose(streamed, expected, atol=1e-5)
            np.testing.assert_allclose(outputs_of(whole[0])["probabilities"], expected, atol=1e-5)
            # the running answer after each frame is the last frame's probabilities, named and ranked
            for response, row in zip(by_frame, expected):
                assert [c.text for c in response.classes][0] == str(int(np.argmax(row)) + 1)
                assert response.classes[0].probability == pytest.approx(float(row.max()), abs=1e-5)
            assert whole[0].classes[0].text == by_frame[-1].classes[0].text
            assert by_frame[-1].position == len(frames)
        assert str(label) in {c.text for c in whole[0].classes}


def test_a_streamed_forecast_is_in_the_series_own_units(number_models, number_server):
    _, _, checkpoints = number_models
    series = sunspots()
    mean, std = in_process(checkpoints["sunspots"], series)
    with number_server.client() as client:
        answers = [outputs_of(r) for r in client.stream("sunspots", [series[t : t + 1] for t in range(len(series))])]
    served_mean = np.concatenate([a["mean"] for a in answers])
    served_std = np.concatenate([a["std"] for a in answers])
    np.testing.assert_allclose(served_mean, mean, rtol=1e-5, atol=1e-4)  # sunspot numbers reach 190: float32 at 1e-5 of them
    np.testing.assert_allclose(served_std, std, rtol=1e-5, atol=1e-4)
    # raw units: the model's normalised outputs, de-normalised by the training split's figures it keeps
    from rnnserve.training.train import load_model

    model, _, _ = load_model(checkpoints["sunspots"])
    with torch.no_grad():
        change, log_std = model.gaussian(model(torch.from_numpy(series)[None], None)[0])
    scale = float(model.change_scale[0])
    np.testing.assert_allclose(served_mean[:, 0], series[:, 0] + scale * change[0, :, 0].numpy(), rtol=1e-5, atol=1e-3)
    np.testing.assert_allclose(served_std[:, 0], scale * np.exp(log_std[0, :, 0].numpy()), rtol=1e-5, atol=1e-4)
    from rnnserve.training.number_tasks import held_out_start

    learnt = held_out_start(held_out_start(len(series), 0.1), 0.1)  # before the selection stretch and the held-out end
    assert scale == pytest.approx(float(np.std(np.diff(series[:learnt, 0]), ddof=1)), rel=1e-5)  # its changes' spread, not 1


def sunspots() -> np.ndarray:
    from statsmodels import datasets

    return datasets.sunspots.load_pandas().data["SUNACTIVITY"].to_numpy(np.float32)[:, None]


def test_a_look_ahead_is_the_models_own_futures_and_leaves_the_state_as_it_was(number_models, number_server):
    """Futures sampled on the server equal futures sampled with PyTorch from the same state and the same draws (numpy's
    default_rng(seed)); the session then goes on as if no forecast had been asked."""
    from rnnserve.training.train import load_model

    _, _, checkpoints = number_models
    series, cut, horizon, paths, seed = sunspots(), 250, 12, 64, 7
    with number_server.client() as client:
        asked = list(client.stream("sunspots", [series[: cut - 1], forecast_request(series[cut - 1 : cut], horizon, paths, seed), series[cut:]]))
        plain = list(client.stream("sunspots", [series[:cut], series[cut:]]))
    ahead = forecast_of(asked[1])
    assert asked[1].forecast.paths == paths and {k: v.shape for k, v in ahead.items()} == {k: (horizon, 1) for k in ("mean", "low", "high")}
    for name in ("mean", "std"):  # the state after the look ahead is the state the steps left
        np.testing.assert_array_equal(outputs_of(asked[2])[name], outputs_of(plain[1])[name])
    assert not asked[0].HasField("forecast") and not asked[2].HasField("forecast")

    model, _, _ = load_model(checkpoints["sunspots"])
    noise = torch.from_numpy(np.random.default_rng(seed).standard_normal((horizon, paths, 1)).astype(np.float32))
    with torch.no_grad():
        x = torch.from_numpy(series[:cut])[None]
        head, state = model(x, None)
        mean, std = (t[0, -1] for t in model.served(head, x))
        recurrent = len(model.config.state_names)  # [layers, batch, hidden], then the last values read, batch first
        state = (*(s.repeat(1, paths, 1) for s in state[:recurrent]), *(s.repeat(paths, 1) for s in state[recurrent:]))
        futures = []
        for h in range(horizon):
            futures.append(mean + std * noise[h])  # [paths, 1]
            head, state = model(futures[-1][:, None, :], state)
            mean, std = (t[:, 0] for t in model.served(head, futures[-1][:, None, :]))
    futures = torch.stack(futures).numpy()  # [horizon, paths, 1]
    np.testing.assert_allclose(ahead["mean"], futures.mean(1), rtol=1e-4, atol=1e-3)
    np.testing.assert_allclose(ahead["low"], np.quantile(futures, 0.05, axis=1), rtol=1e-4, atol=1e-3)
    np.testing.assert_allclose(ahead["high"], np.quantile(futures, 0.95, axis=1), rtol=1e-4, atol=1e-3)
    assert (ahead["high"][-1] - ahead["low"][-1]) > (ahead["high"][0] - ahead["low"][0])  # uncertainty compounds


@pytest.mark.parametrize("model, steps, params, words", [
    ("vowels", 1, dict(horizon=3), "model 'vowels' is a frame_classifier, not a forecaster"),
    ("sunspots", 0, dict(horizon=3), "send at least one step in the same message"),
    ("sunspots", 1, dict(horizon=0), "forecast.horizon: 0 steps ahead: ask for 1 to 1000"),
    ("sunspots", 1, dict(horizon=1001), "forecast.horizon: 1001 steps ahead"),
    ("sunspots", 1, dict(horizon=3, paths=5000), "forecast.paths: 5000 futures: ask for 1 to 1000"),
])
def test_a_bad_look_ahead_is_refused_before_any_step(number_server, model, steps, params, words):
    import grpc

    width, session = 12 if model == "vowels" else 1, f"bad-look-ahead-{uuid.uuid4().hex}"
    with number_server.client() as client:
        with pytest.raises(grpc.RpcError) as refused:
            list(client.stream(model, [forecast_request(np.ones((steps, width), np.float32), **params)], session_id=session))
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT and words in refused.value.details(), refused.value.details()
        assert client.stream(model, [np.ones((1, width), np.float32)], session_id=session, resume=True).next().position == 1  # no step taken


def test_stream_csv_prints_every_step_in_the_models_own_columns(number_server, tmp_path):
    from statsmodels import datasets

    years = datasets.sunspots.load_pandas().data
    path = tmp_path / "sun.csv"
    path.write_text("year,sunspots,note\n" + "".join(f"{int(y)},{v},x\n" for y, v in zip(years["YEAR"][:20], years["SUNACTIVITY"][:20])))
    done = run_cli("stream", "--target", number_server.target, "--model", "sunspots", "--csv", str(path))
    assert done.returncode == 1 and "no column 'SUNACTIVITY'" in done.stderr, done.stderr  # the column it was trained on
    path.write_text("year,SUNACTIVITY\n" + "".join(f"{int(y)},{v}\n" for y, v in zip(years["YEAR"][:20], years["SUNACTIVITY"][:20])))
    done = run_cli("stream", "--target", number_server.target, "--model", "sunspots", "--csv", str(path))
    assert done.returncode == 0, done.stderr
    lines = [line for line in done.stdout.splitlines() if line.startswith("step ")]
    assert len(lines) == 20 and lines[0].startswith("step 0 → next SUNACTIVITY ") and "(90% " in lines[0]
    assert done.stdout.rstrip().endswith("position 20]")
    done = run_cli("stream", "--target", number_server.target, "--model", "sunspots", "--csv", str(path), "--horizon", "5", "--seed", "3",
                   "--plot", str(tmp_path / "sun.png"))
    assert done.returncode == 0, done.stderr
    with number_server.client() as client:
        series = sunspots()[:20]
        ahead = forecast_of(list(client.stream("sunspots", [series[:19], forecast_request(series[19:], 5, seed=3)]))[-1])
    shown = [line for line in done.stdout.splitlines() if line.startswith("ahead ")]
    assert shown == [f"ahead {h + 1} → SUNACTIVITY {ahead['mean'][h, 0]:.4g} (90% {ahead['low'][h, 0]:.4g} to {ahead['high'][h, 0]:.4g})" for h in range(5)]
    assert (tmp_path / "sun.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and f"wrote {tmp_path / 'sun.png'}" in done.stdout


MISTAKES = [  # (what is wrong, the training flags after --csv FILE, the CSV's text, the one line's words)
    ("no target", ["--task", "forecaster"], "t,y\n1,2\n", "--csv needs --target: the column"),
    ("missing column", ["--task", "forecaster", "--target", "z"], "t,y\n1,2\n", "no column 'z' (named by --target); its columns are t, y"),
    ("not a number", ["--task", "forecaster", "--target", "y"], "t,y\n1,2\n2,abc\n", "row 3, column 'y': 'abc' is not a number"),
    ("empty cell", ["--task", "forecaster", "--target", "y"], "t,y\n1,2\n2,\n", "row 3, column 'y': is empty"),
    ("not finite", ["--task", "forecaster", "--target", "y"], "t,y\n1,inf\n", "row 2, column 'y': 'inf' is not a finite number"),
    ("ragged row", ["--task", "forecaster", "--target", "y"], "t,y\n1,2,3\n", "row 2 has 3 cells; the header names 2 columns"),
    ("too few rows", ["--task", "forecaster", "--target", "y"], "t,y\n" + "".join(f"{i},{i % 3}\n" for i in range(10)), "10 rows; a forecaster needs at least 32"),
    ("flat series", ["--task", "forecaster", "--target", "y"], "t,y\n" + "".join(f"{i},5\n" for i in range(40)), "column 'y' never changes"),
    ("empty file", ["--task", "forecaster", "--target", "y"], "", "empty: expected a header row"),
    ("columns for a forecaster", ["--task", "forecaster", "--target", "y", "--columns", "t"], "t,y\n1,2\n", "--columns is for a frame_classifier"),
    ("no sequence column", ["--task", "frame_classifier", "--columns", "a", "--target", "label"], "a,label\n1,x\n", "--csv needs --sequence"),
    ("one class", ["--task", "frame_classifier", "--columns", "a", "--target", "label", "--sequence", "s"],
     "s,a,label\n1,0.5,x\n2,0.1,x\n", "every sequence is labelled 'x': a classifier needs at least two classes"),
    ("two labels in a sequence", ["--task", "frame_classifier", "--columns", "a", "--target", "label", "--sequence", "s"],
     "s,a,label\n1,0.5,x\n1,0.1,y\n", "sequence '1' has rows labelled x, y"),
    ("a class of one sequence", ["--task", "frame_classifier", "--columns", "a", "--target", "label", "--sequence", "s"],
     "s,a,label\n1,0.5,x\n2,0.1,y\n3,0.2,y\n", "class 'x' has 1 sequence(s): each class needs at least two"),
    ("unknown time column", ["--task", "forecaster", "--target", "y", "--time", "when"], "t,y\n1,2\n", "no column 'when' (named by --time)"),
]


@pytest.mark.parametrize("flags, text, words", [pytest.param(*case[1:], id=case[0]) for case in MISTAKES])
def test_a_mistake_in_a_csv_is_one_line(tmp_path, flags, text, words):
    """`rnnserve train` run in this process (its one-line exit is what a person reads; the process start is tested
    once in tests/test_cli_mistakes.py)."""
    from rnnserve.cli import main

    path = tmp_path / "data.csv"
    path.write_text(text)
    with pytest.raises(SystemExit) as exit_:
        main(["train", "--csv", str(path), *flags, "--steps", "1", "--out", str(tmp_path / "m.pt")])
    line = str(exit_.value.code)
    assert line.startswith("rnnserve train: ") and "\n" not in line, line
    assert words in line, line


def test_a_users_csv_trains_a_classifier_and_a_forecaster(tmp_path):
    """Sequences of two kinds (rising and falling ramps, rows out of order until sorted by --time), and a noisy sine:
    each trains from the CSV alone, and learns what a trivial rule cannot."""
    from rnnserve.training.config import TrainConfig
    from rnnserve.training.train import train

    rng = np.random.default_rng(0)
    rows = []
    for s in range(40):
        kind = "up" if s % 2 else "down"
        for t in range(12):
            rows.append(f"{s},{11 - t},{(t if kind == 'up' else -t) + rng.normal(0, 0.5):.3f},{rng.normal():.3f},{kind}\n")
    (tmp_path / "ramps.csv").write_text("seq,t,x,noise,kind\n" + "".join(rows))
    metrics = train(TrainConfig(
        task="frame_classifier", csv=str(tmp_path / "ramps.csv"), columns="x,noise", target="kind", sequence="seq", time="t",
        val_fraction=0.25, out=str(tmp_path / "ramps.pt"), steps=60, **SMALL,
    ))
    assert metrics["test_sequences"] == 10 and metrics["accuracy"] >= 0.9, metrics
    t = np.arange(400)
    wave = 10 * np.sin(2 * np.pi * t / 25) + rng.normal(0, 0.3, t.size)
    (tmp_path / "wave.csv").write_text("t,level\n" + "".join(f"{i},{v:.3f}\n" for i, v in zip(t, wave)))
    metrics = train(TrainConfig(task="forecaster", csv=str(tmp_path / "wave.csv"), target="level", time="t", period=25,
                                out=str(tmp_path / "wave.pt"), steps=200, bptt=32, **SMALL))
    assert metrics["held_out_steps"] == 20 and metrics["mase"] <= 0.7 * metrics["persistence_mase"], metrics


def test_keep_best_keeps_the_evaluation_of_least_selection_loss(tmp_path):
    """Labels that are noise: the longer it trains, the more it memorises and the worse it does on sequences it did
    not learn from. The checkpoint kept is the evaluation of least loss on the selection split, not the last."""
    from rnnserve.training.config import TrainConfig
    from rnnserve.training.number_tasks import FrameClassifier
    from rnnserve.training.train import evaluate, load_model, train

    rng = np.random.default_rng(1)
    labels = rng.choice(["a", "b"], 60)
    rows = [f"{s},{rng.normal():.3f},{rng.normal():.3f},{labels[s]}\n" for s in range(60) for _ in range(8)]
    (tmp_path / "noise.csv").write_text("seq,a,b,label\n" + "".join(rows))
    config = TrainConfig(task="frame_classifier", csv=str(tmp_path / "noise.csv"), columns="a,b", target="label", sequence="seq",
                         out=str(tmp_path / "noise.pt"), steps=400, eval_every=25, layers=1, hidden=64, dropout=0.0, quiet=True)
    metrics = train(config)
    model, _, checkpoint = load_model(config.out)
    losses = [e["select_loss_nats"] for e in checkpoint["progress"]["evaluations"]]
    assert len(losses) == 16 and metrics["select_loss_nats"] == min(losses) and min(losses) < losses[-1] - 0.05, losses
    assert metrics["steps"] < metrics["steps_trained"] == 400
    data = FrameClassifier().data(None, FrameClassifier().corpus(config), config)
    assert evaluate(model, data.select_batches, FrameClassifier())[0] == pytest.approx(min(losses), abs=1e-4)  # the weights kept are that evaluation's
