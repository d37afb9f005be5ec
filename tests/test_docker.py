"""The serving image, built and run for real: a Docker daemon (started here when none runs), a base image made
with debootstrap (no image registry is reachable here), the Dockerfile's `serve` target built from the wheel, a
container serving a mounted model to the Python client and to Triton's client, its health check turning healthy,
and `docker stop` draining it to a clean exit within the grace period."""

import glob
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from bench.common import free_port
from rnnserve.client import RnnServeClient, audio_request, outputs_of
from rnnserve.server.sampling import softmax
from tests.helpers import ServerThread, distributions
from tests.test_store import FIRST, SECOND
from tests.test_triton_client import CHUNKS, native_distributions
from tests.test_values import noisy_audio, reference, silero_path

ROOT = Path(__file__).resolve().parent.parent
BASE_IMAGE = "rnnserve/base:bookworm"  # made by deploy/debootstrap-base.sh
IMAGE = "rnnserve/serve:test"
MAX_IMAGE_BYTES = 320 * 10**6  # 309 MB: the base, onnxruntime, numpy, grpcio, tokenizers and aiohttp (12 MB, --http-port)


def docker(*args, check=True, timeout=600) -> subprocess.CompletedProcess:
    done = subprocess.run(["docker", *args], capture_output=True, text=True, timeout=timeout)
    if check and done.returncode != 0:
        raise AssertionError(f"docker {' '.join(args)}: {done.stderr[-3000:]}")
    return done


@pytest.fixture(scope="module")
def daemon():
    """A running Docker daemon: the one there is, or one started here (as root) and stopped afterwards."""
    if shutil.which("docker") is None:
        pytest.skip("docker is not installed (apt-get install docker.io)")
    if docker("info", check=False, timeout=30).returncode == 0:
        yield
        return
    if shutil.which("dockerd") is None or os.geteuid() != 0:
        pytest.skip("no Docker daemon runs, and this test can start one only as root with dockerd installed")
    log = open(tempfile.mkstemp(prefix="dockerd-", suffix=".log")[1], "w")
    process = subprocess.Popen(["dockerd", "--bridge=none", "--iptables=false", "--ip6tables=false"], stdout=log, stderr=log)
    deadline = time.monotonic() + 60
    while docker("info", check=False, timeout=30).returncode != 0:
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            pytest.skip(f"dockerd could not start here (see {log.name})")
        time.sleep(0.5)
    try:
        yield
    finally:
        process.terminate()
        process.wait(60)


@pytest.fixture(scope="module")
def image(daemon, tmp_path_factory):
    """The serve image, from the wheel and its dependencies' wheels (no package index inside the build)."""
    if docker("image", "inspect", BASE_IMAGE, check=False).returncode != 0:
        if shutil.which("debootstrap") is None:
            pytest.skip(f"no {BASE_IMAGE} image and no debootstrap to make one (apt-get install debootstrap)")
        made = subprocess.run([ROOT / "deploy" / "debootstrap-base.sh", BASE_IMAGE], capture_output=True, text=True, timeout=900)
        assert made.returncode == 0, made.stderr[-3000:]
    context = tmp_path_factory.mktemp("context")
    dist = context / "dist"
    subprocess.run([sys.executable, "-m", "build", "--wheel", "--no-isolation", "--outdir", dist, ROOT], check=True, capture_output=True, timeout=300)
    (wheel,) = glob.glob(str(dist / "rnnserve-*.whl"))
    # with the store extra, and async-timeout: redis needs it on the base image's Python (bookworm's 3.11.2), not here
    subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--dest", dist, f"{wheel}[store]", "async-timeout"],
                   check=True, capture_output=True, timeout=600)
    shutil.copy(ROOT / ".dockerignore", context)
    build = subprocess.run(
        ["docker", "build", "--network", "host", "-f", ROOT / "Dockerfile", "--target", "serve", "-t", IMAGE,
         "--build-arg", f"BASE={BASE_IMAGE}", "--build-arg", "PIP_INSTALL_OPTIONS=--no-index --find-links /tmp/dist", context],
        capture_output=True, text=True, timeout=900, env=os.environ | {"DOCKER_BUILDKIT": "0"},
    )
    assert build.returncode == 0, build.stdout[-3000:] + build.stderr[-3000:]
    yield IMAGE
    docker("image", "rm", "-f", IMAGE, check=False)


@pytest.fixture
def models(repository):
    """The test models where the container's user (uid 10001) can read them: pytest's folders are private."""
    folder = Path(tempfile.mkdtemp(prefix="rnnserve-models-"))
    folder.chmod(0o755)
    shutil.copytree(repository / "lstm", folder / "lstm")
    if importlib.util.find_spec("silero_vad") is not None:  # and the VAD, described as the README says
        from rnnserve.export.describe_values import describe_values

        describe_values(silero_path(), [("state", "stateN")], "input", 512, "vad", 64, {"sr": "16000"}, 16000, folder / "vad" / "1" / "model.onnx")
    for path in folder.rglob("*"):
        path.chmod(0o755 if path.is_dir() else 0o644)
    yield folder
    shutil.rmtree(folder)


def test_the_serving_image_is_small_and_has_no_torch(image):
    size = json.loads(docker("image", "inspect", image).stdout)[0]["Size"]
    assert size <= MAX_IMAGE_BYTES, f"the serve image is {size / 1e6:.0f} MB"
    probe = docker("run", "--rm", "--entrypoint", "python3", image, "-c", "import torch", check=False)
    assert "No module named 'torch'" in probe.stderr
    tokenizers = "from tokenizers import Tokenizer, models; Tokenizer.from_str(Tokenizer(models.BPE()).to_str())"
    docker("run", "--rm", "--entrypoint", "python3", image, "-c", tokenizers)  # subword models load without the hub client
    user = docker("run", "--rm", "--entrypoint", "id", image, "-u").stdout.strip()
    assert user == "10001"


def test_a_container_serves_both_apis_turns_healthy_and_drains_on_docker_stop(image, models, client, triton):
    with container(image, models) as (name, target):
        with RnnServeClient(target) as container_client:
            served = container_client.generate_text("lstm", "The ", temperature=0.0, max_tokens=40)
        assert served == client.generate_text("lstm", "The ", temperature=0.0, max_tokens=40)
        logits = triton("infer_sequence", target, "lstm", CHUNKS, 9001)
        for got, want in zip(logits, native_distributions(client, "lstm", CHUNKS)):
            assert np.abs(softmax(got[0].astype(np.float64)) - want).max() < 1e-5
        stopped = time.monotonic()
        docker("stop", name, timeout=60)  # SIGTERM; docker kills it after 10 s
        assert time.monotonic() - stopped < 10
        state = _state(name)
        assert (state["ExitCode"], state["OOMKilled"]) == (0, False)
        logs = docker("logs", name)
        assert "rnnserve shutting down" in logs.stdout, logs.stdout + logs.stderr


def test_a_container_serves_silero_vad_exactly(image, models):
    """The serving image (no torch, no onnx) serves a described model that takes audio."""
    if not (models / "vad").exists():
        pytest.skip("needs silero-vad (the dev extra)")
    audio = noisy_audio(42, 12)
    with container(image, models) as (_, target), RnnServeClient(target) as container_client:
        got = np.concatenate([outputs_of(a)["output"][:, 0] for a in container_client.stream("vad", [audio_request(audio, 16000)])])
    assert np.abs(got - reference(silero_path(), audio)).max() < 1e-5


def test_a_container_keeps_its_sessions_in_a_state_store(image, models, redis_server, base_config):
    """The image has the store's client: a session streamed in the container goes on exactly in another server."""
    with container(image, models, RNNSERVE_STATE_STORE=redis_server.url, RNNSERVE_STATE_LEASE_S=1) as (_, target):
        with RnnServeClient(target) as in_container:
            uninterrupted = distributions(in_container.stream("lstm", [FIRST, SECOND]))
            before = list(in_container.stream("lstm", [FIRST], session_id="boxed"))
        redis_server.wait_for_position("session:boxed", len(FIRST))
    with ServerThread(replace(base_config, state_store=redis_server.url, state_lease_s=1.0)) as elsewhere, elsewhere.client() as outside:
        after = list(outside.stream("lstm", [SECOND], session_id="boxed", resume=True))
    assert np.abs(distributions(before + after) - uninterrupted).max() < 1e-6


@contextmanager
def container(image: str, models: Path, **environment):
    """A serve container on the host's network, once its health check says healthy: (its name, its gRPC target)."""
    port, metrics_port = free_port(), free_port()
    name = f"rnnserve-test-{os.getpid()}-{port}"
    settings = {"RNNSERVE_HOST": "127.0.0.1", "RNNSERVE_PORT": port, "RNNSERVE_METRICS_HOST": "127.0.0.1",
                "RNNSERVE_METRICS_PORT": metrics_port, **environment}
    docker(
        "run", "-d", "--name", name, "--network", "host", "-v", f"{models}:/models:ro", "--health-interval", "1s",
        *(f"--env={key}={value}" for key, value in settings.items()), image,
    )
    try:
        deadline = time.monotonic() + 90
        while (health := _state(name)["Health"]["Status"]) != "healthy":
            assert health == "starting" and time.monotonic() < deadline, docker("logs", name).stderr
            time.sleep(0.5)
        yield name, f"127.0.0.1:{port}"
    finally:
        docker("rm", "-f", name, check=False)


def _state(name: str) -> dict:
    return json.loads(docker("inspect", name).stdout)[0]["State"]

