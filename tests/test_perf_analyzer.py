"""Triton's own tooling against rnnserve: its client reads the repository index and per-model statistics and is
refused load and unload with the reason; perf_analyzer (Triton's C++ load generator) drives a sequence model over a
ModelStreamInfer stream with no input file and reports the server's own figures, which agree with its counts.

perf_analyzer ships in the tritonclient 2.51.0 wheel (later wheels leave it out), which cannot share this
environment (it pins numpy<2 and protobuf<5), so the binary alone is taken out of the wheel into a cache folder,
with libcudart from NVIDIA's runtime wheel (it links against it, and runs without a GPU) and Debian's libb64."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

CACHE = Path(os.environ.get("RNNSERVE_TEST_CACHE", Path.home() / ".cache" / "rnnserve-tests")) / "perf_analyzer"
WHEELS = {"tritonclient==2.51.0": "tritonclient-2.51.0.data/data/bin/perf_analyzer", "nvidia-cuda-runtime-cu12==12.9.79": "nvidia/cuda_runtime/lib/libcudart.so.12"}


def test_tritons_client_reads_the_index_and_statistics_and_is_told_why_load_is_refused(server, client, triton):
    before = triton("repository_and_statistics", server.target, "lstm")["statistics"]
    client.generate_text("lstm", "The ", temperature=0.0, max_tokens=5)
    after = triton("repository_and_statistics", server.target, "lstm")
    assert ("lstm", "1", "READY") in after["index"] and ("dates", "1", "READY") in after["index"]
    (stats,) = after["statistics"]
    assert (stats["name"], stats["version"]) == ("lstm", "1")
    success = lambda s: int(s.get("inference_stats", {}).get("success", {}).get("count", 0))  # noqa: E731
    assert success(stats) == success(before[0]) + 1  # one Generate call
    assert int(stats["execution_count"]) >= int(before[0].get("execution_count", 0)) + 5  # the prompt, then a step a token
    assert int(stats["inference_stats"]["compute_infer"]["ns"]) > 0 and int(stats["last_inference"]) > 0
    assert len(after["refusals"]) == 2 and all(
        r.startswith("StatusCode.FAILED_PRECONDITION") and "loads its repository once, at start" in r for r in after["refusals"]
    ), after["refusals"]


@pytest.fixture(scope="session")
def perf_analyzer() -> tuple[Path, dict]:
    """The perf_analyzer binary and the environment it runs in; skips, saying why, when it cannot be had."""
    binary, runtime = CACHE / "perf_analyzer", CACHE / "libcudart.so.12"
    if not (binary.exists() and runtime.exists()):
        CACHE.mkdir(parents=True, exist_ok=True)
        for requirement, member in WHEELS.items():
            done = subprocess.run(
                [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary", ":all:", "-q", "-d", str(CACHE), requirement],
                capture_output=True, text=True, timeout=600,
            )
            if done.returncode != 0:
                pytest.skip(f"cannot download {requirement} (for perf_analyzer): {done.stderr.strip().splitlines()[-1:]}")
            wheel = next(CACHE.glob(requirement.split("==")[0].replace("-", "_") + "-*.whl"))
            with zipfile.ZipFile(wheel) as archive:
                (CACHE / Path(member).name).write_bytes(archive.read(member))
            wheel.unlink()
        binary.chmod(0o755)
    environment = {**os.environ, "LD_LIBRARY_PATH": str(CACHE)}
    probe = subprocess.run([str(binary), "--version"], capture_output=True, text=True, env=environment, timeout=60)
    if "error while loading shared libraries" in probe.stderr:
        pytest.skip(f"perf_analyzer cannot start: {probe.stderr.strip()} (Debian: apt-get install libb64-0d)")
    return binary, environment


def test_perf_analyzer_drives_a_sequence_model_with_no_input_file(server, triton, perf_analyzer, tmp_path):
    binary, environment = perf_analyzer
    before = triton("repository_and_statistics", server.target, "lstm")["statistics"][0]
    report = tmp_path / "report.csv"
    done = subprocess.run(
        [str(binary), "-m", "lstm", "-i", "grpc", "-u", server.target, "--streaming", "--sequence-length", "10",
         "--concurrency-range", "2", "--measurement-interval", "500", "--shape", "tokens:1", "--input-data", "zero",
         "--max-trials", "20", "--stability-percentage", "100", "-f", str(report)],  # what is tested is the protocol, not this noisy machine
        capture_output=True, text=True, env=environment, timeout=300,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "Server: " in done.stdout and "Successful request count" in done.stdout, done.stdout  # it read ModelStatistics
    (row,) = list(csv.DictReader(report.open()))
    assert float(row["Inferences/Second"]) > 0 and float(row["Server Compute Infer"]) > 0
    after = triton("repository_and_statistics", server.target, "lstm")["statistics"][0]
    served = int(after["inference_stats"]["success"]["count"]) - int(before.get("inference_stats", {}).get("success", {}).get("count", 0))
    measured = int(done.stdout.split("Request count: ")[1].split()[0])
    assert served >= measured  # every request it measured was answered and counted (and those of warm-up)
