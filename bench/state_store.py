"""What the shared state store costs: 64 named sessions streaming one token per message, against the same server
without a store, in one run (a redis-server is started for it).

    python -m bench.state_store --streams 64 --tokens 100

Every answered message of a named session writes its snapshot to Redis in the background; the figure that matters
is the served steps per second with the store as a fraction of those without (issue 13's target: at least 0.85).
Beside it, the CPU per step of the server and of redis-server: on a small machine they share the cores with the
client, so Redis's own work is part of what the store costs here.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import subprocess
import time

from bench.common import add_model_flags, free_port, model_path, process_cpu_s, runtime_flags, server_process
from bench.throughput import _stream_all

TARGET_RATIO = 0.85


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_model_flags(parser)
    parser.add_argument("--streams", type=int, default=64, help="concurrent named sessions")
    parser.add_argument("--tokens", type=int, default=100, help="messages (one token each) per session")
    parser.add_argument("--write-interval-ms", type=float, default=50.0, help="the server's --state-write-interval-ms")
    args = parser.parse_args()
    if shutil.which("redis-server") is None:
        raise SystemExit("needs redis-server (apt-get install redis-server)")
    repository, model = model_path(args)
    port = free_port()
    redis = subprocess.Popen(["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
                             stdout=subprocess.DEVNULL)
    time.sleep(0.5)
    try:
        figures, server_cpu, redis_cpu = {}, {}, {}
        common = (*runtime_flags(args), "--max-sessions", str(args.streams * 3 + 1))
        store = ("--state-store", f"redis://127.0.0.1:{port}/0", "--state-write-interval-ms", str(args.write_interval_ms),
                 "--state-lease-s", "1")
        for name, extra in (("without_store", ()), ("with_store", store)):
            with server_process(repository, *common, *extra) as (target, pid):
                asyncio.run(_stream_all(target, model, 1, 1, named=True))  # a new store settles for a lease first
                before = process_cpu_s(pid), process_cpu_s(redis.pid)
                run = asyncio.run(_stream_all(target, model, args.streams, args.tokens, named=True))
                figures[name] = run["tokens_per_s"]
                server_cpu[name] = round((process_cpu_s(pid) - before[0]) / run["steps"] * 1e6, 1)
                redis_cpu[name] = round((process_cpu_s(redis.pid) - before[1]) / run["steps"] * 1e6, 1)
    finally:
        redis.terminate()
        redis.wait(10)
    ratio = figures["with_store"] / figures["without_store"]
    print(json.dumps({
        "bench": "state_store", "model": model, "streams": args.streams, "tokens_per_stream": args.tokens,
        "write_interval_ms": args.write_interval_ms,
        "steps_per_s": {k: round(v, 1) for k, v in figures.items()}, "ratio_with_store": round(ratio, 3),
        "server_cpu_us_per_step": server_cpu, "redis_cpu_us_per_step": redis_cpu,
        f"target_{TARGET_RATIO}x_met": ratio >= TARGET_RATIO,
    }))


if __name__ == "__main__":
    main()
