"""Numbers to learn from: labelled sequences of frames (a classifier's) and real-valued series (a forecaster's), from
the datasets packages ship (aeon's UEA archive files, statsmodels' series: nothing is downloaded) or from a user's
CSV file, read with the standard library and refused in one line that names the row and column at fault."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from rnnserve.errors import UsageError
from rnnserve.tables import CsvTable

NEEDS_SERIES_EXTRA = "the built-in datasets come with aeon and statsmodels: pip install 'rnnserve[series]'"


@dataclass(frozen=True)
class Frames:
    """Labelled sequences of frames: a train split and a test split, each a list of [T, F] arrays and their labels."""

    name: str
    columns: tuple[str, ...]  # what each of a frame's F values is
    labels: tuple[str, ...]  # class names, in the order the model's outputs name them
    train: tuple[list[np.ndarray], np.ndarray]
    test: tuple[list[np.ndarray], np.ndarray]


@dataclass(frozen=True)
class Series:
    """One or more series observed at the same regular times [N, S], in time order, and their seasonal period (for
    the seasonal-naive forecast and MASE's scale)."""

    name: str
    columns: tuple[str, ...]
    values: np.ndarray  # [N, S] float32
    period: int


# the UEA multivariate archive's datasets that aeon ships inside its wheel (its own train/test split)
BUILTIN_FRAMES = {
    "JapaneseVowels": "12 LPC cepstrum coefficients per 6.7 ms speech frame of a Japanese vowel, 9 speakers to tell apart",
    "BasicMotions": "a smartwatch's accelerometer and gyroscope (3 axes each) at 10 Hz: walking, resting, running or badminton",
}
BUILTIN_SERIES = {
    "co2": ("weekly CO2 at Mauna Loa, ppm, 1958-2001 (statsmodels; gaps filled linearly)", 52),
    "sunspots": ("yearly sunspot activity, 1700-2008 (statsmodels)", 11),
}


def builtin_frames(name: str) -> Frames:
    try:
        from aeon.datasets import load_classification
    except ModuleNotFoundError:
        raise UsageError(NEEDS_SERIES_EXTRA) from None
    splits = []
    for split in ("train", "test"):
        x, y = load_classification(name, split=split)  # a list of [F, T] (unequal lengths) or an array [N, F, T]
        splits.append(([np.ascontiguousarray(np.asarray(s, np.float32).T) for s in x], [str(label) for label in y]))
    labels = tuple(sorted({str(label) for label in splits[0][1]}, key=_natural))
    index = {label: i for i, label in enumerate(labels)}
    channels = splits[0][0][0].shape[1]
    return Frames(
        name, tuple(f"channel_{i}" for i in range(channels)), labels,
        *((frames, np.array([index[label] for label in y], np.int64)) for frames, y in splits),
    )


def builtin_series(name: str) -> Series:
    try:
        from statsmodels import datasets
    except ModuleNotFoundError:
        raise UsageError(NEEDS_SERIES_EXTRA) from None
    if name == "co2":
        column = datasets.co2.load_pandas().data["co2"].interpolate()
    else:
        column = datasets.sunspots.load_pandas().data["SUNACTIVITY"]
    return Series(name, (str(column.name),), column.to_numpy(np.float32)[:, None], BUILTIN_SERIES[name][1])  # the dataset's own column name


def _natural(label: str):
    """'2' before '10': labels that are numbers sort as numbers."""
    try:
        return (0, float(label), "")
    except ValueError:
        return (1, 0.0, label)


def _names(flag: str, value: str | None, what: str) -> list[str]:
    names = [n.strip() for n in (value or "").split(",") if n.strip()]
    if not names:
        raise UsageError(f"--csv needs {flag}: {what}")
    return names


MIN_SERIES_ROWS = 32


def csv_series(path: str, target: str | None, time: str | None, period: int) -> Series:
    """A forecaster's own series: the --target columns (comma-separated) in --time order."""
    table = CsvTable(path)
    names = _names("--target", target, "the column (or comma-separated columns) to forecast")
    values = table.numbers("--target", names)[table.order(time)]
    if len(values) < MIN_SERIES_ROWS:
        raise UsageError(f"--csv {path}: {len(values)} rows; a forecaster needs at least {MIN_SERIES_ROWS} (a held-out end and enough before it to learn from)")
    if (values.std(0) == 0).any():
        flat = [n for n, s in zip(names, values.std(0)) if s == 0]
        raise UsageError(f"--csv {path}: column {flat[0]!r} never changes: there is nothing to forecast")
    return Series(Path(path).stem, tuple(names), values, period)


def csv_frames(path: str, columns: str | None, target: str | None, sequence: str | None, time: str | None, test_fraction: float) -> Frames:
    """A classifier's own sequences: a row per frame, the --columns its values, the --target its sequence's label and
    the --sequence column saying which sequence it belongs to; the last sequences (a --val-fraction of each label's)
    are held out."""
    table = CsvTable(path)
    features = _names("--columns", columns, "the comma-separated columns of a frame's values")
    (label_column,) = _names("--target", target, "the column naming each sequence's class")[:1]
    (sequence_column,) = _names("--sequence", sequence, "the column naming the sequence each row belongs to")[:1]
    label_at, sequence_at = table.index("--target", label_column), table.index("--sequence", sequence_column)
    values = table.numbers("--columns", features)
    by_sequence: dict[str, list[int]] = {}
    for r in table.order(time):
        by_sequence.setdefault(table.rows[r][sequence_at].strip(), []).append(int(r))
    labels_of = {}
    for name, rows in by_sequence.items():
        found = {table.rows[r][label_at].strip() for r in rows}
        if len(found) > 1:
            raise UsageError(f"--csv {path}: sequence {name!r} has rows labelled {', '.join(sorted(found))}: a sequence has one label")
        labels_of[name] = found.pop()
    labels = tuple(sorted(set(labels_of.values()), key=_natural))
    if len(labels) < 2:
        raise UsageError(f"--csv {path}: every sequence is labelled {labels[0]!r}: a classifier needs at least two classes")
    train: list[str] = []
    test: list[str] = []
    for label in labels:
        names = [n for n in by_sequence if labels_of[n] == label]
        held = max(1, round(len(names) * test_fraction))
        if len(names) - held < 1:
            raise UsageError(f"--csv {path}: class {label!r} has {len(names)} sequence(s): each class needs at least two (one to learn from, one held out)")
        train += names[:-held]
        test += names[-held:]
    index = {label: i for i, label in enumerate(labels)}

    def split(names: list[str]) -> tuple[list[np.ndarray], np.ndarray]:
        return [values[by_sequence[n]] for n in names], np.array([index[labels_of[n]] for n in names], np.int64)

    return Frames(Path(path).stem, tuple(features), labels, split(train), split(test))
