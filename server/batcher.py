"""The engine: continuous batching of all of a model's sessions, on a thread of its own, so the event loop only
serves requests while onnxruntime works.

Requests queue steps (a chunk, a prompt, a generation's first step), encodings, state reads and writes (snapshots
and restores) and frees. The engine thread takes
every step that is ready (up to `max_batch`, waiting `max_queue_delay_ms` for more, or without it, up to 1 or 3 ms for
the sessions that are stepping when there are 8 or more: company()), groups them by
length T, and runs each group as one onnxruntime call over a gather of the sessions' state rows. Generations stay
with it: after each call it samples the next token of every generating row at once (each row with its own
settings and seed) and steps them again, so a generation costs the event loop nothing per step but taking its
tokens. Results reach the event loop in one hand-over per call. Each step resolves exactly once, with its own
outputs or its own error.

The engine owns every slot's state: sessions allocate, reset and free slots through it, and the state slab is read
and written only on its thread. A slot that is allocated or reset starts its next step from the initial state (or
from what its encoder writes). Work is taken in the order it was queued, so a free runs after every step queued
before it, and a slot goes back to the free list only then: nothing can write into a slot that a new session owns.

onnxruntime's errors fail only the steps of their call. A fault in the engine's own code (on its thread, or in a lone
step it runs on the event loop) stops it for good, since its state can no longer be trusted: what it had taken fails
with INTERNAL, everything queued then or later with UNAVAILABLE, and the server's health turns NOT_SERVING
(`on_failure`), so that an orchestrator restarts it.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import queue
import threading
import time
from collections import defaultdict, deque

import numpy as np

from rnnserve.errors import one_line
from rnnserve.server.engine_jobs import (
    STOP,
    Encode,
    Fault,
    Free,
    Read,
    Resume,
    Rows,
    RowsDone,
    Step,
    StepResult,
    Together,
    Write,
    deliver,
    fail,
    fail_job,
    joined,
    settle,
    settle_all,
)
from rnnserve.server.errors import RuntimeFailure, Unavailable
from rnnserve.server.generation import Generation
from rnnserve.server.metrics import ModelMetrics
from rnnserve.server.pieces import Pieces
from rnnserve.server.runtime import Runtime
from rnnserve.server.sampling import SamplingParams, sample_rows, top_tokens

log = logging.getLogger(__name__)

MAX_UNREAD_TOKENS = 256  # a generation whose client has not taken this many tokens waits for it to catch up
MIN_CALL_ROWS = 16  # a call of fewer rows, split off a wide batch, costs more in the call than it gains at once
MAX_STEPS_NOW = 16  # the longest lone step run on the event loop when the engine is idle (a longer one holds it up)
OTHERS_WINDOW_S = 0.05  # a step asked this soon after another session's is not alone: it goes to the engine, to batch
COMPANY_WINDOW_S = 0.01  # the sessions stepped this recently are those whose next steps a batch may wait for
COMPANY_WAIT_S = 0.001  # the longest a batch waits for them (see company())
STREAMS_WAIT_S = 0.003  # ... when they are on many streams and about a batch's worth (see company())
COMPANY_ROWS = 64  # the most steps a batch waits for (onnxruntime's cost a row hardly falls beyond)
MIN_COMPANY = 8  # fewer sessions than this are not waited for
PR_SET_NAME = 15  # prctl(2): names the calling thread


class Batcher:
    def __init__(self, runtime: Runtime, name: str, metrics: ModelMetrics, max_batch: int = 64, max_queue_delay_ms: float = 0.0,
                 pieces: bool = True):
        """`pieces`: a long input may run in pieces (not for a model that reads its input whole, a bidirectional one)."""
        self._runtime = runtime
        self._metrics = metrics
        self._name = name
        self._max_batch = max(1, max_batch)
        self._max_queue_delay_s = max_queue_delay_ms / 1000.0
        self._dtype = np.dtype(runtime.card.input.dtype)
        self.pieces = Pieces() if pieces else None  # how a long input is split (None: it never is)
        self._queue: queue.SimpleQueue = queue.SimpleQueue()  # from the event loop to the engine thread
        self._fresh: set[int] = set()  # slots whose next step starts from the initial state
        self._thread = threading.Thread(target=self._work, name=f"engine-{name}", daemon=True)
        self._engine_busy = threading.Lock()  # held by the engine thread but while it waits for work with none to do
        self._last_asked = (-1, 0.0)  # the slot of the last step asked for one at a time, and when
        self._loop: asyncio.AbstractEventLoop | None = None
        # told True on the engine thread as an onnxruntime call of steps begins, and False on the event loop once its
        # results are handed back (the native front end holds its plain steps meanwhile: they could not join the call)
        self.watcher = _ignored
        self.failure: Exception | None = None  # why the engine stopped for good, once it has: every job fails with it
        self.on_failure = _ignored  # told (on the event loop) the model's name once the engine has stopped for good
        # the engine thread's own
        self._generating: list[Generation] = []  # generations with a step to run
        self._waiting: dict[int, Generation] = {}  # slot → a generation waiting for its client to catch up
        self._reads: list[Read] = []  # state reads taken with the current batch, run after it
        self._held: deque[Step] = deque()  # steps taken but not yet run (after a read of their slot, or queued together)
        self._continuing: list[Step] = []  # long inputs part-way through: the next batch's first
        self._deferred: list[Read] = []  # reads of a slot whose step is part-way: they run once it is done
        self._stepped_at: dict[int, float] = {}  # slot → when its last step ran (time.perf_counter())
        self._stream_of: dict[int, object] = {}  # slot → the stream that started its sequence (absent: none)
        self._round: tuple[list[Step], list[Rows], list] = ([], [], [])  # taken this round: steps, blocks, its barrier
        self._holding = False  # the watcher was told a call began, and its end is not yet handed over
        metrics.watch(self._queue.qsize, lambda: runtime.slots_in_use, runtime.capacity, lambda: self.failure is None)

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._thread.start()

    # the event loop's side

    def allocate(self, stream: object = None) -> int:
        """A slot for a new session, at the initial state (RESOURCE_EXHAUSTED when none is free). `stream`: the
        stream whose sequence it is, if any (company() tells sequences multiplexed on one stream from many streams)."""
        slot = self._runtime.allocate()
        self._fresh.add(slot)
        if stream is None:
            self._stream_of.pop(slot, None)
        else:
            self._stream_of[slot] = stream
        return slot

    def reset(self, slot: int) -> None:
        """The slot's next step starts from the initial state again."""
        self._fresh.add(slot)

    async def step(self, slot: int, inputs: list[int] | np.ndarray, top_k: int = 0) -> StepResult:
        """The outputs for `inputs` (token ids, or values [T, *step]) continuing the slot's state, and with `top_k`,
        each step's k most probable."""
        result = self._loop.create_future()
        self._queue_or_run_now(Step(slot, np.asarray(inputs, dtype=self._dtype), time.perf_counter(), result, top_k))
        return await result

    async def step_many(self, slots: list[int], inputs: list[np.ndarray]) -> list[StepResult]:
        """The outputs of each slot's inputs, queued together (they batch together), in one future."""
        return await self.steps_together(slots, inputs)

    def steps_together(self, slots: list[int], inputs: list[np.ndarray]) -> asyncio.Future:
        """`step_many`'s future, for a caller that answers from its done callback rather than from a task."""
        together = Together(self._loop.create_future(), [None] * len(slots), len(slots))
        now = time.perf_counter()
        steps = [Step(slot, np.asarray(x, dtype=self._dtype), now, together=(together, i)) for i, (slot, x) in enumerate(zip(slots, inputs))]
        if len(steps) == 1:
            self._queue_or_run_now(steps[0])
        else:
            self._queue.put(steps)
        return together.future

    def step_rows(self, slots: list[int], inputs: np.ndarray, then: RowsDone) -> None:
        """One step of each slot, inputs [B, 1, *step], queued as one job; `then(outputs, error)` on the event loop
        once they have run, outputs each [B, 1, ...] (the native front end's plain steps: no job or result per row).
        A lone step run at once is answered before this returns, and before its call is counted. More rows than
        --max-batch go in parts."""
        if len(slots) > self._max_batch:
            step = self._max_batch
            for i, part in zip(range(0, len(slots), step), joined(then, -(-len(slots) // step))):
                self.step_rows(slots[i : i + step], inputs[i : i + step], part)
            return
        rows = Rows(slots, np.asarray(inputs, dtype=self._dtype), time.perf_counter(), then)
        if len(slots) == 1 and self._runs_now(slots[0], rows.queued, 1):
            return self._run_at_once([], 1, [rows])
        if len(slots) > 1:
            self._last_asked = (-1, rows.queued)  # many sessions step: the next lone step is not alone
        self._queue.put(rows)

    def _queue_or_run_now(self, job: Step) -> None:
        if self._runs_now(job.slot, job.queued, len(job.inputs)):
            self._run_at_once([job], len(job.inputs))
        else:
            self._queue.put(job)

    def _run_at_once(self, group: list[Step], steps: int, blocks: list[Rows] = ()) -> None:
        """A lone step that _runs_now granted, run on the event loop. Its call is counted, and the engine (held
        meanwhile) let go, on the loop's next turn: the task awaiting the step runs first, so its answer is on its way
        before the counting (a Stream's step, 30 µs sooner), and whatever its client sends next is read only after
        these callbacks, with the counts in. Until then the engine thread waits for the hold, as while the call ran."""
        try:
            self._run_group(group, steps, hand_over=_at_once, blocks=blocks)
            self._loop.call_soon(self._metrics.steps_at_once.inc)
        except Exception as err:  # a fault of the engine's own, as on its thread: it stops for good, and this step fails
            self._queue.put(Fault(err, group, list(blocks)))
        finally:
            self._loop.call_soon(self._engine_busy.release)

    def _runs_now(self, slot: int, queued: float, steps: int) -> bool:
        """Whether a lone short step runs at once on the event loop — its session's again, or the first in 50 ms, with
        nothing queued, no queue delay asked for and the engine idle (then the engine is held: the caller releases
        it). The engine thread, waiting for work, cannot touch the slab meanwhile, and nothing can be queued before it
        while the event loop runs it. It saves the two thread hand-overs (one stream, 2×512 LSTM: 12–19% more steps a
        second, 10–16% less server CPU a step). Any other step is queued for the engine, and batches: a step that
        follows another session's within 50 ms would have delayed that session's next (8 lock-step streams lost 7% of
        their steps a second to a 5 ms window)."""
        alone = slot == self._last_asked[0] or queued - self._last_asked[1] > OTHERS_WINDOW_S
        self._last_asked = (slot, queued)
        return (alone and not self._max_queue_delay_s and steps <= MAX_STEPS_NOW and self._queue.empty()
                and self._engine_busy.acquire(blocking=False))

    def generate(self, slot: int, prompt: list[int], params: SamplingParams, eos: int | None, banned: int | None,
                 extra_outputs: bool) -> Generation:
        """Starts a generation from `prompt` in the slot: the engine runs it until it ends or is stopped."""
        generation = Generation(slot, params, eos, banned, extra_outputs)
        self._queue.put(Step(slot, np.asarray(prompt, dtype=np.int64), time.perf_counter(), generation=generation))
        return generation

    async def take(self, generation: Generation) -> tuple[list[int], list[list[np.ndarray]]]:
        """Waits until the generation has written something, then takes all it has: (tokens, their extra outputs).
        Taking is what lets a generation that waited for its client go on."""
        while not generation.tokens and not generation.error:
            generation.ready.clear()
            await generation.ready.wait()
        if generation.error:
            raise generation.error
        tokens, extras = generation.tokens, generation.extras
        generation.tokens, generation.extras = [], []
        generation.taken += len(tokens)
        if generation.written - generation.taken + len(tokens) >= MAX_UNREAD_TOKENS:
            self._queue.put(Resume(generation))  # it may be waiting for this: wake the engine to look
        return tokens, extras

    async def encode(self, slot: int, inputs: dict[str, np.ndarray]) -> None:
        """Writes the slot's initial state with the model's encoder, in queue order on the engine thread. One call
        per request: encodings are not batched."""
        result = self._loop.create_future()
        self._queue.put(Encode(slot, inputs, result))
        await result

    async def read_state(self, slot: int) -> dict[str, np.ndarray]:
        """A copy of the slot's state after every step queued before this (a snapshot)."""
        result = self._loop.create_future()
        self._queue.put(Read(slot, result))
        return await result

    async def write_state(self, slot: int, values: dict[str, np.ndarray]) -> None:
        """Sets the slot's whole state (a restore), in queue order."""
        result = self._loop.create_future()
        self._queue.put(Write(slot, values, result))
        await result

    def free(self, slot: int) -> None:
        """The slot goes back to the free list once the work queued before this is done."""
        self._queue.put(Free(slot))

    async def close(self) -> None:
        if self._thread.is_alive():
            self._queue.put(STOP)
            await asyncio.to_thread(self._thread.join)
        self._runtime.close()

    def _hand_over(self, *args) -> None:
        """Runs `args[0](*args[1:])` on the event loop: the one way results leave the engine thread."""
        self._loop.call_soon_threadsafe(*args)

    # the engine thread's side

    def _work(self) -> None:
        _name_os_thread(self._thread.name)
        self._engine_busy.acquire()
        try:
            self._serve()
        except Exception as err:  # a fault of ours, not onnxruntime's (those fail their call's steps, in _run_group)
            self._stop_for_good(err)

    def _serve(self) -> None:
        while True:
            steps, blocks, barrier = self._take_work()
            if steps or blocks:
                self._run_round(steps, blocks)
            if self._reads:  # snapshots of the state these steps left, handed over together; not of a step part-way
                part_way = {job.slot for job in self._continuing}
                self._deferred = [read for read in self._reads if read.slot in part_way]
                if done := [read for read in self._reads if read.slot not in part_way]:
                    self._hand_over(settle_all, [self._state_result(read) for read in done])
            if barrier is STOP:
                return
            if isinstance(barrier, Fault):
                raise barrier.error
            if isinstance(barrier, Encode):
                self._run_encode(barrier)
            elif isinstance(barrier, Write):
                self._hand_over(settle, *self._state_result(barrier))
            elif isinstance(barrier, Free):
                self._waiting.pop(barrier.slot, None)
                self._hand_over(self._runtime.free, barrier.slot)

    def _stop_for_good(self, err: Exception) -> None:
        """Fails what the engine holds with INTERNAL, and from then on every job it is given with UNAVAILABLE (frees
        still free their slot), until the server stops. Holding the engine, so that no step runs on the event loop."""
        log.critical("model %s: the engine stopped on a fault of its own; the model serves nothing more until the server "
                     "restarts (health: NOT_SERVING)", self._name, exc_info=err)
        what = f"{type(err).__name__}: {one_line(err)}"
        self.failure = Unavailable(f"model {self._name} serves nothing more: its engine stopped on an internal error ({what}); "
                                   "restart the server (its health says NOT_SERVING), or retry on another replica")
        taken = RuntimeFailure(f"model {self._name}: its engine stopped on an internal error while this request was in its "
                               f"hands ({what}); the model serves nothing more until the server restarts")
        steps, blocks, barrier = self._round
        in_hand = [*steps, *blocks, *barrier, *self._held, *self._continuing, *self._reads, *self._deferred,
                   *self._generating, *self._waiting.values()]
        for job in in_hand:
            self._refuse(job, taken)
        if self._holding:  # the front end's held steps go on (to fail)
            self._hand_over(self.watcher, False)
        self._hand_over(self.on_failure, self._name)
        if any(job is STOP for job in in_hand):  # it failed on the server's stop: nothing more comes
            return
        while (job := self._queue.get()) is not STOP:
            self._refuse(job, self.failure)

    def _refuse(self, job, error: Exception) -> None:
        """A stopped engine's answer to a job: a free still frees its slot; anything else fails with `error`."""
        if isinstance(job, Free):
            self._hand_over(self._runtime.free, job.slot)
        else:
            self._hand_over(fail_job, job, error)

    def _take_work(self) -> tuple[list[Step], list[Rows], object]:
        """The steps ready now — every generating row's next step, then queued steps and blocks of rows in order — up
        to max_batch rows, stopping at a free, an encoding, a state write or the end, which runs after the steps before
        it. State reads (snapshots) do not stop it: they run after the batch, unless a later step is for a slot being
        read."""
        steps: list[Step] = []
        blocks: list[Rows] = []
        self._round = (steps, blocks, [])  # what a fault would leave unanswered (_stop_for_good)
        for slot, generation in list(self._waiting.items()):  # those whose client caught up go on
            if generation.stopped or generation.written - generation.taken < MAX_UNREAD_TOKENS:
                del self._waiting[slot]
                self._generating.append(generation)
        steps += [Step(g.slot, np.array([g.next_input], np.int64), 0.0, generation=g) for g in self._generating if not g.stopped]
        continuing = [job for job in self._continuing if job.wanted()]  # beyond max_batch: queued steps get in beside them
        block = not steps and not continuing
        steps += continuing
        self._generating, self._continuing = [], []
        delay_s, awaited = self._wait()
        deadline = time.perf_counter() + delay_s
        self._reads, self._deferred = self._deferred, []
        rows, most = len(steps) - len(continuing), self._max_batch * self._runtime.parallel_calls  # rows, but those continuing
        while rows < most:
            if self._held:  # steps that had to wait for a read of their slot, or that came together
                job, block = self._held.popleft(), False
            else:
                try:
                    if block:  # nothing to do but wait; the first to come may wait for company from then on
                        self._held.append(self._idle_until_queued())  # held while _wait() runs: a fault there fails it
                        block = False
                        delay_s, awaited = self._wait()  # who is stepping now, after the idle time
                        deadline = time.perf_counter() + delay_s
                        continue
                    if delay_s and (not awaited or rows < awaited):
                        job = self._queue.get(timeout=max(0.0, deadline - time.perf_counter()))
                    else:
                        job = self._queue.get_nowait()
                except queue.Empty:
                    break
            if isinstance(job, list):  # steps queued together: taken one by one, as far as max_batch goes
                self._held.extend(job)
                continue
            if isinstance(job, Read):  # runs after this batch: it sees the steps queued before it, and no others
                self._reads.append(job)
                continue
            if isinstance(job, Rows):
                if (rows and rows + len(job.slots) > most) or any(read.slot in job.slots for read in self._reads):
                    self._held.appendleft(job)  # the next batch's: this one is full, or a slot of it is being read
                    break
                blocks.append(job)
                rows += len(job.slots)
                continue
            if isinstance(job, Step) and any(read.slot == job.slot for read in self._reads):
                self._held.appendleft(job)  # its slot is being read: it steps after the read
                break
            if isinstance(job, Resume):
                generation = job.generation
                if self._waiting.get(generation.slot) is generation and generation.written - generation.taken < MAX_UNREAD_TOKENS:
                    del self._waiting[generation.slot]
                    if not generation.stopped:
                        steps.append(Step(generation.slot, np.array([generation.next_input], np.int64), 0.0, generation=generation))
                        rows += 1
                continue
            if not isinstance(job, Step):
                self._round[2].append(job)
                return [s for s in steps if s.wanted()], blocks, job
            steps.append(job)
            rows += 1
        return [s for s in steps if s.wanted()], blocks, None

    def _wait(self) -> tuple[float, int]:
        """(how long a batch may wait for more steps, how many it waits for; 0: as many as come in time):
        --max-queue-delay-ms, or without it the sessions stepping now (company())."""
        if self._max_queue_delay_s:
            return self._max_queue_delay_s, 0
        now, in_use = time.perf_counter(), self._runtime.slots_in_use
        self._stepped_at, awaited, wait_s = company(self._stepped_at, now, self._stream_of, in_use)
        return wait_s, awaited

    def _idle_until_queued(self):
        """The next job, waited for with nothing else to do: meanwhile the event loop may run a lone step itself."""
        self._engine_busy.release()
        try:
            return self._queue.get()
        finally:
            self._engine_busy.acquire()

    def _run_encode(self, job: Encode) -> None:
        if job.result.cancelled():  # its request went away
            return
        self._fresh.discard(job.slot)  # the encoder writes the slot's whole state
        try:
            self._runtime.encode(job.slot, job.inputs)
        except Exception as err:
            log.exception("model %s: encoder failed", self._name)
            self._hand_over(settle, job.result, None, RuntimeFailure(f"model {self._name}: encoding failed: {err}"))
            return
        self._hand_over(settle, job.result, None, None)

    def _state_result(self, job: Read | Write) -> tuple[asyncio.Future, object, Exception | None]:
        """A snapshot's read or a restore's write of one slot's whole state: (its future, value, error)."""
        try:
            if isinstance(job, Read):
                return job.result, self._runtime.read_state(job.slot, job.slot in self._fresh), None
            self._fresh.discard(job.slot)
            return job.result, self._runtime.write_state(job.slot, job.values), None
        except Exception as err:
            log.exception("model %s: reading or writing a slot's state failed", self._name)
            return job.result, None, RuntimeFailure(f"model {self._name}: state transfer failed: {err}")

    def _run_round(self, steps: list[Step], blocks: list[Rows]) -> None:
        """Runs the steps grouped by length, the short first, so a step waits for a long input's piece, not the
        reverse; blocks of rows (one step each) run with the steps of one. A round runs at most one piece of long
        inputs: the rest of them wait for the next round."""
        by_length: dict[int, list[Step]] = defaultdict(list)
        if blocks:
            by_length[1] = []
        for job in steps:
            by_length[len(job.inputs)].append(job)
        piece_run = False
        for length in sorted(by_length):
            group = by_length[length]
            rows, piece = self.pieces.plan(len(group), length, time.perf_counter()) if self.pieces else (len(group), length)
            if rows == len(group) and piece == length:
                self._run_group(group, length, blocks=blocks if length == 1 else ())
            elif piece_run:
                self._continuing.extend(group)
            else:
                piece_run = True
                self._run_group(group[:rows], piece)
                self._continuing.extend(group[rows:])

    def _run_group(self, group: list[Step], steps: int, hand_over=None, blocks: list[Rows] = ()) -> None:
        """One call for the group's next `steps` steps: all of them, or a piece, after which they go on in the
        next round and each row is answered once, at its end; with `blocks` (steps of one) after the group's rows.
        Results leave by `hand_over` (the engine thread's, or at once for a step run on the event loop)."""
        hand_over = hand_over or self._hand_over
        slots = [job.slot for job in group]
        parts = [np.stack([job.inputs[:steps] for job in group])] if group else []  # [B, T, *step]
        for block in blocks:
            slots.extend(block.slots)
            parts.append(block.inputs)
        inputs = parts[0] if len(parts) == 1 else np.concatenate(parts)
        fresh = np.array([slot in self._fresh for slot in slots]) if self._fresh else np.zeros(len(slots), bool)  # [B]
        self._fresh.difference_update(slots)
        whole = not group or steps == len(group[0].inputs)
        generating = [row for row, job in enumerate(group) if job.generation is not None] if whole else []
        generations = [group[row].generation for row in generating]
        began = time.perf_counter()
        self.watcher(True)
        self._holding = True
        try:
            outputs = self._runtime.step(slots, fresh, inputs, self._calls(len(slots)))  # each [B, T, ...]
            stepped = time.perf_counter()
            sampled = self._sample(outputs[0], generating, generations)
            ranked = self._rank(outputs[0], group)
        except Exception as err:  # onnxruntime's own errors: these steps fail, the engine goes on
            log.exception("model %s: step failed", self._name)
            self._fresh.update(slot for slot, was in zip(slots, fresh.tolist()) if was)  # their rows were never reset
            hand_over(self._handed_back, fail, group, RuntimeFailure(f"model {self._name}: inference failed: {err}"), blocks)
            self._holding = False
            return
        times = (began, stepped, time.perf_counter())
        at_once = hand_over is _at_once
        if not at_once:  # counted before the results leave the engine thread: whoever has an answer sees it counted
            self._account(group, steps, blocks, slots, whole, times)
        if not whole:
            for row, job in enumerate(group):
                if job.answered:
                    job.parts = (job.parts or []) + [StepResult([output[row] for output in outputs], *ranked.get(row, ()))]
                job.inputs, job.queued = job.inputs[steps:], 0.0
            self._continuing.extend(group)
            hand_over(self.watcher, False)
            self._holding = False
            return
        if generations:
            self._metrics.tokens_generated.inc(len(generations))
        written = sampled.tolist()
        for generation, token in zip(generations, written):
            self._advance(generation, token)
        extras = [[output[row, -1] for output in outputs[1:]] if g.extra_outputs else None for row, g in zip(generating, generations)]
        results = [self._result(job, [output[row] for output in outputs], ranked.get(row, ())) if job.answered else None
                   for row, job in enumerate(group)]
        block_outputs, first = [], len(group)
        for block in blocks:
            block_outputs.append([output[first : first + len(block.slots)] for output in outputs])
            first += len(block.slots)
        hand_over(self._handed_back, deliver, group, results, generations, written, extras, blocks, block_outputs)
        self._holding = False
        if at_once:  # on the event loop, counted once answered (see _run_at_once)
            self._loop.call_soon(self._account, group, steps, blocks, slots, whole, times)

    def _account(self, group: list[Step], steps: int, blocks: list[Rows], slots: list[int], whole: bool, times: tuple) -> None:
        """A call's statistics, metrics and timings, by the engine (its thread, or the event loop holding it). `times`:
        when the call began, when onnxruntime returned, when its outputs were ranked and sampled (perf_counter)."""
        began, stepped, finished = times
        self._stepped_at.update(dict.fromkeys(slots, finished))
        if self.pieces:
            self.pieces.measured(len(slots), steps, stepped - began)
        # a generation's later steps and a piece's rest were never queued (queued 0.0): only queued steps count as waiting
        waits = [began - job.queued for job in group if job.queued]
        for block in blocks:
            waits += [began - block.queued] * len(block.slots)
        self._metrics.batch(len(slots) * steps, len(slots), waits, stepped - began, finished - stepped)
        if self.pieces and whole and (blocks or any(job.queued or job.generation is not None for job in group)):  # not a long input's end
            self.pieces.others_served(finished)

    def _handed_back(self, function, *args) -> None:
        """On the event loop: a call's results go to whoever waits for them (`function(*args)`), and the watcher hears
        that the call is over."""
        try:
            function(*args)
        finally:
            self.watcher(False)

    def _calls(self, rows: int) -> int:
        """Into how many onnxruntime calls run at once a group of rows is split: as many as max_batch needs, and up
        to --parallel-calls where each call still has MIN_CALL_ROWS rows."""
        return min(self._runtime.parallel_calls, max(-(-rows // self._max_batch), rows // MIN_CALL_ROWS, 1))

    @staticmethod
    def _result(job: Step, outputs: list[np.ndarray], ranked: tuple) -> StepResult:
        result = StepResult(outputs, *ranked)
        return StepResult.joined([*job.parts, result]) if job.parts else result

    def _rank(self, logits: np.ndarray, group: list[Step]) -> dict[int, tuple[np.ndarray, np.ndarray]]:
        """row → (ids, probabilities) [T, k] of its steps' k most probable outputs, for every row that asks, at once."""
        rows = [row for row, job in enumerate(group) if job.top_k]
        if not rows:
            return {}
        ids, probabilities = top_tokens(logits[rows], max(group[row].top_k for row in rows))  # each [R, T, k]
        return {row: (ids[i, :, : group[row].top_k], probabilities[i, :, : group[row].top_k]) for i, row in enumerate(rows)}

    def _sample(self, logits: np.ndarray, generating: list[int], generations: list[Generation]) -> np.ndarray:
        """The next token of every generating row at once."""
        if not generations:
            return np.empty(0, np.int64)
        last = logits[generating, -1]  # [G, V]: each generating row's last step (a copy)
        banned = {g.banned for g in generations} - {None}
        if banned:
            last[:, list(banned)] = -np.inf
        return sample_rows(last, [g.params for g in generations], [g.rng for g in generations])

    def _advance(self, generation: Generation, token: int) -> None:
        """Counts the token and, unless the generation has ended or its client is too far behind, steps it again."""
        generation.written += 1
        generation.remaining -= 1
        if token != generation.eos and generation.remaining > 0 and not generation.stopped:
            generation.next_input = token
            if generation.written - generation.taken >= MAX_UNREAD_TOKENS:
                self._waiting[generation.slot] = generation
            else:
                self._generating.append(generation)


def company(
    stepped_at: dict[int, float], now: float, stream_of: dict[int, object], sessions: int
) -> tuple[dict[int, float], int, float]:
    """How many steps a batch waits for, and for how long, without --max-queue-delay-ms: the sessions stepped in the
    last COMPANY_WINDOW_S (up to COMPANY_ROWS of them), when there are MIN_COMPANY; else none (0, 0.0). Many
    sequences in lock-step (each sends its next step once answered) otherwise split into cohorts that run in turn,
    each a whole onnxruntime call: perf_analyzer's 8 sequences ran in batches of 5.3–5.5 when a batch waited for half
    of them, and of 8.0 waiting for all, at 4–11% more steps a second and 11–16% less CPU a step. A lone sequence, or a
    few, never waits.

    How long: STREAMS_WAIT_S when the sessions stepping are on MIN_COMPANY streams or more (`stream_of`: slot → the
    stream that started its sequence; a session without one is a stream of its own) and the `sessions` in use are
    about a batch's worth (COMPANY_ROWS, and the few whose sequence is ending); else COMPANY_WAIT_S. Each of many
    streams sends its next step as soon as its answer arrives, so the longer wait fills the batch (perf_analyzer's 64
    sequences: batches of 48–56 rows instead of 34–35, more steps a second in 9 pairs of 10, docs/performance.md).
    Sequences multiplexed on one stream come at the pace of one client that reads the answers in order: a step held
    back is one it cannot go on with (64 of them lost 5–10% of their steps a second to a 3 ms wait). And with many
    more sessions than a batch, the next batch's rows keep coming without it (perf_analyzer's 256 sequences lost up to
    13%).
    Returns the sessions still recent (slot → when it last stepped), the steps to wait for and the longest wait."""
    recent = {slot: at for slot, at in stepped_at.items() if now - at < COMPANY_WINDOW_S}
    if len(recent) < MIN_COMPANY:
        return recent, 0, 0.0
    about_a_batch = sessions <= COMPANY_ROWS + MIN_COMPANY  # checked first: with more, the streams are not counted
    many_streams = about_a_batch and len({stream_of.get(slot, ("slot", slot)) for slot in recent}) >= MIN_COMPANY
    wait_s = STREAMS_WAIT_S if many_streams else COMPANY_WAIT_S
    return recent, min(len(recent), COMPANY_ROWS), wait_s


def _ignored(_) -> None:
    pass


def _name_os_thread(name: str) -> None:
    """Gives the calling thread its name where the OS shows it (top -H, /proc, perf), as front.cc names its writer:
    Python does not before 3.14. Linux only; the kernel keeps 15 bytes."""
    with contextlib.suppress(OSError, AttributeError, TypeError):
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_NAME, name.encode()[:15], 0, 0, 0)


def _at_once(function, *args) -> None:
    function(*args)

