"""Fencing: one server answers a session, even when Redis forgets or a server stalls. Real Redis, real servers:
- Redis killed and restarted empty while a stream is open on A: A takes its hold back at its next write, B's resume
  is refused (A holds it), B takes the session only once A lets go — after the store has settled for a lease — and
  every answer, on A and then on B, is exact;
- A paused (SIGSTOP) past its lease while B takes the session over: when A runs again, the next chunk on A's old
  stream is not answered — the stream ends UNAVAILABLE, telling the client to resume — and A counts a lost session."""

import os
import queue
import re
import signal
import subprocess
import sys
import time
import urllib.request
from dataclasses import replace

import grpc
import numpy as np

from bench.common import free_port
from rnnserve.client import RnnServeClient
from tests.helpers import ServerThread, distributions, status_of
from tests.redis_process import Redis

CHUNKS = ["The server ", "keeps each ", "sequence's ", "state between ", "messages, ", "and answers."]


def open_stream(client: RnnServeClient, session_id: str, resume: bool = False):
    """A stream to feed one chunk at a time: (send(chunk) → answer, close())."""
    box = queue.Queue()
    answers = client.stream("lstm", iter(box.get, None), session_id=session_id, resume=resume, top_k=3)

    def send(chunk):
        box.put(chunk)
        return next(answers)

    def close():
        box.put(None)
        for _ in answers:
            pass

    return send, close


def test_a_redis_that_restarts_empty_never_gives_a_held_session_to_another_server(base_config, redis_server):
    config = replace(base_config, state_store=redis_server.url, state_lease_s=2.0, state_write_interval_ms=0)
    with ServerThread(config) as a, ServerThread(config) as b, a.client() as on_a, b.client() as on_b:
        uninterrupted = distributions(on_a.stream("lstm", CHUNKS, top_k=3))
        send, close = open_stream(on_a, "sb")
        got = [send(CHUNKS[0])]
        redis_server.wait_for_position("session:sb", len(CHUNKS[0]))
        redis_server.process.kill()  # kill -9: every lease, epoch and state goes with it
        redis_server.process.wait()
        redis_server.start()
        got += [send(chunk) for chunk in CHUNKS[1:4]]  # A serves on and takes its hold back with its first write
        redis_server.wait_for_position("session:sb", len("".join(CHUNKS[:4])))
        refused = status_of(lambda: list(on_b.stream("lstm", [CHUNKS[4]], session_id="sb", resume=True)))
        assert refused.code() == grpc.StatusCode.FAILED_PRECONDITION and "being served by another server" in refused.details()
        got += [send(chunk) for chunk in CHUNKS[4:5]]
        close()  # A lets go: now B may take it, from A's last state
        redis_server.wait_for_release("session:sb")
        began = time.monotonic()
        got += list(on_b.stream("lstm", CHUNKS[5:], session_id="sb", resume=True, top_k=3))
        assert time.monotonic() - began > 1.5  # the first take since Redis came back empty waits a lease (2 s) for it to settle
    assert [r.position for r in got] == [len("".join(CHUNKS[: i + 1])) for i in range(len(CHUNKS))]
    assert np.abs(distributions(got) - uninterrupted).max() < 1e-6


def serve(repository, redis: Redis, metrics_port: int, log) -> tuple[subprocess.Popen, str]:
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "rnnserve", "serve", "--repository", str(repository), "--port", str(port), "--state-store",
         redis.url, "--state-lease-s", "1", "--state-write-interval-ms", "0", "--metrics-port", str(metrics_port)],
        stdout=subprocess.PIPE, stderr=log, text=True,
    )
    for line in process.stdout:
        if "listening on" in line:
            return process, f"127.0.0.1:{port}"
    raise AssertionError("the server did not start")


def metric(port: int, name: str) -> float:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    match = re.search(rf"^{name} (\S+)$", text, re.M)
    return float(match[1]) if match else 0.0


def test_a_server_paused_past_its_lease_answers_nothing_more_of_the_session(repository, redis_server, tmp_path):
    ports = free_port(), free_port()
    with open(tmp_path / "a.log", "w") as log_a, open(tmp_path / "b.log", "w") as log_b:
        a, target_a = serve(repository, redis_server, ports[0], log_a)
        b, target_b = serve(repository, redis_server, ports[1], log_b)
        try:
            with RnnServeClient(target_a, timeout_s=30) as on_a, RnnServeClient(target_b, timeout_s=30) as on_b:
                send, _ = open_stream(on_a, "stalled")
                first = send(CHUNKS[0])
                redis_server.wait_for_position("session:stalled", len(CHUNKS[0]))
                os.kill(a.pid, signal.SIGSTOP)  # past its 1 s lease: another server may take the session
                redis_server.wait_for_release("session:stalled")  # the lease lapses: a cannot renew it while stopped
                taken = list(on_b.stream("lstm", [CHUNKS[1]], session_id="stalled", resume=True))
                assert taken[-1].position == len(CHUNKS[0] + CHUNKS[1])
                os.kill(a.pid, signal.SIGCONT)
                error = status_of(lambda: send(CHUNKS[1]))  # the old stream: A must not answer it
                assert error.code() == grpc.StatusCode.UNAVAILABLE and "no longer this server's" in error.details()
                assert first.position == len(CHUNKS[0])
            assert metric(ports[0], "rnnserve_state_store_lost_sessions_total") == 1
        finally:
            for process in (a, b):
                os.kill(process.pid, signal.SIGCONT)
                process.terminate()
                process.wait(30)
