"""Streamed text never splits a UTF-8 character, whatever the tokenizer."""

from training.text import ByteTokenizer

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
    assert any(len(p.token_ids) == 3 for p in pieces)  # a 3-byte syllable waited for its last byte


def test_sampled_bytes_never_break_the_stream(client):
    """At high temperature a byte model emits invalid sequences; they arrive as U+FFFD, not errors."""
    pieces = list(client.generate("korean", KOREAN_PROMPT, temperature=5.0, seed=3, max_tokens=200))
    ids = [t for p in pieces for t in p.token_ids]
    assert "".join(p.text for p in pieces) == bytes(ids).decode("utf-8", errors="replace")


def test_stream_shows_partial_bytes_escaped(client):
    response = next(iter(client.stream("korean", ["한"])))
    assert [s.token_text for s in response.steps] == ["\\xed", "\\x95", "\\x9c"]
    assert [s.token_id for s in response.steps] == ByteTokenizer().encode("한")
