"""Per-step latency of one stream over gRPC, and prompt consumption, against in-process onnxruntime.

    python -m bench.step_latency                      # an untrained 2-layer 512 LSTM (needs the [train] extra)
    python -m bench.step_latency --repository runs/models --model lstm256

The server runs in its own process; the client and the in-process baselines run here. Prints one JSON line
per measurement with absolute figures and the ratio to its baseline measured in the same run. The in-process
step is also timed after 1 ms of idleness, as a served step comes (on a shared machine it costs about twice as much).
Where the native front end can be built, the same stream is timed through --native-port too.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from pathlib import Path

import grpc
import numpy as np

from bench.common import add_model_flags, in_process_session, model_path, native_port, runtime_flags, server_process
from rnnserve.client import RnnServeClient
from rnnserve.v1 import rnnserve_pb2 as pb
from rnnserve.v1 import rnnserve_pb2_grpc as pb_grpc

TARGET_LATENCY_RATIO = 1.5
TARGET_PROMPT_SPEEDUP = 20.0


def percentiles(samples_s: list[float]) -> dict:
    ms = np.array(samples_s) * 1e3
    return {"p50_ms": round(float(np.percentile(ms, 50)), 4), "p99_ms": round(float(np.percentile(ms, 99)), 4)}


def in_process_steps(path: Path, steps: int, args, idle_s: float = 0.0) -> list[float]:
    """Each step's time, back to back or after `idle_s` of sleep (as a server's steps come: on a shared machine a
    step after a pause costs about twice one run back to back)."""
    session, state = in_process_session(path, args)
    token = np.array([[65]], np.int64)
    times = []
    for _ in range(steps):
        if idle_s:
            time.sleep(idle_s)
        started = time.perf_counter()
        _, *next_state = session.run(None, {"tokens": token, **state})
        state = dict(zip(state, next_state))
        times.append(time.perf_counter() - started)
    return times


def in_process_prompt(path: Path, length: int, args) -> tuple[float, float]:
    """(one call over `length` tokens, `length` calls of one token), in seconds."""
    session, state = in_process_session(path, args)
    tokens = np.full((1, length), 65, np.int64)
    started = time.perf_counter()
    session.run(None, {"tokens": tokens, **state})
    whole = time.perf_counter() - started
    started = time.perf_counter()
    for t in range(length):
        _, *next_state = session.run(None, {"tokens": tokens[:, t : t + 1], **state})
        state = dict(zip(state, next_state))
    return whole, time.perf_counter() - started


def server_steps(target: str, model: str, steps: int, text: str = "A") -> list[float]:
    """Round trips of one-token messages on one Stream, from a grpc.aio client (no thread hop per message).
    With empty text the server answers without running the model: the cost of gRPC and Python alone."""
    return asyncio.run(_server_steps(target, model, steps, text))


async def _server_steps(target: str, model: str, steps: int, text: str) -> list[float]:
    async with grpc.aio.insecure_channel(target) as channel:
        call = pb_grpc.RnnServeStub(channel).Stream()
        await call.write(pb.StreamRequest(start=pb.StreamStart(model=model, top_k=1)))
        await call.read()
        times = []
        for _ in range(steps):
            started = time.perf_counter()
            await call.write(pb.StreamRequest(text=text))
            await call.read()
            times.append(time.perf_counter() - started)
        await call.done_writing()
        return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_model_flags(parser)
    parser.add_argument("--steps", type=int, default=1000, help="steps measured per configuration")
    parser.add_argument("--prompt", type=int, default=2000, help="prompt length in characters")
    args = parser.parse_args()

    repository, model = model_path(args)
    path = repository / model / "1" / "model.onnx"
    native_flags, native_target, native_missing = native_port()
    with server_process(repository, *runtime_flags(args), *native_flags) as (target, _), RnnServeClient(target) as client:
        server_steps(target, model, 100)  # warm up both sides
        in_process_steps(path, 100, args)
        floor = percentiles(in_process_steps(path, args.steps, args))
        idle_floor = percentiles(in_process_steps(path, min(args.steps, 300), args, idle_s=0.001))
        served = percentiles(server_steps(target, model, args.steps))
        transport = percentiles(server_steps(target, model, args.steps, text=""))
        native = {"native_port_skipped": native_missing}
        if native_target:
            server_steps(native_target, model, 100)
            native = {"native_port_stream": percentiles(server_steps(native_target, model, args.steps)),
                      "native_port_round_trip_without_a_step": percentiles(server_steps(native_target, model, args.steps, text=""))}
        print(json.dumps({
            "bench": "step_latency", "model": model, "steps": args.steps,
            "grpc_stream": served, "in_process_onnxruntime": floor, "in_process_onnxruntime_after_1ms_idle": idle_floor,
            "grpc_round_trip_without_a_step": transport, **native,
            "ratio_p50": round(served["p50_ms"] / floor["p50_ms"], 2),
            "ratio_p99": round(served["p99_ms"] / floor["p99_ms"], 2),
            "target_p50_1.5x_met": served["p50_ms"] <= TARGET_LATENCY_RATIO * floor["p50_ms"],
        }))

        whole_s, single_s = in_process_prompt(path, args.prompt, args)
        prompt = "A" * args.prompt
        started = time.perf_counter()
        client.generate_text(model, prompt, temperature=0.0, max_tokens=1)
        served_prompt_s = time.perf_counter() - started
        served_single_s = float(np.median(server_steps(target, model, 200))) * args.prompt
        print(json.dumps({
            "bench": "prompt_consumption", "model": model, "prompt_chars": args.prompt,
            "grpc_generate_one_call_s": round(served_prompt_s, 4),
            "grpc_single_steps_s_estimated": round(served_single_s, 4),
            "speedup_over_single_steps": round(served_single_s / served_prompt_s, 1),
            "in_process_one_call_s": round(whole_s, 4), "in_process_single_steps_s": round(single_s, 4),
            "in_process_speedup": round(single_s / whole_s, 1),
            "target_20x_met": served_single_s >= TARGET_PROMPT_SPEEDUP * served_prompt_s,
        }))


if __name__ == "__main__":
    main()
