"""A real redis-server for the tests that need a state store: on 127.0.0.1, in memory only."""

import subprocess
import time


class Redis:
    """redis-server on a port of 127.0.0.1 (start, stop, read a key)."""

    def __init__(self, port: int):
        self.port, self.url = port, f"redis://127.0.0.1:{port}/0"
        self.process = None

    def start(self) -> "Redis":
        self.process = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while not self._answers():
            assert time.monotonic() < deadline and self.process.poll() is None, "redis-server did not start"
            time.sleep(0.05)
        return self

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(10)

    def wait_for_position(self, key: str, position: int) -> None:
        """The store is written after the answer, in the background: wait until it holds this position for `key`
        ("session:ID" or "sequence:MODEL:ID")."""
        mark = f"rnnserve:{key}:position"
        self._until(lambda: (self.get(mark) or b"").split(b" ")[0] == str(position).encode(),
                    lambda: f"the store never reached position {position} for {key}: it has {self.get(mark)}")

    def wait_for_release(self, key: str) -> None:
        """A server lets a session go (its lease) after its last write, in the background: wait until none holds `key`."""
        lease = f"rnnserve:{key}:lease"
        self._until(lambda: self.get(lease) is None, lambda: f"{key} is still held: {self.get(lease)}")

    @staticmethod
    def _until(done, failure) -> None:
        """Polls `done()` until it holds; after 10 s the test fails with `failure()`, what the store holds instead."""
        deadline = time.monotonic() + 10
        while not done():
            assert time.monotonic() < deadline, failure()
            time.sleep(0.02)

    def get(self, key: str):
        import redis

        return redis.Redis(port=self.port).get(key)

    def _answers(self) -> bool:
        import redis

        try:
            return redis.Redis(port=self.port, socket_connect_timeout=0.2).ping()
        except redis.exceptions.ConnectionError:
            return False
