"""Curves and heatmaps come out as images: a run's training and validation curves from its checkpoint (and its
figures as CSV), and an encoder–decoder's attention over its source."""

import csv

import matplotlib.image
import numpy as np

from rnnserve.training.plots import QUALITY
from rnnserve.training.train import read_checkpoint
from tests.helpers import run_cli


def assert_picture(path, min_width=300):
    pixels = matplotlib.image.imread(path)
    assert pixels.shape[1] >= min_width and pixels.shape[0] >= 200
    assert pixels[..., :3].std() > 0.05, "the picture is blank"


def test_a_runs_curves_are_drawn_from_its_checkpoint(tmp_path, corpus_file):
    checkpoint, table = tmp_path / "lm.pt", tmp_path / "metrics.csv"
    done = run_cli(
        "train", "--corpus", str(corpus_file), "--steps", "60", "--eval-every", "20", "--hidden", "32", "--layers", "1",
        "--quiet", "--out", str(checkpoint), "--metrics-csv", str(table),
    )
    assert done.returncode == 0, done.stderr
    rows = list(csv.DictReader(table.open()))
    assert [int(r["steps"]) for r in rows] == [20, 40, 60]
    assert float(rows[-1]["val_loss_nats"]) < float(rows[0]["val_loss_nats"])  # it learnt
    done = run_cli("plot", str(checkpoint), "--out", str(tmp_path / "curves.png"))
    assert done.returncode == 0 and done.stdout.strip() == f"wrote {tmp_path / 'curves.png'}", done.stderr
    assert_picture(tmp_path / "curves.png", min_width=1000)


GREEN = np.array([0x2C, 0xA0, 0x2C]) / 255  # matplotlib's tab:green, the colour of the quality panel's line


def test_a_taggers_curves_show_its_f1_and_a_classifiers_its_accuracy(tmp_path):
    for task, flags, measure in (
        ("boundary_tagger", ["--tokenizer", "char", "--bptt", "32"], "boundary F1"),
        ("text_classifier", ["--cell", "gru", "--bptt", "32"], "accuracy"),
    ):
        checkpoint, picture = tmp_path / f"{task}.pt", tmp_path / f"{task}.png"
        done = run_cli(
            "train", "--task", task, *flags, "--steps", "30", "--eval-every", "10", "--hidden", "16", "--layers", "1",
            "--batch-size", "8", "--quiet", "--out", str(checkpoint),
        )
        assert done.returncode == 0, done.stderr
        assert run_cli("plot", str(checkpoint), "--out", str(picture)).returncode == 0
        pixels = matplotlib.image.imread(picture)[..., :3]
        right = pixels[:, pixels.shape[1] // 2 :]
        assert (np.abs(right - GREEN).max(axis=-1) < 0.08).sum() > 100, f"{task}: no {measure} curve in the right panel"
        evaluations = read_checkpoint(checkpoint)["progress"]["evaluations"]
        drawn = next(q for q in QUALITY if any(q[0] in e for e in evaluations))
        assert drawn[1] == measure and len([e for e in evaluations if drawn[0] in e]) == 3


def test_an_encoder_decoders_attention_is_drawn_as_a_heatmap(server, tmp_path):
    heatmap = tmp_path / "attention.png"
    done = run_cli("generate", "--target", server.target, "--model", "dates", "--source", "5 March 2024", "--plot", str(heatmap))
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[-1] == f"wrote {heatmap}"
    assert_picture(heatmap, min_width=200)
    assert np.asarray(matplotlib.image.imread(heatmap)).ndim == 3


def test_a_model_without_attention_says_so(server, tmp_path):
    done = run_cli("generate", "--target", server.target, "--model", "lstm", "--max-tokens", "3", "--plot", str(tmp_path / "x.png"), "a")
    assert done.returncode == 1 and done.stderr.strip().endswith("--plot: the model answered no attention (only encoder–decoders have it)")
