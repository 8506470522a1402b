"""Tests of eSpeak NG synthesis, the voice split and the synthetic corpus (determinism, resume)."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import soundfile as sf

from train.corpus import espeak, loaders, synth
from train.corpus import names as name_pool


def test_synthesize_short_phrase():
    x, sr = espeak.synthesize("turn on the lights", "en-us+m3", 160, 50, 50)
    assert sr == 16000 and x.dtype == np.float32 and x.ndim == 1
    assert 0.5 < x.size / sr < 2.5
    assert np.sqrt(np.mean(x**2)) > 0.01 and np.all(np.abs(x) <= 1)


def test_word_times_are_increasing():
    x, sr, words = espeak.synthesize_words("computer play some jazz", "en-gb+f2", 150)
    assert [p for p, _ in words] == [0, 9, 14, 19]
    times = [t for _, t in words]
    assert times == sorted(times) and times[-1] < x.size / sr


def test_voices_differ():
    a, _ = espeak.synthesize("call mom", "en-us+m1")
    b, _ = espeak.synthesize("call mom", "en-gb-scotland+f3")
    assert a.shape != b.shape or not np.allclose(a, b)


def test_rate_changes_duration():
    slow, _ = espeak.synthesize("set a timer for ten minutes", "en-us", 110)
    fast, _ = espeak.synthesize("set a timer for ten minutes", "en-us", 220)
    assert slow.size > 1.5 * fast.size


def test_synthesize_validates():
    with pytest.raises(ValueError, match="text"):
        espeak.synthesize("  ")
    with pytest.raises(ValueError, match="rate_wpm"):
        espeak.synthesize("hi", rate_wpm=10)
    with pytest.raises(ValueError, match="pitch"):
        espeak.synthesize("hi", pitch=200)


def test_list_and_split_voices():
    voices = espeak.list_voices()
    assert len(voices) >= 700 and "en-us+m3" in voices and "en-gb+whisper" in voices
    train, held = espeak.split_voices(voices, 0.15, seed=0)
    assert not set(train) & set(held) and set(train) | set(held) == set(voices)
    held_variants = {espeak.voice_variant(v) for v in held}
    train_variants = {espeak.voice_variant(v) for v in train}
    assert not held_variants & train_variants
    assert not {espeak.variant_family(v) for v in held_variants} & {
        espeak.variant_family(v) for v in train_variants
    }
    assert 0.1 <= len(held) / len(voices) <= 0.25
    assert espeak.split_voices(list(reversed(voices)), 0.15, 0) == (train, held)
    assert espeak.split_voices(voices, 0.15, 1) != (train, held)
    with pytest.raises(ValueError, match="heldout_fraction"):
        espeak.split_voices(voices, 1.5)


def _corpus(tmp_path, name="c"):
    return synth.synthesize_corpus(
        tmp_path / name, hours=0.005, seed=3, workers=1, heldout_test_hours=0.0, progress=False
    )


def test_synthesize_corpus_fields_splits_and_determinism(tmp_path):
    manifest = _corpus(tmp_path, "a")
    rows = loaders.read_manifest(manifest)
    n_train_dev, n_test = synth.plan_counts(0.005, 0.0)
    assert len(rows) == n_train_dev + n_test and n_test == 50
    _, held_voices = espeak.default_voice_split()
    held_names = {w for n in name_pool.HELDOUT_NAMES for w in n.split()}
    train_names = {w for n in name_pool.TRAIN_NAMES for w in n.split()}
    for r in rows:
        x, sr = sf.read(r["audio"], dtype="float32")
        info = sf.info(r["audio"])
        assert sr == 16000 and info.subtype == "PCM_16" and info.format == "FLAC"
        assert r["duration"] == pytest.approx(x.size / sr)
        assert 0 < r["speech_start"] < r["speech_end"] <= r["duration"]
        assert r["text"] == " ".join(r["text"].split()) and r["text"].islower()
        assert 1 <= len(r["context"]) <= 5
        if "wake_word_end" in r:
            assert r["text"].startswith("computer ")
            assert r["speech_start"] < r["wake_word_end"] < r["speech_end"]
        rt60, snr = r["room"]["rt60_s"], r["room"]["snr_db"]
        assert rt60 is None or 0.2 <= rt60 <= 0.8
        assert snr is None or 5.0 <= snr <= 35.0
        ctx_words = {w for c in r["context"] for w in c.split()}
        if r["split"] == "test":
            assert r["speaker"] in held_voices
            assert ctx_words <= held_names
        else:
            assert r["speaker"] not in held_voices
            assert ctx_words <= train_names
    assert {r["split"] for r in rows} >= {"train", "test"}
    for key in ("rt60_s", "snr_db"):  # each condition occurs both ways in a corpus this size
        assert {r["room"][key] is None for r in rows} == {True, False}
    for split in loaders.SPLITS:
        part = loaders.read_manifest(manifest.parent / f"{split}.jsonl")
        assert all(r["split"] == split for r in part)
    # relative paths in the file
    first = (manifest.parent / "all.jsonl").read_text().splitlines()[0]
    assert '"audio": "audio/' in first

    again = loaders.read_manifest(_corpus(tmp_path, "b"))
    assert [r["text"] for r in again] == [r["text"] for r in rows]
    for r1, r2 in zip(rows[:20], again[:20], strict=True):
        np.testing.assert_array_equal(sf.read(r1["audio"])[0], sf.read(r2["audio"])[0])


def test_resume_rebuilds_missing_file(tmp_path):
    manifest = _corpus(tmp_path)
    rows = loaders.read_manifest(manifest)
    victim = rows[5]
    before = sf.read(victim["audio"])[0]
    import os

    os.remove(victim["audio"])
    (manifest.parent / "train.jsonl").unlink()
    manifest2 = _corpus(tmp_path)
    rows2 = loaders.read_manifest(manifest2)
    assert rows2 == rows
    np.testing.assert_array_equal(sf.read(victim["audio"])[0], before)
    assert (manifest.parent / "train.jsonl").exists()


def test_synthesize_corpus_validates(tmp_path):
    with pytest.raises(ValueError, match="hours"):
        synth.synthesize_corpus(tmp_path, hours=0, workers=1)
    with pytest.raises(ValueError, match="noise_dir"):
        synth.synthesize_corpus(tmp_path, hours=0.01, noise_dir=tmp_path / "nope")


def test_random_variants_are_plausible_and_deterministic(tmp_path):
    a = synth.random_variants(5, 30)
    assert a == synth.random_variants(5, 30) and a != synth.random_variants(6, 30)
    for name, text in a.items():
        fields = [ln.split() for ln in text.splitlines()]
        assert ["name", name] in fields
        base, top = next(map(int, f[1:]) for f in fields if f[0] == "pitch")
        assert 50 <= base < top <= 2 * 380
        formants = [list(map(int, f[1:])) for f in fields if f[0] == "formant"]
        assert [f[0] for f in formants] == list(range(9))
        assert all(55 <= f[1] <= 190 for f in formants)  # 0.82..1.5 times 0.75..1.25 jitter
    # the scale factor spans adult and child-like voices
    f1 = [
        next(int(ln.split()[2]) for ln in t.splitlines() if ln.startswith("formant 1"))
        for t in a.values()
    ]
    assert min(f1) < 100 < 130 < max(f1)
    with pytest.raises(ValueError, match="not an espeak-ng-data folder"):
        espeak.use_data_path(tmp_path)
    with pytest.raises(ValueError, match="at most 200"):
        espeak.make_variant_tree(tmp_path, synth.random_variants(1, 201))
    with pytest.raises(ValueError, match="shipped variant"):
        espeak.make_variant_tree(tmp_path, {"m3": "language variant\n"})


def test_corpus_with_random_voices(tmp_path):
    man = synth.synthesize_corpus(
        tmp_path / "r",
        hours=0.005,
        seed=3,
        workers=1,
        heldout_test_hours=0.0,
        progress=False,
        random_voices=1.0,
        random_variants_count=espeak.MAX_EXTRA_VARIANTS,  # the most a tree holds
    )
    rows = loaders.read_manifest(man)
    _, held = espeak.default_voice_split()
    names = set(synth.random_variants(3, espeak.MAX_EXTRA_VARIANTS))
    for r in rows:
        x, _ = sf.read(r["audio"], dtype="float32")
        assert np.abs(x).max() > 0.1
        if r["split"] == "test":  # the test split keeps the held-out shipped voices
            assert r["speaker"] in held
        else:
            assert espeak.voice_variant(r["speaker"]) in names
    assert len({r["speaker"] for r in rows if r["split"] != "test"}) > 1
    tree = tmp_path / "r" / "espeak" / "espeak-ng-data"
    assert sorted(p.name for p in (tree / "voices" / "!v").glob("rnd3v*")) == sorted(names)
    # every generated variant loads in that tree (eSpeak NG's voice list has room for them all)
    code = (
        "import sys; from train.corpus import espeak as e; e.use_data_path(sys.argv[1]); "
        "[e.synthesize('ok', 'en-us+' + n) for n in sys.argv[2:]]; print('fine')"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, str(tree), *sorted(names)], capture_output=True, text=True
    )
    assert done.stdout.strip() == "fine", done.stderr
    # the shipped voice list and split never see the generated variants
    assert not any("rnd" in v for v in espeak.list_voices())
    # default corpora use shipped voices only
    plain = loaders.read_manifest(_corpus(tmp_path, "plain"))
    assert not any(espeak.RANDOM_VARIANT_PREFIX in r["speaker"] for r in plain)


def test_wide_names_change_training_requests_only(tmp_path):
    def corpus(name, share):
        return loaders.read_manifest(
            synth.synthesize_corpus(
                tmp_path / name,
                hours=0.03,  # about 50 train/dev requests, some of them with contact names
                seed=4,
                workers=1,
                heldout_test_hours=0.0,
                progress=False,
                wide_names=share,
            )
        )

    plain, wide = corpus("p", 0.0), corpus("w", 1.0)
    assert len(plain) == len(wide)
    test_p = [r["text"] for r in plain if r["split"] == "test"]
    assert test_p == [
        r["text"] for r in wide if r["split"] == "test"
    ]  # the test split is unchanged
    first, last = name_pool.wide_names()
    pool = set(first) | set(last)
    ctx = {w for r in wide if r["split"] != "test" for c in r["context"] for w in c.split()}
    assert ctx & pool and not ctx & set(name_pool.HELDOUT_NAMES)
    assert [r["text"] for r in plain if r["split"] != "test"] != [
        r["text"] for r in wide if r["split"] != "test"
    ]
    with pytest.raises(ValueError, match="wide_names"):
        synth.synthesize_corpus(tmp_path / "x", hours=0.005, wide_names=2.0, progress=False)


def test_test_only_gives_the_same_test_split(tmp_path, monkeypatch):
    # small blocks, so that the train/dev utterances fill whole blocks that test_only skips
    monkeypatch.setattr(synth, "BLOCK", 8)
    kw = dict(hours=0.005, seed=3, workers=1, heldout_test_hours=0.0, progress=False)
    full = loaders.read_manifest(synth.synthesize_corpus(tmp_path / "full", **kw))
    only = synth.synthesize_corpus(tmp_path / "only", test_only=True, **kw)
    assert only.name == "test.jsonl" and not (only.parent / "train.jsonl").exists()
    test = loaders.read_manifest(only)
    want = [r for r in full if r["split"] == "test"]
    assert len(test) == len(want) == 50
    for a, b in zip(want, test, strict=True):
        assert {k: v for k, v in a.items() if k != "audio"} == {
            k: v for k, v in b.items() if k != "audio"
        }
        np.testing.assert_array_equal(sf.read(a["audio"])[0], sf.read(b["audio"])[0])
    n_train_dev, _ = synth.plan_counts(0.005, 0.0)
    assert n_train_dev > 8  # so the first block held no test utterance and was skipped
    assert not synth._audio_path(tmp_path / "only", 0).exists()
