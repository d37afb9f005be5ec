"""How many real-time audio streams Silero VAD keeps up with, served by rnnserve and run the way voice-agent
frameworks run it today, on the same cores in one run.

Every stream is paced like a microphone: a 32 ms chunk (512 samples at 16 kHz) every 32 ms, each stream starting
at its own offset within the tick. A way sustains N streams when the p99 of a chunk's latency (from when it was due
to when its probability is back) is at most 32 ms and no stream falls behind real time (no chunk sent a chunk late).

- in-process: one onnxruntime session and one thread per stream, context and state carried by hand — what
  silero_vad's OnnxWrapper does (without its torch tensors);
- per-session: one rnnserve Stream per stream, all on one channel of one client process, served with
  --max-queue-delay-ms 4 (a lone chunk waits up to 4 ms for others to share its onnxruntime call);
- per-session over WebSockets: the same, a WebSocket per stream (--http-port) carrying the same messages;
- multiplexed: every stream's chunk in one message a tick as rows (one tensor of all its sessions' chunks), on two
  StreamMany calls of half the streams each (one call's message is read while the other's is stepped).

Each way's server runs --threads 1 --parallel-calls <cores> (Silero's graph of small operations keeps one core busy
per onnxruntime call, so a wide batch runs as a call per core), and is started for that way alone. Every session is
opened before the clock starts. The in-process way runs last: what its hundred sessions and threads leave behind in
this process stalled a way measured after it (a 110 ms pause).

    python -m bench.vad                                  # needs silero-vad (the dev extra) and the [train] extra
    python -m bench.vad --seconds 3 --streams 16,32,64,128,256,384,512

Prints one JSON line: the most streams each way sustains (and p99 and CPU per chunk at each count tried), the
ratios to in-process, the server's CPU per chunk beside onnxruntime's own at batch 1 and batched, and the ceiling
of one in-process session batching every stream.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import tempfile
import threading
import time
from pathlib import Path

import grpc
import numpy as np
import onnxruntime as ort

from bench.common import free_port, process_cpu_s, server_process
from rnnserve.client.native import session_chunk, session_rows, values_tensor
from rnnserve.v1 import rnnserve_pb2 as pb
from rnnserve.v1 import rnnserve_pb2_grpc as pb_grpc

CHUNK, CONTEXT, RATE = 512, 64, 16000
TICK_S = CHUNK / RATE  # 32 ms
WARMUP_CHUNKS = 4  # left out of the latencies: sessions opening, sessions loading
TARGETS = {"multiplexed": 2.5, "per_session": 1.0, "per_session_websocket": 1.0}  # streams sustained, as a multiple of in-process


def silero_file() -> Path:
    import silero_vad  # the dev extra

    return Path(silero_vad.__file__).parent / "data" / "silero_vad.onnx"


def described(source: Path) -> Path:
    from rnnserve.export.describe_values import describe_values

    repository = Path(tempfile.mkdtemp(prefix="rnnserve-vad-"))
    describe_values(source, [("state", "stateN")], "input", CHUNK, "vad", CONTEXT, {"sr": str(RATE)}, RATE, repository / "vad" / "1" / "model.onnx")
    return repository


def audio(streams: int, chunks: int) -> np.ndarray:
    """[streams, chunks, 512]: quiet noise (the model's cost does not depend on what it hears)."""
    return (0.01 * np.random.default_rng(0).standard_normal((streams, chunks, CHUNK))).astype(np.float32)


def summary(latencies: list[float], lags: list[float], chunks: int, cpu_s: float) -> dict:
    ms = np.array(latencies) * 1e3
    p99 = float(np.percentile(ms, 99))
    worst_lag = max(lags, default=0.0)
    return {
        "p50_ms": round(float(np.percentile(ms, 50)), 2), "p99_ms": round(p99, 2), "worst_send_lag_ms": round(worst_lag * 1e3, 2),
        "cpu_us_per_chunk": round(cpu_s / chunks * 1e6, 1), "sustained": p99 <= TICK_S * 1e3 and worst_lag < TICK_S,
    }


def paced(start: float, stream: int, streams: int, k: int) -> float:
    """When chunk k of a stream is due: streams spread over the tick, as independent microphones are."""
    return start + (k + stream / streams) * TICK_S


# in-process: a session and a thread per stream


def in_process(model: Path, samples: np.ndarray) -> dict:
    streams, chunks, _ = samples.shape
    options = ort.SessionOptions()
    options.intra_op_num_threads = options.inter_op_num_threads = 1  # as OnnxWrapper sets them
    sessions = [ort.InferenceSession(str(model), options, providers=["CPUExecutionProvider"]) for _ in range(streams)]
    latencies, lags, lock = [], [], threading.Lock()
    start = time.perf_counter() + 0.2

    def run(stream: int) -> None:
        session, state, context = sessions[stream], np.zeros((2, 1, 128), np.float32), np.zeros((1, CONTEXT), np.float32)
        sr, mine, my_lags = np.array(RATE, np.int64), [], []
        for k in range(chunks):
            due = paced(start, stream, streams, k)
            time.sleep(max(0.0, due - time.perf_counter()))
            my_lags.append(max(0.0, time.perf_counter() - due))
            x = np.concatenate([context, samples[stream, k][None]], axis=1)
            _, state = session.run(None, {"input": x, "state": state, "sr": sr})
            context = x[:, -CONTEXT:]
            mine.append(time.perf_counter() - due)
        with lock:
            latencies.extend(mine[WARMUP_CHUNKS:])
            lags.extend(my_lags[WARMUP_CHUNKS:])

    threads = [threading.Thread(target=run, args=(s,)) for s in range(streams)]
    cpu = time.process_time()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return summary(latencies, lags, streams * chunks, time.process_time() - cpu)


# rnnserve: a Stream per stream, or one StreamMany


async def paced_streams(samples: np.ndarray, exchange) -> tuple[list[float], list[float]]:
    """Every stream's chunks sent on one clock, paced like microphones: `exchange(stream, request)` sends a chunk's
    StreamRequest and waits for its answer. (latencies, send lags), the warm-up chunks left out."""
    streams, chunks, _ = samples.shape
    latencies, lags = [], []
    start = time.perf_counter() + 0.05

    async def run(stream: int) -> None:
        for k in range(chunks):
            due = paced(start, stream, streams, k)
            await asyncio.sleep(max(0.0, due - time.perf_counter()))
            if k >= WARMUP_CHUNKS:
                lags.append(max(0.0, time.perf_counter() - due))
            await exchange(stream, pb.StreamRequest(values=values_tensor(samples[stream, k][None])))
            if k >= WARMUP_CHUNKS:
                latencies.append(time.perf_counter() - due)

    await asyncio.gather(*(run(s) for s in range(streams)))
    return latencies, lags


async def per_session(target: str, samples: np.ndarray) -> tuple[list[float], list[float]]:
    """A Stream per stream, all on one channel; each opened (`start` and no steps) before the clock starts."""
    async with grpc.aio.insecure_channel(target) as channel:
        stub = pb_grpc.RnnServeStub(channel)
        calls = [stub.Stream() for _ in range(samples.shape[0])]
        for call in calls:
            await call.write(pb.StreamRequest(start=pb.StreamStart(model="vad")))
        for call in calls:
            await call.read()

        async def exchange(stream: int, request: pb.StreamRequest) -> None:
            await calls[stream].write(request)
            await calls[stream].read()

        timed = await paced_streams(samples, exchange)
        for call in calls:
            await call.done_writing()
    return timed


async def per_session_websocket(address: str, samples: np.ndarray) -> tuple[list[float], list[float]]:
    """A WebSocket per stream (binary frames: the same StreamRequest protobuf), all from one client process; each
    opened before the clock starts."""
    import aiohttp

    opening = pb.StreamRequest(start=pb.StreamStart(model="vad")).SerializeToString()
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as http:
        sockets = [await http.ws_connect(address) for _ in range(samples.shape[0])]
        for socket in sockets:
            await socket.send_bytes(opening)
            await socket.receive()

        async def exchange(stream: int, request: pb.StreamRequest) -> None:
            await sockets[stream].send_bytes(request.SerializeToString())
            answer = await sockets[stream].receive()
            if answer.type != aiohttp.WSMsgType.BINARY:
                raise RuntimeError(f"the server answered {answer.type.name}: {answer.data}")

        timed = await paced_streams(samples, exchange)
        for socket in sockets:
            await socket.close()
    return timed


async def multiplexed(target: str, samples: np.ndarray, calls: int = 2) -> tuple[list[float], list[float]]:
    """Every stream's chunk in one message a tick, as rows (one tensor for all the call's sessions), on one of
    `calls` StreamMany calls (the streams dealt among them, so the server reads one call's message while it steps
    another's); a chunk's latency runs from the tick to its message's answer. The sessions are opened (a chunk
    with `start` and no steps each) before the clock starts."""
    streams, chunks, _ = samples.shape
    latencies, lags = [], []
    parts = [list(range(part, streams, calls)) for part in range(min(calls, streams))]
    async with grpc.aio.insecure_channel(target) as channel:
        stub = pb_grpc.RnnServeStub(channel)
        opened = [(stub.StreamMany(), [f"mic-{s}" for s in mine]) for mine in parts]
        for call, names in opened:
            await call.write(pb.StreamManyRequest(chunks=[session_chunk(n, model="vad") for n in names]))
            await call.read()
        start = time.perf_counter() + 0.05

        async def run(call, names: list[str], mine: list[int]) -> None:
            for k in range(chunks):
                due = start + k * TICK_S
                await asyncio.sleep(max(0.0, due - time.perf_counter()))
                if k >= WARMUP_CHUNKS:
                    lags.append(max(0.0, time.perf_counter() - due))
                await call.write(session_rows(names, samples[mine, k][:, None]))
                answer = await call.read()
                if failed := [m for c, m in zip(answer.rows.codes, answer.rows.messages) if c]:
                    raise RuntimeError(failed[0])
                if k >= WARMUP_CHUNKS:
                    latencies.extend([time.perf_counter() - due] * len(mine))
            await call.write(pb.StreamManyRequest(chunks=[session_chunk(n, close=True) for n in names]))
            await call.read()
            await call.done_writing()

        await asyncio.gather(*(run(call, names, mine) for (call, names), mine in zip(opened, parts)))
    return latencies, lags


def served(way, target: str, pid: int, samples: np.ndarray) -> dict:
    cpu = process_cpu_s(pid)
    latencies, lags = asyncio.run(way(target, samples))
    return summary(latencies, lags, samples.shape[0] * samples.shape[1], process_cpu_s(pid) - cpu)


def onnxruntime_cpu_us(model: Path, batch: int, runs: int = 200) -> float:
    """onnxruntime's own CPU per chunk for the served graph at this batch (one thread, as the server's)."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(str(model), options, providers=["CPUExecutionProvider"])
    feeds = {"input": audio(batch, 1), "state": np.zeros((batch, 2, 128), np.float32), "input_context": np.zeros((batch, CONTEXT), np.float32)}
    session.run(None, feeds)
    cpu = time.process_time()
    for _ in range(runs):
        session.run(None, feeds)
    return (time.process_time() - cpu) / runs / batch * 1e6


def most(results: dict[int, dict]) -> int:
    """The most streams sustained, counting up from the fewest until the first count that was not."""
    best = 0
    for streams in sorted(results):
        if not results[streams]["sustained"]:
            break
        best = streams
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--streams", default="16,32,48,64,80,96,128,192,256,384,512", help="stream counts to try, comma-separated, fewest first")
    parser.add_argument("--seconds", type=float, default=3.0, help="audio each stream sends, per count tried")
    parser.add_argument("--threads", type=int, default=1, help="the server's onnxruntime intra-op threads")
    parser.add_argument("--parallel-calls", type=int, default=os.cpu_count() or 1, help="the server's --parallel-calls (default: the cores)")
    parser.add_argument("--per-session-delay-ms", type=float, default=4.0,
                        help="--max-queue-delay-ms of the per-session way's server: lone chunks wait to batch (the multiplexed way's is 0)")
    args = parser.parse_args()
    counts = sorted(int(n) for n in args.streams.split(","))
    chunks = WARMUP_CHUNKS + max(8, int(args.seconds / TICK_S))
    source = silero_file()
    repository = described(source)
    model = repository / "vad" / "1" / "model.onnx"
    results: dict[str, dict[int, dict]] = {"in_process": {}, "per_session": {}, "per_session_websocket": {}, "multiplexed": {}}
    gc.freeze()  # what the setup made stays out of the collector's walks, for every way alike (the server does the same)
    flags = ("--threads", str(args.threads), "--parallel-calls", str(args.parallel_calls), "--max-sessions", str(max(counts) + 8))
    per_session_flags = (*flags, "--max-queue-delay-ms", str(args.per_session_delay_ms))
    http_port = free_port()
    server_flags = {"per_session": per_session_flags, "per_session_websocket": (*per_session_flags, "--http-port", str(http_port)), "multiplexed": flags}
    ways = {"per_session": per_session, "per_session_websocket": per_session_websocket, "multiplexed": multiplexed}
    for name, way in ways.items():
        with server_process(repository, *server_flags[name]) as (target, pid):
            if name == "per_session_websocket":
                target = f"ws://127.0.0.1:{http_port}/v1/stream"
            for streams in counts:
                results[name][streams] = served(way, target, pid, audio(streams, chunks))
                if not results[name][streams]["sustained"]:
                    break
    for streams in counts:  # the baseline alone, its servers gone (what it leaves behind slowed a way run after it)
        results["in_process"][streams] = in_process(source, audio(streams, chunks))
        if not results["in_process"][streams]["sustained"]:
            break
    sustained = {name: most(by_count) for name, by_count in results.items()}
    base = sustained["in_process"] or 1
    batched = onnxruntime_cpu_us(model, 256)
    print(json.dumps({
        "bench": "vad", "chunk_ms": TICK_S * 1e3, "seconds": args.seconds, "server_flags": {name: " ".join(f) for name, f in server_flags.items()}, "streams_sustained": sustained,
        "ratio_to_in_process": {name: round(sustained[name] / base, 2) for name in TARGETS},
        "targets_met": {name: sustained[name] / base >= target for name, target in TARGETS.items()},
        "onnxruntime_cpu_us_per_chunk": {"batch_1": round(onnxruntime_cpu_us(model, 1), 1), "batch_256": round(batched, 1)},
        "in_process_batched_ceiling_streams_per_core": int(TICK_S * 1e6 / batched),
        "by_count": {name: {str(n): r for n, r in by_count.items()} for name, by_count in results.items()},
    }))


if __name__ == "__main__":
    main()
