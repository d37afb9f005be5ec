"""`rnnserve export`: checkpoint → repository/<name>/<version>/model.onnx, checked and parity-tested."""

from __future__ import annotations

import os
from pathlib import Path

import onnx

from export.config import ExportConfig
from export.graphs import export_step_graph
from export.metadata import attach, model_document
from export.verify import check_parity, parity_report
from training.models import RecurrentNet
from training.tasks import LanguageModel, task_named
from training.train import load_model


def export(config: ExportConfig) -> tuple[Path, dict]:
    """Writes the checkpoint's model file; raises ParityError (and writes nothing) if ONNX and PyTorch disagree."""
    name = config.name or Path(config.checkpoint).stem
    target = Path(config.repository) / name / config.version / "model.onnx"
    if target.exists() and not config.force:
        raise SystemExit(f"{target} exists: pass --force to overwrite it, or choose another --version")
    model, tokenizer, checkpoint = load_model(config.checkpoint)
    task = task_named(checkpoint["train_config"].get("task", "language_model"))
    return target, export_model(model, tokenizer.spec(), checkpoint["progress"]["metrics"], target, task)


def export_model(model: RecurrentNet, tokenizer_spec: dict, training_metrics: dict, target: Path, task=LanguageModel()) -> dict:
    """Exports, parity-checks, checks and writes one model file; returns the parity report."""
    graph = export_step_graph(model)
    report = parity_report(model, graph)
    check_parity(report)
    document = model_document(model.config, task.name, task.labels, tokenizer_spec, training_metrics, report)
    onnx_model = attach(graph, document)
    onnx.checker.check_model(onnx_model, full_check=True)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_suffix(".onnx.tmp")
    onnx.save(onnx_model, tmp)
    os.replace(tmp, target)  # a half-written file is never served
    return report
