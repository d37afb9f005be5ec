"""The benchmarks run end to end on a tiny model and print the figures and target verdicts they promise."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def bench(module: str, repository: Path, *flags: str) -> list[dict]:
    done = subprocess.run(
        [sys.executable, "-m", module, "--repository", str(repository), "--model", "rnn", "--threads", "1", *flags],
        capture_output=True, text=True, timeout=300, cwd=ROOT,
    )
    assert done.returncode == 0, done.stderr
    return [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]


def test_step_latency_bench(repository):
    latency, prompt = bench("bench.step_latency", repository, "--steps", "30", "--prompt", "50")
    assert latency["grpc_stream"]["p50_ms"] > 0 and latency["in_process_onnxruntime"]["p50_ms"] > 0
    assert latency["in_process_onnxruntime_after_1ms_idle"]["p50_ms"] > 0
    ratio = latency["grpc_stream"]["p50_ms"] / latency["in_process_onnxruntime"]["p50_ms"]
    assert abs(latency["ratio_p50"] - ratio) < 0.02  # printed figures are rounded
    assert isinstance(latency["target_p50_1.5x_met"], bool) and isinstance(prompt["target_20x_met"], bool)


def test_throughput_bench(repository):
    (line,) = bench("bench.throughput", repository, "--streams", "64", "--tokens", "5")
    figures = line["tokens_per_s"]
    assert set(figures) == {"rnnserve", "naive_server", "in_process_onnxruntime_batched"}
    assert abs(line["ratio_vs_naive_server"] - figures["rnnserve"] / figures["naive_server"]) < 0.02
    assert isinstance(line["target_0.6x_in_process_met"], bool) and isinstance(line["target_own_cpu_100us_met"], bool)
    cpu = line["cpu_us_per_step"]
    assert cpu["server"] > 0 and cpu["client"] > 0 and 1 <= line["mean_batch"] <= 64
    assert abs(cpu["server_beyond_onnxruntime"] - (cpu["server"] - cpu["onnxruntime_in_process_at_mean_batch"])) < 0.2


def test_throughput_bench_over_kserve(repository):
    (line,) = bench("bench.throughput", repository, "--api", "kserve", "--streams", "4", "--tokens", "5")
    assert line["api"] == "kserve" and line["tokens_per_s"]["rnnserve"] > 0
    assert abs(line["ratio_vs_naive_server"] - line["tokens_per_s"]["rnnserve"] / line["tokens_per_s"]["naive_server"]) < 0.02


def test_state_store_bench(repository):
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not installed (apt-get install redis-server)")
    (line,) = bench("bench.state_store", repository, "--streams", "4", "--tokens", "5")
    steps = line["steps_per_s"]
    assert steps["with_store"] > 0 and steps["without_store"] > 0
    assert abs(line["ratio_with_store"] - steps["with_store"] / steps["without_store"]) < 0.002
    assert isinstance(line["target_0.85x_met"], bool)
    assert line["server_cpu_us_per_step"]["with_store"] > 0 and line["write_interval_ms"] == 50.0


def test_profile_server_bench_samples_the_server_under_load(repository, tmp_path):
    flame = tmp_path / "profile.svg"
    done = subprocess.run(
        [sys.executable, "-m", "bench.profile_server", "--repository", str(repository), "--model", "rnn", "--threads", "1",
         "--streams", "4", "--seconds", "2", "--gil", "--out", str(flame)],
        capture_output=True, text=True, timeout=300, cwd=ROOT,
    )
    if "Permission denied" in done.stderr or "ptrace" in done.stderr:
        pytest.skip(f"py-spy may not sample another process here: {done.stderr.strip()[-300:]}")
    assert done.returncode == 0, done.stderr
    samples = int(done.stdout.split(" samples")[0].split()[-1])
    assert samples > 0 and "--- own time" in done.stdout and flame.stat().st_size > 0


def test_large_request_bench(repository):
    (line,) = bench("bench.large_request", repository, "--steps", "30", "--rows", "4", "--max-input-tokens", "2048")
    assert line["large_request"] == [4, 512] and line["large_requests_answered"] >= 1
    ratio = line["while_large_requests_run"]["p99_ms"] / line["unloaded"]["p99_ms"]
    assert abs(line["ratio_p99"] - ratio) < 0.02 and isinstance(line["target_p99_3x_met"], bool)
    assert set(line["server_rss_mb"]) == {"before", "peak", "after"}
    assert line["answer_mb"] > 1.9 and line["rss_after_within_bound"], line  # [4, 512, 256] float32 logits: 2 MB


def test_vad_bench():
    pytest.importorskip("silero_vad", reason="the dev extra installs silero-vad")
    done = subprocess.run(
        [sys.executable, "-m", "bench.vad", "--streams", "2,4", "--seconds", "0.4"], capture_output=True, text=True, timeout=300, cwd=ROOT
    )
    assert done.returncode == 0, done.stderr
    (line,) = [json.loads(text) for text in done.stdout.splitlines() if text.startswith("{")]
    assert set(line["streams_sustained"]) == {"in_process", "per_session", "per_session_websocket", "multiplexed"}
    for way, by_count in line["by_count"].items():
        assert by_count["2"]["p99_ms"] > 0 and by_count["2"]["cpu_us_per_chunk"] > 0, way
    assert line["onnxruntime_cpu_us_per_chunk"]["batch_256"] > 0 and set(line["targets_met"]) == {"multiplexed", "per_session", "per_session_websocket"}


def test_numbers_bench_sets_each_model_beside_the_baselines():
    """A few steps each (the quality is the README's run, not this one's); the baselines are deterministic, so their
    figures are exactly the published ones where a paper has them (1-NN DTW on the UEA archive's split)."""
    pytest.importorskip("aeon", reason="the [series] extra (in dev) installs aeon")
    pytest.importorskip("statsmodels", reason="the [series] extra (in dev) installs statsmodels")
    from bench.numbers import main

    results = main(["--steps", "20", "--quick"])
    vowels, motions = results["classification"]["JapaneseVowels"], results["classification"]["BasicMotions"]
    assert vowels["dtw_1nn_accuracy"] == 0.9486 and motions["dtw_1nn_accuracy"] == 0.975  # DTW_D in Bagnall et al. 2018: 0.949, 0.975
    assert (vowels["classes"], vowels["test_sequences"], motions["test_sequences"]) == (9, 370, 40)
    co2 = results["forecasting"]["co2"]
    assert (co2["held_out_steps"], co2["horizon"], co2["period"]) == (114, 52, 52)
    assert 0 < co2["mase"] and 0 <= co2["coverage_90"] <= 1 and co2["persistence_mase"] == pytest.approx(0.2768, abs=1e-4)
    assert co2["arima_mase"] < co2["persistence_mase"] < co2["seasonal_naive_mase"]  # one step ahead, ARIMA follows the noise best
    assert results["forecasting"]["sunspots"]["horizon"] == 11
