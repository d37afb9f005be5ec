"""The server as a whole: health, reflection, the CLI, graceful shutdown, devices, generated code."""

import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import grpc
import onnxruntime as ort
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from tests.helpers import run_cli

ROOT = Path(__file__).resolve().parent.parent
HAS_CUDA = "CUDAExecutionProvider" in ort.get_available_providers()


def test_health_reports_serving(server):
    with grpc.insecure_channel(server.target) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        for service in ("", "rnnserve.v1.RnnServe"):
            response = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
            assert response.status == health_pb2.HealthCheckResponse.SERVING


def test_cli_health_says_serving(server):
    done = run_cli("health", "--target", server.target, "--service", "inference.GRPCInferenceService")
    assert (done.returncode, done.stdout) == (0, "SERVING\n"), done.stderr


def test_reflection_lets_tools_discover_the_api(server):
    with grpc.insecure_channel(server.target) as channel:
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        request = reflection_pb2.ServerReflectionRequest(list_services="")
        response = next(stub.ServerReflectionInfo(iter([request]), timeout=5))
        names = {s.name for s in response.list_services_response.service}
        assert {"rnnserve.v1.RnnServe", "grpc.health.v1.Health"} <= names


def test_device_resident_state_path_gives_the_same_results(make_server, client):
    """The I/O-binding slab used on CUDA, run here on CPU memory, equals the host slab."""
    bound = make_server(io_binding=True)
    chunks = ["The first chunk, ", "then more", "."]
    with bound.client() as bound_client:
        assert bound_client.generate_text("lstm", "The ", temperature=0.0, max_tokens=50) == client.generate_text(
            "lstm", "The ", temperature=0.0, max_tokens=50
        )
        bound_steps = [c.probability for r in bound_client.stream("gru", chunks) for s in r.steps for c in s.next]
        host_steps = [c.probability for r in client.stream("gru", chunks) for s in r.steps for c in s.next]
        assert bound_steps == pytest.approx(host_steps, abs=1e-6)


def test_cli_generate_prints_the_generated_text(server, client):
    expected = client.generate_text("lstm", "The ", temperature=0.0, max_tokens=30)
    done = run_cli("generate", "--target", server.target, "--model", "lstm", "--temperature", "0", "--max-tokens", "30", "The ")
    assert done.returncode == 0, done.stderr
    assert done.stdout == expected + "\n"


def test_cli_generate_says_why_it_wrote_no_text(server, client):
    first = client.generate_text("lstm", "The ", temperature=0.0, max_tokens=30)[0]
    flags = ["--target", server.target, "--model", "lstm", "--temperature", "0", "--max-tokens", "30"]
    done = run_cli("generate", *flags, "--stop", f"\\u{ord(first):04x}", "The ")  # stops before the first character
    assert (done.returncode, done.stdout) == (0, "\n"), done.stderr
    assert done.stderr == "(no text: the text began with a --stop string)\n"


def test_cli_generate_continues_a_named_session(server, client):
    settings = dict(temperature=0.7, seed=2, max_tokens=10)
    expected = [client.generate_text("lstm", turn, session_id="cli-reference", **settings) for turn in ("The ", "and ")]
    flags = ["--target", server.target, "--model", "lstm", "--session-id", "cli-talk", "--temperature", "0.7", "--seed", "2", "--max-tokens", "10"]
    assert [run_cli("generate", *flags, turn).stdout for turn in ("The ", "and ")] == [text + "\n" for text in expected]
    for session in ("cli-reference", "cli-talk"):
        client.close_session(session)


def test_cli_stream_shows_every_step(server):
    done = run_cli("stream", "--target", server.target, "--model", "lstm", "--top-k", "2", input="ab\ncd\n")
    assert done.returncode == 0, done.stderr
    step_lines = [line for line in done.stdout.splitlines() if "→" in line]
    assert len(step_lines) == 6  # a, b, newline, c, d, newline
    assert "[session" in done.stdout and "position 6]" in done.stdout


def test_cli_reports_a_missing_model_clearly(server):
    done = run_cli("generate", "--target", server.target, "--model", "nope", "x")
    assert done.returncode != 0
    assert "NOT_FOUND" in done.stderr and "'nope'" in done.stderr


def test_nonsense_settings_are_refused_before_start(repository):
    done = run_cli("serve", "--repository", str(repository), "--max-sessions", "0")
    assert done.returncode != 0
    assert "--max-sessions must be at least 1" in done.stderr


def test_a_busy_port_is_refused_not_shared(server, repository):
    port = server.target.rsplit(":", 1)[1]
    done = run_cli("serve", "--repository", str(repository), "--port", port)
    assert done.returncode == 1
    # one line, before any model loads (no "loaded …" lines) and without gRPC's own C-core lines
    assert done.stderr.splitlines() == [
        f"rnnserve serve: cannot listen on 127.0.0.1:{port}: the port is in use (another server?) or the address is not "
        "this machine's: choose another --port, or stop what holds it"
    ]
    assert done.stdout == ""


@pytest.mark.skipif(HAS_CUDA, reason="this machine has CUDA")
def test_cuda_without_a_gpu_fails_clearly(repository):
    done = run_cli("serve", "--repository", str(repository), "--port", "0", "--device", "cuda")
    assert done.returncode != 0
    assert "no CUDA execution provider" in done.stderr and "--device cpu" in done.stderr


@pytest.mark.skipif(not HAS_CUDA, reason="needs onnxruntime's CUDA execution provider")
def test_cuda_gives_the_same_greedy_text(make_server, client):
    cuda = make_server(device="cuda")
    with cuda.client() as cuda_client:
        assert "CUDAExecutionProvider" in cuda_client.get_model("lstm").providers
        assert cuda_client.generate_text("lstm", "The ", temperature=0.0, max_tokens=50) == client.generate_text(
            "lstm", "The ", temperature=0.0, max_tokens=50
        )


def test_sigterm_shuts_down_gracefully(repository):
    from rnnserve.client import RnnServeClient

    process = subprocess.Popen(
        [sys.executable, "-m", "rnnserve", "serve", "--repository", str(repository), "--port", "0", "--grace-s", "2"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    try:
        port = next(m.group(1) for line in process.stdout if (m := re.search(r"listening on 127\.0\.0\.1:(\d+)", line)))
        with RnnServeClient(f"127.0.0.1:{port}", timeout_s=30) as client:
            box = queue.Queue()
            idle_stream = client.stream("lstm", iter(box.get, None))
            box.put("a")
            next(idle_stream)
            process.send_signal(signal.SIGHUP)  # logged and ignored: the server goes on serving
            generation = client.generate("lstm", "The ", max_tokens=4000, temperature=1.0, seed=1)
            next(generation)
            watch = health_pb2_grpc.HealthStub(client._channel).Watch(health_pb2.HealthCheckRequest())  # not ours to end
            next(watch)
            outcome = {}

            def drain(name, responses):
                try:
                    outcome[name] = sum(1 for _ in responses)
                except grpc.RpcError as err:
                    outcome[name] = err.code()
                    outcome[name + " details"] = err.details()

            threads = [threading.Thread(target=drain, args=a) for a in (("stream", idle_stream), ("generate", generation), ("watch", watch))]
            for thread in threads:
                thread.start()
            started = time.monotonic()
            process.send_signal(signal.SIGTERM)
            assert process.wait(timeout=20) == 0
            assert time.monotonic() - started < 2 + 0.5  # the grace period and half a second, a health watch open or not
            assert "SIGHUP ignored" in process.stdout.read()
            for thread in threads:
                thread.join(10)
            box.put(None)
            # in flight: a generation finishes within the grace period or is told the server went away;
            # a stream still waiting for its client after the grace period is told so, rather than hanging
            assert isinstance(outcome["generate"], int) or outcome["generate"] == grpc.StatusCode.UNAVAILABLE, outcome
            assert outcome["stream"] == grpc.StatusCode.UNAVAILABLE, outcome
            # the client is told why, in the server's words, not gRPC's bare "Cancelling all calls"
            assert "the server is shutting down" in outcome["stream details"], outcome
            assert "2 s grace period" in outcome["stream details"], outcome
    finally:
        process.kill()


def test_generated_protobuf_code_is_fresh(tmp_path):
    """The committed stubs equal what scripts/gen_protos.sh makes from protos/ now."""
    subprocess.run(["bash", str(ROOT / "scripts" / "gen_protos.sh"), str(tmp_path)], check=True, env={**os.environ, "PYTHON": sys.executable})
    generated = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*") if p.is_file())
    assert generated, "the generator wrote nothing"
    for relative in generated:
        assert (ROOT / relative).read_bytes() == (tmp_path / relative).read_bytes(), f"{relative} is stale: run scripts/gen_protos.sh"


def test_generated_slab_graphs_are_fresh(tmp_path):
    """server/slab_graphs/*.onnx equal what scripts/gen_slab_graphs.py makes now."""
    import onnx

    subprocess.run([sys.executable, str(ROOT / "scripts" / "gen_slab_graphs.py"), str(tmp_path)], check=True)
    for name in ("gather", "scatter"):
        committed = onnx.load(str(ROOT / "server" / "slab_graphs" / f"{name}.onnx"))
        fresh = onnx.load(str(tmp_path / f"{name}.onnx"))
        assert committed.graph == fresh.graph, f"{name}.onnx is stale: run scripts/gen_slab_graphs.py"


def test_serving_path_needs_neither_torch_nor_onnx():
    code = """
import sys

class Block:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("torch", "onnx", "tqdm"):
            raise ImportError("blocked: " + name)

sys.meta_path.insert(0, Block())
import rnnserve.client, rnnserve.server.app, rnnserve.server.workers
training = sorted(m for m in sys.modules if m.startswith(("rnnserve.training", "rnnserve.export")))
assert not training, f"the server imports training or export code: {training}"
import rnnserve.cli
rnnserve.cli.build_parser()
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert done.returncode == 0, done.stderr
