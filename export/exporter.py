"""`rnnserve export`: checkpoint → repository/<name>/<version>/model.onnx (and encoder.onnx for a model whose
initial state comes from a request), checked and parity-tested."""

from __future__ import annotations

import os
from pathlib import Path

import onnx

from rnnserve.errors import UsageError
from rnnserve.export.config import MAX_LOSS_INCREASE_NATS, ExportConfig
from rnnserve.export.graphs import ENCODER_FILE, encoder_graph, step_graph, to_onnx
from rnnserve.export.metadata import attach, model_document
from rnnserve.export.quantize import quantization_report, quantize_int8
from rnnserve.export.verify import check_parity, parity_report
from rnnserve.training.config import TrainConfig
from rnnserve.training.tasks import LanguageModel, task_named
from rnnserve.training.train import load_model


def export(config: ExportConfig) -> tuple[Path, dict]:
    """Writes the checkpoint's model files; raises ParityError (and writes nothing) if ONNX and PyTorch disagree."""
    name = config.name or Path(config.checkpoint).stem
    target = Path(config.repository) / name / config.version / "model.onnx"
    if target.exists() and not config.force:
        raise UsageError(f"{target} exists: pass --force to overwrite it, or choose another --version")
    model, tokenizer, checkpoint = load_model(config.checkpoint)
    task = task_named(checkpoint["train_config"].get("task", "language_model"))
    validation = None
    if config.quantize:
        if model.config.inputs:
            raise UsageError("--quantize int8: models that take values are not quantized yet")
        if encoder_graph(model) is not None:
            raise UsageError("--quantize int8: models whose state starts from a label or a source are not quantized yet")
        train_config = TrainConfig(**checkpoint["train_config"])
        validation = task.data(tokenizer, task.corpus(train_config), train_config).val_batches  # what training measured on
    report = export_model(
        model, checkpoint["tokenizer"], checkpoint["progress"]["metrics"], target, task, int8_validation=validation, force=config.force,
        max_loss_increase_nats=config.max_loss_increase_nats,
    )
    return target, report


def export_model(
    model, tokenizer_spec: dict, training_metrics: dict, target: Path, task=LanguageModel(), int8_validation=None, force: bool = False,
    max_loss_increase_nats: float = MAX_LOSS_INCREASE_NATS,
) -> dict:
    """Exports, parity-checks, checks and writes a model's files; returns the parity report. With `int8_validation`
    (the task's validation batches), the step graph is written quantized to int8, and the report says what that cost
    and bought (under "quantization"); a rise in loss past `max_loss_increase_nats` is refused unless `force`."""
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
    if int8_validation is not None:  # the fp32 graph passed parity and the checker; its int8 form is judged by its loss
        int8_bytes = quantize_int8(step_bytes)
        quantization = quantization_report(step_bytes, int8_bytes, int8_validation, step.state)
        if quantization["val_loss_increase_nats"] > max_loss_increase_nats and not force:
            raise UsageError(
                f"--quantize int8: validation loss rose by {quantization['val_loss_increase_nats']:.4f} nats/token "
                f"(over --max-loss-increase-nats {max_loss_increase_nats:g}): nothing written; pass --force to keep it anyway"
            )
        document = model_document(model.config, task, tokenizer_spec, training_metrics, report, quantization=quantization)
        files[target.name] = attach(int8_bytes, document)
        report["quantization"] = quantization
    target.parent.mkdir(parents=True, exist_ok=True)
    for file_name, onnx_model in files.items():  # the model file last: a half-written version is never served
        tmp = target.parent / (file_name + ".tmp")
        onnx.save(onnx_model, tmp)
        os.replace(tmp, target.parent / file_name)
    return report
