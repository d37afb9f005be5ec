"""What the server does with text, free of gRPC: generate it, consume it streamed step by step, read it whole.

The API layer resolves the model a request names, converts protobuf to the request types (server/requests.py)
and the results back; everything between is request → session → engine → runtime. Tensor requests (KServe) are
in server/tensors.py, the checks of what a request asks in server/inputs.py.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import numpy as np

from rnnserve.server import forecasts
from rnnserve.server.errors import FailedPrecondition, InvalidArgument, ServeError
from rnnserve.server.generation import TextStream
from rnnserve.server.inputs import Inputs, check_call, cut
from rnnserve.server.predictions import classes, step_predictions, value_classes
from rnnserve.server.repository import Model
from rnnserve.server.requests import (
    Chunk,
    ChunkResult,
    GeneratedPiece,
    GenerateRequest,
    InferRequest,
    InferResult,
    RowsResult,
    StreamStart,
    TensorInput,
)
from rnnserve.server.sessions import Session, SessionRegistry
from rnnserve.text import IncrementalDecoder


class StreamSession:
    """An open stream's session, and what consumes each of its chunks."""

    def __init__(self, service: InferenceService, session: Session, top_k: int, score: bool = False):
        self._service, self.session, self._top_k, self._score = service, session, top_k, score

    async def __call__(self, chunk: Chunk) -> ChunkResult:
        return await self._service._consume(self.session, chunk, self._top_k, self._score)


class InferenceService:
    def __init__(self, sessions: SessionRegistry, inputs: Inputs):
        self.sessions = sessions
        self._inputs = inputs

    async def generate(self, model: Model, request: GenerateRequest) -> AsyncIterator[GeneratedPiece]:
        """Consumes the prompt in one runtime call (after the encoder, for a model that has one), then
        samples one token per step. With a session id, it continues that named session (or starts it)."""
        card, inputs = model.card, self._inputs
        if not card.generates:
            raise FailedPrecondition(
                f"model {card.name!r} ({card.task}) does not generate text: it supports {', '.join(card.calls)}"
            )
        if request.session_id and card.encoder is not None and card.encoder.input == "source":
            raise InvalidArgument(
                "session_id", f"model {card.name!r} ({card.task}) starts each output from its source: a session continues a language model's text"
            )
        params = inputs.sampling(model, request.sampling)
        prompt = inputs.encode(model, request.prompt, "prompt")
        async with self.sessions.attach(model, request.session_id, resume=bool(request.session_id), create=True) as session:
            continued = session.position > 0
            if continued and request.label:
                raise InvalidArgument("label", f"{session.described} goes on as the kind of text it was started with: send no label")
            if continued and session.pending:
                raise FailedPrecondition(f"{session.described} holds part of a character its stream sent: send the rest first")
            encoder_inputs, source_tokens = ({}, ()) if continued else inputs.encoder_inputs(model, request.label, request.source)
            if card.bos is not None and not continued:
                prompt = [card.bos, *prompt]
            if not prompt:
                raise InvalidArgument("prompt", "must not be empty: the model needs at least one character to continue")
            before = await model.batcher.read_state(session.slot) if session.kind == "named" else None
            if encoder_inputs:
                await session.encode(encoder_inputs)
            # the engine steps and samples the generation; here its tokens become text, as fast as the client
            # takes them: tokens written while a piece is being sent go out together in the next one
            generation = model.batcher.generate(
                session.slot, prompt, params, card.eos, card.bos, extra_outputs=bool(card.extra_outputs)  # never writes <bos>
            )
            text = TextStream(model.tokenizer, card.eos, params, len(prompt), source_tokens)
            answered, finish = [], ""
            try:
                while not text.finished:
                    piece = text.piece(*await model.batcher.take(generation))
                    if piece is not None:
                        answered += piece.token_ids
                        finish = piece.finish_reason
                        yield piece
            finally:
                generation.stopped = True
                if before is not None:
                    await asyncio.shield(asyncio.ensure_future(self._kept(session, before, prompt, answered, finish)))

    async def _kept(self, session: Session, before: dict[str, np.ndarray], prompt: list[int], answered: list[int], finish: str) -> None:
        """A named session after a generation holds the prompt and every token the answer named, exactly: the
        engine stops by itself at the end token (stepped all but it) and at max_tokens (all but the last, stepped
        here); past a stop string, or a call that failed, it may have run ahead, so the state before comes back and
        what was answered is stepped again in one call (nothing, for a call that failed)."""
        model = session.model
        if finish == "length":
            await model.batcher.step(session.slot, answered[-1:])
        elif finish != "end":
            await model.batcher.write_state(session.slot, before)
            if finish == "stop":
                await model.batcher.step(session.slot, [*prompt, *answered])
        if finish:
            session.stepped(len(prompt) + len(answered))
        session.last_log_probs = None  # a scoring stream that resumes it starts its scores afresh
        self.sessions.answered(session)

    @asynccontextmanager
    async def open_stream(self, model: Model, start: StreamStart):
        """A session for one bidirectional stream, and the function that consumes each chunk."""
        if model.card.encoder is not None:
            check_call(model, "Stream")
        if not model.card.streaming:
            raise FailedPrecondition(
                f"model {model.card.name!r} cannot stream per step (it needs the whole input at once): "
                "send the whole input in one Infer call instead"
            )
        top_k = 0 if model.card.input.values else self._inputs.top_k(model, start.top_k, "start.top_k")
        if start.score and (model.card.input.values or model.card.labels or not model.card.generates):
            raise InvalidArgument(
                "start.score", f"scores the text a language model reads; model {model.card.name!r} ({model.card.task}) does not predict its input"
            )
        if start.acknowledged and not start.resume:
            raise InvalidArgument("start.acknowledged", "is the position a resumed stream continues from: set resume too")
        async with self.sessions.attach(model, start.session_id, start.resume) as session:
            session.replay_until = start.acknowledged  # the chunks up to there are ones the client sends again
            yield StreamSession(self, session, top_k, start.score)

    async def _consume(self, session: Session, chunk: Chunk, top_k: int, score: bool = False) -> ChunkResult:
        model = session.model
        if model.card.input.values:
            return await self._consume_values(session, chunk)
        self._inputs.values(model, chunk.values)  # refused: this model reads tokens
        if chunk.audio is not None:
            raise InvalidArgument("audio", f"model {model.card.name!r} reads tokens: send text or tokens")
        tokens = self._inputs.tokens(model, chunk.text, chunk.tokens)
        behind = max(0, session.replay_until - session.position)  # a resumed session's lag behind what its client had
        if chunk.reset:
            session.reset()
        if not tokens:
            await self.sessions.confirm(session)
            self.sessions.answered(session)
            return ChunkResult(session.id, session.position, behind=behind)
        result = await session.step(tokens, top_k)
        session.decoder = session.decoder or IncrementalDecoder(model.tokenizer)
        logprobs = scored(session, tokens, result.outputs[0]) if score else None
        await self.sessions.confirm(session)  # with a state store: still this server's to answer
        self.sessions.answered(session)  # a named session's new state goes to the state store, if there is one
        return ChunkResult(
            session.id, session.position, step_predictions(model, tokens, session.decoder, result, logprobs),
            classes(model, result.outputs[0]), behind,
        )

    def _checked_values(self, session: Session, chunk: Chunk) -> np.ndarray:
        """A chunk's values [T, *step], or an audio chunk's samples (not yet cut into steps), checked."""
        model = session.model
        self._inputs.tokens(model, chunk.text, chunk.tokens)  # refused: this model takes values
        if chunk.audio is None:
            return self._inputs.values(model, chunk.values)
        if chunk.values is not None:
            raise InvalidArgument("audio", "send values or audio in one message, not both")
        return self._inputs.audio(model, chunk.audio)

    @staticmethod
    def _steps(session: Session, chunk: Chunk, values: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """(the steps to run, the samples to keep waiting after them), after a reset the chunk asks for."""
        if chunk.reset:
            session.reset()
        if chunk.audio is None:
            return values, session.waiting
        return cut(values, session.waiting, session.model.card.input.step[0])

    async def _consume_values(self, session: Session, chunk: Chunk) -> ChunkResult:
        """A message of a model that takes values: its steps, answered with every output of every step (the way a
        multiplexed message's chunks are, as one of them)."""
        if chunk.forecast is not None:  # checked before a step is taken; the steps it needs are checked with the chunk
            ask = forecasts.checked(session.model, chunk.forecast, 1 if chunk.audio is not None else _steps_sent(chunk))
        (result,) = await self.consume_values_together([(session, chunk)])
        if isinstance(result, ServeError):
            raise result
        if chunk.forecast is None:
            return result
        ahead = await forecasts.look_ahead(session, result.outputs, ask)
        return dataclasses.replace(result, forecast=ahead, forecast_paths=ask.paths)

    async def consume_values_together(self, items: list[tuple[Session, Chunk]]) -> list[ChunkResult | ServeError]:
        """Chunks of many sessions of models that take values (a multiplexed message's, one chunk a session): each
        checked alone (plain values of one shape all at once), all stepped together (one hand-over per model, however
        many sessions), each answered alone; a chunk that fails fails alone."""
        results: list[ChunkResult | ServeError | None] = [None] * len(items)
        by_model: dict[int, list[tuple[int, Session, np.ndarray, int]]] = {}  # id(model) → its chunks
        plain = self._plain_values(items) if len(items) > 1 else []  # a lone chunk (a Stream's) is read as any other
        for index, session, values in plain:
            by_model.setdefault(id(session.model), []).append((index, session, values, max(0, session.replay_until - session.position)))
        read = {index for index, _, _ in plain}
        for index, (session, chunk) in enumerate(items):
            if index in read:
                continue
            try:
                values = self._checked_values(session, chunk)
            except ServeError as err:
                results[index] = err
                continue
            behind = max(0, session.replay_until - session.position)
            values, waiting = self._steps(session, chunk, values)
            session.waiting = waiting
            by_model.setdefault(id(session.model), []).append((index, session, values, behind))

        async def step(rows: list[tuple[int, Session, np.ndarray, int]]) -> None:
            model = rows[0][1].model
            stepping = [row for row in rows if len(row[2])]
            try:
                outputs = await model.batcher.step_many([row[1].slot for row in stepping], [row[2] for row in stepping]) if stepping else []
            except ServeError as err:
                for row in stepping:
                    results[row[0]] = err
                return
            names = model.card.outputs
            for (index, _, _, _), result in zip(stepping, outputs):
                results[index] = tuple(zip(names, result.outputs))
            errors = await self._stepped_and_confirmed([row[1] for row in rows], [len(row[2]) for row in rows])
            for (index, session, _, behind), error in zip(rows, errors):
                answered = results[index] or ()
                results[index] = error or ChunkResult(
                    session.id, session.position, classes=value_classes(model, answered), behind=behind, outputs=answered
                )

        if len(by_model) == 1:  # the usual case (a Stream's chunk, a message of one model): no task to make
            await step(next(iter(by_model.values())))
        else:
            await asyncio.gather(*(step(rows) for rows in by_model.values()))
        return results

    async def consume_rows(self, sessions: list[Session | ServeError], tensor: TensorInput) -> RowsResult:
        """A multiplexed message's rows: row i of `tensor` [N, T, *step] is the steps of sessions[i] (or the error that
        session already has), all of one model, stepped together in one hand-over; a row that fails fails alone."""
        errors: list[Exception | None] = [s if isinstance(s, ServeError) else None for s in sessions]
        live = [s for s in sessions if not isinstance(s, ServeError)]
        if not live:
            return RowsResult([0] * len(sessions), errors, [])
        model = live[0].model
        for i, session in enumerate(sessions):
            if errors[i] is None and session.model is not model:
                errors[i] = InvalidArgument(f"rows.session_ids[{i}]", f"session {session.id!r} is of model {session.model.card.name!r}, "
                                            f"the rows' first of {model.card.name!r}: one model's sessions a message (send it as a chunk)")
        try:
            values, finite = self._inputs.rows(model, tensor, len(sessions))
        except ServeError as err:
            return RowsResult([0] * len(sessions), [err] * len(sessions), [])
        for i in np.flatnonzero(~finite):
            errors[i] = errors[i] or InvalidArgument(f"rows.values[{i}]", "holds NaN or infinity: every value must be a finite number")
        ok = [i for i, error in enumerate(errors) if error is None]
        stepping = [sessions[i] for i in ok]
        steps = values.shape[1]
        try:
            outputs = await model.batcher.step_many([s.slot for s in stepping], values if len(ok) == len(sessions) else values[ok]) if ok and steps else []
        except ServeError as err:
            return RowsResult([0] * len(sessions), [error or err for error in errors], [])
        for i, error in zip(ok, await self._stepped_and_confirmed(stepping, [steps] * len(stepping))):
            errors[i] = error
        positions = [0 if errors[i] is not None else s.position for i, s in enumerate(sessions)]
        answered = [(i, result) for i, result in zip(ok, outputs) if errors[i] is None]
        arrays = [np.zeros((len(sessions), *first.shape), first.dtype) for first in outputs[0].outputs] if outputs else []
        for k, array in enumerate(arrays):
            if answered:
                array[[i for i, _ in answered]] = np.stack([result.outputs[k] for _, result in answered])
        return RowsResult(positions, errors, list(zip(model.card.outputs, arrays)))

    async def _stepped_and_confirmed(self, sessions: list[Session], steps: list[int]) -> list[ServeError | None]:
        """After sessions stepped together (`steps` each): their positions move on, each is confirmed still this
        server's, and those that are have answered (their state goes to the store); each one's refusal, or None."""
        for session, count in zip(sessions, steps):
            if count:
                session.stepped(count)
        errors = await self.sessions.confirm_all(sessions)
        for session, error in zip(sessions, errors):
            if error is None:
                self.sessions.answered(session)
        return errors

    def _plain_values(self, items: list[tuple[Session, Chunk]]) -> list[tuple[int, Session, np.ndarray]]:
        """(index, session, steps) of the chunks that are values alone (no reset, audio or text), of one shape and
        model, read and checked together (the rest are read one by one, and a bad one says what is wrong with it)."""
        plain = [i for i, (s, c) in enumerate(items) if c.values is not None and c.audio is None and not (c.reset or c.text or c.tokens)]
        by_model: dict[int, list[int]] = {}
        for i in plain:
            by_model.setdefault(id(items[i][0].model), []).append(i)
        read = []
        for indices in by_model.values():
            passed, values = self._inputs.values_together(items[indices[0]][0].model, [items[i][1].values for i in indices])
            read += [(indices[j], items[indices[j]][0], values[k]) for k, j in enumerate(passed)]
        return read

    async def infer(self, model: Model, request: InferRequest) -> InferResult:
        """The whole input in one call from the initial state, on a session of its own."""
        check_call(model, "Infer")
        top_k = self._inputs.top_k(model, request.top_k, "top_k")
        tokens = self._inputs.tokens(model, request.text, request.tokens)
        if not tokens:
            raise InvalidArgument("text", "the input is empty")
        async with self.sessions.attach(model) as session:
            result = await session.step(tokens, top_k)
        predictions = step_predictions(model, tokens, IncrementalDecoder(model.tokenizer), result)
        return InferResult(predictions, classes(model, result.outputs[0]))

    def close_session(self, session_id: str) -> None:
        self.sessions.close(session_id)


def scored(session: Session, tokens: list[int], logits: np.ndarray) -> list[float | None]:
    """Each token's log-probability from the outputs of the step before it: this chunk's, or the session's last
    (kept for the next chunk; none after a reset, or for a session new or resumed here)."""
    shifted = logits.astype(np.float64)
    log_probs = shifted - shifted.max(axis=-1, keepdims=True)
    log_probs -= np.log(np.exp(log_probs).sum(axis=-1, keepdims=True))
    before = session.last_log_probs
    session.last_log_probs = log_probs[-1]
    return [None if before is None else float(before[tokens[0]])] + [float(log_probs[i - 1, t]) for i, t in enumerate(tokens[1:], 1)]


def _steps_sent(chunk: Chunk) -> int:
    """The steps a chunk's values tensor says it holds ([T, *step]), before it is checked."""
    return chunk.values.shape[0] if chunk.values is not None and chunk.values.shape else 0
