"""Kokoro voice family: English phonemes in Kokoro's set, voice blends and their held-out split,
a small corpus (format, determinism across worker counts, resume), argument errors."""

import json

import numpy as np
import pytest
import soundfile as sf

from asr.manifest import check_rows, read_manifest
from train.corpus import grammar, kokoro
from train.corpus import names as name_pool


@pytest.fixture(scope="module")
def tts():
    return kokoro.KokoroTTS(threads=1)


def test_known_words():
    assert kokoro.english_phonemes("church judge") == "ʧˈɜɹʧ ʤˈʌʤ"
    assert kokoro.english_phonemes("boy now day my go") == "bˈY nˈW dˈA mI ɡˈO"
    assert kokoro.english_phonemes("computer turn on the kitchen lights") == (
        "kəmpjˈuɾəɹ tˈɜɹn ɔnðə kˈɪʧən lˈIts"
    )
    assert kokoro.english_phonemes("go home", "en-gb") == "ɡˌQ hˈQm"
    assert kokoro.english_phonemes("call", "en-gb") == "kˈɔːl"  # British keeps the length mark
    assert kokoro.english_phonemes("call", "en-us") == "kˈɔl"  # American drops it, as misaki


def test_mapping_rules():
    m, dropped = kokoro.map_espeak_ipa("a^ɪ a^ʊ e^ɪ ɔ^ɪ o^ʊ t^ʃ d^ʒ r ɚ ˈbˌɑ")
    assert (m, dropped) == ("I W A Y O ʧ ʤ ɹ əɹ ˈbˌɑ", "")
    assert kokoro.map_espeak_ipa("ɡə^ʊ e^ə i^ə ɜː", "en-gb") == ("ɡQ ɛː ɪə ɜː", "")
    assert kokoro.map_espeak_ipa("bˈɜːd nˈiːd", "en-us") == ("bˈɜɹd nˈid", "")
    assert kokoro.map_espeak_ipa("bˈʌʔn\u0329 bˈɑːɾə^l")[0] == "bˈʌtᵊn bˈɑɾᵊl"
    assert kokoro.map_espeak_ipa("t\u0361ʃa") == ("ʧa", "")  # combining tie removed
    assert kokoro.map_espeak_ipa("ʕaɮ") == ("a", "ʕɮ")  # out of the vocabulary: reported


@pytest.mark.parametrize("accent", kokoro.ACCENTS)
def test_grammar_phonemes_all_in_vocab(accent):
    """Nothing of the requests or names is dropped; every output symbol is a Kokoro token."""
    rng = np.random.default_rng(0)
    texts = [grammar.sample_request(rng, name_pool.TRAIN_NAMES).text for _ in range(300)]
    texts += list(name_pool.TRAIN_NAMES) + list(name_pool.HELDOUT_NAMES)
    vocab = kokoro.vocab()
    for text in texts:
        phonemes, dropped = kokoro.map_espeak_ipa(kokoro.espeak_ipa(text, accent), accent)
        assert dropped == "", (text, dropped)
        assert phonemes and set(phonemes) <= set(vocab), (text, phonemes)
        assert "^" not in phonemes and (accent == "en-gb" or "ː" not in phonemes), phonemes


def test_voices_deterministic_and_split():
    train, heldout = kokoro.voice_split(0, 50, 12)
    assert (train, heldout) == kokoro.voice_split(0, 50, 12)
    assert len(train) == 50 and len(heldout) == 12
    names_t, names_h = {v.name for v in train}, {v.name for v in heldout}
    assert len(names_t) == 50 and len(names_h) == 12 and not names_t & names_h
    assert heldout[0].name == kokoro.HELDOUT_STYLE
    for v in train:
        assert kokoro.HELDOUT_STYLE not in dict(v.weights), v
        assert kokoro.voice_role(v) == "train"
    for v in heldout:
        w = dict(v.weights)
        assert w[kokoro.HELDOUT_STYLE] == max(w.values()), v
    for v in train + heldout[1:]:
        assert 2 <= len(v.weights) <= 3 and abs(sum(dict(v.weights).values()) - 1) < 1e-9
        assert kokoro.SPEED[0] <= v.speed <= kokoro.SPEED[1] and v.accent in kokoro.ACCENTS
    assert kokoro.make_voice(0, 7) == kokoro.make_voice(0, 7) != kokoro.make_voice(1, 7)
    assert kokoro.make_voice(3, 7).name == "kb3v7"
    table = kokoro.voice_style(train[0])
    assert table.shape == (510, 256) and table.dtype == np.float32 and np.isfinite(table).all()
    np.testing.assert_array_equal(table, kokoro.voice_style(train[0]))
    with pytest.raises(ValueError, match="n_train"):
        kokoro.voice_split(0, 0, 5)


def test_duration_grows_with_text(tts):
    voice = kokoro.voice_split(0, 1, 1)[0][0]
    short, sr = tts.synthesize("yes", voice)
    long, _ = tts.synthesize("turn on the kitchen lights and play some music by the beatles", voice)
    assert sr == 16000 and short.dtype == np.float32
    assert 0.15 < short.size / sr < 1.5 < long.size / sr < 8.0, (short.size, long.size)
    assert np.abs(long).max() > 0.05
    with pytest.raises(ValueError, match="Kokoro symbols"):
        tts.speak("hɛlˈQ ʕ", voice)
    with pytest.raises(ValueError, match="at most 510"):
        tts.speak("a" * 511, voice)


def _files(root):
    return {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in sorted(root.rglob("*.flac"))}


def _rows(out):
    """Rows of train.jsonl and dev.jsonl (either may be empty)."""
    paths = [out / f"{m}.jsonl" for m in ("train", "dev")]
    return [r for p in paths if p.read_text().strip() for r in read_manifest(p)]


def test_corpus(tmp_path):
    out = tmp_path / "c"
    path = kokoro.synthesize_kokoro_corpus(out, 3, seed=5, workers=1, progress=False)
    rows = _rows(out)
    assert len(rows) == 3 and path.name == "train.jsonl"
    good, problems = check_rows(rows)
    assert problems == [] and len(good) == 3
    train_names = {v.name for v in kokoro.voice_split(5)[0]}
    for r in rows:
        info = sf.info(r["audio"])
        assert info.samplerate == 16000 and info.subtype == "PCM_16"
        assert abs(info.frames / 16000 - r["duration"]) < 1e-6
        speech = r["speech_end"] - r["speech_start"]
        n_phonemes = len(kokoro.english_phonemes(r["text"], r["voice"]["accent"]))
        assert 0.3 < r["duration"] < 12 and 0.15 < speech < r["duration"], r
        assert 0.02 < speech / n_phonemes < 0.25, (r["text"], speech)
        assert r["family"] == "kokoro" and r["speaker"] == "kokoro:" + r["voice"]["name"]
        assert r["voice"]["name"] in train_names and r["split"] in ("train", "dev")
        assert set(r["voice"]) == {"name", "speed", "weights", "accent", "perturbation"}
    before = _files(out)
    assert len(before) == 3
    kokoro.synthesize_kokoro_corpus(out, 3, seed=5, workers=1, progress=False)
    assert _files(out) == before  # nothing rewritten

    # Two spawned workers, and an interrupted run (one utterance removed), give the same bytes.
    other = tmp_path / "d"
    kokoro.synthesize_kokoro_corpus(other, 2, seed=5, workers=2, progress=False)
    kokoro.synthesize_kokoro_corpus(other, 3, seed=5, workers=2, progress=False)
    assert [b for _, b in _files(other).values()] == [b for _, b in before.values()]
    assert [r["text"] for r in _rows(other)] == [r["text"] for r in rows]


def test_test_split(tmp_path):
    path = kokoro.synthesize_kokoro_corpus(
        tmp_path, 1, seed=0, split="test", workers=1, progress=False
    )
    (row,) = read_manifest(path)
    assert path.name == "test.jsonl" and row["split"] == "test"
    assert row["voice"]["name"] in {v.name for v in kokoro.voice_split(0)[1]}
    assert json.loads((tmp_path / "kokoro-test.json").read_text())["split"] == "test"


def test_bad_arguments(tmp_path):
    f = kokoro.synthesize_kokoro_corpus
    with pytest.raises(ValueError, match="split"):
        f(tmp_path, 1, split="dev")
    with pytest.raises(ValueError, match="utterances"):
        f(tmp_path, 0)
    with pytest.raises(ValueError, match="utterances"):
        f(tmp_path, 2.5)
    with pytest.raises(ValueError, match="workers"):
        f(tmp_path, 1, workers=0)
    with pytest.raises(ValueError, match="dev_fraction"):
        f(tmp_path, 1, dev_fraction=1.0)
    with pytest.raises(ValueError, match="noise_dir"):
        f(tmp_path, 1, noise_dir=tmp_path / "missing")
    with pytest.raises(ValueError, match="accent"):
        kokoro.english_phonemes("hello", "xx-nowhere")
    with pytest.raises(ValueError, match="text"):
        kokoro.english_phonemes("  ")
    (tmp_path / "kokoro-train.json").write_text(json.dumps({"seed": 99}))
    with pytest.raises(ValueError, match="other arguments"):
        f(tmp_path, 1, seed=0, progress=False)


def test_cli_parses():
    from asr.cli import build_parser
    from train.cli import cmd_kokoro

    args = build_parser().parse_args(
        ["corpus", "kokoro", "--out", "x", "--utterances", "3", "--split", "test"]
    )
    assert args.func is cmd_kokoro and args.utterances == 3 and args.split == "test"
    assert args.seed == 0 and args.workers == 2 and args.noise_dir is None
