"""Tests of manifests and corpus loaders (synthetic folders always; the shared real data if present)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from train.corpus import loaders

SR = 16000


def _clip(path: Path, seconds: float = 1.0, speech=(0.3, 0.7), sr: int = SR) -> Path:
    rng = np.random.default_rng(len(str(path)))
    x = 0.001 * rng.standard_normal(int(seconds * sr))
    a, b = int(speech[0] * sr), int(speech[1] * sr)
    x[a:b] += 0.5 * np.sin(2 * np.pi * 200 * np.arange(b - a) / sr)
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, x.astype(np.float32), sr, subtype="PCM_16")
    return path


def test_normalize_text():
    assert loaders.normalize_text("What's the TIME, o'clock?") == "what's the time o'clock"
    assert loaders.normalize_text("  'quoted'  words -- here ") == "quoted words here"


def test_manifest_roundtrip_relative_paths(tmp_path):
    audio = _clip(tmp_path / "data" / "a.flac")
    rows = [{"audio": str(audio), "text": "hi there", "speaker": "s", "duration": 1.0}]
    path = loaders.write_manifest(rows, tmp_path / "m" / "x.jsonl")
    stored = json.loads(path.read_text().splitlines()[0])
    assert stored["audio"] == "../data/a.flac"
    back = loaders.read_manifest(path)
    assert back[0]["audio"] == str(audio.resolve()) and back[0]["text"] == "hi there"
    assert loaders.load_jsonl(path) == back


def test_read_manifest_errors(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"audio": "a.flac", "text": "x"}\n{not json\n')
    with pytest.raises(ValueError, match=":2:"):
        loaders.read_manifest(bad)
    bad.write_text('{"audio": "a.flac", "text": "x"}\n\n{"audio": "b.flac"}\n')
    with pytest.raises(ValueError, match=r":3:.*'audio' and 'text'"):
        loaders.read_manifest(bad)
    with pytest.raises(ValueError, match="no such manifest"):
        loaders.read_manifest(tmp_path / "none.jsonl")


def test_estimate_speech_bounds():
    x = np.zeros(SR, np.float32) + 1e-4 * np.random.default_rng(0).standard_normal(SR)
    x[4000:12000] += 0.5 * np.sin(np.arange(8000) * 0.1)
    start, end = loaders.estimate_speech_bounds(x, SR)
    assert abs(start - 0.25) <= 0.02 and abs(end - 0.75) <= 0.02
    assert loaders.estimate_speech_bounds(np.zeros(100), SR) == (0.0, 100 / SR)
    with pytest.raises(ValueError, match="1-D"):
        loaders.estimate_speech_bounds(np.zeros((2, 2)), SR)


def test_split_by_speaker_disjoint_and_stable():
    rows = [{"speaker": f"spk{i % 40}", "i": i} for i in range(400)]
    fr = {"train": 0.7, "dev": 0.1, "test": 0.2}
    out = loaders.split_by_speaker(rows, fr, seed=0)
    by_spk: dict[str, set[str]] = {}
    for r in out:
        by_spk.setdefault(r["speaker"], set()).add(r["split"])
    assert all(len(v) == 1 for v in by_spk.values())
    assert {r["split"] for r in out} == {"train", "dev", "test"}
    assert loaders.split_by_speaker(rows[::-1], fr, 0)[::-1] == out
    with pytest.raises(ValueError, match="summing to 1"):
        loaders.split_by_speaker(rows, {"train": 0.5}, 0)


def test_fsdd_synthetic(tmp_path):
    for name in ("7_alice_3.wav", "7_alice_12.wav", "0_bob_0.flac", "readme.txt"):
        if name.endswith("txt"):
            (tmp_path / "recordings" / name).write_text("x")
        else:
            _clip(tmp_path / "recordings" / name, 0.5, (0.1, 0.4), sr=8000)
    rows = loaders.load_fsdd(tmp_path)
    assert [(r["text"], r["speaker"], r["split"]) for r in rows] == [
        ("zero", "bob", "test"),
        ("seven", "alice", "train"),
        ("seven", "alice", "test"),
    ]
    assert rows[0]["duration"] == pytest.approx(0.5)
    assert 0.05 <= rows[0]["speech_start"] < rows[0]["speech_end"] <= 0.45


def test_speech_commands_synthetic(tmp_path):
    _clip(tmp_path / "yes" / "abc123_nohash_0.flac")
    _clip(tmp_path / "yes" / "def456_nohash_1.wav")
    _clip(tmp_path / "_unknown_" / "marvin_abc123_nohash_0.flac")
    _clip(tmp_path / "_silence_" / "1.flac")
    _clip(tmp_path / "_background_noise_" / "white.wav")
    rows = loaders.load_speech_commands(tmp_path, vad=False)
    assert sorted((r["text"], r["speaker"]) for r in rows) == [
        ("marvin", "abc123"),
        ("yes", "abc123"),
        ("yes", "def456"),
    ]
    splits = {r["speaker"]: r["split"] for r in rows}
    assert all(r["split"] == splits[r["speaker"]] for r in rows)


def test_librispeech_synthetic(tmp_path):
    d = tmp_path / "LibriSpeech" / "dev" / "84" / "121"
    _clip(d / "84-121-0000.flac")
    _clip(d / "84-121-0001.flac")
    (d / "84-121.trans.txt").write_text("84-121-0000 HELLO WORLD\n84-121-0001 IT'S NOON\n")
    rows = loaders.load_librispeech(tmp_path)
    assert [r["text"] for r in rows] == ["hello world", "it's noon"]
    assert {r["speaker"] for r in rows} == {"84"}
    (d / "84-121.trans.txt").write_text("84-121-0009 MISSING AUDIO\n")
    with pytest.raises(ValueError, match="84-121-0009"):
        loaders.load_librispeech(tmp_path)


def test_kaldi_synthetic(tmp_path):
    _clip(tmp_path / "wav" / "u1.wav")
    _clip(tmp_path / "wav" / "u2.wav")
    (tmp_path / "wav.scp").write_text(f"u1 wav/u1.wav\nu2 {tmp_path / 'wav' / 'u2.wav'}\n")
    (tmp_path / "text").write_text("u1 Turn ON the lights\nu2 call mom\n")
    (tmp_path / "utt2spk").write_text("u1 spkA\nu2 spkB\n")
    rows = loaders.load_kaldi(tmp_path)
    assert [(r["text"], r["speaker"]) for r in rows] == [
        ("turn on the lights", "spkA"),
        ("call mom", "spkB"),
    ]
    (tmp_path / "wav.scp").write_text("u1 sox wav/u1.wav -t wav - |\n")
    with pytest.raises(ValueError, match="piped"):
        loaders.load_kaldi(tmp_path)


def test_loader_folder_errors(tmp_path):
    with pytest.raises(ValueError, match="not a directory"):
        loaders.load_fsdd(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    for fn in (loaders.load_fsdd, loaders.load_speech_commands, loaders.load_librispeech):
        with pytest.raises(ValueError, match="got none"):
            fn(tmp_path / "empty")
    with pytest.raises(ValueError, match="wav.scp"):
        loaders.load_kaldi(tmp_path / "empty")
    with pytest.raises(ValueError, match="split"):
        loaders.load_fsdd(tmp_path, split="random")


def test_real_fsdd(shared_data):
    root = shared_data / "fsdd"
    if not root.is_dir():
        pytest.skip(f"no {root}")
    rows = loaders.load_fsdd(root, vad=False)
    assert len(rows) == 2500
    assert sum(r["split"] == "test" for r in rows) == 250
    assert {r["text"] for r in rows} == set(loaders.DIGIT_WORDS)
    assert all(0 < r["duration"] < 3 for r in rows)


def test_real_speech_commands(shared_data):
    root = shared_data / "speech_commands"
    if not root.is_dir():
        pytest.skip(f"no {root}")
    rows = loaders.load_speech_commands(root, vad=False)
    assert len(rows) > 3000
    assert "marvin" in {r["text"] for r in rows} and "_silence_" not in {r["text"] for r in rows}
    spk: dict[str, set[str]] = {}
    for r in rows:
        spk.setdefault(r["speaker"], set()).add(r["split"])
    assert all(len(v) == 1 for v in spk.values())
    assert {r["split"] for r in rows} == {"train", "dev", "test"}


def test_speech_to_intent_synthetic(tmp_path):
    root = tmp_path / "s2i"
    _clip(root / "clean" / "a1.flac")
    _clip(root / "clean" / "b2.flac")
    labels = {
        "a1.wav": {"intent": "orderDrink", "slots": {"size": "Large", "roast": "light roast"}},
        "b2.wav": {"intent": "orderDrink", "slots": {"milkAmount": " soy milk"}},
        "c3.wav": {"intent": "orderDrink", "slots": {"size": "small"}},  # no audio: skipped
    }
    (root / "labels.json").write_text(json.dumps(labels))
    rows = loaders.load_speech_to_intent(root)
    assert [Path(r["audio"]).name for r in rows] == ["a1.flac", "b2.flac"]
    assert rows[0]["keywords"] == ["light roast", "large"]  # slot-name order, normalized
    assert rows[1]["keywords"] == ["soy milk"]
    assert all("text" not in r and "speaker" not in r for r in rows)
    assert rows[0]["intent"] == "orderDrink" and rows[0]["split"] == "test"
    vocab = tmp_path / "vocab.txt"
    vocab.write_text("large\nmilk\nlight\n")
    kept = loaders.load_speech_to_intent(root, vocabulary=vocab)
    # "light roast" needs "roast"; "soy milk" needs "soy": only "large" survives, in one row
    assert [r["keywords"] for r in kept] == [["large"]]
    from asr.cli import main

    out = tmp_path / "s2i.jsonl"
    argv = ["corpus", "import", "speech_to_intent", str(root), "--out", str(out)]
    assert main([*argv, "--vocabulary", str(vocab)]) == 0
    assert [r["keywords"] for r in loaders.read_manifest(out)] == [["large"]]
    argv[2] = "fsdd"
    assert main([*argv, "--vocabulary", str(vocab)]) == 2  # only for speech_to_intent
    (root / "labels.json").write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        loaders.load_speech_to_intent(root)
    with pytest.raises(ValueError, match="labels.json"):
        loaders.load_speech_to_intent(tmp_path)


def test_real_speech_to_intent(shared_data):
    root = shared_data / "speech_to_intent"
    if not root.is_dir():
        pytest.skip(f"no {root}")
    rows = loaders.load_speech_to_intent(root)
    assert len(rows) == 619  # 625 labels, six without audio
    assert all(r["keywords"] and all(k == k.strip() for k in r["keywords"]) for r in rows)
    vocab = shared_data / "requests" / "vocabulary.txt"
    if vocab.is_file():
        kept = loaders.load_speech_to_intent(root, vocabulary=vocab)
        assert 0 < len(kept) < len(rows)
