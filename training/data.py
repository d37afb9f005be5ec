"""Corpora: the built-in help topics, the labelled prose/Python/C texts, and generated dates."""

from __future__ import annotations

import functools
import math
from collections import Counter
from pathlib import Path

from rnnserve.errors import UsageError


def builtin_corpus() -> str:
    """English text that ships with Python itself (the help topics), so training needs no download."""
    import pydoc_data.topics

    topics = pydoc_data.topics.topics
    return "\n\n".join(topics[name] for name in sorted(topics))


def load_corpus(path: str | None, flag: str = "--corpus") -> str:
    """The text a flag names (the built-in corpus for none)."""
    if path is None:
        return builtin_corpus()
    try:
        return Path(path).read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise UsageError(f"{flag} {path}: not UTF-8 text ({err})") from None
    except OSError as err:
        raise UsageError(f"{flag} {path}: {err.strerror}") from None


def split_corpus(text: str, val_fraction: float) -> tuple[str, str]:
    """The last `val_fraction` of the text is held out for validation."""
    cut = int(len(text) * (1.0 - val_fraction))
    return text[:cut], text[cut:]


@functools.lru_cache(maxsize=4)  # asked at every evaluation about the same corpus
def unigram_entropy_bits(text: str) -> float:
    """Bits per character of the text's own character frequencies: what a model without context gets."""
    counts = Counter(text)
    total = len(text)
    return -sum(n / total * math.log2(n / total) for n in counts.values())


LABELLED_CHARS = 600_000  # per kind of text: enough to learn from, balanced, loaded in a blink


@functools.lru_cache(maxsize=1)
def labelled_corpus() -> dict[str, str]:
    """Three kinds of text every Python installation carries, to learn to tell apart (or to write on demand):
    English prose (the help topics), Python source (the standard library) and C (Python's own headers)."""
    import sysconfig

    paths = sysconfig.get_paths()
    kinds = {
        "prose": builtin_corpus(),
        "python": _concatenated(sorted(Path(paths["stdlib"]).glob("*.py"))),
        "c": _concatenated(sorted(Path(paths["include"]).rglob("*.h"))),
    }
    for kind, text in kinds.items():
        if len(text) < 50_000:
            raise UsageError(f"the built-in labelled corpus needs {kind} text; this Python installation has too little of it")
    return {kind: text[:LABELLED_CHARS] for kind, text in kinds.items()}


def _concatenated(files: list[Path]) -> str:
    texts, total = [], 0
    for path in files:
        if total >= LABELLED_CHARS:
            break
        text = path.read_text(encoding="utf-8", errors="replace")
        texts.append(text)
        total += len(text)
    return "\n".join(texts)


MONTHS = ("January", "February", "March", "April", "May", "June", "July", "August", "September", "October", "November", "December")
WEEKDAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")


def _ordinal(n: int) -> str:
    return f"{n}{'th' if 10 <= n % 100 <= 20 else {1: 'st', 2: 'nd', 3: 'rd'}.get(n % 10, 'th')}"


DATE_FORMATS = (
    lambda d: f"{MONTHS[d.month - 1]} {d.day}, {d.year}",
    lambda d: f"{d.day} {MONTHS[d.month - 1]} {d.year}",
    lambda d: f"{MONTHS[d.month - 1][:3]} {d.day} {d.year}",
    lambda d: f"{d.day:02d}.{d.month:02d}.{d.year}",
    lambda d: f"{d.day}-{MONTHS[d.month - 1][:3]}-{d.year}",
    lambda d: f"{WEEKDAYS[d.weekday()]}, {MONTHS[d.month - 1]} {_ordinal(d.day)}, {d.year}",
    lambda d: f"the {_ordinal(d.day)} of {MONTHS[d.month - 1].lower()} {d.year}",
    lambda d: f"{d.year}/{d.month}/{d.day}",
)


def date_pair(rng, held_out: bool) -> tuple[str, str]:
    """A date written one of the ways people write them, and the same date in ISO 8601 (YYYY-MM-DD):
    unlimited examples, made offline, for a transduction that needs attention (digits move and months turn
    into numbers). Every 20th day from 1900-01-01 is held out: validation dates are never trained on."""
    import datetime

    days = rng.randrange(73_049 // 20) * 20 if held_out else rng.choice(range(1, 20)) + 20 * rng.randrange(73_049 // 20)
    day = datetime.date(1900, 1, 1) + datetime.timedelta(days=days)  # up to 2099
    return rng.choice(DATE_FORMATS)(day), day.isoformat()
