"""Training configuration: one frozen dataclass, from which `rnnserve train` builds its flags (no torch here)."""

from __future__ import annotations

from dataclasses import dataclass

from rnnserve.options import check_choices, flag, option

TASK_NAMES = (
    "language_model", "boundary_tagger", "text_classifier", "conditional_language_model", "date_normaliser", "frame_classifier",
    "forecaster",
)
TOKENIZER_KINDS = ("byte", "char", "bpe", "word")
CELL_TYPES = ("rnn", "lstm", "gru")


@dataclass(frozen=True)
class TrainConfig:
    task: str = option(
        "language_model",
        "language_model (next character); boundary_tagger (restore the spaces of text that has none); text_classifier "
        "(prose, Python or C?); conditional_language_model (write prose, Python or C on demand); date_normaliser "
        "(an encoder–decoder with attention: any written date → YYYY-MM-DD); frame_classifier (numbers: the class of a "
        "sequence of frames, a running guess at every frame); forecaster (numbers: each series' next value, with its spread)",
        TASK_NAMES,
    )
    corpus: str | None = option(
        None, "UTF-8 text file to train on (default: the built-in corpus, Python's help topics; the classifier, conditional "
        "model and date normaliser use their own built-in data)"
    )
    val_corpus: str | None = option(
        None, "language models: a UTF-8 file held out for validation, scored whole (a standard split's, e.g. ptb.valid.txt); "
        "--corpus is then all for training, and --val-fraction is not used"
    )
    test_corpus: str | None = option(
        None, "language models: a UTF-8 file scored whole once, at the end, with the model kept (e.g. ptb.test.txt); it never "
        "chooses anything"
    )
    dataset: str | None = option(
        None, "frame_classifier: JapaneseVowels (default) or BasicMotions, the UEA archive's own train/test split; forecaster: "
        "co2 (default, weekly) or sunspots (yearly); all ship with the [series] extra"
    )
    csv: str | None = option(None, "frame_classifier, forecaster: your own data, a CSV file with a header row (instead of --dataset)")
    columns: str | None = option(None, "--csv, frame_classifier: the comma-separated columns of a frame's values")
    target: str | None = option(
        None, "--csv: the column naming each sequence's class (frame_classifier), or the column(s) to forecast, comma-separated (forecaster)"
    )
    sequence: str | None = option(None, "--csv, frame_classifier: the column saying which sequence a row (a frame) belongs to")
    time: str | None = option(
        None, "--csv: the column to order rows by (numbers, or text such as ISO 8601 dates); default: the order written"
    )
    period: int = option(1, "--csv, forecaster: the series' seasonal period in steps (52 for weekly data with a yearly cycle), for MASE")
    tokenizer: str = option(
        "byte", "byte (any UTF-8, vocabulary 256), char (the corpus's characters), bpe (byte-level BPE learnt from the corpus: "
        "subwords, any text) or word (the corpus's commonest words, each with the space before it, and line ends; [UNK] for the "
        "rest); bpe and word are for language models",
        TOKENIZER_KINDS,
    )
    vocab_size: int = option(2000, "bpe and word: how many tokens to learn from the corpus")
    cell: str = option("lstm", "recurrent cell", CELL_TYPES)
    layers: int = option(2, "stacked recurrent layers")
    hidden: int = option(256, "units per recurrent layer")
    embedding: int = option(64, "token embedding size")
    dropout: float = option(0.1, "dropout between layers and before the head")
    bidirectional: bool = option(
        False, "read the input both ways (taggers, classifiers): more accurate, but served whole-sequence only"
    )
    batch_size: int = option(16, "parallel text streams per step")
    bptt: int = option(64, "steps to backpropagate through before the state is detached (classifier: snippet length)")
    lr: float = option(5e-3, "peak Adam learning rate (linear warmup, then cosine decay to a tenth)")
    warmup_steps: int = option(50, "learning-rate warmup steps")
    clip: float = option(1.0, "gradient-norm clipping threshold (recurrent nets explode without it)")
    minutes: float | None = option(None, "total time budget in minutes (counts time before a --resume)")
    steps: int | None = option(None, "total step budget (default 1000 when --minutes is not given)")
    eval_every: int = option(500, "steps between validation, sample and checkpoint")
    val_fraction: float = option(0.05, "fraction of the corpus (its end) held out for validation")
    seed: int = option(0, "random seed: the same seed and budget in steps give the same model")
    out: str = option("runs/model.pt", "checkpoint path (written at every evaluation)")
    keep_best: bool = option(
        True, "keep the evaluation of least loss on what is held out to choose by, not the last step's: a language model's "
        "validation text; a frame_classifier's or forecaster's part of the training data (a fifth of each class's sequences; "
        "the stretch before the held-out end)"
    )
    lr_plateau: float | None = option(
        None, "divide the learning rate by this whenever an evaluation's loss on what chooses (--keep-best's) is no better "
        "than the best so far, as published word-level recipes do (4 in Zaremba et al.'s; default: the schedule alone)"
    )
    resume: bool = option(False, "continue from the checkpoint at --out")
    force: bool = option(False, "replace an existing checkpoint at --out (without it, an existing one is refused)")
    sample_chars: int = option(160, "characters of sample text printed at each evaluation")
    progress_interval_s: float = option(10.0, "seconds between progress lines when the output is not a terminal (a log)")
    quiet: bool = option(False, "no progress bar or samples")
    metrics_csv: str | None = option(None, "append every evaluation's figures to this CSV file (for a spreadsheet or a plot)")

    def __post_init__(self):
        check_choices(self)
        if self.tokenizer in ("bpe", "word") and self.task != "language_model":
            raise ValueError(f"--tokenizer {self.tokenizer} is for language models; a {self.task} reads characters: use byte or char")
        if self.vocab_size < 257 and self.tokenizer == "bpe":
            raise ValueError(
                f"--vocab-size {self.vocab_size}: a byte-level BPE vocabulary holds the 256 bytes before any merge, so it needs at "
                "least 257 (2000 is the default, 4000 suits a larger corpus)"
            )
        numbers = self.task in ("frame_classifier", "forecaster")
        if not numbers and (self.dataset or self.csv):
            raise ValueError(f"--{'dataset' if self.dataset else 'csv'} is for frame_classifier and forecaster; a {self.task} reads text (--corpus)")
        if self.csv is None and any(getattr(self, n) for n in ("columns", "target", "sequence", "time")):
            named = next(n for n in ("columns", "target", "sequence", "time") if getattr(self, n))
            raise ValueError(f"--{named} names a column of your --csv file: give --csv too")
        for name in ("layers", "hidden", "embedding", "batch_size", "bptt", "eval_every", "sample_chars", "vocab_size", "period"):
            if getattr(self, name) < 1:
                raise ValueError(f"{flag(name)} must be at least 1, not {getattr(self, name)}")
        if self.steps is not None and self.steps < 1:
            raise ValueError(f"--steps must be at least 1, not {self.steps}")
        for name in ("lr", "clip", "minutes"):
            value = getattr(self, name)
            if value is not None and not value > 0:
                raise ValueError(f"{flag(name)} must be more than 0, not {value}")
        for name in ("warmup_steps", "progress_interval_s"):
            if getattr(self, name) < 0:
                raise ValueError(f"{flag(name)} must not be negative, not {getattr(self, name)}")
        if not 0 <= self.dropout < 1:
            raise ValueError(f"--dropout must be in [0, 1), not {self.dropout}")
        if (self.val_corpus or self.test_corpus) and self.task != "language_model":
            raise ValueError(f"--{'val' if self.val_corpus else 'test'}-corpus is for language models; a {self.task} has its own held-out data")
        if self.lr_plateau is not None and not self.lr_plateau > 1:
            raise ValueError(f"--lr-plateau divides the learning rate: it must be more than 1, not {self.lr_plateau}")
        if not 0 < self.val_fraction < 1:
            raise ValueError(f"--val-fraction must be in (0, 1), not {self.val_fraction}")

    def budget(self) -> tuple[int | None, float | None]:
        """(total steps, total seconds); one may be None."""
        steps = self.steps if self.steps is not None or self.minutes is not None else 1000
        return steps, None if self.minutes is None else self.minutes * 60.0
