"""Tests for train/distill.py: collapsed lattice distillation against float64 references.

Owns: a plain-loop NumPy reference of the collapsed (label, blank, rest) probabilities from the
full softmax, a NumPy KL over the valid nodes, a brute-force node occupancy over all
alignments, and the consistency checks of the JAX code (chunked equals unchunked, padding and
the label slot at u = U change nothing, the teacher gets no gradient, finite differences, the
NLL from the collapsed array equals `rnnt_loss`).

References:
  Panchapagesan et al. 2021, "Efficient Knowledge Distillation for RNN-Transducer Models",
    ICASSP 2021, arXiv:2011.06110.
  Graves 2012, "Sequence Transduction with Recurrent Neural Networks", arXiv:1211.3711.
"""

from __future__ import annotations

import functools
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

from asr.lattice import NEG, rnnt_loss
from train.distill import (
    collapsed_log_probs,
    distill_loss,
    rnnt_loss_from_collapsed,
    teacher_occupancy,
)

NEG32 = np.float32(NEG)  # log 0 as stored in float32 outputs

# ----------------------------------------------------------------------------- references


def np_collapsed(logits: np.ndarray, labels: np.ndarray, blank: int = 0) -> np.ndarray:
    """logits [T, U+1, V] of one utterance, labels [U] -> probabilities [T, U+1, 3] (label,
    blank, rest), float64, one full softmax per node in a plain loop."""
    t_len, u1, v = logits.shape
    out = np.zeros((t_len, u1, 3))
    for t in range(t_len):
        for u in range(u1):
            x = logits[t, u].astype(np.float64)
            p = np.exp(x - x.max())
            p /= p.sum()
            label = p[labels[u]] if u < u1 - 1 else 0.0
            others = [p[k] for k in range(v) if k != blank and not (u < u1 - 1 and k == labels[u])]
            out[t, u] = (label, p[blank], sum(others))
    return out


def np_kl(p_teacher: np.ndarray, p_student: np.ndarray, temperature: float = 1.0, w=None):
    """Sum over the nodes of one utterance's [T, U+1, 3] probabilities of KL(teacher||student),
    tempered, the label slot dropped at the last u; times temperature^2."""
    t_len, u1, _ = p_teacher.shape
    total = 0.0
    for t in range(t_len):
        for u in range(u1):
            slots = [0, 1, 2] if u < u1 - 1 else [1, 2]
            qt = p_teacher[t, u, slots] ** (1.0 / temperature)
            qs = p_student[t, u, slots] ** (1.0 / temperature)
            qt, qs = qt / qt.sum(), qs / qs.sum()
            node = sum(a * (np.log(a) - np.log(c)) for a, c in zip(qt, qs, strict=True) if a > 0)
            total += (1.0 if w is None else w[t, u]) * node
    return temperature**2 * total


def brute_force_occupancy(blank: np.ndarray, label: np.ndarray) -> np.ndarray:
    """[T, U+1] probability, over all alignments weighted by their probability, that the
    alignment passes through each node; blank [T, U+1], label [T, U] log-probs."""
    t_len, u1 = blank.shape
    u_len = u1 - 1
    occ = np.zeros((t_len, u1))
    total = 0.0
    for label_steps in itertools.combinations(range(t_len + u_len - 1), u_len):
        t = u = 0
        logp, visited = 0.0, []
        for step in range(t_len + u_len):
            visited.append((t, u))
            if step in label_steps:
                logp += label[t, u]
                u += 1
            else:
                logp += blank[t, u]
                t += 1
        for node in visited:
            occ[node] += np.exp(logp)
        total += np.exp(logp)
    return occ / total


# ----------------------------------------------------------------------------- helpers


def table_joint(u: int, v: int):
    """Joint whose encoder input is the whole logit table: enc = logits.reshape(B, T, (U+1)*V)."""

    def joint(enc, pred):
        b, t = enc.shape[:2]
        return enc.reshape(b, t, u + 1, v) + 0.0 * pred[..., :1]

    return joint


def add_joint(e, p):
    return e + p


def paddings(lengths, width):
    return (np.arange(width)[None] >= np.asarray(lengths)[:, None]).astype(np.float32)


@functools.partial(jax.jit, static_argnames=("blank_id", "time_chunk"))
def collapsed_from_table(logits, labels, enc_pad, label_pad, blank_id=0, time_chunk=None):
    b, t, u1, v = logits.shape
    return collapsed_log_probs(
        table_joint(u1 - 1, v),
        logits.reshape(b, t, u1 * v),
        enc_pad,
        jnp.zeros((b, u1, 1)),
        labels,
        label_pad,
        blank_id,
        time_chunk,
    )


def random_case(seed, b=3, t=6, u=4, v=6, t_lens=(6, 3, 1), u_lens=(4, 0, 2), blank=0):
    rng = np.random.default_rng(seed)
    logits = (2.0 * rng.normal(size=(b, t, u + 1, v))).astype(np.float32)
    labels = rng.integers(0, v - 1, size=(b, u)).astype(np.int32)
    labels = np.where(labels >= blank, labels + 1, labels).astype(np.int32)  # never blank
    enc_pad = paddings(t_lens, t)
    label_pad = paddings(u_lens, u)
    labels = np.where(label_pad > 0, -1, labels).astype(np.int32)  # garbage in padding
    return logits, labels, enc_pad, label_pad


# ----------------------------------------------------------------------------- collapsed


@pytest.mark.parametrize("blank_id", [0, 2])
def test_collapsed_matches_float64_loop_and_rows_sum_to_one(blank_id):
    logits, labels, enc_pad, label_pad = random_case(0, blank=blank_id)
    got = np.asarray(collapsed_from_table(logits, labels, enc_pad, label_pad, blank_id, 4))
    assert got.shape == (3, 6, 5, 3) and got.dtype == np.float32
    np.testing.assert_allclose(np.exp(got).sum(-1), 1.0, atol=1e-6)  # padded rows too
    for i, (tl, ul) in enumerate([(6, 4), (3, 0), (1, 2)]):
        want = np_collapsed(logits[i, :tl, : ul + 1], labels[i, :ul], blank_id)
        np.testing.assert_allclose(np.exp(got[i, :tl, : ul + 1]), want, rtol=2e-5, atol=1e-7)
        # Padded nodes hold the constant row (log 0, log 1, log 0).
        pad = np.ones((6, 5), bool)
        pad[:tl, : ul + 1] = False
        np.testing.assert_array_equal(
            got[i][pad], np.tile(np.array([NEG32, 0.0, NEG32], np.float32), (pad.sum(), 1))
        )


def test_collapsed_label_excluded_at_last_u():
    """At u = U_b the label slot is log 0 and rest is 1 - P(blank), even though labels[U_b]
    (padding) or the clipped padding value is a real vocabulary entry."""
    logits, labels, enc_pad, label_pad = random_case(1)
    got = np.asarray(collapsed_from_table(logits, labels, enc_pad, label_pad))
    for i, (tl, ul) in enumerate([(6, 4), (3, 0), (1, 2)]):
        last = got[i, :tl, ul]  # -> [T_b, 3]
        assert np.all(last[:, 0] == NEG32), last
        p = np.exp(logits[i, :tl, ul].astype(np.float64))
        p /= p.sum(-1, keepdims=True)
        np.testing.assert_allclose(np.exp(last[:, 2]), 1.0 - p[:, 0], rtol=1e-5)


def test_collapsed_rest_keeps_precision_when_teacher_is_confident():
    """rest ~ 1e-12 is kept as a log-probability (log(1 - p_label - p_blank) would be -inf)."""
    v = 5
    logits = np.full((1, 1, 2, v), -20.0, np.float32)
    logits[0, 0, 0, 0] = 5.0  # blank
    logits[0, 0, 0, 3] = 5.0  # the next label
    logits[0, 0, 1, 0] = 8.0
    got = np.asarray(
        collapsed_from_table(logits, np.array([[3]]), np.zeros((1, 1)), np.zeros((1, 1)))
    )
    want = np_collapsed(logits[0], np.array([3]))[0]  # -> [U+1, 3] probabilities, float64
    assert 1e-12 < want[0, 2] < 1e-10 and 1e-12 < want[1, 2] < 1e-10, want
    np.testing.assert_allclose(got[0, 0, 0], np.log(want[0]), rtol=1e-5)
    np.testing.assert_allclose(got[0, 0, :, 2], np.log(want[:, 2]), rtol=1e-5)
    assert np.all(np.isfinite(got))


_CHUNK_RNG = np.random.default_rng(2)
_CHUNK_CASE = (  # B=2, T=7 (2, 4 and 5 do not divide it), U=3, V=5
    _CHUNK_RNG.normal(size=(2, 7, 5)).astype(np.float32),  # enc
    _CHUNK_RNG.normal(size=(2, 4, 5)).astype(np.float32),  # pred
    _CHUNK_RNG.integers(1, 5, size=(2, 3)).astype(np.int32),  # labels
    paddings([7, 5], 7),  # enc_paddings
    paddings([3, 2], 3),  # label_paddings
    np.log(_CHUNK_RNG.dirichlet(np.ones(3), size=(2, 7, 4))).astype(np.float32),  # teacher
)


@functools.partial(jax.jit, static_argnames="chunk")
def _chunk_run(enc, pred, labels, enc_pad, label_pad, teacher, chunk):
    def total(e, p):
        c = collapsed_log_probs(add_joint, e, enc_pad, p, labels, label_pad, 0, chunk)
        return distill_loss(c, teacher, enc_pad, label_pad).sum(), c

    return jax.value_and_grad(total, argnums=(0, 1), has_aux=True)(enc, pred)


@pytest.mark.parametrize("time_chunk", [1, 2, 4, 5, None])
def test_chunked_equals_unchunked_values_and_gradients(time_chunk):
    """Against one chunk of all 7 frames (no lax.map, no remat)."""
    (got_loss, got_c), got_g = _chunk_run(*_CHUNK_CASE, chunk=time_chunk)
    (want_loss, want_c), want_g = _chunk_run(*_CHUNK_CASE, chunk=7)
    np.testing.assert_allclose(got_c, want_c, atol=1e-6)
    np.testing.assert_allclose(got_loss, want_loss, rtol=1e-6)
    for g, w in zip(got_g, want_g, strict=True):
        np.testing.assert_allclose(g, w, atol=1e-6)


def test_collapsed_ignores_padded_frames_and_labels():
    logits, labels, enc_pad, label_pad = random_case(3)
    base = np.asarray(collapsed_from_table(logits, labels, enc_pad, label_pad))
    changed = logits.copy()
    changed[1, 3:] = 1e3  # padded frames of utterance 1
    changed[2, 1:] = -7.0
    changed[1, :, 1:] = 50.0  # nodes past U_b = 0 of utterance 1
    other_labels = np.where(label_pad > 0, 4, labels).astype(np.int32)
    got = np.asarray(collapsed_from_table(changed, other_labels, enc_pad, label_pad))
    np.testing.assert_array_equal(got, base)


# ----------------------------------------------------------------------------- loss


def _student_teacher(seed, b=3, t=6, u=4, v=6):
    logits_s, labels, enc_pad, label_pad = random_case(seed, b, t, u, v)
    logits_t = logits_s + np.random.default_rng(seed + 100).normal(size=logits_s.shape)
    logits_t = logits_t.astype(np.float32)
    s = collapsed_from_table(logits_s, labels, enc_pad, label_pad)
    te = collapsed_from_table(logits_t, labels, enc_pad, label_pad)
    return logits_s, logits_t, labels, enc_pad, label_pad, s, te


@pytest.mark.parametrize("temperature", [1.0, 2.5])
def test_loss_matches_float64_kl(temperature):
    logits_s, logits_t, labels, enc_pad, label_pad, s, te = _student_teacher(4)
    got = jax.jit(distill_loss, static_argnames="temperature")(
        s, te, enc_pad, label_pad, temperature=temperature
    )
    for i, (tl, ul) in enumerate([(6, 4), (3, 0), (1, 2)]):
        ps = np_collapsed(logits_s[i, :tl, : ul + 1], labels[i, :ul])
        pt = np_collapsed(logits_t[i, :tl, : ul + 1], labels[i, :ul])
        np.testing.assert_allclose(got[i], np_kl(pt, ps, temperature), rtol=1e-4)
        assert got[i] > 0


def test_loss_with_weights_matches_float64_kl():
    logits_s, logits_t, labels, enc_pad, label_pad, s, te = _student_teacher(5)
    w = np.random.default_rng(5).uniform(size=(3, 6, 5)).astype(np.float32)
    got = distill_loss(s, te, enc_pad, label_pad, weights=w)
    for i, (tl, ul) in enumerate([(6, 4), (3, 0), (1, 2)]):
        ps = np_collapsed(logits_s[i, :tl, : ul + 1], labels[i, :ul])
        pt = np_collapsed(logits_t[i, :tl, : ul + 1], labels[i, :ul])
        want = np_kl(pt, ps, 1.0, w[i, :tl, : ul + 1])
        np.testing.assert_allclose(got[i], want, rtol=1e-4)


def test_loss_zero_iff_student_equals_teacher():
    _, _, _, enc_pad, label_pad, s, te = _student_teacher(6)
    same = distill_loss(te, te, enc_pad, label_pad, temperature=2.0)
    np.testing.assert_allclose(same, 0.0, atol=1e-6)
    assert np.all(distill_loss(s, te, enc_pad, label_pad) > 1e-3)
    # One node changed is enough.
    one = np.asarray(te).copy()
    one[0, 2, 1] = np.log([0.2, 0.3, 0.5])
    assert distill_loss(one, te, enc_pad, label_pad)[0] > 1e-3


def test_padding_and_last_label_slot_change_nothing_and_get_zero_gradient():
    _, _, _, enc_pad, label_pad, s, te = _student_teacher(7)
    loss_and_grad = jax.jit(
        jax.value_and_grad(
            lambda s, te: distill_loss(s, te, enc_pad, label_pad, 1.5).sum(), argnums=(0, 1)
        )
    )
    base, (g_s, g_t) = loss_and_grad(s, te)
    assert np.all(g_t == 0.0)  # the teacher is a constant
    s2, te2 = np.asarray(s).copy(), np.asarray(te).copy()
    excluded = np.zeros(s2.shape, bool)
    for i, (tl, ul) in enumerate([(6, 4), (3, 0), (1, 2)]):
        excluded[i, tl:] = True
        excluded[i, :, ul + 1 :] = True
        excluded[i, :tl, ul, 0] = True  # the label slot at u = U_b
    s2[excluded], te2[excluded] = np.nan, 3.0
    got, (g_s2, _) = loss_and_grad(s2, te2)
    np.testing.assert_allclose(got, base, rtol=1e-6)
    assert np.all(np.isfinite(g_s2)) and np.all(g_s2[excluded] == 0.0)
    np.testing.assert_allclose(g_s2, g_s, atol=1e-6)


def test_minus_inf_inputs_and_small_temperature_stay_finite():
    _, _, _, enc_pad, label_pad, s, te = _student_teacher(15)
    te = np.asarray(te).copy()
    te[0, 1, 1, 0] = -np.inf  # a valid label slot with probability exactly 0
    for tau in (1.0, 1e-3):
        loss_fn = functools.partial(
            lambda s, tau: distill_loss(s, te, enc_pad, label_pad, tau).sum(), tau=tau
        )
        loss, g = jax.value_and_grad(loss_fn)(s)
        assert np.isfinite(loss) and np.all(np.isfinite(g)), (tau, loss)


def test_no_frames_gives_zero():
    _, _, _, enc_pad, label_pad, s, te = _student_teacher(8)
    enc_pad = enc_pad.copy()
    enc_pad[1] = 1.0
    got = distill_loss(s, te, enc_pad, label_pad)
    assert got[1] == 0.0 and got[0] > 0


def test_gradient_wrt_collapsed_is_tau_times_difference():
    """d/ds of tau^2 KL(softmax(t/tau) || softmax(s/tau)) = tau (q_s - q_t) per valid slot."""
    _, _, _, enc_pad, label_pad, s, te = _student_teacher(9)
    tau = 2.0
    g = jax.grad(lambda s: distill_loss(s, te, enc_pad, label_pad, tau).sum())(s)
    qs = jax.nn.softmax(np.asarray(s) / tau, -1)
    qt = jax.nn.softmax(np.asarray(te) / tau, -1)
    i, tl, ul = 0, 6, 4  # utterance 0, nodes with a next label
    np.testing.assert_allclose(
        g[i, :tl, :ul], tau * (qs - qt)[i, :tl, :ul], atol=1e-6, err_msg="u < U_b"
    )


def test_check_grads_through_joint_finite_differences():
    rng = np.random.default_rng(10)
    b, t, u, v = 2, 3, 2, 4
    enc = jnp.asarray(rng.normal(size=(b, t, v)), jnp.float32)
    pred = jnp.asarray(rng.normal(size=(b, u + 1, v)), jnp.float32)
    labels = rng.integers(1, v, size=(b, u)).astype(np.int32)
    enc_pad, label_pad = paddings([3, 2], t), paddings([2, 1], u)
    teacher = collapsed_log_probs(
        add_joint, 1.5 * enc, enc_pad, -pred, labels, label_pad, time_chunk=2
    )

    def loss(e, p):
        c = collapsed_log_probs(add_joint, e, enc_pad, p, labels, label_pad, time_chunk=2)
        return distill_loss(c, teacher, enc_pad, label_pad, temperature=1.5)

    check_grads(jax.jit(loss), (enc, pred), order=1, modes=["rev"], eps=1e-2, atol=2e-2, rtol=2e-2)


# ----------------------------------------------------------------------------- occupancy, NLL


def test_occupancy_matches_brute_force():
    logits, labels, enc_pad, label_pad = random_case(
        11, b=3, t=4, u=3, t_lens=(4, 2, 3), u_lens=(3, 1, 0)
    )
    c = collapsed_from_table(logits, labels, enc_pad, label_pad)
    got = np.asarray(jax.jit(teacher_occupancy)(c, enc_pad, label_pad))
    for i, (tl, ul) in enumerate([(4, 3), (2, 1), (3, 0)]):
        node = np.asarray(c[i, :tl, : ul + 1], np.float64)
        want = brute_force_occupancy(node[..., 1], node[:, :ul, 0])
        np.testing.assert_allclose(got[i, :tl, : ul + 1], want, atol=1e-5)
        np.testing.assert_allclose(got[i].sum(), tl + ul, rtol=1e-5)
        assert np.all(got[i, tl:] == 0.0) and np.all(got[i, :, ul + 1 :] == 0.0)
    assert got[0, 0, 0] == pytest.approx(1.0) and got[0, 3, 3] == pytest.approx(1.0)


def test_occupancy_weights_have_no_gradient():
    _, _, _, enc_pad, label_pad, s, te = _student_teacher(12)

    def loss(te):
        return distill_loss(
            s, te, enc_pad, label_pad, weights=teacher_occupancy(te, enc_pad, label_pad)
        ).sum()

    assert np.all(jax.jit(jax.grad(loss))(te) == 0.0)


def test_rnnt_loss_from_collapsed_equals_rnnt_loss():
    """Slots (label, blank) are the NLL's inputs: one joint pass serves both losses."""
    rng = np.random.default_rng(13)
    b, t, u, v = 2, 6, 3, 5
    enc = rng.normal(size=(b, t, v)).astype(np.float32)
    pred = rng.normal(size=(b, u + 1, v)).astype(np.float32)
    labels = rng.integers(1, v, size=(b, u)).astype(np.int32)
    enc_pad, label_pad = paddings([6, 4], t), paddings([3, 1], u)

    @jax.jit
    def both(e, p):
        def via_collapsed(e, p):
            c = collapsed_log_probs(add_joint, e, enc_pad, p, labels, label_pad, time_chunk=4)
            return rnnt_loss_from_collapsed(c, enc_pad, label_pad).sum()

        def direct(e, p):
            return rnnt_loss(add_joint, e, enc_pad, p, labels, label_pad, time_chunk=4).sum()

        return [jax.value_and_grad(f, argnums=(0, 1))(e, p) for f in (via_collapsed, direct)]

    (got, got_g), (want, want_g) = both(enc, pred)
    np.testing.assert_allclose(got, want, rtol=1e-6)
    for g, w in zip(got_g, want_g, strict=True):
        np.testing.assert_allclose(g, w, atol=1e-6)


def test_jit_does_not_retrace():
    traces = []

    def joint(e, p):
        traces.append(e.shape)
        return e + p

    b, t, u, v = 2, 5, 2, 4

    @jax.jit
    def step(e, p, labels, teacher):
        def total(e):
            c = collapsed_log_probs(joint, e, jnp.zeros((b, t)), p, labels, jnp.zeros((b, u)))
            return distill_loss(c, teacher, jnp.zeros((b, t)), jnp.zeros((b, u))).sum()

        return jax.value_and_grad(total)(e)

    rng = np.random.default_rng(14)

    def args():
        return (
            rng.normal(size=(b, t, v)).astype(np.float32),
            rng.normal(size=(b, u + 1, v)).astype(np.float32),
            rng.integers(1, v, size=(b, u)).astype(np.int32),
            np.log(rng.dirichlet(np.ones(3), size=(b, t, u + 1))).astype(np.float32),
        )

    jax.block_until_ready(step(*args()))
    n = len(traces)
    jax.block_until_ready(step(*args()))
    assert n > 0 and len(traces) == n, traces


# ----------------------------------------------------------------------------- validation


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"enc": np.zeros((2, 5))}, "enc"),
        ({"enc_paddings": np.zeros((2, 4))}, "enc_paddings"),
        ({"labels": np.zeros((2, 3), np.float32)}, "integer labels"),
        ({"pred": np.zeros((2, 3, 4))}, "pred"),
        ({"label_paddings": np.zeros((2, 2))}, "label_paddings"),
        ({"time_chunk": 0}, "time_chunk"),
        ({"blank_id": 4}, "blank_id"),
    ],
)
def test_collapsed_validation_errors_say_expected_and_got(kwargs, match):
    b, t, u, v = 2, 5, 3, 4
    args = {
        "joint_fn": add_joint,
        "enc": np.zeros((b, t, v), np.float32),
        "enc_paddings": np.zeros((b, t), np.float32),
        "pred": np.zeros((b, u + 1, v), np.float32),
        "labels": np.zeros((b, u), np.int32),
        "label_paddings": np.zeros((b, u), np.float32),
    }
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        collapsed_log_probs(**args)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"student_collapsed": np.zeros((2, 5, 4, 2))}, "student_collapsed"),
        ({"teacher_collapsed": np.zeros((2, 5, 3, 3))}, "teacher_collapsed"),
        ({"enc_paddings": np.zeros((2, 4))}, "enc_paddings"),
        ({"label_paddings": np.zeros((2, 4))}, "label_paddings"),
        ({"temperature": 0.0}, "temperature"),
        ({"weights": np.zeros((2, 5, 3))}, "weights"),
    ],
)
def test_loss_validation_errors_say_expected_and_got(kwargs, match):
    args = {
        "student_collapsed": np.zeros((2, 5, 4, 3), np.float32),
        "teacher_collapsed": np.zeros((2, 5, 4, 3), np.float32),
        "enc_paddings": np.zeros((2, 5), np.float32),
        "label_paddings": np.zeros((2, 3), np.float32),
    }
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        distill_loss(**args)
