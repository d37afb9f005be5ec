"""A Generate request in two halves: the `Generation` the batcher steps and samples until it ends (prompt in, a
token per step, done), and the `TextStream` that turns the tokens its handler takes into text pieces: whole
characters, no stop string, the finish reason on the last."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

import numpy as np

from rnnserve.server.requests import GeneratedPiece
from rnnserve.server.sampling import SamplingParams, StopMatcher
from rnnserve.text import IncrementalDecoder, Tokenizer


@dataclass(slots=True, eq=False)
class Generation:
    """A Generate request's row, which the batcher's engine thread steps, samples and steps again until it ends,
    without a round trip to its request's handler per token: the handler takes what was written whenever it can
    send it. The engine thread owns the sampling state; the event loop owns what has been handed over."""

    slot: int
    params: SamplingParams
    eos: int | None  # the token that ends the text
    banned: int | None  # a token it must never write (a decoder's start token)
    extra_outputs: bool  # keep each token's extra outputs (an encoder–decoder's attention)
    # the engine thread's
    rng: np.random.Generator = field(init=False)
    remaining: int = field(init=False)  # tokens it may still write
    next_input: int = -1  # the token its next step reads
    written: int = 0  # tokens written so far
    # the event loop's
    tokens: list[int] = field(default_factory=list)  # handed over, not yet taken
    extras: list[list[np.ndarray]] = field(default_factory=list)  # per token: its extra outputs' last step
    taken: int = 0  # tokens its handler has taken so far
    stopped: bool = False  # its handler is done with it: nothing more is stepped
    error: Exception | None = None
    ready: asyncio.Event = field(default_factory=asyncio.Event)  # something to take

    def __post_init__(self):
        self.rng = np.random.default_rng(self.params.seed)
        self.remaining = self.params.max_tokens


class TextStream:
    """Tokens in, as many at a time as were written; one piece out per batch of tokens that completes any text.
    Tokens that are only a part of a character wait for the piece that completes it."""

    def __init__(self, tokenizer: Tokenizer, eos: int | None, params: SamplingParams, prompt_tokens: int, source_tokens: tuple[str, ...]):
        self._decoder, self._stopper = IncrementalDecoder(tokenizer), StopMatcher(params.stop)
        self._eos, self._max_tokens, self._prompt_tokens = eos, params.max_tokens, prompt_tokens
        self._source_tokens, self._source_length = source_tokens, len(source_tokens)
        self._pending: list[int] = []  # tokens not yet sent, with their attention rows
        self._attention: list[tuple[float, ...]] = []
        self._generated = 0
        self.finished = False

    def piece(self, tokens: list[int], extras: list[list[np.ndarray]]) -> GeneratedPiece | None:
        text, reason, complete = "", "", 0
        for index, token in enumerate(tokens):
            self._generated += 1
            if token == self._eos:
                reason = "end"
                break
            self._pending.append(token)
            if extras:  # where the decoder looked while choosing this token
                self._attention.append(tuple(extras[index][0][: self._source_length].tolist()))
            characters = self._decoder.feed(token)
            if characters:
                complete = len(self._pending)
            released, stopped = self._stopper.push(characters)
            text += released
            if stopped or self._generated == self._max_tokens:
                reason = "stop" if stopped else "length"
                break
        if reason and reason != "stop":
            # release what the stop matcher held back; a character the decoder still holds a part of is left out,
            # so the text ends at its last whole character
            text += self._stopper.flush()
        if not (reason or text):
            return None
        self.finished = bool(reason)
        sent = len(self._pending) if reason else complete
        piece = GeneratedPiece(
            text, tuple(self._pending[:sent]), reason, self._prompt_tokens if reason else 0, self._generated if reason else 0,
            tuple(self._attention[:sent]), self._source_tokens,
        )
        del self._pending[:sent], self._attention[:sent]
        self._source_tokens = ()
        return piece
