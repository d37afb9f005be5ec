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


def test_word_tokens_are_words_with_their_spaces_and_line_ends():
    from rnnserve.text import make_tokenizer

    corpus = " the cat sat on the mat .\n the dog 's bone , the cat 's\nthe  cat\n"
    tokenizer = make_tokenizer("word", corpus, vocab_size=50)
    line = " the dog sat on the mat .\n"
    ids = tokenizer.encode(line)
    assert len(ids) == len(line.split()) + 1  # N words, and the line end
    assert b"".join(tokenizer.token_bytes(i) for i in ids).decode() == line  # single spaces round-trip exactly
    spaced = "the  cat\n\n sat ,\n"  # several spaces, a line start with none, a blank line, punctuation
    assert b"".join(tokenizer.token_bytes(i) for i in tokenizer.encode(spaced)).decode() == spaced
    unknown = tokenizer.encode(" the zebra\n")
    assert b"".join(tokenizer.token_bytes(i) for i in unknown).decode() == " the\n" and len(unknown) == 3  # [UNK] writes nothing


def test_a_model_made_with_the_earlier_word_tokenizer_still_reads_its_text():
    """Word models exported before words carried their spaces keep their own tokenizer.json: whitespace runs are
    tokens of their own there, and it reads and writes as it did."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers

    from rnnserve.text import HFTokenizer

    earlier = Tokenizer(models.WordLevel(unk_token="<unk>"))
    earlier.pre_tokenizer = pre_tokenizers.Split(Regex(r"\w+|[^\w\s]|\s+"), behavior="isolated")
    earlier.decoder = decoders.Fuse()
    earlier.train_from_iterator(["the cat sat\n", "the dog ran\n"], trainers.WordLevelTrainer(vocab_size=50, special_tokens=["<unk>"]))
    tokenizer = tokenizer_from_spec(HFTokenizer(earlier.to_str()).spec())
    ids = tokenizer.encode("the cat ran\n")
    assert len(ids) == 6 and b"".join(tokenizer.token_bytes(i) for i in ids).decode() == "the cat ran\n"


def test_spaces_before_a_line_end_are_not_a_word():
    """Penn Treebank's lines end in " \n", some copies' in "\n": both are one line end, so a line of N words is
    N + 1 tokens either way."""
    from rnnserve.text import make_tokenizer

    tokenizer = make_tokenizer("word", " the cat sat\n the dog \n", vocab_size=50)
    assert tokenizer.encode(" the dog sat \n") == tokenizer.encode(" the dog sat\n") and len(tokenizer.encode(" the dog sat \n")) == 4
