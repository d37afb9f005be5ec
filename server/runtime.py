"""One onnxruntime session per model version, and the state slab that holds every sequence's state.

A sequence owns one slot: row `slot` of each state tensor's slab. A step reads its slots' rows, runs the
graph once for all of them, and writes each next state back to its own slot, so no sequence can see
another's state.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort

from rnnserve.contract import ModelCard, StateSpec
from rnnserve.server.config import parse_device
from rnnserve.server.errors import ResourceExhausted

SLAB_GRAPHS = Path(__file__).parent / "slab_graphs"  # made by scripts/gen_slab_graphs.py


class DeviceUnavailable(RuntimeError):
    """The requested execution provider cannot run here; the server refuses to start rather than fall back."""


@dataclass(frozen=True, slots=True)
class Device:
    kind: str  # "cpu" or "cuda"
    index: int = 0

    @classmethod
    def parse(cls, text: str) -> Device:
        return cls(*parse_device(text))

    def providers(self) -> list:
        if self.kind == "cpu":
            return ["CPUExecutionProvider"]
        available = ort.get_available_providers()
        if "CUDAExecutionProvider" not in available:
            raise DeviceUnavailable(
                f"--device cuda: this onnxruntime ({ort.__version__}) has no CUDA execution provider "
                f"(available: {', '.join(available)}). Install the CUDA build with `pip install 'rnnserve[cuda]'` "
                "(onnxruntime-gpu) on a machine with an NVIDIA GPU, or serve with --device cpu."
            )
        return [("CUDAExecutionProvider", {"device_id": self.index}), "CPUExecutionProvider"]


class HostStateSlab:
    """State rows in host memory: a batch is a gather of its slots' rows, a step, a scatter back."""

    def __init__(self, specs: tuple[StateSpec, ...], capacity: int):
        self._specs = specs
        self._rows = {s.name: np.full((capacity, *s.shape), s.initial, np.float32) for s in specs}  # [capacity, ...]
        self._carried = [s for s in specs if s.output]  # the state a step writes back
        self._carried_outputs = [s.output for s in self._carried]

    def write(self, slot: int, values: dict[str, np.ndarray]) -> None:
        """Sets a slot's state from an encoder's outputs (each without its batch axis); a value shorter than
        the row along its first axis (a short source's memory) fills its start, the rest (and any state the
        encoder does not write) is initial."""
        for spec in self._specs:
            row = self._rows[spec.name][slot]
            row[...] = spec.initial
            if spec.name in values:
                value = values[spec.name]
                row[: value.shape[0]] = value

    def read(self, slot: int) -> dict[str, np.ndarray]:
        """A copy of the slot's state (a snapshot)."""
        return {spec.name: self._rows[spec.name][slot].copy() for spec in self._specs}

    def step(
        self, session: ort.InferenceSession, slots: list[int], fresh: np.ndarray, model_input: tuple[str, np.ndarray], outputs: tuple[str, ...]
    ) -> list[np.ndarray]:
        # A lone row is read in place, through a view, and written back by a slice: a list index costs 5x more
        index = slice(slots[0], slots[0] + 1) if len(slots) == 1 else slots
        feeds = {spec.name: self._rows[spec.name][index] for spec in self._specs}  # gather: each [B, ...]
        if fresh.any():  # rows of sessions that start (or restart) from the initial state (a lone row's in place)
            for spec in self._specs:
                feeds[spec.name][fresh] = spec.initial
        results = session.run([*outputs, *self._carried_outputs], {model_input[0]: model_input[1], **feeds})
        for spec, value in zip(self._carried, results[len(outputs) :]):
            self._rows[spec.name][index] = value  # scatter
        return results[: len(outputs)]


class DeviceStateSlab:
    """State rows resident on the execution device; a batch is gathered, stepped and scattered there.

    Each state tensor is a flat [2, capacity + 1, row_size] buffer on the device: two halves, each ending
    in a row that always holds the initial state. A step gathers its slots' rows (a fresh slot reads the
    initial row, so a reset costs nothing), runs the model on them, and scatters the next state into the
    other half, which becomes current. Gather and scatter are tiny onnxruntime graphs on the same device
    (server/slab_graphs/), and every tensor is bound by address (I/O binding): state never crosses to the host.
    """

    def __init__(self, specs: tuple[StateSpec, ...], capacity: int, device: Device):
        self._specs = specs
        self._capacity = capacity
        self._device = device
        providers = device.providers()
        self._gather = ort.InferenceSession(str(SLAB_GRAPHS / "gather.onnx"), providers=providers)
        self._scatter = ort.InferenceSession(str(SLAB_GRAPHS / "scatter.onnx"), providers=providers)
        self._row_size = {s.name: int(np.prod(s.shape)) for s in specs}
        self._halves = {
            s.name: ort.OrtValue.ortvalue_from_numpy(
                np.full((2, capacity + 1, self._row_size[s.name]), s.initial, np.float32), device.kind, device.index
            )
            for s in specs
        }
        self._current = 0  # which half holds every slot's state

    def step(
        self, session: ort.InferenceSession, slots: list[int], fresh: np.ndarray, model_input: tuple[str, np.ndarray], outputs: tuple[str, ...]
    ) -> list[np.ndarray]:
        """Only for a model with one per-step output (the runtime keeps the others on the host slab)."""
        slot_ids = np.asarray(slots, np.int64)
        read = np.where(fresh, self._capacity, slot_ids)  # [B]: fresh slots read the initial row
        rows = {spec.name: self._run_gather(spec.name, read) for spec in self._specs}  # each [B, row_size]
        binding = session.io_binding()
        binding.bind_cpu_input(*model_input)
        binding.bind_output(outputs[0], "cpu")  # sampling happens on the host
        for spec in self._specs:
            shape = [len(slots), *spec.shape]
            binding.bind_input(spec.name, self._device.kind, self._device.index, np.float32, shape, rows[spec.name].data_ptr())
            binding.bind_output(spec.output, self._device.kind, self._device.index)
        session.run_with_iobinding(binding)
        logits, *next_rows = binding.get_outputs()
        for spec, value in zip(self._specs, next_rows):
            self._run_scatter(spec.name, slot_ids[:, None], value)
        self._current = 1 - self._current
        return [logits.numpy()]

    def read(self, slot: int) -> dict[str, np.ndarray]:
        """A copy of the slot's state on the host (a snapshot)."""
        read = np.array([slot], np.int64)
        return {spec.name: self._run_gather(spec.name, read).numpy()[0].reshape(spec.shape) for spec in self._specs}

    def write(self, slot: int, values: dict[str, np.ndarray]) -> None:
        """Sets a slot's whole state (a restore): every tensor's row, scattered on the device."""
        write = np.array([[slot]], np.int64)
        for spec in self._specs:
            row = np.ascontiguousarray(values[spec.name], np.float32).reshape(1, self._row_size[spec.name])
            self._run_scatter(spec.name, write, ort.OrtValue.ortvalue_from_numpy(row, self._device.kind, self._device.index))
        self._current = 1 - self._current

    def _half(self, name: str, half: int) -> tuple[list[int], int]:
        """Shape and device address of one half of a state tensor's slab."""
        rows = self._capacity + 1
        return [rows, self._row_size[name]], self._halves[name].data_ptr() + half * rows * self._row_size[name] * 4

    def _run_gather(self, name: str, read: np.ndarray) -> ort.OrtValue:
        kind, index = self._device.kind, self._device.index
        binding = self._gather.io_binding()
        binding.bind_input("slab", kind, index, np.float32, *self._half(name, self._current))
        binding.bind_cpu_input("indices", read)
        binding.bind_output("rows", kind, index)
        self._gather.run_with_iobinding(binding)
        return binding.get_outputs()[0]

    def _run_scatter(self, name: str, write: np.ndarray, rows: ort.OrtValue) -> None:
        kind, index = self._device.kind, self._device.index
        binding = self._scatter.io_binding()
        binding.bind_input("slab", kind, index, np.float32, *self._half(name, self._current))
        binding.bind_cpu_input("indices", write)
        binding.bind_input("rows", kind, index, np.float32, [len(write), self._row_size[name]], rows.data_ptr())
        binding.bind_output("next_slab", kind, index, np.float32, *self._half(name, 1 - self._current))
        self._scatter.run_with_iobinding(binding)


def open_session(path: str, device: Device, threads: int = 0) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    # Idle intra-op threads would spin between steps, taking the cores the event loop needs to serve.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    session = ort.InferenceSession(path, options, providers=device.providers())
    if device.kind == "cuda" and "CUDAExecutionProvider" not in session.get_providers():
        raise DeviceUnavailable(
            f"--device cuda: onnxruntime could not start its CUDA provider for {path} (it fell back to "
            f"{', '.join(session.get_providers())}); check the CUDA and cuDNN libraries onnxruntime-gpu needs."
        )
    return session


class Runtime:
    """Runs steps of one model version (and its encoder, if it has one). Not thread-safe: the model's batcher
    is its only caller, and reads or writes the state slab only on the engine's thread (server/batcher.py)."""

    def __init__(
        self, session: ort.InferenceSession, card: ModelCard, device: Device, capacity: int, io_binding: bool | None = None,
        encoder: ort.InferenceSession | None = None, parallel_calls: int = 1,
    ):
        self.session = session
        self.encoder = encoder
        self._encoder_outputs = [o.name for o in encoder.get_outputs()] if encoder else []  # state tensors it writes
        self.providers = tuple(session.get_providers())
        use_binding = device.kind == "cuda" if io_binding is None else io_binding
        # The device-resident slab serves models whose state is all carried step to step; a model with an
        # encoder keeps its state in host memory (its memory rows are written once per request).
        use_binding = use_binding and encoder is None and len(card.outputs) == 1
        self.slab = DeviceStateSlab(card.state, capacity, device) if use_binding else HostStateSlab(card.state, capacity)
        self.capacity = capacity
        self.calls = 0  # onnxruntime calls made, for clients and tests to see how work was batched
        self._free = list(range(capacity - 1, -1, -1))
        self.card = card
        # A wide batch of host-memory state may run as this many calls at once, on disjoint rows: a graph of small
        # operations (Silero VAD's) keeps one core busy per call, whatever its intra-op threads.
        self.parallel_calls = parallel_calls if isinstance(self.slab, HostStateSlab) else 1
        self._pool = ThreadPoolExecutor(self.parallel_calls - 1, f"calls-{card.name}") if self.parallel_calls > 1 else None

    @property
    def slots_in_use(self) -> int:
        return self.capacity - len(self._free)

    def allocate(self) -> int:
        """An unowned slot (its state is whatever its last owner left: the batcher starts it fresh), or
        RESOURCE_EXHAUSTED when every slot is owned."""
        if not self._free:
            raise ResourceExhausted(
                f"model {self.card.name!r} version {self.card.version}: all {self.capacity} session slots are in use; "
                "close sessions or start the server with a larger --max-sessions"
            )
        return self._free.pop()

    def free(self, slot: int) -> None:
        self._free.append(slot)

    def step(self, slots: list[int], fresh: np.ndarray, inputs: np.ndarray, calls: int = 1) -> list[np.ndarray]:
        """inputs [B, T, *step] (token ids [B, T] int64, or values) → [logits [B, T, V] (or the model's main output),
        *extra outputs [B, T, ...]]; each slot's state advances by T steps, from the initial state where `fresh` [B] is set.
        `calls` (at most parallel_calls): onnxruntime calls run at once, each on a share of the rows."""
        self.calls += calls
        if calls <= 1:
            return self.slab.step(self.session, slots, fresh, (self.card.input.name, inputs), self.card.outputs)
        bounds = [len(slots) * i // calls for i in range(calls + 1)]

        def rows(a: int, b: int) -> list[np.ndarray]:
            return self.slab.step(self.session, slots[a:b], fresh[a:b], (self.card.input.name, inputs[a:b]), self.card.outputs)

        later = [self._pool.submit(rows, a, b) for a, b in zip(bounds[1:-1], bounds[2:])]
        results = [rows(bounds[0], bounds[1]), *(call.result() for call in later)]
        return [np.concatenate(outputs) for outputs in zip(*results)]

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown()

    def read_state(self, slot: int, fresh: bool) -> dict[str, np.ndarray]:
        """The slot's state: its rows, or the initial state when it has not stepped since it was (re)started."""
        if fresh:
            return {spec.name: np.full(spec.shape, spec.initial, np.float32) for spec in self.card.state}
        return self.slab.read(slot)

    def write_state(self, slot: int, values: dict[str, np.ndarray]) -> None:
        self.slab.write(slot, values)

    def encode(self, slot: int, inputs: dict[str, np.ndarray]) -> None:
        """Runs the encoder on one sequence's request (batch 1) and writes its outputs as the slot's whole state."""
        self.calls += 1
        outputs = self.encoder.run(self._encoder_outputs, inputs)
        self.slab.write(slot, {name: value[0] for name, value in zip(self._encoder_outputs, outputs)})
