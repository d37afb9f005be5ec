"""`rnnserve export`: checkpoint → repository/<name>/<version>/model.onnx (and encoder.onnx for a model whose
initial state comes from a request), checked and parity-tested."""

from __future__ import annotations

import os
from pathlib import Path

import onnx

from export.config import ExportConfig
from export.graphs import ENCODER_FILE, encoder_graph, step_graph, to_onnx
from export.metadata import attach, model_document
from export.verify import check_parity, parity_report
from training.tasks import LanguageModel, task_named
from training.train import load_model


def export(config: ExportConfig) -> tuple[Path, dict]:
    """Writes the checkpoint's model files; raises ParityError (and writes nothing) if ONNX and PyTorch disagree."""
    name = config.name or Path(config.checkpoint).stem
    target = Path(config.repository) / name / config.version / "model.onnx"
    if target.exists() and not config.force:
        raise SystemExit(f"{target} exists: pass --force to overwrite it, or choose another --version")
    model, tokenizer, checkpoint = load_model(config.checkpoint)
    task = task_named(checkpoint["train_config"].get("task", "language_model"))
    return target, export_model(model, tokenizer.spec(), checkpoint["progress"]["metrics"], target, task)


def export_model(model, tokenizer_spec: dict, training_metrics: dict, target: Path, task=LanguageModel()) -> dict:
    """Exports, parity-checks, checks and writes a model's files; returns the parity report."""
    files: dict[str, onnx.ModelProto] = {}
    report: dict = {}
    encoder = encoder_graph(model)
    if encoder is not None:
        encoder_bytes = to_onnx(encoder)
        report["encoder"] = parity_report(encoder, encoder_bytes)
        check_parity(report["encoder"], "encoder graph")
        files[ENCODER_FILE] = onnx.load_from_string(encoder_bytes)
    step = step_graph(model)
    step_bytes = to_onnx(step)
    step_report = parity_report(step, step_bytes)
    check_parity(step_report)
    report = step_report | report
    if encoder is not None:
        report["max_abs_diff"] = max(report["max_abs_diff"], report["encoder"]["max_abs_diff"])
    files[target.name] = attach(step_bytes, model_document(model.config, task, tokenizer_spec, training_metrics, report))
    for onnx_model in files.values():
        onnx.checker.check_model(onnx_model, full_check=True)
    target.parent.mkdir(parents=True, exist_ok=True)
    for file_name, onnx_model in files.items():  # the model file last: a half-written version is never served
        tmp = target.parent / (file_name + ".tmp")
        onnx.save(onnx_model, tmp)
        os.replace(tmp, target.parent / file_name)
    return report
