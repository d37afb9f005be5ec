"""`rnnserve serve --workers N`: N server processes on one port, so every core serves.

The kernel (SO_REUSEPORT) hands each new connection to one worker, and a connection stays with it: a
stream, and every call on the same channel, is served by one process. Each worker has its own models,
state slab and sessions, so a named session lives in the worker that created it; resuming it on a
connection the kernel gave to another worker answers NOT_FOUND — unless the workers share a --state-store, from
which any of them resumes it.
"""

from __future__ import annotations

import dataclasses
import multiprocessing
import os
import signal
import sys
from multiprocessing.connection import wait

from rnnserve.errors import UsageError
from rnnserve.server.app import SIGHUP_IGNORED
from rnnserve.server.config import ServerConfig


def run_workers(config: ServerConfig) -> int:
    """Starts the workers, forwards SIGTERM/SIGINT to them, and returns the worst exit status (_status)."""
    if config.port == 0:
        raise UsageError("--workers needs a fixed --port: every worker must listen on the same one")
    if config.native_port == 0:
        raise UsageError("--workers needs a fixed --native-port: every worker must listen on the same one")
    if config.threads == 0:  # share the cores instead of every worker's onnxruntime taking all of them
        config = dataclasses.replace(config, threads=max(1, (os.cpu_count() or 1) // config.workers))
    context = multiprocessing.get_context("spawn")
    workers = [
        context.Process(target=_worker, args=(_worker_config(config, i),), name=f"rnnserve-worker-{i}") for i in range(config.workers)
    ]
    for worker in workers:
        worker.start()

    signalled: set[int] = set()

    def stop(signum, frame):
        """One SIGTERM per worker: a second one during its graceful shutdown would kill it outright."""
        for worker in workers:
            if worker.is_alive() and worker.pid not in signalled:
                signalled.add(worker.pid)
                os.kill(worker.pid, signal.SIGTERM)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGHUP, lambda signum, frame: print(SIGHUP_IGNORED, file=sys.stderr, flush=True))
    wait([w.sentinel for w in workers])  # the first to exit: a failed start, or the stop signal
    stop(None, None)  # one worker gone means the rest stop too, rather than serve a part of the port
    for worker in workers:
        worker.join()
    return max(_status(w, signalled) for w in workers)


def _status(worker, signalled: set[int]) -> int:
    """A worker's exit status for the server's: a worker that our own SIGTERM ended before it could handle it (it was
    past its event loop, stopping for a reason of its own) stopped as asked, and does not hide that reason's status."""
    if worker.exitcode == -signal.SIGTERM and worker.pid in signalled:
        return 0
    return abs(worker.exitcode or 0)


def _worker_config(config: ServerConfig, index: int) -> ServerConfig:
    """Each worker has its own metrics, so each serves them on a port of its own: --metrics-port + index."""
    if config.metrics_port > 0:
        return dataclasses.replace(config, metrics_port=config.metrics_port + index)
    return config


def _worker(config: ServerConfig) -> None:
    from rnnserve.server.app import run

    run(config)
