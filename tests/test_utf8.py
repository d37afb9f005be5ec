"""Streamed text never splits a UTF-8 character, whatever the tokenizer, and never ends in a part of one."""

import codecs

from rnnserve.text import ByteTokenizer

KOREAN_PROMPT = "안녕하세요. "


def test_korean_generation_streams_whole_characters(client, reference):
    expected_ids = reference("korean").greedy(list(KOREAN_PROMPT.encode()), 60)
    pieces = list(client.generate("korean", KOREAN_PROMPT, temperature=0.0, max_tokens=60))
    ids = [t for p in pieces for t in p.token_ids]
    assert ids == expected_ids
    text = "".join(p.text for p in pieces)
    assert text == bytes(ids).decode("utf-8", errors="replace")
    assert sum("\uac00" <= ch <= "\ud7a3" for ch in text) >= 10  # the model really writes Hangul
    for piece in pieces[:-1]:
        # each piece is exactly the whole characters its bytes make: none held over, none cut
        assert piece.text.encode("utf-8") == bytes(piece.token_ids)
    # a 3-byte syllable waited for its last byte (how many a piece holds depends on how fast the client reads)
    assert any(len(p.token_ids) > len(p.text) for p in pieces)


def test_sampled_bytes_never_break_the_stream(client):
    """At high temperature a byte model emits invalid sequences; they arrive as U+FFFD, not errors."""
    pieces = list(client.generate("korean", KOREAN_PROMPT, temperature=5.0, seed=3, max_tokens=200))
    ids = [t for p in pieces for t in p.token_ids]
    assert "".join(p.text for p in pieces) == bytes(ids).decode("utf-8", errors="replace")


def test_stream_shows_partial_bytes_escaped(client):
    response = next(iter(client.stream("korean", ["한"])))
    assert [s.token_text for s in response.steps] == ["\\xed", "\\x95", "\\x9c"]
    assert [s.token_id for s in response.steps] == ByteTokenizer().encode("한")


def test_stream_steps_carry_whole_characters_even_across_messages(client):
    """A character's bytes may arrive in different messages: the step that completes it carries it whole."""
    first, second = client.stream("korean", [list("한".encode())[:2], list("한국".encode())[2:]])
    assert [s.text for s in first.steps] == ["", ""]
    assert [s.text for s in second.steps] == ["한", "", "", "국"]


def _whole_characters(data: bytes) -> str:
    """The text of `data` up to its last whole character (a character cut short at the end is left out)."""
    return codecs.getincrementaldecoder("utf-8")(errors="replace").decode(data)


def test_max_tokens_never_cuts_a_character_in_half(client, reference):
    """Hangul takes 3 bytes: whatever the limit, the text ends at its last whole character."""
    cut_short = 0
    for max_tokens in range(30, 36):  # every remainder modulo 3, twice
        pieces = list(client.generate("korean", KOREAN_PROMPT, temperature=0.0, max_tokens=max_tokens))
        ids = [t for p in pieces for t in p.token_ids]
        assert ids == reference("korean").greedy(list(KOREAN_PROMPT.encode()), max_tokens)  # every token is still listed
        text = "".join(p.text for p in pieces)
        assert text == _whole_characters(bytes(ids)) and "\ufffd" not in text, (max_tokens, text)
        assert pieces[-1].generated_tokens == max_tokens
        cut_short += len(text.encode()) < len(ids)
    assert cut_short >= 2  # the limit did fall inside characters
