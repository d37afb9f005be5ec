"""Tokenizers that work on any UTF-8 text, and an incremental decoder that never splits a character.

This module has no torch dependency: the server uses it to turn text into token ids and back.
"""

from __future__ import annotations

import codecs
from dataclasses import dataclass, field
from typing import Protocol


class UnknownText(ValueError):
    """Text holds characters the tokenizer's vocabulary does not have."""


class Tokenizer(Protocol):
    kind: str

    @property
    def vocab_size(self) -> int: ...

    def encode(self, text: str) -> list[int]: ...

    def token_bytes(self, token_id: int) -> bytes: ...

    def spec(self) -> dict: ...


@dataclass(frozen=True)
class ByteTokenizer:
    """One token per UTF-8 byte: covers every language with a vocabulary of 256."""

    kind: str = "byte"

    @property
    def vocab_size(self) -> int:
        return 256

    def encode(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))

    def token_bytes(self, token_id: int) -> bytes:
        return bytes((token_id,))

    def spec(self) -> dict:
        return {"kind": self.kind}


@dataclass(frozen=True)
class CharTokenizer:
    """One token per Unicode character seen in the training corpus."""

    chars: tuple[str, ...]
    kind: str = "char"
    _index: dict[str, int] = field(init=False, repr=False, compare=False)

    def __post_init__(self):
        object.__setattr__(self, "_index", {ch: i for i, ch in enumerate(self.chars)})

    @classmethod
    def from_text(cls, text: str) -> CharTokenizer:
        return cls(tuple(sorted(set(text))))

    @property
    def vocab_size(self) -> int:
        return len(self.chars)

    def encode(self, text: str) -> list[int]:
        unknown = sorted({ch for ch in text if ch not in self._index})
        if unknown:
            shown = ", ".join(repr(ch) for ch in unknown[:10])
            raise UnknownText(f"{len(unknown)} character(s) not in the model's vocabulary: {shown}")
        return [self._index[ch] for ch in text]

    def token_bytes(self, token_id: int) -> bytes:
        return self.chars[token_id].encode("utf-8")

    def spec(self) -> dict:
        return {"kind": self.kind, "vocab": "".join(self.chars)}


def tokenizer_from_spec(spec: dict) -> Tokenizer:
    """Rebuilds a tokenizer from the `tokenizer` entry of a model's metadata."""
    if spec.get("kind") == "byte":
        return ByteTokenizer()
    if spec.get("kind") == "char":
        return CharTokenizer(tuple(spec["vocab"]))
    raise ValueError(f"unknown tokenizer kind {spec.get('kind')!r} (expected 'byte' or 'char')")


def make_tokenizer(kind: str, corpus: str) -> Tokenizer:
    if kind == "byte":
        return ByteTokenizer()
    if kind == "char":
        return CharTokenizer.from_text(corpus)
    raise ValueError(f"unknown tokenizer {kind!r} (expected 'byte' or 'char')")


class IncrementalDecoder:
    """Turns a stream of token ids into text, emitting only whole UTF-8 characters.

    A byte tokenizer can produce half a character per step; the remainder waits for the next token, and a
    character that never completes is never emitted. Invalid byte sequences (a model can sample them) become
    U+FFFD rather than an error.
    """

    def __init__(self, tokenizer: Tokenizer):
        self._tokenizer = tokenizer
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def feed(self, token_id: int) -> str:
        return self._decoder.decode(self._tokenizer.token_bytes(token_id))


def token_text(tokenizer: Tokenizer, token_id: int) -> str:
    """A single token as readable text: bytes that are not a whole character are shown as \\xNN."""
    return tokenizer.token_bytes(token_id).decode("utf-8", errors="backslashreplace")
