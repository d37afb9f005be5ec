"""Exact failover behind a load balancer: three real server processes sharing a real Redis, behind a real nginx
(deploy/nginx/rnnserve.conf) that keeps each session on one replica. 30 named sessions stream through nginx; the
store falls behind (Redis stopped for a while), one replica is SIGKILLed, and every client resumes through nginx on
another replica, replays what the store had not seen, and gets exactly the answers of an uninterrupted run."""

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from bench.common import free_port
from rnnserve.client import RnnServeClient
from rnnserve.client.resumable import ResumableStream
from tests.helpers import distributions
from tests.redis_process import Redis

ROOT = Path(__file__).resolve().parent.parent
SESSIONS = 30
TEXT = "The server keeps each sequence's state between messages, and answers every step. "
CHUNKS = [TEXT[i : i + 7] for i in range(0, 84, 7)]  # 12 chunks
BEFORE_OUTAGE, DURING_OUTAGE = 4, 2  # chunks sent with the store up, then with it stopped


def wait_for_port(port: int, process: subprocess.Popen, what: str) -> None:
    deadline = time.monotonic() + 60
    while True:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        assert process.poll() is None and time.monotonic() < deadline, f"{what} did not start"
        time.sleep(0.1)


@pytest.fixture
def deployment(tmp_path, repository):
    if shutil.which("nginx") is None or shutil.which("redis-server") is None:
        pytest.skip("needs nginx and redis-server (apt-get install nginx redis-server)")
    redis = Redis(free_port()).start()
    models = tmp_path / "models"
    shutil.copytree(repository / "lstm", models / "lstm")
    ports, metrics_ports = [free_port() for _ in range(3)], [free_port() for _ in range(3)]
    replicas = [
        subprocess.Popen(
            [sys.executable, "-m", "rnnserve", "serve", "--repository", str(models), "--port", str(port), "--state-store", redis.url,
             "--state-lease-s", "1", "--grace-s", "2", "--max-sessions", "64", "--metrics-port", str(metrics_port)],
            stdout=subprocess.DEVNULL, stderr=open(tmp_path / f"replica-{port}.log", "w"),
        )
        for port, metrics_port in zip(ports, metrics_ports)
    ]
    balancer_port = free_port()
    config = (ROOT / "deploy" / "nginx" / "rnnserve.conf").read_text()
    for number, port in enumerate(ports, 1):
        config = config.replace(f"127.0.0.1:5005{number}", f"127.0.0.1:{port}")
    config = re.sub(r"listen 8080 http2;", f"listen 127.0.0.1:{balancer_port} http2;", config)
    (tmp_path / "rnnserve.conf").write_text(config)
    (tmp_path / "nginx.conf").write_text(
        f"pid {tmp_path}/nginx.pid;\nerror_log {tmp_path}/nginx-error.log;\nevents {{}}\n"
        f"http {{\n access_log off;\n client_body_temp_path {tmp_path};\n include {tmp_path}/rnnserve.conf;\n}}\n"
    )
    nginx = subprocess.Popen(["nginx", "-p", str(tmp_path), "-c", str(tmp_path / "nginx.conf"), "-g", "daemon off;"])
    try:
        for port, replica in zip(ports, replicas):
            wait_for_port(port, replica, "a replica")
        wait_for_port(balancer_port, nginx, "nginx")
        yield {"balancer": f"127.0.0.1:{balancer_port}", "replicas": replicas, "ports": ports, "metrics_ports": metrics_ports, "redis": redis}
    finally:
        nginx.terminate()
        for replica in replicas:
            if replica.poll() is None:
                replica.kill()
        for process in (nginx, *replicas):
            process.wait(30)
        if redis.process.poll() is None:
            os.kill(redis.process.pid, signal.SIGCONT)
            redis.stop()


def test_sigkill_behind_nginx_resumes_every_session_exactly(deployment):
    redis = deployment["redis"]
    # before chunk 5 and chunk 7 every session waits: the test changes the world, then lets them go on
    arrived = {number: threading.Barrier(SESSIONS + 1) for number in (BEFORE_OUTAGE, BEFORE_OUTAGE + DURING_OUTAGE)}
    go = {number: threading.Event() for number in arrived}
    answers, streams, errors = {}, {}, []

    def session(index: int) -> None:
        try:
            stream = ResumableStream(lambda: RnnServeClient(deployment["balancer"], timeout_s=60), "lstm", f"s{index}", top_k=3)
            streams[index] = stream
            got = []
            for number, chunk in enumerate(CHUNKS):
                if number in arrived:
                    arrived[number].wait(120)
                    go[number].wait(120)
                got.append(stream.send(chunk))
            answers[index] = got
            stream.close()
        except Exception as err:  # reported below with the session's number
            errors.append((index, repr(err)))
            for barrier in arrived.values():
                barrier.abort()

    threads = [threading.Thread(target=session, args=(i,)) for i in range(SESSIONS)]
    for thread in threads:
        thread.start()
    arrived[BEFORE_OUTAGE].wait(120)  # every session has 4 answers
    for index in range(SESSIONS):
        redis.wait_for_position(f"session:s{index}", len("".join(CHUNKS[:BEFORE_OUTAGE])))  # and the store has them
    os.kill(redis.process.pid, signal.SIGSTOP)  # the store stops answering: chunks 5 and 6 live in memory only
    go[BEFORE_OUTAGE].set()
    arrived[BEFORE_OUTAGE + DURING_OUTAGE].wait(120)  # every session has 6 answers
    busiest = _busiest_replica(deployment)
    deployment["replicas"][busiest].kill()  # SIGKILL: its sessions' chunks 5 and 6 are lost with it
    time.sleep(2.5)  # the stopped store's writes time out, the dead replica's leases expire
    os.kill(redis.process.pid, signal.SIGCONT)
    go[BEFORE_OUTAGE + DURING_OUTAGE].set()
    for thread in threads:
        thread.join(180)
    assert not errors, errors
    resumed = [i for i, stream in streams.items() if stream.resumes]
    replayed = sum(streams[i].replayed for i in resumed)
    print(f"{len(resumed)} of {SESSIONS} sessions resumed on another replica; {replayed} chunks replayed")
    assert resumed, "no session was on the killed replica"
    # what the store had not seen: chunks 5 and 6 — fewer when a write sent while Redis was stopped still sat in its
    # socket buffer (a stopped Redis runs it when it continues, after the server gave up waiting)
    assert replayed and all(streams[i].replayed <= DURING_OUTAGE for i in resumed), [streams[i].replayed for i in resumed]
    # the servers saw the same: the clients said what they had acknowledged, the survivors counted what came again
    survivors = [port for number, port in enumerate(deployment["metrics_ports"]) if number != busiest]
    assert sum(_metric(port, "rnnserve_replayed_chunks_total") for port in survivors) == replayed
    assert sum(_metric(port, "rnnserve_resumes_total", 'source="store"') for port in survivors) >= len(resumed)

    with RnnServeClient(f"127.0.0.1:{deployment['ports'][busiest - 1]}", timeout_s=60) as direct:
        expected = distributions(direct.stream("lstm", CHUNKS, top_k=3))  # never interrupted
    for index in range(SESSIONS):
        assert np.abs(distributions(answers[index]) - expected).max() < 1e-6, f"session s{index}"


def _metric(port: int, name: str, label: str = "") -> float:
    """The sum of a series over one replica's /metrics page (those with `label`, when given)."""
    page = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    return sum(float(line.rsplit(" ", 1)[1]) for line in page.splitlines() if line.startswith(name + "{") and label in line)


def _busiest_replica(deployment) -> int:
    """The replica holding the most sessions now: nginx hashes session ids onto ports chosen at random, so a given
    replica may hold none of a dozen sessions, and the test must stop one that holds some."""
    held = [_metric(port, "rnnserve_sessions_active") for port in deployment["metrics_ports"]]
    assert max(held) > 0, held
    return held.index(max(held))


def test_sigterm_moves_sessions_to_other_replicas_with_nothing_to_replay(deployment):
    sessions = 12
    arrived, go = threading.Barrier(sessions + 1), threading.Event()
    answers, streams, errors = {}, {}, []

    def session(index: int) -> None:
        try:
            stream = streams[index] = ResumableStream(lambda: RnnServeClient(deployment["balancer"], timeout_s=60), "lstm", f"t{index}", top_k=3)
            got = []
            for number, chunk in enumerate(CHUNKS):
                if number == BEFORE_OUTAGE:
                    arrived.wait(120)
                    go.wait(120)
                got.append(stream.send(chunk))
            answers[index] = got
            stream.close()
        except Exception as err:
            errors.append((index, repr(err)))
            arrived.abort()

    threads = [threading.Thread(target=session, args=(i,)) for i in range(sessions)]
    for thread in threads:
        thread.start()
    arrived.wait(120)
    busiest = _busiest_replica(deployment)
    replica = deployment["replicas"][busiest]
    replica.send_signal(signal.SIGTERM)  # drains: its open streams end after --grace-s, every session is written
    assert replica.wait(30) == 0
    go.set()
    for thread in threads:
        thread.join(180)
    assert not errors, errors
    moved = [i for i, stream in streams.items() if stream.resumes]
    assert moved and all(streams[i].replayed == 0 for i in moved)  # the store had everything: nothing to replay
    with RnnServeClient(f"127.0.0.1:{deployment['ports'][busiest - 1]}", timeout_s=60) as direct:
        expected = distributions(direct.stream("lstm", CHUNKS, top_k=3))
    for index in range(sessions):
        assert np.abs(distributions(answers[index]) - expected).max() < 1e-6, f"session t{index}"
