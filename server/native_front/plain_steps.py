"""The native front end's plain steps: ModelStreamInfer's common request — a sequence's step of a few token ids, in the
form Triton's clients send it (front.cc's kserve_wire.h says which) — served a whole take at a time, with no protobuf
message, task or future per request. front.cc reads each into a fixed-size record; here the records of one route
(model name, version, output asked for) and length are checked, their sequences opened by the sequence rules
(TensorService.sequence_steps), run as one job of rows, and answered by front.cc from the engine's output arrays in
one call. Answers, errors, counts and statistics are those the servicer gives on --port (a test compares them).

A step this path does not serve — a route whose model does not exist or is not a token model that keeps sequences,
a server with a state store, a token outside the vocabulary, more tokens than the limits allow — goes back to
front.cc (`defer`), which hands its bytes to the servicer as any other request: its answer or refusal is the
servicer's, word for word."""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from rnnserve.server.api.access import looked_up
from rnnserve.server.api.accounting import count, count_together
from rnnserve.server.api.kserve import API, stream_refusal
from rnnserve.server.api.kserve_tensors import answer_bytes_per_step
from rnnserve.server.config import ServerConfig
from rnnserve.server.errors import ServeError
from rnnserve.server.metrics import Metrics
from rnnserve.server.repository import Model, Repository
from rnnserve.server.tensors import TensorService

METHOD = "ModelStreamInfer"
MAX_TOKENS = 16  # front.cc's wire::kMaxPlainTokens
MAX_OUTPUTS = 8  # the most outputs front.cc writes into one answer
STEP_RECORD = np.dtype([  # front.cc's StepRecord, field for field
    ("ticket", "<u8"), ("call", "<u8"), ("tokens", "<i8", (MAX_TOKENS,)), ("route", "<i4"), ("steps", "<i4"),
    ("start", "u1"), ("end", "u1"), ("unused", "V6"),
])


@dataclass(frozen=True, slots=True)
class Route:
    """How the plain steps naming one model, version and output are served."""

    model: Model
    outputs: tuple[int, ...]  # the engine's outputs each answer carries, in order
    max_steps: int  # the most tokens a step may have within --max-input-tokens and --max-message-bytes
    vocab: int


@dataclass(slots=True)
class Taken:
    """Plain steps of one route and length taken together: what their answers need, row by row."""

    tickets: list[int]
    calls: list[int]  # each row's call: the owner of the sequences it starts
    sequence_ids: list[str]
    began: float  # time.perf_counter() when they were taken

    def rows(self, rows: list[int]) -> Taken:
        """Those of these rows (all, mostly)."""
        if len(rows) == len(self.tickets):
            return self
        return Taken([self.tickets[r] for r in rows], [self.calls[r] for r in rows], [self.sequence_ids[r] for r in rows], self.began)


class PlainSteps:
    def __init__(self, repository: Repository, tensors: TensorService, config: ServerConfig, metrics: Metrics):
        self._repository, self._tensors, self._config, self._metrics = repository, tensors, config, metrics
        self._routes: dict[int, Route | None] = {}  # front.cc's route number → how it is served (None: deferred)

    @property
    def serves_any(self) -> bool:
        """False with a state store: its sessions are confirmed with the store request by request, so the servicer
        answers every request (front.cc then reads none as a plain step)."""
        return not self._tensors.sessions.store.keeps_sessions

    def take(self, front, records: np.ndarray, sequence_ids: list[str]) -> None:
        """A take's plain steps (`records` of STEP_RECORD, read before this returns, and each one's sequence id), by
        route and length. `front`: the NativeFront that answers them. Mostly a few rows a take, so plain lists: a
        numpy call costs more than a row."""
        began = time.perf_counter()
        groups: dict[tuple[int, int], list[tuple]] = {}  # (route, steps) → its rows' (ticket, call, sequence id, start, end, tokens)
        for sequence_id, (ticket, call, tokens, route_id, length, start, end, _) in zip(sequence_ids, records.tolist()):
            if not front.serving(call):
                continue  # the call has ended: nobody waits for its answer
            route = self._routes[route_id] if route_id in self._routes else self._route(front, route_id)
            tokens = tokens[:length].tolist()
            if route is None or length > route.max_steps or not all(0 <= token < route.vocab for token in tokens):
                front.defer(call, ticket)  # the servicer answers it, or names what is wrong, from its bytes
            else:
                groups.setdefault((route_id, length), []).append((ticket, call, sequence_id, start, end, tokens))
        for (route_id, length), rows in groups.items():
            tickets, calls, ids, starts, ends, tokens = (list(column) for column in zip(*rows))
            self._run(front, route_id, self._routes[route_id], Taken(tickets, calls, ids, began), starts, ends, np.array(tokens, np.int64))

    def _run(self, front, route_id: int, route: Route, taken: Taken, starts: list[int], ends: list[int], tokens: np.ndarray) -> None:
        """Steps of one route and length, tokens [R, T]: refusals answered now, the rest once the engine has run them."""

        def done(rows: list[int], outputs: list[np.ndarray] | None, positions: list[int], error: Exception | None) -> None:
            try:
                if error is None:
                    return self._answer(front, route_id, route, taken.rows(rows), outputs, positions, tokens.shape[1])
            except Exception as err:  # a fault of ours in answering: the rows get INTERNAL, the stream goes on
                error = err
            for row in rows:
                self._refuse(front, route.model, taken, row, error)

        refused = self._tensors.sequence_steps(route.model, taken.sequence_ids, starts, ends, taken.calls, tokens, done)
        for row, err in refused:
            self._refuse(front, route.model, taken, row, err)

    def _answer(self, front, route_id: int, route: Route, taken: Taken, outputs: list[np.ndarray], positions: list[int], steps: int) -> None:
        arrays = [np.ascontiguousarray(outputs[k], dtype=np.float32) for k in route.outputs]  # each [R, T, width]
        front.answer_steps(route_id, taken.calls, taken.tickets, positions, steps, arrays)
        route.model.metrics.plain_steps.inc(len(positions))
        count_together(self._metrics, route.model, API, METHOD, time.perf_counter() - taken.began, list(zip(taken.sequence_ids, positions)))

    def _refuse(self, front, model: Model, taken: Taken, row: int, err: Exception) -> None:
        """The row's error as the servicer answers it on the stream, counted under its status."""
        sequence_id = taken.sequence_ids[row]
        message, status = stream_refusal(err, f"{METHOD} plain step of sequence {sequence_id}")
        count(self._metrics, model, API, METHOD, status, time.perf_counter() - taken.began, sequence_id)
        front.answer_error(taken.calls[row], taken.tickets[row], message)

    def _route(self, front, route_id: int) -> Route | None:
        if route_id not in self._routes:
            name, version, output = front.route(route_id)
            route = self._routes[route_id] = self._served(name, version, output)
            if route is not None:
                card = route.model.card
                names = [card.outputs[k] for k in route.outputs]
                front.route_answers(route_id, card.name, card.version, names, [card.output_widths[n] for n in names])
        return self._routes[route_id]

    def _served(self, name: str, version: str, output: str | None) -> Route | None:
        """The route of the plain steps naming this model, version and output (None: every output), or None where
        the servicer answers them."""
        try:
            model = looked_up(self._repository, name, version)
        except ServeError:
            return None
        card = model.card
        if not card.streaming or card.encoder is not None or card.input.values:
            return None
        widths = card.output_widths
        wanted = list(widths) if output is None else [output]
        if len(wanted) > MAX_OUTPUTS or any(n not in widths or n not in card.outputs for n in wanted):
            return None
        per_step = answer_bytes_per_step(card, [(n, 0) for n in wanted])
        max_steps = min(MAX_TOKENS, self._config.max_input_tokens, self._config.max_message_bytes // per_step)
        if max_steps < 1:
            return None
        return Route(model, tuple(card.outputs.index(n) for n in wanted), max_steps, card.vocab_size)
