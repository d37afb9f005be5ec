"""How examples reach a model, in `Batch`es. Two ways:
- streams (language model, tagger): a long text cut into parallel streams, read window after window with
  the state carried across windows (truncated BPTT);
- examples (classifier, conditional language model, date normaliser): independent examples, each starting
  from its own initial state: zeros, a class label's learnt state, or the encoding of a source text.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import torch

from rnnserve.errors import UsageError
from rnnserve.training.config import TrainConfig

IGNORE = -100  # target of a padded position: no loss, no metric
EXAMPLE_BATCHES_PER_EPOCH = 500


@dataclass
class Batch:
    inputs: torch.Tensor  # [B, T] token ids
    targets: torch.Tensor  # [B, T]: the next token, or a label, or IGNORE
    fresh: bool = True  # starts from the initial state; otherwise carries the previous batch's state
    condition: torch.Tensor | None = None  # [B] class labels of a conditional language model
    source: torch.Tensor | None = None  # [B, S] source tokens of an encoder–decoder, right-padded
    source_lengths: torch.Tensor | None = None  # [B]
    weight: torch.Tensor | None = None  # [B, T] how much each step's prediction counts (a forecaster's held-out steps)


class TaskData:
    """A task's training batches (epoch by epoch, the same for the same seed) and validation batches."""

    chars_per_token: float = 1.0
    rate = "chars_s"  # what the progress line counts per second: characters read, or (a number task's) steps

    val_batches: list[Batch]
    select_batches: list[Batch] | None = None  # held out of training to choose the best checkpoint by (--keep-best)
    val = None  # a language model's validation text scored whole (tasks.HeldOut)
    test = None  # and its --test-corpus, scored once at the end
    corpus: str = ""  # the text behind it, for per-character figures
    val_text: str = ""  # the held-out text, for samples
    held_out: tuple[tuple[str, str], ...] = ()  # held-out (source, target) pairs, for samples

    def train_batches(self, epoch: int):
        raise NotImplementedError


class Streams(TaskData):
    """A long training text as parallel streams; its task sets the validation batches."""

    def __init__(self, inputs: list[int], targets: list[int], config: TrainConfig):
        train = batchify(inputs, config.batch_size), batchify(targets, config.batch_size)
        self._train = [Batch(x, y, fresh=i == 0) for i, (x, y) in enumerate(chunks(*train, config.bptt))]

    def train_batches(self, epoch: int):
        return iter(self._train)


class Examples(TaskData):
    """Random examples for training (a fixed number of batches per epoch), a fixed held-out set for validation."""

    def __init__(self, make_batch, val_batches: list[Batch], config: TrainConfig):
        self._make_batch = make_batch  # (random.Random, batch size) → Batch
        self._config = config
        self.val_batches = val_batches

    def train_batches(self, epoch: int):
        rng = random.Random(self._config.seed * 1_000_003 + epoch)
        return (self._make_batch(rng, self._config.batch_size) for _ in range(EXAMPLE_BATCHES_PER_EPOCH))


def batched(items: list, size: int):
    return (items[i : i + size] for i in range(0, len(items), size))


def pad(rows: list[list[int]], value: int) -> torch.Tensor:
    width = max(len(r) for r in rows)
    return torch.tensor([r + [value] * (width - len(r)) for r in rows], dtype=torch.long)


def batchify(ids: list[int], batch_size: int) -> torch.Tensor:
    """Cuts a token stream into `batch_size` parallel streams.

    ids 0..11, batch_size 3 →  [[0 1 2 3],
                                [4 5 6 7],
                                [8 9 10 11]]
    Each row is read left to right across training steps, so the recurrent state carried from one
    chunk to the next belongs to the text that really follows it.
    """
    columns = len(ids) // batch_size
    if columns < 2:
        raise UsageError(f"corpus too small: {len(ids)} tokens for --batch-size {batch_size}: train on more text or use a smaller --batch-size")
    return torch.tensor(ids[: columns * batch_size], dtype=torch.long).view(batch_size, columns)


ONE_PASS_TOKENS = 262_144  # a held-out text up to this long is read in one pass, as `rnnserve score` reads it


def parallel_rows(inputs: list[int], targets: list[int], bptt: int) -> list[Batch]:
    """A held-out stream as up to 16 parallel rows read window by window (the tail that fills no row left out)."""
    rows = min(16, max(1, len(inputs) // (2 * bptt)))
    x, y = batchify(inputs, rows), batchify(targets, rows)
    return [Batch(a, b, fresh=i == 0) for i, (a, b) in enumerate(chunks(x, y, bptt))]


HELD_OUT_WINDOW = 512  # steps a held-out text is read in per call (the state carries across: any window is exact)


def held_out_batches(inputs: list[int], targets: list[int], bptt: int) -> list[Batch]:
    """A held-out stream read window by window, nothing dropped: in one pass from its start (every token with all
    the context before it, exactly what the served model's scoring gives), or a longer one in as many parallel rows
    as keep each within ONE_PASS_TOKENS (the last padded: its padding predicts nothing)."""
    rows = -(-len(inputs) // ONE_PASS_TOKENS)
    columns = -(-len(inputs) // rows)
    padding = rows * columns - len(inputs)
    x = torch.tensor(inputs + [0] * padding, dtype=torch.long).view(rows, columns)
    y = torch.tensor(targets + [IGNORE] * padding, dtype=torch.long).view(rows, columns)
    return [Batch(a, b, fresh=i == 0) for i, (a, b) in enumerate(chunks(x, y, max(bptt, HELD_OUT_WINDOW)))]


def chunks(inputs: torch.Tensor, targets: torch.Tensor, bptt: int):
    """Yields aligned (inputs, targets) windows of `bptt` steps, each [B, T]."""
    for start in range(0, inputs.size(1), bptt):
        yield inputs[:, start : start + bptt], targets[:, start : start + bptt]
