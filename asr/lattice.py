"""The transducer (RNN-T) loss: log-space forward recursion, memory-aware joint evaluation.

It lives in `asr` because the recognizer uses it too: the phonetic second pass scores whole
sentences by the transducer's log-likelihood over every alignment (`Recognizer.
sentence_log_likelihoods`), and `asr` may not import `train`. The trainer imports it from here.

Owns two functions:

- `rnnt_loss_from_logprobs`: the negative log-likelihood of the label sequence given the blank
  and next-label log-probabilities on the (T, U+1) lattice. The forward variable alpha is computed
  in log space by a `lax.scan` over anti-diagonals n = t + u: every node on a diagonal depends
  only on the previous diagonal, so each step is one vectorized `logaddexp` over [B, U+1]; no
  Python loop over T, no cumulative sums that lose float32 precision. Gradients come from
  autodiff; masked entries are replaced by a large finite negative number (never -inf) so that
  no `-inf - -inf` appears and padded positions get exactly zero gradient.
- `rnnt_loss`: the loss from encoder and predictor outputs and a joint network. The joint's
  [B, T, U+1, V] logits are never materialized for the whole utterance: time is split into
  chunks, and per chunk only the blank column and the next-label column of the log-softmax are
  kept ([B, t, U+1] and [B, t, U]). The chunk function is rematerialized (`jax.checkpoint`) under
  `lax.map`, so the backward pass recomputes one chunk's logits at a time too: peak memory is
  O(B * time_chunk * (U+1) * V) instead of O(B * T * (U+1) * V). This is the "function merging"
  idea of Li et al. 2019 (fuse log-softmax and the gather into the joint so only two columns
  survive) combined with chunking over time.

Padding follows `optax.ctc_loss`: `*_paddings` float arrays, 1.0 = padded, right-padded;
lengths are derived from the masks (sum of 1 - paddings), never passed alongside.

References:
  Graves 2012, "Sequence Transduction with Recurrent Neural Networks", arXiv:1211.3711
    (the lattice, forward-backward recursions and the gradient).
  Li et al. 2019, "Improving RNN Transducer Modeling for End-to-End Speech Recognition",
    ASRU 2019 (function merging: compute the log-softmax and gather per chunk, never the full
    4-D log-probability tensor).
  Bagby et al. 2018, "Efficient Implementation of Recurrent Neural Network Transducer in
    TensorFlow" (anti-diagonal evaluation of the lattice).
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

# Stand-in for log(0): finite so that differences and gradients never produce NaN, and far
# enough below any real log-probability that exp(NEG - x) is exactly 0 in float32.
NEG = -1e30

# Automatic `time_chunk` keeps one chunk's logits, B * time_chunk * (U+1) * V, under this many
# floats (64 MB in float32). The backward pass holds about six buffers of that size at once
# (logits, the joint's hidden activations, softmax, their cotangents), so the joint's peak stays
# near 0.4 GB whatever T is. Each chunk is still a joint matmul of several GFLOPs, enough to fill
# a GPU; on CPUs (train/benchmarks/loss.py) small chunks are as fast as the full joint or faster.
AUTO_CHUNK_FLOATS = 16 * 1024 * 1024

JointFn = Callable[[jax.Array, jax.Array], jax.Array]


def _skew(x: jax.Array) -> jax.Array:
    """Shear a lattice array so that anti-diagonals become rows.

    Args:
      x: [B, T, W].

    Returns:
      [B, T+W-1, W] with y[b, n, w] = x[b, n-w, w] where 0 <= n-w < T and NEG elsewhere. Done by
      pad and reshape (no gather), so the backward pass is a reshape too.
    """
    b, t, w = x.shape
    xt = jnp.swapaxes(x, 1, 2)  # -> [B, W, T]
    xt = jnp.pad(xt, ((0, 0), (0, 0), (0, w)), constant_values=NEG)  # -> [B, W, T+W]
    flat = xt.reshape(b, w * (t + w))[:, : w * (t + w - 1)]
    return jnp.swapaxes(flat.reshape(b, w, t + w - 1), 1, 2)  # -> [B, T+W-1, W]


def _lengths(paddings: jax.Array) -> jax.Array:
    """int32[B] number of unpadded positions of f32[B, L] paddings (1.0 = padded)."""
    return jnp.round(jnp.sum(1.0 - paddings, axis=-1)).astype(jnp.int32)


def rnnt_loss_from_logprobs(
    blank_logprobs: ArrayLike,
    label_logprobs: ArrayLike,
    frame_paddings: ArrayLike,
    label_paddings: ArrayLike,
) -> jax.Array:
    """Transducer negative log-likelihood from the lattice's log-probabilities.

    Node (t, u) means "at frame t, with u labels emitted so far". From (t, u) a blank
    moves to (t+1, u) and the next label y_{u+1} moves to (t, u+1). An alignment ends with a
    blank emitted at (T_b-1, U_b), for the true lengths T_b and U_b of utterance b.

    Args:
      blank_logprobs: f32[B, T, U+1], log P(blank | t, u).
      label_logprobs: f32[B, T, U], log P(y_{u+1} | t, u), the next label's log-probability at
        node (t, u). U may be 0.
      frame_paddings: f32[B, T], 1.0 = padded frame (right padding).
      label_paddings: f32[B, U], 1.0 = padded label (right padding).

    Returns:
      f32[B]: -log sum over all monotonic alignments of their probabilities. Utterances with no
      frames (T_b = 0) get 0 (and zero gradient), so dummy batch fillers are harmless. Values in
      padded positions are ignored and receive exactly zero gradient.
    """
    blank = jnp.asarray(blank_logprobs)
    label = jnp.asarray(label_logprobs)
    frame_paddings = jnp.asarray(frame_paddings)
    label_paddings = jnp.asarray(label_paddings)
    if blank.ndim != 3 or label.ndim != 3:
        raise ValueError(
            "expected blank_logprobs [B, T, U+1] and label_logprobs [B, T, U], got "
            f"{blank.shape} and {label.shape}"
        )
    b, t, u1 = blank.shape
    u = u1 - 1
    if label.shape != (b, t, u):
        raise ValueError(f"expected label_logprobs of shape {(b, t, u)}, got {label.shape}")
    if frame_paddings.shape != (b, t):
        raise ValueError(f"expected frame_paddings of shape {(b, t)}, got {frame_paddings.shape}")
    if label_paddings.shape != (b, u):
        raise ValueError(f"expected label_paddings of shape {(b, u)}, got {label_paddings.shape}")

    dtype = jnp.promote_types(blank.dtype, jnp.float32)
    blank = blank.astype(dtype)
    label = label.astype(dtype)
    t_len = _lengths(frame_paddings)  # -> [B]
    u_len = _lengths(label_paddings)  # -> [B]

    # Mask the lattice to each utterance's true (T_b, U_b): no path can then pass a padded node.
    t_idx = jnp.arange(t)[None, :, None]
    u_idx = jnp.arange(u1)[None, None, :]
    frame_ok = t_idx < t_len[:, None, None]
    blank = jnp.where(frame_ok & (u_idx <= u_len[:, None, None]), blank, NEG)
    label = jnp.where(frame_ok & (u_idx[..., :u] < u_len[:, None, None]), label, NEG)

    n_diag = t + u  # diagonals n = t + u, 0 .. T+U-1
    blank_diag = _skew(blank)  # -> [B, T+U, U+1]: blank_diag[n, u] = blank[n-u, u]
    label_diag = _skew(label)  # -> [B, T+U-1, U]: label_diag[n, u] = label[n-u, u]
    label_diag = jnp.pad(label_diag, ((0, 0), (0, 1), (0, 0)), constant_values=NEG)  # T+U rows
    end_diag = t_len - 1 + u_len  # -> [B], diagonal of the final node (T_b-1, U_b)

    def step(carry, xs):
        alpha, loglik = carry  # [B, U+1] alpha on diagonal n; [B] log-likelihood found so far
        n, blank_n, label_n = xs  # [], [B, U+1], [B, U]
        # Final blank out of (T_b-1, U_b), read off when diagonal n is the utterance's last.
        final = jnp.take_along_axis(alpha + blank_n, u_len[:, None], axis=1)[:, 0]
        loglik = jnp.where(n == end_diag, final, loglik)
        # Diagonal n+1: (t, u) <- (t-1, u) by blank, (t, u-1) by label y_u.
        from_blank = alpha + blank_n
        from_label = jnp.concatenate([jnp.full((b, 1), NEG, dtype), alpha[:, :u] + label_n], axis=1)
        alpha = jnp.maximum(jnp.logaddexp(from_blank, from_label), NEG)
        return (alpha, loglik), None

    alpha0 = jnp.full((b, u1), NEG, dtype).at[:, 0].set(0.0)
    xs = (
        jnp.arange(n_diag),
        jnp.swapaxes(blank_diag, 0, 1),  # -> [T+U, B, U+1]
        jnp.swapaxes(label_diag, 0, 1),  # -> [T+U, B, U]
    )
    (_, loglik), _ = jax.lax.scan(step, (alpha0, jnp.zeros((b,), dtype)), xs)
    return jnp.where(t_len > 0, -loglik, 0.0)


def auto_time_chunk(batch: int, frames: int, label_len: int, vocab: int) -> int:
    """Frames per chunk so that one chunk's logits, B * chunk * (U+1) * V floats, stay under
    `AUTO_CHUNK_FLOATS` (but at least 1 frame), split evenly: the fewest chunks that respect the
    budget, each ceil(T / chunks) frames, so padding T up to a multiple wastes < 1 frame a chunk."""
    per_frame = max(1, batch * (label_len + 1) * vocab)
    largest = max(1, min(frames, AUTO_CHUNK_FLOATS // per_frame))
    n_chunks = -(-frames // largest)
    return -(-frames // n_chunks)


def _joint_columns(
    joint_fn: JointFn,
    enc: jax.Array,
    pred: jax.Array,
    labels: jax.Array,
    blank_id: int,
) -> tuple[jax.Array, jax.Array]:
    """Blank and next-label log-probabilities of one time chunk.

    Args:
      enc: f32[B, t, De] encoder frames of the chunk.
      pred: f32[B, U+1, Dp] predictor outputs.
      labels: int32[B, U], already clipped to [0, V).

    Returns:
      (f32[B, t, U+1] log P(blank), f32[B, t, U] log P(y_{u+1})). The chunk's log-softmax lives
      only inside this function (XLA fuses it with the gathers).
    """
    u = labels.shape[1]
    logits = joint_fn(enc[:, :, None, :], pred[:, None, :, :])  # -> [B, t, U+1, V]
    logp = jax.nn.log_softmax(logits.astype(jnp.promote_types(logits.dtype, jnp.float32)), -1)
    blank = logp[..., blank_id]  # -> [B, t, U+1]
    label = jnp.take_along_axis(logp[:, :, :u], labels[:, None, :, None], axis=-1)[..., 0]
    return blank, label  # label: [B, t, U]


def rnnt_loss(
    joint_fn: JointFn,
    encoder_out: ArrayLike,
    encoder_paddings: ArrayLike,
    predictor_out: ArrayLike,
    labels: ArrayLike,
    label_paddings: ArrayLike,
    blank_id: int = 0,
    time_chunk: int | None = None,
) -> jax.Array:
    """Transducer loss through a joint network, evaluated a time chunk at a time.

    Args:
      joint_fn: (enc f32[B, t, 1, De], pred f32[B, 1, U+1, Dp]) -> logits f32[B, t, U+1, V],
        broadcasting over the two singleton axes. May close over parameters; gradients flow to
        them.
      encoder_out: f32[B, T, De] encoder frames.
      encoder_paddings: f32[B, T], 1.0 = padded frame.
      predictor_out: f32[B, U+1, Dp] predictor outputs for the blank-prefixed label history:
        row 0 follows the start (<blank>) symbol, row u follows labels[:, u-1].
      labels: int32[B, U] target labels; values in padded positions are ignored.
      label_paddings: f32[B, U], 1.0 = padded label.
      blank_id: vocabulary index of blank.
      time_chunk: frames per chunk of the joint. None chooses `auto_time_chunk`: the largest
        chunk with B * chunk * (U+1) * V <= AUTO_CHUNK_FLOATS (16M floats, 64 MB in float32).
        T is padded up to a multiple of it; the extra frames are dropped before the lattice.
        A chunk covering all of T skips the remat (it would recompute without saving memory).

    Returns:
      f32[B] negative log-likelihood per utterance (see `rnnt_loss_from_logprobs`).

    Peak memory of the joint is O(B * time_chunk * (U+1) * V) in both passes: chunks run under
    `lax.map` and each chunk is rematerialized (`jax.checkpoint`) for the backward pass.
    """
    enc = jnp.asarray(encoder_out)
    enc_pad = jnp.asarray(encoder_paddings)
    pred = jnp.asarray(predictor_out)
    labels = jnp.asarray(labels)
    label_pad = jnp.asarray(label_paddings)
    _, t, u, vocab = check_lattice_inputs(
        joint_fn, enc, enc_pad, pred, labels, label_pad, blank_id, time_chunk
    )
    chunk = auto_time_chunk(enc.shape[0], t, u, vocab) if time_chunk is None else time_chunk
    labels = jnp.clip(labels, 0, vocab - 1)  # padded labels may hold anything, e.g. -1

    def chunk_fn(enc_chunk):
        return _joint_columns(joint_fn, enc_chunk, pred, labels, blank_id)

    blank, label = map_time_chunks(chunk_fn, enc, chunk)  # -> [B, T, U+1], [B, T, U]
    return rnnt_loss_from_logprobs(blank, label, enc_pad, label_pad)


def check_lattice_inputs(
    joint_fn: JointFn,
    enc: jax.Array,
    enc_pad: jax.Array,
    pred: jax.Array,
    labels: jax.Array,
    label_pad: jax.Array,
    blank_id: int,
    time_chunk: int | None,
    names: tuple[str, str, str] = ("encoder_out", "encoder_paddings", "predictor_out"),
) -> tuple[int, int, int, int]:
    """Checks the arguments of a loss over the transducer lattice (`rnnt_loss`,
    `train.distill.collapsed_log_probs`) and returns (B, T, U, V); errors say expected vs got,
    with `names` for the encoder output, its paddings and the predictor output."""
    n_enc, n_pad, n_pred = names
    if enc.ndim != 3:
        raise ValueError(f"expected {n_enc} [B, T, De], got shape {enc.shape}")
    b, t, _ = enc.shape
    if enc_pad.shape != (b, t):
        raise ValueError(f"expected {n_pad} of shape {(b, t)}, got {enc_pad.shape}")
    if labels.ndim != 2 or labels.shape[0] != b:
        raise ValueError(f"expected labels [B={b}, U], got shape {labels.shape}")
    u = labels.shape[1]
    if not jnp.issubdtype(labels.dtype, jnp.integer):
        raise ValueError(f"expected integer labels, got dtype {labels.dtype}")
    if pred.ndim != 3 or pred.shape[:2] != (b, u + 1):
        raise ValueError(f"expected {n_pred} [B={b}, U+1={u + 1}, Dp], got {pred.shape}")
    if label_pad.shape != (b, u):
        raise ValueError(f"expected label_paddings of shape {(b, u)}, got {label_pad.shape}")
    if time_chunk is not None and (not isinstance(time_chunk, int) or time_chunk < 1):
        raise ValueError(f"expected time_chunk a positive int or None, got {time_chunk!r}")
    if t == 0:
        raise ValueError(f"expected at least one frame, got {n_enc} of shape {enc.shape}")
    out = jax.eval_shape(joint_fn, enc[:, :1, None, :], pred[:, None, :, :])
    if out.ndim != 4 or out.shape[:3] != (b, 1, u + 1):
        raise ValueError(
            f"expected joint_fn to return [B={b}, t=1, U+1={u + 1}, V], got {out.shape}"
        )
    vocab = out.shape[3]
    if vocab < 2 or not 0 <= blank_id < vocab:
        raise ValueError(f"expected V >= 2 and 0 <= blank_id < V={vocab}, got {blank_id}")
    return b, t, u, vocab


def map_time_chunks(fn: Callable, enc: jax.Array, chunk: int):
    """fn over enc f32[B, T, De] split into time chunks, outputs concatenated along time.

    fn: f32[B, t, De] -> a pytree of f32[B, t, ...]. With chunk < T the chunks run under
    `lax.map`, each rematerialized (`jax.checkpoint`) for the backward pass, T padded up to a
    multiple of chunk and cut back after. A single chunk skips the remat (it would recompute
    everything and save nothing).
    """
    b, t, _ = enc.shape
    if chunk >= t:
        return fn(enc)
    n_chunks = -(-t // chunk)
    enc = jnp.pad(enc, ((0, 0), (0, n_chunks * chunk - t), (0, 0)))
    enc_chunks = jnp.swapaxes(enc.reshape(b, n_chunks, chunk, -1), 0, 1)  # -> [K, B, chunk, De]
    out = jax.lax.map(jax.checkpoint(fn), enc_chunks)  # -> leaves [K, B, chunk, ...]

    def merge(x):
        x = jnp.swapaxes(x, 0, 1)  # -> [B, K, chunk, ...]
        return x.reshape(b, n_chunks * chunk, *x.shape[3:])[:, :t]

    return jax.tree_util.tree_map(merge, out)
