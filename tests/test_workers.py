"""`rnnserve serve --workers 2`: two processes on one port; a stream stays in the process that took it, and with a
state store a session resumes on either."""

import contextlib
import os
import queue
import re
import shutil
import signal
import subprocess
import sys
import threading
import time

import grpc
import numpy as np
import pytest

from bench.common import free_port
from rnnserve.client import RnnServeClient
from tests.redis_process import Redis

OWN_CONNECTION = [("grpc.use_local_subchannel_pool", 1)]  # gRPC would otherwise share one connection


def connect(target: str) -> RnnServeClient:
    return RnnServeClient(target, timeout_s=30, options=OWN_CONNECTION)


def start_workers(repository, env: dict | None = None) -> tuple[subprocess.Popen, str, list[str], threading.Thread]:
    """`rnnserve serve --workers 2` on a free port, once both workers listen: (the process, its target, every line it
    prints, the thread that reads them, which ends once the process and its workers have exited)."""
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "rnnserve", "serve", "--repository", str(repository), "--port", str(port), "--workers", "2"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True, env=env,
    )
    lines: queue.Queue = queue.Queue()
    printed: list[str] = []

    def read() -> None:
        for line in process.stdout:
            printed.append(line)
            lines.put(line)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    pids, deadline = set(), time.monotonic() + 60
    while len(pids) < 2:
        try:
            line = lines.get(timeout=max(0.0, deadline - time.monotonic()))
        except queue.Empty:
            os.killpg(process.pid, signal.SIGKILL)
            pytest.fail("the workers did not both start within 60 s; they printed:\n" + "".join(printed))
        pids.update(re.findall(rf"listening on 127\.0\.0\.1:{port} \(pid (\d+)\)", line))
    return process, f"127.0.0.1:{port}", printed, reader


@pytest.fixture(scope="module")
def workers(repository):
    process, target, _, _ = start_workers(repository)
    try:
        yield process, target
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)  # the parent and its workers, whatever state they are in


def test_every_connection_gets_the_same_answer_from_either_worker(workers, client):
    _, target = workers
    expected = client.generate_text("lstm", "The ", temperature=0.0, max_tokens=30)
    for _ in range(8):
        with connect(target) as connection:
            assert connection.generate_text("lstm", "The ", temperature=0.0, max_tokens=30) == expected


def test_a_named_session_lives_in_the_worker_that_made_it(workers):
    _, target = workers
    with connect(target) as owner:
        list(owner.stream("lstm", ["abc"], session_id="in-one-worker"))
        outcomes = set()
        for _ in range(30):  # new connections land on either worker
            with connect(target) as other:
                try:
                    list(other.stream("lstm", ["d"], session_id="in-one-worker", resume=True))
                    outcomes.add("resumed")
                except grpc.RpcError as err:
                    assert err.code() == grpc.StatusCode.NOT_FOUND, err.details()
                    outcomes.add("not found")
            if len(outcomes) == 2:
                break
        assert outcomes == {"resumed", "not found"}


def test_sigterm_stops_every_worker(workers):
    process, _ = workers
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=30) == 0


FAULT = """# test_workers.py's: the engine's own code fails once the file RNNSERVE_TEST_FAULT names exists
import os
from rnnserve.server.batcher import Batcher

_wait = Batcher._wait


def _wait_or_fail(self):
    if os.path.exists(os.environ["RNNSERVE_TEST_FAULT"]):
        raise ZeroDivisionError("a bug of the engine's own")
    return _wait(self)


Batcher._wait = _wait_or_fail
"""


def test_a_worker_whose_engine_stops_stops_every_worker_with_status_1(repository, tmp_path):
    """A probe reaches one worker of N, so a worker whose engine stopped on a fault of its own (made here by a
    sitecustomize in every worker) does not stay up NOT_SERVING: it stops, the others with it, and the server exits 1
    with a line that says why."""
    (tmp_path / "sitecustomize.py").write_text(FAULT)
    marker = tmp_path / "fault"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(tmp_path), os.environ.get("PYTHONPATH")])),
           "RNNSERVE_TEST_FAULT": str(marker)}
    process, target, printed, reader = start_workers(repository, env)
    try:
        with connect(target) as connection:
            assert len(list(connection.stream("lstm", ["The "]))) == 1  # served
        marker.touch()  # the engine fails as it takes its next work: the first stream's free, or this one's
        with connect(target) as connection:
            try:
                assert len(list(connection.stream("lstm", ["x"]))) == 1
            except grpc.RpcError as err:  # a worker already stopping, on the first stream's free
                assert err.code() == grpc.StatusCode.UNAVAILABLE, err.details()
        assert process.wait(timeout=30) == 1
        reader.join(10)  # every line read: the output ends with the process's
        output = "".join(printed)
        assert "engine stopped on a fault of its own" in output and "the other workers with it" in output, output
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)


def test_with_a_state_store_a_session_resumes_on_either_worker(repository, client):
    if not shutil.which("redis-server"):
        pytest.skip("redis-server is not installed (apt-get install redis-server)")
    redis, port = Redis(free_port()).start(), free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "rnnserve", "serve", "--repository", str(repository), "--port", str(port), "--workers", "2",
         "--state-store", redis.url, "--state-lease-s", "1"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )
    chunks = ["The ", "server ", "keeps ", "the ", "state ", "between ", "workers."]
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                with connect(f"127.0.0.1:{port}") as probe:
                    probe.list_models()
                break
            except grpc.RpcError:
                assert time.monotonic() < deadline, "the workers did not start"
                time.sleep(0.2)
        answers, position = [], 0
        for number, chunk in enumerate(chunks):  # each chunk on a new connection: either worker
            with connect(f"127.0.0.1:{port}") as connection:
                answers += list(connection.stream("lstm", [chunk], session_id="across", resume=number > 0, top_k=3))
            position += len(chunk)
            redis.wait_for_position("session:across", position)
        expected = [[c.probability for c in s.next] for r in client.stream("lstm", chunks, top_k=3) for s in r.steps]
        got = [[c.probability for c in s.next] for r in answers for s in r.steps]
        assert np.abs(np.array(got) - np.array(expected)).max() < 1e-6
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        redis.stop()
