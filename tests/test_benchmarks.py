"""Smoke tests of the benchmarks in `train/benchmarks`: they run, and their helpers are right.

The train-step benchmark runs the tiny recipe on a small batch for one timed step; the
transcription benchmark's PocketSphinx wrapper transcribes a short eSpeak NG utterance (skipped
where PocketSphinx or the eSpeak module is missing); the WER it reports agrees with jiwer.
"""

from __future__ import annotations

import importlib.util

import jiwer
import numpy as np
import pytest

from asr.audio import SAMPLE_RATE, resample
from asr.text import word_error_rate
from train.benchmarks.train_step import bench_size, format_row
from train.benchmarks.transcribe import select_rows


def test_train_step_benchmark_tiny_row():
    row = bench_size("tiny", repeats=1, frames=128, labels=8, batch=2)
    for key in (
        "size",
        "params_M",
        "batch",
        "frames",
        "labels",
        "vocab",
        "compile_s",
        "first_s",
        "median_ms",
        "min_ms",
        "audio_s_per_s",
        "xla_temp_MB",
        "xla_argument_MB",
        "xla_output_MB",
        "xla_total_MB",
        "device_peak_MB",
        "loss",
    ):
        assert key in row, key
    assert row["size"] == "tiny" and row["batch"] == 2 and row["frames"] == 128, row
    assert row["median_ms"] > 0 and row["min_ms"] > 0 and row["compile_s"] > 0, row
    assert row["audio_s_per_s"] == pytest.approx(2 * 128 * 0.01 / (row["median_ms"] / 1e3))
    assert np.isfinite(row["loss"]) and row["loss"] > 0, row["loss"]
    assert row["xla_total_MB"] is None or row["xla_total_MB"] > 0, row
    assert "tiny" in format_row(row)


def test_train_step_benchmark_rejects_bad_repeats():
    with pytest.raises(ValueError, match="repeats"):
        bench_size("tiny", repeats=0)


def test_pocketsphinx_wrapper_transcribes_synthesized_speech():
    if importlib.util.find_spec("pocketsphinx") is None:
        pytest.skip("pocketsphinx (a dev extra) is not installed")
    espeak = pytest.importorskip("train.corpus.espeak")
    from train.benchmarks.transcribe import PocketSphinx

    audio, sr = espeak.synthesize("hello world this is a test")
    audio = resample(np.asarray(audio, np.float32), sr, SAMPLE_RATE)
    text = PocketSphinx().transcribe(audio)
    assert isinstance(text, str) and text.strip(), repr(text)


def test_word_error_rate_agrees_with_jiwer():
    refs = ["the cat sat on the mat", "hello world"]
    hyps = ["the cat sit on mat", "hello there world"]
    ours = word_error_rate(refs, hyps)
    assert ours["wer"] == pytest.approx(jiwer.wer(refs, hyps))
    assert ours["words"] == 8
    # Normalization applies to both sides: case and punctuation do not count as errors.
    assert word_error_rate(["Hello, World!"], ["hello world"])["wer"] == 0.0


def test_select_rows_spreads_evenly():
    rows = [{"i": i} for i in range(10)]
    assert [r["i"] for r in select_rows(rows, 3)] == [0, 4, 9]
    assert select_rows(rows, None) == rows and select_rows(rows, 50) == rows
    with pytest.raises(ValueError):
        select_rows(rows, 0)


def test_transcribe_benchmark_keeps_rows_aligned_past_an_unreadable_file(tmp_path):
    import soundfile as sf

    from asr.model_io import load_model
    from asr.recognizer import DecodeSettings
    from train.benchmarks.transcribe import evaluate_ours, evaluate_peer

    espeak = pytest.importorskip("train.corpus.espeak")
    rows = []
    for i, text in enumerate(["turn on the lights", "seven"]):
        audio, sr = espeak.synthesize(text)
        sf.write(tmp_path / f"{i}.wav", audio, sr)
        rows.append({"audio": str(tmp_path / f"{i}.wav"), "text": text})
    rows.insert(1, {"audio": str(tmp_path / "missing.wav"), "text": "call mom"})
    ours = evaluate_ours(load_model("default"), rows, DecodeSettings(method="greedy"))
    assert ours["utterances"] == 2 and ours["unreadable"] == 1
    assert ours["words"] == 5  # "call mom" is left out, not counted as two deletions
    assert ours["hyps"][1] == "" and ours["hyps"][2] == "seven", ours["hyps"]
    if importlib.util.find_spec("pocketsphinx") is not None:
        from train.benchmarks.transcribe import PocketSphinx

        peer = evaluate_peer(PocketSphinx(), rows)
        assert peer["utterances"] == 2 and peer["unreadable"] == 1 and peer["words"] == 5


def test_noise_clips_and_leadins_are_what_the_heldout_benchmark_says(tmp_path):
    import soundfile as sf

    from train.benchmarks.heldout import noise_clips, with_leadin

    rng = np.random.default_rng(0)
    for i in range(3):
        sf.write(tmp_path / f"{i}.wav", rng.normal(0, 0.1, 16000).astype(np.float32), 16000)
    a, b = noise_clips(tmp_path, 20, seed=1), noise_clips(tmp_path, 20, seed=1)
    assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))
    for x in a:
        assert 16000 <= len(x) < 64000 and x.dtype == np.float32
        level = 20 * np.log10(np.sqrt(np.mean(x**2)))
        assert -50.5 < level < -19.5
    # the lead-in comes before the clip, at the clip's quietest 100 ms level
    speech = np.concatenate([np.full(1600, 1e-3, np.float32), 0.5 * np.ones(8000, np.float32)])
    y = with_leadin(speech, a[0], 1.3)
    assert len(y) == len(speech) + int(1.3 * 16000)
    np.testing.assert_array_equal(y[-len(speech) :], speech)
    lead = y[: int(1.2 * 16000)]
    np.testing.assert_allclose(np.sqrt(np.mean(lead**2)), 1e-3, rtol=0.1)


def test_unseen_voices_table_marks_the_held_out_family():
    from train.benchmarks.unseen_voices import TEST_FAMILY, table

    cells = {k: {"wer": 0.1 * (i + 1)} for i, k in enumerate(TEST_FAMILY)}
    rows = [
        dict(cells, run="all", held_out=None, train_seconds=60),
        dict(cells, run="no-real", held_out="real", train_seconds=120),
        dict(cells, run="no-fsdd-theo", held_out=None, dropped_families=["world"], train_seconds=6),
    ]
    out = table(rows).splitlines()
    assert out[4] == "| no-fsdd-theo | 10.0 | 20.0 | 30.0* | 40.0 | 50.0 | 0.1 |"
    assert out[0].startswith("| run | espeak_test")
    assert out[2] == "| all | 10.0 | 20.0 | 30.0 | 40.0 | 50.0 | 1.0 |"
    assert out[3] == "| no-real | 10.0 | 20.0 | 30.0 | 40.0* | 50.0* | 2.0 |"


def test_biasing_benchmark_lists():
    from train.benchmarks.biasing import spoken_names, with_lists

    rows = [
        {"audio": "a", "text": "call anna lee at home", "context": ["Anna Lee", "bob", "home"]},
        {"audio": "b", "text": "stop", "context": ["anna"]},
        {"audio": "c", "text": "dial bob"},
    ]
    assert spoken_names(rows[0]) == ["anna lee", "home"]
    assert spoken_names(rows[1]) == [] and spoken_names(rows[2]) == []
    pool = ["anna lee", "bob", "carl", "dora", "eve", "fred", "gus", "home", "ida", "jo"]
    listed = with_lists(rows, 5, pool, seed=0, spoken=True)
    assert [len(r["context"]) for r in listed] == [5, 5, 5]
    assert {"anna lee", "home"} <= set(listed[0]["context"])
    assert "bob" not in listed[2]["context"]  # a distractor is never a word of the row
    for r in listed:
        assert len(set(r["context"])) == 5
    assert with_lists(rows, 5, pool, seed=0, spoken=True) == listed  # seeded
    distract = with_lists(rows, 4, pool, seed=1, spoken=False)
    assert not set(distract[0]["context"]) & {"anna lee", "home"}


def test_compression_benchmark_one_shot_pruning_and_table(tmp_path):
    import json

    from train.benchmarks.compression import (
        cells,
        discover_runs,
        one_shot_prune,
        prune_label,
        table,
    )

    rng = np.random.default_rng(0)
    params = {
        "Dense_0": {"kernel": rng.normal(size=(8, 6)), "bias": rng.normal(size=6)},
        "embed": {"embedding": rng.normal(size=(5, 4))},
    }
    pruned = one_shot_prune(params, 0.5)
    k = np.asarray(pruned["Dense_0"]["kernel"])
    assert (k == 0).sum() == 24  # half of the kernel: its 24 smallest magnitudes
    small = np.argsort(np.abs(params["Dense_0"]["kernel"]).ravel())[:24]
    assert np.all(k.ravel()[small] == 0)
    np.testing.assert_array_equal(pruned["Dense_0"]["bias"], params["Dense_0"]["bias"])
    np.testing.assert_array_equal(pruned["embed"]["embedding"], params["embed"]["embedding"])
    # a kernel kept dense: the other gives up the share of both (48 + 12 weights, 30 zeros)
    two = {**params, "Dense_1": {"kernel": rng.normal(size=(3, 4))}}
    pruned = one_shot_prune(two, 0.5, "global", "Dense_1")
    assert np.all(np.asarray(pruned["Dense_1"]["kernel"]) != 0)
    k = np.asarray(pruned["Dense_0"]["kernel"])
    small = np.argsort(np.abs(params["Dense_0"]["kernel"]).ravel())[:30]
    assert (k == 0).sum() == 30 and np.all(k.ravel()[small] == 0)
    assert prune_label("layer", "") == "" and prune_label("global", "small") == (
        " (global, small layers dense)"
    )
    # runs are read from their recipes; one row per method and bits, one column per set
    for name, t in [
        ("a", {"quant_method": "acos", "quant_bits": 4, "sparsity": 0.5, "quant_weight": 30.0}),
        ("b", {"quant_method": "none", "sparsity": 0.5, "sparsity_method": "hard"}),
        (
            "c",
            {"quant_method": "ste", "quant_bits": 4, "sparsity": 0.5, "sparsity_scope": "global"},
        ),
    ]:
        (tmp_path / name / "model").mkdir(parents=True)
        (tmp_path / name / "model" / "config.json").write_text(json.dumps({"train": t}))
    runs = {r["name"]: r for r in discover_runs(tmp_path)}
    assert runs["a"]["bits"] == 4 and runs["b"]["bits"] == 0 and runs["a"]["quant_weight"] == 30
    labels = {c[0] for c in cells("default", list(runs.values()), [4], [])}
    assert {"regularizer (weight 30)", "PTQ", "STE-QAT (global)"} <= labels
    twin = {**runs["c"], "name": "d", "path": str(tmp_path / "d" / "model")}
    labels = {c[0] for c in cells("default", [runs["c"], twin], [4], [])}
    assert labels == {"float", "PTQ", "STE-QAT (global) [c]", "STE-QAT (global) [d]"}
    res = [
        {"method": "float", "bits": 0, "sparsity": 0.0, "set": "x", "wer": 0.05},
        {"method": "PTQ", "bits": 4, "sparsity": 0.5, "set": "x", "wer": 0.0712},
    ]
    res.append({"method": "PTQ", "bits": 0, "sparsity": 0.0, "set": "x", "wer": 0.051})
    out = table(res, ["x"])
    assert out.splitlines()[0] == "| method | bits | s=0% x | s=50% x |"
    assert "| float | float | 5.00 |  |" in out and "| PTQ | 4 |  | 7.12 |" in out
    assert "| PTQ | float (8-bit activations) | 5.10 |  |" in out
    # bits 0: the float weights with only the activations quantized, pruned or not
    built = {(c[0], c[1], c[2]): c for c in cells("default", [], [0], [0.5])}
    assert set(built) == {("float", 0, 0.0), ("PTQ", 0, 0.0), ("PTQ one-shot", 0, 0.5)}
    from asr.model_io import load_model

    act_only = built[("PTQ", 0, 0.0)][4]()
    assert act_only.model.quant.describe() == "w-floata8"
    w = act_only.variables["params"]["joiner"]["enc_proj"]["kernel"]
    np.testing.assert_array_equal(
        w, load_model("default").variables["params"]["joiner"]["enc_proj"]["kernel"]
    )


def test_unseen_voices_run_names():
    import argparse

    from train.benchmarks.unseen_voices import run_name

    for ok in ("all", "teacher", "no-kokoro", "no-kokoro+teacher", "all+teacher"):
        assert run_name(ok) == ok
    for ok in ("no-fsdd-george", "no-fsdd-jo_2", "no-fsdd-theo+teacher", "fsdd-loso"):
        assert run_name(ok) == ok
    for bad in ("teacher+teacher", "no-foo", "no-kokoro+student", "+teacher", "no-fsdd-",
                "no-fsdd-a b", "fsdd-loso+teacher"):  # fmt: skip
        with pytest.raises(argparse.ArgumentTypeError, match="unknown run"):
            run_name(bad)


def test_leave_one_speaker_out_rows_and_table():
    """A held-out FSDD speaker loses their clips and every WORLD resynthesis of them, nothing
    else; the table pools errors over words, heard (`all`) beside never heard."""
    from train.benchmarks.unseen_voices import fsdd_speakers, loso_table, without_speaker

    rows = [
        {"audio": "1", "speaker": "george", "text": "one"},
        {"audio": "2", "speaker": "theo", "text": "two"},
        {"audio": "3", "speaker": "world0:george", "voice": {"source_speaker": "george"}},
        {"audio": "4", "speaker": "world0:theo", "voice": {"source_speaker": "theo"}},
        {"audio": "5", "speaker": "en-us+zac", "voice": {"name": "en-us+zac"}},
        {"audio": "6", "speaker": "george2", "voice": "not a dict"},
    ]
    assert [r["audio"] for r in without_speaker(rows, "george")] == ["2", "4", "5", "6"]
    assert without_speaker(rows, "nobody") == rows
    assert fsdd_speakers([{"speaker": "theo"}, {"speaker": "george"}, {"speaker": "theo"}]) == [
        "george",
        "theo",
    ]

    def scores(g, t):  # (errors, words) per speaker
        return {
            s: {"wer": e / w, "errors": e, "words": w}
            for s, (e, w) in zip(["george", "theo"], [g, t], strict=True)
        }

    results = [
        {"run": "all", "fsdd_by_speaker": scores((1, 50), (0, 40))},
        {"run": "no-fsdd-george", "held_out_speaker": "george", "fsdd_by_speaker": scores((9, 50), (0, 40))},
        {"run": "no-fsdd-theo", "held_out_speaker": "theo", "fsdd_by_speaker": scores((2, 50), (6, 40))},
    ]  # fmt: skip
    out = loso_table(results).splitlines()
    # heard by `all`, heard by the other leave-one-out run, never heard, words
    assert out[2] == "| george | 2.0 | 4.0 | 18.0 | 50 |"  # the theo run: 2 of 50
    assert out[3] == "| theo | 0.0 | 0.0 | 15.0 | 40 |"  # the george run: 0 of 40
    assert out[4] == "| all 2 pooled | 1.1 | 2.2 | 16.7 | 90 |"  # 1/90, 2/90, (9 + 6)/90
    assert loso_table(results[:1]) is None
    assert loso_table(results[1:]).splitlines()[4] == "| all 2 pooled |  | 2.2 | 16.7 | 90 |"


def test_mixed_ptq_rounds_small_layers_at_their_own_bits():
    """The small layers (first convolution, depthwise convolutions, vocabulary outputs) at 8
    bits, every other kernel at 4, against NumPy rounding per output channel."""
    from asr.model_io import load_model
    from train.benchmarks.compression import mixed_ptq

    base = load_model("default")
    m = mixed_ptq(base, 4, 8)
    assert m.model.quant.describe() == "w4s8a8"

    def numpy_codes(w, bits, axes):
        q = 2 ** (bits - 1) - 1
        step = np.max(np.abs(w), axis=axes, keepdims=True) / q
        return np.clip(np.round(w / step), -q, q), np.where(step > 0, step, 1.0)

    p0, p1 = base.variables["params"], m.variables["params"]
    cases = [
        (("joiner", "out", "kernel"), 8, (0,)),
        (("encoder", "ConvSubsampling_0", "Conv_0", "kernel"), 8, (0, 1, 2)),
        (("encoder", "layer_0", "CausalConvModule_0", "Conv_0", "kernel"), 8, (0, 1)),
        (("encoder", "layer_0", "Dense_0", "kernel"), 4, (0,)),
        (("encoder", "ConvSubsampling_0", "Conv_1", "kernel"), 4, (0, 1, 2)),
    ]
    for path, bits, axes in cases:
        w0, w1 = p0, p1
        for k in path:
            w0, w1 = w0[k], w1[k]
        w0, w1 = np.asarray(w0, np.float64), np.asarray(w1, np.float64)
        want, step = numpy_codes(w0, bits, axes)
        got = w1 / step
        np.testing.assert_allclose(got, np.round(got), atol=1e-3)  # on this grid's levels
        off = np.abs(np.round(got) - want)
        assert off.max() <= 1 and np.mean(off > 0) < 1e-3, path  # float32 ties only
        levels = max(len(np.unique(c)) for c in np.moveaxis(w1, -1, 0).reshape(w1.shape[-1], -1))
        many = w1.size // w1.shape[-1] > 100  # enough weights per channel to show the grid
        assert levels <= 2**bits - 1 and (bits == 4 or not many or levels > 15), (path, levels)


def test_speaker_scores_count_each_speakers_errors(shared_data):
    """Per-speaker errors from one evaluation with `by=("speaker",)` equal the word errors of
    that speaker's rows counted one by one from the hypotheses (jiwer, per utterance)."""
    from asr.model_io import load_model
    from asr.recognizer import DecodeSettings, Recognizer, evaluate_manifest
    from asr.text import utterance_errors
    from train.benchmarks.unseen_voices import speaker_scores
    from train.corpus.loaders import load_fsdd

    fsdd = [r for r in load_fsdd(shared_data / "fsdd", vad=False) if r["split"] == "test"]
    rows = [r for s in ("george", "theo") for r in fsdd if r["speaker"] == s][::5]  # 20 takes
    # a wrong two-word transcript on every third take, so that every speaker has errors
    rows = [dict(r, text="nine nine") if i % 3 == 0 else r for i, r in enumerate(rows)]
    rec = Recognizer(load_model("default"), DecodeSettings(beam=2))
    ev = evaluate_manifest(rec, rows, pairs=0, by=("speaker",), details=True)
    got = speaker_scores(ev)
    assert sorted(got) == ["george", "theo"]
    for spk, score in got.items():
        mine = [d for d in ev["utterances_detail"] if d["speaker"] == spk]
        counts = [utterance_errors(d["text"], d["hyp"]) for d in mine]
        assert score["errors"] == sum(c["errors"] for c in counts) > 0
        assert score["words"] == sum(c["words"] for c in counts) > len(mine)
