"""Generation throughput of many concurrent streams, against baselines measured in the same run.

    python -m bench.throughput                        # an untrained 2-layer 512 LSTM (needs the [train] extra)
    python -m bench.throughput --streams 1 16 64 256 --tokens 200
    python -m bench.throughput --api stream --streams 64   # per-step bidirectional streams
    python -m bench.throughput --api kserve --streams 64 256   # 64 (256) Triton sequences multiplexed on one ModelStreamInfer
    python -m bench.throughput --api kserve-stream-each --streams 64   # the same with a ModelStreamInfer stream per sequence
    python -m bench.throughput --workers 2 --connections 8 --streams 64

For each number of concurrent Generate streams (a client process of its own, grpc.aio), prints one JSON
line: generated tokens/s of rnnserve, of (a) a naive server — the same server with --max-batch 1, one
onnxruntime call per session step, (b) in-process onnxruntime batched at the same batch size (the
ceiling), (c) PyTorch eager in-process at the same batch size; the ratios; and whether the targets hold.

So that overhead cannot hide, every line also gives CPU time per step: the server process's (from /proc, all
its threads), onnxruntime's own for the same step in-process at the batch size the server actually ran (read
from its metrics), the difference (the server's own work beyond onnxruntime), and the client process's (a client
near 1 CPU-second per second is the bottleneck, not the server).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path

import numpy as np

from bench.common import add_model_flags, free_port, in_process_session, model_path, process_cpu_s, runtime_flags, server_process

# issue 10's targets: (api, streams) → the least ratio to the in-process ceiling; and the server's own CPU per step
TARGETS_VS_CEILING = {("generate", 64): 0.6, ("generate", 256): 0.7, ("kserve", 64): 0.4}
TARGET_OWN_CPU_US = 100.0  # server CPU per step beyond onnxruntime's, at 64 concurrent sequences


async def _tokens_per_s(target: str, streams: int, connections: int, one, stub_type=None) -> dict:
    """Runs `one(stub, i)` for every stream at once, spread over `connections` TCP connections (gRPC would
    otherwise share one, and `--workers` processes are assigned per connection); returns tokens per second,
    the steps served in all (the warm-up's too) and this client's CPU seconds."""
    import grpc

    from rnnserve.v1 import rnnserve_pb2_grpc as pb_grpc

    options = [("grpc.use_local_subchannel_pool", 1)]
    channels = [grpc.aio.insecure_channel(target, options=options) for _ in range(connections)]
    stubs = [(stub_type or pb_grpc.RnnServeStub)(channel) for channel in channels]
    try:
        warm_up = await asyncio.gather(*(one(stub, i) for i, stub in enumerate(stubs)))  # every connection
        started, cpu = time.perf_counter(), time.process_time()
        counts = await asyncio.gather(*(one(stubs[i % connections], i) for i in range(streams)))
        seconds = time.perf_counter() - started
        return {"tokens_per_s": sum(counts) / seconds, "steps": sum(counts) + sum(warm_up), "seconds": seconds,
                "client_cpu_s": time.process_time() - cpu}
    finally:
        await asyncio.gather(*(channel.close() for channel in channels))


async def _generate_all(target: str, model: str, streams: int, tokens: int, connections: int = 1) -> dict:
    """Tokens/s of `streams` concurrent greedy generations (run in a client process of its own)."""
    from rnnserve.v1 import rnnserve_pb2 as pb

    async def one(stub, i: int) -> int:
        sampling = pb.SamplingParams(temperature=0.0, max_tokens=tokens)
        count = 0
        async for piece in stub.Generate(pb.GenerateRequest(model=model, prompt=f"Stream {i}: ", sampling=sampling)):
            count += len(piece.token_ids)
        return count

    return await _tokens_per_s(target, streams, connections, one)


async def _stream_all(target: str, model: str, streams: int, tokens: int, connections: int = 1, named: bool = False) -> dict:
    """Steps/s of `streams` concurrent bidirectional streams, each sending one token and waiting for its answer;
    `named`: each on a named session of its own (what a state store writes)."""
    from rnnserve.v1 import rnnserve_pb2 as pb

    async def one(stub, i: int) -> int:
        call = stub.Stream()
        session_id = f"bench-{i}-{uuid.uuid4().hex[:8]}" if named else ""
        await call.write(pb.StreamRequest(start=pb.StreamStart(model=model, top_k=1, session_id=session_id)))
        await call.read()
        for _ in range(tokens):
            await call.write(pb.StreamRequest(text="A"))
            await call.read()
        await call.done_writing()
        return tokens

    return await _tokens_per_s(target, streams, connections, one)


def _kserve_request(model: str, sequence: int, step: int, tokens: int):
    """One token of a Triton sequence, as Triton's clients send it: raw INT64 contents, full logits back."""
    from rnnserve.inference import grpc_service_pb2 as pb

    request = pb.ModelInferRequest(model_name=model, id=str(sequence), raw_input_contents=[np.array([[65]], np.int64).tobytes()])
    request.inputs.add(name="tokens", datatype="INT64", shape=[1, 1])
    request.parameters["sequence_id"].int64_param = sequence
    request.parameters["sequence_start"].bool_param = step == 0
    request.parameters["sequence_end"].bool_param = step == tokens - 1
    return request


async def _kserve_each_all(target: str, model: str, streams: int, tokens: int, connections: int = 1) -> dict:
    """As _stream_all, over KServe's ModelStreamInfer: a stream per Triton sequence, one token per request."""
    from rnnserve.inference import grpc_service_pb2_grpc as pb_grpc

    async def one(stub, i: int) -> int:
        call = stub.ModelStreamInfer()
        for step in range(tokens):
            await call.write(_kserve_request(model, i + 1, step, tokens))
            response = await call.read()
            assert not response.error_message, response.error_message
        await call.done_writing()
        return tokens

    return await _tokens_per_s(target, streams, connections, one, pb_grpc.GRPCInferenceServiceStub)


async def _kserve_all(target: str, model: str, streams: int, tokens: int, connections: int = 1) -> dict:
    """How Triton's clients drive sequences: every sequence multiplexed on one ModelStreamInfer stream (one per
    connection), each sending its next token when the answer to its last arrives."""
    import grpc

    from rnnserve.inference import grpc_service_pb2_grpc as pb_grpc

    async def sequences(stub, first: int, count: int) -> int:
        call = stub.ModelStreamInfer()
        for sequence in range(first, first + count):
            await call.write(_kserve_request(model, sequence, 0, tokens))
        done = dict.fromkeys(range(first, first + count), 1)
        answered = 0
        while answered < count * tokens:
            response = await call.read()
            assert not response.error_message, response.error_message
            answered += 1
            sequence = int(response.infer_response.id)
            if done[sequence] < tokens:
                await call.write(_kserve_request(model, sequence, done[sequence], tokens))
                done[sequence] += 1
        await call.done_writing()
        return answered

    options = [("grpc.use_local_subchannel_pool", 1)]
    channels = [grpc.aio.insecure_channel(target, options=options) for _ in range(connections)]
    stubs = [pb_grpc.GRPCInferenceServiceStub(channel) for channel in channels]
    share = [streams // connections + (i < streams % connections) for i in range(connections)]
    try:
        warm_up = await asyncio.gather(*(sequences(stub, 1_000_000 * (i + 1), 1) for i, stub in enumerate(stubs)))
        started, cpu = time.perf_counter(), time.process_time()
        firsts = np.cumsum([1, *share[:-1]])
        counts = await asyncio.gather(*(sequences(stub, int(f), n) for stub, f, n in zip(stubs, firsts, share) if n))
        seconds = time.perf_counter() - started
        return {"tokens_per_s": sum(counts) / seconds, "steps": sum(counts) + sum(warm_up), "seconds": seconds,
                "client_cpu_s": time.process_time() - cpu}
    finally:
        await asyncio.gather(*(channel.close() for channel in channels))


def _steps_and_calls(metrics_port: int | None) -> tuple[float, float]:
    """(steps, onnxruntime calls) the server has run, from its /metrics page."""
    if metrics_port is None:
        return 0.0, 0.0
    page = urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10).read().decode()
    total = lambda name: sum(float(v) for v in re.findall(rf"^{name}{{[^}}]*}} (\S+)$", page, re.M))  # noqa: E731
    return total("nv_inference_count_total"), total("nv_inference_exec_count_total")


def served(target: str, server_pid: int, model: str, streams: int, tokens: int, api: str, connections: int,
           metrics_port: int | None = None) -> dict:
    """Tokens/s served; CPU per step of the server (from /proc) and of the client process; and the server's mean
    batch (steps per onnxruntime call, from its metrics, the warm-up left out)."""
    function = {"generate": "_generate_all", "stream": "_stream_all", "kserve": "_kserve_all", "kserve-stream-each": "_kserve_each_all"}[api]
    code = (
        f"import asyncio, json; from bench.throughput import {function}; "
        f"print(json.dumps(asyncio.run({function}({target!r}, {model!r}, {streams}, {tokens}, {min(connections, streams)}))))"
    )
    cpu, (steps, calls) = process_cpu_s(server_pid), _steps_and_calls(metrics_port)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    server_cpu_s = process_cpu_s(server_pid) - cpu
    steps_after, calls_after = _steps_and_calls(metrics_port)
    figures = json.loads(done.stdout.strip().splitlines()[-1])
    warm_up = figures["steps"] - figures["tokens_per_s"] * figures["seconds"]  # run one connection at a time, a call each
    calls_after -= warm_up / connections
    return {
        "tokens_per_s": figures["tokens_per_s"],
        "mean_batch": (steps_after - steps - warm_up) / (calls_after - calls) if calls_after > calls else float(streams),
        "server_cpu_us_per_step": server_cpu_s / figures["steps"] * 1e6,
        "client_cpu_us_per_step": figures["client_cpu_s"] / (figures["tokens_per_s"] * figures["seconds"]) * 1e6,
        "client_cpu_s_per_s": figures["client_cpu_s"] / figures["seconds"],
    }


def in_process(path: Path, batch: int, tokens: int, args) -> tuple[float, float]:
    """One onnxruntime call per step over the whole batch, state fed back by hand: the ceiling. Returns tokens/s
    and the CPU microseconds per step it took (onnxruntime's own work, all its threads)."""
    session, state = in_process_session(path, args, batch)
    step = np.full((batch, 1), 65, np.int64)
    started, cpu = time.perf_counter(), time.process_time()
    for _ in range(tokens):
        logits, *next_state = session.run(None, {"tokens": step, **state})
        state = dict(zip(state, next_state))
        step = logits[:, -1].argmax(-1)[:, None]
    return batch * tokens / (time.perf_counter() - started), (time.process_time() - cpu) / (batch * tokens) * 1e6


def torch_tokens_per_s(hidden: int, layers: int, batch: int, tokens: int) -> float | None:
    try:
        import torch

        from rnnserve.training.models import ModelConfig, RecurrentNet
    except ModuleNotFoundError:
        return None
    model = RecurrentNet(ModelConfig(256, "lstm", layers, hidden, 64)).eval()
    state = model.initial_state(batch)
    step = torch.full((batch, 1), 65)
    with torch.no_grad():
        started = time.perf_counter()
        for _ in range(tokens):
            logits, state = model(step, state)
            step = logits[:, -1].argmax(-1, keepdim=True)
    return batch * tokens / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_model_flags(parser)
    parser.add_argument("--streams", type=int, nargs="+", default=[1, 16, 64, 256], help="concurrent streams")
    parser.add_argument("--tokens", type=int, default=200, help="tokens generated per stream")
    parser.add_argument("--max-batch", type=int, default=256, help="rnnserve's --max-batch")
    parser.add_argument("--api", choices=["generate", "stream", "kserve", "kserve-stream-each"], default="generate",
                        help="generate: server-streamed generations; stream: one token per message, answered per step; "
                        "kserve: the same over KServe's ModelStreamInfer with Triton's sequence parameters, every sequence "
                        "multiplexed on one stream per connection; kserve-stream-each: a ModelStreamInfer stream per sequence")
    parser.add_argument("--workers", type=int, default=1, help="rnnserve's --workers")
    parser.add_argument("--connections", type=int, default=1,
                        help="client connections the streams are spread over (workers are assigned per connection)")
    args = parser.parse_args()

    repository, model = model_path(args)
    path = repository / model / "1" / "model.onnx"
    runtime = runtime_flags(args)
    sessions = ("--max-sessions", str(max(args.streams) + 1))
    results = {}
    workers = ("--workers", str(args.workers))
    cpu = {}
    metrics_port = free_port() if args.workers == 1 else None  # (with workers, each has its own)
    metrics = ("--metrics-port", str(metrics_port)) if metrics_port else ()
    with server_process(repository, *runtime, *sessions, *workers, *metrics, "--max-batch", str(args.max_batch)) as (target, pid):
        for streams in args.streams:
            cpu[streams] = served(target, pid, model, streams, args.tokens, args.api, args.connections, metrics_port)
            results[streams] = {"rnnserve": cpu[streams].pop("tokens_per_s")}
    with server_process(repository, *runtime, *sessions, "--max-batch", "1") as (target, pid):
        for streams in args.streams:
            results[streams]["naive_server"] = served(target, pid, model, streams, args.tokens, args.api, args.connections)["tokens_per_s"]
    for streams in args.streams:
        figures = results[streams]
        figures["in_process_onnxruntime_batched"], _ = in_process(path, streams, args.tokens, args)
        mean_batch = cpu[streams]["mean_batch"]
        _, onnxruntime_cpu_us = in_process(path, max(1, round(mean_batch)), args.tokens, args)
        if not args.repository:
            figures["pytorch_eager_batched"] = torch_tokens_per_s(args.hidden, args.layers, streams, args.tokens)
        line = {"bench": "throughput", "api": args.api, "model": model, "streams": streams, "tokens_per_stream": args.tokens}
        line["workers"], line["connections"] = args.workers, args.connections
        line["tokens_per_s"] = {k: round(v, 1) for k, v in figures.items() if v is not None}
        server_cpu_us = cpu[streams]["server_cpu_us_per_step"]
        line["mean_batch"] = round(mean_batch, 1)
        line["cpu_us_per_step"] = {
            "server": round(server_cpu_us, 1),
            "onnxruntime_in_process_at_mean_batch": round(onnxruntime_cpu_us, 1),
            "server_beyond_onnxruntime": round(server_cpu_us - onnxruntime_cpu_us, 1),
            "client": round(cpu[streams]["client_cpu_us_per_step"], 1),
        }
        line["client_cpu_s_per_s"] = round(cpu[streams]["client_cpu_s_per_s"], 2)
        line["ratio_vs_naive_server"] = round(figures["rnnserve"] / figures["naive_server"], 2)
        line["ratio_vs_in_process_batched"] = round(figures["rnnserve"] / figures["in_process_onnxruntime_batched"], 2)
        if figures.get("pytorch_eager_batched"):
            line["ratio_vs_pytorch_eager"] = round(figures["rnnserve"] / figures["pytorch_eager_batched"], 2)
        target = TARGETS_VS_CEILING.get((args.api, streams))
        if target is not None:
            line[f"target_{target}x_in_process_met"] = line["ratio_vs_in_process_batched"] >= target
        if streams == 64:
            line[f"target_own_cpu_{TARGET_OWN_CPU_US:g}us_met"] = line["cpu_us_per_step"]["server_beyond_onnxruntime"] <= TARGET_OWN_CPU_US
        if args.api == "generate" and figures.get("pytorch_eager_batched"):
            line["target_above_pytorch_eager_met"] = figures["rnnserve"] > figures["pytorch_eager_batched"]
        print(json.dumps(line), flush=True)


if __name__ == "__main__":
    main()
