"""What every benchmark shares: a model to measure, a server in its own process, the CPUs processes run on, the
in-process baseline."""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import onnxruntime as ort


def add_model_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--repository", help="model repository (default: export an untrained model to a temp dir)")
    parser.add_argument("--model", default="bench", help="model name in the repository")
    parser.add_argument("--hidden", type=int, default=512, help="hidden size of the untrained model")
    parser.add_argument("--layers", type=int, default=2, help="layers of the untrained model")
    parser.add_argument("--threads", type=int, default=0, help="onnxruntime intra-op threads (0: its default)")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N, for the server and the in-process baselines")


def runtime_flags(args) -> tuple[str, ...]:
    """The server flags that must match the in-process baselines."""
    return ("--threads", str(args.threads), "--device", args.device)


def model_path(args) -> tuple[Path, str]:
    """(repository, model name); without --repository, an untrained LSTM: speed does not depend on weights."""
    if args.repository:
        return Path(args.repository), args.model
    import torch

    from rnnserve.export.exporter import export_model
    from rnnserve.training.models import ModelConfig, RecurrentNet

    repository = Path(tempfile.mkdtemp(prefix="rnnserve-bench-"))
    torch.manual_seed(0)
    model = RecurrentNet(ModelConfig(256, "lstm", args.layers, args.hidden, 64))
    export_model(model, {"kind": "byte"}, {}, repository / "bench" / "1" / "model.onnx")
    return repository, "bench"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def native_port() -> tuple[tuple[str, ...], str | None, str | None]:
    """(server flags, target, why not): a free --native-port and its address where the native front end can be
    built here, else no flags, no target and the reason."""
    from rnnserve.server.native_front import unavailable

    if why := unavailable():
        return (), None, why
    port = free_port()
    return ("--native-port", str(port)), f"127.0.0.1:{port}", None


@contextlib.contextmanager
def server_process(repository: Path, *flags: str):
    """`rnnserve serve` in its own process (or processes, with --workers) on a free port.
    Yields (address, pid of the process that serves it first)."""
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "rnnserve", "serve", "--repository", str(repository), "--port", str(port), *flags],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    try:
        pattern = re.compile(r"listening on (\S+:\d+) \(pid (\d+)\)")
        target, pid = next(m.groups() for line in process.stdout if (m := pattern.search(line)))
        yield target, int(pid)
    finally:
        process.terminate()
        process.wait(30)


def cpu_list(text: str) -> set[int]:
    """argparse's type for a Linux CPU list (`0-1,4`), every CPU of it one this process may run on."""
    cpus: set[int] = set()
    for part in text.split(","):
        first, dash, last = part.partition("-")
        try:
            span = range(int(first), int(last if dash else first) + 1)
        except ValueError:
            span = range(0)
        if not span:
            raise argparse.ArgumentTypeError(f"{text!r} is not a CPU list such as 0-1,4")
        cpus.update(span)
    allowed = os.sched_getaffinity(0)
    if not cpus <= allowed:
        raise argparse.ArgumentTypeError(f"{text!r}: this process may run on CPUs {cpu_text(allowed)} only")
    return cpus


def cpu_text(cpus) -> str:
    return ",".join(map(str, sorted(cpus)))


@contextlib.contextmanager
def running_on(cpus: set[int] | None):
    """Processes started inside run on `cpus` (a child keeps the CPUs of the thread that started it); None: where
    this process runs."""
    if cpus is None:
        yield
        return
    before = os.sched_getaffinity(0)
    os.sched_setaffinity(0, cpus)
    try:
        yield
    finally:
        os.sched_setaffinity(0, before)


def _cpu_s(stat: Path) -> float:
    """User + system CPU seconds from a /proc stat file (a process's, every thread; or one thread's)."""
    fields = stat.read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime, stime (fields 14 and 15 of stat)


def process_cpu_s(pid: int) -> float:
    """CPU seconds (user + system, every thread) of a process and of every process under it, from /proc."""
    total = 0.0
    with contextlib.suppress(FileNotFoundError, ProcessLookupError):
        total += _cpu_s(Path(f"/proc/{pid}/stat"))
        for task in Path(f"/proc/{pid}/task").iterdir():
            for child in (task / "children").read_text().split():
                total += process_cpu_s(int(child))
    return total


THREADS = ("event_loop", "engine", "onnxruntime_pool", "writer", "grpc")


def thread_cpu_s(pid: int) -> dict[str, float]:
    """CPU seconds of an rnnserve server's threads, by what they do, from /proc: the event loop (the main thread), the
    engines (engine-<model>, their onnxruntime calls included), onnxruntime's pool (threads it starts unnamed, so
    named as the process is; any other unnamed thread counts here too), our writer (front.cc's rnnserve-writer) and
    gRPC's own (named by gRPC). Threads that have ended are not counted."""
    by_kind = dict.fromkeys(THREADS, 0.0)
    with contextlib.suppress(FileNotFoundError, ProcessLookupError):
        process_name = Path(f"/proc/{pid}/comm").read_text().strip()
        for task in Path(f"/proc/{pid}/task").iterdir():
            try:
                name, cpu_s = (task / "comm").read_text().strip(), _cpu_s(task / "stat")
            except (FileNotFoundError, ProcessLookupError):  # it ended meanwhile
                continue
            if task.name == str(pid):
                kind = "event_loop"
            elif name.startswith("engine-"):
                kind = "engine"
            elif name == process_name:
                kind = "onnxruntime_pool"
            elif name == "rnnserve-writer":
                kind = "writer"
            else:
                kind = "grpc"
            by_kind[kind] += cpu_s
    return by_kind


def in_process_session(path: Path, args, batch: int = 1) -> tuple[ort.InferenceSession, dict[str, np.ndarray]]:
    """The baseline: the model file run directly, state fed back by hand, as a user would write it."""
    from rnnserve.server.runtime import Device

    options = ort.SessionOptions()
    options.intra_op_num_threads = args.threads
    session = ort.InferenceSession(str(path), options, providers=Device.parse(args.device).providers())
    state = {i.name: np.zeros([batch, *i.shape[1:]], np.float32) for i in session.get_inputs() if i.name != "tokens"}
    return session, state
