"""The training loop: truncated BPTT, gradient clipping, Adam with warmup and cosine decay, checkpoints."""

from __future__ import annotations

import copy
import csv
import math
import os
import pickle
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from rnnserve.errors import UsageError
from rnnserve.text import Tokenizer, UnknownText, make_tokenizer, tokenizer_from_spec
from rnnserve.training.batches import Batch
from rnnserve.training.config import TrainConfig
from rnnserve.training.distributed import World, join
from rnnserve.training.held_out import held_out_figures
from rnnserve.training.models import ModelConfig, build_model
from rnnserve.training.progress import ProgressReport
from rnnserve.training.tasks import LanguageModel, task_named

LANGUAGE_MODEL = LanguageModel()


@dataclass
class Progress:
    """What a checkpoint needs to continue a run exactly where it stopped."""

    step: int = 0
    epoch: int = 0
    chunk: int = 0
    elapsed_s: float = 0.0
    metrics: dict = field(default_factory=dict)
    # the curves `rnnserve plot` draws: [step, training loss] every few steps, and every evaluation's metrics
    train_curve: list = field(default_factory=list)
    evaluations: list = field(default_factory=list)
    lr_scale: float = 1.0  # what --lr-plateau has divided the schedule's rate by so far
    best_loss: float | None = None  # the least loss on what chooses, so far


CURVE_POINTS_PER_EVALUATION = 20


def write_metrics_row(path: Path, row: dict) -> None:
    """One evaluation's figures as a CSV row (the header first, when the file is new)."""
    new = not path.exists() or path.stat().st_size == 0
    with path.open("a", newline="") as file:
        writer = csv.DictWriter(file, fieldnames=list(row))
        if new:
            writer.writeheader()
        writer.writerow(row)


def lr_factor(config: TrainConfig, step: int, fraction_done: float) -> float:
    if step < config.warmup_steps:
        return (step + 1) / config.warmup_steps
    return 0.1 + 0.9 * 0.5 * (1.0 + math.cos(math.pi * min(fraction_done, 1.0)))


@torch.no_grad()
def evaluate(model, batches: list[Batch], task=LANGUAGE_MODEL, outputs: bool = True) -> tuple[float, list[torch.Tensor]]:
    """Mean validation loss in nats per prediction (the task's: a token, a label, a value), and with `outputs` every
    batch's outputs (a word model's over a test file are gigabytes: only the metrics that read them keep them)."""
    model.eval()
    state, total, count, logits_all = None, 0.0, 0, []
    for batch in batches:
        state = model.start(batch) if batch.fresh else model.carried(state)
        logits, state = model(batch.inputs, state)
        summed, counted = task.loss_total(model, logits, batch)
        total += summed.item()
        count += counted
        if outputs:
            logits_all.append(logits)
    model.train()
    return total / count, logits_all


def save_checkpoint(path: Path, model, optimizer, tokenizer, config: TrainConfig, progress: Progress) -> None:
    """Written to a temporary file and renamed, so an interrupted save never leaves a broken checkpoint."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(
        {
            "model_config": model.config.to_dict(),
            "tokenizer": tokenizer.spec() if tokenizer else NO_TOKENIZER,
            "model_state": model.state_dict(),
            "optimizer_state": optimizer.state_dict(),
            "train_config": asdict(config),
            "progress": asdict(progress),
            "rng_state": torch.get_rng_state(),
        },
        tmp,
    )
    os.replace(tmp, path)


NO_TOKENIZER = {"kind": "none"}  # a model that reads values
CHECKPOINT_KEYS = ("model_config", "tokenizer", "model_state", "optimizer_state", "train_config", "progress", "rng_state")


def read_checkpoint(path: str | Path) -> dict:
    """A checkpoint written by `train`, loaded safely (weights_only: tensors and plain data, never code), or a
    UsageError that says what the file is instead."""
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"{path}: {'is a directory' if path.is_dir() else 'no such file'}: expected a checkpoint written by `rnnserve train`")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise UsageError(f"{path}: not a checkpoint written by `rnnserve train` (not a PyTorch file of plain tensors and data)") from None
    except Exception:  # torch.load fails in many ways on a file it cannot read
        raise UsageError(f"{path}: not a checkpoint written by `rnnserve train` (damaged or cut short, or not a PyTorch file)") from None
    missing = [key for key in CHECKPOINT_KEYS if not isinstance(checkpoint, dict) or key not in checkpoint]
    if missing:
        raise UsageError(f"{path}: not a checkpoint written by `rnnserve train` (it has no {', '.join(missing)})")
    return checkpoint


def load_model(path: str | Path) -> tuple[nn.Module, Tokenizer, dict]:
    """A checkpoint carries its own constructor arguments: model, tokenizer and metrics come back whole."""
    checkpoint = read_checkpoint(path)
    model = build_model(ModelConfig(**checkpoint["model_config"]))
    model.load_state_dict(checkpoint["model_state"])
    return model.eval(), tokenizer_from_spec(checkpoint["tokenizer"]), checkpoint


def _check_out(config: TrainConfig) -> Path:
    """--out is checked before any training, so an hour of work never ends in a checkpoint it cannot write or
    one it silently replaces."""
    out = Path(config.out)
    if out.is_dir():
        raise UsageError(f"--out {out} is a directory: give a file path, e.g. {out / 'model.pt'}")
    if config.resume:
        if not out.exists():
            raise UsageError(f"--resume: no checkpoint at {out}")
    elif out.exists() and not config.force:
        raise UsageError(f"--out {out} exists: pass --resume to continue it, --force to replace it, or choose another --out")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise UsageError(f"--out {out}: cannot create {out.parent}: {err.strerror}") from None
    if not os.access(out.parent, os.W_OK):
        raise UsageError(f"--out {out}: {out.parent} is not writable")
    return out


def train(config: TrainConfig) -> dict:
    """Trains until the step or time budget is spent; returns the final metrics."""
    torch.manual_seed(config.seed)
    world = join(config.batch_size)
    try:
        return _train(config, world)
    finally:
        world.close()


def _train(config: TrainConfig, world: World) -> dict:
    out = _check_out(config) if world.leader else Path(config.out)
    checkpoint = read_checkpoint(out) if config.resume else None
    if checkpoint and config.corpus is None:  # a resumed run goes on reading what it read, unless given another text
        config = replace(config, corpus=checkpoint["train_config"].get("corpus"))
    task = task_named(checkpoint["train_config"].get("task", "language_model") if checkpoint else config.task)
    text = task.corpus(config)
    if checkpoint:
        tokenizer = tokenizer_from_spec(checkpoint["tokenizer"])
    else:
        tokenizer = make_tokenizer(config.tokenizer, task.tokenizer_text(text, config), config.vocab_size) if task.reads_text else None
    try:
        data = task.data(tokenizer, text, config)
    except UnknownText as err:  # only a resumed char model's vocabulary can lack what the corpus holds
        learnt_from = checkpoint["train_config"].get("corpus") or "the built-in corpus"
        raise UsageError(f"--corpus {config.corpus}: {err}, which was learnt from {learnt_from}: resume on that text, or start a new run") from None
    model_config = ModelConfig(**checkpoint["model_config"]) if checkpoint else task.model_config(tokenizer.vocab_size if tokenizer else 0, config, data)
    model = build_model(model_config)
    task.prepare(model, data)  # a resumed model's own figures come back with its weights, below
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr)
    # the model every rank steps: gradients averaged across ranks (one process: the model itself)
    stepped = DistributedDataParallel(model) if world.size > 1 else model
    progress = Progress()
    if checkpoint:
        model.load_state_dict(checkpoint["model_state"])
        optimizer.load_state_dict(checkpoint["optimizer_state"])
        progress = Progress(**checkpoint["progress"])
        torch.set_rng_state(checkpoint["rng_state"])

    total_steps, total_s = config.budget()

    def fraction_done() -> float:
        done = [progress.step / total_steps] if total_steps else []
        done += [progress.elapsed_s / total_s] if total_s else []
        return max(done)

    chooses = config.keep_best and bool(data.select_batches)
    best: dict = {}  # with a selection split: the evaluation of least loss on it, its weights and figures

    def checkpoint_now(train_loss: float) -> None:
        val_loss, logits = evaluate(model, data.val_batches, task, task.metrics_read_outputs)
        progress.metrics = {
            "task": task.name,
            "train_loss_nats": round(train_loss, 4),
            **task.metrics(val_loss, logits, data, model),
            "steps": progress.step,
            "train_seconds": round(progress.elapsed_s, 1),
            "lr": float(f"{optimizer.param_groups[0]['lr']:.3g}"),
            **task.source_figures(config, text),
        }
        # what chooses (--keep-best) and decides a plateau: the selection split's loss, or the validation loss itself
        choice_loss = val_loss
        if data.select_batches and data.select_batches is not data.val_batches:
            choice_loss = evaluate(model, data.select_batches, task, outputs=False)[0]
            progress.metrics["select_loss_nats"] = round(choice_loss, 4)
        if config.lr_plateau and progress.best_loss is not None and choice_loss >= progress.best_loss:
            progress.lr_scale /= config.lr_plateau  # the next steps learn at the divided rate
        progress.best_loss = choice_loss if progress.best_loss is None else min(progress.best_loss, choice_loss)
        if chooses and (not best or choice_loss < best["loss"]):
            best.update(loss=choice_loss, weights=copy.deepcopy(model.state_dict()), metrics=dict(progress.metrics))
        progress.evaluations.append({k: v for k, v in progress.metrics.items() if isinstance(v, (int, float))})
        if not world.leader:
            return
        if config.metrics_csv:
            write_metrics_row(Path(config.metrics_csv), progress.evaluations[-1])
        save_checkpoint(out, model, optimizer, tokenizer, config, progress)  # before the sample, which may fail
        report.write(f"step {progress.step}: {task.summary(progress.metrics)}")
        if not config.quiet:
            model.eval()
            try:
                report.write("  sample: " + repr(task.sample(model, tokenizer, data, config.sample_chars)))
            except Exception as err:  # a sample is for people to read; it never stops training
                report.write(f"  sample failed: {err}")
            model.train()

    def done() -> int:
        return progress.step if total_steps else round(progress.elapsed_s)

    report = ProgressReport(
        total_steps or round(total_s), done(), "step" if total_steps else "second", config.quiet or not world.leader,
        config.progress_interval_s,
    )
    model.train()
    loss_ema = None
    while fraction_done() < 1.0:
        state = None
        for index, batch in enumerate(data.train_batches(progress.epoch)):
            if index < progress.chunk:  # resuming: the batches this epoch already trained on
                continue
            started = time.perf_counter()
            for group in optimizer.param_groups:
                group["lr"] = config.lr * progress.lr_scale * lr_factor(config, progress.step, fraction_done())
            batch = world.rows(batch)
            state = model.start(batch) if batch.fresh or state is None else model.carried(state)
            logits, state = stepped(batch.inputs, state)
            loss = task.loss(model, logits, batch)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            nn.utils.clip_grad_norm_(model.parameters(), config.clip)
            optimizer.step()

            seconds = time.perf_counter() - started
            progress.step += 1
            progress.chunk += 1
            progress.elapsed_s = world.agreed(progress.elapsed_s + seconds)
            step_loss = world.mean(loss.item())
            loss_ema = step_loss if loss_ema is None else 0.95 * loss_ema + 0.05 * step_loss
            report.update(
                done(), step=str(progress.step), loss=f"{loss_ema:.3f}",
                **{data.rate: f"{batch.inputs.shape[0] * batch.inputs.shape[1] * world.size * data.chars_per_token / seconds:,.0f}"},
            )
            if progress.step % max(1, config.eval_every // CURVE_POINTS_PER_EVALUATION) == 0:
                progress.train_curve.append([progress.step, round(loss_ema, 4)])
            if progress.step % config.eval_every == 0:
                checkpoint_now(loss_ema)
            if fraction_done() >= 1.0:
                break
        else:
            progress.epoch += 1
            progress.chunk = 0
    report.close()
    if progress.metrics.get("steps") != progress.step:
        checkpoint_now(loss_ema if loss_ema is not None else float("nan"))
    kept_earlier = chooses and bool(best) and best["metrics"]["steps"] != progress.step  # none: a resume with nothing left to do
    if kept_earlier:  # the best was earlier: it is the model kept
        model.load_state_dict(best["weights"])
        progress.metrics = best["metrics"] | {"steps_trained": progress.step}
    if data.test is not None:  # scored once, with the model kept
        progress.metrics |= held_out_figures("test", evaluate(model, data.test.batches, task, outputs=False)[0], data.test)
    if world.leader and (kept_earlier or data.test is not None):
        save_checkpoint(out, model, optimizer, tokenizer, config, progress)
        if kept_earlier:
            report.write(f"kept step {progress.metrics['steps']}, the least held-out loss: {task.summary(progress.metrics)}")
        if data.test is not None:
            report.write(
                f"test: {progress.metrics['test_loss_nats']:.3f} nats, {progress.metrics['test_bits_per_char']:.3f} bits/char, "
                f"{progress.metrics['test_word_perplexity']:.1f} per-word perplexity"
            )
    return progress.metrics
