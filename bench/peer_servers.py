"""The servers bench.peers measures beside rnnserve: a real Triton from the peers' virtual environment (see
bench/peers.py for how to make it), serving a step graph through bench/triton_model.py under its sequence batcher;
and an echo server, which answers every request at once and does nothing else: the transport's own cost."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.common import free_port

BENCH_DIR = Path(__file__).parent


class Peers:
    """Where a peers venv keeps Triton's server, its python backend and perf_analyzer; the `missing_…` methods say
    what is not there, and how to install it."""

    def __init__(self, root: Path):
        self.python = root / "bin" / "python"
        site = next((root / "lib").glob("python3.*/site-packages"), root / "lib" / "site-packages")
        self.triton = site / "pytriton" / "tritonserver"
        self.triton_libs = site / "nvidia_pytriton.libs"
        self.perf_analyzer = root / "bin" / "perf_analyzer"
        self.cudart = site / "nvidia" / "cuda_runtime" / "lib"
        self.site = site
        version = site.parent.name.removeprefix("python")  # the stub must embed the venv's Python
        self.stub = self.triton / "python_backend_stubs" / version / "triton_python_backend_stub"

    def missing_triton(self) -> str | None:
        for path, install in ((self.triton / "bin" / "tritonserver", "nvidia-pytriton==0.7.0"), (self.stub, "nvidia-pytriton==0.7.0"),
                              (self.site / "onnxruntime", "onnxruntime")):
            if not path.exists():
                return f"{path} is missing (pip install {install} into the peers venv)"
        return None

    def missing_perf_analyzer(self) -> str | None:
        if not self.perf_analyzer.exists():
            return f"{self.perf_analyzer} is missing (pip install 'tritonclient[all]==2.51.0' into the peers venv)"
        if not (self.cudart / "libcudart.so.12").exists():
            return f"{self.cudart}/libcudart.so.12 is missing (pip install nvidia-cuda-runtime-cu12 into the peers venv)"
        probe = subprocess.run([self.perf_analyzer, "--version"], capture_output=True, text=True, env=self.perf_env())
        if probe.returncode != 0:
            return f"perf_analyzer does not start: {(probe.stderr or probe.stdout).strip()[:200]} (apt-get install libb64-0d?)"
        return None

    def perf_env(self) -> dict:
        return {**os.environ, "LD_LIBRARY_PATH": f"{self.cudart}:{os.environ.get('LD_LIBRARY_PATH', '')}"}


def main_output(onnx: Path) -> tuple[str, int]:
    """The step graph's answer (its first output) and that output's width."""
    import onnxruntime as ort

    output = ort.InferenceSession(str(onnx), providers=["CPUExecutionProvider"]).get_outputs()[0]
    return output.name, int(output.shape[-1])


def triton_repository(peers: Peers, root: Path, onnx: Path, model: str, max_batch: int, threads: int) -> tuple[Path, Path]:
    """(model repository, backend directory), written under `root`, for tritonserver: the step graph behind
    bench/triton_model.py, and the python backend with the venv's stub copied in (as pytriton does)."""
    answer, vocabulary = main_output(onnx)
    (root / "models" / model / "1").mkdir(parents=True)
    shutil.copy(BENCH_DIR / "triton_model.py", root / "models" / model / "1" / "model.py")
    control = lambda name, kind: f'{{ name: "{name}" control [{{ kind: {kind} int32_false_true: [ 0, 1 ] }}] }}'  # noqa: E731
    (root / "models" / model / "config.pbtxt").write_text(f"""name: "{model}"
backend: "python"
max_batch_size: {max_batch}
input [{{ name: "tokens" data_type: TYPE_INT64 dims: [ -1 ] }}]
output [{{ name: "{answer}" data_type: TYPE_FP32 dims: [ -1, {vocabulary} ] }}]
sequence_batching {{
  max_sequence_idle_microseconds: 60000000
  oldest {{ max_candidate_sequences: {max_batch} max_queue_delay_microseconds: 0 }}
  control_input [
    {control("START", "CONTROL_SEQUENCE_START")},
    {control("END", "CONTROL_SEQUENCE_END")},
    {{ name: "CORRID" control [{{ kind: CONTROL_SEQUENCE_CORRID data_type: TYPE_UINT64 }}] }}
  ]
}}
instance_group [{{ kind: KIND_CPU count: 1 }}]
parameters [
  {{ key: "onnx_path" value {{ string_value: "{onnx.resolve()}" }} }},
  {{ key: "threads" value {{ string_value: "{threads}" }} }}
]
""")
    shutil.copytree(peers.triton / "backends", root / "backends")
    shutil.copy(peers.stub, root / "backends" / "python" / "triton_python_backend_stub")
    return root / "models", root / "backends"


@contextlib.contextmanager
def triton_process(peers: Peers, models: Path, backends: Path):
    """tritonserver on free ports; yields (address, the process) once the server says it is ready."""
    port = free_port()
    # the stub's embedded Python finds its prefix (and so the venv's packages) through the first python3 on PATH
    env = {**os.environ, "LD_LIBRARY_PATH": f"{peers.triton_libs}:{os.environ.get('LD_LIBRARY_PATH', '')}",
           "PATH": f"{peers.python.parent}:{os.environ['PATH']}"}
    log = tempfile.NamedTemporaryFile("w+", prefix="tritonserver-", suffix=".log", delete=False)
    process = subprocess.Popen(
        [peers.triton / "bin" / "tritonserver", "--model-repository", models, "--backend-directory", backends,
         "--grpc-port", str(port), "--http-port", str(free_port()), "--metrics-port", str(free_port()),
         "--log-verbose", "0"],
        stdout=log, stderr=subprocess.STDOUT, env=env,
    )
    try:
        target = f"127.0.0.1:{port}"
        deadline = time.monotonic() + 120
        while not _ready(target):
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"tritonserver did not start (exit {process.poll()}): {Path(log.name).read_text()[-2000:]}")
            time.sleep(0.5)
        yield target, process
    finally:
        process.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(30)
        process.kill()


def _ready(target: str) -> bool:
    import tritonclient.grpc as triton_grpc

    try:
        with contextlib.closing(triton_grpc.InferenceServerClient(target)) as client:
            return client.is_server_ready()
    except Exception:  # not listening yet
        return False


def serve_echo(port: int, answer: str, vocabulary: int) -> None:
    """A KServe server that does nothing: every ModelStreamInfer request is answered at once, with its id and a
    zero logits tensor of the real size. What one request in and one out costs grpc.aio and nothing else."""
    import asyncio

    import grpc

    from rnnserve.inference import grpc_service_pb2 as pb
    from rnnserve.inference import grpc_service_pb2_grpc as pb_grpc

    output = pb.ModelInferResponse.InferOutputTensor(name=answer, datatype="FP32", shape=[1, 1, vocabulary])
    logits = bytes(4 * vocabulary)

    class Echo(pb_grpc.GRPCInferenceServiceServicer):
        async def ModelStreamInfer(self, requests, context):
            async for request in requests:
                yield pb.ModelStreamInferResponse(infer_response=pb.ModelInferResponse(
                    model_name=request.model_name, id=request.id, outputs=[output], raw_output_contents=[logits]))

    async def serve() -> None:
        server = grpc.aio.server()
        pb_grpc.add_GRPCInferenceServiceServicer_to_server(Echo(), server)
        server.add_insecure_port(f"127.0.0.1:{port}")
        await server.start()
        print(f"listening on 127.0.0.1:{port} (pid {os.getpid()})", flush=True)
        await server.wait_for_termination()

    asyncio.run(serve())


@contextlib.contextmanager
def echo_process(answer: str, vocabulary: int):
    port = free_port()
    code = f"from bench.peer_servers import serve_echo; serve_echo({port}, {answer!r}, {vocabulary})"
    process = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, cwd=BENCH_DIR.parent)
    try:
        process.stdout.readline()
        yield f"127.0.0.1:{port}", process.pid
    finally:
        process.terminate()
        process.wait(30)
