"""bench.peers: rnnserve against a real Triton under Triton's own tools. Without the peers' venv (see the module's
docstring) the Triton half is skipped and said so, and everything of ours still runs: rnnserve and the echo server
under tritonclient's multiplexed load, the in-process floor and the summary."""

import argparse
import os
from pathlib import Path

import pytest

from bench.common import cpu_list
from bench.peer_servers import Peers
from bench.peers import summary
from tests.helpers import native_unavailable
from tests.test_bench import bench

PEERS = Path(os.environ.get("RNNSERVE_PEERS", "/opt/peers"))


def test_without_the_peers_ours_is_measured_and_the_peer_skipped(repository, tmp_path):
    # the servers on one CPU and the client on another where there are two (what each ran on is read from /proc)
    cpus = sorted(os.sched_getaffinity(0))
    server, client = str(cpus[0]), str(cpus[-1])
    # 400 requests: enough that even the echo server's CPU spans several of /proc's 10 ms ticks on a fast machine
    lines = bench("bench.peers", repository, "--peers", str(tmp_path / "no-venv"), "--concurrency", "--sequences", "4", "--steps", "100",
                  "--server-cpus", server, "--client-cpus", client)
    assert lines[0] == {"bench": "peers", "server_cpus": server, "client_cpus": client, "onnxruntime_threads": 1}
    skipped = {line["skipped"]: line["why"] for line in lines if "skipped" in line}
    assert set(skipped) == {"Triton", "perf_analyzer"} and "nvidia-pytriton" in skipped["Triton"]
    load = next(line for line in lines if line.get("load") == "multiplexed_4")
    ours = load["rnnserve"]
    assert ours["requests"] == 400 and ours["steps_per_s"] > 0 and ours["server_cpu_us_per_step"] > 0
    assert 1 <= ours["mean_batch"] <= 4 and ours["client_cpu_us_per_step"] > 0
    assert (ours["server_cpus"], ours["client_cpus"]) == (server, client)
    assert "skipped" in load["triton"]
    native = load["rnnserve_native"]
    if native_unavailable() is None:  # the same load through --native-port
        assert native["requests"] == 400 and native["server_cpu_us_per_step"] > 0 and 1 <= native["mean_batch"] <= 4
        # its CPU by thread: every thread found by what it does, none counted twice (threads that ended are in the
        # process's total only), the event loop and the engine each busy for more than /proc's 10 ms tick
        threads = native["server_cpu_us_per_step_by_thread"]
        assert set(threads) == {"event_loop", "engine", "onnxruntime_pool", "writer", "grpc"}
        assert threads["event_loop"] > 0 and threads["engine"] > 0
        assert sum(threads.values()) <= native["server_cpu_us_per_step"] + 0.5
    else:
        assert native == {"skipped": native_unavailable()}
    echo = next(line for line in lines if line.get("load") == "echo_multiplexed_4")["multiplexed"]
    assert echo["requests"] == 400 and echo["server_cpu_us_per_step"] > 0 and (echo["server_cpus"], echo["client_cpus"]) == (server, client)
    final = lines[-1]
    assert final["bench"] == "peers_summary" and 0 < final["in_process_floor"]["batch_1_p50_ms"]
    assert final["in_process_floor"]["batch_1_after_1ms_idle_p50_ms"] > 0
    for ours in ("rnnserve", "rnnserve_native") if native_unavailable() is None else ("rnnserve",):
        assert final[ours]["multiplexed_4"]["throughput_vs_triton"] is None
        own = final[ours]["multiplexed_4_own_cpu_us"]
        assert own["echo_server"] == echo["server_cpu_us_per_step"] and own["server"] == load[ours]["server_cpu_us_per_step"]
        assert abs(own["beyond_onnxruntime"] - (own["server"] - own["onnxruntime_in_process_at_mean_batch"])) < 0.2
        assert set(final[ours]["targets_met"]) == {"multiplexed_4_beyond_onnxruntime_within_echo"}


def test_cpu_lists_are_read_as_linux_writes_them_and_only_cpus_this_process_may_use_are_taken():
    allowed = os.sched_getaffinity(0)
    first, last = min(allowed), max(allowed)
    assert cpu_list(f"{first}") == {first} and cpu_list(f"{first}-{first},{last}") == {first, last}
    for wrong, says in (("x", "not a CPU list"), (f"{first}-", "not a CPU list"), ("1-0", "not a CPU list"), ("", "not a CPU list"),
                        (f"{last + 1}", "may run on CPUs")):
        with pytest.raises(argparse.ArgumentTypeError, match=says):
            cpu_list(wrong)


def test_summary_reads_ratios_and_a_crash_is_not_a_number():
    class Args:
        concurrency, sequences = [1, 64], [64]

    results = {
        "perf_analyzer_c1": {"rnnserve": {"infer_per_s": 900.0, "p50_ms": 1.0, "server_cpu_us_per_step": 300.0},
                             "triton": {"infer_per_s": 600.0, "p50_ms": 1.5, "server_cpu_us_per_step": 500.0}},
        "perf_analyzer_c64": {"rnnserve": {"infer_per_s": 3000.0, "p50_ms": 20.0, "server_cpu_us_per_step": 200.0},
                              "triton": {"crashed": True}},
        "multiplexed_64": {"rnnserve": {"steps_per_s": 2000.0, "server_cpu_us_per_step": 400.0},
                           "rnnserve_native": {"steps_per_s": 3000.0, "server_cpu_us_per_step": 300.0},
                           "triton": {"steps_per_s": 1000.0, "server_cpu_us_per_step": 500.0}},
        "echo": {"multiplexed": {"server_cpu_us_per_step": 150.0}},
    }
    summarised = summary(results, {"batched_64_steps_per_s": 10000.0}, {(64, "rnnserve"): 200.0, (64, "rnnserve_native"): 200.0}, Args)
    native = summarised["rnnserve_native"]
    assert native["multiplexed_64"]["throughput_vs_triton"] == 3.0 and native["multiplexed_64"]["cpu_per_step_vs_triton"] == 0.6
    assert native["multiplexed_64_own_cpu_us"]["beyond_onnxruntime"] == 100.0
    assert native["targets_met"]["multiplexed_64_cpu_0.7x_triton"] and native["targets_met"]["multiplexed_64_beyond_onnxruntime_within_echo"]
    assert "c1_p50_0.8x_triton" not in native["targets_met"]  # no figure of its own there
    line = summarised["rnnserve"]
    c1 = line["perf_analyzer_c1"]
    assert (c1["throughput_vs_triton"], c1["cpu_per_step_vs_triton"], c1["p50_vs_triton"]) == (1.5, 0.6, 0.67)
    assert line["perf_analyzer_c64"]["triton_crashed"] and line["perf_analyzer_c64"]["throughput_vs_triton"] is None
    assert line["perf_analyzer_c64"]["throughput_vs_floor"] == 0.3
    assert line["multiplexed_64_own_cpu_us"]["beyond_onnxruntime"] == 200.0
    assert line["targets_met"] == {
        "c1_p50_0.8x_triton": True, "c1_throughput_1.5x_triton": True, "c1_cpu_0.7x_triton": True,
        "multiplexed_64_throughput_1.5x_triton": True, "multiplexed_64_cpu_0.7x_triton": False,
        "multiplexed_64_beyond_onnxruntime_within_echo": False,
    }


@pytest.mark.skipif(Peers(PEERS).missing_triton() is not None, reason=f"no Triton in {PEERS} (set RNNSERVE_PEERS; see bench/peers.py)")
def test_against_a_real_triton(repository):
    flags = ["--peers", str(PEERS), "--sequences", "8", "--steps", "10", "--interval-ms", "1000"]
    perf_analyzer = Peers(PEERS).missing_perf_analyzer() is None
    lines = bench("bench.peers", repository, *flags, "--concurrency", *(["1"] if perf_analyzer else []))
    load = next(line for line in lines if line.get("load") == "multiplexed_8")
    if not load["triton"].get("crashed"):
        assert load["triton"]["requests"] == 80 and load["triton"]["server_cpu_us_per_step"] > 0
    if perf_analyzer:
        c1 = next(line for line in lines if line.get("load") == "perf_analyzer_c1")
        assert c1["rnnserve"]["infer_per_s"] > 0 and c1["rnnserve"]["mean_batch"] == 1.0
        assert c1["triton"].get("crashed") or c1["triton"]["p50_ms"] > 0
