"""Pictures where people would rather look than read: a run's training and validation curves, an
encoder–decoder's attention over its source, a forecaster's answers against the values, a classifier's running guess. matplotlib comes with the train extra, never with serving."""

from __future__ import annotations

from pathlib import Path

from rnnserve.errors import UsageError


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files, never a window
    import matplotlib.pyplot as plt

    return plt


QUALITY = (  # (the evaluation's figure, its axis label, the panel's title): the first a run has is drawn
    ("val_bits_per_char", "bits per character", "held-out bits per character"),
    ("boundary_f1", "boundary F1", "held-out word-boundary F1"),
    ("exact_match", "exact match", "held-out exact match"),
    ("accuracy", "accuracy", "held-out accuracy"),
    ("mase", "MASE", "held-out MASE, one step ahead"),
)


def plot_curves(progress: dict, out: str | Path, title: str = "") -> Path:
    """Training loss (every few steps) and validation loss (every evaluation) against steps, and beside them the
    run's own measure of quality at every evaluation: bits per character for a language model, F1 for a tagger,
    accuracy for a classifier, exact match for an encoder–decoder."""
    curve, evaluations = progress.get("train_curve", []), progress.get("evaluations", [])
    if not curve and not evaluations:
        raise UsageError("the checkpoint has no curves to draw: it was written before rnnserve kept them, or before its first step")
    plt = _pyplot()
    figure, (loss, bits) = plt.subplots(1, 2, figsize=(11, 4))
    if curve:
        loss.plot([s for s, _ in curve], [v for _, v in curve], label="training (moving average)", color="tab:blue")
    validated = [e for e in evaluations if "val_loss_nats" in e]
    if validated:
        loss.plot([e["steps"] for e in validated], [e["val_loss_nats"] for e in validated], "o-", label="validation", color="tab:orange")
    loss.set(xlabel="step", ylabel="loss (nats per token)", title="loss")
    loss.legend()
    key, label, heading = next((q for q in QUALITY if any(q[0] in e for e in evaluations)), QUALITY[0])
    measured = [e for e in evaluations if key in e]
    if measured:
        bits.plot([e["steps"] for e in measured], [e[key] for e in measured], "o-", color="tab:green", label="validation")
        if "unigram_bits_per_char" in measured[-1] and key == "val_bits_per_char":
            bits.axhline(measured[-1]["unigram_bits_per_char"], linestyle="--", color="grey", label="unigram (no context)")
        if "accuracy_after_16_chars" in measured[-1] and key == "accuracy":
            bits.plot([e["steps"] for e in measured], [e.get("accuracy_after_16_chars") for e in measured], "s--", color="tab:purple",
                      label="after its first 16 characters")
        bits.legend()
    bits.set(xlabel="step", ylabel=label, title=heading)
    if title:
        figure.suptitle(title)
    figure.tight_layout()
    return _save(figure, plt, out)


def plot_attention(source_tokens: list[str], output_tokens: list[str], weights: list[list[float]], out: str | Path) -> Path:
    """Rows: the tokens written; columns: the source tokens; shade: where each output token looked."""
    plt = _pyplot()
    figure, axes = plt.subplots(figsize=(max(4, 0.4 * len(source_tokens) + 2), max(3, 0.35 * len(output_tokens) + 1.5)))
    image = axes.imshow([row[: len(source_tokens)] for row in weights], cmap="viridis", aspect="auto", vmin=0.0)
    axes.set_xticks(range(len(source_tokens)), [repr(t)[1:-1] for t in source_tokens], rotation=90)
    axes.set_yticks(range(len(output_tokens)), [repr(t)[1:-1] for t in output_tokens])
    axes.set(xlabel="source", ylabel="written")
    figure.colorbar(image, ax=axes, label="attention")
    figure.tight_layout()
    return _save(figure, plt, out)


def plot_forecast(name: str, actual, mean, std, ahead: dict | None, out: str | Path, z: float) -> Path:
    """A forecaster's answers over a streamed series: the values that came (actual [T]), each step's forecast of
    the next with its 90 % interval (mean ± z·std [T], drawn one step later, where the value it forecast lies),
    and the look ahead past the last value (ahead: "mean", "low", "high" [H]) with its widening band."""
    plt = _pyplot()
    figure, axes = plt.subplots(figsize=(11, 4))
    steps = range(len(actual))
    axes.plot(steps, actual, color="black", linewidth=1, label="actual")
    next_steps = range(1, len(mean) + 1)
    axes.plot(next_steps, mean, color="tab:blue", linewidth=1, label="forecast, one step ahead")
    axes.fill_between(next_steps, [m - z * s for m, s in zip(mean, std)], [m + z * s for m, s in zip(mean, std)], color="tab:blue", alpha=0.25, label="90% interval")
    if ahead:
        later = range(len(actual), len(actual) + len(ahead["mean"]))
        axes.plot(later, ahead["mean"], color="tab:orange", label=f"{len(ahead['mean'])} steps ahead (sampled futures)")
        axes.fill_between(later, ahead["low"], ahead["high"], color="tab:orange", alpha=0.25)
    axes.set(xlabel="step", ylabel=name, title=f"forecasts of {name}")
    axes.legend(loc="best")
    figure.tight_layout()
    return _save(figure, plt, out)


def plot_class_probabilities(labels: list[str], probabilities, out: str | Path) -> Path:
    """A classifier's running guess over one sequence: each class's probability after every frame (the most likely
    classes named, the rest grey)."""
    plt = _pyplot()
    figure, axes = plt.subplots(figsize=(9, 4))
    final = probabilities[-1]
    named = sorted(range(len(labels)), key=lambda c: -final[c])[:5]
    for c in range(len(labels)):
        column = [row[c] for row in probabilities]
        axes.plot(range(1, len(column) + 1), column, label=labels[c] if c in named else None, color=None if c in named else "lightgrey")
    axes.set(xlabel="frames read", ylabel="probability", ylim=(0, 1), title="the running guess, frame by frame")
    axes.legend(title="class", loc="best")
    figure.tight_layout()
    return _save(figure, plt, out)


def _save(figure, plt, out: str | Path) -> Path:
    out = Path(out)
    try:
        figure.savefig(out, dpi=120)
    except OSError as err:
        raise UsageError(f"--out {out}: {err.strerror}") from None
    finally:
        plt.close(figure)
    return out
