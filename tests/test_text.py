import random

import jiwer
import pytest

from asr.text import group_error_rates, normalize_text, utterance_errors, word_error_rate


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


def _levenshtein(a: list[str], b: list[str]) -> int:
    """Plain dynamic-programming word edit distance: the independent reference."""
    d = list(range(len(b) + 1))
    for i, x in enumerate(a, 1):
        prev, d[0] = d[0], i
        for j, y in enumerate(b, 1):
            prev, d[j] = d[j], min(d[j] + 1, d[j - 1] + 1, prev + (x != y))
    return d[-1]


def test_utterance_errors_and_groups_match_brute_force():
    rng = random.Random(0)
    vocab = "a b c d e".split()
    rows = []
    for k in range(60):
        ref = " ".join(rng.choice(vocab) for _ in range(rng.randint(0, 6)))
        hyp = " ".join(rng.choice(vocab) for _ in range(rng.randint(0, 6)))
        e = utterance_errors(ref.upper() + "!", hyp)
        assert e["errors"] == _levenshtein(ref.split(), hyp.split())
        assert e["errors"] == e["substitutions"] + e["deletions"] + e["insertions"]
        assert e["words"] == len(ref.split())
        rows.append({"ref": ref, "hyp": hyp, "g": "xyz"[k % 3], **e})
    groups = group_error_rates(rows, "g")
    for g, v in groups.items():
        mine = [r for r in rows if r["g"] == g]
        assert v["utterances"] == len(mine)
        assert v["wer"] == pytest.approx(
            sum(_levenshtein(r["ref"].split(), r["hyp"].split()) for r in mine)
            / sum(len(r["ref"].split()) for r in mine)
        )
    wers = [v["wer"] for v in groups.values()]
    assert wers == sorted(wers, reverse=True)
    kept = [r for r in rows if r["ref"]]
    corpus = word_error_rate([r["ref"] for r in kept], [r["hyp"] for r in kept])
    assert corpus["wer"] == pytest.approx(
        sum(r["errors"] for r in kept) / sum(r["words"] for r in kept)
    )
    assert group_error_rates([{"errors": 1, "words": 0}], "g") == {
        "(none)": {"wer": None, "words": 0, "utterances": 1}
    }
    with pytest.raises(ValueError, match="not labels"):
        group_error_rates([{"errors": 0, "words": 1, "g": ["a"]}], "g")
