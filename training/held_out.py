"""A language model's held-out texts — its validation text, and a --test-corpus — scored whole, and the figures
papers give for them: nats per token, bits per character, per-word perplexity."""

from __future__ import annotations

import math
from dataclasses import dataclass

from rnnserve.errors import UsageError
from rnnserve.text import Tokenizer, UnknownText, count_words
from rnnserve.training.batches import Batch, held_out_batches
from rnnserve.training.config import TrainConfig

LN2 = math.log(2)


def held_out_files(config: TrainConfig) -> list[tuple[str, str]]:
    """(path, flag) of each held-out file the run names."""
    return [(path, flag) for path, flag in ((config.val_corpus, "--val-corpus"), (config.test_corpus, "--test-corpus")) if path]


@dataclass
class HeldOut:
    """A held-out text scored whole: its batches (the last row padded, nothing dropped), how many predictions they
    make, and the characters and words (with line ends, as papers count them) those predictions are of."""

    batches: list[Batch]
    predictions: int
    chars: int
    words: int


def held_out(tokenizer: Tokenizer, text: str, config: TrainConfig) -> HeldOut:
    """The text's every token predicted: it is read after a line end (the start of a line, as word-level models
    read a test file), so the first token is scored too."""
    ids = tokenizer.encode(text)
    try:
        start = tokenizer.encode("\n")[-1:]
    except UnknownText:  # a vocabulary without a line end: the first token is given, not scored
        start = []
    stream = start + ids
    if len(stream) < 2:
        raise UsageError("the held-out text is too short to score: give it at least two tokens")
    scored = text if start else b"".join(tokenizer.token_bytes(t) for t in ids[1:]).decode("utf-8", errors="replace")
    return HeldOut(held_out_batches(stream[:-1], stream[1:], config.bptt), len(stream) - 1, len(scored), count_words(scored))


def held_out_figures(split: str, loss: float, scored: HeldOut) -> dict:
    """Nats per token, bits per character and per-word perplexity (exp of the total loss over the words and line
    ends), the measures that compare any tokenizer's models and published word-level figures."""
    total = loss * scored.predictions
    return {
        f"{split}_loss_nats": round(loss, 4),
        f"{split}_bits_per_char": round(total / LN2 / max(1, scored.chars), 4),
        f"{split}_word_perplexity": round(math.exp(min(total / max(1, scored.words), 700.0)), 2),
        f"{split}_chars": scored.chars,
        f"{split}_words": scored.words,
    }
