"""Tests of asr.recognizer and asr.segment: input checks, scoring a manifest (unreadable rows,
keyword rows), no recompiles across recognizers, and long audio cut at pauses.

A tiny random Transducer with a small sentencepiece vocabulary stands in for a trained model: its
texts are meaningless but deterministic, which is all the consistency tests need (a long input
equals its segments decoded one by one; short inputs are decoded as before). The scoring tests use
a stub recognizer with fixed hypotheses, so the numbers are checked by hand.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import soundfile as sf

import asr.recognizer as recognizer_mod
from asr.audio import SAMPLE_RATE, AudioError
from asr.manifest import ManifestError
from asr.model_io import LoadedModel
from asr.models import build_model, get_config
from asr.models.transducer import init_variables
from asr.recognizer import (
    DecodeSettings,
    EncoderCost,
    Hypothesis,
    Recognizer,
    Timing,
    evaluate_manifest,
)
from asr.tokenizer import Tokenizer

SR = SAMPLE_RATE


def _loaded(num_layers: int = 2, seed: int = 0) -> LoadedModel:
    tok = Tokenizer.train(["turn on the lights", "call mom", "stop", "go"] * 20, vocab_size=24)
    cfg = get_config("tiny").replace(vocab_size=tok.vocab_size, num_layers=num_layers)
    model = build_model(cfg)
    variables = jax.device_get(init_variables(model, jax.random.PRNGKey(seed)))
    return LoadedModel(model, variables, tok, cfg, "tiny-random")


@pytest.fixture(scope="module")
def tiny() -> LoadedModel:
    return _loaded()


def _speechy(seconds: float, seed: int) -> np.ndarray:
    """f32[N]: noise bursts shaped like syllables (loud, varying) over a quiet floor."""
    rng = np.random.default_rng(seed)
    n = int(seconds * SR)
    env = 0.3 * (1.2 + np.sin(2 * np.pi * 4.0 * np.arange(n) / SR + rng.uniform(0, 6)))
    return (env * rng.standard_normal(n) + 1e-3 * rng.standard_normal(n)).astype(np.float32)


# ---- 1. input checks ----


@pytest.mark.parametrize(
    "bad, match",
    [
        (np.array([0.1, np.nan, 0.2] * 200, np.float32), "NaN or infinite"),
        (np.array([0.1, np.inf] * 300, np.float32), "NaN or infinite"),
        (np.zeros(0, np.float32), "empty"),
        (np.zeros((2, 400, 1), np.float32), "shaped"),
        (np.array(["a"] * 500), "numeric"),
        (np.array([object()] * 500), "numeric"),
    ],
)
def test_recognize_rejects_bad_arrays_naming_them(tiny, bad, match):
    rec = Recognizer(tiny, DecodeSettings(method="greedy", batch_size=2))
    good = np.zeros(SR // 2, np.float32)
    with pytest.raises(AudioError, match=rf"audios\[1\].*{match}"):
        rec.recognize([good, bad])


def test_recognize_rejects_non_lists(tiny):
    rec = Recognizer(tiny, DecodeSettings(method="greedy", batch_size=2))
    with pytest.raises(AudioError, match="list of"):
        rec.recognize(np.zeros(SR, np.float32))  # one array, not a list of them
    with pytest.raises(AudioError, match="transcribe_files"):
        rec.recognize("speech.wav")
    with pytest.raises(AudioError, match="no audio"):
        rec.recognize([])


# ---- 2, 3. scoring a manifest: unreadable rows, keyword rows ----


class StubRecognizer:
    """Stands in for Recognizer in evaluate_manifest: fixed hypotheses per path; a path in
    `bad` is unreadable."""

    def __init__(self, hyps: dict[str, str], bad: tuple[str, ...] = (), costs=None):
        self.hyps, self.bad, self.costs = hyps, bad, costs or {}
        self.timing = Timing()
        self.settings = DecodeSettings()
        self.loaded = type("L", (), {"source": "stub"})()

    def transcribe_files(self, paths, nbest=1, progress=False, context=None):
        self.context = context
        for p in paths:
            self.timing.audio_s += 1.0
            if p in self.bad:
                yield p, AudioError(f"{p}: not a readable audio file")
            else:
                yield p, [Hypothesis(self.hyps[p], -1.0, self.costs.get(p))]


def test_unreadable_rows_are_excluded_and_reported():
    rows = [
        {"audio": "a.wav", "text": "call mom", "speaker": "x"},
        {"audio": "b.wav", "text": "turn on the lights", "speaker": "y"},
        {"audio": "c.wav", "text": "go", "speaker": "y"},
    ]
    rec = StubRecognizer({"a.wav": "call mom", "c.wav": "stop"}, bad=("b.wav",))
    res = evaluate_manifest(rec, rows, by=("speaker",), details=True)
    # b is neither scored as 4 deletions nor counted: 1 substitution over 3 words
    assert res["wer"] == pytest.approx(1 / 3) and res["words"] == 3
    assert res["utterances"] == 2 and res["unreadable"] == 1
    assert res["unreadable_rows"] == [
        {"audio": "b.wav", "error": "b.wav: not a readable audio file"}
    ]
    assert res["by"]["speaker"]["y"]["utterances"] == 1
    assert res["by"]["speaker"]["y"]["wer"] == pytest.approx(1.0)
    detail = res["utterances_detail"]
    assert [d["audio"] for d in detail] == ["a.wav", "b.wav", "c.wav"]  # every row, in order
    assert "error" in detail[1] and "errors" not in detail[1]
    assert [p["ref"] for p in res["pairs"]] == ["call mom", "go"]


def test_encoder_cost_summed_over_scored_rows_and_groups():
    rows = [
        {"audio": "a.wav", "text": "call mom", "speaker": "x"},
        {"audio": "b.wav", "keywords": ["stop"], "speaker": "y"},
        {"audio": "c.wav", "text": "go", "speaker": "y"},
        {"audio": "d.wav", "text": "go", "speaker": "y"},
    ]
    hyps = {"a.wav": "call mom", "b.wav": "stop", "c.wav": "go"}
    costs = {
        "a.wav": EncoderCost(macs=100.0, frames=10, audio_s=2.0, expensive_frames=5.0),
        "b.wav": EncoderCost(macs=60.0, frames=6, audio_s=1.0, expensive_frames=0.0),
        "c.wav": EncoderCost(macs=40.0, frames=4, audio_s=1.0, expensive_frames=4.0),
    }
    rec = StubRecognizer(hyps, bad=("d.wav",), costs=costs)
    res = evaluate_manifest(rec, rows, by=("speaker",), details=True)
    # d is unreadable: not counted; b (a keyword row) is
    assert res["encoder_macs_per_second"] == pytest.approx(200.0 / 4.0)
    assert res["expensive_frame_share"] == pytest.approx(9 / 20)
    y = res["by"]["speaker"]["y"]
    assert y["encoder_macs_per_second"] == pytest.approx(50.0) and y["expensive_frame_share"] == 0.4
    detail = res["utterances_detail"]
    assert (
        detail[0]["encoder_macs_per_second"] == 50.0 and detail[0]["expensive_frame_share"] == 0.5
    )
    assert detail[1]["expensive_frame_share"] == 0.0
    assert "encoder_macs_per_second" not in detail[3]  # unreadable
    # a plain encoder: MACs, no share
    plain = {k: EncoderCost(c.macs, c.frames, c.audio_s) for k, c in costs.items()}
    res = evaluate_manifest(StubRecognizer(hyps, ("d.wav",), plain), rows, details=True)
    assert res["encoder_macs_per_second"] == pytest.approx(50.0)
    assert "expensive_frame_share" not in res
    assert "expensive_frame_share" not in res["utterances_detail"][0]
    # a recognizer that does not count (no costs): None, and no share
    res = evaluate_manifest(StubRecognizer(hyps, ("d.wav",)), rows)
    assert res["encoder_macs_per_second"] is None and "expensive_frame_share" not in res


def test_encoder_cost_of_segments_add_up():
    a = EncoderCost(macs=10.0, frames=2, audio_s=0.5, expensive_frames=1.0)
    b = EncoderCost(macs=30.0, frames=6, audio_s=1.5, expensive_frames=3.0)
    s = a + b
    assert (s.macs, s.frames, s.audio_s, s.expensive_frames) == (40.0, 8, 2.0, 4.0)
    assert s.macs_per_second == 20.0 and s.expensive_share == 0.5
    assert (a + EncoderCost(1.0, 1, 1.0)).expensive_share is None
    assert Hypothesis("go", -1.0, a) == Hypothesis("go", -1.0)  # the cost is not compared


def test_decoder_counts_only_models_whose_encode_aux_matches_encode(tiny):
    from asr.models.transducer import Transducer

    def wrapped(method):
        def run(self, *args, **kwargs):
            return method(self, *args, **kwargs)

        return run

    class EncodeOnly(Transducer):  # overrides encode only: its inherited encode_aux differs
        encode = wrapped(Transducer.encode)

    class Both(Transducer):
        encode = wrapped(Transducer.encode)
        encode_aux = wrapped(Transducer.encode_aux)

    m = tiny.model
    kw = dict(config=m.config, predictor_cls=m.predictor_cls, encoder_cls=m.encoder_cls)
    assert recognizer_mod._counts_encoder(m)
    assert recognizer_mod._counts_encoder(Both(**kw))
    assert not recognizer_mod._counts_encoder(EncodeOnly(**kw))


def test_unreadable_fail_and_all_unreadable_raise():
    rows = [{"audio": f"{i}.wav", "text": "go"} for i in range(6)]
    bad = tuple(f"{i}.wav" for i in range(1, 6))
    rec = StubRecognizer({"0.wav": "go"}, bad=bad)
    with pytest.raises(AudioError, match=r"5 of 6 rows.*1\.wav.*2\.wav"):
        evaluate_manifest(rec, rows, unreadable="fail")
    assert evaluate_manifest(rec, rows)["unreadable"] == 5
    rec = StubRecognizer({}, bad=(*bad, "0.wav"))
    with pytest.raises(AudioError, match="nothing to score"):
        evaluate_manifest(rec, rows)
    with pytest.raises(ValueError, match="unreadable"):
        evaluate_manifest(rec, rows, unreadable="ignore")


def test_keyword_hits_contiguous_and_counted():
    from asr.recognizer import keyword_hits

    assert keyword_hits(["large", "latte"], "a large oat latte please") == 2
    assert keyword_hits(["Oat Latte!"], "a large oat latte") == 1  # normalized, contiguous
    assert keyword_hits(["large latte"], "a large oat latte") == 0  # not contiguous
    assert keyword_hits(["late"], "a large latte") == 0  # words, not substrings
    assert keyword_hits(["two", "two", "two"], "two coffees and two teas") == 2  # at most as often
    assert keyword_hits(["la la"], "la la la") == 1  # non-overlapping occurrences
    assert keyword_hits(["stop"], "") == 0


def test_keyword_rows_and_text_rows_mixed():
    rows = [
        {"audio": "a.wav", "text": "call mom", "domain": "phone"},
        {"audio": "b.wav", "keywords": ["large", "latte"], "domain": "cafe"},
        {"audio": "c.wav", "keywords": ["oat milk", "two"], "domain": "cafe"},
        {"audio": "d.wav", "keywords": ["espresso"], "domain": "cafe"},
    ]
    hyps = {
        "a.wav": "call tom",
        "b.wav": "a large latte",
        "c.wav": "two oat lattes",
        "d.wav": "",
    }
    res = evaluate_manifest(StubRecognizer(hyps, bad=("d.wav",)), rows, by=("domain",))
    assert res["wer"] == pytest.approx(0.5) and res["words"] == 2
    assert res["keyword_rows"] == 2 and res["keywords"] == 4 and res["keywords_found"] == 3
    assert res["keyword_recall"] == pytest.approx(3 / 4)
    assert res["utterances"] == 3 and res["unreadable"] == 1
    cafe, phone = res["by"]["domain"]["cafe"], res["by"]["domain"]["phone"]
    assert cafe["keyword_recall"] == pytest.approx(3 / 4) and cafe["wer"] is None
    assert cafe["utterances"] == 2 and cafe["keyword_rows"] == 2
    assert phone["wer"] == pytest.approx(0.5) and phone["keyword_recall"] is None
    # keyword rows only: no WER
    only = evaluate_manifest(StubRecognizer(hyps), rows[1:3], details=True)
    assert only["wer"] is None and only["words"] == 0
    assert only["keyword_recall"] == pytest.approx(3 / 4)
    d = only["utterances_detail"][1]
    assert d["keywords_found"] == 1 and d["keywords_total"] == 2 and d["missed"] == ["oat milk"]
    with pytest.raises(ManifestError, match=r"rows\[0\]"):
        evaluate_manifest(StubRecognizer(hyps), [{"audio": "a.wav", "keywords": ["?!"]}])
    with pytest.raises(ManifestError, match=r"rows\[0\]"):
        evaluate_manifest(StubRecognizer(hyps), [{"audio": "a.wav"}])


def test_evaluate_manifest_on_real_files_skips_unreadable(tiny, tmp_path):
    rng = np.random.default_rng(0)
    good = tmp_path / "good.wav"
    sf.write(good, (0.1 * rng.standard_normal(SR)).astype(np.float32), SR)
    junk = tmp_path / "junk.wav"
    junk.write_bytes(b"not audio at all")
    rows = [
        {"audio": str(good), "text": "call mom"},
        {"audio": str(junk), "text": "turn on the lights"},
        {"audio": str(tmp_path / "missing.wav"), "text": "stop"},
    ]
    rec = Recognizer(tiny, DecodeSettings(method="greedy", batch_size=2))
    res = evaluate_manifest(rec, rows)
    alone = evaluate_manifest(rec, rows[:1])
    assert res["utterances"] == 1 and res["unreadable"] == 2 and res["words"] == 2
    assert res["wer"] == alone["wer"]
    assert res["encoder_macs_per_second"] == alone["encoder_macs_per_second"] > 0
    assert "expensive_frame_share" not in res  # a plain encoder
    assert [r["audio"] for r in res["unreadable_rows"]] == [str(junk), rows[2]["audio"]]
    assert "no such file" in res["unreadable_rows"][1]["error"]


# ---- 4. no recompiles ----


@pytest.mark.parametrize("method", ["greedy", "beam"])
def test_new_recognizer_for_same_model_does_not_retrace(monkeypatch, method):
    loaded = _loaded(num_layers=1, seed=1)
    # start from nothing compiled: an equal model of another test in this process (files run in
    # any order under pytest-xdist) would already be in the decoder cache
    recognizer_mod._decoder.cache_clear()
    traces = []
    name = "beam_search" if method == "beam" else "greedy_search"
    search = getattr(recognizer_mod, name)

    def counting(*args, **kwargs):
        traces.append(args[1].shape)  # runs only while tracing
        return search(*args, **kwargs)

    monkeypatch.setattr(recognizer_mod, name, counting)
    settings = DecodeSettings(method=method, beam=2, batch_size=2)
    rng = np.random.default_rng(0)
    rec = Recognizer(loaded, settings)
    rec.recognize([0.1 * rng.standard_normal(SR // 2).astype(np.float32)])
    n = len(traces)
    assert n >= 1
    rec.recognize([0.1 * rng.standard_normal(SR // 3).astype(np.float32)])  # same bucket
    # new weights as jax arrays (what the trainer holds), same model and settings
    newer = jax.tree_util.tree_map(lambda x: jnp.asarray(x) * 1.01, loaded.variables)
    rec2 = Recognizer(
        LoadedModel(loaded.model, newer, loaded.tokenizer, loaded.config, loaded.source), settings
    )
    out = rec2.recognize([0.1 * rng.standard_normal(SR // 2).astype(np.float32)])
    assert len(traces) == n, traces
    assert len(out) == 1
    assert rec2.timing.compile_s == 0.0  # the shape was compiled already: no warm-up run


# ---- 5. long audio ----


def test_segment_bounds_cover_and_respect_max():
    from asr.segment import HOP, segment_bounds

    rng = np.random.default_rng(1)
    for x in (
        _speechy(9.3, 0),
        (0.2 * rng.standard_normal(int(7.77 * SR))).astype(np.float32),  # noise: no pause
        np.zeros(int(6.01 * SR), np.float32),  # silence
    ):
        for max_s in (1.0, 2.5):
            bounds = segment_bounds(x, int(max_s * SR))
            assert bounds[0][0] == 0 and bounds[-1][1] == len(x)
            assert all(a[1] == b[0] for a, b in zip(bounds, bounds[1:], strict=False))
            assert all(0 < e - s <= max_s * SR for s, e in bounds), bounds
            assert all(e - s >= max_s * SR / 4 for s, e in bounds), bounds  # no slivers
            assert all(s % HOP == 0 for s, _ in bounds)
    assert segment_bounds(np.zeros(SR, np.float32), SR) == [(0, SR)]  # short: untouched


def test_segment_cut_lands_in_the_pause():
    from asr.segment import segment_bounds

    x = _speechy(6.0, 2)
    pause = (int(3.1 * SR), int(3.4 * SR))
    x[pause[0] : pause[1]] *= 1e-3
    bounds = segment_bounds(x, 4 * SR)
    assert len(bounds) == 2
    cut = bounds[0][1]
    assert pause[0] < cut < pause[1], (cut / SR, bounds)
    # noise without pause: the cut is at the limit or within its last second
    noise = (0.2 * np.random.default_rng(3).standard_normal(6 * SR)).astype(np.float32)
    cut = segment_bounds(noise, 4 * SR)[0][1]
    assert 3 * SR <= cut <= 4 * SR


def test_long_inputs_also_cut_at_every_long_pause():
    from asr.segment import segment_bounds

    x = _speechy(9.0, 5)
    for a, b in ((0.0, 0.5), (1.0, 1.3), (2.5, 2.6), (5.0, 5.4)):  # leading silence, 3 pauses
        x[int(a * SR) : int(b * SR)] *= 1e-3
    cuts = [e / SR for _, e in segment_bounds(x, 6 * SR, min_pause_s=0.2)[:-1]]
    assert len(cuts) == 2, cuts  # not in the leading silence, not in the 0.1 s pause
    assert 1.0 < cuts[0] < 1.3 and 5.0 < cuts[1] < 5.4, cuts
    assert len(segment_bounds(x, 6 * SR)) == 2  # without min_pause_s: only what the length needs
    assert segment_bounds(x[: 6 * SR], 6 * SR, min_pause_s=0.2) == [(0, 6 * SR)]  # short: whole


def test_frame_energy_db():
    from asr.segment import HOP, frame_energy_db

    x = np.concatenate([np.zeros(HOP), np.full(HOP, 0.1), np.full(HOP // 2, 1.0)])
    db = frame_energy_db(x.astype(np.float32))
    assert db.shape == (3,)
    np.testing.assert_allclose(db[1:], [-20.0, 0.0], atol=1e-4)
    assert db[0] < -90


def test_long_input_is_its_segments_joined(tiny):
    from asr.segment import segment_bounds

    settings = DecodeSettings(method="beam", beam=2, batch_size=4, max_segment_seconds=1.0)
    rec = Recognizer(tiny, settings)
    x = _speechy(3.7, 4)
    x[int(1.5 * SR) : int(1.9 * SR)] *= 1e-3  # a pause: one cut there
    bounds = rec.segment(x)
    assert bounds == segment_bounds(x, SR, min_pause_s=0.2)
    assert len(bounds) >= 4
    (long_hyp,) = rec.recognize([x], nbest=3)  # n-best of a long input: the joined 1-best
    parts = rec.recognize([x[s:e] for s, e in bounds])
    texts = [p[0].text for p in parts]
    assert any(texts), "random model emitted nothing: test would be vacuous"
    assert len(long_hyp) == 1
    assert long_hyp[0].text == " ".join(t.strip() for t in texts if t.strip())
    assert long_hyp[0].score == pytest.approx(sum(p[0].score for p in parts), rel=1e-6)


def test_short_inputs_decoded_as_before_next_to_long_ones(tiny, tmp_path):
    settings = DecodeSettings(method="greedy", batch_size=2, max_segment_seconds=1.0)
    rec = Recognizer(tiny, settings)
    shorts = [_speechy(s, i) for i, s in enumerate((0.4, 0.9, 0.7))]
    alone = rec.recognize(shorts, nbest=2)
    mixed = rec.recognize([shorts[0], _speechy(2.6, 9), shorts[1], shorts[2]], nbest=2)
    assert [mixed[0], mixed[2], mixed[3]] == alone  # same batches: bit-identical
    # transcribe_files cuts long files too, and counts the audio once
    p = tmp_path / "long.wav"
    long = _speechy(2.6, 9)
    sf.write(p, long, SR, subtype="FLOAT")
    rec.timing = Timing(seen=rec.timing.seen)
    ((path, hyps),) = list(rec.transcribe_files([str(p)]))
    assert hyps == rec.recognize([long])[0]
    assert rec.timing.audio_s == pytest.approx(2 * 2.6)


def test_settings_checked(tiny):
    with pytest.raises(ValueError, match="max_segment_seconds"):
        Recognizer(tiny, DecodeSettings(max_segment_seconds=0.1))
    with pytest.raises(ValueError, match="min_pause_seconds"):
        Recognizer(tiny, DecodeSettings(min_pause_seconds=0.0))


# ---- 5. context biasing ----


def test_context_wer_scores_listed_name_words():
    rows = [
        {"audio": "a.wav", "text": "call anna lee now", "context": ["Anna Lee", "bob"]},
        {"audio": "b.wav", "text": "call bob", "context": ["bob"]},
        {"audio": "c.wav", "text": "stop"},
    ]
    rec = StubRecognizer({"a.wav": "call ana lee now", "b.wav": "call bob", "c.wav": "stop"})
    res = evaluate_manifest(rec, rows, details=True)
    assert (res["context_errors"], res["context_words"]) == (1, 3)
    assert res["context_wer"] == pytest.approx(1 / 3)
    assert res["context_rows"] == 2 and res["context_used"]
    assert [c and c.phrases for c in rec.context] == [("anna lee", "bob"), ("bob",), None]
    assert res["utterances_detail"][0]["context_errors"] == 1
    assert "context_words" not in res["utterances_detail"][2]
    # without biasing the same words are scored, and no list reaches the recognizer
    res = evaluate_manifest(rec, rows, use_context=False)
    assert rec.context is None and res["context_wer"] == pytest.approx(1 / 3)
    assert not res["context_used"]
    # one list for every row replaces theirs (and marks the words it names)
    res = evaluate_manifest(rec, rows, context=["stop"])
    assert {c.phrases for c in rec.context} == {("stop",)}
    assert (res["context_errors"], res["context_words"]) == (0, 1)
    # no listed word at all: None, not 0
    assert evaluate_manifest(rec, rows[2:])["context_wer"] is None


def test_bad_context_lists_are_clear_errors(tiny):
    from asr.context import ContextError

    rec = Recognizer(tiny, DecodeSettings(method="greedy", batch_size=2))
    x = [_speechy(0.5, 1), _speechy(0.6, 2)]
    with pytest.raises(ContextError, match="3 lists for 2 inputs"):
        rec.recognize(x, context=[["a"], ["b"], ["c"]])
    with pytest.raises(ContextError, match="expected a list of phrases"):
        rec.recognize(x, context="anna")
    with pytest.raises(ContextError, match=r"context\[1\]: expected a list of phrases"):
        rec.recognize(x, context=[["a"], 5])
    rows = [{"audio": "a.wav", "text": "go", "context": "anna"}]
    with pytest.raises(ContextError, match=r"rows\[0\]: context"):
        evaluate_manifest(StubRecognizer({"a.wav": "go"}), rows)
    with pytest.raises(ValueError, match="context_boost"):
        Recognizer(tiny, DecodeSettings(context_boost=-1.0))
    for bad in (-0.5, float("nan")):
        with pytest.raises(ValueError, match="context_lm_weight must be a finite number >= 0"):
            Recognizer(tiny, DecodeSettings(context_lm_weight=bad))


@pytest.mark.parametrize("method", ["greedy", "beam"])
def test_empty_or_absent_lists_change_nothing(tiny, method):
    rec = Recognizer(tiny, DecodeSettings(method=method, beam=3, batch_size=2))
    x = [_speechy(0.8, 3), _speechy(1.1, 4), _speechy(0.5, 5)]
    base = rec.recognize(x, nbest=1)
    assert rec.recognize(x, nbest=1, context=[]) == base
    assert rec.recognize(x, nbest=1, context=[None, [], None]) == base


@pytest.mark.parametrize("method", ["greedy", "beam"])
def test_fusion_writes_the_listed_phrase_only_where_listed(tiny, method):
    """A random model's posteriors are nearly flat: a large boost makes the search spell the
    listed phrase, in the inputs that list it and in no other."""
    settings = DecodeSettings(method=method, beam=4, batch_size=4, context_boost=12.0)
    rec = Recognizer(tiny, settings)
    x = [_speechy(1.5, 6), _speechy(1.4, 7), _speechy(1.6, 8)]
    base = [h[0].text for h in rec.recognize(x)]
    out = [h[0].text for h in rec.recognize(x, context=[["call mom"], None, ["call mom"]])]
    assert "call mom" in out[0] and "call mom" in out[2], out
    assert out[1] == base[1]
    assert "call mom" not in base[0] and "call mom" not in base[2], base
    # with fusion off the lists do nothing (this model has no attention biasing network)
    off = Recognizer(tiny, DecodeSettings(method=method, beam=4, batch_size=4, context_boost=0.0))
    assert [h[0].text for h in off.recognize(x, context=[["call mom"], None, ["call mom"]])] == base


@pytest.mark.parametrize("method", ["greedy", "beam"])
def test_internal_lm_discount_decodes_lists_and_leaves_others_alone(tiny, method):
    """With the discount on, rows without a list decode exactly as before, and where a list is
    given the listed phrase is written as with fusion alone, scored higher by the discount of
    its tokens (the random predictor gives them some cost)."""
    x = [_speechy(1.5, 6), _speechy(1.4, 7), _speechy(1.6, 8)]
    lists = [["call mom"], None, ["call mom"]]
    plain = Recognizer(
        tiny, DecodeSettings(method=method, beam=4, batch_size=4, context_boost=12.0)
    )
    lm = Recognizer(
        tiny,
        DecodeSettings(
            method=method, beam=4, batch_size=4, context_boost=12.0, context_lm_weight=0.5
        ),
    )
    base = [h[0] for h in plain.recognize(x, context=lists)]
    out = [h[0] for h in lm.recognize(x, context=lists)]
    assert out[1] == base[1]  # no list: the same text and score
    for i in (0, 2):
        assert "call mom" in out[i].text and out[i].text == base[i].text
        assert out[i].score > base[i].score + 0.1  # the discount counted
