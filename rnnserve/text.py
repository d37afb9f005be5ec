"""Tokenizers that work on any UTF-8 text, and an incremental decoder that never splits a character.

This module has no torch dependency: the server uses it to turn text into token ids and back.
"""

from __future__ import annotations

import codecs
import json
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


class HFTokenizer:
    """A Hugging Face `tokenizers` tokenizer (BPE, WordPiece, Unigram, word-level…), whose JSON travels inside the
    model file. A token's bytes are what it adds to the text: a byte-level BPE token may be a part of a character,
    which the incremental decoder holds until the character is whole; special tokens add nothing."""

    kind = "hf"

    def __init__(self, json_text: str):
        from tokenizers import Tokenizer as Loaded  # imported here: only models that use it need it

        self._json = json_text
        try:
            self._tokenizer = Loaded.from_str(json_text)
        except Exception as err:
            raise ValueError(f"not a Hugging Face tokenizer.json: {err}") from None
        decoder = json.loads(json_text).get("decoder") or {}
        if decoder.get("type") == "Sequence":  # the one of its decoders that says how tokens become text
            known = [d for d in decoder.get("decoders", []) if d.get("type") in ("ByteLevel", "Metaspace", "WordPiece")]
            decoder = known[0] if known else {}
        self._decoder_kind = decoder.get("type", "")
        self._metaspace = decoder.get("replacement", "▁")
        self._wordpiece_prefix = decoder.get("prefix", "##")
        special = {t.content for t in self._tokenizer.get_added_tokens_decoder().values() if t.special}
        self._bytes = [self._bytes_of(self._tokenizer.id_to_token(i), special) for i in range(self.vocab_size)]

    @classmethod
    def from_file(cls, path: str) -> HFTokenizer:
        with open(path, encoding="utf-8") as file:
            return cls(file.read())

    @property
    def vocab_size(self) -> int:
        return self._tokenizer.get_vocab_size(with_added_tokens=True)

    def encode(self, text: str) -> list[int]:
        try:
            return self._tokenizer.encode(text, add_special_tokens=False).ids
        except Exception as err:  # e.g. a word-level vocabulary without an unknown token
            raise UnknownText(str(err)) from None

    def token_bytes(self, token_id: int) -> bytes:
        return self._bytes[token_id]

    def spec(self) -> dict:
        return {"kind": self.kind, "json": self._json}

    def _bytes_of(self, token: str | None, special: set[str]) -> bytes:
        if token is None or token in special:
            return b""
        if self._decoder_kind == "ByteLevel":
            return bytes(_BYTE_OF_CHAR.get(ch, 0) for ch in token)
        if self._decoder_kind == "Metaspace":
            return token.replace(self._metaspace, " ").encode("utf-8")
        if self._decoder_kind == "WordPiece":
            prefix = self._wordpiece_prefix
            return (token[len(prefix):] if token.startswith(prefix) else " " + token).encode("utf-8")
        return token.encode("utf-8")


def _byte_level_alphabet() -> dict[str, int]:
    """GPT-2's byte-level BPE writes each byte as a printable character: this maps them back."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    chars, extra = list(printable), 0
    for byte in range(256):
        if byte not in printable:
            printable.append(byte)
            chars.append(256 + extra)
            extra += 1
    return {chr(c): b for b, c in zip(printable, chars)}


_BYTE_OF_CHAR = _byte_level_alphabet()


def tokenizer_from_spec(spec: dict) -> Tokenizer | None:
    """Rebuilds a tokenizer from the `tokenizer` entry of a model's metadata (None for a model that takes values)."""
    if spec.get("kind") == "none":
        return None
    if spec.get("kind") == "byte":
        return ByteTokenizer()
    if spec.get("kind") == "char":
        return CharTokenizer(tuple(spec["vocab"]))
    if spec.get("kind") == "hf":
        return HFTokenizer(spec["json"])
    raise ValueError(f"unknown tokenizer kind {spec.get('kind')!r} (expected 'byte', 'char' or 'hf')")


def make_tokenizer(kind: str, corpus: str, vocab_size: int = 2000) -> Tokenizer:
    """A tokenizer for training: byte and char need nothing more; bpe (byte-level BPE: any text, no unknown
    characters) and word learn `vocab_size` tokens from the corpus with Hugging Face `tokenizers`. A word token is
    a word (what whitespace separates) with the space before it, and a line end is a token: N words on a line are
    N tokens and one more, as word-level language models count them (spaces at a line's end are dropped, as they
    split Penn Treebank's " \n"), and text of single spaces between words round-trips exactly; a word outside the vocabulary is [UNK] (which writes nothing)."""
    if kind == "byte":
        return ByteTokenizer()
    if kind == "char":
        return CharTokenizer.from_text(corpus)
    if kind in ("bpe", "word"):
        from tokenizers import Regex, decoders, models, normalizers, pre_tokenizers, trainers
        from tokenizers import Tokenizer as Trained

        if kind == "bpe":
            trained = Trained(models.BPE())
            trained.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
            trained.decoder = decoders.ByteLevel()
            trainer = trainers.BpeTrainer(vocab_size=vocab_size, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
        else:  # a word is what whitespace separates, its one space before it attached (as SentencePiece marks it)
            trained = Trained(models.WordLevel(unk_token=UNKNOWN_WORD))
            trained.normalizer = normalizers.Replace(Regex(" +\n"), "\n")  # spaces at a line's end are not a word
            trained.pre_tokenizer = pre_tokenizers.Sequence([
                pre_tokenizers.Split(Regex("\n"), behavior="isolated"),  # a line end is a token
                pre_tokenizers.Metaspace(replacement=SPACE_MARK, prepend_scheme="never"),
            ])
            trained.decoder = decoders.Metaspace(replacement=SPACE_MARK, prepend_scheme="never")
            trainer = trainers.WordLevelTrainer(vocab_size=vocab_size, special_tokens=[UNKNOWN_WORD], show_progress=False)
        trained.train_from_iterator(corpus.splitlines(keepends=True), trainer)
        return HFTokenizer(trained.to_str())
    raise ValueError(f"unknown tokenizer {kind!r} (expected 'byte', 'char', 'bpe' or 'word')")


UNKNOWN_WORD = "[UNK]"  # not "<unk>": a special token is matched in the text before words are, and Penn Treebank's
# text writes "<unk>" for its own rare words, an ordinary word of its vocabulary
SPACE_MARK = "▁"  # a word token's space before it: " the" is "▁the", a second space "▁" alone


class IncrementalDecoder:
    """Turns a stream of token ids into text, emitting only whole UTF-8 characters.

    A byte tokenizer can produce half a character per step; the remainder waits for the next token, and a
    character that never completes is never emitted. Invalid byte sequences (a model can sample them) become
    U+FFFD rather than an error.
    """

    def __init__(self, tokenizer: Tokenizer, pending: bytes = b""):
        """`pending`: the bytes of a character begun before (what `pending()` said of an earlier decoder)."""
        self._tokenizer = tokenizer
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._decoder.setstate((pending, 0))

    def feed(self, token_id: int) -> str:
        return self._decoder.decode(self._tokenizer.token_bytes(token_id))

    def pending(self) -> bytes:
        """The bytes of a character not yet complete."""
        return self._decoder.getstate()[0]


def count_words(text: str) -> int:
    """Words (what whitespace separates) and line ends: what a per-word perplexity divides by, in training and in
    `rnnserve score` alike."""
    return len(text.split()) + text.count("\n")


def token_text(tokenizer: Tokenizer, token_id: int) -> str:
    """A single token as readable text: bytes that are not a whole character are shown as \\xNN."""
    return tokenizer.token_bytes(token_id).decode("utf-8", errors="backslashreplace")
