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

from bench.common import add_model_flags, in_process_session, model_path, runtime_flags, server_process

TARGET_VS_NAIVE = 5.0
TARGET_VS_CEILING = 0.7


async def _tokens_per_s(target: str, streams: int, connections: int, one, stub_type=None) -> float:
    """Runs `one(stub, i)` for every stream at once, spread over `connections` TCP connections (gRPC would
    otherwise share one, and `--workers` processes are assigned per connection); returns tokens per second."""
    import grpc

    from rnnserve.v1 import rnnserve_pb2_grpc as pb_grpc

    options = [("grpc.use_local_subchannel_pool", 1)]
    channels = [grpc.aio.insecure_channel(target, options=options) for _ in range(connections)]
    stubs = [(stub_type or pb_grpc.RnnServeStub)(channel) for channel in channels]
    try:
        await asyncio.gather(*(one(stub, i) for i, stub in enumerate(stubs)))  # warm up every connection
        started = time.perf_counter()
        counts = await asyncio.gather(*(one(stubs[i % connections], i) for i in range(streams)))
        return sum(counts) / (time.perf_counter() - started)
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


def served_tokens_per_s(target: str, model: str, streams: int, tokens: int, api: str, connections: int) -> float:
    function = {"generate": "_generate_all", "stream": "_stream_all", "kserve": "_kserve_all"}[api]
    code = (
        f"import asyncio, sys; from bench.throughput import {function}; "
        f"print(asyncio.run({function}({target!r}, {model!r}, {streams}, {tokens}, {min(connections, streams)})))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return float(done.stdout.strip().splitlines()[-1])


def in_process_tokens_per_s(path: Path, batch: int, tokens: int, args) -> float:
    """One onnxruntime call per step over the whole batch, state fed back by hand: the ceiling."""
    session, state = in_process_session(path, args, batch)
    step = np.full((batch, 1), 65, np.int64)
    started = time.perf_counter()
    for _ in range(tokens):
        logits, *next_state = session.run(None, {"tokens": step, **state})
        state = dict(zip(state, next_state))
        step = logits[:, -1].argmax(-1)[:, None]
    return batch * tokens / (time.perf_counter() - started)


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
    with server_process(repository, *runtime, *sessions, *workers, "--max-batch", str(args.max_batch)) as (target, _):
        for streams in args.streams:
            results[streams] = {"rnnserve": served_tokens_per_s(target, model, streams, args.tokens, args.api, args.connections)}
    with server_process(repository, *runtime, *sessions, "--max-batch", "1") as (target, _):
        for streams in args.streams:
            results[streams]["naive_server"] = served_tokens_per_s(
                target, model, streams, args.tokens, args.api, args.connections
            )
    for streams in args.streams:
        figures = results[streams]
        figures["in_process_onnxruntime_batched"] = in_process_tokens_per_s(path, streams, args.tokens, args)
        if not args.repository:
            figures["pytorch_eager_batched"] = torch_tokens_per_s(args.hidden, args.layers, streams, args.tokens)
        line = {"bench": "throughput", "api": args.api, "model": model, "streams": streams, "tokens_per_stream": args.tokens}
        line["workers"], line["connections"] = args.workers, args.connections
        line["tokens_per_s"] = {k: round(v, 1) for k, v in figures.items() if v is not None}
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
