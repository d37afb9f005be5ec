"""A step's outputs as a client reads them: each input token with the text it completes and the most probable
next outputs named as tokens or labels, and a classifier's classes for all it has read."""

from __future__ import annotations

import numpy as np

from rnnserve.server.engine_jobs import StepResult
from rnnserve.server.repository import Model
from rnnserve.server.requests import Candidate, StepPrediction
from rnnserve.server.sampling import softmax
from rnnserve.text import IncrementalDecoder, token_text


def step_predictions(model: Model, tokens: list[int], decoder: IncrementalDecoder, result: StepResult,
                     logprobs: list[float | None] | None = None) -> tuple[StepPrediction, ...]:
    """Each step's input, the text it completes (none for a byte in the middle of a character), its top-k
    outputs, ranked by the engine, and when scoring, how likely its token was."""
    tokenizer, labels = model.tokenizer, model.card.labels

    def name(output: int) -> str:
        return labels[output] if labels else token_text(tokenizer, output)

    return tuple(
        StepPrediction(
            token,
            token_text(tokenizer, token),
            tuple(Candidate(i, name(i), p) for i, p in zip(ids, probabilities)),
            decoder.feed(token),
            logprob,
        )
        for token, ids, probabilities, logprob in zip(
            tokens, result.top_ids.tolist(), result.top_probabilities.tolist(), logprobs or [None] * len(tokens)
        )
    )


def classes(model: Model, logits: np.ndarray) -> tuple[Candidate, ...]:
    """A classifier's answer for all it has read: every class with its probability, most probable first."""
    card = model.card
    if not card.sequence_output:
        return ()
    return _ranked(card, _whole(card, softmax(logits.astype(np.float64))))


def value_classes(model: Model, outputs: tuple[tuple[str, np.ndarray], ...]) -> tuple[Candidate, ...]:
    """The same for a classifier of values, whose graph answers each step's probabilities itself (its first output,
    [T, C]); nothing for a chunk of no steps."""
    card = model.card
    if not card.sequence_output or not outputs or not len(outputs[0][1]):
        return ()
    return _ranked(card, _whole(card, outputs[0][1].astype(np.float64)))


def _whole(card, per_step: np.ndarray) -> np.ndarray:
    """[T, C] per-step probabilities → the answer for all read so far (the model's sequence_output rule)."""
    return per_step.mean(0) if card.sequence_output == "mean" else per_step[-1]


def _ranked(card, probabilities: np.ndarray) -> tuple[Candidate, ...]:
    return tuple(Candidate(int(i), card.labels[i], float(probabilities[i])) for i in np.argsort(-probabilities))
