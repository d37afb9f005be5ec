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


@pytest.fixture(scope="module")
def workers(repository):
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "rnnserve", "serve", "--repository", str(repository), "--port", str(port), "--workers", "2"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
    )
    lines: queue.Queue = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line) for line in process.stdout], daemon=True).start()
    pids, seen, deadline = set(), [], time.monotonic() + 60
    try:
        while len(pids) < 2:
            try:
                seen.append(lines.get(timeout=max(0.0, deadline - time.monotonic())))
            except queue.Empty:
                pytest.fail("the workers did not both start within 60 s; they printed:\n" + "".join(seen))
            pids.update(re.findall(rf"listening on 127\.0\.0\.1:{port} \(pid (\d+)\)", seen[-1]))
        yield process, f"127.0.0.1:{port}"
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
