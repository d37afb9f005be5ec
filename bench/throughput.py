"""Generation throughput of many concurrent streams, against baselines measured in the same run.

    python -m bench.throughput                        # an untrained 2-layer 512 LSTM (needs the [train] extra)
    python -m bench.throughput --streams 1 16 64 256 --tokens 200
    python -m bench.throughput --api stream --streams 64   # per-step bidirectional streams
    python -m bench.throughput --api kserve --streams 64   # the same over KServe's ModelStreamInfer, one sequence per stream
    python -m bench.throughput --workers 2 --connections 8 --streams 64

For each number of concurrent Generate streams (a client process of its own, grpc.aio), prints one JSON
line: generated tokens/s of rnnserve, of (a) a naive server — the same server with --max-batch 1, one
onnxruntime call per session step, (b) in-process onnxruntime batched at the same batch size (the
ceiling), (c) PyTorch eager in-process at the same batch size; the ratios; and whether the targets hold.

So that overhead cannot hide, every line also gives CPU time per step: the server process's (from /proc, all
its threads), onnxruntime's own for the same step in-process at the same batch size, the difference (the
server's own work beyond onnxruntime), and the client process's (a client near 1 CPU-second per second is the
bottleneck, not the server).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from bench.common import add_model_flags, in_process_session, model_path, process_cpu_s, runtime_flags, server_process

TARGET_VS_NAIVE = 5.0
TARGET_VS_CEILING = 0.7


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


async def _generate_all(target: str, model: str, streams: int, tokens: int, connections: int = 1) -> float:
    """Tokens/s of `streams` concurrent greedy generations (run in a client process of its own)."""
    from rnnserve.v1 import rnnserve_pb2 as pb

    async def one(stub, i: int) -> int:
        sampling = pb.SamplingParams(temperature=0.0, max_tokens=tokens)
        count = 0
        async for piece in stub.Generate(pb.GenerateRequest(model=model, prompt=f"Stream {i}: ", sampling=sampling)):
            count += len(piece.token_ids)
        return count

    return await _tokens_per_s(target, streams, connections, one)


async def _stream_all(target: str, model: str, streams: int, tokens: int, connections: int = 1) -> float:
    """Steps/s of `streams` concurrent bidirectional streams, each sending one token and waiting for its answer."""
    from rnnserve.v1 import rnnserve_pb2 as pb

    async def one(stub, i: int) -> int:
        call = stub.Stream()
        await call.write(pb.StreamRequest(start=pb.StreamStart(model=model, top_k=1)))
        await call.read()
        for _ in range(tokens):
            await call.write(pb.StreamRequest(text="A"))
            await call.read()
        await call.done_writing()
        return tokens

    return await _tokens_per_s(target, streams, connections, one)


async def _kserve_all(target: str, model: str, streams: int, tokens: int, connections: int = 1) -> float:
    """As _stream_all, over KServe's ModelStreamInfer: a Triton sequence per stream, one token per request."""
    from rnnserve.inference import grpc_service_pb2 as pb
    from rnnserve.inference import grpc_service_pb2_grpc as pb_grpc

    async def one(stub, i: int) -> int:
        call = stub.ModelStreamInfer()
        for step in range(tokens):
            request = pb.ModelInferRequest(model_name=model, raw_input_contents=[np.array([[65]], np.int64).tobytes()])
            request.inputs.add(name="tokens", datatype="INT64", shape=[1, 1])
            request.parameters["sequence_id"].int64_param = i + 1
            request.parameters["sequence_start"].bool_param = step == 0
            request.parameters["sequence_end"].bool_param = step == tokens - 1
            await call.write(request)
            response = await call.read()
            assert not response.error_message, response.error_message
        await call.done_writing()
        return tokens

    return await _tokens_per_s(target, streams, connections, one, pb_grpc.GRPCInferenceServiceStub)


def served(target: str, server_pid: int, model: str, streams: int, tokens: int, api: str, connections: int) -> dict:
    """Tokens/s served, and CPU seconds per step of the server (from /proc) and of the client process."""
    function = {"generate": "_generate_all", "stream": "_stream_all", "kserve": "_kserve_all"}[api]
    code = (
        f"import asyncio, json; from bench.throughput import {function}; "
        f"print(json.dumps(asyncio.run({function}({target!r}, {model!r}, {streams}, {tokens}, {min(connections, streams)}))))"
    )
    cpu = process_cpu_s(server_pid)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    server_cpu_s = process_cpu_s(server_pid) - cpu
    figures = json.loads(done.stdout.strip().splitlines()[-1])
    return {
        "tokens_per_s": figures["tokens_per_s"],
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

        from training.models import ModelConfig, RecurrentNet
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
    parser.add_argument("--api", choices=["generate", "stream", "kserve"], default="generate",
                        help="generate: server-streamed generations; stream: one token per message, answered per step; "
                        "kserve: the same over KServe's ModelStreamInfer with Triton's sequence parameters")
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
    with server_process(repository, *runtime, *sessions, *workers, "--max-batch", str(args.max_batch)) as (target, pid):
        for streams in args.streams:
            cpu[streams] = served(target, pid, model, streams, args.tokens, args.api, args.connections)
            results[streams] = {"rnnserve": cpu[streams].pop("tokens_per_s")}
    with server_process(repository, *runtime, *sessions, "--max-batch", "1") as (target, pid):
        for streams in args.streams:
            results[streams]["naive_server"] = served(target, pid, model, streams, args.tokens, args.api, args.connections)["tokens_per_s"]
    for streams in args.streams:
        figures = results[streams]
        figures["in_process_onnxruntime_batched"], onnxruntime_cpu_us = in_process(path, streams, args.tokens, args)
        if not args.repository:
            figures["pytorch_eager_batched"] = torch_tokens_per_s(args.hidden, args.layers, streams, args.tokens)
        line = {"bench": "throughput", "api": args.api, "model": model, "streams": streams, "tokens_per_stream": args.tokens}
        line["workers"], line["connections"] = args.workers, args.connections
        line["tokens_per_s"] = {k: round(v, 1) for k, v in figures.items() if v is not None}
        server_cpu_us = cpu[streams]["server_cpu_us_per_step"]
        line["cpu_us_per_step"] = {
            "server": round(server_cpu_us, 1),
            "onnxruntime_in_process": round(onnxruntime_cpu_us, 1),
            "server_beyond_onnxruntime": round(server_cpu_us - onnxruntime_cpu_us, 1),
            "client": round(cpu[streams]["client_cpu_us_per_step"], 1),
        }
        line["client_cpu_s_per_s"] = round(cpu[streams]["client_cpu_s_per_s"], 2)
        line["ratio_vs_naive_server"] = round(figures["rnnserve"] / figures["naive_server"], 2)
        line["ratio_vs_in_process_batched"] = round(figures["rnnserve"] / figures["in_process_onnxruntime_batched"], 2)
        if figures.get("pytorch_eager_batched"):
            line["ratio_vs_pytorch_eager"] = round(figures["rnnserve"] / figures["pytorch_eager_batched"], 2)
        if streams == 64:
            line["target_5x_naive_met"] = line["ratio_vs_naive_server"] >= TARGET_VS_NAIVE
            line["target_0.7x_in_process_met"] = line["ratio_vs_in_process_batched"] >= TARGET_VS_CEILING
        print(json.dumps(line), flush=True)


if __name__ == "__main__":
    main()
