"""Streaming (asr/models/encoder.py's chunk step, asr/streaming.py): the encoder run chunk by
chunk with caches equals the whole-utterance encoder on every valid frame (plain, branching with
the same choices, with the biasing network; several left contexts, a final partial chunk,
utterances much longer than the cache, a batch row ending mid-stream); the streaming recognizer's
greedy transcripts equal `Recognizer`'s for random piece sizes, with one compiled step; and the
errors say what is wrong.
"""

from __future__ import annotations

import jax
import numpy as np
import pytest
from conftest import random_variables

from asr.model_io import LoadedModel
from asr.models import build_model, get_config
from asr.models.transducer import Transducer
from asr.recognizer import DecodeSettings, Recognizer
from asr.streaming import StreamingRecognizer, _stream_fns
from asr.tokenizer import Tokenizer

SR = 16000
TINY = get_config("tiny").replace(vocab_size=16, chunk_size=3)
BRANCH = dict(encoder="branching", branch_rank=4, branch_ff=8, arbiter_dim=8)
TOL = 1e-5  # float32; measured max |difference| about 3e-6


def _stream(model, variables, feats, pads, chunks_per_step, context=None):
    """The encoder step over [B, T] features in pieces of `chunks_per_step` chunks (cycled), the
    last one padded -> (enc_p, aux) concatenated over the steps, and the jitted step."""
    c = model.config
    per = 4 * c.chunk_size
    b, t, f = feats.shape
    n = -(-t // per) * per
    x = np.zeros((b, n, f), np.float32)
    x[:, :t] = feats
    p = np.ones((b, n), np.float32)
    p[:, :t] = pads
    step = jax.jit(
        lambda v, x, p, s: model.apply(v, x, p, s, context, method=Transducer.encode_step)
    )
    state = model.apply(variables, b, method=Transducer.init_stream)
    outs, auxs, s, k = [], [], 0, 0
    while s < n:
        e = min(n, s + per * chunks_per_step[k % len(chunks_per_step)])
        enc, _, aux, state = step(variables, x[:, s:e], p[:, s:e], state)
        outs.append(enc)
        auxs.append(aux)
        s, k = e, k + 1
    aux = {key: np.concatenate([a[key] for a in auxs], 1) for key in auxs[0]}
    return np.concatenate(outs, 1), aux, step


@pytest.mark.parametrize(
    "extra, steps",
    [
        (dict(left_chunks=0, conv_kernel=0), (1,)),  # no cache but the subsampling's
        (dict(left_chunks=2), (1, 2)),  # two chunks in some steps: one mask for both
        (dict(left_chunks=1, **BRANCH), (1,)),
        (dict(left_chunks=1, branch_attend=True, **BRANCH), (1, 2)),
        (dict(left_chunks=3, bias_dim=16, bias_heads=2, bias_encoder="transformer"), (1,)),
    ],
    ids=["left0-noconv", "left2-multichunk", "branching", "branching-attend", "biasing"],
)
def test_encoder_step_equals_whole_utterance(extra, steps):
    cfg = TINY.replace(**extra)
    model = build_model(cfg)
    v = random_variables(model, seed=3)
    rng = np.random.default_rng(0)
    t = 157  # 40 encoder frames: 14 chunks of 3, the last partial; the cache holds <= 9
    feats = rng.standard_normal((2, t, cfg.n_mels)).astype(np.float32)
    pads = np.zeros((2, t), np.float32)
    pads[1, 93:] = 1.0  # row 1 ends mid-stream (its chunk padded, the later ones all padding)
    kw = {}
    if cfg.bias_dim:
        kw["context"] = (
            rng.integers(2, 16, (2, 3, 4)).astype(np.int32),
            np.array([[[0, 0, 1, 1]] * 3, [[0, 1, 1, 1], [1] * 4, [1] * 4]], np.float32),
        )
    whole, wpads, waux = jax.jit(
        lambda v, x, p: model.apply(v, x, p, method=Transducer.encode_aux, **kw)
    )(v, feats, pads)
    got, aux, step = _stream(model, v, feats, pads, steps, kw.get("context"))
    k = whole.shape[1]
    valid = 1.0 - np.asarray(wpads)
    diff = np.abs((got[:, :k] - np.asarray(whole)) * valid[..., None]).max()
    assert diff < TOL, diff
    np.testing.assert_array_equal(aux["macs"][:, :k] * valid, np.asarray(waux["macs"]) * valid)
    if cfg.encoder == "branching":
        choices = aux["expensive"][:, :k] * valid
        np.testing.assert_array_equal(choices, np.asarray(waux["expensive"]) * valid)
        assert 0.1 < choices.sum() / valid.sum() < 0.9, choices  # both branches ran
    assert step._cache_size() == len(set(steps))  # one compile per step length


def test_step_errors_say_what_is_wrong():
    model = build_model(TINY.replace(left_chunks=1))
    v = random_variables(model)
    state = model.apply(v, 1, method=Transducer.init_stream)
    x, p = np.zeros((1, 12, 80), np.float32), np.zeros((1, 12), np.float32)
    with pytest.raises(ValueError, match=r"feats must be \[B, T, 80\]"):
        model.apply(v, x[..., :40], p, state, method=Transducer.encode_step)
    with pytest.raises(ValueError, match="whole chunks.*12 feature frames.*got T = 8"):
        model.apply(v, x[:, :8], p[:, :8], state, method=Transducer.encode_step)
    with pytest.raises(ValueError, match="init_stream with the same batch"):
        model.apply(v, np.zeros((2, 12, 80)), np.zeros((2, 12)), state, method="encode_step")
    unlimited = build_model(TINY.replace(left_chunks=-1))
    with pytest.raises(ValueError, match="bounded left context.*left_chunks=-1"):
        unlimited.apply(v, 1, method=Transducer.init_stream)


def _loaded(cfg=TINY, seed=0, **extra) -> LoadedModel:
    tok = Tokenizer.train(["turn on the lights", "call mom", "stop", "go"] * 20, vocab_size=24)
    cfg = cfg.replace(vocab_size=tok.vocab_size, **extra)
    model = build_model(cfg)
    return LoadedModel(model, random_variables(model, seed=seed), tok, cfg, "tiny-random")


def _speechy(seconds: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    n = int(seconds * SR)
    env = 0.3 * (1.2 + np.sin(2 * np.pi * 4.0 * np.arange(n) / SR + rng.uniform(0, 6)))
    return (env * rng.standard_normal(n) + 1e-3 * rng.standard_normal(n)).astype(np.float32)


def _push_randomly(stream: StreamingRecognizer, audio: np.ndarray, rng) -> list[str]:
    partials, i = [], 0
    while i < len(audio):
        n = int(rng.choice([0, 1, 37, 160, 399, 1000, 2500, 7000]))
        partials.append(stream.push(audio[i : i + n]))
        i += n
    return partials


def test_streaming_greedy_equals_recognizer_and_compiles_once():
    """A model with the biasing network, decoded with a context list (shallow fusion and
    attention biasing; the shipped model's test below has neither); random piece sizes, empty
    pieces too, and an input shorter than one window."""
    loaded = _loaded(left_chunks=2, bias_dim=16, bias_heads=2, bias_encoder="transformer")
    rec = Recognizer(loaded, DecodeSettings(method="greedy", max_symbols_per_frame=2, batch_size=4))
    audios = [_speechy(s, i) for i, s in enumerate([0.02, 1.3, 3.7])]
    context = ["call mom", "stop"]
    whole = rec.recognize(audios, context=context)
    stream = rec.stream(context=context)
    from asr.models.biasing import ContextEntries

    assert isinstance(stream._attention, ContextEntries)  # phrases encoded once, not per step
    rng = np.random.default_rng(0)
    for audio, hyps in zip(audios, whole, strict=True):
        partials = _push_randomly(stream, audio, rng)
        assert stream.finish() == hyps[0].text
        assert hyps[0].text.startswith(partials[-1].rstrip()), (partials[-1], hyps[0].text)
        assert stream.result.score == pytest.approx(hyps[0].score, abs=1e-3)
        assert stream.result.encoder.frames == hyps[0].encoder.frames
        np.testing.assert_allclose(stream.result.encoder.macs, hyps[0].encoder.macs)
    assert len(hyps[0].text) > 20  # a random model writes a lot: a strict comparison
    assert _stream_fns(loaded.model, 2).step._cache_size() == 1  # whatever the push sizes
    assert stream.finish() == "" and stream.result.text == ""  # nothing pushed


def test_streaming_runs_the_phonetic_second_pass_as_the_recognizer_does():
    """A model with a phone head and a list: `finish` runs the second pass on the whole
    utterance (the head over every chunk's states, the transducer scoring the sentences), so
    the final text equals `Recognizer`'s greedy one. A margin far below zero makes the pass
    write its best candidate whatever the random head says, so the comparison is strict."""
    import dataclasses

    import jax.numpy as jnp

    from asr.phonetic import PhoneHead, PhoneModel, word_phones

    base = _loaded(left_chunks=2)
    inv = tuple(sorted({p for w in ("call", "mom", "kennedy", "zoe") for p in word_phones(w)}))
    head = PhoneHead(len(inv), hidden=16, kernel=3)
    dim = base.config.d_model
    params = head.init(jax.random.PRNGKey(1), jnp.zeros((1, 8, dim)), jnp.zeros((1, 8)))
    loaded = dataclasses.replace(base, phones=PhoneModel(jax.device_get(params), inv, 16, 3))
    settings = DecodeSettings(
        method="greedy", max_symbols_per_frame=2, phonetic_margin=-1e6, batch_size=2
    )
    rec = Recognizer(loaded, settings)
    off = Recognizer(loaded, dataclasses.replace(settings, phonetic_margin=None))
    audios = [_speechy(s, 10 + i) for i, s in enumerate([1.1, 4.3])]  # 4.3 s: many chunks
    context = ["kennedy", "zoe"]
    whole = [h[0].text for h in rec.recognize(audios, context=context)]
    plain = [h[0].text for h in off.recognize(audios, context=context)]
    assert whole != plain and any("kennedy" in t or "zoe" in t for t in whole)  # the pass ran
    stream = rec.stream(context=context)
    rng = np.random.default_rng(2)
    for audio, want, before in zip(audios, whole, plain, strict=True):
        partials = _push_randomly(stream, audio, rng)
        assert before.startswith(partials[-1].rstrip())  # partials: the first pass
        assert stream.finish() == want
        assert stream.result.text == want
    # without a list: no states kept, the first pass's text
    stream.reset(context=None)
    _push_randomly(stream, audios[0], rng)
    assert stream.finish() == off.recognize([audios[0]])[0][0].text


def test_shipped_model_streams_its_transcript():
    """The shipped model (LSTM predictor, 8 chunks of 8 frames of left context) on synthesized
    speech longer than its cache: same text as whole-utterance greedy, partials growing."""
    from asr.model_io import ModelLoadError, load_model
    from train.corpus.espeak import synthesize

    try:
        loaded = load_model("default")
    except ModelLoadError as e:
        pytest.skip(str(e))
    text = "call mom and set a timer for seven minutes then play some jazz"
    audio = synthesize(text, voice="en-us", rate_wpm=170)[0].astype(np.float32)
    assert len(audio) / SR > 64 * 0.04  # longer than the attention cache (2.56 s)
    rec = Recognizer(loaded, DecodeSettings(method="greedy"))
    want = rec.recognize([audio])[0][0].text
    assert want.startswith("call mom"), want
    stream = rec.stream()
    partials = _push_randomly(stream, audio, np.random.default_rng(1))
    assert stream.finish() == want
    assert partials[0] == "" and "call mom" in partials[-1]


def test_streaming_recognizer_refuses_what_it_cannot_do():
    loaded = _loaded()
    with pytest.raises(ValueError, match="method must be 'greedy'.*beam"):
        StreamingRecognizer(loaded, DecodeSettings())
    with pytest.raises(ValueError, match="method must be 'greedy'"):
        Recognizer(loaded).stream()
    with pytest.raises(ValueError, match="bounded left context"):
        StreamingRecognizer(_loaded(left_chunks=-1))
    from asr.audio import AudioError

    stream = StreamingRecognizer(loaded)
    with pytest.raises(AudioError, match="samples.*NaN"):
        stream.push(np.array([0.0, np.nan], np.float32))
