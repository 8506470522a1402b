import jiwer
import pytest

from asr.text import normalize_text, word_error_rate


@pytest.mark.parametrize(
    "raw, want",
    [
        ("Computer, what's the time?", "computer what's the time"),
        ("Set an alarm for 7 O'Clock.", "set an alarm for 7 o'clock"),
        ("'quoted' words", "quoted words"),
        ("  many   spaces\t", "many spaces"),
        ("Don\u2019t", "don't"),
    ],
)
def test_normalize(raw, want):
    assert normalize_text(raw) == want


def test_wer_matches_jiwer_and_normalizes_both_sides():
    refs = ["Turn on the lights.", "what's up"]
    hyps = ["turn of the lights", "What's up!"]
    got = word_error_rate(refs, hyps)
    assert got["wer"] == pytest.approx(
        jiwer.wer(["turn on the lights", "what's up"], ["turn of the lights", "what's up"])
    )
    assert got["substitutions"] == 1 and got["words"] == 6


def test_wer_errors():
    with pytest.raises(ValueError, match="references but"):
        word_error_rate(["a"], [])
    with pytest.raises(ValueError, match="empty"):
        word_error_rate(["..."], ["a"])
