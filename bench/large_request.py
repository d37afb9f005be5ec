"""What the largest request the limits allow costs everyone else: one stream's per-step latency (one token per
message) unloaded, then while a stateless KServe ModelInfer of rows × steps = --max-input-tokens runs again and
again; and the server's memory before and after.

    python -m bench.large_request                        # an untrained 2-layer 512 LSTM (needs the [train] extra)
    python -m bench.large_request --rows 64 --max-input-tokens 8192

The engine runs a long input in pieces of about 2 ms while others are served (server/pieces.py), split by rows and
by steps, so the stream waits for a piece, not for the whole request. Prints one JSON line: p50 and p99 of both
runs, the ratio of the p99s (target: at most 3×), the large requests answered meanwhile, and the server's resident
memory before, at its peak and after, which must be within 2 answers + 16 MB of before: what the requests took goes
back.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import threading
import time
from pathlib import Path

import grpc
import numpy as np

from bench.common import add_model_flags, model_path, runtime_flags, server_process
from bench.step_latency import _server_steps, percentiles
from rnnserve.inference import grpc_service_pb2 as kserve_pb
from rnnserve.inference import grpc_service_pb2_grpc as kserve_grpc

TARGET_P99_RATIO = 3.0
# what the server may keep after the large requests: the answers' buffers of the last one or two, and allocator slack
RSS_BOUND_ANSWERS, RSS_BOUND_SLACK_MB = 2, 16


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def large_requests(target: str, model: str, rows: int, steps: int, stop: threading.Event, pid: int, seen: dict) -> None:
    tokens = np.full((rows, steps), 65, np.int64)
    message = kserve_pb.ModelInferRequest(model_name=model, raw_input_contents=[tokens.tobytes()])
    message.inputs.add(name="tokens", datatype="INT64", shape=[rows, steps])
    with grpc.insecure_channel(target, options=[("grpc.max_receive_message_length", 64 * 2**20)]) as channel:
        stub = kserve_grpc.GRPCInferenceServiceStub(channel)
        while not stop.is_set():
            seen["answer_mb"] = stub.ModelInfer(message, timeout=300).ByteSize() / 2**20
            seen["answered"] += 1
            seen["peak_mb"] = max(seen["peak_mb"], rss_mb(pid))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_model_flags(parser)
    parser.add_argument("--steps", type=int, default=300, help="one-token messages of the measured stream, per run")
    parser.add_argument("--rows", type=int, default=64, help="rows of the large request (its steps: the limit / rows)")
    parser.add_argument("--max-input-tokens", type=int, default=8192, help="the server's --max-input-tokens")
    args = parser.parse_args()
    repository, model = model_path(args)
    flags = (*runtime_flags(args), "--max-input-tokens", str(args.max_input_tokens), "--max-sessions", str(args.rows + 8),
             "--max-message-bytes", str(64 * 2**20))
    with server_process(repository, *flags) as (target, pid):
        asyncio.run(_server_steps(target, model, 50, "A"))  # warm up
        before_mb = rss_mb(pid)
        unloaded = asyncio.run(_server_steps(target, model, args.steps, "A"))
        stop, seen = threading.Event(), {"answered": 0, "peak_mb": before_mb, "answer_mb": 0.0}
        loader = threading.Thread(
            target=large_requests, args=(target, model, args.rows, args.max_input_tokens // args.rows, stop, pid, seen)
        )
        loader.start()
        time.sleep(0.5)  # the first large request is running
        loaded = asyncio.run(_server_steps(target, model, args.steps, "A"))
        stop.set()
        loader.join()
        time.sleep(0.5)
        after_mb = rss_mb(pid)
    ratio = percentiles(loaded)["p99_ms"] / percentiles(unloaded)["p99_ms"]
    bound_mb = before_mb + RSS_BOUND_ANSWERS * seen["answer_mb"] + RSS_BOUND_SLACK_MB
    print(json.dumps({
        "bench": "large_request", "model": model, "large_request": [args.rows, args.max_input_tokens // args.rows],
        "unloaded": percentiles(unloaded), "while_large_requests_run": percentiles(loaded),
        "large_requests_answered": seen["answered"], "ratio_p99": round(ratio, 2),
        f"target_p99_{TARGET_P99_RATIO:g}x_met": ratio <= TARGET_P99_RATIO,
        "server_rss_mb": {"before": round(before_mb), "peak": round(seen["peak_mb"]), "after": round(after_mb)},
        "answer_mb": round(seen["answer_mb"], 1), "rss_after_bound_mb": round(bound_mb), "rss_after_within_bound": after_mb <= bound_mb,
    }))


if __name__ == "__main__":
    main()
