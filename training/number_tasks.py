"""Tasks that learn from numbers (training/series.py), fed to a ValueNet:
- frame_classifier: a label for a sequence of frames, trained at every frame so that a stream has a running
  guess from its first frame and the last frame's is the answer for the whole sequence;
- forecaster: each series' next value as a Gaussian (mean and spread), from every step of the series so far.

They answer the training loop's questions as the text tasks do (training/tasks.py): where the examples come from,
the loss, the figures of quality, a sample line.
"""

from __future__ import annotations

import math
import random

import numpy as np
import torch
from torch import nn

from rnnserve.contract import Z_90
from rnnserve.errors import UsageError
from rnnserve.training.batches import IGNORE, Batch, Examples, TaskData, batched
from rnnserve.training.config import TrainConfig
from rnnserve.training.models import ModelConfig
from rnnserve.training.series import (
    BUILTIN_FRAMES,
    BUILTIN_SERIES,
    Frames,
    Series,
    builtin_frames,
    builtin_series,
    csv_frames,
    csv_series,
)


class _NumberTask:
    reads_text = False
    metrics_read_outputs = True
    builtin: dict = {}
    head = ""

    def corpus(self, config: TrainConfig):
        if config.corpus is not None:
            raise UsageError(f"--task {self.name} learns from numbers: name a --dataset ({', '.join(self.builtin)}) or your --csv, not a --corpus")
        if config.tokenizer != "byte":
            raise UsageError(f"--task {self.name} reads numbers, not text: drop --tokenizer")
        if config.csv is not None:
            return self.from_csv(config)
        dataset = config.dataset or next(iter(self.builtin))
        if dataset not in self.builtin:
            raise UsageError(f"--dataset {dataset!r}: --task {self.name} has {', '.join(self.builtin)} built in (or train on your own --csv)")
        return self.load(dataset)

    def source_figures(self, config: TrainConfig, source) -> dict:
        return {"dataset": config.csv or source.name}

    def model_config(self, vocab_size: int, config: TrainConfig, data: TaskData | None = None) -> ModelConfig:
        if config.bidirectional:
            raise UsageError(f"--bidirectional: a {self.name} answers at every step as values arrive, so it reads one way")
        source = data.source
        return ModelConfig(
            0, config.cell, config.layers, config.hidden, 0, config.dropout, outputs=self.output_size(source),
            inputs=len(source.columns), head=self.head, columns=tuple(source.columns), labels=tuple(getattr(source, "labels", ())),
        )

    def loss(self, model, outputs: torch.Tensor, batch: Batch) -> torch.Tensor:
        """The loss a training step minimises: the mean over its predictions."""
        total, count = self.loss_total(model, outputs, batch)
        return total / max(1, count)

    def prepare(self, model, data: TaskData) -> None:
        """Before the first step: the model learns the training split's scale of every value (and of its changes)."""
        model.normalise_from(data.train_values, data.train_changes)


class FrameClassifier(_NumberTask):
    """Which class a sequence of frames is (JapaneseVowels: which of 9 speakers; BasicMotions: which activity)."""

    name = "frame_classifier"
    builtin = BUILTIN_FRAMES
    head = "classes"

    def load(self, dataset: str) -> Frames:
        return builtin_frames(dataset)

    def from_csv(self, config: TrainConfig) -> Frames:
        return csv_frames(config.csv, config.columns, config.target, config.sequence, config.time, config.val_fraction)

    def output_size(self, source: Frames) -> int:
        return len(source.labels)

    def data(self, tokenizer, source: Frames, config: TrainConfig) -> TaskData:
        """Batches of whole sequences, padded; a fifth of each class's training sequences (at least one) held out to
        choose the best checkpoint by, so that the test split only ever measures."""
        frames, labels = source.train
        chosen = selection(labels)
        held = set(chosen)
        learnt = [i for i in range(len(frames)) if i not in held]

        def batch(indices: list[int], split) -> Batch:
            x, y = split
            width = max(len(x[i]) for i in indices)
            inputs = torch.zeros(len(indices), width, x[0].shape[1])
            targets = torch.full((len(indices), width), IGNORE, dtype=torch.long)
            for row, i in enumerate(indices):
                inputs[row, : len(x[i])] = torch.from_numpy(x[i])
                targets[row, : len(x[i])] = int(y[i])  # every frame is trained to name its sequence's class
            return Batch(inputs, targets)

        def make_batch(rng: random.Random, size: int) -> Batch:
            return batch([learnt[rng.randrange(len(learnt))] for _ in range(size)], source.train)

        test = list(range(len(source.test[0])))
        data = Examples(make_batch, [batch(b, source.test) for b in batched(test, 64)], config)
        data.select_batches = [batch(b, source.train) for b in batched(chosen, 64)]
        data.source, data.train_values, data.train_changes, data.rate = source, torch.from_numpy(np.concatenate([frames[i] for i in learnt])), None, "steps_s"
        return data

    def loss_total(self, model, outputs: torch.Tensor, batch: Batch) -> tuple[torch.Tensor, int]:
        total = nn.functional.cross_entropy(outputs.flatten(0, 1), batch.targets.flatten(), ignore_index=IGNORE, reduction="sum")
        return total, int((batch.targets != IGNORE).sum())

    def metrics(self, loss: float, outputs: list[torch.Tensor], data: TaskData, model) -> dict:
        """Accuracy of the answer for the whole sequence (its last frame's) on the held-out split, and of the running
        guess halfway through each sequence."""
        last, half, truth = [], [], []
        for out, batch in zip(outputs, data.val_batches):
            lengths = (batch.targets != IGNORE).sum(1)
            rows = torch.arange(len(lengths))
            last.append(out[rows, lengths - 1].argmax(-1))
            half.append(out[rows, (lengths - 1) // 2].argmax(-1))
            truth.append(batch.targets[:, 0])
        last, half, truth = torch.cat(last), torch.cat(half), torch.cat(truth)
        majority = float((truth == torch.bincount(torch.from_numpy(data.source.train[1])).argmax()).float().mean())
        return {
            "val_loss_nats": round(loss, 4),
            "accuracy": round(float((last == truth).float().mean()), 4),
            "accuracy_halfway": round(float((half == truth).float().mean()), 4),
            "majority_accuracy": round(majority, 4),
            "test_sequences": len(truth),
        }

    def summary(self, metrics: dict) -> str:
        return (
            f"test accuracy {metrics['accuracy']:.3f} on {metrics['test_sequences']} sequences (halfway through each: "
            f"{metrics['accuracy_halfway']:.3f}; always the commonest class: {metrics['majority_accuracy']:.3f})"
        )

    @torch.no_grad()
    def sample(self, model, tokenizer, data: TaskData, chars: int) -> str:
        frames, labels = data.source.test
        x = torch.from_numpy(frames[0])[None]
        probabilities = model.served(model(x, None)[0], x)[0][0, -1]
        guess = int(probabilities.argmax())
        names = data.source.labels
        return f"test sequence 0 ({len(frames[0])} frames, class {names[labels[0]]!r}) → {names[guess]!r} {float(probabilities[guess]):.2f}"


class Forecaster(_NumberTask):
    """Each series' next value, from all of it so far: trained on windows of the series with the state carried from
    one window to the next (as a language model reads text), evaluated one step ahead over a held-out final part."""

    name = "forecaster"
    builtin = {name: about for name, (about, _) in BUILTIN_SERIES.items()}
    head = "gaussian"

    def load(self, dataset: str) -> Series:
        return builtin_series(dataset)

    def from_csv(self, config: TrainConfig) -> Series:
        if config.columns is not None:
            raise UsageError("--columns is for a frame_classifier's frames: a forecaster reads and predicts its --target columns")
        return csv_series(config.csv, config.target, config.time, config.period)

    def output_size(self, source: Series) -> int:
        return len(source.columns)

    def data(self, tokenizer, source: Series, config: TrainConfig) -> TaskData:
        """Windows of the series before its held-out end, less a part as long just before it, which chooses the best
        checkpoint: the held-out end only ever measures."""
        values = torch.from_numpy(source.values)
        cut = held_out_start(len(values), config.val_fraction)
        chosen_from = held_out_start(cut, config.val_fraction)
        train, held = values[:chosen_from], values
        length = min(config.bptt, max(8, chosen_from // 4))

        def window(start: int, size: int, series: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            return series[start : start + size], series[start + 1 : start + size + 1]

        def make_batch(rng: random.Random, size: int) -> Batch:
            starts = [rng.randrange(chosen_from - length) for _ in range(size)]
            pairs = [window(s, length, train) for s in starts]
            return Batch(torch.stack([x for x, _ in pairs]), torch.stack([y for _, y in pairs]))

        # validation: the whole series read once, one step ahead; only the predictions of held-out values count
        inputs, targets = window(0, len(held) - 1, held)
        measured, choosing = torch.zeros(len(targets)), torch.zeros(len(targets))
        measured[cut - 1 :] = 1.0
        choosing[chosen_from - 1 : cut - 1] = 1.0
        data = Examples(make_batch, [Batch(inputs[None], targets[None], weight=measured[None])], config)
        data.select_batches = [Batch(inputs[None], targets[None], weight=choosing[None])]
        data.source, data.train_values, data.train_changes, data.cut, data.rate = source, train, train[1:] - train[:-1], cut, "steps_s"
        return data

    def loss_total(self, model, outputs: torch.Tensor, batch: Batch) -> tuple[torch.Tensor, int]:
        """The Gaussian negative log-likelihood of each next value, in normalised units (a validation batch's
        weights pick the steps it measures)."""
        change, log_std = model.gaussian(outputs)
        z = (batch.targets - batch.inputs) / model.change_scale
        nll = 0.5 * ((z - change) / torch.exp(log_std)) ** 2 + log_std + 0.5 * math.log(2 * math.pi)
        weight = torch.ones(nll.shape[:2]) if batch.weight is None else batch.weight
        return (nll.sum(-1) * weight).sum(), int(weight.sum()) * nll.size(-1)

    def metrics(self, loss: float, outputs: list[torch.Tensor], data: TaskData, model) -> dict:
        return {"val_loss_nats": round(loss, 4)} | forecast_quality(model, outputs[0], data.val_batches[0].inputs, data.source, data.cut)

    def summary(self, metrics: dict) -> str:
        return (
            f"held-out MASE {metrics['mase']:.3f} one step ahead over {metrics['held_out_steps']} steps (persistence "
            f"{metrics['persistence_mase']:.3f}, seasonal naive {metrics['seasonal_naive_mase']:.3f}), 90% interval covers "
            f"{metrics['coverage_90']:.1%}"
        )

    @torch.no_grad()
    def sample(self, model, tokenizer, data: TaskData, chars: int) -> str:
        series = torch.from_numpy(data.source.values)
        out, _ = model(series[None, : data.cut], None)
        mean, std = (t[0, -1] for t in model.served(out, series[None, : data.cut]))
        shown = ", ".join(f"{m:.2f} ± {Z_90 * s:.2f}" for m, s in zip(mean.tolist(), std.tolist()))
        actual = ", ".join(f"{v:.2f}" for v in series[data.cut].tolist())
        return f"the first held-out step: forecast {shown} (90%), actual {actual}"


def selection(labels: np.ndarray) -> list[int]:
    """The last fifth of each class's sequences (at least one), where the class has more than one."""
    chosen: list[int] = []
    for label in np.unique(labels):
        members = np.flatnonzero(labels == label).tolist()
        if len(members) > 1:
            chosen += members[-max(1, len(members) // 5) :]
    return sorted(chosen)


def held_out_start(length: int, fraction: float) -> int:
    """Where the held-out end of a series begins: the last `fraction` of it, at least 8 steps, leaving at least 16."""
    held = min(max(8, round(length * fraction)), length - 16)
    return length - held


@torch.no_grad()
def forecast_quality(model, outputs: torch.Tensor, inputs: torch.Tensor, source: Series, cut: int) -> dict:
    """One-step-ahead figures over the held-out steps: MASE (mean absolute error over the in-sample mean absolute
    error of the seasonal-naive forecast, Hyndman & Koehler 2006), the same for persistence (the last value) and the
    seasonal-naive forecast (the value a period before), and how often the 90 % interval holds the truth."""
    mean, std = (t[0].numpy() for t in model.served(outputs, inputs))  # [N - 1, S]: after each step, the next value
    y = source.values
    held = slice(cut, len(y))
    truth = y[held]
    predicted, spread = mean[cut - 1 :], std[cut - 1 :]
    m = seasonal_lag(source.period, cut)
    scale = mase_scale(y[:cut], source.period)

    def mase(forecast: np.ndarray) -> float:
        return float((np.abs(forecast - truth) / scale).mean())

    return {
        "mase": round(mase(predicted), 4),
        "persistence_mase": round(mase(y[cut - 1 : -1]), 4),
        "seasonal_naive_mase": round(mase(y[cut - m : len(y) - m]), 4),
        "coverage_90": round(float((np.abs(truth - predicted) <= Z_90 * spread).mean()), 4),
        "mae": round(float(np.abs(predicted - truth).mean()), 4),
        "held_out_steps": int(len(truth)),
        "period": int(m),
    }


def seasonal_lag(period: int, length: int) -> int:
    """The seasonal-naive forecast's lag: the period, or 1 where the training part is not longer than a period."""
    return period if period < length else 1


def mase_scale(train: np.ndarray, period: int) -> np.ndarray:
    """MASE's scale (Hyndman & Koehler 2006): the seasonal-naive forecast's mean absolute error over the training part
    [N, ...], per series; 1 where that error is 0."""
    m = seasonal_lag(period, len(train))
    scale = np.abs(train[m:] - train[:-m]).mean(0)
    return np.where(scale > 0, scale, 1.0)


NUMBER_TASKS = (FrameClassifier(), Forecaster())
