import pytest

from asr.tokenizer import BLANK_ID, Tokenizer

TEXTS = [
    "turn on the kitchen lights",
    "call mom",
    "set a timer for five minutes",
    "what's the weather in paris",
    "play some jazz music",
] * 40


def test_roundtrip_and_blank(tmp_path):
    tok = Tokenizer.train(TEXTS, vocab_size=48)
    assert tok.piece(BLANK_ID) == "<blk>"
    for t in set(TEXTS):
        ids = tok.encode(t)
        assert BLANK_ID not in ids and all(0 < i < tok.vocab_size for i in ids)
        assert tok.decode(ids) == t
    tok.save(tmp_path / "t.model")
    again = Tokenizer.load(tmp_path / "t.model")
    assert again.encode("call paris") == tok.encode("call paris")
    assert tok.decode([BLANK_ID] + tok.encode("call mom") + [BLANK_ID]) == "call mom"


def test_train_rejects_no_text():
    with pytest.raises(ValueError, match="no text"):
        Tokenizer.train(["", "  "])
