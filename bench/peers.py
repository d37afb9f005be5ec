"""rnnserve side by side with a real Triton, both driven by Triton's own tools, against the in-process floor.

    python -m bench.peers --peers /opt/peers          # the venv below; an untrained 2-layer 512 LSTM
    python -m bench.peers --peers /opt/peers --concurrency 1 8 --sequences 64

It installs nothing. The peers live in a virtual environment of their own (Triton's wheels pin their own
numpy and protobuf), and perf_analyzer needs one Debian library:

    apt-get install libb64-0d
    python3.11 -m venv /opt/peers
    /opt/peers/bin/pip install nvidia-pytriton==0.7.0 "tritonclient[all]==2.51.0" nvidia-cuda-runtime-cu12 onnxruntime numpy

`nvidia-pytriton` ships a real `tritonserver` 2.51 with its python backend; `tritonclient[all]` ships the
`perf_analyzer` binary, which wants `libcudart.so.12` (from `nvidia-cuda-runtime-cu12`) but runs without a GPU.
Whatever of it is missing is skipped with the reason, not failed.

The same ONNX file is served by both: by rnnserve as it is, and by Triton under its sequence batcher (strategy
`oldest`) through bench/triton_model.py, a python-backend model that keeps each sequence's state by correlation
id and runs each batch as one onnxruntime call — what a Triton user would write for a stateful step graph.
One token per request, the full logits back. rnnserve is measured twice: on --port (grpc.aio) and on --native-port
(gRPC's C++ server carrying the messages; skipped, with the reason, where it cannot be built). It measures, each in a
fresh server process:
- perf_analyzer `--streaming --sequence-length 50` at each `--concurrency` (a stream per sequence);
- tritonclient with every sequence multiplexed on one ModelStreamInfer stream (how Triton's clients drive
  sequences), for each of `--sequences`;
- the same multiplexed load against an echo server (answers every request at once with logits of the same size,
  nothing else): the transport's own cost;
- the in-process floor: onnxruntime at batch 1 back to back and after 1 ms idle (which doubles it on a shared
  machine, and is how a server's steps come), and batched at each size.
It prints one JSON line per measurement, and the last line holds the ratios and which targets hold. CPU per step
is each server's whole process tree (Triton's python-backend stub included) from /proc, divided by the steps the
server itself counted (ModelStatistics); for --native-port, split by thread as well (`bench.common.thread_cpu_s`: the
event loop, the engine with its onnxruntime calls, onnxruntime's pool, our writer, gRPC's threads), so what a change
moves shows where. A peer that dies under a load is recorded as a crash, not a number.

Where the load generator runs: by default wherever the kernel puts it, on the servers' cores. `--server-cpus` and
`--client-cpus` (Linux CPU lists, `0-1,4`) place them apart, so a server's figures are its own and not what a client
took from it: every server (and the in-process floor) on the first, perf_analyzer and tritonclient on the second;
without `--threads`, onnxruntime gets a thread per server CPU in both servers. On a 16-core machine,
`--server-cpus 0-1 --client-cpus 2-5` gives each server the two cores of the figures in docs/performance.md.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import json
import os
import subprocess
import sys
import tempfile
import time
from functools import partial
from pathlib import Path

import numpy as np

from bench.common import (
    add_model_flags,
    cpu_list,
    cpu_text,
    model_path,
    native_port,
    process_cpu_s,
    running_on,
    server_process,
    thread_cpu_s,
)
from bench.peer_servers import BENCH_DIR, Peers, echo_process, main_output, triton_process, triton_repository
from bench.step_latency import in_process_steps, percentiles
from bench.throughput import in_process

SEQUENCE_LENGTH = 50
TARGET_LATENCY = 0.8  # rnnserve's p50 at concurrency 1, against Triton's
TARGET_THROUGHPUT = 1.5  # against Triton's, wherever Triton survives
TARGET_CPU = 0.7  # server CPU per step, against Triton's
NATIVE = "rnnserve_native"  # rnnserve through --native-port
TARGET_FLOOR_256 = 0.3  # at 256 concurrent sequences, against in-process onnxruntime batched at 256


def steps_served(target: str, model: str) -> np.ndarray:
    """(steps, batches) the server has run for `model`, as it counts them: Triton's statistics, which rnnserve
    keeps the same way. Zeros without a model (the echo server keeps none)."""
    import tritonclient.grpc as triton_grpc

    if not model:
        return np.zeros(2)
    with contextlib.closing(triton_grpc.InferenceServerClient(target)) as client:
        stats = client.get_inference_statistics(model).model_stats
    return np.array([sum(s.inference_count for s in stats), sum(s.execution_count for s in stats)], float)


class Server:
    """A server under measurement: its address, its process tree's CPU, and whether it is still alive."""

    def __init__(self, name: str, target: str, pid: int, alive=lambda: True):
        self.name, self.target, self.pid, self.alive = name, target, pid, alive

    def measure(self, model: str, load) -> dict:
        """Runs `load()` (returns a dict of figures) and adds the server CPU per step it counted and the CPUs it may
        run on, or a crash."""
        cpu, counts = process_cpu_s(self.pid), steps_served(self.target, model)
        cpus = cpu_text(os.sched_getaffinity(self.pid))
        threads = thread_cpu_s(self.pid) if self.name == NATIVE else None
        try:
            figures = load()
        except subprocess.CalledProcessError as err:
            figures = {"error": (err.stderr or err.stdout or "")[-400:].strip()}
        if not self.alive():
            return {"crashed": True, **{k: v for k, v in figures.items() if k == "error"}}
        if "error" in figures:
            return figures
        # the threads read before the process's total, as they were read after it at the start: their sum stays within it
        threads_after = thread_cpu_s(self.pid) if threads is not None else None
        server_cpu_s = process_cpu_s(self.pid) - cpu
        steps, batches = steps_served(self.target, model) - counts if model else (figures["requests"], 0)
        figures["server_cpu_us_per_step"] = round(float(server_cpu_s / max(steps, 1) * 1e6), 1)
        figures["server_cpus"] = cpus
        if threads is not None:
            figures["server_cpu_us_per_step_by_thread"] = {
                kind: round((threads_after[kind] - threads[kind]) / max(steps, 1) * 1e6, 1) for kind in threads}
        if batches:
            figures["mean_batch"] = round(float(steps / batches), 1)
        return figures


def watched(command: list, alive, cpus: set[int] | None = None, timeout_s: float = 600, **options) -> str:
    """Runs a load generator (on `cpus`, if given) to its end and returns what it printed; stops it if the server
    under load dies (perf_analyzer would wait for its answers forever). A failure raises CalledProcessError."""
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        with running_on(cpus):
            process = subprocess.Popen(command, stdout=out, stderr=err, text=True, **options)
        deadline = time.monotonic() + timeout_s
        while process.poll() is None:
            if not alive() or time.monotonic() > deadline:
                process.kill()
            time.sleep(0.2)
        out.seek(0), err.seek(0)
        printed, complaint = out.read(), err.read()
    if process.returncode:
        raise subprocess.CalledProcessError(process.returncode, command, printed, complaint)
    return printed


def perf_analyzer(peers: Peers, target: str, model: str, concurrency: int, interval_ms: int, alive=lambda: True,
                  cpus: set[int] | None = None) -> dict:
    """perf_analyzer's throughput and latency percentiles for `concurrency` sequences, each on a stream of its own."""
    with tempfile.TemporaryDirectory() as scratch:
        report = Path(scratch) / "report.csv"
        watched(
            [peers.perf_analyzer, "-m", model, "-i", "grpc", "-u", target, "--streaming", "--sequence-length", str(SEQUENCE_LENGTH),
             "--concurrency-range", str(concurrency), "--shape", "tokens:1", "--input-data", "zero",
             "--measurement-interval", str(interval_ms), "--stability-percentage", "40", "--max-trials", "10", "-f", str(report)],
            alive, cpus, env=peers.perf_env(),
        )
        with report.open() as table:
            row = next(csv.DictReader(table))
    return {
        "infer_per_s": round(float(row["Inferences/Second"]), 1),
        "p50_ms": round(int(row["p50 latency"]) / 1e3, 3),
        "p99_ms": round(int(row["p99 latency"]) / 1e3, 3),
    }


def multiplexed(target: str, model: str, sequences: int, steps: int, answer: str, alive=lambda: True,
                cpus: set[int] | None = None) -> dict:
    """tritonclient, every sequence on one ModelStreamInfer stream, each sending its next token when the answer
    to its last arrives; in a client process of its own. Steps/s, the client's CPU per step and the CPUs it ran on."""
    code = f"from bench.peers import _multiplexed; _multiplexed({target!r}, {model!r}, {sequences}, {steps}, {answer!r})"
    return json.loads(watched([sys.executable, "-c", code], alive, cpus, cwd=BENCH_DIR.parent).strip().splitlines()[-1])


def _multiplexed(target: str, model: str, sequences: int, steps: int, answer: str) -> None:
    import threading

    import tritonclient.grpc as triton_grpc

    token = np.zeros((1, 1), np.int64)
    client = triton_grpc.InferenceServerClient(target)
    sent, answered, failures, finished = {}, [0], [], threading.Event()

    def send(sequence: int) -> None:
        step = sent.get(sequence, 0)
        sent[sequence] = step + 1
        tokens = triton_grpc.InferInput("tokens", [1, 1], "INT64")
        tokens.set_data_from_numpy(token)
        client.async_stream_infer(model, [tokens], request_id=str(sequence), sequence_id=sequence,
                                  sequence_start=step == 0, sequence_end=step == steps - 1,
                                  outputs=[triton_grpc.InferRequestedOutput(answer)])

    def on_answer(result, error) -> None:
        if error is not None:
            failures.append(str(error))
            finished.set()
            return
        answered[0] += 1
        sequence = int(result.get_response().id)
        if sent[sequence] < steps:
            send(sequence)
        elif answered[0] == sequences * steps:
            finished.set()

    client.start_stream(callback=on_answer)
    started, cpu = time.perf_counter(), time.process_time()
    for sequence in range(1, sequences + 1):
        send(sequence)
    finished.wait(600)
    seconds = time.perf_counter() - started
    client.stop_stream()
    if failures or answered[0] < sequences * steps:
        raise SystemExit(f"{answered[0]} of {sequences * steps} answered: {failures[:1]}")
    print(json.dumps({"steps_per_s": round(answered[0] / seconds, 1), "requests": answered[0],
                      "client_cpu_us_per_step": round((time.process_time() - cpu) / answered[0] * 1e6, 1),
                      "client_cpus": cpu_text(os.sched_getaffinity(0))}))


def measure_both(peers: Peers, repository: Path, model: str, args, triton_missing: str | None, perf_missing: str | None,
                 native_missing: str | None):
    """{load: {server: figures}} for every load, each server in a fresh process per load (so a crash costs
    only its own figure): rnnserve on --port (grpc.aio), on --native-port (gRPC's C++ server), and Triton."""
    onnx = repository / model / "1" / "model.onnx"
    max_batch = max([*args.concurrency, *args.sequences])
    answer, vocabulary = main_output(onnx)
    loads = [(f"perf_analyzer_c{c}", "perf", c) for c in args.concurrency] if not perf_missing else []
    loads += [(f"multiplexed_{n}", "multiplexed", n) for n in args.sequences]
    results: dict[str, dict] = {}
    scratch = tempfile.TemporaryDirectory(prefix="rnnserve-peers-")
    triton_folders = None if triton_missing else triton_repository(peers, Path(scratch.name), onnx, model, max_batch, args.threads)

    def run(server: Server, kind: str, n: int) -> dict:
        if kind == "perf":
            load = partial(perf_analyzer, peers, server.target, model, n, args.interval_ms, server.alive, args.client_cpus)
            return server.measure(model, load)
        load = partial(multiplexed, server.target, model, n, args.steps, answer, server.alive, args.client_cpus)
        return server.measure("" if server.name == "echo" else model, load)

    flags = ("--threads", str(args.threads), "--max-batch", str(max_batch), "--max-sessions", str(2 * max_batch + 8))
    for name, kind, n in loads:
        results[name] = {}
        with server_process(repository, *flags) as (target, pid):
            results[name]["rnnserve"] = run(Server("rnnserve", target, pid), kind, n)
        if native_missing:
            results[name][NATIVE] = {"skipped": native_missing}
        else:
            native_flags, native_target, _ = native_port()
            with server_process(repository, *flags, *native_flags) as (_, pid):
                results[name][NATIVE] = run(Server(NATIVE, native_target, pid), kind, n)
        if triton_missing:
            results[name]["triton"] = {"skipped": triton_missing}
        else:
            try:
                with triton_process(peers, *triton_folders) as (target, process):
                    results[name]["triton"] = run(Server("triton", target, process.pid, lambda: process.poll() is None), kind, n)
            except RuntimeError as err:
                results[name]["triton"] = {"crashed": True, "error": str(err)[-400:]}
        print(json.dumps({"bench": "peers", "load": name, **results[name]}), flush=True)
    if args.sequences:
        with echo_process(answer, vocabulary) as (target, pid):
            results["echo"] = {"multiplexed": run(Server("echo", target, pid), "multiplexed", args.sequences[0])}
        print(json.dumps({"bench": "peers", "load": f"echo_multiplexed_{args.sequences[0]}", **results["echo"]}), flush=True)
    scratch.cleanup()
    return results


def ratio(a, b) -> float | None:
    return round(a / b, 2) if a is not None and b else None


def summary(results: dict, floor: dict, onnxruntime_cpu_us: dict, args) -> dict:
    """The ratios the targets are about, and whether each holds (None where the peer crashed or was skipped), for
    rnnserve's --port and its --native-port."""
    line: dict = {"bench": "peers_summary", "in_process_floor": floor}
    for ours in ("rnnserve", NATIVE):
        line[ours] = _against_triton(results, floor, onnxruntime_cpu_us, args, ours)
    return line


def _against_triton(results: dict, floor: dict, onnxruntime_cpu_us: dict, args, ours: str) -> dict:
    figure = lambda load, server, key: results.get(load, {}).get(server, {}).get(key)  # noqa: E731
    line: dict = {}
    targets: dict = {}
    for c in args.concurrency:
        load = f"perf_analyzer_c{c}"
        throughput = ratio(figure(load, ours, "infer_per_s"), figure(load, "triton", "infer_per_s"))
        cpu = ratio(figure(load, ours, "server_cpu_us_per_step"), figure(load, "triton", "server_cpu_us_per_step"))
        line[load] = {"throughput_vs_triton": throughput, "cpu_per_step_vs_triton": cpu,
                      "p50_vs_triton": ratio(figure(load, ours, "p50_ms"), figure(load, "triton", "p50_ms")),
                      "triton_crashed": bool(figure(load, "triton", "crashed"))}
        if c == 1 and line[load]["p50_vs_triton"] is not None:
            targets[f"c1_p50_{TARGET_LATENCY}x_triton"] = line[load]["p50_vs_triton"] <= TARGET_LATENCY
        if throughput is not None:
            targets[f"c{c}_throughput_{TARGET_THROUGHPUT}x_triton"] = throughput >= TARGET_THROUGHPUT
            targets[f"c{c}_cpu_{TARGET_CPU}x_triton"] = cpu is not None and cpu <= TARGET_CPU
        batched = floor.get(f"batched_{c}_steps_per_s")
        if batched and figure(load, ours, "infer_per_s"):
            line[load]["throughput_vs_floor"] = ratio(figure(load, ours, "infer_per_s"), batched)
            if c == 256:
                targets[f"c256_{TARGET_FLOOR_256}x_floor"] = line[load]["throughput_vs_floor"] >= TARGET_FLOOR_256
    for n in args.sequences:
        load = f"multiplexed_{n}"
        throughput = ratio(figure(load, ours, "steps_per_s"), figure(load, "triton", "steps_per_s"))
        cpu = ratio(figure(load, ours, "server_cpu_us_per_step"), figure(load, "triton", "server_cpu_us_per_step"))
        line[load] = {"throughput_vs_triton": throughput, "cpu_per_step_vs_triton": cpu, "triton_crashed": bool(figure(load, "triton", "crashed"))}
        if throughput is not None:
            targets[f"multiplexed_{n}_throughput_{TARGET_THROUGHPUT}x_triton"] = throughput >= TARGET_THROUGHPUT
            targets[f"multiplexed_{n}_cpu_{TARGET_CPU}x_triton"] = cpu is not None and cpu <= TARGET_CPU
    echo = results.get("echo", {}).get("multiplexed", {}).get("server_cpu_us_per_step")
    n = args.sequences[0] if args.sequences else None
    mine = figure(f"multiplexed_{n}", ours, "server_cpu_us_per_step")
    if echo and mine and (n, ours) in onnxruntime_cpu_us:
        beyond = round(mine - onnxruntime_cpu_us[n, ours], 1)
        line[f"multiplexed_{n}_own_cpu_us"] = {"server": mine, "onnxruntime_in_process_at_mean_batch": onnxruntime_cpu_us[n, ours],
                                               "beyond_onnxruntime": beyond, "echo_server": echo}
        targets[f"multiplexed_{n}_beyond_onnxruntime_within_echo"] = beyond <= echo
    line["targets_met"] = targets
    return line


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_model_flags(parser)
    parser.add_argument("--peers", type=Path, default=Path(os.environ.get("RNNSERVE_PEERS", "/opt/peers")),
                        help="the peers' virtual environment (see above; default $RNNSERVE_PEERS or /opt/peers)")
    parser.add_argument("--concurrency", type=int, nargs="*", default=[1, 8, 64, 256], help="perf_analyzer's concurrencies")
    parser.add_argument("--sequences", type=int, nargs="*", default=[64, 256], help="sequences multiplexed on one stream")
    parser.add_argument("--steps", type=int, default=100, help="steps per multiplexed sequence")
    parser.add_argument("--interval-ms", type=int, default=3000, help="perf_analyzer's --measurement-interval")
    parser.add_argument("--without-triton", action="store_true", help="rnnserve and the echo only (a change of ours, before and after)")
    parser.add_argument("--server-cpus", type=cpu_list, help="CPUs for every server and the in-process floor, e.g. 0-1 "
                        "(default: wherever the kernel puts them); without --threads, onnxruntime gets one thread per CPU")
    parser.add_argument("--client-cpus", type=cpu_list, help="CPUs for perf_analyzer and tritonclient, e.g. 2-5 (default: "
                        "wherever the kernel puts them, on the servers' cores)")
    args = parser.parse_args()
    if args.device != "cpu":
        raise SystemExit("bench.peers serves on CPU (the peer's python backend runs onnxruntime's CPU provider)")
    if args.server_cpus:  # the servers, the echo and the floor start from this thread, and keep its CPUs
        os.sched_setaffinity(0, args.server_cpus)
        args.threads = args.threads or len(args.server_cpus)
    here = os.sched_getaffinity(0)
    print(json.dumps({"bench": "peers", "server_cpus": cpu_text(here), "client_cpus": cpu_text(args.client_cpus or here),
                      "onnxruntime_threads": args.threads}), flush=True)

    peers = Peers(args.peers)
    triton_missing, perf_missing = peers.missing_triton(), peers.missing_perf_analyzer()
    if args.without_triton:
        triton_missing = "--without-triton"
    for what, missing in (("Triton", triton_missing), ("perf_analyzer", perf_missing)):
        if missing:
            print(json.dumps({"bench": "peers", "skipped": what, "why": missing}), flush=True)
    repository, model = model_path(args)
    native_missing = native_port()[2]
    if native_missing:
        print(json.dumps({"bench": "peers", "skipped": "rnnserve --native-port", "why": native_missing}), flush=True)
    results = measure_both(peers, repository, model, args, triton_missing, perf_missing, native_missing)

    onnx = repository / model / "1" / "model.onnx"
    floor = {"batch_1_p50_ms": percentiles(in_process_steps(onnx, 1000, args))["p50_ms"],
             "batch_1_after_1ms_idle_p50_ms": percentiles(in_process_steps(onnx, 300, args, idle_s=0.001))["p50_ms"]}
    for n in sorted({*args.concurrency, *args.sequences}):
        floor[f"batched_{n}_steps_per_s"] = round(in_process(onnx, n, max(20, 2000 // n), args)[0], 1)
    onnxruntime_cpu_us = {}  # onnxruntime's own CPU per step at the batch rnnserve ran, for its multiplexed loads
    for n in args.sequences:
        for ours in ("rnnserve", NATIVE):
            mean_batch = results[f"multiplexed_{n}"][ours].get("mean_batch")
            if mean_batch:
                batch = max(1, round(mean_batch))
                onnxruntime_cpu_us[n, ours] = round(in_process(onnx, batch, max(20, 4000 // batch), args)[1], 1)
    print(json.dumps(summary(results, floor, onnxruntime_cpu_us, args)), flush=True)


if __name__ == "__main__":
    main()
