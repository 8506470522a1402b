"""Slow end-to-end runs (marked `slow`; CI runs them too): the demo command, and the shipped
default model's accuracy on held-out synthesized voices and on real speech."""

import subprocess
import sys

import pytest

from asr.manifest import read_manifest
from asr.model_io import DEFAULT_MODEL_DIR, load_model
from asr.recognizer import DecodeSettings, Recognizer, evaluate_manifest

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def default_recognizer():
    return Recognizer(load_model("default"), DecodeSettings(method="beam", beam=4))


def test_default_model_is_shipped_and_small():
    size = sum(p.stat().st_size for p in DEFAULT_MODEL_DIR.iterdir())
    assert size <= 20e6, size
    assert load_model("default").config.name == "small"


@pytest.fixture(scope="module")
def heldout_synth(tmp_path_factory):
    from train.corpus.synth import synthesize_corpus

    out = tmp_path_factory.mktemp("synth")
    synthesize_corpus(out, hours=0.02, seed=1234, workers=2, progress=False)
    return read_manifest(out / "test.jsonl")


def test_default_model_on_heldout_synthesized_voices(default_recognizer, heldout_synth):
    res = evaluate_manifest(default_recognizer, heldout_synth)
    print(res["wer"], res["utterances"])
    # measured 3.5% on these 50 and 4.3% on the 1,029-utterance held-out test split (README);
    # the target is 5% on the whole split; 50 utterances leave room for chance
    assert res["utterances"] >= 50 and res["wer"] <= 0.10, res


def test_default_model_on_fsdd_test(default_recognizer, shared_data):
    from train.corpus.loaders import load_fsdd

    rows = [r for r in load_fsdd(shared_data / "fsdd", vad=False) if r["split"] == "test"]
    res = evaluate_manifest(default_recognizer, rows[::2])
    print(res["wer"], res["utterances"])
    assert res["wer"] <= 0.05, res  # measured 1.6% on these 125, 0.8% on all 250 (README)


def test_default_model_on_speech_commands_test(default_recognizer, shared_data):
    from train.corpus.loaders import load_speech_commands

    rows = load_speech_commands(shared_data / "speech_commands", vad=False)
    res = evaluate_manifest(default_recognizer, [r for r in rows if r["split"] == "test"][::4])
    print(res["wer"], res["utterances"])
    assert res["wer"] <= 0.15, res  # measured 7.2% on these 207, 9.5% on all 825 (README)


def test_demo_command_runs(tmp_path):
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "asr.cli",
            "demo",
            "--workdir",
            str(tmp_path),
            "--hours",
            "0.02",
            "--steps",
            "20",
            "--utterances",
            "4",
        ],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "REF:" in proc.stdout and "HYP:" in proc.stdout and "WER" in proc.stdout
