"""Greedy transducer decoding, batched and jitted, plus the callables every decoder runs on.

Owns `DecoderFns` (the predictor and joiner as three pure functions of the model variables, so
decoders are testable without a model), `decoder_fns` (builds it from a `Transducer`), `Fusion`
(a per-hypothesis extra state and additive scores, the hook of shallow fusion: context graphs,
language models), `greedy_search`, and the host-side `strip` that turns padded token buffers into
lists.

Greedy search is a `lax.scan` over encoder frames; inside a frame a bounded `lax.while_loop`
emits the argmax symbol while it is not blank, at most `max_symbols_per_frame` times. All shapes
are fixed: tokens go into a [B, L] buffer with a per-utterance length counter. With a fusion the
argmax is over log-probs plus the fusion's scores.

The search is three pure functions over one fixed-shape state, `GreedyState`: `greedy_init`,
`greedy_frames` (any number of frames; called again on the next frames it continues the search)
and `greedy_result`. `greedy_search` is the three on a whole utterance; a stream
(`asr.streaming`) runs `greedy_frames` chunk by chunk, emptying the token buffer after each
chunk (`GreedyState.drain`) so the buffer is sized per chunk, not per utterance.

References: Graves 2012, "Sequence Transduction with Recurrent Neural Networks" (greedy and beam
decoding of the transducer); icefall `beam_search.py::greedy_search_batch` (the algorithm,
rewritten here as a fixed-shape loop); Gulcehre et al. 2015, "On Using Monolingual Corpora in
Neural Machine Translation" (shallow fusion).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import Any, NamedTuple

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

NEG = -1e9  # score of a dead hypothesis / forbidden candidate: large, finite (no inf - inf NaN)


@flax.struct.dataclass
class DecoderFns:
    """The model as seen by a decoder. A pytree: `variables` is traced, the callables are static.

    pred_init(variables, batch: int) -> state       pytree, every leaf with leading axis `batch`
    pred_step(variables, state, tokens int32[N]) -> (state, pred_p f32[N, J])
    joint(variables, enc_p f32[..., J], pred_p f32[..., J]) -> logits f32[..., V]

    The initial predictor output is `pred_step(pred_init(B), blank)` (blank is the start symbol,
    as in the training-time blank-prefixed history). Callables must be hashable and stable across
    calls (module-level functions or frozen dataclasses) so jit caches hit; the variables are
    ordinary arguments, so new weights do not retrace.
    """

    pred_init: Callable[..., Any] = flax.struct.field(pytree_node=False)
    pred_step: Callable[..., Any] = flax.struct.field(pytree_node=False)
    joint: Callable[..., Any] = flax.struct.field(pytree_node=False)
    variables: Any = None
    blank_id: int = flax.struct.field(pytree_node=False, default=0)


@flax.struct.dataclass
class Fusion:
    """Shallow fusion: an extra state per hypothesis and scores added to the model's. A pytree:
    `params` is traced (a new list of the same shapes does not retrace), the callables static.

    Row r of the n hypothesis rows decodes utterance utts[r] (greedy: n = B, utts = arange(B);
    beam search: n = B*K, utts[r] = r // K).

    init(params, utts int32[n], batch: int) -> extra     pytree, every leaf [n, ...]
    scores(params, extra, utts) -> f32[n, V]             added to the log-probs of each symbol
    advance(params, extra, tokens int32[n], utts) -> extra    after emitting tokens (non-blank)
    finalize(params, extra, utts) -> f32[n]              added to the score at the end

    With `uses_lm`, scores and advance take one more argument, lm f32[n, V]: the model's internal
    language model (`internal_lm`) after each row's tokens, the row's state before the token
    for advance; a fusion that discounts it (context biasing of names the predictor never saw).

    The searches call `advance` on every row and keep its result only where a token was
    emitted (elsewhere the token passed may be blank and the result is dropped); padded frames
    leave the extra state as it is. Beam search regathers `extra` with the surviving hypotheses
    like the predictor state and merges hypotheses spelling the same tokens, so the extra state
    and the scores must be functions of the emitted tokens alone (not of the alignment).
    Callables must be hashable and stable across calls (module-level functions), like those of
    `DecoderFns`, so jit caches hit.
    """

    init: Callable[..., Any] = flax.struct.field(pytree_node=False)
    scores: Callable[..., Any] = flax.struct.field(pytree_node=False)
    advance: Callable[..., Any] = flax.struct.field(pytree_node=False)
    finalize: Callable[..., Any] = flax.struct.field(pytree_node=False)
    params: Any = None
    uses_lm: bool = flax.struct.field(pytree_node=False, default=False)


def internal_lm(fns: DecoderFns, pred_p: jax.Array, enc_width: int) -> jax.Array:
    """The transducer's internal LM after each history: f32[n, J] predictor outputs -> f32[n, V]
    log-probs of the non-blank tokens, blank's entry 0. The joiner with a zero encoder frame
    (enc_width wide), renormalized without blank (Meng et al. 2021, "Internal Language Model
    Estimation for Domain-Adaptive End-to-End Speech Recognition")."""
    zero = jnp.zeros((*pred_p.shape[:-1], enc_width), pred_p.dtype)
    logits = fns.joint(fns.variables, zero, pred_p).astype(jnp.float32)
    blank = jnp.arange(logits.shape[-1]) == fns.blank_id
    logp = jax.nn.log_softmax(jnp.where(blank, -jnp.inf, logits), axis=-1)
    return jnp.where(blank, 0.0, logp)


def fusion_scores(
    fusion: Fusion, extra, utts: jax.Array, like: jax.Array, lm: jax.Array | None = None
) -> jax.Array:
    """fusion.scores checked against the log-probs `like` f32[n, V] (trace time) -> f32[n, V];
    lm: `internal_lm` of the rows, passed on when the fusion `uses_lm`."""
    if fusion.uses_lm:
        if lm is None:
            raise ValueError("this fusion reads the internal LM: pass lm (internal_lm) too")
        out = fusion.scores(fusion.params, extra, utts, lm)
    else:
        out = fusion.scores(fusion.params, extra, utts)
    if out.shape != like.shape:
        raise ValueError(
            f"fusion scores have shape {out.shape}, expected {like.shape} (hypotheses, vocab): "
            "is the context graph built for this model's vocabulary?"
        )
    return out.astype(jnp.float32)


@dataclasses.dataclass(frozen=True)
class _ModelMethod:
    """`model.apply(variables, *args, method=Transducer.<name>)`, hashable by (model, name)."""

    model: Any
    name: str

    def __call__(self, variables, *args):
        return self.model.apply(variables, *args, method=getattr(type(self.model), self.name))


def fusion_advance(fusion: Fusion, extra, tokens: jax.Array, utts: jax.Array, lm=None):
    """fusion.advance, given the rows' `internal_lm` (before the tokens) when it `uses_lm`."""
    if fusion.uses_lm:
        return fusion.advance(fusion.params, extra, tokens, utts, lm)
    return fusion.advance(fusion.params, extra, tokens, utts)


def decoder_fns(model, variables) -> DecoderFns:
    """DecoderFns of a `asr.models.transducer.Transducer` and its variables {'params', 'norm'}."""
    return DecoderFns(
        pred_init=_ModelMethod(model, "predictor_init"),
        pred_step=_ModelMethod(model, "predict_step"),
        joint=_ModelMethod(model, "joint"),
        variables=variables,
        blank_id=model.config.blank_id,
    )


def initial_predictor(fns: DecoderFns, batch: int):
    """Predictor state and output after the start symbol: (state [batch, ...], f32[batch, J])."""
    state = fns.pred_init(fns.variables, batch)
    return fns.pred_step(fns.variables, state, jnp.full((batch,), fns.blank_id, jnp.int32))


def select_tree(cond: jax.Array, new, old):
    """Per-row `where` on two pytrees with leading axis N; cond: bool[N]."""

    def pick(a, b):
        return jnp.where(cond.reshape(cond.shape + (1,) * (a.ndim - 1)), a, b)

    return jax.tree_util.tree_map(pick, new, old)


def check_encoder_outputs(enc_p: ArrayLike, enc_paddings: ArrayLike) -> None:
    """Raises ValueError unless enc_p is f32[B, T, J] and enc_paddings f32[B, T]."""
    if np.ndim(enc_p) != 3:
        raise ValueError(f"enc_p must be [B, T, J], got shape {np.shape(enc_p)}")
    if np.shape(enc_paddings) != np.shape(enc_p)[:2]:
        raise ValueError(
            f"enc_paddings must be [B, T] = {np.shape(enc_p)[:2]}, got {np.shape(enc_paddings)}"
        )


class GreedyState(NamedTuple):
    """The greedy search between frames (a pytree of fixed shapes)."""

    pred_state: Any  # predictor state pytree, leading axis B
    pred_p: jax.Array  # f32[B, J]: predictor output after the last emitted token
    tokens: jax.Array  # int32[B, L]: emitted tokens, 0 past `lengths`
    lengths: jax.Array  # int32[B]: tokens emitted so far (into this buffer)
    scores: jax.Array  # f32[B]: sum of log-probs (+ fusion scores) of every chosen symbol
    extra: Any  # fusion state pytree, every leaf [B, ...] (None without a fusion)

    def drain(self) -> GreedyState:
        """This state with an empty token buffer (the tokens taken out by the caller): the
        search goes on from the same predictor, scores and fusion state."""
        return self._replace(
            tokens=jnp.zeros_like(self.tokens), lengths=jnp.zeros_like(self.lengths)
        )


def greedy_search(
    fns: DecoderFns,
    enc_p: ArrayLike,
    enc_paddings: ArrayLike,
    max_symbols_per_frame: int = 3,
    max_len: int | None = None,
    fusion: Fusion | None = None,
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Batched greedy decoding, optionally with shallow fusion.

    Args:
      fns: the model's predictor and joiner (`decoder_fns(model, variables)`).
      enc_p: f32[B, T, J] projected encoder output (`Transducer.encode`).
      enc_paddings: f32[B, T], 1.0 = padded frame (emits nothing, scores nothing).
      max_symbols_per_frame: non-blank symbols one frame may emit before moving on.
      max_len: token buffer length L; default T * max_symbols_per_frame (never overflows).
        When the buffer is full, further non-blank argmaxes end their frame unwritten.
      fusion: scores added to the log-probs before the argmax (e.g. `context_fusion(graph)`);
        None: plain greedy search.

    Returns:
      tokens int32[B, L] (0 past each length), token_paddings f32[B, L] (1.0 = padding),
      scores f32[B]: the sum of log-softmax of every chosen symbol on valid frames, blanks
      included (a frame that hits max_symbols_per_frame ends without a blank); with a fusion,
      plus its scores of the chosen symbols and its finalize term, which is what the argmax
      maximized (for a context graph: path log-prob + `context_score` of the tokens).
    """
    check_encoder_outputs(enc_p, enc_paddings)
    if max_symbols_per_frame < 1:
        raise ValueError(f"max_symbols_per_frame must be >= 1, got {max_symbols_per_frame}")
    if max_len is None:
        max_len = np.shape(enc_p)[1] * max_symbols_per_frame
    if max_len < 0:
        raise ValueError(f"max_len must be >= 0, got {max_len}")
    if fusion is not None and not isinstance(fusion, Fusion):
        raise ValueError(f"fusion must be a Fusion or None, got {type(fusion).__name__}")
    return _greedy_search(
        fns, enc_p, enc_paddings, int(max_symbols_per_frame), int(max_len), fusion
    )


@functools.partial(jax.jit, static_argnames=("max_symbols", "max_len"))
def _greedy_search(fns, enc_p, enc_paddings, max_symbols, max_len, fusion=None):
    state = greedy_init(fns, jnp.shape(enc_p)[0], max_len, fusion)
    state = greedy_frames(fns, state, enc_p, enc_paddings, max_symbols, fusion)
    return greedy_result(state, fusion)


def greedy_init(fns: DecoderFns, batch: int, max_len: int, fusion: Fusion | None = None):
    """The search before the first frame of `batch` utterances, with a token buffer of
    `max_len` (traceable: call it inside jit)."""
    rows = jnp.arange(batch)
    pred_state, pred_p = initial_predictor(fns, batch)
    return GreedyState(
        pred_state=pred_state,
        pred_p=pred_p,
        tokens=jnp.zeros((batch, max_len), jnp.int32),
        lengths=jnp.zeros((batch,), jnp.int32),
        scores=jnp.zeros((batch,), jnp.float32),
        extra=None if fusion is None else fusion.init(fusion.params, rows, batch),
    )


def greedy_frames(
    fns: DecoderFns, state: GreedyState, enc_p, enc_paddings, max_symbols: int,
    fusion: Fusion | None = None,
) -> GreedyState:  # fmt: skip
    """`state` after the frames enc_p f32[B, T, J] (enc_paddings f32[B, T], 1.0 = padded: emits
    nothing); at most `max_symbols` non-blank symbols a frame; tokens past a full buffer are
    dropped (see `greedy_search`). Traceable: call it inside jit."""
    enc_p = jnp.asarray(enc_p, jnp.float32)
    b = enc_p.shape[0]
    max_len = state.tokens.shape[1]
    rows = jnp.arange(b)

    def frame(carry: GreedyState, xs):
        enc_t, valid = xs  # f32[B, J], bool[B]

        def cond(loop):
            i, active, _ = loop
            return (i < max_symbols) & jnp.any(active)

        def body(loop):
            i, active, c = loop
            logp = jax.nn.log_softmax(fns.joint(fns.variables, enc_t, c.pred_p), axis=-1)
            lm = None  # the internal LM, for a fusion that reads it
            if fusion is not None and fusion.uses_lm:
                lm = internal_lm(fns, c.pred_p, enc_t.shape[-1])
            fused = None if fusion is None else fusion_scores(fusion, c.extra, rows, logp, lm)
            k = jnp.argmax(logp if fused is None else logp + fused, axis=-1).astype(jnp.int32)
            emit = active & (k != fns.blank_id)
            write = emit & (c.lengths < max_len)
            gain = logp[rows, k]  # -> [B]
            extra = c.extra
            if fusion is not None:
                # a token past a full buffer is dropped, and so is its fusion score: the fusion
                # state and score stay those of the written tokens
                kept = write | (k == fns.blank_id)
                gain = gain + jnp.where(kept, fused[rows, k], 0.0)
                extra = select_tree(write, fusion_advance(fusion, c.extra, k, rows, lm), extra)
            scores = c.scores + jnp.where(active, gain, 0.0)
            tokens = c.tokens.at[rows, jnp.where(write, c.lengths, max_len)].set(k, mode="drop")
            new_state, new_p = fns.pred_step(fns.variables, c.pred_state, k)
            c = GreedyState(
                pred_state=select_tree(write, new_state, c.pred_state),
                pred_p=jnp.where(write[:, None], new_p, c.pred_p),
                tokens=tokens,
                lengths=c.lengths + write.astype(jnp.int32),
                scores=scores,
                extra=extra,
            )
            return i + 1, write, c

        _, _, carry = jax.lax.while_loop(cond, body, (jnp.int32(0), valid, carry))
        return carry, None

    xs = (jnp.swapaxes(enc_p, 0, 1), jnp.swapaxes(jnp.asarray(enc_paddings) < 0.5, 0, 1))
    out, _ = jax.lax.scan(frame, state, xs)
    return out


def greedy_result(state: GreedyState, fusion: Fusion | None = None):
    """(tokens int32[B, L], token_paddings f32[B, L], scores f32[B]) of the search so far, the
    fusion's finalize term added to the scores (see `greedy_search`)."""
    scores = state.scores
    if fusion is not None:
        rows = jnp.arange(scores.shape[0])
        scores = scores + fusion.finalize(fusion.params, state.extra, rows).astype(jnp.float32)
    max_len = state.tokens.shape[1]
    token_paddings = (jnp.arange(max_len)[None] >= state.lengths[:, None]).astype(jnp.float32)
    return state.tokens, token_paddings, scores


def strip(tokens: ArrayLike, token_paddings: ArrayLike) -> list:
    """Host side: int[..., L] tokens with f32[..., L] paddings -> nested lists of unpadded ids.

    [B, L] gives list[list[int]]; [B, K, L] (beam output) gives list[list[list[int]]].
    """
    tokens, token_paddings = np.asarray(tokens), np.asarray(token_paddings)
    if tokens.shape != token_paddings.shape:
        raise ValueError(
            f"tokens {tokens.shape} and token_paddings {token_paddings.shape} must match"
        )
    if tokens.ndim == 1:
        return [int(t) for t in tokens[token_paddings < 0.5]]
    return [strip(t, p) for t, p in zip(tokens, token_paddings, strict=True)]
