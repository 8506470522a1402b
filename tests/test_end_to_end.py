"""Slow end-to-end runs (marked `slow`; CI runs them too): the demo command, and the shipped
default model's accuracy on held-out synthesized voices and on real speech.

Each accuracy test scores whole held-out sets, large enough that a model making 1.5 times as
many errors fails: the limit sits near 1.25 times the measured error count, and at these sizes a
1.5x model's count falls below it with a probability of about 3% (the counts' spread is about
their square root). FSDD is the exception: the model makes 2 errors on its 250 test takes, and
no limit on 250 digits tells 2 errors from 3 reliably; its limit allows one more. On 2 CPU cores
the three sets take about two minutes, the synthesis of the requests included. A voice never
heard (Kokoro's held-out style) is tested in `test_unseen_voice.py`, a file of its own so that
the test workers run it beside this one.
"""

import json
import os
import subprocess
import sys

import pytest
from conftest import SHARED_DATA

from asr.manifest import read_manifest
from asr.model_io import DEFAULT_MODEL_DIR, load_model
from asr.recognizer import DecodeSettings, Recognizer, evaluate_manifest

pytestmark = pytest.mark.slow

# Measured with the shipped model (beam 4, 2 symbols per frame), 2 CPU cores: WER, errors/words.
# held-out synthesized requests, each decoded with its row's own name list: measured 2.51%,
# 56 / 2,232 words (515 utterances; stage 10 with its third phone head, Kokoro requests in its
# data, the second pass at margin 1 with the transducer's term; the second head also 56); 2.46%
# (55) with the first head alone at margin 4; 4.08% (91) before the phone head; limit 89 errors
LIMIT_SYNTH = 0.04
LIMIT_FSDD = 0.012  # measured 0.40%, 1 / 250 words; limit = 3 errors
LIMIT_SC = 0.11  # measured 8.73%, 72 / 825 words (stage 10); limit = 90 errors
LIMIT_SC_LEADIN = 0.16  # measured 12.6%, 104 / 825 words (stage 10); limit = 132 errors
LIMIT_NOISE_WORDS = (
    3  # measured 0 words in 200 clips (7.7 min of noise); the shipped model before: 35.5 a minute
)
# phonetic name matching, the 45 of those requests that speak a held-out name, lists of 100:
# measured 27.1%, 13 / 48 name words (29.2% with the head before the Kokoro requests); limit 21
LIMIT_NAMES = 0.45
LIMIT_NAMES_OFF = 0.9  # measured 97.9% without the second pass (47 / 48)
# the same 45 requests on the shipped edge artifact and its 4-bit separable phone head, on the
# emulated processor: measured 35.4%, 17 / 48 name words (39.6% with the head before); limit 28
LIMIT_EDGE_NAMES = 0.6
DEMO_TEST_STEPS = 600
# the shortened demo, measured: dev WER 93.5% -> 53%; FSDD test 9.2%, Speech Commands 65%
DEMO_LIMITS = {"fsdd_test": 0.2, "sc_test": 0.8}
# without the shared folder (600 synthesized words), measured: dev 81.7% -> 21.7%; held-out
# voices 45% (60 words)
DEMO_LIMIT_SYNTH = 0.7


@pytest.fixture(scope="module")
def default_recognizer():
    return Recognizer(load_model("default"), DecodeSettings(method="beam", beam=4))


def test_default_model_is_shipped_and_small():
    size = sum(p.stat().st_size for p in DEFAULT_MODEL_DIR.iterdir())
    assert size <= 20e6, size
    assert load_model("default").config.name == "small"


@pytest.fixture(scope="module")
def heldout_synth(tmp_path_factory):
    """About 500 requests in held-out voices with held-out names (only the test blocks are
    synthesized)."""
    from train.corpus.synth import synthesize_corpus

    out = tmp_path_factory.mktemp("synth")
    manifest = synthesize_corpus(
        out,
        hours=0.02,
        seed=1234,
        workers=2,
        progress=False,
        heldout_test_hours=0.3,
        test_only=True,
    )
    return read_manifest(manifest)


def _report(res: dict) -> dict:
    errors = res["substitutions"] + res["deletions"] + res["insertions"]
    keys = ("wer", "words", "utterances", "context_wer", "context_words")
    out = {k: res[k] for k in keys if k in res}
    print(json.dumps(dict(out, errors=errors)))
    return dict(out, errors=errors)


def test_default_model_on_heldout_synthesized_voices(default_recognizer, heldout_synth):
    res = _report(evaluate_manifest(default_recognizer, heldout_synth))
    # measured 2.51% (LIMIT_SYNTH; 4.08% before the phone head); the README's 4.6% on the
    # 1,029-utterance held-out test split of the 6 h corpus was measured before it
    assert res["utterances"] >= 500 and res["wer"] <= LIMIT_SYNTH, res


def test_default_model_writes_heldout_names_it_hears(default_recognizer, heldout_synth):
    """Phonetic name matching (`asr.phonetic`) on the shipped model and its phone head: the
    held-out requests that speak a held-out name, each with a list of 100 (its names and
    distractors), decoded with and without the second pass."""
    from train.benchmarks.biasing import name_pool, spoken_names, with_lists

    named = with_lists([r for r in heldout_synth if spoken_names(r)], 100, name_pool(), 0, True)
    res = _report(evaluate_manifest(default_recognizer, named))
    off = Recognizer(load_model("default"), DecodeSettings(phonetic_margin=None))
    base = _report(evaluate_manifest(off, named))
    print(json.dumps({"context_wer": res["context_wer"], "without": base["context_wer"]}))
    assert res["context_words"] >= 30
    assert base["context_wer"] >= LIMIT_NAMES_OFF, base
    assert res["context_wer"] <= LIMIT_NAMES, res
    assert res["wer"] < base["wer"], (res, base)


def test_default_model_on_fsdd_test(default_recognizer, shared_data):
    from train.corpus.loaders import load_fsdd

    rows = [r for r in load_fsdd(shared_data / "fsdd", vad=False) if r["split"] == "test"]
    res = _report(evaluate_manifest(default_recognizer, rows))
    # measured 0.40% on all 250 test takes (1 error); the limit allows 3
    assert res["utterances"] == 250 and res["wer"] <= LIMIT_FSDD, res


def test_default_model_on_speech_commands_test(default_recognizer, shared_data):
    from train.corpus.loaders import load_speech_commands

    rows = load_speech_commands(shared_data / "speech_commands", vad=False)
    res = _report(evaluate_manifest(default_recognizer, [r for r in rows if r["split"] == "test"]))
    # measured 8.73% on all 825 test-speaker clips (72 errors)
    assert res["utterances"] == 825 and res["wer"] <= LIMIT_SC, res


def test_demo_learns(tmp_path):
    """A shortened demo (DEMO_TEST_STEPS steps): it runs end to end, its dev WER falls and the
    trained model is far better than chance (95% WER for 20 words) on held-out recordings. On
    the real recordings when the shared folder is there, else on synthesized words."""
    real = SHARED_DATA.is_dir()
    args = ["--steps", str(DEMO_TEST_STEPS), "--utterances", "4", "--real", str(SHARED_DATA)]
    if not real:
        args += ["--synth-words", "600"]
    # LLVM's optimizations back on (conftest turns them off for the suite): 600 training steps
    # run long enough to repay them (two `make test` runs: 298 s without, 238 s with)
    flags = os.environ.get("XLA_FLAGS", "").replace("--xla_backend_optimization_level=0", "")
    proc = subprocess.run(
        [sys.executable, "-m", "asr.cli", "demo", "--workdir", str(tmp_path), *args],
        capture_output=True,
        text=True,
        timeout=900,
        env={**os.environ, "XLA_FLAGS": flags.strip()},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout
    for text in ("REF:", "HYP:", "dev WER", "asr eval --model", str(tmp_path / "tiny" / "model")):
        assert text in out, (text, out[-3000:])
    res = json.loads((tmp_path / "results.json").read_text())
    curve = [wer for _, wer in res["dev_curve"]]
    print(json.dumps({k: v for k, v in res.items() if k != "dev_curve"}), curve)
    # the curve falls (a first WER over 100%, insertions, counts as 100%)
    assert len(curve) >= 3 and curve[-1] <= min(curve[0], 1.0) - 0.3, curve
    limits = DEMO_LIMITS if real else {"synth_test": DEMO_LIMIT_SYNTH}
    for name, limit in limits.items():
        assert res[name]["wer"] <= limit, (name, res[name])


def test_demo_synthesizes_words_without_real_data(tmp_path):
    """The demo's fallback data: the 20 words, training voices for train and dev, held-out
    voices for test, readable audio."""
    import soundfile as sf

    from train.corpus import espeak
    from train.demo import WORDS, real_data, synth_data

    assert real_data(tmp_path / "nothing here") is None
    data = synth_data(tmp_path, 30)
    assert {k: len(v) for k, v in data.items()} == {"train": 30, "dev": 20, "synth_test": 20}
    train_voices, heldout_voices = espeak.default_voice_split(seed=0)
    for name, rows in data.items():
        voices = heldout_voices if name == "synth_test" else train_voices
        for r in rows:
            assert r["text"] in WORDS and r["speaker"] in voices, r
            assert sf.info(r["audio"]).duration == pytest.approx(r["duration"])
            assert 0.3 < r["duration"] < 1.13, r  # fits the demo's 128-frame bucket


def test_default_model_after_a_noise_lead_in_and_on_noise(
    default_recognizer, shared_data, tmp_path
):
    """Speech Commands' test speakers with 1.3 s of room noise before the word, as wake-word
    recordings have (`train.benchmarks.heldout`); the model before stage 9 wrote words into it
    (114.9% WER) and into noise alone (35.5 words a minute)."""
    from train.benchmarks.heldout import leadin_rows, noise_clips
    from train.corpus.loaders import load_speech_commands

    rows = load_speech_commands(shared_data / "speech_commands", vad=False)
    rows = [r for r in rows if r["split"] == "test"]
    noise = noise_clips(shared_data / "speech_commands" / "_silence_", 200)
    res = _report(evaluate_manifest(default_recognizer, leadin_rows(rows, noise, 1.3, tmp_path)))
    assert res["utterances"] == 825 and res["wer"] <= LIMIT_SC_LEADIN, res
    hyps = default_recognizer.recognize(noise)
    words = sum(len(h[0].text.split()) for h in hyps if h)
    print(json.dumps({"noise_clips": len(noise), "words": words}))
    assert words <= LIMIT_NOISE_WORDS, words


def test_default_edge_artifact_is_under_one_percent_and_recognizes_digits_and_names(
    shared_data, heldout_synth
):
    """The shipped edge artifact (`--model default-edge`: the default's 4-bit STE-QAT fine-tune,
    entropy-coded, with its own small phone head) on the emulated processor: under 1% of the
    large model's float32 bytes; FSDD's 250 test takes (real speakers never heard) as the README
    measured them; and the held-out name requests of the float model's test above, lists of
    100, through the processor's second pass (one recognizer, compiled once)."""
    from asr.model_io import DEFAULT_EDGE_FILE
    from asr.models.config import get_config
    from export.exporter import float32_params
    from train.benchmarks.biasing import name_pool, spoken_names, with_lists
    from train.corpus.loaders import load_fsdd

    assert DEFAULT_EDGE_FILE.stat().st_size < 0.01 * 4 * float32_params(get_config("large"))
    loaded = load_model("default-edge")
    assert type(loaded.model).__name__ == "EdgeTransducer" and loaded.config.name == "small"
    rows = [r for r in load_fsdd(shared_data / "fsdd", vad=False) if r["split"] == "test"]
    rec = Recognizer(loaded, DecodeSettings(method="beam", beam=4))
    res = _report(evaluate_manifest(rec, rows))
    # measured 0.40% on all 250 test takes (1 error; hw.benchmarks.edge, README); limit 3 errors
    assert res["utterances"] == 250 and res["wer"] <= LIMIT_FSDD, res
    assert loaded.phones is not None and loaded.phones.conv == "separable"
    named = with_lists([r for r in heldout_synth if spoken_names(r)], 100, name_pool(), 0, True)
    res = _report(evaluate_manifest(rec, named))
    assert res["context_words"] >= 30
    assert res["context_wer"] <= LIMIT_EDGE_NAMES, res
