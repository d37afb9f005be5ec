"""What the server does, free of gRPC: generate text, consume streamed chunks step by step, run tensor requests.

The API layer converts protobuf to the request types (server/requests.py) and the results back; everything
between is request → session → batcher → runtime.
"""

from __future__ import annotations

import asyncio
import math
import secrets
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import numpy as np

from server.config import ServerConfig
from server.errors import FailedPrecondition, InvalidArgument, ResourceExhausted
from server.repository import Model, Repository
from server.requests import (
    Candidate,
    Chunk,
    ChunkResult,
    GeneratedPiece,
    GenerateRequest,
    InferRequest,
    InferResult,
    SamplingRequest,
    StepPrediction,
    StreamStart,
    TensorRequest,
    TensorResult,
)
from server.generation import TextStream
from server.sampling import SamplingParams, softmax, top_tokens
from server.sessions import Session, SessionRegistry
from training.text import IncrementalDecoder, UnknownText, token_text

MAX_STOP_STRINGS = 16
MAX_STOP_CHARS = 256
MAX_TEMPERATURE = 100.0
DEFAULT_STREAM_TOP_K = 5


class InferenceService:
    def __init__(self, repository: Repository, sessions: SessionRegistry, config: ServerConfig):
        self.repository = repository
        self.sessions = sessions
        self._config = config

    async def generate(self, request: GenerateRequest) -> AsyncIterator[GeneratedPiece]:
        """Consumes the prompt in one runtime call (after the encoder, for a model that has one), then
        samples one token per step."""
        model = self.repository.get(request.model, request.version)
        card = model.card
        if not card.generates:
            raise FailedPrecondition(
                f"model {card.name!r} ({card.task}) does not generate text: it supports {', '.join(card.calls)}"
            )
        params = self._sampling(model, request.sampling)
        encoder_inputs, source_tokens = self._encoder_inputs(model, request.label, request.source)
        prompt = self._encode(model, request.prompt, "prompt")
        if card.bos is not None:
            prompt = [card.bos, *prompt]
        if not prompt:
            raise InvalidArgument("prompt", "must not be empty: the model needs at least one character to continue")
        async with self.sessions.attach(model) as session:
            if encoder_inputs:
                await session.encode(encoder_inputs)
            # the batcher steps and samples the generation; here its tokens become text, as fast as the client
            # takes them: tokens written while a piece is being sent go out together in the next one
            generation = model.batcher.generate(
                session.slot, prompt, params, card.eos, card.bos, extra_outputs=bool(card.extra_outputs)  # never writes <bos>
            )
            text = TextStream(model.tokenizer, card.eos, params, len(prompt), source_tokens)
            try:
                while not text.finished:
                    piece = text.piece(*await model.batcher.take(generation))
                    if piece is not None:
                        yield piece
            finally:
                generation.stopped = True

    def _encoder_inputs(self, model: Model, label: str = "", source: str = "") -> tuple[dict[str, np.ndarray], tuple[str, ...]]:
        """What the model's encoder reads from a request's label or source (none for a plain language model),
        and the source's tokens as text."""
        card, encoder = model.card, model.card.encoder
        kind = encoder.input if encoder else None
        for field_name, value in (("label", label), ("source", source)):
            if value and kind != field_name:
                raise InvalidArgument(field_name, f"model {card.name!r} ({card.task}) takes no {field_name}")
        if kind == "label":
            if label not in encoder.labels:
                raise InvalidArgument(
                    "label", f"{label!r} is not one of the kinds of text model {card.name!r} writes: {', '.join(encoder.labels)}"
                )
            return {"label": np.array([encoder.labels.index(label)], np.int64)}, ()
        if kind == "source":
            source = self._encode(model, source, "source")
            if not source:
                raise InvalidArgument("source", f"model {card.name!r} ({card.task}) transduces a source text: send one")
            if len(source) > encoder.max_source_tokens:
                raise InvalidArgument(
                    "source", f"{len(source)} tokens is longer than the {encoder.max_source_tokens} model {card.name!r} reads"
                )
            return {"source": np.array([source], np.int64)}, tuple(token_text(model.tokenizer, t) for t in source)
        return {}, ()

    @asynccontextmanager
    async def open_stream(self, start: StreamStart):
        """A session for one bidirectional stream, and the function that consumes each chunk."""
        model = self.repository.get(start.model, start.version)
        if model.card.encoder is not None:
            self._check_call(model, "Stream")
        if not model.card.streaming:
            raise FailedPrecondition(
                f"model {model.card.name!r} cannot stream per step (it needs the whole input at once): "
                "send the whole input in one Infer call instead"
            )
        top_k = self._top_k(model, start.top_k, "start.top_k")
        async with self.sessions.attach(model, start.session_id, start.resume) as session:
            yield lambda chunk: self._consume(session, chunk, top_k)

    async def infer(self, request: InferRequest) -> InferResult:
        """The whole input in one call from the initial state, on a session of its own."""
        model = self.repository.get(request.model, request.version)
        self._check_call(model, "Infer")
        top_k = self._top_k(model, request.top_k, "top_k")
        tokens = self._input_tokens(model, request.text, request.tokens)
        if not tokens:
            raise InvalidArgument("text", "the input is empty")
        async with self.sessions.attach(model) as session:
            logits = await session.step(tokens)
        texts = self._step_texts(IncrementalDecoder(model.tokenizer), tokens)
        return InferResult(self._predictions(model, tokens, texts, logits, top_k), self._classes(model, logits))

    async def run_tensors(self, request: TensorRequest) -> TensorResult:
        """Each row from the initial state on a session of its own (batched together), or, for a sequence,
        its one row continuing the sequence's state. A model with an encoder starts each row's state from its
        label or source."""
        model = self.repository.get(request.model, request.version)
        card, sequence = model.card, request.sequence
        if sequence.id and not card.streaming:
            raise FailedPrecondition(
                f"model {card.name!r} needs the whole input at once, so it keeps no sequences: send each input "
                "in one ModelInfer without sequence parameters"
            )
        rows = self._tensor_rows(model, request)
        if sequence.id and len(rows) != 1:
            raise InvalidArgument("inputs", f"a sequence's request carries one row (batch size 1), not {len(rows)}")
        starts = self._tensor_starts(model, request, len(rows))
        if sequence.id:
            async with self.sessions.sequence(model, sequence.id, sequence.start, sequence.end, request.owner) as session:
                results = [await self._run_row(session, rows[0], starts[0])]
        else:
            results = await asyncio.gather(*(self._run_alone(model, row, start) for row, start in zip(rows, starts)))
        return TensorResult(model, self._stacked(card, results))

    def _stacked(self, card, results: list[list[np.ndarray] | None]) -> dict[str, np.ndarray]:
        """Each output over the batch's rows; a row of zero steps (None) has empty outputs of the right width."""
        widths = card.output_widths
        if len(results) == 1 and results[0] is not None:  # a sequence's one row
            return {name: results[0][i][None] for i, name in enumerate(("logits", *card.extra_outputs))}
        return {
            name: np.stack([np.zeros((0, widths[name]), np.float32) if r is None else r[i] for r in results])
            for i, name in enumerate(("logits", *card.extra_outputs))
        }

    def _tensor_starts(self, model: Model, request: TensorRequest, rows: int) -> list[dict[str, np.ndarray]]:
        """Each row's encoder inputs (empty where the row continues a sequence, or the model has no encoder)."""
        encoder, starting = model.card.encoder, not request.sequence.id or request.sequence.start
        if encoder is None:
            return [{}] * rows
        if not starting:
            if request.starts:
                raise InvalidArgument(encoder.input, "is read only when a sequence starts: send it with sequence_start")
            return [{}] * rows
        if len(request.starts) != rows:
            raise InvalidArgument(
                encoder.input, f"model {model.card.name!r} starts each sequence from a {encoder.input}: send one per row "
                f"({rows}) with every request that starts a sequence (or belongs to none)"
            )
        return [self._encoder_inputs(model, **{encoder.input: start})[0] for start in request.starts]

    async def _run_alone(self, model: Model, row: list[int], start: dict[str, np.ndarray]) -> list[np.ndarray] | None:
        async with self.sessions.attach(model) as session:
            return await self._run_row(session, row, start)

    async def _run_row(self, session: Session, row: list[int], start: dict[str, np.ndarray]) -> list[np.ndarray] | None:
        if start:
            await session.encode(start)
        return await session.step_outputs(row) if row else None

    def _tensor_rows(self, model: Model, request: TensorRequest) -> list[list[int]]:
        if (request.tokens is None) == (not request.texts):
            raise InvalidArgument("inputs", "send exactly one of the inputs tokens (INT64) or text (BYTES)")
        if request.tokens is not None:
            if request.tokens.shape[0] == 0:
                raise InvalidArgument("tokens", "the batch is empty: send at least one row")
            # every id the graph reads, its start token included: a decoder's first input is <bos>
            return [self._check_ids(model, tuple(row), model.card.vocab_size) for row in request.tokens.tolist()]
        rows = [self._encode(model, text, "text") for text in request.texts]
        lengths = sorted({len(row) for row in rows})
        if len(lengths) > 1:
            raise InvalidArgument(
                "text", f"the rows encode to different numbers of tokens ({', '.join(map(str, lengths))}); the outputs of "
                "one request are one tensor, so send rows of different lengths in separate requests"
            )
        return rows

    def close_session(self, session_id: str) -> None:
        self.sessions.close(session_id)

    async def _consume(self, session: Session, chunk: Chunk, top_k: int) -> ChunkResult:
        model = session.model
        tokens = self._input_tokens(model, chunk.text, chunk.tokens)
        if chunk.reset:
            session.reset()
        if not tokens:
            return ChunkResult(session.id, session.position)
        logits = await session.step(tokens)
        session.decoder = session.decoder or IncrementalDecoder(model.tokenizer)
        texts = self._step_texts(session.decoder, tokens)
        return ChunkResult(
            session.id, session.position, self._predictions(model, tokens, texts, logits, top_k), self._classes(model, logits)
        )

    def _step_texts(self, decoder: IncrementalDecoder, tokens: list[int]) -> list[str]:
        """The text each step completes: a byte in the middle of a character completes none."""
        return [decoder.feed(token) for token in tokens]

    def _classes(self, model: Model, logits: np.ndarray) -> tuple[Candidate, ...]:
        """A classifier's answer for all it has read: every class with its probability, most probable first."""
        card = model.card
        if not card.sequence_output:
            return ()
        per_step = softmax(logits.astype(np.float64))  # [T, C]
        probabilities = per_step.mean(0) if card.sequence_output == "mean" else per_step[-1]
        return tuple(Candidate(int(i), card.labels[i], float(probabilities[i])) for i in np.argsort(-probabilities))

    def _check_call(self, model: Model, call: str) -> None:
        if call not in model.card.calls:
            card = model.card
            raise FailedPrecondition(
                f"model {card.name!r} ({card.task}) does not support {call}: it supports {', '.join(card.calls)}"
            )

    def _predictions(self, model: Model, tokens: list[int], texts: list[str], logits, top_k: int) -> tuple[StepPrediction, ...]:
        """logits [T, outputs] → each step's input (and the text it completes) and its top-k outputs, named as
        tokens or as labels."""
        ids, probs = top_tokens(logits, top_k)  # each [T, k]
        tokenizer, labels = model.tokenizer, model.card.labels

        def name(output: int) -> str:
            return labels[output] if labels else token_text(tokenizer, output)

        return tuple(
            StepPrediction(
                token,
                token_text(tokenizer, token),
                tuple(Candidate(int(i), name(int(i)), float(p)) for i, p in zip(row_ids, row_probs)),
                text,
            )
            for token, text, row_ids, row_probs in zip(tokens, texts, ids, probs)
        )

    def _input_tokens(self, model: Model, text: str, tokens: tuple[int, ...]) -> list[int]:
        if text and tokens:
            raise InvalidArgument("text", "send text or tokens in one message, not both")
        return self._encode(model, text, "text") if text else self._check_ids(model, tokens)

    def _top_k(self, model: Model, asked: int, field_name: str) -> int:
        top_k = asked or min(DEFAULT_STREAM_TOP_K, model.card.output_size)
        if top_k > model.card.output_size:
            raise InvalidArgument(field_name, f"{top_k} is more than the {model.card.output_size} outputs of the model")
        return top_k

    def _encode(self, model: Model, text: str, field_name: str) -> list[int]:
        try:
            tokens = model.tokenizer.encode(text)
        except UnknownText as err:
            raise InvalidArgument(field_name, f"model {model.card.name!r} cannot encode it: {err}") from None
        self._check_length(len(tokens), field_name)
        return tokens

    def _check_ids(self, model: Model, tokens: tuple[int, ...], vocab: int | None = None) -> list[int]:
        self._check_length(len(tokens), "tokens")
        vocab = vocab or model.card.text_vocab_size
        for position, token in enumerate(tokens):
            if not 0 <= token < vocab:
                raise InvalidArgument(f"tokens[{position}]", f"{token} is outside the vocabulary [0, {vocab})")
        return list(tokens)

    def _check_length(self, count: int, field_name: str) -> None:
        limit = self._config.max_input_tokens
        if count > limit:
            raise ResourceExhausted(f"{field_name}: {count} tokens is over this server's limit of {limit} per message")

    def _sampling(self, model: Model, asked: SamplingRequest) -> SamplingParams:
        defaults = model.card.sampling
        params = SamplingParams(
            temperature=defaults.temperature if asked.temperature is None else asked.temperature,
            top_k=defaults.top_k if asked.top_k is None else asked.top_k,
            top_p=defaults.top_p if asked.top_p is None else asked.top_p,
            seed=secrets.randbits(63) if asked.seed is None else asked.seed,
            max_tokens=defaults.max_tokens if asked.max_tokens is None else asked.max_tokens,
            stop=asked.stop,
        )
        if not (math.isfinite(params.temperature) and 0.0 <= params.temperature <= MAX_TEMPERATURE):
            raise InvalidArgument("sampling.temperature", f"{params.temperature} is not in [0, {MAX_TEMPERATURE:g}] (0 is greedy)")
        if not 0 <= params.top_k <= model.card.vocab_size:
            raise InvalidArgument("sampling.top_k", f"{params.top_k} is not in [0, {model.card.vocab_size}] (0 is off)")
        if not (math.isfinite(params.top_p) and 0.0 < params.top_p <= 1.0):
            raise InvalidArgument("sampling.top_p", f"{params.top_p} is not in (0, 1] (1 is off)")
        if not 1 <= params.max_tokens <= self._config.max_new_tokens:
            raise InvalidArgument("sampling.max_tokens", f"{params.max_tokens} is not in [1, {self._config.max_new_tokens}]")
        if len(params.stop) > MAX_STOP_STRINGS or any(not s or len(s) > MAX_STOP_CHARS for s in params.stop):
            raise InvalidArgument(
                "sampling.stop", f"at most {MAX_STOP_STRINGS} non-empty strings of at most {MAX_STOP_CHARS} characters each"
            )
        return params
