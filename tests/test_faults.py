"""Fault injection in the spirit of Jepsen: sessions streamed by ResumableStream clients across two real server
processes that share a real Redis, while a controller kills Redis and restarts it empty, SIGSTOPs a server past its
lease and lets it go on, and SIGKILLs a server and starts it again — at random (a fixed seed), each at least once.
Checked afterwards:
- every session's answers equal its uninterrupted run (exact, whatever was injected);
- no two servers answered a session at the same time: in the servers' own call logs, a session passes from one
  server to another only when its client resumed (at most one hand-over per resume), never back and forth;
- nothing was lost beyond what the write interval allows: no client had to give up (ReplayImpossible, or a session
  the store never had).
It prints what it injected and what it checked."""

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections import defaultdict
from datetime import datetime

import numpy as np
import pytest

from bench.common import free_port
from rnnserve.client import RnnServeClient
from rnnserve.client.resumable import ResumableStream
from tests.helpers import distributions
from tests.redis_process import Redis

SESSIONS = 6
TEXT = "A recurrent network keeps a state between steps, and the server keeps it between messages. " * 2
CHUNKS = [TEXT[i : i + 4] for i in range(0, 160, 4)]  # 40 chunks, a quarter of a second apart
LEASE_S = 1.0
SEED = 19


class Server:
    """One server slot: a port, and the process on it (started again after a kill), each incarnation logging apart."""

    def __init__(self, index: int, repository, redis: Redis, folder):
        self.index, self.port, self.repository, self.redis, self.folder = index, free_port(), repository, redis, folder
        self.logs, self.process = [], None

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> None:
        log = self.folder / f"server-{self.index}-{len(self.logs)}.log"
        self.logs.append(log)
        self.process = subprocess.Popen(
            [sys.executable, "-m", "rnnserve", "serve", "--repository", str(self.repository), "--port", str(self.port),
             "--state-store", self.redis.url, "--state-lease-s", str(LEASE_S), "--log-format", "json", "--grace-s", "1",
             "--max-sessions", "32"],
            stdout=subprocess.PIPE, stderr=open(log, "w"), text=True,
        )
        for line in self.process.stdout:
            if "listening on" in line:
                return
        raise AssertionError(f"server {self.index} did not start: {log.read_text()[-2000:]}")

    def answers(self):
        """(time, session, position) of every Stream message it answered."""
        for log in self.logs:
            for line in log.read_text().splitlines():
                if '"method": "Stream"' in line:
                    entry = json.loads(line)
                    if entry["status"] == "OK" and entry.get("session") and "position" in entry:
                        yield datetime.fromisoformat(entry["time"].rstrip("Z")), entry["session"], entry["position"]

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGCONT)
            self.process.terminate()
            self.process.wait(30)


def test_sessions_survive_redis_restarts_paused_and_killed_servers_exactly(repository, client, tmp_path):
    if shutil.which("redis-server") is None:
        pytest.skip("needs redis-server (apt-get install redis-server)")
    uninterrupted = distributions(client.stream("lstm", CHUNKS, top_k=3))
    redis = Redis(free_port()).start()
    servers = [Server(i, repository, redis, tmp_path) for i in range(2)]
    rng = random.Random(SEED)
    injected, answers, streams, failures = [], {}, {}, []
    done = threading.Event()
    try:
        for server in servers:
            server.start()
        picker = random.Random(SEED + 1)

        def connect() -> RnnServeClient:
            return RnnServeClient(picker.choice(servers).target, timeout_s=120)

        def stream(index: int) -> None:
            try:
                resumable = ResumableStream(connect, "lstm", f"f{index}", top_k=3, give_up_s=90)
                streams[index] = resumable
                got = []
                for chunk in CHUNKS:
                    got.append(resumable.send(chunk))
                    time.sleep(0.25)
                answers[index] = got
                resumable.close()
            except Exception as err:  # reported below, with the session
                failures.append((index, repr(err)))

        clients = [threading.Thread(target=stream, args=(i,)) for i in range(SESSIONS)]
        for thread in clients:
            thread.start()

        def restart_redis_empty() -> str:
            redis.process.kill()
            redis.process.wait()
            redis.start()
            return "Redis killed (-9) and restarted empty"

        def pause_server() -> str:
            server = rng.choice(servers)
            os.kill(server.process.pid, signal.SIGSTOP)
            time.sleep(LEASE_S * 2.5)
            os.kill(server.process.pid, signal.SIGCONT)
            return f"server {server.index} SIGSTOPped for {LEASE_S * 2.5:g} s (past its {LEASE_S:g} s lease), then continued"

        def kill_server() -> str:
            server = rng.choice(servers)
            server.process.kill()
            server.process.wait()
            time.sleep(0.5)
            server.start()
            return f"server {server.index} SIGKILLed and started again"

        faults = [restart_redis_empty, pause_server, kill_server]
        rng.shuffle(faults)  # each at least once, then at random
        deadline = time.monotonic() + 120
        while any(t.is_alive() for t in clients) and time.monotonic() < deadline:
            time.sleep(rng.uniform(1.0, 2.0))
            if any(t.is_alive() for t in clients):
                fault = faults.pop(0) if faults else rng.choice([restart_redis_empty, pause_server, kill_server])
                injected.append(fault())
        for thread in clients:
            thread.join(120)
        done.set()
    finally:
        for server in servers:
            server.stop()
        if redis.process.poll() is None:
            redis.stop()
    print("injected:", *injected, sep="\n  ")
    assert not failures, failures
    assert len(injected) >= 3, injected
    for index in range(SESSIONS):
        assert [a.position for a in answers[index]] == [len("".join(CHUNKS[: i + 1])) for i in range(len(CHUNKS))]
        assert np.abs(distributions(answers[index]) - uninterrupted).max() < 1e-5, f"session f{index} diverged"
    timeline = defaultdict(list)  # session → (time, server) of every answer, from the servers' own logs
    for server in servers:
        for when, session, _ in server.answers():
            timeline[session].append((when, server.index))
    handovers = {}
    for index in range(SESSIONS):
        order = [s for _, s in sorted(timeline[f"f{index}"])]
        handovers[index] = sum(1 for a, b in zip(order, order[1:]) if a != b)
        assert handovers[index] <= streams[index].resumes, (index, order, streams[index].resumes)
    print(f"checked: {SESSIONS} sessions × {len(CHUNKS)} chunks equal their uninterrupted run; resumes "
          f"{[streams[i].resumes for i in range(SESSIONS)]}, replayed chunks {[streams[i].replayed for i in range(SESSIONS)]}, "
          f"server hand-overs {[handovers[i] for i in range(SESSIONS)]} (each at most its resumes)")
