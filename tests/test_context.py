"""Tests of asr.context (context lists: files, normalization, tokens, phrase occurrences) and
asr.text.marked_word_errors (the errors `context_wer` counts), checked against hand counts."""

from __future__ import annotations

import pytest

from asr.context import (
    ContextError,
    make_context,
    phrase_occurrences,
    read_context_file,
    tokenize_phrases,
)
from asr.text import marked_word_errors
from asr.tokenizer import Tokenizer


def test_make_context_normalizes_dedupes_keeps_largest_weight():
    ctx = make_context(
        ["Anna Lee", "anna  lee!", "Bob", "  ", "o'Brien"], [1.0, 3.0, 2.0, 1.0, 1.0]
    )
    assert ctx.phrases == ("anna lee", "bob", "o'brien")
    assert ctx.weights == (3.0, 2.0, 1.0)
    assert len(ctx) == 3 and ctx
    assert not make_context([])


@pytest.mark.parametrize(
    "phrases, weights, match",
    [
        (["a"], [0.0], "weight must be"),
        (["a"], [float("nan")], "weight must be"),
        (["a", "b"], [1.0], "2 phrases but 1 weights"),
        ([3], None, "expected a string"),
    ],
)
def test_make_context_rejects_bad_input(phrases, weights, match):
    with pytest.raises(ContextError, match=match):
        make_context(phrases, weights)


def test_read_context_file(tmp_path):
    f = tmp_path / "names.txt"
    f.write_text("# my contacts\nAnna Lee\n\nkitchen light\t2.5\n  bob  \n", encoding="utf-8")
    ctx = read_context_file(f)
    assert ctx.phrases == ("anna lee", "kitchen light", "bob")
    assert ctx.weights == (1.0, 2.5, 1.0)


@pytest.mark.parametrize(
    "text, match",
    [
        ("anna\tlots\n", r"names.txt:1: weight after the tab must be a number, got 'lots'"),
        ("anna\n!!!\n", r"names.txt:2: phrase '!!!' has no words"),
        ("anna\t-1\n", r"names.txt:1: weight must be a finite number > 0"),
        ("# only comments\n\n", "no phrases"),
    ],
)
def test_read_context_file_errors_name_file_and_line(tmp_path, text, match):
    f = tmp_path / "names.txt"
    f.write_text(text, encoding="utf-8")
    with pytest.raises(ContextError, match=match):
        read_context_file(f)


def test_read_context_file_missing_and_binary(tmp_path):
    with pytest.raises(ContextError, match="not found"):
        read_context_file(tmp_path / "nope.txt")
    bad = tmp_path / "bin.txt"
    bad.write_bytes(b"\xff\xfe\x00anna")
    with pytest.raises(ContextError, match="not UTF-8"):
        read_context_file(bad)


def test_tokenize_phrases_matches_the_pieces_inside_a_sentence():
    tok = Tokenizer.train(["call anna lee now", "turn on the kitchen light", "call bob"] * 20, 40)
    ctx = make_context(["anna lee", "kitchen light"])
    ids = tokenize_phrases(tok, ctx)
    for phrase, seq in zip(ctx.phrases, ids, strict=True):
        sentence = tok.encode(f"please call {phrase} now")
        n = len(seq)
        assert any(sentence[i : i + n] == seq for i in range(len(sentence) - n + 1)), phrase


def test_phrase_occurrences_marks_whole_words_only():
    ctx = make_context(["anna lee", "bob"])
    assert phrase_occurrences("Call Anna Lee and bobby, then bob", ctx) == [
        False,
        True,
        True,
        False,
        False,
        False,
        True,
    ]
    assert phrase_occurrences("annalee", ctx) == [False]


def test_marked_word_errors_hand_counts():
    marks = [False, True, True, False]  # "call anna lee now"
    assert marked_word_errors("call anna lee now", "call anna lee now", marks) == (0, 2)
    assert marked_word_errors("call anna lee now", "call ana lee now", marks) == (1, 2)
    assert marked_word_errors("call anna lee now", "call now", marks) == (2, 2)
    assert marked_word_errors("call anna lee now", "", marks) == (2, 2)
    # an insertion next to the name is no error of a name word
    assert marked_word_errors("call anna lee now", "call anna lee uh now", marks) == (0, 2)
    assert marked_word_errors("call anna lee now", "call x y z", [False] * 4) == (0, 0)
    with pytest.raises(ValueError, match="3 marks for 4 reference words"):
        marked_word_errors("call anna lee now", "x", [True] * 3)
