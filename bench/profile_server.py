"""Where the server's time goes under load: py-spy samples the server while concurrent streams run.

    python -m bench.profile_server --streams 64 --seconds 10      # needs py-spy (the [dev] extra)
    python -m bench.profile_server --api kserve --streams 64      # Triton's sequences on one ModelStreamInfer
    python -m bench.profile_server --api kserve --native-port     # the same, through --native-port

Writes a flame graph (SVG) and prints the functions holding the most samples (threads waiting for work left
out), with and without callees.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import subprocess
import sys
import tempfile
from collections import Counter
from pathlib import Path

from bench.common import add_model_flags, model_path, native_port, runtime_flags, server_process
from bench.throughput import _generate_all, _kserve_all, _stream_all

LOADS = {"generate": _generate_all, "stream": _stream_all, "kserve": _kserve_all}


def summarise(raw: Path, top: int) -> None:
    """py-spy's raw format: one line per distinct stack, frames joined by ';', then the sample count."""
    own, inclusive, total = Counter(), Counter(), 0
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        frames, samples = stack.split(";"), int(count)
        total += samples
        own[frames[-1]] += samples
        for frame in set(frames):
            inclusive[frame] += samples
    print(f"{total} samples")
    for title, counter in (("own time", own), ("with callees", inclusive)):
        print(f"--- {title}")
        for frame, samples in counter.most_common(top):
            print(f"{samples / total:6.1%}  {frame[:140]}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_model_flags(parser)
    parser.add_argument("--streams", type=int, default=64, help="concurrent streams (generations, or sequences)")
    parser.add_argument("--api", choices=sorted(LOADS), default="generate", help="the load, as in bench.throughput")
    parser.add_argument("--gil", action="store_true", help="sample only the thread holding the GIL (where Python time goes)")
    parser.add_argument("--seconds", type=int, default=10, help="how long to sample")
    parser.add_argument("--out", default="profile.svg", help="flame graph to write")
    parser.add_argument("--top", type=int, default=25, help="functions to list")
    parser.add_argument("--native-port", action="store_true", help="load the server through --native-port (gRPC's C++ server)")
    args = parser.parse_args()
    py_spy = shutil.which("py-spy") or shutil.which("py-spy", path=str(Path(sys.executable).parent))
    if py_spy is None:
        raise SystemExit("py-spy not found: pip install -e '.[dev]'")

    repository, model = model_path(args)
    flags = (*runtime_flags(args), "--max-sessions", str(args.streams + 1), "--max-batch", str(args.streams))
    native_flags, native_target, native_missing = native_port() if args.native_port else ((), None, None)
    if native_missing:
        raise SystemExit(f"--native-port: {native_missing}")
    raw = Path(tempfile.mkdtemp()) / "profile.txt"
    with server_process(repository, *flags, *native_flags) as (target, pid):
        target = native_target or target
        spies = [
            subprocess.Popen([py_spy, "record", "-p", str(pid), "-d", str(args.seconds), "-f", fmt, "-o", str(out), "--nonblocking", *(["--gil"] if args.gil else [])],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            for fmt, out in (("raw", raw), ("flamegraph", Path(args.out)))
        ]
        tokens = args.streams * 1000  # enough load to outlast the sampling
        asyncio.run(asyncio.wait_for(LOADS[args.api](target, model, args.streams, tokens // args.streams), args.seconds + 60))
        for spy in spies:
            spy.wait()
    summarise(raw, args.top)
    print(f"flame graph: {args.out}")


if __name__ == "__main__":
    sys.exit(main())
