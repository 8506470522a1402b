"""Tests for asr/lattice.py: the transducer loss against independent float64 references.

Owns: a plain-loop NumPy forward-backward (alpha and beta) reference, a brute-force sum over all
alignments, Graves' analytic gradient, and the consistency checks of the JAX loss (batched equals
one by one, chunking does not change values or gradients, padding gets zero gradient, no retrace).

References:
  Graves 2012, "Sequence Transduction with Recurrent Neural Networks", arXiv:1211.3711
    (eqs. for alpha, beta, Pr(y|x) and the gradient with respect to the output probabilities).
  Li et al. 2019, "Improving RNN Transducer Modeling for End-to-End Speech Recognition"
    (function merging and chunking of the joint, whose equivalence is tested here).
"""

from __future__ import annotations

import functools
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

from asr.lattice import auto_time_chunk, rnnt_loss, rnnt_loss_from_logprobs

# ----------------------------------------------------------------------------- references


def np_log_softmax(logits: np.ndarray) -> np.ndarray:
    x = logits.astype(np.float64)
    m = x.max(axis=-1, keepdims=True)
    return x - m - np.log(np.exp(x - m).sum(axis=-1, keepdims=True))


def columns(logp: np.ndarray, labels: np.ndarray, blank: int = 0):
    """logp [T, U+1, V], labels [U] -> (blank [T, U+1], label [T, U])."""
    t, u1, _ = logp.shape
    lab = np.zeros((t, u1 - 1))
    for u in range(u1 - 1):
        lab[:, u] = logp[:, u, labels[u]]
    return logp[:, :, blank], lab


def np_forward_backward(blank: np.ndarray, label: np.ndarray):
    """Graves 2012 recursions with plain loops, float64, for one utterance.

    blank [T, U+1], label [T, U] log-probs. Returns (log alpha [T, U+1], log beta [T, U+1],
    log P from alpha, log P from beta).
    """
    blank = blank.astype(np.float64)
    label = label.astype(np.float64)
    t_len, u1 = blank.shape
    alpha = np.full((t_len, u1), -np.inf)
    for t in range(t_len):
        for u in range(u1):
            if t == 0 and u == 0:
                alpha[t, u] = 0.0
                continue
            terms = []
            if t > 0:
                terms.append(alpha[t - 1, u] + blank[t - 1, u])
            if u > 0:
                terms.append(alpha[t, u - 1] + label[t, u - 1])
            alpha[t, u] = np.logaddexp.reduce(terms)
    beta = np.full((t_len, u1), -np.inf)
    for t in reversed(range(t_len)):
        for u in reversed(range(u1)):
            if t == t_len - 1 and u == u1 - 1:
                beta[t, u] = blank[t, u]
                continue
            terms = []
            if t < t_len - 1:
                terms.append(beta[t + 1, u] + blank[t, u])
            if u < u1 - 1:
                terms.append(beta[t, u + 1] + label[t, u])
            beta[t, u] = np.logaddexp.reduce(terms)
    return alpha, beta, alpha[-1, -1] + blank[-1, -1], beta[0, 0]


def np_loss(logits: np.ndarray, labels: np.ndarray, blank: int = 0) -> float:
    b, lab = columns(np_log_softmax(logits), labels, blank)
    return -np_forward_backward(b, lab)[2]


def np_grad_logits(logits: np.ndarray, labels: np.ndarray, blank: int = 0) -> np.ndarray:
    """Graves 2012 analytic gradient of -log P w.r.t. the joint logits [T, U+1, V].

    d(-ln P)/d y_k(t,u) = -alpha(t,u) beta(successor_k) / P for k in {blank, y_{u+1}}, 0 else;
    through the softmax: d/d logit_k = occ(t,u) softmax_k - alpha(t,u) y_k(t,u) beta(succ_k) / P,
    with occ(t,u) = alpha(t,u) beta(t,u) / P the node's occupation (1 on a single path).
    """
    logp = np_log_softmax(logits)
    b, lab = columns(logp, labels, blank)
    alpha, beta, logp_total, _ = np_forward_backward(b, lab)
    t_len, u1, _ = logits.shape
    grad = np.exp(alpha + beta - logp_total)[..., None] * np.exp(logp)
    for t in range(t_len):
        for u in range(u1):
            next_blank = beta[t + 1, u] if t < t_len - 1 else (0.0 if u == u1 - 1 else -np.inf)
            grad[t, u, blank] -= np.exp(alpha[t, u] + b[t, u] + next_blank - logp_total)
            if u < u1 - 1:
                grad[t, u, labels[u]] -= np.exp(
                    alpha[t, u] + lab[t, u] + beta[t, u + 1] - logp_total
                )
    return grad


def brute_force_loss(blank: np.ndarray, label: np.ndarray) -> float:
    """-log of the sum over every alignment: T blanks and U labels, the last symbol a blank."""
    t_len, u1 = blank.shape
    u_len = u1 - 1
    total = 0.0
    for label_steps in itertools.combinations(range(t_len + u_len - 1), u_len):
        t = u = 0
        logp = 0.0
        for step in range(t_len + u_len):
            if step in label_steps:
                logp += label[t, u]
                u += 1
            else:
                logp += blank[t, u]
                t += 1
        assert (t, u) == (t_len, u_len), (t, u)
        total += np.exp(logp)
    return -np.log(total)


# ----------------------------------------------------------------------------- helpers


def random_case(rng, b, t, u, v, scale=2.0):
    logits = (scale * rng.normal(size=(b, t, u + 1, v))).astype(np.float32)
    labels = rng.integers(1, v, size=(b, u)).astype(np.int32)
    return logits, labels


def table_joint(u: int, v: int):
    """Joint whose encoder input is the whole logit table: encoder_out = logits.reshape(B, T,
    (U+1)*V). Makes d loss / d logits directly observable through `rnnt_loss`."""

    def joint(enc, pred):
        b, t = enc.shape[:2]
        return enc.reshape(b, t, u + 1, v) + 0.0 * pred[..., :1]

    return joint


def loss_via_table(logits, labels, frame_pad=None, label_pad=None, time_chunk=None):
    """rnnt_loss of a [B, T, U+1, V] logit table, jitted (tests are dispatch-bound eagerly)."""
    b, t, u1, _ = logits.shape
    frame_pad = np.zeros((b, t), np.float32) if frame_pad is None else frame_pad
    label_pad = np.zeros((b, u1 - 1), np.float32) if label_pad is None else label_pad
    return _loss_via_table(logits, labels, frame_pad, label_pad, time_chunk)


def grad_via_table(logits, labels, frame_pad=None, label_pad=None, time_chunk=None):
    """(loss f32[B], d sum(loss) / d logits), jitted together (one compile per test case)."""
    b, t, u1, _ = logits.shape
    frame_pad = np.zeros((b, t), np.float32) if frame_pad is None else frame_pad
    label_pad = np.zeros((b, u1 - 1), np.float32) if label_pad is None else label_pad
    return _grad_via_table(logits, labels, frame_pad, label_pad, time_chunk)


@functools.partial(jax.jit, static_argnames="time_chunk")
def _loss_via_table(logits, labels, frame_pad, label_pad, time_chunk):
    b, t, u1, v = logits.shape
    return rnnt_loss(
        table_joint(u1 - 1, v),
        jnp.reshape(logits, (b, t, u1 * v)),
        frame_pad,
        np.zeros((b, u1, 1), np.float32),
        labels,
        label_pad,
        time_chunk=time_chunk,
    )


@functools.partial(jax.jit, static_argnames="time_chunk")
def _grad_via_table(logits, labels, frame_pad, label_pad, time_chunk):
    def total(x):
        loss = _loss_via_table(x, labels, frame_pad, label_pad, time_chunk)
        return loss.sum(), loss

    grad, loss = jax.grad(total, has_aux=True)(logits)
    return loss, grad


def add_joint(e, p):
    return e + p


# ----------------------------------------------------------------------------- tests


def test_reference_alpha_beta_agree_and_match_brute_force():
    rng = np.random.default_rng(0)
    logits, labels = random_case(rng, 1, 3, 2, 3)
    b, lab = columns(np_log_softmax(logits[0]), labels[0])
    _, _, from_alpha, from_beta = np_forward_backward(b, lab)
    np.testing.assert_allclose(from_alpha, from_beta, rtol=1e-12)
    np.testing.assert_allclose(-from_alpha, brute_force_loss(b, lab), rtol=1e-12)


@pytest.mark.parametrize("t,u,v", [(3, 2, 3), (4, 3, 3), (2, 0, 2), (1, 3, 4)])
def test_loss_equals_brute_force(t, u, v):
    rng = np.random.default_rng(t * 10 + u)
    logits, labels = random_case(rng, 1, t, u, v)
    b, lab = columns(np_log_softmax(logits[0]), labels[0])
    got = rnnt_loss_from_logprobs(
        b[None].astype(np.float32), lab[None].astype(np.float32), np.zeros((1, t)), np.zeros((1, u))
    )
    np.testing.assert_allclose(got[0], brute_force_loss(b, lab), rtol=1e-5)


def test_loss_equals_float64_forward_backward():
    rng = np.random.default_rng(1)
    logits, labels = random_case(rng, 3, 17, 6, 7)
    got = loss_via_table(logits, labels, time_chunk=5)
    want = [np_loss(logits[i], labels[i]) for i in range(3)]
    np.testing.assert_allclose(got, want, rtol=1e-5)


def test_gradient_equals_graves_analytic():
    rng = np.random.default_rng(2)
    logits, labels = random_case(rng, 2, 6, 4, 5)
    _, grad = grad_via_table(logits, labels, time_chunk=4)
    for i in range(2):
        np.testing.assert_allclose(grad[i], np_grad_logits(logits[i], labels[i]), atol=2e-6)


def test_gradient_through_additive_joint():
    """Graves' gradient summed over the broadcast axes is the gradient of e and p in e + p."""
    rng = np.random.default_rng(3)
    b, t, u, v = 2, 5, 3, 4
    enc = rng.normal(size=(b, t, v)).astype(np.float32)
    pred = rng.normal(size=(b, u + 1, v)).astype(np.float32)
    labels = rng.integers(1, v, size=(b, u)).astype(np.int32)

    def loss(e, p):
        return rnnt_loss(add_joint, e, np.zeros((b, t)), p, labels, np.zeros((b, u))).sum()

    g_enc, g_pred = jax.jit(jax.grad(loss, argnums=(0, 1)))(enc, pred)
    for i in range(b):
        logits = enc[i][:, None, :] + pred[i][None, :, :]
        g = np_grad_logits(logits, labels[i])
        np.testing.assert_allclose(g_enc[i], g.sum(axis=1), atol=1e-5)
        np.testing.assert_allclose(g_pred[i], g.sum(axis=0), atol=1e-5)


def test_check_grads_finite_differences():
    rng = np.random.default_rng(4)
    b, t, u, v = 1, 3, 2, 3
    enc = jnp.asarray(rng.normal(size=(b, t, v)), jnp.float32)
    pred = jnp.asarray(rng.normal(size=(b, u + 1, v)), jnp.float32)
    labels = rng.integers(1, v, size=(b, u)).astype(np.int32)

    def loss(e, p):
        return rnnt_loss(add_joint, e, jnp.zeros((b, t)), p, labels, jnp.zeros((b, u)), 0, 2)

    check_grads(jax.jit(loss), (enc, pred), order=1, modes=["rev"], eps=1e-2, atol=2e-2, rtol=2e-2)


def test_variable_lengths_equal_one_by_one_and_padding_gets_zero_gradient():
    rng = np.random.default_rng(5)
    b, t, u, v = 4, 9, 5, 6
    logits, labels = random_case(rng, b, t, u, v)
    t_lens = [9, 4, 1, 6]
    u_lens = [5, 2, 3, 0]
    frame_pad = (np.arange(t)[None] >= np.array(t_lens)[:, None]).astype(np.float32)
    label_pad = (np.arange(u)[None] >= np.array(u_lens)[:, None]).astype(np.float32)
    labels = np.where(label_pad > 0, -1, labels).astype(np.int32)  # garbage in padding
    batched, grad = grad_via_table(logits, labels, frame_pad, label_pad, time_chunk=2)
    for i, (tl, ul) in enumerate(zip(t_lens, u_lens, strict=True)):
        sliced = logits[i : i + 1, :tl, : ul + 1]
        alone = loss_via_table(sliced, labels[i : i + 1, :ul])
        np.testing.assert_allclose(batched[i], alone[0], rtol=1e-5)
        np.testing.assert_allclose(batched[i], np_loss(sliced[0], labels[i, :ul]), rtol=1e-5)
        np.testing.assert_allclose(
            grad[i, :tl, : ul + 1], np_grad_logits(sliced[0], labels[i, :ul]), atol=2e-6
        )
        assert np.all(grad[i, tl:] == 0.0), np.abs(grad[i, tl:]).max()
        assert np.all(grad[i, :, ul + 1 :] == 0.0), np.abs(grad[i, :, ul + 1 :]).max()


def test_padded_logprobs_get_zero_gradient_even_if_nan():
    rng = np.random.default_rng(6)
    logits, labels = random_case(rng, 1, 5, 3, 4)
    b, lab = columns(np_log_softmax(logits[0]), labels[0])
    b = b[None].astype(np.float32)
    lab = lab[None].astype(np.float32)
    b[:, 3:] = np.nan
    lab[:, :, 2:] = -np.inf
    frame_pad = np.array([[0, 0, 0, 1, 1]], np.float32)
    label_pad = np.array([[0, 0, 1]], np.float32)
    loss, (gb, gl) = jax.jit(
        jax.value_and_grad(
            lambda x, y: rnnt_loss_from_logprobs(x, y, frame_pad, label_pad).sum(), argnums=(0, 1)
        )
    )(b, lab)
    want = np_loss(logits[0, :3, :3], labels[0, :2])
    np.testing.assert_allclose(loss, want, rtol=1e-5)
    assert np.all(np.isfinite(gb)) and np.all(np.isfinite(gl))
    assert np.all(gb[:, 3:] == 0.0) and np.all(gb[:, :, 3:] == 0.0)
    assert np.all(gl[:, 3:] == 0.0) and np.all(gl[:, :, 2:] == 0.0)


def test_empty_transcript():
    rng = np.random.default_rng(7)
    logits, _ = random_case(rng, 2, 4, 0, 3)
    labels = np.zeros((2, 0), np.int32)
    got, grad = grad_via_table(logits, labels, time_chunk=3)
    # U = 0: the only alignment is T blanks.
    want = -np_log_softmax(logits)[:, :, 0, 0].sum(axis=1)
    np.testing.assert_allclose(got, want, rtol=1e-5)
    np.testing.assert_allclose(grad[0], np_grad_logits(logits[0], labels[0]), atol=2e-6)


def test_no_frames_gives_zero_loss_and_gradient():
    rng = np.random.default_rng(8)
    logits, labels = random_case(rng, 2, 3, 2, 3)
    frame_pad = np.array([[0, 0, 0], [1, 1, 1]], np.float32)
    got, grad = grad_via_table(logits, labels, frame_pad)
    assert got[1] == 0.0 and np.all(grad[1] == 0.0)
    np.testing.assert_allclose(got[0], np_loss(logits[0], labels[0]), rtol=1e-5)


_CHUNK_RNG = np.random.default_rng(9)
_CHUNK_CASE = (  # B=2, T=7 (2, 3 and 4 do not divide it), U=3, V=5
    _CHUNK_RNG.normal(size=(2, 7, 5)).astype(np.float32),  # encoder_out
    _CHUNK_RNG.normal(size=(2, 4, 5)).astype(np.float32),  # predictor_out
    _CHUNK_RNG.integers(1, 5, size=(2, 3)).astype(np.int32),  # labels
    np.array([[0] * 7, [0] * 5 + [1] * 2], np.float32),  # encoder_paddings
    np.array([[0, 0, 0], [0, 0, 1]], np.float32),  # label_paddings
)


@functools.partial(jax.jit, static_argnames="chunk")
def _chunk_loss_and_grads(enc, pred, labels, frame_pad, label_pad, chunk):
    def total(e, p):
        loss = rnnt_loss(add_joint, e, frame_pad, p, labels, label_pad, time_chunk=chunk)
        return loss.sum(), loss

    (_, loss), grads = jax.value_and_grad(total, argnums=(0, 1), has_aux=True)(enc, pred)
    return loss, grads


@pytest.mark.parametrize("time_chunk", [1, 2, 3, 4, 100, None])
def test_time_chunk_does_not_change_loss_or_gradients(time_chunk):
    """Against one chunk of all 7 frames (no lax.map, no remat)."""
    got_loss, got_grads = _chunk_loss_and_grads(*_CHUNK_CASE, chunk=time_chunk)
    want_loss, want_grads = _chunk_loss_and_grads(*_CHUNK_CASE, chunk=7)
    np.testing.assert_allclose(got_loss, want_loss, rtol=1e-6)
    for got, want in zip(got_grads, want_grads, strict=True):
        np.testing.assert_allclose(got, want, atol=1e-6)


def test_auto_time_chunk_budget():
    assert auto_time_chunk(8, 400, 100, 512) == 40  # budget allows 40 frames: 10 chunks
    assert auto_time_chunk(8, 401, 100, 512) == 37  # 11 chunks of 37 rather than 10 of 40 + 1
    assert auto_time_chunk(8, 200, 50, 256) == 100  # budget allows 160 frames: 2 chunks of 100
    assert auto_time_chunk(2, 10, 3, 4) == 10
    assert auto_time_chunk(64, 1000, 1000, 100_000) == 1


@pytest.mark.parametrize("t,u", [(1, 2), (4, 0)])
def test_single_path_equals_sum_of_its_logprobs(t, u):
    """Optax-style one-to-one check. T = 1: the only alignment emits all U labels at frame 0,
    then blank; U = 0: T blanks. The loss is minus the path's log-probs; the gradient w.r.t. the
    logits is softmax minus the one-hot of the symbol taken at each node of the path."""
    rng = np.random.default_rng(10)
    v = 2
    logits, labels = random_case(rng, 1, t, u, v)  # labels all 1, blank 0
    logp = np_log_softmax(logits[0])
    if t == 1:
        path = [(0, k, int(labels[0, k])) for k in range(u)] + [(0, u, 0)]
    else:
        path = [(k, 0, 0) for k in range(t)]
    want = -sum(logp[node] for node in path)
    loss, grad = grad_via_table(logits, labels)
    np.testing.assert_allclose(loss[0], want, rtol=1e-6)
    grad = grad[0]
    want_grad = np.zeros_like(logp)
    for tt, uu, k in path:
        want_grad[tt, uu] = np.exp(logp[tt, uu])
        want_grad[tt, uu, k] -= 1.0
    np.testing.assert_allclose(grad, want_grad, atol=1e-6)


def test_blank_id_other_than_zero():
    rng = np.random.default_rng(11)
    b, t, u, v = 1, 4, 2, 4
    logits = rng.normal(size=(b, t, u + 1, v)).astype(np.float32)
    labels = np.array([[0, 1]], np.int32)
    got = rnnt_loss(
        table_joint(u, v),
        logits.reshape(b, t, -1),
        np.zeros((b, t)),
        np.zeros((b, u + 1, 1)),
        labels,
        np.zeros((b, u)),
        blank_id=3,
    )
    np.testing.assert_allclose(got[0], np_loss(logits[0], labels[0], blank=3), rtol=1e-5)


def test_jit_does_not_retrace():
    traces = []
    b, t, u, v = 2, 6, 3, 4

    def joint(e, p):
        traces.append(e.shape)
        return e + p

    @jax.jit
    def loss_and_grad(e, p, labels, fpad, lpad):
        return jax.value_and_grad(
            lambda e: rnnt_loss(joint, e, fpad, p, labels, lpad, time_chunk=4).sum()
        )(e)

    rng = np.random.default_rng(12)
    args = lambda: (  # noqa: E731
        rng.normal(size=(b, t, v)).astype(np.float32),
        rng.normal(size=(b, u + 1, v)).astype(np.float32),
        rng.integers(1, v, size=(b, u)).astype(np.int32),
        np.zeros((b, t), np.float32),
        np.zeros((b, u), np.float32),
    )
    jax.block_until_ready(loss_and_grad(*args()))
    n_traces = len(traces)
    assert n_traces > 0
    jax.block_until_ready(loss_and_grad(*args()))
    assert len(traces) == n_traces, traces


def test_long_sequence_is_finite_and_matches_reference():
    rng = np.random.default_rng(13)
    logits, labels = random_case(rng, 1, 150, 40, 8, scale=4.0)
    got, grad = grad_via_table(logits, labels, time_chunk=32)
    np.testing.assert_allclose(got[0], np_loss(logits[0], labels[0]), rtol=1e-5)
    assert np.all(np.isfinite(grad))


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"encoder_out": np.zeros((2, 5))}, "encoder_out"),
        ({"encoder_paddings": np.zeros((2, 4))}, "encoder_paddings"),
        ({"labels": np.zeros((2, 3), np.float32)}, "integer labels"),
        ({"predictor_out": np.zeros((2, 3, 4))}, "predictor_out"),
        ({"label_paddings": np.zeros((2, 2))}, "label_paddings"),
        ({"time_chunk": 0}, "time_chunk"),
        ({"blank_id": 4}, "blank_id"),
    ],
)
def test_validation_errors_say_expected_and_got(kwargs, match):
    b, t, u, v = 2, 5, 3, 4
    args = {
        "joint_fn": add_joint,
        "encoder_out": np.zeros((b, t, v), np.float32),
        "encoder_paddings": np.zeros((b, t), np.float32),
        "predictor_out": np.zeros((b, u + 1, v), np.float32),
        "labels": np.zeros((b, u), np.int32),
        "label_paddings": np.zeros((b, u), np.float32),
    }
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        rnnt_loss(**args)


def test_from_logprobs_validation():
    with pytest.raises(ValueError, match="label_logprobs"):
        rnnt_loss_from_logprobs(
            np.zeros((1, 3, 3)), np.zeros((1, 3, 3)), np.zeros((1, 3)), np.zeros((1, 2))
        )
