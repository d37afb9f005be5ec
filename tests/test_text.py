import pytest

from rnnserve.text import (
    ByteTokenizer,
    CharTokenizer,
    IncrementalDecoder,
    UnknownText,
    token_text,
    tokenizer_from_spec,
)


def test_byte_tokenizer_round_trips_korean():
    text = "한국어 and English"
    tokenizer = ByteTokenizer()
    assert bytes(tokenizer.encode(text)).decode("utf-8") == text
    assert len(tokenizer.encode("한")) == 3


def test_incremental_decoder_emits_only_whole_characters():
    tokenizer = ByteTokenizer()
    decoder = IncrementalDecoder(tokenizer)
    pieces = [decoder.feed(b) for b in "가나".encode("utf-8")]
    assert pieces == ["", "", "가", "", "", "나"]


def test_incremental_decoder_replaces_invalid_bytes_instead_of_failing():
    decoder = IncrementalDecoder(ByteTokenizer())
    out = "".join(decoder.feed(b) for b in [0xEA, 0x41, 0xEA, 0xB0])
    assert out == "\ufffdA"  # and the last two bytes, the start of a character, wait for the rest


def test_char_tokenizer_names_the_characters_it_cannot_encode():
    tokenizer = CharTokenizer.from_text("abc ")
    assert tokenizer.encode("cab") == [3, 1, 2]
    with pytest.raises(UnknownText, match="'z'"):
        tokenizer.encode("abz")


def test_tokenizer_spec_rebuilds_the_same_tokenizer():
    tokenizer = CharTokenizer.from_text("hello 세계")
    assert tokenizer_from_spec(tokenizer.spec()) == tokenizer
    assert tokenizer_from_spec(ByteTokenizer().spec()) == ByteTokenizer()


def test_partial_bytes_are_shown_escaped():
    assert token_text(ByteTokenizer(), 0xEA) == "\\xea"
    assert token_text(ByteTokenizer(), ord("a")) == "a"
