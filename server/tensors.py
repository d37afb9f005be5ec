"""Tensor requests (the KServe API), free of protobuf: a batch of rows, each from the initial state on a session of
its own (batched together by the engine), or a sequence's one row continuing its state."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import numpy as np

from rnnserve.server.batcher import MAX_STEPS_NOW
from rnnserve.server.errors import FailedPrecondition, InvalidArgument, ResourceExhausted, ServeError
from rnnserve.server.inputs import Inputs, not_finite_at
from rnnserve.server.repository import Model
from rnnserve.server.requests import TensorRequest, TensorResult
from rnnserve.server.sessions import Session, SessionRegistry


class TensorService:
    def __init__(self, sessions: SessionRegistry, inputs: Inputs):
        self.sessions = sessions
        self._inputs = inputs
        self._now: dict[int, list] = {}  # step_now's steps of this turn of the event loop, by id(model)

    async def run(self, model: Model, request: TensorRequest) -> TensorResult:
        """A model with an encoder starts each row's state from its label or source."""
        card, sequence = model.card, request.sequence
        rows = self._checked_rows(model, request)
        starts = self._starts(model, request, len(rows))
        if sequence.id:
            session = await self.sessions.open_sequence(model, sequence.id, sequence.start, request.owner, sequence.position)
            try:
                results = [await _run_row(session, rows[0], starts[0])]
                await self.sessions.confirm(session)  # with a state store: still this server's to answer
                if not sequence.end:
                    self.sessions.answered(session)  # its new state goes to the state store, if there is one
            finally:
                self.sessions.close_sequence(session, sequence.end)
            return TensorResult(model, _stacked(model, results), session.position)
        free = model.runtime.capacity - model.runtime.slots_in_use
        if len(rows) > free:  # refused before any row takes a slot
            raise ResourceExhausted(
                f"inputs: {len(rows)} rows need a session slot each, and model {card.name!r} has {free} of "
                f"{model.runtime.capacity} free now (--max-sessions): send fewer rows per request"
            )
        try:
            async with asyncio.TaskGroup() as group:  # one row failing cancels the others, and their slots are freed
                tasks = [group.create_task(self._run_alone(model, row, start)) for row, start in zip(rows, starts)]
        except* Exception as failed:
            raise failed.exceptions[0] from None
        return TensorResult(model, _stacked(model, [task.result() for task in tasks]))

    def step_now(self, model: Model, request: TensorRequest, done: Callable[[TensorResult | ServeError], None]) -> bool:
        """Takes a sequence's step that need not wait before the engine — no state store to ask, no encoder to run,
        a step of one to MAX_STEPS_NOW inputs — and calls `done` with its result or error once it has run; False for
        any other request, which `run` answers. The steps taken in one turn of the event loop, of every stream, are
        queued for the engine together and answered together: no task, future or hand-over per request (64
        sequences multiplexed on one stream: CPU a step, see docs/performance.md). Errors before the step raise."""
        sequence, steps = request.sequence, request.tokens.shape[1] if request.tokens is not None else 0
        if not sequence.id or not 0 < steps <= MAX_STEPS_NOW or self.sessions.store.keeps_sessions or model.card.encoder:
            return False
        row = self._checked_rows(model, request)[0]
        session = self.sessions.open_sequence_now(model, sequence.id, sequence.start, request.owner, sequence.position)
        steps_of_model = self._now.get(id(model))
        if steps_of_model is None:
            steps_of_model = self._now[id(model)] = []
            asyncio.get_running_loop().call_soon(self._queue_now, model)
        steps_of_model.append((session, row, sequence.end, done))
        return True

    def sequence_steps(self, model: Model, sequence_ids: list[str], starts: list[bool], ends: list[bool], owners: list,
                       tokens: np.ndarray, done: Callable[[list[int], list[np.ndarray] | None, list[int], Exception | None], None]
                       ) -> list[tuple[int, ServeError]]:
        """Steps of many sequences at once, token ids [B, T] already checked against the model and the limits (the
        native front end's plain steps): each row's sequence opened by the sequence rules, the rows that may go on run
        as one job, and `done(rows, outputs, positions, error)` called once they have: the rows that ran, their outputs
        (each [R, T, ...]) and their sequences' positions, or the error that failed them all. Returns the rows refused,
        each with its error."""
        sessions, refused = self.sessions.open_sequences_now(model, sequence_ids, starts, owners)
        rows = list(range(len(sessions)))
        if refused:
            rows = [row for row in rows if sessions[row] is not None]
            if not rows:
                return refused
            sessions, ends, tokens = [sessions[row] for row in rows], [ends[row] for row in rows], tokens[rows]
        slots = [session.slot for session in sessions]
        steps = tokens.shape[1]

        def finished(outputs: list[np.ndarray] | None, error: Exception | None) -> None:
            if error is not None:
                self.sessions.close_sequences(sessions, ends, 0)
                return done(rows, None, [], error)
            done(rows, outputs, self.sessions.close_sequences(sessions, ends, steps), None)

        def stacked(future: asyncio.Future) -> None:  # a StepResult a row
            if (error := future.exception()) is not None:
                return finished(None, error)
            finished([np.stack(parts) for parts in zip(*(result.outputs for result in future.result()))], None)

        if steps == 1:
            model.batcher.step_rows(slots, tokens, finished)  # run at once, it is answered before this returns
        else:
            ran = model.batcher.steps_together(slots, list(tokens))
            stacked(ran) if ran.done() else ran.add_done_callback(stacked)
        return refused

    def _queue_now(self, model: Model) -> None:
        taken = self._now.pop(id(model))
        ran = model.batcher.steps_together([session.slot for session, *_ in taken], [row for _, row, *_ in taken])
        ran.add_done_callback(lambda future: self._answer_now(model, taken, future))

    def _answer_now(self, model: Model, taken: list, future: asyncio.Future) -> None:
        """As `run` answers a sequence's request: the session's position moves on, the sequence ends or waits."""
        error = future.exception()
        results = future.result() if error is None else [None] * len(taken)
        for (session, row, end, done), result in zip(taken, results):
            if error is None:
                session.stepped(len(row))
                if not end:
                    self.sessions.answered(session)
            self.sessions.close_sequence(session, end)
            done(error or TensorResult(model, _stacked(model, [result.outputs]), session.position))

    def _checked_rows(self, model: Model, request: TensorRequest) -> list[list[int]] | list[np.ndarray]:
        """The request's rows, once the model, the request's size and its inputs have passed every check."""
        card, sequence = model.card, request.sequence
        if sequence.id and not card.streaming:
            raise FailedPrecondition(
                f"model {card.name!r} needs the whole input at once, so it keeps no sequences: send each input "
                "in one ModelInfer without sequence parameters"
            )
        for given in (request.tokens, request.values):  # before reading a token of it
            if given is not None:
                self._inputs.check_request_size(*given.shape[:2], request.answer_bytes_per_step)
        rows = self._rows(model, request)
        if sequence.id and len(rows) != 1:
            raise InvalidArgument("inputs", f"a sequence's request carries one row (batch size 1), not {len(rows)}")
        self._inputs.check_request_size(len(rows), len(rows[0]), request.answer_bytes_per_step)  # texts, as encoded
        return rows

    async def _run_alone(self, model: Model, row: list[int] | np.ndarray, start: dict[str, np.ndarray]) -> list[np.ndarray] | None:
        async with self.sessions.attach(model) as session:
            return await _run_row(session, row, start)

    def _rows(self, model: Model, request: TensorRequest) -> list[list[int]] | list[np.ndarray]:
        if model.card.input.values:
            return self._value_rows(model, request.values)
        if (request.tokens is None) == (not request.texts):
            raise InvalidArgument("inputs", "send exactly one of the inputs tokens (INT64) or text (BYTES)")
        if request.tokens is not None:
            if request.tokens.shape[0] == 0:
                raise InvalidArgument("tokens", "the batch is empty: send at least one row")
            # every id the graph reads, its start token included: a decoder's first input is <bos>
            return [self._inputs.check_ids(model, tuple(row), model.card.vocab_size) for row in request.tokens.tolist()]
        rows = [self._inputs.encode(model, text, "text") for text in request.texts]
        lengths = sorted({len(row) for row in rows})
        if len(lengths) > 1:
            raise InvalidArgument(
                "text", f"the rows encode to different numbers of tokens ({', '.join(map(str, lengths))}); the outputs of "
                "one request are one tensor, so send rows of different lengths in separate requests"
            )
        return rows

    def _value_rows(self, model: Model, values: np.ndarray | None) -> list[np.ndarray]:
        name = model.card.input.name
        if values is None:
            raise InvalidArgument("inputs", f"model {model.card.name!r} takes {name!r} (FP32 [batch, steps, {', '.join(map(str, model.card.input.step))}])")
        if values.shape[0] == 0:
            raise InvalidArgument(f"inputs[{name}]", "the batch is empty: send at least one row")
        if (at := not_finite_at(values)) is not None:
            row, step = at[:2]
            raise InvalidArgument(f"inputs[{name}]", f"row {row}, step {step} holds NaN or infinity: every value must be a finite number")
        return list(values.astype(np.float32))

    def _starts(self, model: Model, request: TensorRequest, rows: int) -> list[dict[str, np.ndarray]]:
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
        return [self._inputs.encoder_inputs(model, **{encoder.input: start})[0] for start in request.starts]


async def _run_row(session: Session, row: list[int] | np.ndarray, start: dict[str, np.ndarray]) -> list[np.ndarray] | None:
    if start:
        await session.encode(start)
    return (await session.step(row)).outputs if len(row) else None


def _stacked(model: Model, results: list[list[np.ndarray] | None]) -> dict[str, np.ndarray]:
    """Each output over the batch's rows; a row of zero steps (None) has empty outputs of the right width."""
    card = model.card
    names = card.outputs
    if len(results) == 1 and results[0] is not None:  # a sequence's one row
        return {name: results[0][i][None] for i, name in enumerate(names)}
    widths = card.output_widths
    return {
        name: np.stack([np.zeros((0, widths[name]), np.float32) if r is None else r[i] for r in results])
        for i, name in enumerate(names)
    }
