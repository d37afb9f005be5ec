"""The distribution: the wheel and the sdist build, the wheel holds only the rnnserve package, and installed alone
into a fresh environment (no torch, no onnx) it serves an exported model."""

import glob
import signal
import socket
import subprocess
import sys
import tarfile
import time
import zipfile
from pathlib import Path

import pytest

from rnnserve.client import RnnServeClient

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def dist(tmp_path_factory) -> Path:
    """The sdist, and the wheel built from it (what `python -m build` does by default)."""
    out = tmp_path_factory.mktemp("dist")
    done = subprocess.run(
        [sys.executable, "-m", "build", "--no-isolation", "--outdir", str(out), str(ROOT)], capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return out


def test_the_wheel_installs_only_the_rnnserve_package(dist):
    (wheel,) = glob.glob(str(dist / "*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    assert {name.split("/")[0] for name in names} == {"rnnserve", f"rnnserve-{_version()}.dist-info"}
    for needed in ("rnnserve/server/app.py", "rnnserve/server/slab_graphs/gather.onnx", "rnnserve/contract.py", "rnnserve/v1/rnnserve_pb2.py"):
        assert needed in names


def test_the_sdist_carries_the_sources_and_the_protos(dist):
    (sdist,) = glob.glob(str(dist / "*.tar.gz"))
    names = {name.split("/", 1)[1] for name in tarfile.open(sdist).getnames() if "/" in name}
    assert {"pyproject.toml", "server/app.py", "training/train.py", "protos/rnnserve/v1/rnnserve.proto", "server/slab_graphs/scatter.onnx"} <= names


def test_the_wheel_alone_serves_an_exported_model(dist, tmp_path, repository, client):
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    (wheel,) = glob.glob(str(dist / "*.whl"))
    install = subprocess.run([venv / "bin" / "pip", "install", "-q", wheel], capture_output=True, text=True, timeout=600)
    assert install.returncode == 0, install.stderr[-3000:]
    python = str(venv / "bin" / "python")
    for absent in ("torch", "onnx", "server", "training", "client", "export"):
        probe = subprocess.run([python, "-c", f"import {absent}"], capture_output=True, text=True, cwd=tmp_path)
        assert probe.returncode != 0, f"the wheel's environment can import {absent!r}"
    port = _free_port()
    target = f"127.0.0.1:{port}"
    server = subprocess.Popen(
        [venv / "bin" / "rnnserve", "serve", "--repository", str(repository), "--port", str(port)],
        cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    try:
        _wait_healthy(venv, target, server)
        with RnnServeClient(target) as wheel_client:
            served = wheel_client.generate_text("lstm", "The ", temperature=0.0, max_tokens=40)
        assert served == client.generate_text("lstm", "The ", temperature=0.0, max_tokens=40)
    finally:
        server.send_signal(signal.SIGTERM)
        output = server.communicate(timeout=60)[0]
    assert server.returncode == 0, output


def _version() -> str:
    from importlib import metadata

    return metadata.version("rnnserve")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_healthy(venv: Path, target: str, server: subprocess.Popen) -> None:
    """Until the installed `rnnserve health` says SERVING."""
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        assert server.poll() is None, server.communicate()[0]
        health = subprocess.run([venv / "bin" / "rnnserve", "health", "--target", target, "--timeout-s", "1"], capture_output=True, text=True)
        if health.returncode == 0:
            assert health.stdout == "SERVING\n"
            return
        time.sleep(0.2)
    raise AssertionError(f"the wheel's server did not become healthy at {target}")

