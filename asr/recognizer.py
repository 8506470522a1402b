"""Recognizing audio with a loaded model: batching, decoding, n-best, evaluation on a manifest.

Audio is sorted by length and cut into batches of at most `batch_size` utterances padded to a
multiple of `FRAME_BUCKET` frames (and to a fixed batch size), so a handful of shapes are
compiled once and reused. The real-time factor excludes each shape's one-time compilation
(reported separately as `compile_s`), so it describes steady-state device speed.

The jitted decode function is built once per (model, trace-relevant settings) and kept in a
module-level cache, with the weights as an argument: a new `Recognizer` for the same model (new
weights every evaluation during training, say) reuses every compiled shape.

Inputs longer than `DecodeSettings.max_segment_seconds` are cut by `asr.segment.segment_bounds`
into segments no longer than that, at every pause of `min_pause_seconds` or more and, where the
length still requires, at the best place available (a pause if any); the segments (of all long
inputs together) are decoded as ordinary batch items, in batches of their own, and each input's
segment texts are joined in order (its n-best is that one joined 1-best, scores summed). So
memory stays flat and time grows linearly with the length of the input, and inputs of at most
that length are decoded whole, exactly as without segmentation (same batches, bit-identical
hypotheses) whatever else is in the call.

Context biasing: every input may come with a context list (`asr.context`: the user's names).
Two techniques read it and combine: shallow fusion, a context graph of the tokenized phrases
whose boosts the beam (or greedy) search adds to its scores (`asr.decoding.context_graph`;
`DecodeSettings.context_boost`, 0 turns it off), and, for a model trained with one, the
attention biasing network that the encoder output attends through (`asr.models.biasing`;
`DecodeSettings.context_attention`). Graphs are built once per distinct list (cached) and
padded to a few sizes, so new lists do not recompile. A long input's segments share its list.

Encoder cost: the decode pass runs the model's `encode_aux`, whose per-frame multiply-accumulates
(and, for a branching encoder, per-frame branch choices: `asr.models.branching`) are summed per
utterance over its unpadded encoder frames in the same jitted program, so counting costs no
second encoder pass. Each hypothesis carries its input's `EncoderCost` (a long input's segments
summed); `evaluate_manifest` reports `encoder_macs_per_second` and, for a branching model,
`expensive_frame_share`. The frames of the silence appended to every input
(`DecodeSettings.tail_padding_seconds`) are counted like any other: the encoder does run them.

Streaming: `Recognizer.stream()` (greedy settings) returns an `asr.streaming.StreamingRecognizer`
that takes audio in pieces and gives partial texts, with this recognizer's weights and context
lists; its final text is `recognize`'s greedy text for inputs of at most `max_segment_seconds`.

`evaluate_manifest` scores rows with `text` by word error rate and rows with `keywords` (and no
`text`) by keyword recall; unreadable rows are left out of both and reported. Rows with a
`context` field are decoded with that list, and `context_wer` scores the reference words that
belong to one of its phrases.
"""

from __future__ import annotations

import functools
import math
import operator
import time
from collections import Counter, OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from tqdm import tqdm

from asr.audio import SAMPLE_RATE, AudioError, load_audio, validate_audio
from asr.context import (
    ContextError,
    ContextList,
    make_context,
    phrase_occurrences,
    tokenize_phrases,
)
from asr.decoding import (
    NEG,
    beam_search,
    build_context_graph,
    context_fusion,
    decoder_fns,
    greedy_search,
    stack_graphs,
    strip,
)
from asr.features import HOP_LENGTH, log_mel
from asr.lattice import rnnt_loss
from asr.manifest import ManifestError
from asr.model_io import LoadedModel
from asr.models.transducer import Transducer
from asr.phonetic import PhoneHead, correct_names
from asr.segment import segment_bounds
from asr.text import (
    group_error_rates,
    group_key,
    marked_word_errors,
    normalize_text,
    utterance_errors,
    word_error_rate,
)

FRAME_BUCKET = 128
MIN_SEGMENT_SECONDS = 1.0  # smallest allowed max_segment_seconds


@dataclass(frozen=True)
class DecodeSettings:
    method: str = "beam"  # "beam" (transducer beam search) or "greedy"
    beam: int = 4  # hypotheses kept per frame (beam only)
    max_symbols_per_frame: int = 3  # greedy only: non-blank symbols per frame at most
    # beam only: non-blank symbols per frame at most; 1 = modified beam search (one symbol
    # consumes the frame), > 1 = standard topology with that many expansion sub-steps per frame.
    # 2 by default: with 1, fast speech lost letters ("learn" -> "lear"); measured in the README.
    beam_symbols_per_frame: int = 2
    batch_size: int = 8
    # inputs longer than this (seconds) are cut at pauses into segments at most this long,
    # decoded as separate batch items and joined (see module docstring); >= 1.0
    max_segment_seconds: float = 20.0
    # inputs longer than max_segment_seconds are also cut at every pause at least this long
    # (seconds; None: only where the length requires). The shipped model, trained on single
    # requests, stops after the first request of a segment holding several: 0.2 took a 1-minute
    # file of 24 synthesized requests from 79% WER to 4% (train/benchmarks/long_audio.py)
    min_pause_seconds: float | None = 0.2
    # seconds of silence put after every input (and segment) before decoding, so the streaming
    # encoder sees the end of the last word: the stage-9 model lost final letters of clips that
    # end right at the last phoneme ("set a timer" -> "set a time"); 0.3 s fixed them
    tail_padding_seconds: float = 0.32
    # shallow fusion: log-score added per token of a partial match of a context phrase (taken
    # back when the match fails, kept when it completes); 0 turns shallow fusion off. 0.5 chosen
    # on a dev set of held-out-name requests (seed 100): the best WER of 0.5-3 (README)
    context_boost: float = 0.5
    # shallow fusion: share lambda of the internal LM's cost of a listed name's tokens given back
    # (`asr.decoding.context_graph`); 0 turns the discount off. Off by default: on the dev set
    # of held-out-name requests (seed 100) 0.1 cut name-word errors from 98.9% to 96.6% at about
    # the same WER, and on the test sets it did harm (requests without names 2.19% -> 3.05%
    # WER with 100 distractors; README)
    context_lm_weight: float = 0.0
    # models with an attention biasing network: feed it the context lists (False: the network
    # sees empty lists, its learned "no-bias" entry only)
    context_attention: bool = True
    # a model with a phone head (`asr.phonetic`): after the search, the `phonetic_top_k` listed
    # names its phones rank best are tried in the best hypothesis in place of up to 2 words, and
    # the best try replaces it when its phones fit the audio better by more than this many nats
    # (log-likelihood), counting `phonetic_transducer_weight` times the transducer's own
    # log-likelihood change too; None turns it off. Margin 1 and weight 0.2 chosen with the
    # head before the Kokoro requests on the dev set of held-out-name requests (seed 100, lists
    # of 100; 80 requests with names, the first 600 without): 46 word errors on the named
    # requests (none: 118) and 39 on the others (none: 39), against 46 and 41 for the phones
    # alone at margin 4; kept for the shipped head, which gets 47 on those named requests, 17 on
    # the first 250 without names (none: 18) and 250 on 300 Kokoro requests without names
    # (fusion alone 247; README, "Phonetic name matching")
    phonetic_margin: float | None = 1.0
    phonetic_transducer_weight: float = 0.2
    phonetic_top_k: int = 3
    # ... and, when set, only names whose phones match their best span to within this many nats
    # per phone of the frame-best phones are tried. Off by default (measured with the head
    # before the Kokoro requests): on the dev set every name
    # the pass wrote rightly matched to within 2.52 nats, and -2.8 gave 45 / 39 word errors
    # against 46 / 39, but on the test sets it cost names (27.9% -> 30.1% name-word errors with
    # lists of 100) and on the Kokoro voices the names written over other words matched as well
    # (22.56% -> 22.33% WER on their requests without names; README, "Phonetic name matching")
    phonetic_min_spot: float | None = None

    def to_dict(self) -> dict:
        return {
            "method": self.method,
            "beam": self.beam,
            "max_symbols_per_frame": self.max_symbols_per_frame,
            "beam_symbols_per_frame": self.beam_symbols_per_frame,
            "batch_size": self.batch_size,
            "max_segment_seconds": self.max_segment_seconds,
            "min_pause_seconds": self.min_pause_seconds,
            "tail_padding_seconds": self.tail_padding_seconds,
            "context_boost": self.context_boost,
            "context_lm_weight": self.context_lm_weight,
            "context_attention": self.context_attention,
            "phonetic_margin": self.phonetic_margin,
            "phonetic_top_k": self.phonetic_top_k,
            "phonetic_transducer_weight": self.phonetic_transducer_weight,
            "phonetic_min_spot": self.phonetic_min_spot,
        }

    def trace_key(self) -> tuple:
        """The settings the decode function's trace depends on (batch size only sets shapes)."""
        if self.method == "greedy":
            return ("greedy", self.max_symbols_per_frame)
        return ("beam", self.beam, self.beam_symbols_per_frame)


@dataclass(frozen=True)
class EncoderCost:
    """What the encoder spent on one input (all of its segments together)."""

    macs: float  # multiply-accumulates, summed over the input's encoder frames (40 ms)
    frames: int  # unpadded encoder frames (the appended tail silence included)
    audio_s: float  # seconds of the input's audio (without the appended tail silence)
    # frames the arbiter of a branching encoder sent the expensive way; None for other encoders
    expensive_frames: float | None = None

    @property
    def macs_per_second(self) -> float:
        return self.macs / max(self.audio_s, 1e-9)

    @property
    def expensive_share(self) -> float | None:
        """Share of the encoder frames that took the expensive branch (None: not branching)."""
        if self.expensive_frames is None:
            return None
        return self.expensive_frames / max(self.frames, 1)

    def __add__(self, other: EncoderCost) -> EncoderCost:
        e = None
        if self.expensive_frames is not None and other.expensive_frames is not None:
            e = self.expensive_frames + other.expensive_frames
        return EncoderCost(
            self.macs + other.macs, self.frames + other.frames, self.audio_s + other.audio_s, e
        )


@dataclass
class Hypothesis:
    text: str
    score: float  # log-probability of the hypothesis (summed over its alignments for beam)
    # the encoder's cost on the input (shared by its n-best; None where not counted)
    encoder: EncoderCost | None = field(default=None, compare=False, repr=False)


@dataclass
class Timing:
    audio_s: float = 0.0
    compute_s: float = 0.0
    compile_s: float = 0.0
    seen: set = field(default_factory=set)

    @property
    def rtf(self) -> float:
        return self.compute_s / max(self.audio_s, 1e-9)


class _Decoder(NamedTuple):
    """A jitted decode function and the input shapes it has compiled (shared by recognizers)."""

    # (variables, feats f32[B, T, n_mels], feat_paddings f32[B, T] 1.0 = padded, graph
    # ContextGraph [B, N, V] or None, context (tokens int32[B, P, Lp], paddings) or None) ->
    # (tokens int32[B, K, L], token_paddings f32[B, K, L], scores f32[B, K], costs); K = 1 for
    # greedy; costs: per row sums over its unpadded encoder frames {"macs": f32[B], "frames":
    # f32[B]} plus "expensive": f32[B] for a branching encoder ({} for a model without
    # `encode_aux`, see `_counts_encoder`); with a phone head, a fifth argument (its weights)
    # and a fifth output (phone log-probs f32[B, T', P + 1], encoder paddings f32[B, T'])
    run: Callable
    compiled: set  # (variables signature, B, T) already run once


def _counts_encoder(model: Transducer) -> bool:
    """The model's `encode_aux` runs as its `encode` does: a subclass that overrides `encode`
    (the emulated processor's) must override `encode_aux` too, else the decoder keeps `encode`
    and counts nothing."""
    cls = type(model)
    return cls.encode is Transducer.encode or cls.encode_aux is not Transducer.encode_aux


@functools.lru_cache(maxsize=8)
def _decoder(model: Transducer, trace_key: tuple, head: PhoneHead | None = None) -> _Decoder:
    """The decode function of `model` with `DecodeSettings.trace_key()` `trace_key` (and, with
    `head`, that phone head's log-probs), built once: flax modules are hashable (equal configs,
    equal modules) and the weights are an argument, so recognizers of the same model with other
    weights hit the same jit cache."""
    method, *opts = trace_key
    counts = _counts_encoder(model)

    def run(variables, feats, feat_paddings, graph=None, context=None, phone_params=None):
        fns = decoder_fns(model, variables)
        kw = {} if context is None else {"context": context}
        costs = {}
        states = None
        if head is not None:  # the phone head reads the states before the joiner's projection
            enc_p, enc_pad, aux, states = model.apply(
                variables, feats, feat_paddings, method="encode_states", **kw
            )
        elif counts:
            enc_p, enc_pad, aux = model.apply(
                variables, feats, feat_paddings, method="encode_aux", **kw
            )
        if counts:
            valid = 1.0 - enc_pad  # padded frames (batch rows and bucket padding) count nothing
            costs = {"macs": jnp.sum(aux["macs"] * valid, 1), "frames": jnp.sum(valid, 1)}
            if "expensive" in aux:
                costs["expensive"] = jnp.sum(aux["expensive"] * valid, 1)
        else:
            enc_p, enc_pad = model.apply(variables, feats, feat_paddings, method="encode", **kw)
        fusion = None if graph is None else context_fusion(graph)
        if method == "greedy":
            toks, tpad, scores = greedy_search(
                fns, enc_p, enc_pad, max_symbols_per_frame=opts[0], fusion=fusion
            )
            out = (toks[:, None], tpad[:, None], scores[:, None], costs)
        else:
            out = beam_search(fns, enc_p, enc_pad, beam=opts[0], max_symbols=opts[1], fusion=fusion)
            out = (*out, costs)
        if head is None:
            return out
        return (*out, (head.apply(phone_params, states, enc_pad), enc_pad, enc_p))

    return _Decoder(jax.jit(run), set())


@functools.lru_cache(maxsize=8)
def _head_fn(head: PhoneHead) -> Callable:
    """jitted (phone params, states f32[B, T', d], paddings f32[B, T']) -> the head's log-probs."""
    return jax.jit(head.apply)


_LABEL_BUCKET = 8  # sentence scoring: tokens and rows padded to multiples of this


@functools.lru_cache(maxsize=8)
def _sentence_scorer(model: Transducer) -> Callable:
    """jitted (variables, enc_p f32[1, T, J], enc_pad f32[1, T], labels int32[n, U],
    label_pad f32[n, U]) -> f32[n] each label sequence's transducer log-likelihood on the
    one utterance (`Recognizer.sentence_log_likelihoods`)."""

    def score(variables, enc_p, enc_pad, labels, label_pad):
        n, blank = labels.shape[0], model.config.blank_id
        # blank-prefixed history: row 0 of the predictor's output follows the start symbol
        history = jnp.pad(labels, ((0, 0), (1, 0)), constant_values=blank)
        pred = model.apply(variables, history, method="predict")

        def joint(e, p):
            return model.apply(variables, e, p, method="joint")

        enc = jnp.broadcast_to(enc_p, (n,) + enc_p.shape[1:])
        pads = jnp.broadcast_to(enc_pad, (n, enc_pad.shape[1]))
        return -rnnt_loss(joint, enc, pads, pred, labels, label_pad, blank_id=blank)

    return jax.jit(score)


@functools.lru_cache(maxsize=8)
def _entries_fn(model: Transducer) -> Callable:
    """jitted (variables, (tokens, paddings)) -> the lists' `ContextEntries` (one per model)."""

    def entries(variables, context):
        return model.apply(variables, context, context[0].shape[0], method="context_entries")

    return jax.jit(entries)


def _check_audios(audios) -> list[np.ndarray]:
    """A list of sample arrays -> f32[N] 16 kHz arrays, each checked by `validate_audio`."""
    if isinstance(audios, (np.ndarray, str, bytes)) or not isinstance(audios, Sequence):
        got = type(audios).__name__
        if isinstance(audios, np.ndarray):
            got += f" of shape {audios.shape} (wrap one input in a list)"
        elif isinstance(audios, str):
            got += " (for files use transcribe_files)"
        raise AudioError(f"audios: expected a list of f32[N] 16 kHz arrays, got {got}")
    if len(audios) == 0:
        raise AudioError("audios: no audio given (empty list), expected at least one array")
    return [validate_audio(x, SAMPLE_RATE, name=f"audios[{i}]") for i, x in enumerate(audios)]


class Recognizer:
    """A loaded model with decode settings: `recognize` arrays, `transcribe_files` paths.

    `timing` accumulates audio seconds, compute seconds and one-time compile seconds over the
    calls (assign a new `Timing(seen=rec.timing.seen)` to start over).
    """

    def __init__(self, loaded: LoadedModel, settings: DecodeSettings = DecodeSettings()):
        if settings.method not in ("beam", "greedy"):
            raise ValueError(f"decode method must be 'beam' or 'greedy', got {settings.method!r}")
        if settings.beam < 1 or settings.batch_size < 1 or settings.beam_symbols_per_frame < 1:
            raise ValueError(
                f"beam, beam_symbols_per_frame and batch_size must be >= 1, got {settings}"
            )
        if not settings.max_segment_seconds >= MIN_SEGMENT_SECONDS:
            raise ValueError(
                f"max_segment_seconds must be >= {MIN_SEGMENT_SECONDS}, "
                f"got {settings.max_segment_seconds!r}"
            )
        if settings.min_pause_seconds is not None and not settings.min_pause_seconds > 0:
            raise ValueError(
                f"min_pause_seconds must be > 0 or None, got {settings.min_pause_seconds!r}"
            )
        if not (math.isfinite(settings.context_boost) and settings.context_boost >= 0):
            raise ValueError(
                f"context_boost must be a finite number >= 0, got {settings.context_boost!r}"
            )
        lm_w = settings.context_lm_weight
        if not (isinstance(lm_w, (int, float)) and math.isfinite(lm_w) and lm_w >= 0):
            raise ValueError(f"context_lm_weight must be a finite number >= 0, got {lm_w!r}")
        pm_ = settings.phonetic_margin
        if pm_ is not None and not (isinstance(pm_, (int, float)) and math.isfinite(pm_)):
            raise ValueError(f"phonetic_margin must be a finite number or None, got {pm_!r}")
        pw = settings.phonetic_transducer_weight
        if not (isinstance(pw, (int, float)) and math.isfinite(pw) and pw >= 0):
            raise ValueError(f"phonetic_transducer_weight must be a finite number >= 0, got {pw!r}")
        ms = settings.phonetic_min_spot
        if ms is not None and not (isinstance(ms, (int, float)) and math.isfinite(ms)):
            raise ValueError(f"phonetic_min_spot must be a finite number or None, got {ms!r}")
        if not (isinstance(settings.phonetic_top_k, int) and settings.phonetic_top_k >= 1):
            raise ValueError(f"phonetic_top_k must be an int >= 1, got {settings.phonetic_top_k!r}")
        self.loaded = loaded
        self.settings = settings
        self._graphs: OrderedDict = OrderedDict()  # ContextList -> (token lists, graph), LRU
        # the lists of a batch (a tuple, one per row) -> their stacked arrays on the device, LRU:
        # a user's list reused request after request is stacked and copied once
        self._batches: OrderedDict = OrderedDict()
        self._variables = jax.device_put(loaded.variables)
        leaves, treedef = jax.tree_util.tree_flatten(self._variables)
        self._signature = (treedef, tuple((x.shape, str(x.dtype)) for x in leaves))
        # phonetic name matching: a phone head on the model and the setting on
        # (not for encoders of other kinds, which `encode_states` does not cover; an edge
        # artifact has no phone head)
        on = settings.phonetic_margin is not None and _counts_encoder(loaded.model)
        self._phones = loaded.phones if on else None
        self._phone_params = None if self._phones is None else jax.device_put(self._phones.params)
        self._decoder = _decoder(loaded.model, settings.trace_key())
        # the same search plus the phone head's log-probs, for batches that carry a list
        self._phone_decoder = (
            None
            if self._phones is None
            else _decoder(loaded.model, settings.trace_key(), self._phones.head)
        )
        self.timing = Timing(seen=self._decoder.compiled)

    def stream(self, context=None):
        """A `asr.streaming.StreamingRecognizer` of this model and settings (greedy settings
        only), sharing this recognizer's weights on the device and context lists; `context`:
        one list (phrases or a `ContextList`) or None."""
        from asr.streaming import StreamingRecognizer

        return StreamingRecognizer(self.loaded, self.settings, context, _recognizer=self)

    def _second_pass(
        self, text: str, phone_log_probs: np.ndarray, enc_p: np.ndarray, context: ContextList
    ) -> str:
        """The phonetic second pass (`asr.phonetic.correct_names`) on one utterance's best
        sentence: its phone head's log-probs f32[T', P+1] and projected encoder frames
        f32[T', J] (no padding), and its list."""
        return correct_names(
            text,
            phone_log_probs,
            list(context.phrases),
            self._phones,
            top_k=self.settings.phonetic_top_k,
            margin=self.settings.phonetic_margin,
            transducer=functools.partial(self.sentence_log_likelihoods, enc_p),
            weight=self.settings.phonetic_transducer_weight,
            min_spot=self.settings.phonetic_min_spot,
        )

    def _phone_log_probs(self, states: np.ndarray) -> np.ndarray:
        """The phone head on one utterance's encoder states f32[T', d_model] (no padding; the
        streaming recognizer's, gathered chunk by chunk) -> f32[T', P+1], frames padded to a
        bucket inside so that new lengths rarely compile."""
        t = FRAME_BUCKET * max(1, math.ceil(len(states) / FRAME_BUCKET))
        x = np.zeros((1, t, states.shape[1]), np.float32)
        x[0, : len(states)] = states
        pads = np.ones((1, t), np.float32)
        pads[0, : len(states)] = 0.0
        out = _head_fn(self._phones.head)(self._phone_params, x, pads)
        return np.asarray(jax.device_get(out))[0, : len(states)]

    def sentence_log_likelihoods(self, enc_p: np.ndarray, texts: list[str]) -> np.ndarray:
        """f64[n] the transducer's log-likelihood of each sentence (normalized words) given one
        utterance's projected encoder frames `enc_p` f32[T', joint_dim] (no padding): the sum
        over every alignment (`asr.lattice.rnnt_loss`), not the beam's best path. Frames and
        tokens are padded to buckets so that new lengths rarely compile."""
        tok = self.loaded.tokenizer
        ids = [tok.encode(t) for t in texts]
        t = FRAME_BUCKET * max(1, math.ceil(len(enc_p) / FRAME_BUCKET))
        u = _LABEL_BUCKET * max(1, math.ceil(max(map(len, ids)) / _LABEL_BUCKET))
        n = _LABEL_BUCKET * math.ceil(len(ids) / _LABEL_BUCKET)  # rows: few shapes
        enc = np.zeros((1, t, enc_p.shape[1]), np.float32)
        enc[0, : len(enc_p)] = enc_p
        enc_pad = np.ones((1, t), np.float32)
        enc_pad[0, : len(enc_p)] = 0.0
        labels = np.zeros((n, u), np.int32)
        label_pad = np.ones((n, u), np.float32)
        for r, q in enumerate(ids):
            labels[r, : len(q)] = q
            label_pad[r, : len(q)] = 0.0
        fn = _sentence_scorer(self.loaded.model)
        out = fn(self._variables, enc, enc_pad, labels, label_pad)
        return np.asarray(jax.device_get(out), np.float64)[: len(ids)]

    @property
    def has_attention_biasing(self) -> bool:
        """The model has an attention biasing network (trained with context lists)."""
        return getattr(self.loaded.model.config, "bias_dim", 0) > 0

    def _phrases(self, ctx: ContextList):
        """(token lists, context graph or None) of a list, built once (LRU of 256 lists)."""

        def build():
            tokens = tokenize_phrases(self.loaded.tokenizer, ctx)
            if self.settings.context_boost <= 0:
                return tokens, None
            cfg = self.loaded.model.config
            graph = build_context_graph(
                tokens,
                cfg.vocab_size,
                boost=self.settings.context_boost,
                weights=ctx.weights,
                blank_id=cfg.blank_id,
                lm_weight=self.settings.context_lm_weight,
            )
            return tokens, graph

        return _lru(self._graphs, ctx, build, 256)

    def recognize(
        self,
        audios: list[np.ndarray],
        nbest: int = 1,
        progress: bool = False,
        context=None,
    ) -> list[list[Hypothesis]]:
        """Audio arrays -> per input, up to `nbest` hypotheses, best first.

        Args:
          audios: a non-empty list of f32[N] 16 kHz arrays (also [N, C] channels last, integer
            PCM, other float types: see `asr.audio.validate_audio`, which checks each one and
            raises `AudioError` naming it, e.g. ``audios[3]: audio has 2 NaN or infinite
            samples``).
          nbest: hypotheses per input; an input longer than `settings.max_segment_seconds` gets
            one, its segments' best hypotheses joined (texts with a space, scores summed).
          progress: show a progress bar over batches.
          context: names to bias toward (module docstring): None; one list for every input (a
            `ContextList` or a list of phrase strings); or one per input (a list, as long as
            `audios`, of those or None).
        """
        audios = _check_audios(audios)
        contexts = per_input_contexts(context, len(audios))
        t0 = time.perf_counter()
        bounds = [self.segment(a) for a in audios]
        short = [i for i, b in enumerate(bounds) if len(b) == 1]
        pieces = [  # (input index, f32[n] segment) of every long input, in order
            (i, audios[i][s:e]) for i, b in enumerate(bounds) if len(b) > 1 for s, e in b
        ]
        tail = np.zeros(round(self.settings.tail_padding_seconds * SAMPLE_RATE), np.float32)
        short_feats = [log_mel(np.concatenate([audios[i], tail])) for i in short]
        piece_feats = [log_mel(np.concatenate([a, tail])) for _, a in pieces]
        self.timing.compute_s += time.perf_counter() - t0
        self.timing.audio_s += sum(len(a) for a in audios) / SAMPLE_RATE
        out: list[list[Hypothesis]] = [[] for _ in audios]
        short_ctx = [contexts[i] for i in short]
        piece_ctx = [contexts[i] for i, _ in pieces]
        short_s = [len(audios[i]) / SAMPLE_RATE for i in short]
        decoded = self._decode(short_feats, nbest, progress, short_ctx, short_s)
        for i, hyps in zip(short, decoded, strict=True):
            out[i] = hyps
        if pieces:
            best: dict[int, list[Hypothesis]] = {}
            costs: dict[int, list[EncoderCost | None]] = {}
            piece_s = [len(a) / SAMPLE_RATE for _, a in pieces]
            decoded = self._decode(piece_feats, 1, progress, piece_ctx, piece_s)
            for (i, _), hyps in zip(pieces, decoded, strict=True):
                best.setdefault(i, []).extend(hyps[:1])
                costs.setdefault(i, []).append(hyps[0].encoder if hyps else None)
            for i, hyps in best.items():
                text = " ".join(h.text.strip() for h in hyps if h.text.strip())
                cost = None
                if all(c is not None for c in costs[i]):
                    cost = functools.reduce(operator.add, costs[i])
                out[i] = [Hypothesis(text, float(sum(h.score for h in hyps)), cost)]
        return out

    def segment(self, audio: np.ndarray) -> list[tuple[int, int]]:
        """Where `recognize` cuts f32[N] 16 kHz audio: [(start, end)] sample ranges covering it,
        one range for inputs of at most `settings.max_segment_seconds` (`asr.segment`)."""
        s = self.settings
        max_len = round(s.max_segment_seconds * SAMPLE_RATE)
        return segment_bounds(audio, max_len, min_pause_s=s.min_pause_seconds)

    def _context_inputs(self, contexts: list[ContextList | None]):
        """Per batch row's list -> (graph [B, N, V] or None, attention arrays or None), on the
        device; the last 4 batches' arrays are kept."""
        return _lru(self._batches, tuple(contexts), lambda: self._device_context(contexts), 4)

    def _device_context(self, contexts: list[ContextList | None]):
        """`_stack_context` on the device; a biasing network's lists as their `ContextEntries`
        (phrases encoded and projected once per batch of lists, not in every decode call)."""
        graph, attention = jax.device_put(self._stack_context(contexts))
        if attention is not None:
            attention = _entries_fn(self.loaded.model)(self._variables, attention)
        return graph, attention

    def _stack_context(self, contexts: list[ContextList | None]):
        lists = [None if c is None else self._phrases(c) for c in contexts]
        graph = None
        if self.settings.context_boost > 0 and any(x is not None for x in lists):
            graph = stack_graphs(
                [None if x is None else x[1] for x in lists], self.loaded.model.config.vocab_size
            )
        attention = None
        if self.has_attention_biasing:
            from asr.models.biasing import context_arrays

            use = self.settings.context_attention
            attention = context_arrays([x[0] if use and x is not None else [] for x in lists])
        return graph, attention

    def _decode(
        self,
        feats: list[np.ndarray],
        nbest: int,
        progress: bool,
        contexts: list[ContextList | None] | None = None,
        seconds: list[float] | None = None,
    ) -> list[list[Hypothesis]]:
        """f32[T_i, n_mels] features -> per item, up to `nbest` hypotheses (batched by length),
        each carrying the item's `EncoderCost` (None for a model that does not count);
        contexts: per item its list or None; seconds: per item its audio's length (without
        the tail silence; default: the features' length)."""
        if contexts is None:
            contexts = [None] * len(feats)
        if seconds is None:
            seconds = [len(f) * HOP_LENGTH / SAMPLE_RATE for f in feats]
        out: list[list[Hypothesis]] = [[] for _ in feats]
        order = sorted(range(len(feats)), key=lambda i: len(feats[i]))
        bs = self.settings.batch_size
        starts = range(0, len(order), bs)
        for s in tqdm(starts, desc="decode", unit="batch", disable=not progress, leave=False):
            idx = order[s : s + bs]
            t = FRAME_BUCKET * math.ceil(max(len(feats[i]) for i in idx) / FRAME_BUCKET)
            x = np.zeros((bs, t, feats[idx[0]].shape[1]), np.float32)
            pad = np.ones((bs, t), np.float32)
            for k, i in enumerate(idx):
                x[k, : len(feats[i])] = feats[i]
                pad[k, : len(feats[i])] = 0.0
            t0 = time.perf_counter()
            rows_ctx = [contexts[i] for i in idx] + [None] * (bs - len(idx))
            graph, attention = self._context_inputs(rows_ctx)
            self.timing.compute_s += time.perf_counter() - t0
            # the phone head runs only for batches with a list (its output is unused otherwise)
            phonetic = self._phone_decoder is not None and any(c is not None for c in rows_ctx)
            shape = (
                self._signature,
                bs,
                t,
                None if graph is None else (graph.goto.shape, graph.uses_lm),
                None if attention is None else attention[0].shape,
                phonetic,
            )
            args = (self._variables, x, pad, graph, attention)
            run = self._decoder.run
            if phonetic:
                args, run = (*args, self._phone_params), self._phone_decoder.run
            if shape not in self.timing.seen:  # first use of this shape: compile, not timed
                c0 = time.perf_counter()
                jax.block_until_ready(run(*args))
                self.timing.compile_s += time.perf_counter() - c0
                self.timing.seen.add(shape)
            t0 = time.perf_counter()
            res = jax.device_get(run(*args))
            toks, tpad, scores, costs = res[:4]
            phones = res[4] if len(res) > 4 else None
            for k, i in enumerate(idx):
                seqs = strip(toks[k], tpad[k])
                cost = None
                if costs:
                    e = costs.get("expensive")
                    cost = EncoderCost(
                        macs=float(costs["macs"][k]),
                        frames=int(round(float(costs["frames"][k]))),
                        audio_s=seconds[i],
                        expensive_frames=None if e is None else float(e[k]),
                    )
                hyps = [
                    Hypothesis(self.loaded.tokenizer.decode(q), float(sc), cost)
                    for q, sc in zip(seqs, scores[k], strict=True)
                    if sc > NEG / 2  # dead beam slots score about NEG
                ]
                if phones is not None and contexts[i] is not None and hyps:
                    n = int(round(float(np.sum(1.0 - phones[1][k]))))
                    text = self._second_pass(
                        hyps[0].text, phones[0][k, :n], phones[2][k, :n], contexts[i]
                    )
                    if text != hyps[0].text:
                        hyps[0] = Hypothesis(text, hyps[0].score, hyps[0].encoder)
                out[i] = hyps[:nbest]
            self.timing.compute_s += time.perf_counter() - t0
        return out

    def transcribe_files(
        self, paths: list[str], nbest: int = 1, progress: bool = False, context=None
    ):
        """Yields (path, hypotheses or AudioError) in input order; timing covers the work done
        (reading the files counts as compute time; their audio is counted by `recognize`).
        `context`: as for `recognize`, one list for all or one per path."""
        contexts = per_input_contexts(context, len(paths))
        audios, errors = {}, {}
        for p in paths:
            try:
                t0 = time.perf_counter()
                audios[p] = load_audio(p)
                self.timing.compute_s += time.perf_counter() - t0
            except AudioError as e:
                errors[p] = e
        good = [p for p in paths if p in audios]
        results = {}
        if good:
            ctx = [contexts[i] for i, p in enumerate(paths) if p in audios]
            hyps = self.recognize([audios[p] for p in good], nbest, progress, ctx)
            results = dict(zip(good, hyps, strict=True))
        for p in paths:
            yield p, results.get(p, errors.get(p))


def _lru(cache: OrderedDict, key, make: Callable, size: int):
    """cache[key], made by make() on a miss; the least recently used beyond `size` dropped."""
    if key in cache:
        cache.move_to_end(key)
        return cache[key]
    value = cache[key] = make()
    if len(cache) > size:
        cache.popitem(last=False)
    return value


def _as_context(c, where: str) -> ContextList | None:
    if c is None:
        return None
    if isinstance(c, ContextList):
        return c or None
    if isinstance(c, str) or not isinstance(c, Sequence):
        raise ContextError(f"{where}: expected a list of phrases, got {type(c).__name__} {c!r:.60}")
    return make_context(c) or None


def per_input_contexts(context, n: int) -> list[ContextList | None]:
    """`recognize`'s context argument -> one `ContextList` (or None) per input."""
    if context is None:
        return [None] * n
    if isinstance(context, ContextList) or (
        isinstance(context, Sequence)
        and not isinstance(context, str)
        and all(isinstance(c, str) for c in context)
    ):
        return [_as_context(context, "context")] * n
    if isinstance(context, str) or not isinstance(context, Sequence):
        raise ContextError(
            f"context: expected a list of phrases or one list per input, got "
            f"{type(context).__name__}"
        )
    if len(context) != n:
        raise ContextError(f"context: {len(context)} lists for {n} inputs (one per input)")
    return [_as_context(c, f"context[{i}]") for i, c in enumerate(context)]


def keyword_matches(keywords: list[str], hypothesis: str) -> list[bool]:
    """Which keywords the hypothesis contains -> bool per keyword, in order.

    A keyword is found when its normalized words (`normalize_text`) appear as a contiguous word
    sequence of the normalized hypothesis. A keyword listed n times is found at most as often as
    it occurs in the hypothesis (occurrences counted left to right without overlap); its first
    listings are the found ones.
    """
    words = normalize_text(hypothesis).split()
    occurrences: dict[tuple[str, ...], int] = {}
    used: Counter = Counter()
    out = []
    for k in keywords:
        seq = tuple(normalize_text(k).split())
        if seq not in occurrences:
            occurrences[seq] = _count_occurrences(words, seq)
        used[seq] += 1
        out.append(bool(seq) and used[seq] <= occurrences[seq])
    return out


def _count_occurrences(words: list[str], seq: tuple[str, ...]) -> int:
    n, i, count = len(seq), 0, 0
    while n and i + n <= len(words):
        if tuple(words[i : i + n]) == seq:
            count, i = count + 1, i + n
        else:
            i += 1
    return count


def keyword_hits(keywords: list[str], hypothesis: str) -> int:
    """How many of `keywords` the hypothesis contains (see `keyword_matches`)."""
    return sum(keyword_matches(keywords, hypothesis))


def _row_kinds(rows: list[dict]) -> list[str]:
    """ "text" or "keywords" per manifest row; ManifestError for a row that is neither."""
    if not rows:
        raise ManifestError("rows: no rows to evaluate")
    kinds = []
    for i, r in enumerate(rows):
        if not isinstance(r, dict) or "audio" not in r:
            got = sorted(r) if isinstance(r, dict) else type(r).__name__
            raise ManifestError(f"rows[{i}]: expected an object with 'audio', got {got}")
        if "text" in r:
            if not isinstance(r["text"], str):
                raise ManifestError(f"rows[{i}]: 'text' must be a string, got {r['text']!r}")
            kinds.append("text")
        elif "keywords" in r:
            kw = r["keywords"]
            if (
                not isinstance(kw, list)
                or not kw
                or not all(isinstance(k, str) and normalize_text(k) for k in kw)
            ):
                raise ManifestError(
                    f"rows[{i}]: 'keywords' must be a non-empty list of strings with words, "
                    f"got {kw!r}"
                )
            kinds.append("keywords")
        else:
            raise ManifestError(f"rows[{i}]: expected 'text' or 'keywords', got {sorted(r)}")
    return kinds


def _group_rates(text_rows: list[dict], keyword_rows: list[dict], field: str) -> dict:
    """`group_error_rates` over scored text rows, with keyword recall per group added from the
    scored keyword rows (each with `keywords_found`, `keywords_total`) -> {value: {wer, words,
    utterances, keyword_recall, keywords, keyword_rows}}, worst first (by WER, else by missed
    keyword share)."""
    wer_groups = group_error_rates(text_rows, field)
    kw: dict[str, list[int]] = {}
    for r in keyword_rows:
        a = kw.setdefault(group_key(r, field), [0, 0, 0])
        a[0] += r["keywords_found"]
        a[1] += r["keywords_total"]
        a[2] += 1
    out = {}
    for k in set(wer_groups) | set(kw):
        g = wer_groups.get(k, {"wer": None, "words": 0, "utterances": 0})
        found, total, n = kw.get(k, (0, 0, 0))
        out[k] = {
            "wer": g["wer"],
            "words": g["words"],
            "utterances": g["utterances"] + n,
            "keyword_recall": found / total if total else None,
            "keywords": total,
            "keyword_rows": n,
        }

    def badness(g: dict) -> float:
        if g["wer"] is not None:
            return g["wer"]
        return 1.0 - g["keyword_recall"] if g["keyword_recall"] is not None else 0.0

    return dict(sorted(out.items(), key=lambda kv: (-badness(kv[1]), kv[0])))


def evaluate_manifest(
    recognizer: Recognizer,
    rows: list[dict],
    pairs: int = 5,
    progress: bool = False,
    by: tuple[str, ...] = (),
    details: bool = False,
    unreadable: str = "skip",
    use_context: bool = True,
    context=None,
) -> dict:
    """Scores the recognizer on manifest rows: WER, keyword recall, real-time factor.

    Rows with `text` are scored by word error rate; rows with `keywords` (a list of words or
    phrases that must be recognized) and no `text` by keyword recall: found keywords over all
    keywords, found as `keyword_matches` says. Rows whose audio cannot be read are left out of
    every number and reported; with ``unreadable="fail"`` any of them raises `AudioError` (after
    decoding the readable ones) giving the count and the first paths. All rows unreadable raises
    `AudioError` too (nothing to score). A row with neither `text` nor `keywords` raises
    `ManifestError` before anything is decoded.

    Context biasing: each row is decoded with its `context` list (names), or with `context` (one
    list for every row, replacing theirs) when given; ``use_context=False`` decodes without
    lists. Either way the words of the reference that belong to a phrase of the row's list are
    scored apart as `context_wer` (so a run without lists measures the same words).

    Returns a dict:
      wer, substitutions, deletions, insertions, words: over readable text rows (`wer` None and
        the counts 0 when there are none);
      keyword_recall (None when there are no readable keyword rows), keywords, keywords_found,
        keyword_rows: over readable keyword rows;
      context_wer (None when no reference word is in a list), context_words, context_errors:
        substitutions and deletions of reference words belonging to a context phrase
        (`asr.text.marked_word_errors`), over readable text rows; context_rows: rows that had a
        list;
      utterances: rows scored; unreadable: rows left out; unreadable_rows: every one of them as
        {audio, error}, in manifest order;
      rtf, audio_seconds, compute_seconds, compile_seconds, decode, model, device;
      encoder_macs_per_second: the encoder's multiply-accumulates summed over the scored rows
        (every unpadded encoder frame, the appended tail silence included), over their audio
        seconds (`EncoderCost`; None when the recognizer does not count them);
      expensive_frame_share (branching encoders only): the scored rows' encoder frames the
        arbiter sent the expensive way, over all their unpadded encoder frames;
      pairs: the first `pairs` scored rows, normalized: {ref, hyp} for text rows, {keywords,
        hyp, found} for keyword rows;
      by (with `by`, manifest fields such as ``speaker`` or ``domain``): {field: {value: {wer,
        words, utterances, keyword_recall, keywords, keyword_rows, encoder_macs_per_second,
        expensive_frame_share (branching)}}}, worst first;
      utterances_detail (with `details`): every row in manifest order, the manifest fields plus:
        for text rows `asr.text.utterance_errors` (normalized ref, hyp, errors, words, ...); for
        keyword rows hyp, keywords_found, keywords_total, missed (the keywords not found); for
        both the row's own encoder_macs_per_second and (branching) expensive_frame_share; for
        unreadable rows only error (the message; no hyp, nothing scored).
    """
    if unreadable not in ("skip", "fail"):
        raise ValueError(f"unreadable must be 'skip' or 'fail', got {unreadable!r}")
    kinds = _row_kinds(rows)
    if context is not None:
        lists = [_as_context(context, "context")] * len(rows)
    else:
        lists = [_as_context(r.get("context"), f"rows[{i}]: context") for i, r in enumerate(rows)]
    recognizer.timing = Timing(seen=recognizer.timing.seen)  # this evaluation's time only
    paths = [r["audio"] for r in rows]
    hyps: list[str | None] = []  # None: unreadable
    costs: list[EncoderCost | None] = []  # None: unreadable, or not counted
    errors: dict[int, str] = {}
    decode_ctx = lists if use_context else None
    results = recognizer.transcribe_files(paths, progress=progress, context=decode_ctx)
    for i, (_, res) in enumerate(results):
        if isinstance(res, Exception):
            errors[i] = str(res)
            hyps.append(None)
            costs.append(None)
        else:
            hyps.append(res[0].text if res else "")
            costs.append(getattr(res[0], "encoder", None) if res else None)
    failed = [{"audio": paths[i], "error": e} for i, e in errors.items()]
    if failed and (unreadable == "fail" or len(failed) == len(rows)):
        first = "; ".join(f["error"] for f in failed[:3]) + ("; ..." if len(failed) > 3 else "")
        what = "nothing to score" if len(failed) == len(rows) else "unreadable='fail'"
        raise AudioError(f"{len(failed)} of {len(rows)} rows unreadable ({what}): {first}")

    scored: list[dict] = []  # per row: the row with its scores, or with its error
    for i, (row, kind, hyp) in enumerate(zip(rows, kinds, hyps, strict=True)):
        if hyp is None:
            scored.append({**row, "error": errors[i]})
        elif kind == "text":
            res = {**row, **utterance_errors(row["text"], hyp)}
            if lists[i] is not None:
                marks = phrase_occurrences(row["text"], lists[i])
                res["context_errors"], res["context_words"] = marked_word_errors(
                    row["text"], hyp, marks
                )
            scored.append(res)
        else:
            found = keyword_matches(row["keywords"], hyp)
            scored.append(
                {
                    **row,
                    "hyp": normalize_text(hyp),
                    "keywords_found": sum(found),
                    "keywords_total": len(found),
                    "missed": [k for k, f in zip(row["keywords"], found, strict=True) if not f],
                }
            )
        if costs[i] is not None:
            scored[-1].update(_cost_fields(costs[i]))
    text_ok = [i for i, k in enumerate(kinds) if k == "text" and hyps[i] is not None]
    kw_ok = [i for i, k in enumerate(kinds) if k == "keywords" and hyps[i] is not None]
    if text_ok:
        w = word_error_rate([rows[i]["text"] for i in text_ok], [hyps[i] for i in text_ok])
    else:
        w = {"wer": None, "substitutions": 0, "deletions": 0, "insertions": 0, "words": 0}
    ctx_err = sum(scored[i].get("context_errors", 0) for i in text_ok)
    ctx_words = sum(scored[i].get("context_words", 0) for i in text_ok)
    kw_found = sum(scored[i]["keywords_found"] for i in kw_ok)
    kw_total = sum(scored[i]["keywords_total"] for i in kw_ok)
    t = recognizer.timing
    out = {
        **w,
        "keyword_recall": kw_found / kw_total if kw_total else None,
        "keywords": kw_total,
        "keywords_found": kw_found,
        "keyword_rows": len(kw_ok),
        "context_wer": ctx_err / ctx_words if ctx_words else None,
        "context_words": ctx_words,
        "context_errors": ctx_err,
        "context_rows": sum(lists[i] is not None for i in text_ok + kw_ok),
        "context_used": bool(use_context),
        "utterances": len(text_ok) + len(kw_ok),
        "unreadable": len(failed),
        "unreadable_rows": failed,
        "rtf": t.rtf,
        "audio_seconds": t.audio_s,
        "compute_seconds": t.compute_s,
        "compile_seconds": t.compile_s,
        "decode": recognizer.settings.to_dict(),
        "model": recognizer.loaded.source,
        "device": jax.devices()[0].device_kind,
        "pairs": [_pair(scored[i], kinds[i]) for i in sorted(text_ok + kw_ok)[:pairs]],
    }
    ok = sorted(text_ok + kw_ok)
    total = None
    if ok and all(costs[i] is not None for i in ok):
        total = functools.reduce(operator.add, [costs[i] for i in ok])
    out["encoder_macs_per_second"] = None if total is None else total.macs_per_second
    if total is not None and total.expensive_share is not None:
        out["expensive_frame_share"] = total.expensive_share
    if by:
        text_scored = [scored[i] for i in text_ok]
        kw_scored = [scored[i] for i in kw_ok]
        out["by"] = {f: _group_rates(text_scored, kw_scored, f) for f in by}
        if total is not None:  # each group's encoder cost, as the corpus one
            for f, groups in out["by"].items():
                summed: dict[str, EncoderCost] = {}
                for i in ok:
                    k = group_key(scored[i], f)
                    summed[k] = summed[k] + costs[i] if k in summed else costs[i]
                for k, c in summed.items():
                    groups[k].update(_cost_fields(c))
    if details:
        out["utterances_detail"] = scored
    return out


def _cost_fields(cost: EncoderCost) -> dict:
    """An utterance's encoder cost as `evaluate_manifest` reports it (module docstring)."""
    out = {"encoder_macs_per_second": cost.macs_per_second}
    if cost.expensive_share is not None:
        out["expensive_frame_share"] = cost.expensive_share
    return out


def _pair(scored_row: dict, kind: str) -> dict:
    if kind == "text":
        return {"ref": scored_row["ref"], "hyp": scored_row["hyp"]}
    return {
        "keywords": [normalize_text(k) for k in scored_row["keywords"]],
        "hyp": scored_row["hyp"],
        "found": scored_row["keywords_found"],
    }
