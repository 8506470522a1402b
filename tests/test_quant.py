"""Low-bit execution (asr/models/quant.py): fake quantization against a float64 NumPy reference
(per-channel steps, round half to even, all-zero channels, idempotence, straight-through
gradient), the policy's hooks against references, the float policy bit-identical to plain
products, the LSTM cell against flax's OptimizedLSTMCell, the hook reaching every matrix product
of the model (each kernel seen with the contracting axes `contracting_axes` names), a weight-
quantized model equal to the float model on `quantize_params`, and the parameter-tree helpers
(`quantize_params`, `snap_to_levels`, `zero_fraction`, `kernel_table`).

Models are the `tiny` config with one encoder layer, their parameters drawn at random from the
shapes of `init_variables` (no compiled initialization); each forward is compiled once per
(model, policy).
"""

from __future__ import annotations

import functools

import flax.linen as nn
import hypothesis.extra.numpy as hnp
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import random_variables
from hypothesis import given, settings
from hypothesis import strategies as st
from jax import lax

from asr.models import build_model, context_arrays, get_config
from asr.models.quant import (
    FLOAT,
    SMALL_KERNELS,
    LstmCell,
    QuantPolicy,
    contracting_axes,
    fake_quant,
    is_kernel,
    is_small,
    kernel_bits,
    kernel_table,
    map_kernels,
    qmax,
    quant_step,
    quantize_params,
    snap_to_levels,
    zero_fraction,
)

# the tree helpers compiled whole (run op by op, each kernel shape compiles its own ops: slow)
_quantize = jax.jit(quantize_params, static_argnums=(1, 2))
_snap = jax.jit(snap_to_levels)

# --------------------------------------------------------------------------- references


def np_fake_quant(x, bits, axes):
    """float64 reference: symmetric per-slice levels, step = max|x| over `axes` / (2^(b-1) - 1)
    (1 / qmax for an all-zero slice), round half to even, clip."""
    x = np.asarray(x, np.float64)
    m = 2 ** (bits - 1) - 1
    amax = np.max(np.abs(x), axis=tuple(axes), keepdims=True)
    step = np.where(amax > 0, amax, 1.0) / m
    r = x / step
    return np.clip(np.round(r), -m, m) * step, r, step


def assert_fake_quant_matches(got, x, bits, axes):
    """`got` equals the float64 reference, except that a value whose x / step is within 1e-4 of
    a half-integer (float32 may round it either way) may be off by one step."""
    want, r, step = np_fake_quant(x, bits, axes)
    got = np.asarray(got, np.float64)
    err = np.abs(got - want)
    tol = 1e-5 * step + 3e-7 * np.abs(want)  # float32: a few ulps of the value
    frac = np.abs(r - np.floor(r))
    ambiguous = np.abs(frac - 0.5) < 1e-4
    bad = (err > tol) & ~(ambiguous & (np.abs(err - step) <= tol))
    assert not bad.any(), (bits, axes, np.argwhere(bad)[:5], got[bad][:5], want[bad][:5])


def np_contracting_axes(names, shape):
    """Independent statement of which kernel axes a product contracts: axis 0 of the attention
    projections that output (heads, head width), all but the output axis otherwise."""
    if len(names) >= 2 and names[-2] in (
        "qkv",
        "query",
        "key",
        "value",
        "cheap_kv_up",
        "cheap_q_up",
    ):
        return (0,)
    return tuple(range(len(shape) - 1))


def names_of(path):
    return tuple(str(getattr(k, "key", k)) for k in path)


def channels(w, axes):
    """Kernel `w` as [contracted size, output channels] (contracting axes first)."""
    w = np.asarray(w)
    rest = [a for a in range(w.ndim) if a not in axes]
    return np.transpose(w, list(axes) + rest).reshape(int(np.prod([w.shape[a] for a in axes])), -1)


# --------------------------------------------------------------------------- fake_quant


@pytest.mark.parametrize("bits", range(2, 9))
def test_fake_quant_matches_float64_reference_per_channel(bits):
    rng = np.random.default_rng(bits)
    x = (rng.standard_normal((5, 6, 7)) * rng.uniform(0.01, 10, (1, 6, 1))).astype(np.float32)
    x[:, 2, 3] = 0.0  # an all-zero channel for the (0,) axes
    for axes in [(0,), (1,), (2,), (0, 1), (0, 2), (1, 2), (0, 1, 2), (-1,)]:
        got = np.asarray(fake_quant(jnp.asarray(x), bits, axes))
        norm_axes = tuple(a % x.ndim for a in axes)
        assert_fake_quant_matches(got, x, bits, norm_axes)
        # per slice: at most 2^b - 1 distinct values, all integer multiples of the step
        _, _, step = np_fake_quant(x, bits, norm_axes)
        k = got / step
        np.testing.assert_allclose(k, np.round(k), atol=1e-4)
        assert np.abs(np.round(k)).max() <= qmax(bits)
        # the largest value of each slice sits on the largest level: kept up to rounding
        amax = np.max(np.abs(x), axis=norm_axes)
        np.testing.assert_allclose(np.max(np.abs(got), axis=norm_axes), amax, rtol=1e-6)


def test_fake_quant_rounds_half_to_even_and_keeps_zero_channels_zero():
    # bits 3: qmax 3; the row max 3 gives step 1, so x / step is x itself
    x = np.array([[3.0, 0.5, 1.5, 2.5, -0.5, -1.5, -2.5, 0.49, 1.51]], np.float32)
    got = np.asarray(fake_quant(jnp.asarray(x), 3, (1,)))
    np.testing.assert_array_equal(got, [[3, 0, 2, 2, 0, -2, -2, 0, 2]])
    np.testing.assert_array_equal(got, np.round(x))  # NumPy rounds half to even too
    z = np.zeros((4, 3), np.float32)
    z[:, 1] = [0.1, -0.3, 0.2, 0.0]
    for bits in (2, 4, 8):
        q = np.asarray(fake_quant(jnp.asarray(z), bits, (0,)))
        assert np.isfinite(q).all()
        np.testing.assert_array_equal(q[:, [0, 2]], 0.0)
        assert q[3, 1] == 0.0
    np.testing.assert_array_equal(
        quant_step(jnp.zeros((3, 2)), 8, (0,)), np.full((1, 2), 1 / 127, np.float32)
    )


@settings(max_examples=60, deadline=None, derandomize=True)
@given(
    x=hnp.arrays(
        np.float32,
        (4, 6),
        # channel maxima below ~1e-37 would give subnormal steps, which XLA on CPU flushes to
        # zero (the channel then quantizes to 0): not a case weights or activations reach
        elements=st.floats(-1e3, 1e3, width=32).map(lambda v: v if abs(v) > 1e-30 else 0.0),
    ),
    bits=st.integers(2, 8),
    axes=st.sampled_from([(0,), (1,), (0, 1)]),
)
def test_fake_quant_property_reference_and_idempotence(x, bits, axes):
    q = fake_quant(jnp.asarray(x), bits, axes)
    assert_fake_quant_matches(q, x, bits, axes)
    # rounding is idempotent: quantizing again keeps every value (up to float rounding)
    q2 = np.asarray(fake_quant(q, bits, axes))
    _, _, step = np_fake_quant(np.asarray(q), bits, axes)
    np.testing.assert_allclose(q2, np.asarray(q), rtol=1e-6, atol=1e-5 * float(np.max(step)))
    np.testing.assert_array_equal(np.round(q2 / step), np.round(np.asarray(q) / step))


def test_fake_quant_idempotent_on_random_tensors():
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.standard_normal((32, 24)).astype(np.float32))
    for bits in range(2, 9):
        for axes in [(0,), (1,)]:
            q1 = fake_quant(x, bits, axes)
            q2 = fake_quant(q1, bits, axes)
            np.testing.assert_allclose(np.asarray(q2), np.asarray(q1), rtol=1e-6, atol=0)
            if axes == (0,):  # a kernel's contracting axes: quantize_params keeps it
                q3 = quantize_params({"k": {"kernel": q1}}, bits)["k"]["kernel"]
                np.testing.assert_allclose(np.asarray(q3), np.asarray(q1), rtol=1e-6, atol=0)


def test_fake_quant_gradient_is_straight_through_and_zero_bits_is_identity():
    rng = np.random.default_rng(1)
    x = jnp.asarray(rng.standard_normal((6, 5)).astype(np.float32))
    c = jnp.asarray(rng.standard_normal((6, 5)).astype(np.float32))
    combos = [(b, a) for b in (2, 4, 8) for a in [(0,), (1,), (0, 1)]]

    @jax.jit
    def all_grads(v):  # one compilation for every case
        lin = [jax.grad(lambda u, b=b, a=a: jnp.sum(fake_quant(u, b, a) * c))(v) for b, a in combos]
        sq = [jax.grad(lambda u, b=b, a=a: jnp.sum(fake_quant(u, b, a) ** 2))(v) for b, a in combos]
        return lin, sq, [fake_quant(v, b, a) for b, a in combos]

    for g, g2, q in zip(*all_grads(x), strict=True):
        np.testing.assert_array_equal(np.asarray(g), np.asarray(c))  # d q(x) / dx = 1
        # d/dx sum(q(x)^2) = 2 q(x) under the straight-through estimator
        np.testing.assert_allclose(np.asarray(g2), 2 * np.asarray(q), rtol=1e-6)
        assert not np.array_equal(np.asarray(q), np.asarray(x))
    # eager too
    g = jax.grad(lambda u: jnp.sum(fake_quant(u, 3, (0,)) * c))(x)
    np.testing.assert_array_equal(np.asarray(g), np.asarray(c))
    assert fake_quant(x, 0, (0,)) is x
    assert qmax(8) == 127 and qmax(4) == 7 and qmax(2) == 1


# --------------------------------------------------------------------------- the policy


@pytest.mark.parametrize(
    "bad", [1, -1, 17, 100, 2.0, 8.5, True, False, "8", None], ids=lambda b: repr(b)
)
def test_quant_policy_refuses_bad_bits(bad):
    with pytest.raises(ValueError):
        QuantPolicy(weight_bits=bad)
    with pytest.raises(ValueError):
        QuantPolicy(act_bits=bad)


def test_quant_policy_fields_description_and_hashing():
    for b in (0, 2, 8, 16):
        assert QuantPolicy(b, b).weight_bits == b
    assert QuantPolicy() == FLOAT and FLOAT.is_float and hash(QuantPolicy()) == hash(FLOAT)
    assert not QuantPolicy(4, 0).is_float and not QuantPolicy(0, 8).is_float
    assert FLOAT.describe() == "float"
    assert QuantPolicy(4, 8).describe() == "w4a8"
    assert QuantPolicy(8, 0).describe() == "w8a-float"
    assert QuantPolicy(0, 8).describe() == "w-floata8"
    assert len({QuantPolicy(4, 8), QuantPolicy(4, 8), QuantPolicy(8, 4)}) == 2
    with pytest.raises(AttributeError):
        FLOAT.weight_bits = 4  # frozen


def test_policy_hooks_match_float64_references():
    rng = np.random.default_rng(2)
    pol = QuantPolicy(weight_bits=4, act_bits=6)
    # dot_general: activations per row (contracted axis), weights per output channel
    x = rng.standard_normal((3, 5, 8)).astype(np.float32)
    w = rng.standard_normal((8, 7)).astype(np.float32)
    got = jax.jit(lambda a, b: pol.dot_general(a, b, (((2,), (0,)), ((), ()))))(x, w)
    xq, _, _ = np_fake_quant(x, 6, (2,))
    wq, _, _ = np_fake_quant(w, 4, (0,))
    np.testing.assert_allclose(np.asarray(got), xq @ wq, rtol=1e-4, atol=1e-4)
    # conv (NWC input, WIO kernel): input per utterance, kernel per output feature
    x = rng.standard_normal((2, 9, 3)).astype(np.float32)
    k = rng.standard_normal((4, 3, 5)).astype(np.float32)
    dn = ("NWC", "WIO", "NWC")
    got = jax.jit(lambda a, b: pol.conv(a, b, (1,), "VALID", dimension_numbers=dn))(x, k)
    xq, _, _ = np_fake_quant(x, 6, (1, 2))
    kq, _, _ = np_fake_quant(k, 4, (0, 1))
    want = np.stack(
        [np.einsum("bwi,wio->bo", xq[:, t : t + 4], kq) for t in range(9 - 4 + 1)], axis=1
    )
    np.testing.assert_allclose(np.asarray(got), want, rtol=1e-4, atol=1e-4)
    # einsum of two activations: each quantized over the axes it contracts
    a = rng.standard_normal((2, 4, 3, 8)).astype(np.float32)
    b = rng.standard_normal((2, 5, 3, 8)).astype(np.float32)
    got = jax.jit(functools.partial(pol.einsum, "bqhd,bkhd->bhqk"))(a, b)
    aq, _, _ = np_fake_quant(a, 6, (3,))
    bq, _, _ = np_fake_quant(b, 6, (3,))
    np.testing.assert_allclose(
        np.asarray(got), np.einsum("bqhd,bkhd->bhqk", aq, bq), rtol=1e-4, atol=1e-4
    )
    # float activations: the einsum is the plain one
    np.testing.assert_array_equal(
        np.asarray(QuantPolicy(4, 0).einsum("bqhd,bkhd->bhqk", a, b)),
        np.asarray(jnp.einsum("bqhd,bkhd->bhqk", a, b)),
    )


def test_policy_module_factories_route_through_the_hooks():
    pol = QuantPolicy(weight_bits=3)
    x = jnp.asarray(np.random.default_rng(3).standard_normal((2, 6)).astype(np.float32))
    xc = x[..., None]
    d, dg, c = pol.dense(4), pol.dense_general((2, 3)), pol.conv_module(5, (3,))
    v, vg, vc = jax.jit(lambda k: (d.init(k, x), dg.init(k, x), c.init(k, xc)))(jax.random.key(0))
    assert vg["params"]["kernel"].shape == (6, 2, 3)
    # a kernel of several output axes contracts axis 0 only (`contracting_axes` knows that from
    # the attention projections' names: an unnamed module's path does not say it)
    qg = {"params": {**vg["params"], "kernel": fake_quant(vg["params"]["kernel"], 3, (0,))}}

    @jax.jit
    def pairs(v, vg, vc, qg):  # (through the policy, float module on quantized params)
        return [
            (d.apply(v, x), nn.Dense(4).apply(quantize_params(v, 3), x)),
            (dg.apply(vg, x), nn.DenseGeneral((2, 3)).apply(qg, x)),
            (c.apply(vc, xc), nn.Conv(5, (3,)).apply(quantize_params(vc, 3), xc)),
        ]

    for got, want in pairs(v, vg, vc, qg):
        np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-6, atol=1e-6)


# --------------------------------------------------------------------------- LstmCell


def test_lstm_cell_equals_flax_optimized_lstm_cell():
    rng = np.random.default_rng(4)
    ours, theirs = LstmCell(7), nn.OptimizedLSTMCell(7)
    x = jnp.asarray(rng.standard_normal((3, 5)).astype(np.float32))
    ca = ours.initialize_carry(jax.random.PRNGKey(2), x.shape)
    cb = theirs.initialize_carry(jax.random.PRNGKey(2), x.shape)
    assert [c.shape for c in ca] == [c.shape for c in cb] == [(3, 7)] * 2
    assert ours.num_feature_axes == theirs.num_feature_axes == 1
    pa, pb = jax.jit(lambda k: (ours.init(k, ca, x), theirs.init(k, cb, x)))(jax.random.key(0))
    # the same parameter tree (names, shapes) and the same initial values
    assert jax.tree_util.tree_structure(pa) == jax.tree_util.tree_structure(pb)
    jax.tree_util.tree_map(np.testing.assert_array_equal, pa, pb)
    # random parameters (biases too), random carries, batch shapes (3,) and (2, 3)
    p = jax.tree_util.tree_map(
        lambda w: jnp.asarray(rng.standard_normal(w.shape).astype(np.float32) * 0.5), pa
    )
    xs = [x, jnp.asarray(rng.standard_normal((2, 3, 5)).astype(np.float32))]
    carries = [
        tuple(jnp.asarray(rng.standard_normal((*v.shape[:-1], 7)).astype(np.float32)) for _ in "ch")
        for v in xs
    ]
    seq = jnp.asarray(rng.standard_normal((2, 6, 5)).astype(np.float32))
    lengths = jnp.asarray([6, 3])

    @jax.jit
    def both(p, carries, xs, seq):
        cells = [
            (ours.apply(p, c, v), theirs.apply(p, c, v)) for c, v in zip(carries, xs, strict=True)
        ]
        rnn = {"params": {"cell": p["params"]}}  # over a sequence (nn.RNN, variable lengths)
        runs = [
            (
                nn.RNN(LstmCell(7)).apply(rnn, seq, seq_lengths=lengths),
                nn.RNN(nn.OptimizedLSTMCell(7)).apply(rnn, seq, seq_lengths=lengths),
            )
        ]
        return cells + runs

    for got, want in both(p, carries, xs, seq):
        jax.tree_util.tree_map(
            lambda a, b: np.testing.assert_allclose(
                np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6
            ),
            got,
            want,
        )


def test_quantized_lstm_cell_equals_float_cell_on_quantized_params():
    rng = np.random.default_rng(6)
    x = jnp.asarray(rng.standard_normal((3, 5)).astype(np.float32))
    cell = LstmCell(4)
    carry = cell.initialize_carry(None, x.shape)
    carry = (carry[0] + 0.3, carry[1] - 0.2)

    @jax.jit
    def outputs(key):
        p = cell.init(key, carry, x)
        return (
            LstmCell(4, QuantPolicy(weight_bits=3)).apply(p, carry, x),
            nn.OptimizedLSTMCell(4).apply(quantize_params(p, 3), carry, x),
            cell.apply(p, carry, x),
        )

    got, want, float_out = outputs(jax.random.key(0))
    jax.tree_util.tree_map(
        lambda a, b: np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-6), got, want
    )
    assert not np.allclose(np.asarray(got[1]), np.asarray(float_out[1]), atol=1e-4)


# --------------------------------------------------------------------------- the model


VARIANTS = {
    # LSTM predictor, CTC head, BLSTM phrase encoder
    "lstm": dict(predictor="lstm", ctc_head=True, bias_encoder="lstm"),
    # stateless predictor, transformer phrase encoder
    "transformer": dict(predictor="stateless", bias_encoder="transformer"),
}


def _cfg(variant):
    base = get_config("tiny").replace(vocab_size=32, num_layers=1)
    if variant == "plain":
        return base
    if variant == "branching":  # asr.models.branching: both branches (cheap frames attend), arbiter
        return base.replace(
            encoder="branching", branch_rank=4, branch_ff=8, arbiter_dim=8, branch_attend=True
        )
    return base.replace(bias_dim=32, bias_heads=2, **VARIANTS[variant])


@functools.cache
def _variables(variant):
    """Random variables of the model (conftest.random_variables)."""
    return random_variables(build_model(_cfg(variant)))


def _inputs():
    rng = np.random.default_rng(8)
    feats = rng.standard_normal((2, 32, 80)).astype(np.float32)
    pads = np.zeros((2, 32), np.float32)
    pads[1, 24:] = 1.0
    labels = rng.integers(2, 32, (2, 4)).astype(np.int32)
    ctx = context_arrays([[[3, 4], [5, 6, 7]], [[8]]], num_phrases=3, max_tokens=4)
    return feats, pads, labels, ctx


def _forward_all(mod, feats, pads, labels, ctx):
    """Every output of the model: joint logits f32[B, T', U+1, V] (and CTC logits)."""
    enc_p, _ = mod.encode(feats, pads, False, ctx)
    logits = mod.joint(enc_p[:, :, None], mod.predict(labels)[:, None])
    if mod.config.ctc_head:
        return logits, mod.ctc_logits(enc_p)
    return (logits,)


@functools.cache
def _forward(variant, quant):
    """jitted variables -> outputs of `variant`'s model under policy `quant` (compiled once)."""
    model = build_model(_cfg(variant), quant=quant)
    ctx = _inputs()[3] if model.config.bias_dim else None
    feats, pads, labels, _ = _inputs()
    return jax.jit(lambda v: model.apply(v, feats, pads, labels, ctx, method=_forward_all))


def _run(variant, quant=FLOAT, variables=None):
    out = _forward(variant, quant)(_variables(variant) if variables is None else variables)
    return [np.asarray(o) for o in out]


class PlainPolicy(QuantPolicy):
    """Products with no quantization code at all: lax / jnp called directly."""

    def dot_general(self, lhs, rhs, dimension_numbers, precision=None, **kw):
        return lax.dot_general(lhs, rhs, dimension_numbers, precision=precision, **kw)

    def conv(self, lhs, rhs, window_strides, padding, *args, dimension_numbers=None, **kw):
        return lax.conv_general_dilated(
            lhs, rhs, window_strides, padding, *args, dimension_numbers=dimension_numbers, **kw
        )

    def einsum(self, spec, a, b):
        return jnp.einsum(spec, a, b)


def _jaxpr_text(variant, quant):
    model = build_model(_cfg(variant), quant=quant)
    feats, pads, labels, ctx = _inputs()
    ctx = ctx if model.config.bias_dim else None
    return str(
        jax.make_jaxpr(lambda v: model.apply(v, feats, pads, labels, ctx, method=_forward_all))(
            _variables(variant)
        )
    )


@pytest.mark.parametrize("variant", ["plain", "lstm", "transformer", "branching"])
def test_float_policy_is_the_plain_model_bit_for_bit(variant):
    cfg = _cfg(variant)
    assert build_model(cfg).quant == QuantPolicy() == FLOAT
    assert build_model(cfg) == build_model(cfg, QuantPolicy())
    # the float policy traces to exactly the program of plain lax products
    assert _jaxpr_text(variant, QuantPolicy()) == _jaxpr_text(variant, PlainPolicy())
    if variant == "lstm":  # and so (one more compilation to show it) do the outputs
        got = _run(variant, QuantPolicy())
        want = _run(variant, PlainPolicy())
        assert all(np.isfinite(g).all() for g in got)
        for g, w in zip(got, want, strict=True):
            np.testing.assert_array_equal(g, w)


# The recording policy: every weight operand a hook receives, with the axes it contracts. Values
# come back through a debug callback (products inside scans see traced parameters).
_SEEN: list[tuple[str, tuple[int, ...], np.ndarray]] = []
HI = lax.Precision.HIGHEST  # marks products made by a hook in the jaxpr


def _record(kind, axes, rhs):
    _SEEN.append((kind, axes, np.asarray(rhs)))


class RecordingPolicy(QuantPolicy):
    def dot_general(self, lhs, rhs, dimension_numbers, precision=None, **kw):
        (_, rc), _ = dimension_numbers
        jax.debug.callback(functools.partial(_record, "dot", tuple(rc)), rhs)
        return super().dot_general(lhs, rhs, dimension_numbers, precision=HI, **kw)

    def conv(self, lhs, rhs, window_strides, padding, *args, dimension_numbers=None, **kw):
        dn = lax.conv_dimension_numbers(lhs.shape, rhs.shape, dimension_numbers)
        axes = tuple(a for a in range(rhs.ndim) if a != dn.rhs_spec[0])
        jax.debug.callback(functools.partial(_record, "conv", axes), rhs)
        kw["precision"] = HI
        return super().conv(
            lhs, rhs, window_strides, padding, *args, dimension_numbers=dimension_numbers, **kw
        )

    def einsum(self, spec, a, b):
        return jnp.einsum(spec, a, b, precision=HI)


def _products(jaxpr):
    """Every dot_general and conv equation of a jaxpr, sub-jaxprs (scan, cond, pjit) included."""
    for eqn in jaxpr.eqns:
        if eqn.primitive.name in ("dot_general", "conv_general_dilated"):
            yield eqn
        for v in eqn.params.values():
            for sub in v if isinstance(v, (tuple, list)) else (v,):
                if hasattr(sub, "eqns"):
                    yield from _products(sub)
                elif hasattr(sub, "jaxpr") and hasattr(sub.jaxpr, "eqns"):
                    yield from _products(sub.jaxpr)


@pytest.mark.parametrize("variant", ["lstm", "transformer", "branching"])
def test_the_hook_sees_every_kernel_with_its_contracting_axes(variant):
    variables = _variables(variant)
    # each kernel filled with its own constant (exact in f32), so operands name their kernels
    paths = [p for p, _ in jax.tree_util.tree_leaves_with_path(variables) if is_kernel(p)]
    marks = {}

    def fill(path, w):
        if not is_kernel(path):
            return w
        marks[len(marks) + 1] = (path, w.shape)
        return np.full(w.shape, len(marks) / 1024, np.float32)

    filled = jax.tree_util.tree_map_with_path(fill, variables)
    assert len(marks) == len(paths) > 20
    _SEEN.clear()
    _run(variant, RecordingPolicy(), filled)
    jax.effects_barrier()
    assert _SEEN
    seen = set()
    for kind, axes, rhs in _SEEN:
        ids = sorted({round(float(v) * 1024) for v in np.unique(rhs)})
        assert all(i in marks for i in ids), (kind, rhs.shape, ids)  # a kernel, unchanged
        for i in ids:
            path, shape = marks[i]
            name = "/".join(names_of(path))
            want_axes = contracting_axes(path, shape)
            assert want_axes == np_contracting_axes(names_of(path), shape), name
            assert axes == want_axes, (name, kind, axes, want_axes)
            if len(ids) == 1:
                assert rhs.shape == shape, (name, rhs.shape, shape)
            else:  # LSTM gates: kernels concatenated along the output axis
                assert rhs.shape[:-1] == shape[:-1], (name, rhs.shape, shape)
                cols = np.flatnonzero(np.all(rhs == i / 1024, axis=tuple(range(rhs.ndim - 1))))
                assert len(cols) == shape[-1] and np.all(np.diff(cols) == 1), name
                assert np.all(rhs[..., cols] == i / 1024), name
            seen.add(i)
    missing = ["/".join(names_of(marks[i][0])) for i in marks if i not in seen]
    assert not missing, missing
    # no product of the model bypasses the hooks: every dot_general / conv carries their mark
    model = build_model(_cfg(variant), quant=RecordingPolicy())
    feats, pads, labels, ctx = _inputs()
    jaxpr = jax.make_jaxpr(lambda v: model.apply(v, feats, pads, labels, ctx, method=_forward_all))(
        filled
    ).jaxpr
    eqns = list(_products(jaxpr))
    assert len(eqns) > 10
    for eqn in eqns:
        prec = eqn.params.get("precision")
        assert prec is not None and all(p == HI for p in np.atleast_1d(prec)), eqn
    _SEEN.clear()


@pytest.mark.parametrize(("variant", "bits"), [("lstm", 4), ("transformer", 3)])
def test_weight_quantized_model_equals_float_model_on_quantized_params(variant, bits):
    variables = _variables(variant)
    got = _run(variant, QuantPolicy(weight_bits=bits, act_bits=0))
    qv = {"params": _quantize(variables["params"], bits), "norm": variables["norm"]}
    want = _run(variant, FLOAT, qv)
    plain = _run(variant, FLOAT)
    for g, w, p in zip(got, want, plain, strict=True):
        assert np.isfinite(g).all()
        scale = np.abs(w).max()
        np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-5 * scale)
        assert np.abs(g - p).max() > 1e-3 * scale  # the quantization does change the outputs


# an independent statement of the small layers (asr.models.quant.SMALL_KERNELS)
SMALL_NAMES = ("ConvSubsampling_0/Conv_0", "CausalConvModule_0/Conv_0", "joiner/out", "ctc_out")


def _np_is_small(names):
    return names[-1] == "kernel" and any(
        tuple(names[-1 - len(s.split("/")) : -1]) == tuple(s.split("/")) for s in SMALL_NAMES
    )


@pytest.mark.parametrize("variant", ["lstm", "branching"])
def test_mixed_policy_model_equals_float_model_on_mixed_quantized_params(variant):
    """QuantPolicy(3, 0, small_bits=8) computes exactly the float model on parameters whose
    small layers are rounded to 8 bits and the rest to 3: every small layer's module asks for
    `policy.small()`, and no other module does."""
    variables = _variables(variant)
    params = variables["params"]
    small = [
        "/".join(names_of(p))
        for p, _ in jax.tree_util.tree_leaves_with_path(params)
        if _np_is_small(names_of(p))
    ]
    assert len(small) >= 3, small  # first convolution, depthwise convolution, joiner output
    got = _run(variant, QuantPolicy(weight_bits=3, act_bits=0, small_bits=8))
    want = _run(variant, FLOAT, {"params": _quantize(params, 3, 8), "norm": variables["norm"]})
    all3 = _run(variant, QuantPolicy(weight_bits=3, act_bits=0))
    for g, w, a in zip(got, want, all3, strict=True):
        assert np.isfinite(g).all()
        scale = np.abs(w).max()
        np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-5 * scale)
        assert np.abs(g - a).max() > 1e-3 * scale  # the small layers' bits do change the outputs


def test_quantize_params_with_small_bits_against_float64_reference():
    params = _variables("lstm")["params"]
    q = _quantize(params, 4, 8)
    n_small = 0
    for (path, w), (_, qw) in zip(
        jax.tree_util.tree_leaves_with_path(params),
        jax.tree_util.tree_leaves_with_path(q),
        strict=True,
    ):
        names = names_of(path)
        assert is_small(path) == _np_is_small(names) == is_small("/".join(names)), names
        if not is_kernel(path):
            np.testing.assert_array_equal(np.asarray(qw), np.asarray(w))
            continue
        bits = 8 if _np_is_small(names) else 4
        n_small += bits == 8
        assert_fake_quant_matches(qw, w, bits, np_contracting_axes(names, w.shape))
    assert n_small == sum(b == 8 for b in kernel_bits(params, 4, 8)) >= 4  # with the CTC head
    assert kernel_bits(params, 4) == kernel_bits(params, 4, 0) == (4,) * len(kernel_table(params))
    for a, b in zip(jax.tree_util.tree_leaves(_quantize(params, 4, 0)),
                    jax.tree_util.tree_leaves(_quantize(params, 4)), strict=True):  # fmt: skip
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert SMALL_KERNELS.endswith("/kernel$")
    assert not is_small("encoder/ConvSubsampling_0/Conv_1/kernel")
    assert not is_small("encoder/ConvSubsampling_0/Conv_0/bias")
    assert not is_small("predictor/joiner/out_proj/kernel")


def test_quant_policy_small_layers():
    p = QuantPolicy(4, 8, 8)
    assert p.small() == QuantPolicy(8, 8) and p.describe() == "w4s8a8"
    assert QuantPolicy(4, 8).small() is not None and QuantPolicy(4, 8).small() == QuantPolicy(4, 8)
    assert QuantPolicy(4, 8, 4).describe() == "w4a8"
    assert len({QuantPolicy(4, 8), QuantPolicy(4, 8, 8)}) == 2  # distinct jit cache keys
    with pytest.raises(ValueError, match="small_bits needs weight_bits"):
        QuantPolicy(0, 8, 8)
    for bad in (1, 17, 2.0, True):
        with pytest.raises(ValueError):
            QuantPolicy(4, 8, bad)


def test_activation_quantized_model_runs_close_to_float():
    got = _run("transformer", QuantPolicy(weight_bits=8, act_bits=8))
    want = _run("transformer")
    for g, w in zip(got, want, strict=True):
        assert np.isfinite(g).all()
        err = np.abs(g - w).max() / np.abs(w).max()
        assert 0 < err < 0.1, err


# --------------------------------------------------------------------------- parameter trees


def test_contracting_axes_and_is_kernel_on_paths():
    K = jax.tree_util.DictKey
    assert is_kernel((K("params"), K("Dense_0"), K("kernel")))
    assert not is_kernel((K("params"), K("Dense_0"), K("bias")))
    assert not is_kernel((K("params"), K("embed"), K("embedding")))
    assert not is_kernel((K("params"), K("LayerNorm_0"), K("scale")))
    for name in ("qkv", "query", "key", "value"):
        assert contracting_axes((K("params"), K(name), K("kernel")), (8, 3, 2, 4)) == (0,)
    assert contracting_axes((K("params"), K("out"), K("kernel")), (2, 4, 8)) == (0, 1)
    assert contracting_axes((K("Conv_0"), K("kernel")), (3, 3, 1, 8)) == (0, 1, 2)
    assert contracting_axes((K("Dense_0"), K("kernel")), (5, 6)) == (0,)


@pytest.mark.parametrize("bits", [2, 4, 8])
def test_quantize_params_touches_only_kernels_and_puts_them_on_levels(bits):
    params = _variables("lstm")["params"]
    q = _quantize(params, bits)
    assert jax.tree_util.tree_structure(q) == jax.tree_util.tree_structure(params)
    n_kernels = 0
    for (path, w), (_, qw) in zip(
        jax.tree_util.tree_leaves_with_path(params),
        jax.tree_util.tree_leaves_with_path(q),
        strict=True,
    ):
        w, qw = np.asarray(w), np.asarray(qw)
        assert qw.shape == w.shape and qw.dtype == w.dtype
        if not is_kernel(path):  # embeddings, biases, norm scales, the no-bias vector
            np.testing.assert_array_equal(qw, w)
            continue
        n_kernels += 1
        axes = np_contracting_axes(names_of(path), w.shape)
        assert_fake_quant_matches(qw, w, bits, axes)
        cw, cq = channels(w, axes), channels(qw, axes)
        for j in range(cq.shape[1]):
            assert len(np.unique(cq[:, j])) <= 2**bits - 1
        # the step is per output channel: each channel's largest weight is kept
        np.testing.assert_allclose(np.abs(cq).max(0), np.abs(cw).max(0), rtol=1e-6)
    assert n_kernels == len(kernel_table(params)) > 20
    assert quantize_params(params, 0) is params


def test_quantize_params_keeps_zeros_and_zero_channels():
    rng = np.random.default_rng(9)
    w = rng.standard_normal((16, 6)).astype(np.float32)
    w[rng.random(w.shape) < 0.3] = 0.0
    w[:, 2] = 0.0
    q = np.asarray(_quantize({"d": {"kernel": w}}, 4)["d"]["kernel"])
    assert np.all(q[w == 0] == 0) and np.isfinite(q).all()
    assert zero_fraction({"d": {"kernel": q}}) >= zero_fraction({"d": {"kernel": w}})


def np_snap(w, lv, axes):
    w = np.asarray(w, np.float64)
    amax = np.max(np.abs(w), axis=axes, keepdims=True)
    scale = np.where(amax > 0, amax, 1.0)
    u = w / scale
    out = np.empty_like(w)
    for idx in np.ndindex(w.shape):
        out[idx] = (
            lv[np.argmin(np.abs(u[idx] - lv))]
            * scale[tuple(0 if a in axes else i for a, i in enumerate(idx))]
        )
    return out


def _toy_tree(rng):
    f = lambda *s: rng.standard_normal(s).astype(np.float32)  # noqa: E731
    return {
        "params": {
            "Dense_0": {"kernel": f(6, 5), "bias": f(5)},
            "attn": {"qkv": {"kernel": f(4, 3, 2, 2)}, "out": {"kernel": f(2, 2, 4)}},
            "Conv_0": {"kernel": f(3, 2, 4), "bias": f(4)},
            "embed": {"embedding": f(7, 4)},
            "LayerNorm_0": {"scale": f(4)},
        }
    }


def test_snap_to_levels_matches_nearest_level_reference():
    rng = np.random.default_rng(10)
    params = _toy_tree(rng)
    kernels = [(p, w) for p, w in jax.tree_util.tree_leaves_with_path(params) if is_kernel(p)]
    n_levels = 7
    # one row of levels per kernel in tree order, different for each: -1, 0, 1 and random others
    levels = np.sort(
        np.concatenate(
            [np.tile([-1.0, 0.0, 1.0], (len(kernels), 1)), rng.uniform(-1, 1, (len(kernels), 4))],
            axis=1,
        ),
        axis=1,
    ).astype(np.float32)
    snapped = _snap(params, jnp.asarray(levels))
    assert jax.tree_util.tree_structure(snapped) == jax.tree_util.tree_structure(params)
    k = 0
    for (path, w), s in zip(
        jax.tree_util.tree_leaves_with_path(params), jax.tree_util.tree_leaves(snapped), strict=True
    ):
        if not is_kernel(path):
            np.testing.assert_array_equal(np.asarray(s), w)
            continue
        axes = np_contracting_axes(names_of(path), w.shape)
        want = np_snap(w, levels[k].astype(np.float64), axes)
        np.testing.assert_allclose(np.asarray(s), want, rtol=1e-6, atol=1e-7)
        cs = channels(s, axes)
        assert all(len(np.unique(cs[:, j])) <= n_levels for j in range(cs.shape[1]))
        k += 1
    assert k == len(kernels) == 4
    # one row per kernel is required
    with pytest.raises(ValueError, match="one row per kernel"):
        _snap(params, np.concatenate([levels, levels[:1]]))
    with pytest.raises(ValueError, match="one row per kernel"):
        _snap(params, levels[:2])


def test_snap_to_uniform_levels_is_quantize_params():
    rng = np.random.default_rng(11)
    params = _toy_tree(rng)
    for bits in (2, 3, 5):
        m = qmax(bits)
        lv = np.tile(np.arange(-m, m + 1) / m, (4, 1)).astype(np.float32)
        a = _snap(params, lv)
        b = _quantize(params, bits)
        jax.tree_util.tree_map(
            lambda x, y: np.testing.assert_allclose(np.asarray(x), np.asarray(y), atol=1e-6), a, b
        )


def test_zero_fraction_counts_exact_zeros_of_kernels_only():
    rng = np.random.default_rng(12)
    params = _toy_tree(rng)
    p = params["params"]
    p["Dense_0"]["kernel"][:2] = 0.0  # 10 of 30
    p["attn"]["qkv"]["kernel"][0, 0] = 0.0  # 4 of 48
    p["Dense_0"]["bias"][:] = 0.0  # not kernels: not counted
    p["embed"]["embedding"][:] = 0.0
    total = 30 + 48 + 16 + 24
    assert zero_fraction(params) == pytest.approx(14 / total)
    assert zero_fraction({"params": {"bias": np.zeros(3)}}) == 0.0
    p["Conv_0"]["kernel"][0, 0, 0] = -0.0  # negative zero is zero
    assert zero_fraction(params) == pytest.approx(15 / total)


def test_kernel_table_and_map_kernels():
    rng = np.random.default_rng(13)
    params = _toy_tree(rng)
    table = kernel_table(params)
    assert [n for n, _ in table] == ["Conv_0", "Dense_0", "attn/out", "attn/qkv"]
    for (_, w), (_, w2) in zip(
        table,
        [(p, w) for p, w in jax.tree_util.tree_leaves_with_path(params) if is_kernel(p)],
        strict=True,
    ):
        assert w is w2
    calls = []

    def fn(ws, axes):  # one call with every kernel, in tree order
        calls.append(([np.shape(w) for w in ws], axes))
        return tuple(w * 2 for w in ws)

    out = map_kernels(fn, params)
    shapes = [np.shape(w) for _, w in table]
    assert calls == [(shapes, ((0, 1), (0,), (0, 1), (0,)))]
    np.testing.assert_array_equal(
        out["params"]["Dense_0"]["kernel"], 2 * params["params"]["Dense_0"]["kernel"]
    )
    for path, w in jax.tree_util.tree_leaves_with_path(params):
        if not is_kernel(path):  # other leaves untouched, the very same objects
            v = out
            for k in path:
                v = v[k.key]
            assert v is w
    assert out["params"]["Dense_0"]["bias"] is params["params"]["Dense_0"]["bias"]
