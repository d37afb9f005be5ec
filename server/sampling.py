"""Choosing the next token from logits: greedy, temperature, top-k, top-p, seeded per request, for a whole batch of
rows at once."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True, slots=True)
class SamplingParams:
    temperature: float  # 0: greedy
    top_k: int  # 0: off
    top_p: float  # 1.0: off
    seed: int
    max_tokens: int
    stop: tuple[str, ...] = ()


def sample_rows(logits: np.ndarray, params: list[SamplingParams], rngs: list[np.random.Generator]) -> np.ndarray:
    """logits [R, V] → one token id per row [R], each row with its own settings and random generator.

    Vectorised over the rows; for every row it draws exactly what `rng.choice(V, p=probabilities)` would (the
    same cumulative sum, normalisation and one uniform draw), so a seed gives the same text alone or in any batch.
    """
    tokens = logits.argmax(-1).astype(np.int64)  # greedy rows (temperature 0) are done
    temperatures = np.array([p.temperature for p in params])
    sampled = np.flatnonzero(temperatures > 0)
    if sampled.size == 0:
        return tokens
    scores = logits[sampled].astype(np.float64) / temperatures[sampled, None]  # [S, V]
    vocabulary = scores.shape[1]
    top_k = np.array([params[i].top_k for i in sampled])
    cut = np.flatnonzero((top_k > 0) & (top_k < vocabulary))
    if cut.size:
        descending = -np.sort(-scores[cut], axis=-1)
        kth = descending[np.arange(cut.size), top_k[cut] - 1]  # each row's k-th largest score
        scores[cut] = np.where(scores[cut] < kth[:, None], -np.inf, scores[cut])
    probs = softmax(scores)
    for row, index in enumerate(sampled):
        top_p = params[index].top_p
        if top_p < 1.0:
            order = np.argsort(-probs[row])
            before = np.cumsum(probs[row, order]) - probs[row, order]  # mass of the more probable tokens
            probs[row, order[before >= top_p]] = 0.0
            probs[row] /= probs[row].sum()
    cdf = probs.cumsum(-1)
    cdf /= cdf[:, -1:]
    uniform = np.array([rngs[i].random() for i in sampled])  # [S]
    tokens[sampled] = (cdf <= uniform[:, None]).sum(-1)  # searchsorted(side="right"), row by row
    return tokens


def softmax(scores: np.ndarray) -> np.ndarray:
    """Along the last axis, in float64 so probabilities sum to 1 for rng.choice."""
    shifted = np.exp(scores - scores.max(axis=-1, keepdims=True))
    return shifted / shifted.sum(axis=-1, keepdims=True)


MAX_K_BY_ARGMAX = 8  # a larger k is picked by one argpartition: per row it costs about eight argmax passes


def top_tokens(logits: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """logits [..., V] → (ids [..., k], probabilities [..., k]), most probable first.

    A served step ranks its outputs on the request's path, so this is built for it: the k most probable are taken by
    k argmax passes over the batch (a row's first best on ties), only those k are normalised by the softmax's sum,
    and rows are indexed directly rather than through take_along_axis — 1.6-4x cheaper than a whole softmax,
    argpartition and sort, from one row to 256."""
    *lead, vocabulary = logits.shape
    scores = logits.reshape(-1, vocabulary)  # [N, V]
    top = scores.max(axis=-1, keepdims=True)
    shifted = scores - top  # a copy, in which the picked are masked
    total = np.exp(shifted).sum(axis=-1, keepdims=True, dtype=np.float64)
    if k == 1:  # the most probable's probability is exp(0) / total
        return shifted.argmax(axis=-1).reshape(*lead, 1), (1.0 / total).reshape(*lead, 1)
    each = np.arange(len(scores))
    rows = each[:, None]
    if k <= MAX_K_BY_ARGMAX:
        ids = np.empty((len(scores), k), np.int64)
        for j in range(k):
            ids[:, j] = best = shifted.argmax(axis=-1)
            if j < k - 1:
                shifted[each, best] = -np.inf
    else:  # the k largest, unordered (all of them when k is the vocabulary), then in order
        ids = np.argpartition(scores, vocabulary - k, axis=-1)[:, vocabulary - k :]
        ids = ids[rows, np.argsort(-scores[rows, ids], axis=-1)]
    probabilities = np.exp(scores[rows, ids] - top, dtype=np.float64) / total
    return ids.reshape(*lead, k), probabilities.reshape(*lead, k)


class StopMatcher:
    """Holds back generated text that could still become a stop string, so no stop string is ever streamed."""

    def __init__(self, stops: tuple[str, ...]):
        self._stops = stops
        self._pending = ""

    def push(self, text: str) -> tuple[str, bool]:
        """(text safe to emit, whether a stop string was reached)."""
        self._pending += text
        hits = [i for i in (self._pending.find(s) for s in self._stops) if i >= 0]
        if hits:
            out, self._pending = self._pending[: min(hits)], ""
            return out, True
        keep = max((n for s in self._stops for n in range(1, len(s)) if self._pending.endswith(s[:n])), default=0)
        cut = len(self._pending) - keep
        out, self._pending = self._pending[:cut], self._pending[cut:]
        return out, False

    def flush(self) -> str:
        out, self._pending = self._pending, ""
        return out
