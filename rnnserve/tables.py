"""A CSV file of numbers with a header row, read with the standard library (training reads a user's data with it,
`rnnserve stream --csv` streams rows with it): every mistake is one line that names the file, the row and the column."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np

from rnnserve.errors import UsageError


class CsvTable:
    """A CSV file with a header row, read whole: its columns by name, every mistake one line naming file, row and column."""

    def __init__(self, path: str):
        self.path = path
        try:
            with Path(path).open(newline="", encoding="utf-8") as file:
                rows = list(csv.reader(file))
        except FileNotFoundError:
            raise UsageError(f"--csv {path}: no such file") from None
        except IsADirectoryError:
            raise UsageError(f"--csv {path}: is a directory, not a CSV file") from None
        except UnicodeDecodeError:
            raise UsageError(f"--csv {path}: not UTF-8 text") from None
        rows = [row for row in rows if any(cell.strip() for cell in row)]
        if not rows:
            raise UsageError(f"--csv {path}: empty: expected a header row naming the columns, then a row per time step")
        self.header = [cell.strip() for cell in rows[0]]
        self.rows = rows[1:]
        for number, row in enumerate(self.rows, start=2):
            if len(row) != len(self.header):
                raise UsageError(f"--csv {path}: row {number} has {len(row)} cells; the header names {len(self.header)} columns")

    def index(self, flag: str, name: str) -> int:
        if name not in self.header:
            raise UsageError(f"--csv {self.path}: no column {name!r} (named by {flag}); its columns are {', '.join(self.header)}")
        return self.header.index(name)

    def numbers(self, flag: str, names: list[str]) -> np.ndarray:
        """The named columns as float32 [rows, len(names)]."""
        indices = [self.index(flag, name) for name in names]
        out = np.empty((len(self.rows), len(names)), np.float32)
        for r, row in enumerate(self.rows):
            for c, i in enumerate(indices):
                cell = row[i].strip()
                try:
                    value = float(cell)
                except ValueError:
                    what = "is empty" if not cell else f"{cell!r} is not a number"
                    raise UsageError(f"--csv {self.path}: row {r + 2}, column {names[c]!r}: {what}") from None
                if not math.isfinite(value):
                    raise UsageError(f"--csv {self.path}: row {r + 2}, column {names[c]!r}: {cell!r} is not a finite number")
                out[r, c] = value
        return out

    def order(self, time: str | None) -> np.ndarray:
        """Row indices in time order: by the --time column (as numbers when every cell is one, else as text, which
        orders ISO 8601 dates), else as written."""
        if time is None:
            return np.arange(len(self.rows))
        i = self.index("--time", time)
        cells = [row[i].strip() for row in self.rows]
        try:
            keys: list = [float(c) for c in cells]
        except ValueError:
            keys = cells
        return np.array(sorted(range(len(cells)), key=keys.__getitem__), dtype=np.int64)
