"""The emulated processor streaming (hw/runtime.py's `encode_step`, asr/streaming.py): an
artifact loaded from a `.edge` file through the `asr.model_loaders` entry point, decoded by
`Recognizer.stream()` with random piece sizes.

- the step's program (encoder chunk and greedy search) holds no float matrix product, and
  compiles once whatever the piece sizes;
- the encoder step of a whole utterance in one call equals the whole-utterance run bit for bit
  (same caches and mask as the float step, same per-call scales);
- chunk by chunk, the emulator's step matches the fake-quant model's step (the consistency of
  tests/test_hw_runtime.py, in step mode) and the transcripts are identical;
- chunk by chunk against the whole-utterance emulator run, outputs differ by the per-call
  activation scales (convolution inputs, attention values: hw/runtime.py docstring), bounded
  here with a stated tolerance, the fake-quant model's own difference of the same size.

The float model's streaming against its whole run is tests/test_streaming.py's.
"""

from __future__ import annotations

import functools

import jax
import numpy as np
import pytest
from conftest import random_variables
from test_hw_runtime import _primitives

from asr.model_io import LoadedModel, load_model
from asr.models.config import get_config
from asr.models.transducer import Transducer, build_model
from asr.recognizer import DecodeSettings, Recognizer
from asr.streaming import StreamingRecognizer, _stream_fns
from asr.tokenizer import Tokenizer
from export.artifact import write_artifact
from export.exporter import export_model, reference_model
from hw.runtime import EdgeTransducer

SR = 16000
GREEDY = DecodeSettings(method="greedy", max_symbols_per_frame=2)
# one layer, chunks of 3 encoder frames (12 feature frames, 120 ms), 2 chunks of left context:
# 2 s of audio is 17 chunks, far past the cache
CFG = dict(num_layers=1, chunk_size=3, left_chunks=2, predictor="lstm")


@functools.cache
def _models(tmp: str):
    """(emulator loaded from a .edge file, the artifact's fake-quant model), 8-bit."""
    words = "turn on the lights call mom play some jazz set a timer what is the weather"
    tok = Tokenizer.train([words, "stop go yes no one two three four five six seven"], 32)
    cfg = get_config("tiny").replace(vocab_size=tok.vocab_size, **CFG)
    model = build_model(cfg)
    art = export_model(LoadedModel(model, random_variables(model, half=True), tok, cfg, "r"), 8)
    path = f"{tmp}/tiny.edge"
    write_artifact(path, art)
    return load_model(path), reference_model(art)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    return _models(str(tmp_path_factory.mktemp("edge")))


def _audio(seconds: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    n = int(seconds * SR)
    env = 0.3 * (1.2 + np.sin(2 * np.pi * 4.0 * np.arange(n) / SR + rng.uniform(0, 6)))
    return (env * rng.standard_normal(n)).astype(np.float32)


def _encoder_runs(lm: LoadedModel, feats, per: int, whole: bool = True):
    """Encoder outputs of f32[B, T, n_mels] (no padding): (whole-utterance run, one step of all
    T frames, steps of `per` frames chained by a scan), one jitted program (one compile); with
    `whole` False the chained steps only."""
    b, t, f = feats.shape
    pads = np.zeros((b, t), np.float32)
    m = lm.model

    def run(v, x, p):
        s0 = m.apply(v, b, method="init_stream")

        def step(s, xp):
            enc, _, _, s = m.apply(v, xp[0], xp[1], s, method="encode_step")
            return s, enc

        pieces = (
            x.reshape(b, t // per, per, f).swapaxes(0, 1),
            p.reshape(b, -1, per).swapaxes(0, 1),
        )
        _, enc = jax.lax.scan(step, s0, pieces)  # -> [T / per, B, per / 4, J]
        chained = enc.swapaxes(0, 1).reshape(b, -1, enc.shape[-1])
        if not whole:
            return chained
        one = m.apply(v, x, p, s0, method="encode_step")[0]
        return m.apply(v, x, p, method="encode_aux")[0], one, chained

    return jax.device_get(jax.jit(run)(lm.variables, feats, pads))


def _rel(got, want) -> float:
    return float(np.max(np.abs(got - want)) / np.max(np.abs(want)))


def test_edge_encoder_step_against_whole_and_fake_quant(models):
    edge, ref = models
    assert isinstance(edge.model, EdgeTransducer)
    feats = np.random.default_rng(0).standard_normal((1, 96, 80)).astype(np.float32)
    whole, one_call, chunked = _encoder_runs(edge, feats, 12)
    np.testing.assert_array_equal(one_call, whole)  # same scales: the step's caches are exact
    ref_chunked = _encoder_runs(ref, feats, 12, whole=False)
    # int8 codes flipped by float rounding, as in tests/test_hw_runtime.py (measured 1.7%)
    assert _rel(chunked, ref_chunked) < 0.03
    # per-call scales of convolution inputs and attention values: a few int8 steps of the
    # largest output (measured 3.8%; the fake-quant model's own chunked-vs-whole, 3.6%)
    assert 0 < _rel(chunked, whole) < 0.08


def test_edge_streams_like_the_fake_quant_model_compiling_once(models):
    edge, ref = models
    # 1.5 s: 13 chunks, past the 2-chunk cache. A random model writes on near-ties: one int8
    # code flipped by float rounding can swap a token (at 2 s here, one word late in the text)
    audios = [_audio(s, 1) for s in (0.02, 1.5)]
    rng = np.random.default_rng(1)
    results = {}
    for name, lm in (("edge", edge), ("ref", ref)):
        stream = Recognizer(lm, GREEDY).stream()
        results[name] = []
        for audio in audios:
            i = 0
            while i < len(audio):
                n = int(rng.choice([0, 1, 160, 399, 1000, 2500, 7000]))
                stream.push(audio[i : i + n])
                i += n
            stream.finish()
            results[name].append(stream.result)
        assert _stream_fns(lm.model, 2).step._cache_size() == 1  # whatever the push sizes
    for got, want in zip(results["edge"], results["ref"], strict=True):
        assert got.text == want.text
        assert got.score == pytest.approx(want.score, abs=0.05 * (1 + abs(want.score)))
        assert got.encoder.frames == want.encoder.frames
    assert len(results["edge"][1].text) > 10  # a random model writes a lot: a strict comparison


def test_edge_stream_step_runs_every_product_on_the_npu(models):
    edge, _ = models
    rec = Recognizer(edge, GREEDY)
    fns = _stream_fns(edge.model, 2)
    enc, dec = fns.start(rec._variables)
    n = 4 * edge.config.chunk_size
    x, p = np.zeros((1, n, 80), np.float32), np.zeros((1, n), np.float32)
    prims = _primitives(jax.make_jaxpr(fns.step)(rec._variables, enc, dec, x, p).jaxpr)
    assert prims.get("dot_general", 0) == 0 and prims.get("conv_general_dilated", 0) == 0, prims
    assert prims["edge_decode_weights"] >= len(edge.model.layout), prims
    assert prims["edge_int_matmul"] >= len(edge.model.layout), prims


class _NoStep(Transducer):
    """A model class overriding `encode` but not `encode_step`: what cannot stream."""

    def encode(self, feats, feat_paddings, train=False, context=None):
        return Transducer.encode(self, feats, feat_paddings, train, context)


def test_a_model_without_its_own_step_is_refused(models):
    edge, _ = models
    model = _NoStep(edge.config, build_model(edge.config).predictor_cls)
    lm = LoadedModel(model, {}, edge.tokenizer, edge.config, "no step")
    with pytest.raises(ValueError, match="_NoStep overrides encode but not encode_step"):
        StreamingRecognizer(lm)
