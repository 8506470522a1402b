"""Transducer beam search: batched, jitted, fixed-shape, with hypothesis merging.

Owns `beam_search` and its loop state `BeamState`. Two topologies, chosen by `max_symbols` (S):

* S = 1, "modified" beam search: at most one non-blank symbol per frame. Every frame each of the
  K hypotheses either takes blank (stays as it is) or extends by one token, and a token emission
  consumes the frame; a frame is one joint call and one predictor step over all B*K hypotheses.
* S > 1, standard transducer topology (as in training: a frame's emissions end with a blank), with
  at most S symbols per frame. A frame runs S expansion sub-steps. At the start of a frame every
  hypothesis is active; an active hypothesis taking blank is finished for the frame, one taking a
  token stays active for the next sub-step. At the last sub-step a token emission also finishes
  the frame (without a blank, as in modified search), so decoding never stalls. Each sub-step
  keeps the top K over the finished hypotheses carried forward and every expansion of the active
  ones: S joint calls and S predictor steps per frame.

Candidates that spell the same token sequence are merged (log-add of their probabilities) before
the top K are chosen: equal hypotheses at the start of a frame, and, within a frame, every
candidate that finishes it (an active hypothesis taking blank with a finished one of the same
sequence; a last-sub-step token emission with the hypothesis it spells). So each kept hypothesis
scores the sum over its alignments (with at most S symbols per frame). An active hypothesis is not
merged with a finished one: it is a different state (it has yet to end its frame). Sequences are
identified by a rolling int32 hash plus their length.

Shallow fusion (`fusion=`, e.g. `context_fusion(graph)`): every hypothesis carries the fusion's
extra state (regathered with the survivors like the predictor state, advanced where a token is
emitted, unchanged on padded frames); its scores are added to the candidates' log-probs before
the top K, its finalize term before the final sort. Merging stays exact: equal token sequences
have equal fusion states, so the fusion adds the same amount to each of their alignments.

References: Kang et al. 2023, "Fast and Parallel Decoding for Transducer" (one symbol per frame,
batched over hypotheses); icefall `beam_search.py::modified_beam_search` (the algorithm; here a
`lax.scan` over a fixed-shape state, as Flax `examples/wmt/decode.py` does for its beam search);
Graves 2012 (merging prefixes by probability sum; several symbols per frame).
"""

from __future__ import annotations

import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

from asr.decoding.greedy import (
    NEG,
    DecoderFns,
    Fusion,
    check_encoder_outputs,
    fusion_advance,
    fusion_scores,
    initial_predictor,
    internal_lm,
    select_tree,
)
from asr.models.predictor import gather_state

HASH_MULT = 1_000_003  # rolling hash: h(seq + [v]) = h(seq) * HASH_MULT + v + 1 (int32, wraps)


class BeamState(NamedTuple):
    """Loop state of `beam_search`; B utterances, K hypotheses each, L token slots."""

    tokens: jax.Array  # int32[B, K, L]: hypothesis tokens, 0 past `lengths`
    lengths: jax.Array  # int32[B, K]: tokens in each hypothesis
    scores: jax.Array  # f32[B, K]: log-prob summed over merged alignments; ~NEG = dead
    hashes: jax.Array  # int32[B, K]: rolling hash of tokens[..., :lengths]
    pred_state: Any  # predictor state pytree, every leaf [B*K, ...] (row b*K + k)
    pred_p: jax.Array  # f32[B*K, J]: predictor output after each hypothesis' last token
    extra: Any = None  # fusion state pytree, every leaf [B*K, ...] (None without a fusion)


def beam_search(
    fns: DecoderFns,
    enc_p: ArrayLike,
    enc_paddings: ArrayLike,
    beam: int = 4,
    max_len: int | None = None,
    max_symbols: int = 1,
    fusion: Fusion | None = None,
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Batched transducer beam search: modified (max_symbols=1) or up to S symbols per frame.

    Args:
      fns: the model's predictor and joiner (`decoder_fns(model, variables)`).
      enc_p: f32[B, T, J] projected encoder output (`Transducer.encode`).
      enc_paddings: f32[B, T], 1.0 = padded frame (leaves every hypothesis unchanged).
      beam: K, hypotheses kept per utterance.
      max_len: token buffer length L >= 1; default S*T (enough: S symbols per frame at most).
        Hypotheses whose buffer is full may only take blank.
      max_symbols: S >= 1, non-blank symbols a hypothesis may emit per frame. 1 = modified beam
        search (a token consumes the frame); S > 1 = standard topology (a frame's emissions end
        with blank, or after the S-th symbol), S expansion sub-steps per frame.
      fusion: scores added to the candidates' log-probs before pruning (e.g.
        `context_fusion(graph)` for context biasing); None: plain beam search.

    Returns:
      tokens int32[B, K, L] (0 past each length), token_paddings f32[B, K, L] (1.0 = padding),
      scores f32[B, K]: log of the total probability of each token sequence over its alignments,
      plus, with a fusion, its scores of the sequence and its finalize term (what ranked them;
      for a context graph: + `context_score` of the tokens), sorted best first. Scores near NEG
      (-1e9) mark dead slots, present only when fewer than K distinct sequences are reachable.
    """
    check_encoder_outputs(enc_p, enc_paddings)
    if beam < 1:
        raise ValueError(f"beam must be >= 1, got {beam}")
    if max_symbols < 1:
        raise ValueError(f"max_symbols must be >= 1, got {max_symbols}")
    if max_len is None:
        max_len = max(max_symbols * np.shape(enc_p)[1], 1)
    if max_len < 1:
        raise ValueError(f"max_len must be >= 1, got {max_len}")
    if fusion is not None and not isinstance(fusion, Fusion):
        raise ValueError(f"fusion must be a Fusion or None, got {type(fusion).__name__}")
    return _beam_search(fns, enc_p, enc_paddings, int(beam), int(max_len), int(max_symbols), fusion)


def _merge_duplicates(hashes: jax.Array, lengths: jax.Array, scores: jax.Array):
    """Log-adds the scores of equal hypotheses into the first of them; the others get NEG.

    hashes, lengths: int32[B, K]; scores f32[B, K] -> (scores f32[B, K], is_first bool[B, K]).
    Equal hypotheses come from dead slots filled with copies (at the start every slot is the
    empty sequence, and while fewer than K sequences are reachable); live ones stay distinct.
    """
    k = scores.shape[1]
    same = (hashes[:, :, None] == hashes[:, None, :]) & (lengths[:, :, None] == lengths[:, None, :])
    first = jnp.argmax(same, axis=2)  # -> [B, K]: index of the first equal hypothesis
    is_first = first == jnp.arange(k)[None]
    total = jax.nn.logsumexp(jnp.where(same, scores[:, None, :], NEG), axis=2)
    return jnp.where(is_first, jnp.maximum(total, NEG), NEG), is_first


@functools.partial(jax.jit, static_argnames=("beam", "max_len", "max_symbols"))
def _beam_search(fns, enc_p, enc_paddings, beam, max_len, max_symbols, fusion=None):
    enc_p = jnp.asarray(enc_p, jnp.float32)
    b, _, je = enc_p.shape
    k = beam
    blank = fns.blank_id
    pred_state, pred_p = initial_predictor(fns, b * k)
    utts = jnp.repeat(jnp.arange(b, dtype=jnp.int32), k)  # -> [B*K]: utterance of each row
    init = BeamState(
        tokens=jnp.zeros((b, k, max_len), jnp.int32),
        lengths=jnp.zeros((b, k), jnp.int32),
        scores=jnp.full((b, k), NEG, jnp.float32).at[:, 0].set(0.0),
        hashes=jnp.zeros((b, k), jnp.int32),
        pred_state=pred_state,
        pred_p=pred_p,
        extra=None if fusion is None else fusion.init(fusion.params, utts, b),
    )
    bi = jnp.arange(b)[:, None, None]  # batch index for [B, K, K] gathers
    ki = jnp.arange(k)[None, :, None]  # hypothesis index i (rows of [B, K, K])
    kj = jnp.arange(k)[None, None, :]  # hypothesis index j (columns of [B, K, K])

    def sub_step(n, enc_t, frame_first, carry):
        """One expansion of the active hypotheses; sub-step n of the frame (Python int or traced).

        carry = (BeamState, active bool[B, K]): active hypotheses have not ended the frame yet;
        the others are carried over unchanged (their only candidate is themselves, at no cost).
        frame_first bool[B, K]: first copy of each sequence at the start of the frame.
        """
        s, active = carry
        last_step = n == max_symbols - 1  # a token emission ends the frame
        logits = fns.joint(
            fns.variables,
            jnp.broadcast_to(enc_t[:, None, :], (b, k, je)),
            s.pred_p.reshape(b, k, -1),
        )  # -> [B, K, V]
        v_size = logits.shape[-1]
        logp = jnp.maximum(jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1), NEG)
        lm = None  # the internal LM of each hypothesis, for a fusion that reads it
        if fusion is not None:  # shallow fusion: one gathered row of scores per hypothesis
            lm = internal_lm(fns, s.pred_p, je) if fusion.uses_lm else None
            fused = fusion_scores(fusion, s.extra, utts, logp.reshape(b * k, v_size), lm)
            logp = logp + fused.reshape(b, k, v_size)  # -> [B, K, V]
        nonblank = jnp.arange(v_size) != blank  # -> [V]
        stay = jnp.where(nonblank, NEG, 0.0)  # -> [V]: a finished hypothesis is only carried
        cand = s.scores[:, :, None] + jnp.where(active[:, :, None], logp, stay)  # -> [B, K, V]
        cand = jnp.where(nonblank & (s.lengths >= max_len)[:, :, None], NEG, cand)

        # Every blank candidate finishes the frame: after the first sub-step an active and a
        # finished hypothesis may spell the same sequence, so log-add their blank candidates into
        # the first copy. (At the first sub-step all are active and the frame start merged them.)
        if isinstance(n, int) and n == 0:  # S = 1: nothing to merge, skip the K x K work
            blank_sc, is_first = cand[:, :, blank], frame_first  # -> [B, K] each
        else:
            merged, merged_first = _merge_duplicates(s.hashes, s.lengths, cand[:, :, blank])
            blank_sc = jnp.where(n > 0, merged, cand[:, :, blank])  # -> [B, K]
            is_first = jnp.where(n > 0, merged_first, frame_first)  # -> [B, K]

        # At the last sub-step a token emission finishes the frame too: hypothesis i taking blank
        # spells the same sequence as active hypothesis j extended by i's last token when
        # seq_j + [last_i] == seq_i. The blank candidate absorbs that one.
        last = s.tokens[bi[..., 0], ki[..., 0], jnp.maximum(s.lengths - 1, 0)]  # -> [B, K]
        ext_hash = s.hashes[:, None, :] * HASH_MULT + (last[:, :, None] + 1)  # -> [B, i, j]
        # Only the first copy of a hypothesis may absorb (else the mass would be counted twice).
        match = (
            last_step
            & is_first[:, :, None]
            & active[:, None, :]
            & (s.lengths[:, :, None] > 0)
            & (s.lengths[:, None, :] + 1 == s.lengths[:, :, None])
            & (ext_hash == s.hashes[:, :, None])
        )  # -> [B, i, j]
        ext_at = cand[bi, kj, last[:, :, None]]  # cand[b, j, last_i] -> [B, i, j]
        absorbed = jax.nn.logsumexp(jnp.where(match, ext_at, NEG), axis=2)  # -> [B, i]
        blank_sc = jnp.where(jnp.any(match, axis=2), jnp.logaddexp(blank_sc, absorbed), blank_sc)
        taken = jnp.einsum(
            "bij,biv->bjv", match.astype(jnp.float32), jax.nn.one_hot(last, v_size)
        )  # -> [B, j, V]: > 0 where cand[b, j, v] was absorbed
        cand = jnp.where(taken > 0, NEG, cand).at[:, :, blank].set(blank_sc)

        top, idx = jax.lax.top_k(cand.reshape(b, k * v_size), k)  # -> [B, K] each
        src = idx // v_size  # -> [B, K]: parent hypothesis
        tok = (idx % v_size).astype(jnp.int32)  # -> [B, K]: symbol taken
        ext = tok != blank
        tokens = jnp.take_along_axis(s.tokens, src[:, :, None], axis=1)
        lengths = jnp.take_along_axis(s.lengths, src, axis=1)
        hashes = jnp.take_along_axis(s.hashes, src, axis=1)
        tokens = tokens.at[bi[..., 0], ki[..., 0], jnp.where(ext, lengths, max_len)].set(
            tok, mode="drop"
        )
        flat_src = (jnp.arange(b)[:, None] * k + src).reshape(-1)  # -> [B*K]
        ext_flat = ext.reshape(-1)
        state_g = gather_state(s.pred_state, flat_src)
        pred_p_g = s.pred_p[flat_src]
        new_state, new_p = fns.pred_step(fns.variables, state_g, tok.reshape(-1))
        extra = None
        if fusion is not None:
            extra_g = gather_state(s.extra, flat_src)
            lm_g = None if lm is None else lm[flat_src]
            extra_new = fusion_advance(fusion, extra_g, tok.reshape(-1), utts, lm_g)
            extra = select_tree(ext_flat, extra_new, extra_g)
        new = BeamState(
            tokens=tokens,
            lengths=lengths + ext.astype(jnp.int32),
            scores=jnp.maximum(top, NEG),
            hashes=jnp.where(ext, hashes * HASH_MULT + tok + 1, hashes),
            pred_state=select_tree(ext_flat, new_state, state_g),
            pred_p=jnp.where(ext_flat[:, None], new_p, pred_p_g),
            extra=extra,
        )
        return new, ext & jnp.logical_not(last_step)

    def frame(s: BeamState, xs):
        enc_t, valid = xs  # f32[B, J], bool[B]
        scores, is_first = _merge_duplicates(s.hashes, s.lengths, s.scores)
        carry = (s._replace(scores=scores), jnp.ones((b, k), bool))
        if max_symbols == 1:
            new, _ = sub_step(0, enc_t, is_first, carry)
        else:

            def step(n, c):
                return sub_step(n, enc_t, is_first, c)

            new, _ = jax.lax.fori_loop(0, max_symbols, step, carry)
        valid_flat = jnp.repeat(valid, k)
        per_utt = (new.tokens, new.lengths, new.scores, new.hashes)
        old_utt = (s.tokens, s.lengths, s.scores, s.hashes)
        per_utt = select_tree(valid, per_utt, old_utt)
        per_hyp = select_tree(
            valid_flat, (new.pred_state, new.pred_p, new.extra), (s.pred_state, s.pred_p, s.extra)
        )
        return BeamState(*per_utt, *per_hyp), None

    xs = (jnp.swapaxes(enc_p, 0, 1), jnp.swapaxes(jnp.asarray(enc_paddings) < 0.5, 0, 1))
    out, _ = jax.lax.scan(frame, init, xs)
    scores = out.scores
    if fusion is not None:  # e.g. take back the boosts of unfinished context phrases
        fin = fusion.finalize(fusion.params, out.extra, utts).astype(jnp.float32).reshape(b, k)
        scores = jnp.where(scores > NEG / 2, jnp.maximum(scores + fin, NEG), scores)
    order = jnp.argsort(-scores, axis=1, stable=True)  # -> [B, K] best first
    tokens = jnp.take_along_axis(out.tokens, order[:, :, None], axis=1)
    lengths = jnp.take_along_axis(out.lengths, order, axis=1)
    scores = jnp.take_along_axis(scores, order, axis=1)
    token_paddings = (jnp.arange(max_len)[None, None] >= lengths[:, :, None]).astype(jnp.float32)
    return tokens, token_paddings, scores
