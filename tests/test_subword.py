"""Subword (byte-level BPE) and word tokenizers: learnt by `rnnserve train`, carried inside the model file, used
by the server to encode and decode; streamed Korean never splits a character; validation in bits per character."""

import codecs
import json
import math

import onnx
import torch

from rnnserve.text import HFTokenizer, IncrementalDecoder, make_tokenizer, tokenizer_from_spec
from tests.helpers import KOREAN

KOREAN_PROMPT = "안녕하세요. "


def card(repository, name: str) -> dict:
    model = onnx.load(str(repository / name / "1" / "model.onnx"), load_external_data=False)
    return json.loads({p.key: p.value for p in model.metadata_props}["rnnserve"])


def test_the_tokenizer_travels_inside_the_model_file(repository, checkpoints):
    document = card(repository, "korean_bpe")
    assert document["tokenizer"]["kind"] == "hf"
    tokenizer = tokenizer_from_spec(document["tokenizer"])
    assert tokenizer.vocab_size == document["architecture"]["vocab_size"] == 320
    ids = tokenizer.encode(KOREAN)
    assert len(ids) < len(KOREAN.encode()) / 2, "BPE learnt no merges: as many tokens as bytes"
    assert b"".join(tokenizer.token_bytes(i) for i in ids).decode() == KOREAN
    saved = torch.load(checkpoints["korean_bpe"], weights_only=True)
    assert saved["train_config"]["tokenizer"] == "bpe" and saved["tokenizer"] == document["tokenizer"]


def test_bpe_korean_streams_whole_characters_and_equals_the_reference(client, reference):
    info = client.get_model("korean_bpe")
    tokenizer = tokenizer_from_spec(json.loads(info.metadata_json)["tokenizer"])
    prompt = tokenizer.encode(KOREAN_PROMPT)
    expected = reference("korean_bpe").greedy(prompt, 40)
    pieces = list(client.generate("korean_bpe", KOREAN_PROMPT, temperature=0.0, max_tokens=40))
    assert [t for p in pieces for t in p.token_ids] == expected
    text = "".join(p.text for p in pieces)
    assert sum("\uac00" <= ch <= "\ud7a3" for ch in text) >= 10  # it writes Hangul
    assert "\ufffd" not in text
    decoder = codecs.getincrementaldecoder("utf-8")()
    for piece in pieces[:-1]:  # each piece is the whole characters its tokens complete, none cut
        assert piece.text == decoder.decode(b"".join(tokenizer.token_bytes(t) for t in piece.token_ids))


def test_streaming_a_bpe_model_answers_in_whole_characters(client):
    responses = list(client.stream("korean_bpe", ["안녕하", "세요"]))
    texts = [step.text for response in responses for step in response.steps]
    assert "".join(texts) == "안녕하세요"
    assert all(text == "" or text.isprintable() for text in texts)


def test_a_word_model_generates_words_with_their_spaces(client):
    info = client.get_model("words")
    assert info.tokenizer == "hf" and info.vocab_size == 600
    pieces = list(client.generate("words", "The return statement", temperature=0.0, max_tokens=30))
    text = "".join(p.text for p in pieces)
    assert text and all(piece.isprintable() or piece.isspace() for piece in text)
    assert sum(len(p.token_ids) for p in pieces) == 30
    tokenizer = tokenizer_from_spec(json.loads(info.metadata_json)["tokenizer"])
    assert tokenizer.encode("The return") == [tokenizer._tokenizer.token_to_id(w) for w in ("The", "▁return")]


def test_validation_is_reported_per_character_so_tokenizers_compare(checkpoints):
    def metrics(name: str) -> dict:
        return torch.load(checkpoints[name], weights_only=True)["progress"]["metrics"]

    bits_per_token = {name: metrics(name)["val_loss_nats"] / math.log(2) for name in ("korean", "korean_bpe")}
    # a Korean syllable is 3 byte tokens, so a byte model's bits per character are more than per token; a BPE token
    # covers several characters, so there it is the other way round
    assert metrics("korean")["val_bits_per_char"] > bits_per_token["korean"]
    assert metrics("korean_bpe")["val_bits_per_char"] < bits_per_token["korean_bpe"]


def test_a_byte_level_bpe_token_may_hold_part_of_a_character():
    tokenizer = make_tokenizer("bpe", KOREAN * 20, vocab_size=260)  # few merges: bytes of one syllable stay apart
    assert isinstance(tokenizer, HFTokenizer)
    ids = tokenizer.encode("한")
    assert len(ids) > 1
    decoder = IncrementalDecoder(tokenizer)
    assert [decoder.feed(i) for i in ids] == [""] * (len(ids) - 1) + ["한"]
