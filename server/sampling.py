"""Choosing the next token from logits: greedy, temperature, top-k, top-p, seeded per request."""

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


class Sampler:
    def __init__(self, params: SamplingParams):
        self._params = params
        self._rng = np.random.default_rng(params.seed)

    def sample(self, logits: np.ndarray) -> int:
        """logits [V] → one token id."""
        p = self._params
        if p.temperature == 0.0:
            return int(np.argmax(logits))
        scores = logits.astype(np.float64) / p.temperature
        if 0 < p.top_k < scores.size:
            kth = np.partition(scores, -p.top_k)[-p.top_k]
            scores[scores < kth] = -np.inf
        probs = softmax(scores)
        if p.top_p < 1.0:
            order = np.argsort(-probs)
            before = np.cumsum(probs[order]) - probs[order]  # mass of the more probable tokens
            probs[order[before >= p.top_p]] = 0.0
            probs /= probs.sum()
        return int(self._rng.choice(probs.size, p=probs))


def softmax(scores: np.ndarray) -> np.ndarray:
    """Along the last axis, in float64 so probabilities sum to 1 for rng.choice."""
    shifted = np.exp(scores - scores.max(axis=-1, keepdims=True))
    return shifted / shifted.sum(axis=-1, keepdims=True)


def top_tokens(logits: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """logits [T, V] → (ids [T, k], probabilities [T, k]), most probable first."""
    probs = softmax(logits.astype(np.float64))
    ids = np.argpartition(-probs, k - 1, axis=-1)[:, :k]
    picked = np.take_along_axis(probs, ids, axis=-1)
    order = np.argsort(-picked, axis=-1)
    return np.take_along_axis(ids, order, axis=-1), np.take_along_axis(picked, order, axis=-1)


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
