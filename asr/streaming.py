"""Streaming recognition: audio fed in pieces, partial transcripts as it arrives.

    stream = StreamingRecognizer(load_model("default"))    # or Recognizer(...).stream()
    for piece in microphone():                             # f32[n] 16 kHz, any n
        partial = stream.push(piece)                       # the text so far
    text = stream.finish()                                 # final text; ready for the next one

How a piece travels. `asr.features.FeatureStream` turns samples into log-mel frames exactly as
`log_mel` of the whole (bit for bit); frames wait on the host until they make a whole encoder
chunk (4 * chunk_size frames: chunk_size * 40 ms, 320 ms for the shipped model), and each chunk
goes through one jitted step: `Transducer.encode_step` (the encoder's caches in an
`asr.models.encoder.EncoderState`) then `asr.decoding.greedy_frames` over the chunk's encoder
frames (predictor state, scores and shallow-fusion state carried in a `GreedyState` whose token
buffer, chunk_size * max_symbols_per_frame long, is drained every chunk). The step has one
shape (batch 1, one chunk), so it compiles once per model and settings (kept in a module-level
cache, with the weights as an argument, like the recognizer's decode function); the states stay
on the device, only the chunk's features go in and its tokens come out. `finish` appends what
`Recognizer` appends to every input (`DecodeSettings.tail_padding_seconds` of silence), pads
the last partial chunk (paddings 1.0) and decodes it.

A float model's transcript equals `Recognizer.recognize` with greedy settings on the same audio
(tested with random piece sizes; the encoder outputs differ by float rounding only, about 1e-6),
for inputs of at most `max_segment_seconds`: a stream is never cut into segments. Context lists
work as in `Recognizer` (shallow fusion and, for a model trained with one, the attention biasing
network). For a model with a phone head, a stream with a list keeps each chunk's encoder states
(before the joiner's projection) and projected frames on the host, and `finish` runs the
recognizer's phonetic second pass (`asr.phonetic`) on the whole utterance: the head over all the
states at once (its convolution spans chunk boundaries), the transducer scoring the sentences.
The final text then equals `Recognizer`'s; the partial texts are the first pass's.

Latency: a frame's tokens come out when its chunk is complete (the encoder's attention sees the
whole chunk); nothing waits for the end of the utterance except the tail silence.

The emulated edge processor (`hw.runtime`, a model loaded from a `.edge` file) streams the same
way: its `encode_step` runs every weight product on the NPU primitives. Its transcript can differ
slightly from its own whole-utterance run, as on the device: the int8 activations of a
convolution input and of the attention values are scaled over every frame of one call, so per
step here (the chunk and its cached context) and per utterance whole (`hw.runtime` docstring).
The fake-quantized model (`asr.models.quant`) streams with the same per-step scales.

Not built: streaming beam search (the settings must ask for greedy); unlimited left context
(`left_chunks` < 0: no bounded cache); a model class that overrides `encode` but not
`encode_step` (its step would not be the model it claims to be) is refused.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from asr.audio import SAMPLE_RATE, validate_audio
from asr.context import ContextList
from asr.decoding import (
    context_fusion,
    decoder_fns,
    greedy_frames,
    greedy_init,
    greedy_result,
)
from asr.features import FeatureStream
from asr.model_io import LoadedModel
from asr.models.encoder import SUBSAMPLING
from asr.models.transducer import Transducer
from asr.recognizer import (
    FRAME_BUCKET,
    DecodeSettings,
    EncoderCost,
    Hypothesis,
    Recognizer,
    Timing,
    _as_context,
)

GREEDY = DecodeSettings(method="greedy")


class _StreamFns(NamedTuple):
    """The jitted functions of a stream (shared by the streams of one model and settings).

    start(variables, graph) -> (EncoderState, GreedyState) of one stream before any audio;
    step(variables, enc_state, dec_state, feats f32[1, 4C, n_mels], feat_paddings f32[1, 4C],
      graph, context) -> (enc_state, dec_state, tokens int32[1, C * S], lengths int32[1],
      costs {"macs": f32[1], "frames": f32[1], "expensive": f32[1] (branching)});
    score(dec_state, graph) -> f32[1] the greedy score so far (fusion's final term added).
    graph: the stacked context graph [1, N, V] or None; context: attention arrays or None.
    """

    start: Callable
    step: Callable
    score: Callable
    compiled: set  # shapes already run once


def _stream_fns(model: Transducer, max_symbols: int, states: bool = False) -> _StreamFns:
    """The stream functions of `model` (built once per arguments). `states`: the step also
    returns the chunk's encoder states before the joiner's projection, its projected frames
    and their paddings (f32[1, C, d_model], f32[1, C, J], f32[1, C]), for the phonetic second
    pass at `finish`."""
    return _build_stream_fns(model, int(max_symbols), bool(states))


@functools.lru_cache(maxsize=8)
def _build_stream_fns(model: Transducer, max_symbols: int, states: bool) -> _StreamFns:
    c = model.config
    buffer = c.chunk_size * max_symbols  # tokens one chunk can emit at most

    def start(variables, graph=None):
        fusion = None if graph is None else context_fusion(graph)
        enc = model.apply(variables, 1, method="init_stream")
        return enc, greedy_init(decoder_fns(model, variables), 1, buffer, fusion)

    def step(variables, enc_state, dec_state, feats, feat_paddings, graph=None, context=None):
        kw = {} if context is None else {"context": context}
        if states:
            enc_p, enc_pad, aux, enc_state, enc = model.apply(
                variables, feats, feat_paddings, enc_state, method="encode_step_states", **kw
            )
        else:
            enc_p, enc_pad, aux, enc_state = model.apply(
                variables, feats, feat_paddings, enc_state, method="encode_step", **kw
            )
        fusion = None if graph is None else context_fusion(graph)
        fns = decoder_fns(model, variables)
        dec_state = greedy_frames(fns, dec_state.drain(), enc_p, enc_pad, max_symbols, fusion)
        valid = 1.0 - enc_pad
        costs = {"macs": jnp.sum(aux["macs"] * valid, 1), "frames": jnp.sum(valid, 1)}
        if "expensive" in aux:
            costs["expensive"] = jnp.sum(aux["expensive"] * valid, 1)
        out = (enc_state, dec_state, dec_state.tokens, dec_state.lengths, costs)
        return (*out, (enc, enc_p, enc_pad)) if states else out

    def score(dec_state, graph=None):
        return greedy_result(dec_state, None if graph is None else context_fusion(graph))[2]

    return _StreamFns(jax.jit(start), jax.jit(step), jax.jit(score), set())


def _has_stream_step(model: Transducer) -> bool:
    """A subclass that overrides `encode` must override `encode_step` too (the emulated
    processor's does), else its step would run the inherited modules, not the model it claims
    to be."""
    cls = type(model)
    return cls.encode is Transducer.encode or cls.encode_step is not Transducer.encode_step


def _has_state_step(model: Transducer) -> bool:
    """The model's `encode_step_states` runs the step its `encode_step` runs."""
    cls = type(model)
    return (
        cls.encode_step is Transducer.encode_step
        or cls.encode_step_states is not Transducer.encode_step_states
    )


class StreamingRecognizer:
    """One stream of audio at a time (module docstring): `push` pieces, `finish` the utterance.

    Args:
      loaded: the model (`asr.model_io.load_model`); its config must have a bounded left
        context (left_chunks >= 0).
      settings: decode settings; the method must be "greedy" (`max_symbols_per_frame`,
        `tail_padding_seconds`, `context_boost` and `context_attention` apply).
      context: names to bias toward (a `ContextList` or a list of phrases) or None; `reset`
        changes it.

    After `finish`, `result` is the utterance's `Hypothesis` (text, greedy score, the encoder's
    `EncoderCost`); `timing` accumulates audio, compute and one-time compile seconds.
    """

    def __init__(
        self,
        loaded: LoadedModel,
        settings: DecodeSettings = GREEDY,
        context=None,
        *,
        _recognizer: Recognizer | None = None,
    ):
        if settings.method != "greedy":
            raise ValueError(
                f"streaming decodes greedily: settings.method must be 'greedy', got "
                f"{settings.method!r} (streaming beam search is not built)"
            )
        model = loaded.model
        if not _has_stream_step(model):
            raise ValueError(
                f"{type(model).__name__} overrides encode but not encode_step: it has no stream "
                "step of its own (decode it whole with Recognizer)"
            )
        if settings.max_symbols_per_frame < 1:
            raise ValueError(
                f"max_symbols_per_frame must be >= 1, got {settings.max_symbols_per_frame}"
            )
        self._rec = _recognizer or Recognizer(loaded, settings)
        self.loaded, self.settings = loaded, settings
        if self._rec._phones is not None and not _has_state_step(model):
            raise ValueError(
                f"{type(model).__name__} overrides encode_step but not encode_step_states: "
                "its phone head cannot read its states (decode with phonetic_margin=None)"
            )
        self._fns = _stream_fns(model, settings.max_symbols_per_frame)
        self._chunk = SUBSAMPLING * model.config.chunk_size  # feature frames per step
        self.timing = Timing(seen=self._fns.compiled)
        self.result: Hypothesis | None = None
        self._context: ContextList | None = None
        self.reset(context)

    def reset(self, context=...) -> None:
        """Drops the utterance in progress; `context` (a list of phrases, a `ContextList` or
        None) replaces the stream's list, left out: the same list."""
        if context is not ...:
            self._context = _as_context(context, "context")
        self._graph, self._attention = self._rec._context_inputs([self._context])
        # the phonetic second pass (a model with a phone head, a list): the step also hands out
        # the chunk's encoder states, kept until `finish`
        self._phonetic = self._rec._phones is not None and self._context is not None
        self._fns = _stream_fns(
            self.loaded.model, self.settings.max_symbols_per_frame, self._phonetic
        )
        self._states: list[np.ndarray] = []  # per step: valid frames' states
        self._enc_p: list[np.ndarray] = []  # per step: valid frames' projected frames
        self._features = FeatureStream(self.loaded.config.n_mels)
        self._pending = np.zeros((0, self.loaded.config.n_mels), np.float32)
        self._tokens: list[int] = []
        self._samples = 0
        self._costs: dict[str, float] = {}
        self._enc, self._dec = self._fns.start(self._rec._variables, self._graph)

    @property
    def text(self) -> str:
        """The transcript so far."""
        return self.loaded.tokenizer.decode(self._tokens)

    def push(self, samples) -> str:
        """Feeds f32[n] 16 kHz samples (any n, 0 included; integer PCM and [n, channels] as
        `asr.audio.validate_audio` takes them) -> the transcript so far."""
        x = np.asarray(samples)
        if x.size:
            x = validate_audio(x, SAMPLE_RATE, name="samples")
            self._samples += x.size
            self.timing.audio_s += x.size / SAMPLE_RATE
        else:
            x = np.zeros(0, np.float32)
        t0, c0 = time.perf_counter(), self.timing.compile_s
        self._feed(self._features.push(x))
        self.timing.compute_s += time.perf_counter() - t0 - (self.timing.compile_s - c0)
        return self.text

    def finish(self) -> str:
        """Ends the utterance: decodes what is pending with `tail_padding_seconds` of silence
        after it, sets `result`, resets the stream (same context) and returns the final text
        ("" when no samples came)."""
        if self._samples == 0:
            self.result = Hypothesis("", 0.0, None)
            self.reset()
            return ""
        t0, c0 = time.perf_counter(), self.timing.compile_s
        tail = np.zeros(round(self.settings.tail_padding_seconds * SAMPLE_RATE), np.float32)
        feats = np.concatenate([self._features.push(tail), self._features.finish()])
        self._feed(feats, final=True)
        score = float(jax.device_get(self._fns.score(self._dec, self._graph))[0])
        text = self.text
        if self._phonetic and text and self._states:
            text = self._second_pass(text)
        self.timing.compute_s += time.perf_counter() - t0 - (self.timing.compile_s - c0)
        c = self._costs
        cost = EncoderCost(
            macs=c["macs"],
            frames=int(round(c["frames"])),
            audio_s=self._samples / SAMPLE_RATE,
            expensive_frames=c.get("expensive"),
        )
        self.result = Hypothesis(text, score, cost)
        self.reset()
        return self.result.text

    def _second_pass(self, text: str) -> str:
        """The recognizer's phonetic second pass on the whole utterance: the phone head runs on
        every chunk's states at once (its convolution spans chunk boundaries as in `Recognizer`),
        compiled apart from the steps."""
        states = np.concatenate(self._states)
        key = ("phonetic", self._rec._signature, -(-len(states) // FRAME_BUCKET))
        c0 = time.perf_counter()
        lp = self._rec._phone_log_probs(states)
        text = self._rec._second_pass(text, lp, np.concatenate(self._enc_p), self._context)
        if key not in self.timing.seen:  # first use of this length bucket: compile time
            self.timing.compile_s += time.perf_counter() - c0
            self.timing.seen.add(key)
        return text

    def _feed(self, feats: np.ndarray, final: bool = False) -> None:
        """Queues f32[k, n_mels] frames and runs every whole chunk; with `final` also the rest,
        padded to a chunk."""
        pending = np.concatenate([self._pending, feats])
        n = self._chunk
        while len(pending) >= n or (final and len(pending)):
            piece = pending[:n]
            x = np.zeros((1, n, pending.shape[1]), np.float32)
            x[0, : len(piece)] = piece
            pad = np.ones((1, n), np.float32)
            pad[0, : len(piece)] = 0.0
            self._step(x, pad)
            pending = pending[n:]
        self._pending = pending

    def _step(self, feats: np.ndarray, feat_paddings: np.ndarray) -> None:
        args = (self._rec._variables, self._enc, self._dec, feats, feat_paddings)
        args += (self._graph, self._attention)
        shape = (
            self._rec._signature,
            None if self._graph is None else (self._graph.goto.shape, self._graph.uses_lm),
            None if self._attention is None else self._attention[0].shape,
            self._phonetic,
        )
        if shape not in self.timing.seen:  # first use: compile (and run once), timed apart
            c0 = time.perf_counter()
            jax.block_until_ready(self._fns.step(*args))
            self.timing.compile_s += time.perf_counter() - c0
            self.timing.seen.add(shape)
        self._enc, self._dec, tokens, lengths, costs, *extra = self._fns.step(*args)
        tokens, lengths, costs = jax.device_get((tokens, lengths, costs))
        if extra:  # the phonetic pass's inputs, valid frames only
            states, enc_p, enc_pad = jax.device_get(extra[0])
            n = int(round(float(np.sum(1.0 - enc_pad[0]))))
            self._states.append(states[0, :n])
            self._enc_p.append(enc_p[0, :n])
        self._tokens.extend(int(t) for t in tokens[0, : int(lengths[0])])
        for k, v in costs.items():
            self._costs[k] = self._costs.get(k, 0.0) + float(v[0])
