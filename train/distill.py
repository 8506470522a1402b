"""Teacher-student distillation for transducers over collapsed lattice distributions.

Owns the efficient knowledge-distillation loss of Panchapagesan et al. 2021. A reference label
sequence y (ground truth, or the teacher's 1-best for unlabelled audio) fixes the output lattice
(t, u), t < T frames, u <= U labels emitted. At every node the joint's full V-way distribution
is collapsed to three probabilities:

    P(label | t, u) = P(y_{u+1} | t, u)          the next reference label (0 at u = U)
    P(blank | t, u)
    P(rest  | t, u) = 1 - P(label) - P(blank)    every other symbol

and the loss is the KL divergence of the student's collapsed distribution from the teacher's,
summed over the valid nodes (t < T_b, u <= U_b of utterance b). At u = U_b there is no next
label: the node is a two-way blank-vs-rest distribution, the label slot is excluded (its
probability is 0 and `distill_loss` ignores whatever value it holds). KL differs from the
cross-entropy -sum p_teacher log p_student only by the teacher's entropy, a constant for the
student: same gradients, but KL is 0 when the student matches.

Functions:

- `collapsed_log_probs`: f32[B, T, U+1, 3] log-probabilities (label, blank, rest) from
  encoder and predictor outputs and a joint network, evaluated a time chunk at a time like
  `asr.lattice.rnnt_loss` (`lax.map` over chunks, each chunk rematerialized with
  `jax.checkpoint`), so [B, T, U+1, V] is never whole in either pass. "rest" is a masked
  logsumexp over the other V-2 logits, not log(1 - p_label - p_blank), so it keeps full
  precision when the teacher is confident (rest ~ 1e-9 would round to 0 in float32).
- `distill_loss`: f32[B] sum over valid nodes of KL(teacher || student), optionally tempered
  and optionally weighted per node; teacher and weights are constants (`stop_gradient`).
- `teacher_occupancy`: optional node weights, the posterior probability under the teacher that
  an alignment of y passes through node (t, u): alpha(t, u) beta(t, u) / P(y | x). Cheap: it
  is the gradient of log P(y | x) (from `asr.lattice.rnnt_loss_from_logprobs` on the teacher's
  label and blank slots) with respect to the node's outgoing log-probabilities, one
  forward-backward over [B, T, U+1] floats. The paper uses a plain sum over nodes (weights 1);
  occupancy weighting concentrates the loss on nodes the teacher actually visits (weights sum
  to T_b + U_b per utterance instead of T_b (U_b + 1) nodes).
- `rnnt_loss_from_collapsed`: the transducer NLL from the same collapsed array (slots 0 and 1
  are exactly the next-label and blank log-probabilities `rnnt_loss_from_logprobs` takes), so
  a train step evaluates the student's joint once for both the NLL and the distillation term.

Precomputing the teacher for large unlabelled sets: the teacher enters the loss only through
its collapsed array, so run `collapsed_log_probs` once per utterance with the teacher's joint
and the reference labels y (its own 1-best), and store, per utterance, y (int32[U_b]) and the
collapsed log-probabilities sliced to the true lattice, [T_b, U_b+1, 3]: 3 floats per node
instead of V (V = 1024: 341 times smaller; T_b = 250, U_b = 50 is 76 KB in float16). Store
float16 after `np.maximum(x, -1e4)` (NEG = -1e30 overflows float16; exp(-1e4) is 0 in float32
as exp(NEG) is), as .npy/.npz (no pickle). At training time, pad them to the batch's
[B, T, U+1, 3] like the labels (pad value irrelevant: padded nodes are masked) and pass them as
`teacher_collapsed`. This requires the student to share the teacher's tokenizer, blank id and
encoder frame rate (same T after subsampling) and to be fed the same y; augmentation may differ
(teacher on clean audio, student on SpecAugmented features is the usual choice).

Padding follows `asr.lattice` and `optax.ctc_loss`: `*_paddings` float arrays, 1.0 = padded,
right-padded; lengths are derived from the masks.

References:
  Panchapagesan et al. 2021, "Efficient Knowledge Distillation for RNN-Transducer Models",
    ICASSP 2021, arXiv:2011.06110 (the collapsed (label, blank, rest) distributions and the
    KL summed over the lattice).
  Hinton, Vinyals & Dean 2015, "Distilling the Knowledge in a Neural Network",
    arXiv:1503.02531 (temperature and the T^2 gradient scaling).
  Graves 2012, "Sequence Transduction with Recurrent Neural Networks", arXiv:1211.3711
    (the lattice and the node occupancy alpha beta / P).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from asr.lattice import (
    NEG,
    JointFn,
    _lengths,
    auto_time_chunk,
    check_lattice_inputs,
    map_time_chunks,
    rnnt_loss_from_logprobs,
)

# Slots of the last axis of a collapsed array.
LABEL, BLANK, REST = 0, 1, 2


def _collapse_chunk(
    joint_fn: JointFn,
    enc: jax.Array,
    pred: jax.Array,
    next_label: jax.Array,
    has_label: jax.Array,
    blank_id: int,
) -> jax.Array:
    """Collapsed log-probabilities of one time chunk.

    Args:
      enc: f32[B, t, De] encoder frames of the chunk.
      pred: f32[B, U+1, Dp] predictor outputs.
      next_label: int32[B, U+1], y_{u+1} clipped to [0, V); any value where not has_label.
      has_label: bool[B, U+1], u < U_b: the node has a next label.

    Returns:
      f32[B, t, U+1, 3] (label, blank, rest); label is NEG where not has_label. The chunk's
      [B, t, U+1, V] logits live only inside this function.
    """
    logits = joint_fn(enc[:, :, None, :], pred[:, None, :, :])  # -> [B, t, U+1, V]
    logits = logits.astype(jnp.promote_types(logits.dtype, jnp.float32))
    vocab = jnp.arange(logits.shape[-1])
    is_label = (vocab == next_label[..., None]) & has_label[..., None]  # -> [B, U+1, V]
    is_rest = (vocab != blank_id) & ~is_label  # -> [B, U+1, V]
    total = jax.nn.logsumexp(logits, axis=-1)  # -> [B, t, U+1]
    rest = jax.nn.logsumexp(jnp.where(is_rest[:, None], logits, NEG), axis=-1)
    label = jnp.take_along_axis(logits, next_label[:, None, :, None], axis=-1)[..., 0]
    label = jnp.where(has_label[:, None], label - total, NEG)
    blank = logits[..., blank_id] - total
    return jnp.stack([label, blank, jnp.maximum(rest - total, NEG)], axis=-1)


def _node_masks(t: int, u1: int, enc_pad: jax.Array, label_pad: jax.Array):
    """(valid bool[B, T, U+1]: t < T_b and u <= U_b; has_label bool[B, 1, U+1]: u < U_b)."""
    t_len = _lengths(enc_pad)[:, None, None]  # -> [B, 1, 1]
    u_len = _lengths(label_pad)[:, None, None]
    t_idx = jnp.arange(t)[None, :, None]
    u_idx = jnp.arange(u1)[None, None, :]
    return (t_idx < t_len) & (u_idx <= u_len), u_idx < u_len


def collapsed_log_probs(
    joint_fn: JointFn,
    enc: ArrayLike,
    enc_paddings: ArrayLike,
    pred: ArrayLike,
    labels: ArrayLike,
    label_paddings: ArrayLike,
    blank_id: int = 0,
    time_chunk: int | None = None,
) -> jax.Array:
    """Log-probabilities of (next label, blank, rest) at every node of the lattice of `labels`.

    Args:
      joint_fn: (enc f32[B, t, 1, De], pred f32[B, 1, U+1, Dp]) -> logits f32[B, t, U+1, V],
        as for `asr.lattice.rnnt_loss`. May close over parameters; gradients flow to them.
      enc: f32[B, T, De] encoder frames.
      enc_paddings: f32[B, T], 1.0 = padded frame.
      pred: f32[B, U+1, Dp] predictor outputs for the blank-prefixed history of `labels`.
      labels: int32[B, U] reference labels y (ground truth or the teacher's 1-best); never the
        blank id in unpadded positions (the label and blank slots would then coincide). Values
        in padded positions are ignored.
      label_paddings: f32[B, U], 1.0 = padded label.
      blank_id: vocabulary index of blank.
      time_chunk: frames per chunk of the joint; None chooses `asr.lattice.auto_time_chunk`.

    Returns:
      f32[B, T, U+1, 3], last axis (label, blank, rest) = log P(y_{u+1} | t, u),
      log P(blank | t, u), log of the probability of every other symbol; each row's
      probabilities sum to 1. At u = U_b the label slot is NEG (log 0) and rest is
      log(1 - P(blank)). Padded nodes (t >= T_b or u > U_b) hold the constant row
      (NEG, 0, NEG), so stored teacher arrays are deterministic; no gradient reaches them.
    """
    enc = jnp.asarray(enc)
    enc_pad = jnp.asarray(enc_paddings)
    pred = jnp.asarray(pred)
    labels = jnp.asarray(labels)
    label_pad = jnp.asarray(label_paddings)
    b, t, u, vocab = check_lattice_inputs(
        joint_fn,
        enc,
        enc_pad,
        pred,
        labels,
        label_pad,
        blank_id,
        time_chunk,
        names=("enc", "enc_paddings", "pred"),
    )
    chunk = auto_time_chunk(b, t, u, vocab) if time_chunk is None else min(time_chunk, t)
    valid, has_label = _node_masks(t, u + 1, enc_pad, label_pad)  # [B, T, U+1], [B, 1, U+1]
    next_label = jnp.pad(jnp.clip(labels, 0, vocab - 1), ((0, 0), (0, 1)))  # -> [B, U+1]

    def chunk_fn(enc_chunk):
        return _collapse_chunk(joint_fn, enc_chunk, pred, next_label, has_label[:, 0], blank_id)

    collapsed = map_time_chunks(chunk_fn, enc, chunk)  # -> [B, T, U+1, 3]
    padded_row = jnp.array([NEG, 0.0, NEG], collapsed.dtype)
    return jnp.where(valid[..., None], collapsed, padded_row)


def _check_collapsed(name: str, x: jax.Array, shape: tuple | None = None) -> None:
    if x.ndim != 4 or x.shape[-1] != 3 or (shape is not None and x.shape != shape):
        want = "[B, T, U+1, 3]" if shape is None else str(shape)
        raise ValueError(f"expected {name} of shape {want}, got {x.shape}")


def distill_loss(
    student_collapsed: ArrayLike,
    teacher_collapsed: ArrayLike,
    enc_paddings: ArrayLike,
    label_paddings: ArrayLike,
    temperature: float = 1.0,
    weights: ArrayLike | None = None,
) -> jax.Array:
    """Per-utterance KL(teacher || student) of the collapsed distributions, summed over nodes.

    loss_b = temperature^2 * sum over t < T_b, u <= U_b of
             w(t, u) * sum_k q_T(k | t, u) (log q_T(k | t, u) - log q_S(k | t, u)),

    k over (label, blank, rest), or (blank, rest) at u = U_b; q = softmax(log p / temperature)
    renormalized over those slots (for temperature 1 the renormalization changes neither values
    nor gradients of normalized inputs). The temperature acts on the collapsed distribution;
    to temper the full V-way softmax instead, divide the joint's logits before collapsing. The
    temperature^2 factor keeps gradient magnitudes comparable across temperatures (Hinton et
    al.).

    Args:
      student_collapsed: f32[B, T, U+1, 3] log-probabilities (label, blank, rest) from
        `collapsed_log_probs` with the student's joint.
      teacher_collapsed: f32[B, T, U+1, 3], the same for the teacher over the same labels;
        computed in the step or precomputed and stored. Treated as a constant (stop_gradient).
      enc_paddings: f32[B, T], 1.0 = padded frame.
      label_paddings: f32[B, U], 1.0 = padded label.
      temperature: > 0.
      weights: optional f32[B, T, U+1] node weights w (default 1, the paper's plain sum), e.g.
        `teacher_occupancy(...)`. Treated as a constant.

    Returns:
      f32[B] loss per utterance, >= 0, 0 iff the student's collapsed distributions equal the
      teacher's on every valid node (of positive weight). Values at padded nodes and in the
      label slot at u = U_b are ignored (even NaN) and get exactly zero gradient; utterances
      with no frames get 0.
    """
    student = jnp.asarray(student_collapsed)
    teacher = jnp.asarray(teacher_collapsed)
    enc_pad = jnp.asarray(enc_paddings)
    label_pad = jnp.asarray(label_paddings)
    _check_collapsed("student_collapsed", student)
    b, t, u1, _ = student.shape
    _check_collapsed("teacher_collapsed", teacher, student.shape)
    if enc_pad.shape != (b, t):
        raise ValueError(f"expected enc_paddings of shape {(b, t)}, got {enc_pad.shape}")
    if label_pad.shape != (b, u1 - 1):
        raise ValueError(f"expected label_paddings of shape {(b, u1 - 1)}, got {label_pad.shape}")
    if isinstance(temperature, int | float) and not temperature > 0:
        raise ValueError(f"expected temperature > 0, got {temperature}")
    if weights is not None:
        weights = jnp.asarray(weights)
        if weights.shape != (b, t, u1):
            raise ValueError(f"expected weights of shape {(b, t, u1)}, got {weights.shape}")

    dtype = jnp.promote_types(student.dtype, jnp.float32)
    valid, has_label = _node_masks(t, u1, enc_pad, label_pad)  # [B, T, U+1], [B, 1, U+1]
    slot_ok = valid[..., None] & jnp.stack(  # -> [B, T, U+1, 3]
        [has_label, jnp.ones_like(has_label), jnp.ones_like(has_label)], axis=-1
    )
    # Masked slots become log 0 before any arithmetic, so NaN or garbage there cannot reach the
    # values or, through a 0 * NaN, the gradients.
    student = jnp.where(slot_ok, student.astype(dtype), NEG)
    teacher = jnp.where(slot_ok, jax.lax.stop_gradient(teacher).astype(dtype), NEG)
    # Clamped at NEG so that a tiny temperature or a -inf input cannot make -inf - -inf below.
    log_q_s = jax.nn.log_softmax(jnp.maximum(student / temperature, NEG), axis=-1)
    log_q_t = jax.nn.log_softmax(jnp.maximum(teacher / temperature, NEG), axis=-1)
    # exp(log_q_t) is exactly 0 on log-0 slots, so their (finite) log difference drops out.
    kl = jnp.sum(jnp.exp(log_q_t) * (log_q_t - log_q_s), axis=-1)  # -> [B, T, U+1]
    w = valid.astype(dtype)
    if weights is not None:
        w = w * jnp.where(valid, jax.lax.stop_gradient(weights).astype(dtype), 0.0)
    return temperature**2 * jnp.sum(kl * w, axis=(1, 2))


def rnnt_loss_from_collapsed(
    collapsed: ArrayLike, enc_paddings: ArrayLike, label_paddings: ArrayLike
) -> jax.Array:
    """Transducer NLL f32[B] (`asr.lattice.rnnt_loss_from_logprobs`) of a collapsed array
    f32[B, T, U+1, 3]: its blank slot is log P(blank | t, u) and its label slot at u < U is
    log P(y_{u+1} | t, u). Lets a train step share one chunked joint pass between the NLL and
    the distillation term."""
    x = jnp.asarray(collapsed)
    _check_collapsed("collapsed", x)
    return rnnt_loss_from_logprobs(x[..., BLANK], x[:, :, :-1, LABEL], enc_paddings, label_paddings)


def teacher_occupancy(
    teacher_collapsed: ArrayLike, enc_paddings: ArrayLike, label_paddings: ArrayLike
) -> jax.Array:
    """Posterior probability that an alignment of y passes through each node, under the teacher.

    gamma(t, u) = alpha(t, u) beta(t, u) / P(y | x) (Graves 2012), computed as the sum of the
    posteriors of the node's two outgoing transitions, i.e. the gradient of log P(y | x) with
    respect to the node's blank and next-label log-probabilities: one forward-backward over the
    lattice, no V-sized work.

    Args:
      teacher_collapsed: f32[B, T, U+1, 3] from `collapsed_log_probs` (slots label, blank).
      enc_paddings: f32[B, T], 1.0 = padded frame.
      label_paddings: f32[B, U], 1.0 = padded label.

    Returns:
      f32[B, T, U+1] in [0, 1], 0 on padded nodes, summing to T_b + U_b per utterance (every
      alignment visits that many nodes); all 0 for utterances with no frames. A constant
      (stop_gradient), meant as `weights` of `distill_loss`.
    """
    x = jax.lax.stop_gradient(jnp.asarray(teacher_collapsed))
    _check_collapsed("teacher_collapsed", x)
    x = x.astype(jnp.promote_types(x.dtype, jnp.float32))

    def log_likelihood(blank, label):
        return -jnp.sum(rnnt_loss_from_logprobs(blank, label, enc_paddings, label_paddings))

    g_blank, g_label = jax.grad(log_likelihood, argnums=(0, 1))(
        x[..., BLANK], x[:, :, :-1, LABEL]
    )  # -> [B, T, U+1], [B, T, U]
    occupancy = g_blank + jnp.pad(g_label, ((0, 0), (0, 0), (0, 1)))
    return jax.lax.stop_gradient(occupancy)
