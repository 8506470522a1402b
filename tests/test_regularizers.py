"""Compression-aware training (train/regularizers.py): the absolute-cosine regularizer and its
multi-regional variant against float64 NumPy references (zero on the quantizer's levels, large
for random weights, a gradient toward the nearest level), the fitted non-uniform levels, the cubic
sparsity schedule, magnitude pruning masks against a sort by (magnitude, position), the
`sparsify` optax transform over whole runs (exact final share, untouched biases, zeros that stay
zero, hard masks, a resumed run bit-identical to an uninterrupted one), and the metrics.

References: Nguyen, Alexandridis & Mouchtaris 2020 (absolute-cosine regularizer); Zhu & Gupta
2017 ("To prune, or not to prune": the cubic schedule).
"""

from __future__ import annotations

import math
import re

import flax.serialization
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from asr.models.quant import is_kernel, qmax, quantize_params, snap_to_levels
from train.regularizers import (
    NEAR,
    SMALL_LAYERS,
    ZERO_FLOOR,
    SparsifyState,
    acos_penalty,
    acos_terms,
    eligible_mask,
    eligible_share,
    find_sparsify_state,
    fit_levels,
    mr_acos_penalty,
    prune_masks,
    ramp,
    sparsify,
    sparsity_exclude_regex,
    sparsity_penalty,
    sparsity_target,
    zero_shares,
)

_acos = jax.jit(acos_penalty, static_argnums=1)
_mr_acos = jax.jit(mr_acos_penalty)
_quantize = jax.jit(quantize_params, static_argnums=1)
_snap = jax.jit(snap_to_levels)


def names_of(path):
    return tuple(str(getattr(k, "key", k)) for k in path)


def np_axes(names, shape):
    """The contracting axes of a kernel (stated independently of the code under test)."""
    if len(names) >= 2 and names[-2] in ("qkv", "query", "key", "value"):
        return (0,)
    return tuple(range(len(shape) - 1))


def toy_params(seed=0, scale=1.0):
    """A flax-like tree: Dense, attention projections (qkv, out), a conv, an embedding table,
    biases and a norm scale; the kernels' channels of different magnitudes."""
    rng = np.random.default_rng(seed)

    def f(*shape):
        w = rng.standard_normal(shape) * rng.uniform(0.1, 3.0, shape[-1:]) * scale
        return w.astype(np.float32)

    return {
        "params": {
            "Dense_0": {"kernel": f(24, 16), "bias": f(16)},
            "attn": {"qkv": {"kernel": f(16, 3, 2, 4)}, "out": {"kernel": f(2, 4, 16)}},
            "Conv_0": {"kernel": f(3, 4, 8), "bias": f(8)},
            "embed": {"embedding": f(10, 16)},
            "LayerNorm_0": {"scale": f(16)},
        }
    }


def kernels(params):
    return [
        (names_of(p), np.asarray(w, np.float64))
        for p, w in jax.tree_util.tree_leaves_with_path(params)
        if is_kernel(p)
    ]


# --------------------------------------------------------------------------- absolute cosine


def np_acos(params, bits):
    """float64 brute force: (mean over kernel weights of 1 - |cos(pi w / step)|, share within
    NEAR of a level), step = max |w| / (2^(b-1) - 1) per output channel."""
    m = 2 ** (bits - 1) - 1
    pens, near, n = 0.0, 0, 0
    for names, w in kernels(params):
        axes = np_axes(names, w.shape)
        amax = np.max(np.abs(w), axis=axes, keepdims=True)
        x = w / (np.where(amax > 0, amax, 1.0) / m)
        pens += np.sum(1.0 - np.abs(np.cos(np.pi * x)))
        near += int(np.sum(np.abs(x - np.round(x)) <= NEAR))
        n += w.size
    return pens / n, near / n


BITS = tuple(range(2, 9))


@jax.jit
def _acos_all_bits(params):
    """Per bits: (R, near) of `params`, of `params` quantized to those bits, and of the latter
    at one bit more (one compilation for all)."""
    out = []
    for b in BITS:
        q = quantize_params(params, b)
        out.append((acos_penalty(params, b), acos_penalty(q, b), acos_penalty(q, b + 1)))
    return out


def test_acos_penalty_matches_float64_reference():
    for seed in range(3):
        params = toy_params(seed)
        for bits, ((reg, near), _, _) in zip(BITS, _acos_all_bits(params), strict=True):
            want_reg, want_near = np_acos(params, bits)
            assert reg.shape == () and near.shape == ()
            np.testing.assert_allclose(float(reg), want_reg, rtol=1e-4, atol=1e-6)
            np.testing.assert_allclose(float(near), want_near, atol=2 / 500)  # on a border


def test_acos_penalty_with_small_bits_measures_the_small_layers_at_their_bits():
    small = "enc/ConvSubsampling_0/Conv_0"
    params = {"enc": {"ConvSubsampling_0": {"Conv_0": {"kernel": jnp.asarray(
        np.random.default_rng(0).standard_normal((3, 3, 1, 8)), jnp.float32)}}},
        "dense": {"kernel": jnp.asarray(
            np.random.default_rng(1).standard_normal((16, 8)), jnp.float32)}}  # fmt: skip
    mixed = quantize_params(params, 4, 8)
    reg, near = acos_penalty(mixed, 4, 8)
    assert float(reg) < 1e-5 and float(near) == 1.0
    reg4, near4 = acos_penalty(mixed, 4)  # the small kernel is not on 4-bit levels
    assert float(reg4) > 0.01 and float(near4) < 1.0
    # the mean over all kernel weights: the small kernel's term at 8 bits, the other's at 4
    w = {small: np.asarray(params["enc"]["ConvSubsampling_0"]["Conv_0"]["kernel"], np.float64),
         "dense": np.asarray(params["dense"]["kernel"], np.float64)}  # fmt: skip
    tot = 0.0
    for name, b, axes in ((small, 8, (0, 1, 2)), ("dense", 4, (0,))):
        amax = np.max(np.abs(w[name]), axis=axes, keepdims=True)
        x = w[name] / (amax / (2 ** (b - 1) - 1))
        tot += np.sum(1.0 - np.abs(np.cos(np.pi * x)))
    want = tot / (w[small].size + w["dense"].size)
    np.testing.assert_allclose(float(acos_penalty(params, 4, 8)[0]), want, rtol=1e-4)


def test_acos_penalty_is_zero_on_levels_and_large_for_random_weights():
    for seed in range(10, 12):
        params = toy_params(seed)
        for bits, (random, on_levels, finer) in zip(BITS, _acos_all_bits(params), strict=True):
            # on the levels of `bits`: nothing to pay, every weight near a level
            assert float(on_levels[0]) < 1e-6 and float(on_levels[1]) == 1.0, bits
            # random weights: far from the levels (1 - 2/pi on average for uniform positions)
            assert float(random[0]) > 0.2 and float(random[1]) < 0.5, bits
            # the levels of one bit more contain only 0 and the ends of these (steps k / m
            # against k' / (2m + 1)): off them again, but for 2 bits (levels -1, 0, 1)
            assert float(finer[0]) > 0.05 if bits > 2 else float(finer[0]) < 1e-6, bits


def test_acos_penalty_without_kernels_and_on_zero_kernels():
    reg, near = acos_penalty({"params": {"bias": jnp.ones(3)}}, 4)
    assert float(reg) == 0.0 and float(near) == 0.0
    z = {"d": {"kernel": jnp.zeros((4, 3))}}
    reg, near = acos_penalty(z, 4)
    assert float(reg) == 0.0 and float(near) == 1.0
    s, c = acos_terms(jnp.asarray([[0.0, 1.0], [0.5, -1.0]]), 2, (0,))
    # steps: column max / 1 = 0.5 and 1.0: x = [[0, 1], [1, -1]]
    assert float(s) == pytest.approx(0.0, abs=1e-6) and int(c) == 4


def test_acos_gradient_pulls_weights_toward_the_nearest_level():
    bits = 4
    params = {"params": {k: v for k, v in toy_params(3)["params"].items() if k != "embed"}}
    grad_fn = jax.jit(jax.grad(lambda p: acos_penalty(p, bits)[0]))
    g = grad_fn(params)
    m = qmax(bits)
    for (names, w), (_, gw) in zip(kernels(params), kernels(g), strict=True):
        amax = np.max(np.abs(w), axis=np_axes(names, w.shape), keepdims=True)
        x = w / (amax / m)
        off = np.round(x) - x  # toward the nearest level
        clear = (np.abs(off) > 0.02) & (np.abs(off) < 0.48)
        assert clear.sum() > 0.5 * w.size
        np.testing.assert_array_equal(np.sign(-gw[clear]), np.sign(off[clear]), err_msg=str(names))
    # a few steps of gradient descent on the penalty alone: closer to the levels
    reg0, near0 = _acos(params, bits)
    n = sum(w.size for _, w in kernels(params))
    steps = jax.tree_util.tree_map_with_path(
        lambda path, w: (
            np.max(np.abs(w), axis=np_axes(names_of(path), w.shape), keepdims=True) / m
            if is_kernel(path)
            else 0.0
        ),
        params,
    )
    p = params
    for _ in range(5):
        g = grad_fn(p)
        # per channel, a learning rate that moves a weight by at most 0.3 step (the gradient of
        # the mean is at most pi / (n step))
        p = jax.tree_util.tree_map(lambda w, gw, s: w - 0.3 * n * s**2 / np.pi * gw, p, g, steps)
    reg1, near1 = _acos(p, bits)
    assert float(reg1) < 0.7 * float(reg0)
    assert float(near1) > float(near0) + 0.1


# --------------------------------------------------------------------------- multi-regional


def np_mr_acos(params, levels):
    """float64 brute force: per weight u = w / max|w| of its channel, the levels lo <= u < hi
    around it (the last interval for u = 1), t = (u - lo) / (hi - lo), penalty 1 - |cos(pi t)|;
    near: min(t, 1 - t) <= NEAR."""
    pen, near, n = 0.0, 0, 0
    for k, (names, w) in enumerate(kernels(params)):
        lv = np.asarray(levels[k], np.float64)
        axes = np_axes(names, w.shape)
        amax = np.max(np.abs(w), axis=axes, keepdims=True)
        u = (w / np.where(amax > 0, amax, 1.0)).ravel()
        for x in u:
            below = [i for i in range(len(lv) - 1) if lv[i] <= x]
            i = below[-1] if below else 0
            t = min(max((x - lv[i]) / (lv[i + 1] - lv[i]), 0.0), 1.0)
            pen += 1.0 - abs(math.cos(math.pi * t))
            near += min(t, 1.0 - t) <= NEAR
        n += w.size
    return pen / n, near / n


@pytest.mark.parametrize("bits", [2, 3, 4, 6])
def test_fit_levels_shape_order_and_fixed_levels(bits):
    params = toy_params(20 + bits)
    levels = fit_levels(params, bits)
    n_kernels = len(kernels(params))
    assert levels.shape == (n_kernels, 2**bits - 1) and levels.dtype == np.float32
    for row in levels:
        assert np.all(np.diff(row) >= 0), row
        assert row[0] == -1.0 and row[-1] == 1.0 and 0.0 in row
        assert np.all(np.abs(row) <= 1.0)
    if bits == 2:
        np.testing.assert_array_equal(levels, np.tile([-1.0, 0.0, 1.0], (n_kernels, 1)))
    # deterministic
    np.testing.assert_array_equal(fit_levels(params, bits), levels)


def test_fitted_levels_quantize_better_than_uniform_ones():
    bits = 3
    params = toy_params(30)
    levels = fit_levels(params, bits)
    m = qmax(bits)
    uniform = np.tile(np.arange(-m, m + 1) / m, (len(levels), 1)).astype(np.float32)
    ref = np.concatenate([w.ravel() for _, w in kernels(params)])

    def err(lv):
        snapped = np.concatenate([w.ravel() for _, w in kernels(_snap(params, lv))])
        return np.mean((snapped - ref) ** 2)

    assert err(levels) < 0.9 * err(uniform)


@pytest.mark.parametrize("bits", [2, 4])
def test_mr_acos_penalty_matches_reference_and_is_zero_on_its_levels(bits):
    params = toy_params(40 + bits)
    levels = fit_levels(params, bits)
    reg, near = _mr_acos(params, jnp.asarray(levels))
    want_reg, want_near = np_mr_acos(params, levels)
    np.testing.assert_allclose(float(reg), want_reg, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(float(near), want_near, atol=2 / 500)
    assert float(reg) > 0.15
    snapped = _snap(params, jnp.asarray(levels))
    reg, near = _mr_acos(snapped, jnp.asarray(levels))
    assert float(reg) < 1e-6 and float(near) == 1.0
    # uniform levels: the multi-regional penalty is the absolute-cosine one
    m = qmax(bits)
    uniform = np.tile(np.arange(-m, m + 1) / m, (len(levels), 1)).astype(np.float32)
    np.testing.assert_allclose(
        float(_mr_acos(params, jnp.asarray(uniform))[0]), float(_acos(params, bits)[0]), rtol=1e-4
    )


def test_mr_acos_penalty_on_hand_made_levels():
    w = np.array([[1.0, 0.25], [0.5, -1.0], [-0.25, 0.0]], np.float32)  # column max 1
    levels = jnp.asarray([[-1.0, 0.0, 0.5, 1.0]])
    reg, near = mr_acos_penalty({"d": {"kernel": jnp.asarray(w)}}, levels)
    # t: 1.0 -> 1 (top), 0.5 -> 0 (on a level), -0.25 -> 0.75, 0.25 -> 0.5, -1 -> 0, 0 -> 0
    want = [0.0, 0.0, 1 - abs(math.cos(0.75 * math.pi)), 1.0, 0.0, 0.0]
    assert float(reg) == pytest.approx(sum(want) / 6, abs=1e-6)
    assert float(near) == pytest.approx(4 / 6)


# --------------------------------------------------------------------------- schedules


def test_ramp_edges():
    assert float(ramp(0, 10, 20)) == 0.0
    assert float(ramp(10, 10, 20)) == 0.0
    assert float(ramp(15, 10, 20)) == pytest.approx(0.5)
    assert float(ramp(20, 10, 20)) == 1.0
    assert float(ramp(1000, 10, 20)) == 1.0
    assert float(ramp(-5, 10, 20)) == 0.0
    # end <= start: a step at start
    for end in (10, 3):
        assert float(ramp(9, 10, end)) == 0.0
        assert float(ramp(10, 10, end)) == 1.0
        assert float(ramp(11, 10, end)) == 1.0
    # traced steps
    got = jax.jit(lambda s: ramp(s, 10, 20))(jnp.arange(25))
    np.testing.assert_allclose(np.asarray(got), np.clip((np.arange(25) - 10) / 10, 0, 1))


def test_sparsity_target_follows_the_cubic_schedule():
    final, start, end = 0.8, 100, 200
    steps = np.arange(0, 260, 7)
    got = np.asarray(jax.jit(lambda s: sparsity_target(s, final, start, end))(steps))
    p = np.clip((steps - start) / (end - start), 0, 1)
    np.testing.assert_allclose(got, final * (1 - (1 - p) ** 3), rtol=1e-6, atol=1e-7)
    assert float(sparsity_target(start, final, start, end)) == 0.0
    assert float(sparsity_target(0, final, start, end)) == 0.0
    assert float(sparsity_target(150, final, start, end)) == pytest.approx(0.8 * (1 - 0.125))
    assert float(sparsity_target(end, final, start, end)) == pytest.approx(final)
    assert float(sparsity_target(10 * end, final, start, end)) == pytest.approx(final)
    # increasing, fastest at the start
    assert np.all(np.diff(got) >= 0)
    d = np.diff(np.asarray([float(sparsity_target(s, final, start, end)) for s in (100, 125, 150)]))
    assert d[0] > d[1] > 0


# --------------------------------------------------------------------------- masks


def np_smallest(w, k):
    """bool like w: the k entries of smallest |w|, ties broken by position (a sort by key)."""
    flat = np.abs(np.asarray(w)).ravel()
    order = sorted(range(flat.size), key=lambda i: (flat[i], i))
    out = np.zeros(flat.size, bool)
    out[order[:k]] = True
    return out.reshape(np.shape(w))


def tie_params(seed=0):
    """Small integers: many weights share a magnitude (and some are zero)."""
    rng = np.random.default_rng(seed)

    def f(*s):
        return rng.integers(-3, 4, s).astype(np.float32)

    return {
        "params": {
            "Dense_0": {"kernel": f(8, 6), "bias": f(6)},
            "Dense_1": {"kernel": f(6, 5), "bias": f(5)},
            "embed": {"embedding": f(7, 3)},
            "LayerNorm_0": {"scale": f(3)},
        }
    }


def test_eligible_mask_kernels_embeddings_and_exclusions():
    params = tie_params()
    assert eligible_mask(params)["params"] == {
        "Dense_0": {"kernel": True, "bias": False},
        "Dense_1": {"kernel": True, "bias": False},
        "embed": {"embedding": False},
        "LayerNorm_0": {"scale": False},
    }
    e = eligible_mask(params, embeddings=True, exclude="Dense_1")["params"]
    assert e["embed"]["embedding"] and e["Dense_0"]["kernel"] and not e["Dense_1"]["kernel"]
    assert not eligible_mask(params, exclude="Dense")["params"]["Dense_0"]["kernel"]


@pytest.mark.parametrize("scope", ["layer", "global"])
def test_prune_masks_select_exactly_the_smallest_magnitudes(scope):
    params = tie_params(1)
    eligible = eligible_mask(params, embeddings=True)
    masks_at = jax.jit(lambda p, s: prune_masks(p, eligible, s, scope))
    leaves = jax.tree_util.tree_leaves(params)
    elig = jax.tree_util.tree_leaves(eligible)
    for share in [0.0, 0.1, 0.25, 0.3, 0.5, 0.7, 0.77, 0.99, 1.0]:
        masks = jax.tree_util.tree_leaves(masks_at(params, share))
        assert len(masks) == len(leaves)
        if scope == "layer":
            for w, e, m in zip(leaves, elig, masks, strict=True):
                m = np.asarray(m)
                assert m.dtype == bool and m.shape == w.shape
                if not e:
                    assert not m.any()
                    continue
                assert m.sum() == math.floor(share * w.size + 1e-9), (share, w.shape)
                np.testing.assert_array_equal(m, np_smallest(w, m.sum()))
        else:
            flat = np.concatenate([w.ravel() for w, e in zip(leaves, elig, strict=True) if e])
            want = np_smallest(flat, math.floor(share * flat.size + 1e-9))
            got = np.concatenate(
                [np.asarray(m).ravel() for m, e in zip(masks, elig, strict=True) if e]
            )
            np.testing.assert_array_equal(got, want)
            for m, e in zip(masks, elig, strict=True):
                if not e:
                    assert not np.asarray(m).any()
    with pytest.raises(ValueError):
        prune_masks(params, eligible, 0.5, "row")


# --------------------------------------------------------------------------- sparsify


def flax_like(seed=0):
    rng = np.random.default_rng(seed)
    f = lambda *s: jnp.asarray(rng.standard_normal(s).astype(np.float32))  # noqa: E731
    return {
        "params": {
            "Dense_0": {"kernel": f(64, 32), "bias": f(32)},
            "Dense_1": {"kernel": f(32, 16), "bias": f(16)},
            "embed": {"embedding": f(20, 8)},
            "LayerNorm_0": {"scale": f(8), "bias": f(8)},
        }
    }


KEY = jax.random.key(42)


def make_step(tx):
    """jitted (params, opt_state, i) -> (params, opt_state): one update with the random
    'gradient' of step i (a function of i alone, so a resumed run sees the same ones)."""

    @jax.jit
    def step(params, state, i):
        leaves, treedef = jax.tree_util.tree_flatten(params)
        keys = jax.random.split(jax.random.fold_in(KEY, i), len(leaves))
        grads = treedef.unflatten(
            [jax.random.normal(k, w.shape) for k, w in zip(keys, leaves, strict=True)]
        )
        updates, state = tx.update(grads, state, params)
        return optax.apply_updates(params, updates), state

    return step


def run(tx, params, steps, state=None, first=0, step_fn=None):
    """Params and states after each of `steps` updates (from update `first` on)."""
    step_fn = step_fn or make_step(tx)
    state = tx.init(params) if state is None else state
    history = []
    for i in range(first, first + steps):
        params, state = step_fn(params, state, i)
        history.append((params, state))
    return history


def kernel_leaves(params):
    p = params["params"]
    return {
        "Dense_0": np.asarray(p["Dense_0"]["kernel"]),
        "Dense_1": np.asarray(p["Dense_1"]["kernel"]),
    }


def np_target(step, final, start, end):
    p = min(max((step - start) / (end - start), 0.0), 1.0) if end > start else float(step >= start)
    return final * (1 - (1 - p) ** 3)


LR, FINAL, START, END, EVERY, STEPS = 0.01, 0.5, 2, 12, 3, 16


@pytest.fixture(scope="module")
def sgd_run():
    return run(optax.sgd(LR), flax_like(), STEPS)


@pytest.fixture(scope="module")
def penalty_run():
    tx = optax.chain(optax.sgd(LR), sparsify(FINAL, START, END, every=EVERY))
    step_fn = make_step(tx)
    return tx, step_fn, run(tx, flax_like(), STEPS, step_fn=step_fn)


def test_sparsify_reaches_the_exact_target_and_zeros_stay_zero(penalty_run, sgd_run):
    _, _, hist = penalty_run
    prev_zero = None
    for t, ((params, state), (ref, _)) in enumerate(zip(hist, sgd_run, strict=True)):
        st = find_sparsify_state(state)
        assert isinstance(st, SparsifyState) and int(st.count) == t + 1
        ks = kernel_leaves(params)
        # never touched: biases, the embedding table, the norm move as in plain SGD (up to
        # float rounding: the two programs may fuse the update differently)
        for name, leaf in [
            ("Dense_0", "bias"),
            ("Dense_1", "bias"),
            ("embed", "embedding"),
            ("LayerNorm_0", "scale"),
            ("LayerNorm_0", "bias"),
        ]:
            np.testing.assert_allclose(
                np.asarray(params["params"][name][leaf]),
                np.asarray(ref["params"][name][leaf]),
                rtol=1e-6,
                atol=1e-7,
            )
        masks = st.masks["params"]
        assert not np.asarray(masks["Dense_0"]["bias"]).any()
        assert not np.asarray(masks["embed"]["embedding"]).any()
        recomputed = t % EVERY == 0 or t >= END - 1
        for name, w in ks.items():
            m = np.asarray(masks[name]["kernel"])
            if recomputed:  # sparsity_target(t + 1) of the weights selected
                assert m.sum() == math.floor(np_target(t + 1, FINAL, START, END) * w.size + 1e-6), (
                    t,
                    name,
                )
            if t + 1 <= START:  # before the schedule: plain SGD
                np.testing.assert_allclose(w, ref["params"][name]["kernel"], rtol=1e-6, atol=1e-7)
            if t >= END - 1:  # the end: exactly the target share is zero, and stays zero
                assert (w == 0).sum() == w.size * FINAL, (t, name)
                np.testing.assert_array_equal(w == 0, m)
            else:
                assert (w == 0).sum() < w.size * FINAL
        zero = {n: w == 0 for n, w in ks.items()}
        if prev_zero is not None and t >= END:
            for n in zero:
                assert np.all(zero[n] >= prev_zero[n])
        prev_zero = zero
    # before the end the selected weights shrink gradually (rho = ramp^2 < 1): smaller than
    # plain SGD's, not zero yet; the others move as in plain SGD
    t = END - 3
    mid = kernel_leaves(hist[t][0])["Dense_0"]
    ref = kernel_leaves(sgd_run[t][0])["Dense_0"]
    m = np.asarray(find_sparsify_state(hist[t][1]).masks["params"]["Dense_0"]["kernel"])
    assert m.any() and np.any(mid[m] != 0)
    assert np.all(mid[~m] != 0)  # only selected weights become zero before the end
    assert np.abs(mid[m]).mean() < 0.5 * np.abs(ref[m]).mean()


def test_sparsify_update_formula_against_numpy():
    params = flax_like(1)
    grads = flax_like(2)
    tx = sparsify(FINAL, START, END, every=EVERY)
    update = jax.jit(tx.update)
    w = np.asarray(params["params"]["Dense_0"]["kernel"])
    u = np.asarray(grads["params"]["Dense_0"]["kernel"])
    rng = np.random.default_rng(3)
    # masks as a recomputation leaves them: some kernel weights, nothing else
    stored = jax.tree_util.tree_map(
        lambda x, e: jnp.asarray((rng.random(x.shape) < 0.2) & e), params, eligible_mask(params)
    )
    for t in [0, 1, 3, 4, 7, END - 2, END - 1, END + 3]:
        state = SparsifyState(jnp.asarray(t, jnp.int32), stored)
        new, st = update(grads, state, params)
        assert int(st.count) == t + 1
        if t % EVERY == 0 or t >= END - 1:
            k = math.floor(np_target(t + 1, FINAL, START, END) * w.size + 1e-6)
            m = np_smallest(w, k)
        else:  # the stored masks are reused between recomputations
            m = np.asarray(stored["params"]["Dense_0"]["kernel"])
        np.testing.assert_array_equal(np.asarray(st.masks["params"]["Dense_0"]["kernel"]), m)
        rho = 1.0 if t >= END - 1 else min(max((t + 1 - START) / (END - START), 0), 1) ** 2
        shrunk = (1 - rho) * u - rho * w
        shrunk = np.where(np.abs(w + shrunk) < ZERO_FLOOR * np.abs(w).max(), -w, shrunk)
        want = np.where(m, shrunk, u)
        got = np.asarray(new["params"]["Dense_0"]["kernel"])
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)
        # the other leaves' updates pass through unchanged
        for name, leaf in [("Dense_0", "bias"), ("embed", "embedding"), ("LayerNorm_0", "scale")]:
            np.testing.assert_array_equal(
                np.asarray(new["params"][name][leaf]), np.asarray(grads["params"][name][leaf])
            )
    with pytest.raises(ValueError):
        tx.update(grads, tx.init(params))  # no params
    with pytest.raises(ValueError):
        sparsify(0.5, 0, 10, method="soft")
    with pytest.raises(ValueError):
        sparsify(0.5, 0, 10, scope="row")


def test_hard_sparsify_zeroes_selected_weights_immediately():
    final, start, end, every = 0.6, 0, 8, 2
    tx = optax.chain(optax.sgd(LR), sparsify(final, start, end, every=every, method="hard"))
    hist = run(tx, flax_like(3), 12)
    last = None
    prev = None
    for t, (params, state) in enumerate(hist):
        if t % every == 0 or t >= end - 1:
            last = t
        ks = kernel_leaves(params)
        masks = find_sparsify_state(state).masks["params"]
        for name, w in ks.items():
            k = math.floor(np_target(last + 1, final, start, end) * w.size + 1e-6)
            assert (w == 0).sum() == k, (t, name)  # the selected ones are exactly zero at once
            np.testing.assert_array_equal(w == 0, np.asarray(masks[name]["kernel"]))
            if prev is not None:
                assert np.all((w == 0) >= prev[name])  # and stay zero
        prev = {n: w == 0 for n, w in ks.items()}
    assert all(z.mean() == pytest.approx(final, abs=1e-3) for z in prev.values())


def test_global_sparsify_reaches_the_target_over_all_kernels_and_embeddings():
    tx = optax.chain(optax.sgd(LR), sparsify(0.4, 0, 6, every=2, scope="global", embeddings=True))
    params, _ = run(tx, flax_like(4), 8)[-1]
    p = params["params"]
    eligible = [p["Dense_0"]["kernel"], p["Dense_1"]["kernel"], p["embed"]["embedding"]]
    n = sum(w.size for w in eligible)
    assert sum(int(np.sum(np.asarray(w) == 0)) for w in eligible) == math.floor(0.4 * n + 1e-6)
    assert all(
        np.all(np.asarray(w) != 0) for w in (p["Dense_0"]["bias"], p["LayerNorm_0"]["scale"])
    )


@pytest.mark.parametrize("scope", ["layer", "global"])
def test_excluded_layers_stay_dense_and_the_share_still_counts_every_kernel(scope):
    """exclude='Dense_1': that kernel keeps every weight; Dense_0 gives up the rest, so that
    0.4 of both kernels' weights are zero (64x32 + 32x16 = 2560: 1024 zeros, all in Dense_0)."""
    tx = optax.chain(
        optax.sgd(LR), sparsify(0.4, 0, 6, every=2, method="hard", scope=scope, exclude="Dense_1")
    )
    params, _ = run(tx, flax_like(5), 8)[-1]
    ks = kernel_leaves(params)
    assert np.all(ks["Dense_1"] != 0)
    n = sum(w.size for w in ks.values())
    assert int(np.sum(ks["Dense_0"] == 0)) == math.floor(0.4 * n + 1e-6) == 1024
    assert eligible_share(params, 0.4, exclude="Dense_1") == pytest.approx(1024 / 2048)


def test_exclusion_errors_and_the_small_layers_pattern():
    params = flax_like()
    with pytest.raises(ValueError, match="needs more than"):
        eligible_share(params, 0.9, exclude="Dense_0")  # 2048 of 2560 excluded
    assert eligible_share(params, 0.3) == 0.3
    with pytest.raises(re.error):
        sparsify(0.5, 0, 4, exclude="(unclosed")
    tx = sparsify(0.9, 0, 4, exclude="Dense_0")
    with pytest.raises(ValueError, match="needs more than"):
        tx.init(params)
    assert sparsity_exclude_regex("small") == SMALL_LAYERS
    assert sparsity_exclude_regex("Dense_0") == "Dense_0"
    pat = re.compile(SMALL_LAYERS)
    small = [
        "params/encoder/ConvSubsampling_0/Conv_0/kernel",
        "params/encoder/layer_3/CausalConvModule_0/Conv_0/kernel",
        "params/joiner/out/kernel",
        "params/ctc_out/kernel",
    ]
    large = [
        "params/encoder/ConvSubsampling_0/Conv_1/kernel",
        "params/encoder/layer_3/CausalConvModule_0/Dense_0/kernel",
        "params/joiner/enc_proj/kernel",
        "params/joiner/out/bias",
    ]
    assert all(pat.search(n) for n in small) and not any(pat.search(n) for n in large)


def test_a_resumed_run_is_bit_identical_to_an_uninterrupted_one(penalty_run):
    tx, step_fn, hist = penalty_run
    k = 7
    params, state = hist[k - 1]
    # "checkpoint": serialized and read back into the structure of a fresh state
    saved = flax.serialization.to_bytes({"params": params, "opt": state})
    template = {"params": flax_like(9), "opt": tx.init(flax_like(9))}
    restored = flax.serialization.from_bytes(template, saved)
    assert int(find_sparsify_state(restored["opt"]).count) == k
    resumed = run(
        tx, restored["params"], STEPS - k, state=restored["opt"], first=k, step_fn=step_fn
    )
    assert len(resumed) == STEPS - k
    for (p1, s1), (p2, s2) in zip(hist[k:], resumed, strict=True):
        jax.tree_util.tree_map(np.testing.assert_array_equal, p1, p2)
        jax.tree_util.tree_map(np.testing.assert_array_equal, s1, s2)


def test_find_sparsify_state():
    params = flax_like()
    assert find_sparsify_state(optax.adamw(1e-3).init(params)) is None
    chain = optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(1e-3), sparsify(0.5, 0, 10))
    st = find_sparsify_state(chain.init(params))
    assert isinstance(st, SparsifyState) and int(st.count) == 0
    assert not any(np.asarray(m).any() for m in jax.tree_util.tree_leaves(st.masks))


# --------------------------------------------------------------------------- metrics


def test_zero_shares_and_sparsity_penalty_against_numpy():
    params = tie_params(5)  # integers: exact zeros here and there
    eligible = eligible_mask(params, embeddings=True)
    shares = zero_shares(params, eligible)
    p = params["params"]
    want = {
        "Dense_0": np.mean(p["Dense_0"]["kernel"] == 0),
        "Dense_1": np.mean(p["Dense_1"]["kernel"] == 0),
        "embed/embedding": np.mean(p["embed"]["embedding"] == 0),
    }
    arrays = [p["Dense_0"]["kernel"], p["Dense_1"]["kernel"], p["embed"]["embedding"]]
    want["all"] = sum(np.sum(a == 0) for a in arrays) / sum(a.size for a in arrays)
    assert 0 < want["all"] < 1
    assert set(shares) == set(want)
    for k, v in want.items():
        assert float(shares[k]) == pytest.approx(v), k
    assert set(zero_shares(params, eligible_mask(params))) == {"Dense_0", "Dense_1", "all"}
    assert float(zero_shares(params, jax.tree_util.tree_map(lambda _: False, params))["all"]) == 0

    rng = np.random.default_rng(6)
    masks = jax.tree_util.tree_map(lambda w: rng.random(np.shape(w)) < 0.3, params)
    num = sum(
        np.sum(np.where(m, np.asarray(w, np.float64) ** 2, 0.0))
        for w, m in zip(
            jax.tree_util.tree_leaves(params), jax.tree_util.tree_leaves(masks), strict=True
        )
    )
    cnt = sum(np.sum(m) for m in jax.tree_util.tree_leaves(masks))
    assert float(sparsity_penalty(params, masks)) == pytest.approx(0.5 * num / cnt, rel=1e-6)
    none = jax.tree_util.tree_map(lambda w: np.zeros(np.shape(w), bool), params)
    assert float(sparsity_penalty(params, none)) == 0.0
