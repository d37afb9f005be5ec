"""Corpora and batching for truncated backpropagation through time."""

from __future__ import annotations

import functools
import math
from collections import Counter
from pathlib import Path

import torch


def builtin_corpus() -> str:
    """English text that ships with Python itself (the help topics), so training needs no download."""
    import pydoc_data.topics

    topics = pydoc_data.topics.topics
    return "\n\n".join(topics[name] for name in sorted(topics))


def load_corpus(path: str | None) -> str:
    if path is None:
        return builtin_corpus()
    try:
        return Path(path).read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise SystemExit(f"--corpus {path}: not UTF-8 text ({err})") from None
    except OSError as err:
        raise SystemExit(f"--corpus {path}: {err.strerror}") from None


def split_corpus(text: str, val_fraction: float) -> tuple[str, str]:
    """The last `val_fraction` of the text is held out for validation."""
    cut = int(len(text) * (1.0 - val_fraction))
    return text[:cut], text[cut:]


@functools.lru_cache(maxsize=4)  # asked at every evaluation about the same corpus
def unigram_entropy_bits(text: str) -> float:
    """Bits per character of the text's own character frequencies: what a model without context gets."""
    counts = Counter(text)
    total = len(text)
    return -sum(n / total * math.log2(n / total) for n in counts.values())


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
        raise SystemExit(f"corpus too small: {len(ids)} tokens for batch size {batch_size}")
    return torch.tensor(ids[: columns * batch_size], dtype=torch.long).view(batch_size, columns)


def chunks(inputs: torch.Tensor, targets: torch.Tensor, bptt: int):
    """Yields aligned (inputs, targets) windows of `bptt` steps, each [B, T]."""
    for start in range(0, inputs.size(1), bptt):
        yield inputs[:, start : start + bptt], targets[:, start : start + bptt]
