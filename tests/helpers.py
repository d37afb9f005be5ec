"""What the tests share: a server on a thread, the in-process reference, and small ways to call, check and scrape."""

from __future__ import annotations

import asyncio
import re
import struct
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import grpc
import numpy as np
import onnxruntime as ort
import pytest

from rnnserve.client import RnnServeClient
from rnnserve.inference import grpc_service_pb2 as kserve_pb
from rnnserve.server.app import start
from rnnserve.server.config import ServerConfig
from rnnserve.server.native_front import unavailable as native_unavailable  # noqa: F401 (the tests' name for it)

KOREAN = "안녕하세요. 오늘은 날씨가 좋습니다. 우리는 공원에서 산책을 합니다. 한국어 문장을 배웁니다.\n"


class ServerThread:
    """A real rnnserve server on its own event loop in a background thread, on a free loopback port."""

    def __init__(self, config: ServerConfig, io_binding: bool | None = None):
        self._config = config
        self._io_binding = io_binding
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._stopped = False

    def __enter__(self) -> ServerThread:
        self._thread.start()
        self.app = self.call(start(self._config, self._io_binding))
        self.target = f"127.0.0.1:{self.app.port}"
        self.native_target = f"127.0.0.1:{self.app.native_front.port}" if self.app.native_front else None
        return self

    def __exit__(self, *exc) -> None:
        self.stop(0.5)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)

    def stop(self, grace_s: float) -> None:
        """The server's shutdown, as SIGTERM runs it (once: __exit__ does not run it again)."""
        if not self._stopped:
            self._stopped = True
            self.call(self.app.stop(grace_s))

    def call(self, coroutine):
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result(30)

    def client(self) -> RnnServeClient:
        return RnnServeClient(self.target, timeout_s=30)


class Reference:
    """The exported model run directly in-process with onnxruntime: the independent reference."""

    def __init__(self, path: Path):
        self.session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        self.state_inputs = [i for i in self.session.get_inputs() if i.name != "tokens"]

    def initial_state(self) -> dict[str, np.ndarray]:
        return {i.name: np.zeros([1, *i.shape[1:]], np.float32) for i in self.state_inputs}

    def run(self, tokens: list[int], state: dict[str, np.ndarray]) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """logits [T, V] and the next state."""
        logits, *next_state = self.session.run(None, {"tokens": np.array([tokens], np.int64), **state})
        return logits[0], dict(zip(state, next_state))

    def greedy(self, prompt: list[int], count: int) -> list[int]:
        logits, state = self.run(prompt, self.initial_state())
        out = []
        for _ in range(count):
            out.append(int(np.argmax(logits[-1])))
            logits, state = self.run([out[-1]], state)
        return out


def run_cli(*args, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "rnnserve", *args], capture_output=True, text=True, timeout=120, **kwargs)


class ServeProcess:
    """`rnnserve serve` in a process of its own, as a person starts it; entered once it says where it listens,
    left with SIGTERM (a graceful shutdown)."""

    def __init__(self, *args: str, env: dict | None = None):
        self._args, self._env = args, env

    def __enter__(self) -> ServeProcess:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "rnnserve", "serve", *self._args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            env=self._env,
        )
        self.listening = self.process.stdout.readline()
        match = re.search(r"listening on 127\.0\.0\.1:(\d+)", self.listening)
        if match is None:
            self.process.kill()
            raise AssertionError(f"rnnserve serve did not start: {self.listening}{self.process.communicate(timeout=30)[1]}")
        self.port = int(match.group(1))
        self.target = f"127.0.0.1:{self.port}"
        return self

    def __exit__(self, *exc) -> None:
        self.process.terminate()
        self.process.communicate(timeout=60)


def describe_vad(silero_file: Path, repository: Path) -> None:
    """Silero VAD's own ONNX file described as the README says, into the repository as model `vad`."""
    done = run_cli(
        "describe", str(silero_file), "--task", "vad", "--input", "input:512", "--context", "64", "--state", "state:stateN",
        "--constant", "sr=16000", "--sample-rate", "16000", "--out", str(repository / "vad" / "1" / "model.onnx"),
    )
    assert done.returncode == 0, done.stderr


def status_of(call) -> grpc.StatusCode:
    """Runs `call` (which must fail) and returns its gRPC status code."""
    with pytest.raises(grpc.RpcError) as caught:
        call()
    return caught.value


def scrape(running, name: str, **labels) -> float:
    """The value of one series on the server's /metrics page (0 when it has none yet)."""
    text = urllib.request.urlopen(f"http://127.0.0.1:{running.app.metrics_server.port}/metrics", timeout=10).read().decode()
    total = 0.0
    for line in text.splitlines():
        match = re.fullmatch(rf"{name}\{{(.*)\}} (\S+)", line) or re.fullmatch(rf"{name} (\S+)", line)
        if not match:
            continue
        found = dict(re.findall(r'(\w+)="([^"]*)"', match.group(1))) if match.re.groups == 2 else {}
        if all(found.get(k) == v for k, v in labels.items()):
            total += float(match.groups()[-1])
    return total


def distributions(responses) -> np.ndarray:
    """Every step's top-k probabilities over a stream's responses, in order: what an exact continuation must equal."""
    return np.array([[c.probability for c in step.next] for r in responses for step in r.steps])


def active_sessions_settled(client, model: str, expected: int = 0) -> int:
    """A model's active sessions once they equal `expected`, or after 10 s whatever they are: a call's slot is freed
    on the engine thread, after the work queued before it, a moment after the client sees the call end."""
    deadline = time.monotonic() + 10
    while (active := client.get_model(model).active_sessions) != expected and time.monotonic() < deadline:
        time.sleep(0.02)
    return active


def scrape_settled(running, name: str, expected: float, **labels) -> float:
    """The series' value once it equals `expected`, or after 10 s whatever it is: a slot goes back to the free list
    on the engine thread, after the work queued before it, so a client can see its call end a moment earlier."""
    deadline = time.monotonic() + 10
    while (value := scrape(running, name, **labels)) != expected and time.monotonic() < deadline:
        time.sleep(0.02)
    return value


def together(calls):
    """Runs every call at once from its own thread; returns their results in order."""
    results = [None] * len(calls)
    barrier = threading.Barrier(len(calls))

    def run(i):
        barrier.wait()
        try:
            results[i] = calls[i]()
        except Exception as err:  # re-raised below, in the test's thread
            results[i] = err

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(calls))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    for result in results:
        if isinstance(result, Exception):
            raise result
    return results


# KServe v2 requests as Triton's clients build them


def request(model="lstm", tokens=None, text=None, raw=True, sequence=None, start=False, end=False, id="", outputs=(), starts=None,
            position=None):
    """A ModelInferRequest as a Triton client builds it: raw contents unless raw=False. `starts`: (input, text),
    the label or source a sequence of a model with an encoder starts from. `position`: rnnserve's sequence_position."""
    message = kserve_pb.ModelInferRequest(model_name=model, id=id)
    if tokens is not None:
        array = np.asarray(tokens, np.int64).reshape(1, -1) if np.ndim(tokens) == 1 else np.asarray(tokens, np.int64)
        tensor = message.inputs.add(name="tokens", datatype="INT64", shape=array.shape)
        if raw:
            message.raw_input_contents.append(array.tobytes())
        else:
            tensor.contents.int64_contents.extend(array.ravel().tolist())
    for name, value in ([("text", text)] if text is not None else []) + ([starts] if starts else []):
        rows = [value] if isinstance(value, str) else value
        tensor = message.inputs.add(name=name, datatype="BYTES", shape=[len(rows), 1])
        encoded = [row.encode() for row in rows]
        if raw:
            message.raw_input_contents.append(b"".join(struct.pack("<I", len(e)) + e for e in encoded))
        else:
            tensor.contents.bytes_contents.extend(encoded)
    if sequence is not None:
        if isinstance(sequence, str):
            message.parameters["sequence_id"].string_param = sequence
        else:
            message.parameters["sequence_id"].int64_param = sequence
        message.parameters["sequence_start"].bool_param = start
        message.parameters["sequence_end"].bool_param = end
    if position is not None:
        message.parameters["sequence_position"].int64_param = position
    for name, top_k in outputs:
        output = message.outputs.add(name=name)
        if top_k:
            output.parameters["classification"].int64_param = top_k
    return message


def logits_of(response: kserve_pb.ModelInferResponse) -> np.ndarray:
    output = response.outputs[0]
    assert (output.name, output.datatype) == ("logits", "FP32")
    if response.raw_output_contents:
        values = np.frombuffer(response.raw_output_contents[0], "<f4")
    else:
        values = np.array(output.contents.fp32_contents, np.float32)
    return values.reshape(tuple(output.shape))


def reference_logits(reference, name: str, chunks: list[list[int]]) -> list[np.ndarray]:
    ref = reference(name)
    state, out = ref.initial_state(), []
    for chunk in chunks:
        logits, state = ref.run(chunk, state)
        out.append(logits)
    return out


class ReferenceSampler:
    """The per-row sampler the server used before it sampled a whole batch at once: the reference its
    vectorised sampling must equal, token for token, for the same seed."""

    def __init__(self, temperature: float, top_k: int, top_p: float, seed: int):
        self._temperature, self._top_k, self._top_p = temperature, top_k, top_p
        self._rng = np.random.default_rng(seed)

    def sample(self, logits: np.ndarray) -> int:
        """logits [V] → one token id."""
        if self._temperature == 0.0:
            return int(np.argmax(logits))
        scores = logits.astype(np.float64) / self._temperature
        if 0 < self._top_k < scores.size:
            kth = np.partition(scores, -self._top_k)[-self._top_k]
            scores[scores < kth] = -np.inf
        shifted = np.exp(scores - scores.max())
        probs = shifted / shifted.sum()
        if self._top_p < 1.0:
            order = np.argsort(-probs)
            before = np.cumsum(probs[order]) - probs[order]
            probs[order[before >= self._top_p]] = 0.0
            probs /= probs.sum()
        return int(self._rng.choice(probs.size, p=probs))
