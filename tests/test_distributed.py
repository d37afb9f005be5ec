"""Training past one process: `torchrun --nproc-per-node 2 -m rnnserve train` (DDP, gloo on the CPU) learns what
one process learns with the same global batch, and its checkpoint exports and serves."""

import subprocess
import sys

import torch

from tests.helpers import Reference, run_cli


def test_two_processes_train_as_one_with_the_same_global_batch(tmp_path, corpus_file, make_server):
    settings = [
        "train", "--corpus", str(corpus_file), "--steps", "40", "--eval-every", "20", "--batch-size", "8", "--hidden", "32",
        "--layers", "1", "--dropout", "0", "--quiet",
    ]
    single = run_cli(*settings, "--out", str(tmp_path / "one.pt"))
    assert single.returncode == 0, single.stderr
    double = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "-m", "rnnserve", *settings,
         "--out", str(tmp_path / "two.pt")],
        capture_output=True, text=True, timeout=300,
    )
    assert double.returncode == 0, double.stderr[-3000:]
    one, two = (torch.load(tmp_path / name, weights_only=True) for name in ("one.pt", "two.pt"))
    assert one["progress"]["step"] == two["progress"]["step"] == 40
    for key in ("train_loss_nats", "val_loss_nats"):
        assert abs(one["progress"]["metrics"][key] - two["progress"]["metrics"][key]) < 2e-3, key
    for name, weight in one["model_state"].items():
        assert torch.allclose(weight, two["model_state"][name], atol=2e-4), name
    assert double.stdout.count('"val_loss_nats"') == 2  # every rank prints its result; only rank 0 writes and reports

    exported = run_cli("export", str(tmp_path / "two.pt"), "--repository", str(tmp_path / "models"), "--name", "ddp")
    assert exported.returncode == 0, exported.stderr
    expected = Reference(tmp_path / "models" / "ddp" / "1" / "model.onnx").greedy(list(b"The "), 20)
    with make_server(repository=str(tmp_path / "models")).client() as client:
        served = [t for piece in client.generate("ddp", "The ", temperature=0.0, max_tokens=20) for t in piece.token_ids]
    assert served == expected
