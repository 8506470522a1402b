"""Tests of the request grammar and the name pool: vocabulary coverage, name splits, sampling."""

from __future__ import annotations

import numpy as np
import pytest

from train.corpus import grammar
from train.corpus import names as name_pool


@pytest.fixture
def vocabulary(shared_data) -> set[str]:
    path = shared_data / "requests" / "vocabulary.txt"
    if not path.exists():
        pytest.skip(f"no vocabulary at {path}")
    return {w.strip() for w in path.read_text().split() if w.strip()}


def _name_words(names) -> set[str]:
    return {w for n in names for w in n.split()}


def test_grammar_vocabulary_covers_vocabulary_and_nothing_else(vocabulary):
    vocab = vocabulary
    assert len(vocab) == 316
    words = grammar.grammar_vocabulary()
    assert vocab <= words, sorted(vocab - words)
    extra = words - vocab - _name_words(name_pool.TRAIN_NAMES)
    assert not extra, sorted(extra)


def test_sampled_sentences_cover_vocabulary(vocabulary):
    vocab = vocabulary
    rng = np.random.default_rng(123)
    seen: set[str] = set()
    for _ in range(20000):
        seen.update(grammar.sample_request(rng, name_pool.TRAIN_NAMES, 0.3).text.split())
    assert vocab <= seen, sorted(vocab - seen)


def test_vocab_names_are_training_names():
    assert name_pool.VOCAB_NAMES <= set(name_pool.TRAIN_NAMES)
    assert not set(name_pool.TRAIN_NAMES) & set(name_pool.HELDOUT_NAMES)
    total = len(name_pool.TRAIN_NAMES) + len(name_pool.HELDOUT_NAMES)
    assert total >= 300
    assert 0.1 <= len(name_pool.HELDOUT_NAMES) / total <= 0.3
    assert any(name_pool.is_device_name(n) for n in name_pool.HELDOUT_NAMES)


def test_held_out_names_are_not_vocabulary_words():
    words = grammar.grammar_vocabulary(names=())
    assert not _name_words(name_pool.HELDOUT_NAMES) & words


def test_request_format_context_and_wake_word():
    rng = np.random.default_rng(0)
    pool = set(name_pool.HELDOUT_NAMES)
    domains = {}
    isolated = wake = 0
    n = 4000
    for _ in range(n):
        r = grammar.sample_request(rng, name_pool.HELDOUT_NAMES, wake_word_prob=0.5)
        assert r.text == " ".join(r.text.split()) and r.text == r.text.lower()
        assert all(c.isalpha() or c in " '" for c in r.text), r.text
        assert 1 <= len(r.context) <= 5, r
        for c in r.context:
            assert set(c.split()) <= pool, r
        # every spoken held-out name is in the context
        spoken = [w for w in r.text.split() if w in pool]
        assert set(spoken) <= _name_words(r.context), r
        assert r.wake_word == r.text.startswith("computer "), r
        wake += r.wake_word
        isolated += r.domain in grammar.ISOLATED_DOMAINS
        domains[r.domain] = domains.get(r.domain, 0) + 1
        if r.domain in grammar.ISOLATED_DOMAINS:
            assert len(r.text.split()) == 1 and not r.wake_word
    assert set(domains) == set(grammar.DOMAINS)
    assert 0.2 <= isolated / n <= 0.3
    assert 0.3 <= wake / n <= 0.45  # 0.5 of the non-isolated 75%


def test_sampling_is_deterministic():
    a = [grammar.sample_request(np.random.default_rng((7, i))) for i in range(50)]
    b = [grammar.sample_request(np.random.default_rng((7, i))) for i in range(50)]
    assert a == b


def test_number_words():
    assert grammar.number_words(0) == "zero"
    assert grammar.number_words(15) == "fifteen"
    assert grammar.number_words(42) == "forty two"
    with pytest.raises(ValueError, match="0..59"):
        grammar.number_words(60)


def test_sample_request_validates():
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match="wake_word_prob"):
        grammar.sample_request(rng, name_pool.TRAIN_NAMES, 1.5)
    with pytest.raises(ValueError, match="rng"):
        grammar.sample_request(0, name_pool.TRAIN_NAMES, 0.1)
    with pytest.raises(ValueError, match="names"):
        grammar.sample_request(rng, "alex", 0.1)


def test_wide_names_hold_no_held_out_name_nor_one_that_sounds_alike():
    from train.corpus import espeak

    first, last = name_pool.wide_names()
    assert len(first) > 10000 and len(last) > 5000
    pool = set(first) | set(last)
    assert not pool & set(name_pool.HELDOUT_NAMES)
    assert not pool & set(name_pool.TRAIN_NAMES)
    # Faker spells these like held-out names sound (hannah, zoe, lucas, leigh ~ lee): left out.
    assert not pool & {"hanna", "zoey", "lukas", "leigh", "norah"}
    assert {"hurst", "deledda", "marta"} <= pool  # ordinary ones stay

    def sound(name, accent):
        return espeak.phonemes(name, accent).replace("'", "").replace(",", "")

    accents = ("en-us", "en-gb")
    held = {sound(n, a) for n in name_pool.HELDOUT_NAMES for a in accents}
    alike = [n for n in sorted(pool) if any(sound(n, a) in held for a in accents)]
    assert not alike, alike[:10]


def test_phonemes():
    from train.corpus import espeak

    assert espeak.phonemes("hannah") == espeak.phonemes("hanna") != espeak.phonemes("anna")
    assert len(espeak.phonemes("hello world. how are you").split()) == 5
    with pytest.raises(ValueError, match="text"):
        espeak.phonemes("  ")
    with pytest.raises(ValueError, match="accent"):
        espeak.phonemes("hello", "xx-nowhere")


def test_requests_with_wide_names():
    first, last = name_pool.wide_names()
    wide = set(first) | set(last)
    words = grammar.grammar_vocabulary(names=())
    core = _name_words(name_pool.TRAIN_NAMES) - words
    rng = np.random.default_rng(5)
    spoken_wide = spoken_core = 0
    for _ in range(3000):
        r = grammar.sample_request(rng, name_pool.TRAIN_NAMES, 0.3, wide_names=0.5)
        ctx = _name_words(r.context)
        for w in r.text.split():
            if w in wide and w not in core and w not in words:
                spoken_wide += 1
                assert w in ctx, r  # a spoken wide name is in the biasing context
            elif w in core:
                spoken_core += 1
        assert not ctx & set(name_pool.HELDOUT_NAMES)
    assert spoken_wide > 80 and spoken_core > 80, (spoken_wide, spoken_core)
    assert 0.3 < spoken_wide / (spoken_wide + spoken_core) < 0.7
    # share 0 draws nothing extra: the same requests as without the argument
    a = [grammar.sample_request(np.random.default_rng((9, i)), wide_names=0.0) for i in range(50)]
    b = [grammar.sample_request(np.random.default_rng((9, i))) for i in range(50)]
    assert a == b
    with pytest.raises(ValueError, match="wide_names"):
        grammar.sample_request(rng, name_pool.TRAIN_NAMES, 0.3, wide_names=1.5)
