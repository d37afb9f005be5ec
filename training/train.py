"""The training loop: truncated BPTT, gradient clipping, Adam with warmup and cosine decay, checkpoints."""

from __future__ import annotations

import math
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import nn
from tqdm import tqdm

from training.config import TrainConfig
from training.data import batchify, chunks, load_corpus, split_corpus, unigram_entropy_bits
from training.models import ModelConfig, RecurrentLM
from training.text import IncrementalDecoder, Tokenizer, make_tokenizer, tokenizer_from_spec

LN2 = math.log(2)


@dataclass
class Progress:
    """What a checkpoint needs to continue a run exactly where it stopped."""

    step: int = 0
    epoch: int = 0
    chunk: int = 0
    elapsed_s: float = 0.0
    metrics: dict = field(default_factory=dict)


def lr_factor(config: TrainConfig, step: int, fraction_done: float) -> float:
    if step < config.warmup_steps:
        return (step + 1) / config.warmup_steps
    return 0.1 + 0.9 * 0.5 * (1.0 + math.cos(math.pi * min(fraction_done, 1.0)))


@torch.no_grad()
def evaluate(model: RecurrentLM, data: torch.Tensor, bptt: int) -> float:
    """Mean validation loss in nats per token."""
    model.eval()
    state = model.initial_state(data.size(0))
    total, count = 0.0, 0
    for inputs, targets in chunks(data, bptt):
        logits, state = model(inputs, state)
        total += nn.functional.cross_entropy(logits.flatten(0, 1), targets.flatten(), reduction="sum").item()
        count += targets.numel()
    model.train()
    return total / count


@torch.no_grad()
def sample(model: RecurrentLM, tokenizer: Tokenizer, prompt: str, chars: int, temperature: float = 0.8) -> str:
    """Text continuing `prompt`, sampled step by step from the PyTorch model."""
    model.eval()
    decoder = IncrementalDecoder(tokenizer)
    tokens = torch.tensor([tokenizer.encode(prompt)])
    logits, state = model(tokens, model.initial_state(1))
    text = ""
    while len(text) < chars:
        probs = torch.softmax(logits[0, -1] / temperature, dim=-1)
        token = int(torch.multinomial(probs, 1))
        text += decoder.feed(token)
        logits, state = model(torch.tensor([[token]]), state)
    model.train()
    return text


def save_checkpoint(path: Path, model, optimizer, tokenizer, config: TrainConfig, progress: Progress) -> None:
    """Written to a temporary file and renamed, so an interrupted save never leaves a broken checkpoint."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(
        {
            "model_config": model.config.to_dict(),
            "tokenizer": tokenizer.spec(),
            "model_state": model.state_dict(),
            "optimizer_state": optimizer.state_dict(),
            "train_config": asdict(config),
            "progress": asdict(progress),
            "rng_state": torch.get_rng_state(),
        },
        tmp,
    )
    os.replace(tmp, path)


def load_model(path: str | Path) -> tuple[RecurrentLM, Tokenizer, dict]:
    """A checkpoint carries its own constructor arguments: model, tokenizer and metrics come back whole."""
    checkpoint = torch.load(path, map_location="cpu", weights_only=False)
    model = RecurrentLM(ModelConfig(**checkpoint["model_config"]))
    model.load_state_dict(checkpoint["model_state"])
    return model.eval(), tokenizer_from_spec(checkpoint["tokenizer"]), checkpoint


def train(config: TrainConfig) -> dict:
    """Trains until the step or time budget is spent; returns the final metrics."""
    torch.manual_seed(config.seed)
    text = load_corpus(config.corpus)
    out = Path(config.out)
    if config.resume and not out.exists():
        raise SystemExit(f"--resume: no checkpoint at {out}")
    checkpoint = torch.load(out, map_location="cpu", weights_only=False) if config.resume else None
    tokenizer = tokenizer_from_spec(checkpoint["tokenizer"]) if checkpoint else make_tokenizer(config.tokenizer, text)
    train_text, val_text = split_corpus(text, config.val_fraction)
    train_data = batchify(tokenizer.encode(train_text), config.batch_size)  # [B, N]
    val_ids = tokenizer.encode(val_text)
    val_data = batchify(val_ids, min(16, max(1, len(val_ids) // (2 * config.bptt))))
    chars_per_token = len(val_text) / len(val_ids)

    model_config = (
        ModelConfig(**checkpoint["model_config"])
        if checkpoint
        else ModelConfig(tokenizer.vocab_size, config.cell, config.layers, config.hidden, config.embedding, config.dropout)
    )
    model = RecurrentLM(model_config)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr)
    progress = Progress()
    if checkpoint:
        model.load_state_dict(checkpoint["model_state"])
        optimizer.load_state_dict(checkpoint["optimizer_state"])
        progress = Progress(**checkpoint["progress"])
        torch.set_rng_state(checkpoint["rng_state"])

    total_steps, total_s = config.budget()
    unigram_bpc = unigram_entropy_bits(text)
    windows = list(chunks(train_data, config.bptt))
    log = (lambda msg: None) if config.quiet else tqdm.write

    def fraction_done() -> float:
        done = [progress.step / total_steps] if total_steps else []
        done += [progress.elapsed_s / total_s] if total_s else []
        return max(done)

    def checkpoint_now(train_loss: float) -> None:
        val_loss = evaluate(model, val_data, config.bptt)
        progress.metrics = {
            "train_loss_nats": round(train_loss, 4),
            "val_loss_nats": round(val_loss, 4),
            "val_bits_per_char": round(val_loss / LN2 / chars_per_token, 4),
            "unigram_bits_per_char": round(unigram_bpc, 4),
            "steps": progress.step,
            "train_seconds": round(progress.elapsed_s, 1),
            "corpus": config.corpus or "builtin:pydoc_data.topics",
            "corpus_chars": len(text),
        }
        log(
            f"step {progress.step}: val loss {val_loss:.3f} nats, {progress.metrics['val_bits_per_char']:.3f} bits/char "
            f"(unigram {unigram_bpc:.3f})"
        )
        if not config.quiet:
            log("  sample: " + repr(sample(model, tokenizer, "The ", config.sample_chars)))
        save_checkpoint(out, model, optimizer, tokenizer, config, progress)

    bar = tqdm(
        total=total_steps or round(total_s),
        initial=progress.step if total_steps else round(progress.elapsed_s),
        unit="step" if total_steps else "s",
        # with a time budget the bar counts seconds; its rate would only say "1 s/s"
        bar_format=None if total_steps else "{l_bar}{bar}| {n_fmt}/{total_fmt} s [{elapsed}<{remaining}{postfix}]",
        disable=config.quiet,
        dynamic_ncols=True,
        mininterval=1.0,
    )
    model.train()
    loss_ema = None
    while fraction_done() < 1.0:
        state = model.initial_state(config.batch_size)
        for inputs, targets in windows[progress.chunk :]:
            started = time.perf_counter()
            for group in optimizer.param_groups:
                group["lr"] = config.lr * lr_factor(config, progress.step, fraction_done())
            # Detach: gradients stop at the chunk boundary (truncated BPTT) while the state carries on.
            state = tuple(s.detach() for s in state)
            logits, state = model(inputs, state)
            loss = nn.functional.cross_entropy(logits.flatten(0, 1), targets.flatten())
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            nn.utils.clip_grad_norm_(model.parameters(), config.clip)
            optimizer.step()

            seconds = time.perf_counter() - started
            progress.step += 1
            progress.chunk += 1
            progress.elapsed_s += seconds
            loss_ema = loss.item() if loss_ema is None else 0.95 * loss_ema + 0.05 * loss.item()
            bar.update(1 if total_steps else round(progress.elapsed_s) - bar.n)
            bar.set_postfix(
                step=progress.step, loss=f"{loss_ema:.3f}", chars_s=f"{inputs.numel() * chars_per_token / seconds:,.0f}"
            )
            if progress.step % config.eval_every == 0:
                checkpoint_now(loss_ema)
            if fraction_done() >= 1.0:
                break
        else:
            progress.epoch += 1
            progress.chunk = 0
    bar.close()
    if progress.metrics.get("steps") != progress.step:
        checkpoint_now(loss_ema if loss_ema is not None else float("nan"))
    return progress.metrics
