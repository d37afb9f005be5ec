"""What a model learns from a corpus: its inputs and targets, how its quality is measured, what a sample
looks like, and what its outputs mean (for the metadata the server reads)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from training.data import unigram_entropy_bits
from training.models import RecurrentNet
from training.text import IncrementalDecoder, Tokenizer

LN2 = math.log(2)


@dataclass(frozen=True)
class Split:
    inputs: list[int]  # token ids the model reads
    targets: list[int]  # what it should output at each step: the next token, or a label
    chars: int  # characters of text behind them, for per-character figures


class LanguageModel:
    """Predict the next token at every step."""

    name = "language_model"
    labels: tuple[str, ...] = ()

    def split(self, tokenizer: Tokenizer, text: str) -> Split:
        ids = tokenizer.encode(text)
        return Split(ids[:-1], ids[1:], len(text))

    def tokenizer_text(self, text: str) -> str:
        return text

    def metrics(self, loss: float, predicted: torch.Tensor, split: Split, corpus: str) -> dict:
        chars_per_token = split.chars / len(split.inputs)
        return {
            "val_loss_nats": round(loss, 4),
            "val_bits_per_char": round(loss / LN2 / chars_per_token, 4),
            "unigram_bits_per_char": round(unigram_entropy_bits(corpus), 4),
        }

    def summary(self, metrics: dict) -> str:
        return (
            f"val loss {metrics['val_loss_nats']:.3f} nats, {metrics['val_bits_per_char']:.3f} bits/char "
            f"(unigram {metrics['unigram_bits_per_char']:.3f})"
        )

    @torch.no_grad()
    def sample(self, model: RecurrentNet, tokenizer: Tokenizer, val_text: str, chars: int, temperature: float = 0.8) -> str:
        """Text continuing "The ", sampled step by step from the PyTorch model."""
        decoder = IncrementalDecoder(tokenizer)
        logits, state = model(torch.tensor([tokenizer.encode("The ")]), model.initial_state(1))
        text = ""
        while len(text) < chars:
            token = int(torch.multinomial(torch.softmax(logits[0, -1] / temperature, dim=-1), 1))
            text += decoder.feed(token)
            logits, state = model(torch.tensor([[token]]), state)
        return text


class BoundaryTagger:
    """Restore word boundaries: read text with its whitespace removed, tag after which character a space belongs."""

    name = "boundary_tagger"
    labels = ("no_boundary", "boundary")

    def split(self, tokenizer: Tokenizer, text: str) -> Split:
        inputs: list[int] = []
        targets: list[int] = []
        words = text.split()
        for index, word in enumerate(words):
            ids = tokenizer.encode(word)
            inputs += ids
            targets += [0] * (len(ids) - 1) + [int(index < len(words) - 1)]  # the label sits on a word's last token
        return Split(inputs, targets, sum(len(w) for w in words))

    def tokenizer_text(self, text: str) -> str:
        return "".join(text.split())

    def metrics(self, loss: float, predicted: torch.Tensor, split: Split, corpus: str) -> dict:
        truth = torch.tensor(split.targets[: predicted.numel()])
        hits = int(((predicted == 1) & (truth == 1)).sum())
        precision = hits / max(1, int((predicted == 1).sum()))
        recall = hits / max(1, int((truth == 1).sum()))
        return {
            "val_loss_nats": round(loss, 4),
            "boundary_precision": round(precision, 4),
            "boundary_recall": round(recall, 4),
            "boundary_f1": round(2 * precision * recall / max(1e-9, precision + recall), 4),
            "accuracy": round(float((predicted == truth).float().mean()), 4),
        }

    def summary(self, metrics: dict) -> str:
        return (
            f"val loss {metrics['val_loss_nats']:.3f} nats, boundary F1 {metrics['boundary_f1']:.3f} "
            f"(precision {metrics['boundary_precision']:.3f}, recall {metrics['boundary_recall']:.3f})"
        )

    @torch.no_grad()
    def sample(self, model: RecurrentNet, tokenizer: Tokenizer, val_text: str, chars: int) -> str:
        """The start of the held-out text with its spaces removed, and put back where the model says."""
        joined = "".join(val_text.split())[:chars]
        logits, _ = model(torch.tensor([tokenizer.encode(joined)]), model.initial_state(1))
        boundaries = logits[0].argmax(-1).tolist()
        return "".join(ch + (" " if boundary else "") for ch, boundary in zip(joined, boundaries))


TASKS = {task.name: task for task in (LanguageModel(), BoundaryTagger())}


def task_named(name: str):
    if name not in TASKS:
        raise SystemExit(f"--task {name!r}: expected one of {', '.join(TASKS)}")
    return TASKS[name]
