"""Free sentences (`grammar.sample_free_sentence`): outside the templates, in the grammar's words,
deterministic; in the synthetic corpus only where asked for (`--free-sentences`), with every
existing corpus reproduced from its seed when not."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest

from train.corpus import grammar, synth
from train.corpus import names as name_pool


def test_free_sentences_are_mostly_not_template_requests():
    rng = np.random.default_rng(0)
    templates = {grammar.sample_request(rng).text for _ in range(40000)}
    rng = np.random.default_rng(1)
    free = [grammar.sample_free_sentence(rng) for _ in range(2000)]
    inside = sum(r.text in templates for r in free)
    assert inside / len(free) < 0.1, inside
    assert all(r.domain == "free" for r in free)
    assert len({r.text for r in free}) > 0.8 * len(free)
    lengths = [len(r.text.split()) for r in free]
    assert min(lengths) == 1 and max(lengths) >= 9


def test_free_sentences_use_the_grammar_words_and_name_the_context():
    vocab = grammar.grammar_vocabulary()
    rng = np.random.default_rng(2)
    wake = 0
    for _ in range(2000):
        r = grammar.sample_free_sentence(rng, name_pool.TRAIN_NAMES, 0.3)
        words = r.text.split()
        assert set(words) <= vocab, r
        assert r.text == r.text.lower() and "  " not in r.text
        assert r.wake_word == (words[0] == grammar.WAKE_WORD)
        wake += r.wake_word
        assert 1 <= len(r.context) <= 5
        assert not {w for c in r.context for w in c.split()} & set(name_pool.HELDOUT_NAMES)
    assert 0.2 < wake / 2000 < 0.5
    # held-out names for the test side: spoken names come from the pool given
    rng = np.random.default_rng(3)
    held = {w for n in name_pool.HELDOUT_NAMES for w in n.split()}
    spoken = set()
    for _ in range(500):
        r = grammar.sample_free_sentence(rng, name_pool.HELDOUT_NAMES, 0.0)
        spoken |= {c for c in r.context if f" {c} " in f" {r.text} "}
        assert {w for c in r.context for w in c.split()} <= held | set(grammar.CONTACT_WORDS)
    assert {w for c in spoken for w in c.split()} & held


def test_free_sentences_are_deterministic_and_validated():
    a = [grammar.sample_free_sentence(np.random.default_rng((4, i))) for i in range(40)]
    b = [grammar.sample_free_sentence(np.random.default_rng((4, i))) for i in range(40)]
    assert a == b
    with pytest.raises(ValueError, match="wake_word_prob"):
        grammar.sample_free_sentence(np.random.default_rng(0), wake_word_prob=2.0)
    with pytest.raises(ValueError, match="rng"):
        grammar.sample_free_sentence(0)


def _fake_synthesize_words(text, voice, rate, pitch, prange):
    """Stands in for eSpeak NG: a tone whose length follows the text (no eSpeak version in
    the golden rows below)."""
    n = 1600 * len(text.split()) + 7 * len(text) + rate
    x = (0.4 * np.sin(np.arange(n) * (0.03 + pitch / 5000))).astype(np.float32)
    return x, 16000, [(w, 0.1 * k) for k, w in enumerate(text.split())]


def _rows(tmp_path, monkeypatch, **kw):
    monkeypatch.setattr(synth.espeak, "synthesize_words", _fake_synthesize_words)
    cfg = synth.SynthConfig(
        out_dir=str(tmp_path),
        seed=7,
        n_train_dev=10,
        n_total=12,
        wake_word_prob=0.3,
        dev_fraction=0.2,
        noise_dir=None,
        **kw,
    )
    rows = [synth.make_utterance(cfg, i) for i in range(12)]
    for r in rows:
        r.pop("audio")
    return rows


# Rows 0..11 of seed 7 as the code before free sentences made them (fake eSpeak): a share of 0
# must draw nothing extra, so every existing corpus is reproduced from its seed.
GOLDEN_SHA256 = "5c7532fa605b0e45c0630037b83f4eec749970181c82c5f9dc7a8abc87a1fd75"
GOLDEN_TEXTS = [
    "visual",
    "switch the bathroom table lamp off",
    "computer will it rain",
    "stop",
    "set an alarm for five",
    "wow",
    "computer remind me on wednesday to buy some milk",
    "dim the lights to thirty percent",
    "computer cancel my meeting tomorrow night",
    "five",
    "computer dial plus five seven nine one two zero",
    "turn the thermostat down",
]


def test_a_share_of_zero_reproduces_the_corpus(tmp_path, monkeypatch):
    rows = _rows(tmp_path / "a", monkeypatch)
    assert [r["text"] for r in rows] == GOLDEN_TEXTS
    assert rows == _rows(tmp_path / "b", monkeypatch, free_sentences=0.0)
    digest = hashlib.sha256(json.dumps(rows, sort_keys=True).encode()).hexdigest()
    assert digest == GOLDEN_SHA256


def test_free_sentences_in_train_and_dev_only(tmp_path, monkeypatch):
    plain = _rows(tmp_path / "a", monkeypatch)
    free = _rows(tmp_path / "b", monkeypatch, free_sentences=0.5)
    assert [r["split"] for r in free] == [r["split"] for r in plain]
    assert [r for r in free if r["split"] == "test"] == [r for r in plain if r["split"] == "test"]
    assert any(r["domain"] == "free" for r in free if r["split"] != "test")
    with pytest.raises(ValueError, match="free_sentences"):
        synth.synthesize_corpus(tmp_path / "x", hours=0.005, free_sentences=1.5, progress=False)


def test_cli_passes_the_share(monkeypatch):
    import argparse

    from train import cli

    seen = {}

    def fake(out, **kw):
        seen.update(kw)
        return "m.jsonl"

    monkeypatch.setattr(synth, "synthesize_corpus", fake)
    p = argparse.ArgumentParser()
    cli.add_corpus_command(p.add_subparsers())
    args = p.parse_args(["corpus", "synth", "--out", "x", "--free-sentences", "0.2"])
    assert args.func(args) == 0 and seen["free_sentences"] == 0.2
    args = p.parse_args(["corpus", "synth", "--out", "x"])
    args.func(args)
    assert seen["free_sentences"] == 0.0
