"""Compression-aware training: a quantization regularizer and gradual sparsification.

Both are pure functions of the parameter tree and the step, configured by the recipe
(`TrainConfig.quant_*`, `sparsity_*`) and applied inside the jitted train step:

* **Absolute-cosine regularizer** (Nguyen, Alexandridis & Mouchtaris, Interspeech 2020):
  R(w) = mean over kernel weights of 1 - |cos(pi w / step)|, step = max|w| / (2^(b-1) - 1) per
  output channel (`asr.models.quant.quant_step`, no gradient through it). R is zero exactly when
  every weight sits on a level of the b-bit quantizer, so weights trained with it cluster on the
  levels and rounding them (`asr.models.quant.quantize_params`) costs almost nothing. Added to
  the loss as `quant_weight * ramp(step) * R`, the ramp linear from `quant_start` to `quant_end`
  (shares of the run).
* **Multi-regional variant** (`quant_method=mr-acos`; after Zhen et al., Interspeech 2022):
  non-uniform levels per kernel, in units of the channel's max |w|: -1, 0 and 1 fixed, the other
  2^b - 4 fitted to the starting weights by 1-D k-means (`fit_levels`, on the host when the run
  starts; kept in the train state's extras and in checkpoints). Between two neighbouring levels
  the penalty is 1 - |cos(pi t)|, t the position between them in [0, 1].
* **Gradual sparsification** (`sparsify`, an optax transform after AdamW): the share of
  zeros follows Zhu & Gupta's (2017) cubic schedule s(t) = s_f (1 - (1 - p)^3), p the progress
  from `sparsity_start` to `sparsity_end`; every `sparsity_every` steps the s(t) smallest-
  magnitude weights (per layer or over all layers) are selected, and their update becomes
  (1 - rho) u - rho w: a decoupled penalty that shrinks them toward zero with strength rho =
  p^2, reaching 1 at the end, when exactly the target share is zero (and stays zero); on the
  way, a selected weight that falls below half an 8-bit step of its layer's largest magnitude
  (`ZERO_FLOOR`) is set to exactly zero, so zeros grow over the run as the schedule does. With
  `sparsity_method=hard`, rho is 1 from the start: gradual magnitude pruning with hard masks,
  the baseline. Embeddings, biases and norm scales are never selected unless
  `sparsity_embeddings` (embedding tables) is set.

The sparsifier's state (its step and masks) lives in the optimizer state; the levels of the
multi-regional regularizer in `TrainState.extras`; both are checkpointed, so a resumed run
continues the same schedule.

Metrics per step (`compression_metrics`): `quant_reg` (R), `quant_near` (share of weights within
a tenth of a step of a level), `sparsity_target`, `zeros` (share of exact zeros among the
eligible weights), `sparsity_pen` (mean squared magnitude still to be removed) and, per layer,
`zeros/<layer>`.
"""

from __future__ import annotations

import re
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from asr.models.quant import (
    SMALL_KERNELS,
    _path_names,
    contracting_axes,
    is_kernel,
    kernel_bits,
    layer_name,
    qmax,
    quant_step,
)

QUANT_METHODS = ("none", "acos", "mr-acos", "ste")
SPARSITY_METHODS = ("penalty", "hard")
SPARSITY_SCOPES = ("layer", "global")
SMALL_LAYERS = SMALL_KERNELS
"""`sparsity_exclude=small`: `asr.models.quant.SMALL_KERNELS`, the kernels whose output units
read few weights (the first convolution, 9 per output channel; the depthwise convolutions, 15)
and the vocabulary outputs (joiner, CTC head): 3% of the `small` model's kernel weights. Pruned
to 50% at once and rounded to 4 bits, the shipped model's synthesized-set WER was 9.4% with half
of every kernel zero and 6.0% with the zeros chosen globally and these kept dense (README,
"Compression-aware training")."""
NEAR = 0.1  # a weight within this share of a step of a level counts as on it
# a weight being sparsified is set to exactly zero once its magnitude is below this share of its
# layer's largest: half an 8-bit step, so it would round to zero at any bit width used here
ZERO_FLOOR = 0.5 / 127


def ramp(step, start: int, end: int) -> jax.Array:
    """f32 in [0, 1]: 0 until `start`, linear to 1 at `end`, 1 after (a step at `start` when
    end <= start)."""
    step = jnp.asarray(step, jnp.float32)
    if end <= start:
        return (step >= start).astype(jnp.float32)
    return jnp.clip((step - start) / (end - start), 0.0, 1.0)


# --------------------------------------------------------------------------- quantization


def _kernels(params):
    """[(path, kernel)] in tree order."""
    return [(p, w) for p, w in jax.tree_util.tree_leaves_with_path(params) if is_kernel(p)]


def acos_terms(w: jax.Array, bits: int, axes) -> tuple[jax.Array, jax.Array]:
    """(sum of 1 - |cos(pi w / step)|, count of weights within NEAR of a level) of one kernel."""
    step = jax.lax.stop_gradient(quant_step(w, bits, axes))
    x = w / step
    pen = 1.0 - jnp.abs(jnp.cos(jnp.pi * x))
    near = jnp.abs(x - jnp.round(x)) <= NEAR
    return jnp.sum(pen), jnp.sum(near)


def _mean_over_kernels(params, terms) -> tuple[jax.Array, jax.Array]:
    """(sum of penalties, count near a level) from terms(k, kernel, axes) over every kernel,
    each divided by the number of kernel weights."""
    pens, nears, n = [], [], 0
    for k, (path, w) in enumerate(_kernels(params)):
        p, c = terms(k, w, contracting_axes(path, w.shape))
        pens.append(p)
        nears.append(c)
        n += w.size
    n = max(n, 1)
    return sum(pens) / n, sum(nears) / n


def acos_penalty(params, bits: int, small_bits: int = 0) -> tuple[jax.Array, jax.Array]:
    """(R, share of weights near a level) over every kernel of `params` (module docstring);
    the small layers' levels at `small_bits` when given (`asr.models.quant.kernel_bits`)."""
    kb = kernel_bits(params, bits, small_bits)
    return _mean_over_kernels(params, lambda k, w, axes: acos_terms(w, kb[k], axes))


def _normalized(w: jax.Array, axes) -> jax.Array:
    amax = jax.lax.stop_gradient(jnp.max(jnp.abs(w), axis=tuple(axes), keepdims=True))
    return w / jnp.where(amax > 0, amax, 1.0)


def mr_acos_terms(w: jax.Array, levels: jax.Array, axes) -> tuple[jax.Array, jax.Array]:
    """(penalty sum, count near a level) of one kernel against sorted `levels` f32[L] in units
    of the channel's max |w|."""
    u = _normalized(w, axes)
    j = jnp.clip(jnp.searchsorted(levels, u, side="right") - 1, 0, levels.shape[0] - 2)
    lo, hi = levels[j], levels[j + 1]
    t = jnp.clip((u - lo) / jnp.maximum(hi - lo, 1e-12), 0.0, 1.0)
    pen = 1.0 - jnp.abs(jnp.cos(jnp.pi * t))
    near = jnp.minimum(t, 1.0 - t) <= NEAR
    return jnp.sum(pen), jnp.sum(near)


def mr_acos_penalty(params, levels: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(R, share near a level) with per-kernel non-uniform `levels` f32[K, L] (kernels in tree
    order, `fit_levels`)."""
    return _mean_over_kernels(params, lambda k, w, axes: mr_acos_terms(w, levels[k], axes))


def fit_levels(params, bits: int, iters: int = 40, sample: int = 200_000, seed: int = 0):
    """f32[K, 2^bits - 1] sorted non-uniform levels per kernel (tree order), in units of the
    channel's max |w|: -1, 0, 1 fixed, the rest fitted by 1-D k-means (Lloyd), started from the
    uniform levels. Host-side NumPy; at most `sample` weights per kernel."""
    n_levels = 2 * qmax(bits) + 1
    rng = np.random.default_rng(seed)
    out = []
    for path, w in _kernels(params):
        w = np.asarray(w, np.float64)
        axes = contracting_axes(path, w.shape)
        amax = np.max(np.abs(w), axis=axes, keepdims=True)
        u = (w / np.where(amax > 0, amax, 1.0)).ravel()
        if u.size > sample:
            u = rng.choice(u, sample, replace=False)
        c = np.linspace(-1.0, 1.0, n_levels)
        fixed = np.isclose(c, -1) | np.isclose(c, 0) | np.isclose(c, 1)
        for _ in range(iters):
            idx = np.argmin(np.abs(u[:, None] - c[None]), axis=1)
            sums = np.bincount(idx, weights=u, minlength=n_levels)
            counts = np.bincount(idx, minlength=n_levels)
            new = np.where(counts > 0, sums / np.maximum(counts, 1), c)
            c = np.sort(np.where(fixed, c, new))
            fixed = np.isclose(c, -1) | np.isclose(c, 0) | np.isclose(c, 1)
        out.append(c)
    return np.asarray(out, np.float32)


# --------------------------------------------------------------------------- sparsity


def sparsity_target(step, final: float, start: int, end: int) -> jax.Array:
    """Share of zeros at `step`: Zhu & Gupta's cubic s_f (1 - (1 - p)^3), p = ramp(step)."""
    p = ramp(step, start, end)
    return final * (1.0 - (1.0 - p) ** 3)


def eligible_mask(params, embeddings: bool = False, exclude: str = ""):
    """Tree of bools: the leaves gradual sparsification may zero: kernels (and embedding
    tables with `embeddings`), except layers whose name matches the regex `exclude`."""
    pat = re.compile(exclude) if exclude else None

    def one(path, _):
        names = _path_names(path)
        ok = is_kernel(path) or (embeddings and names[-1] == "embedding")
        if ok and pat is not None and pat.search("/".join(names)):
            ok = False
        return ok

    return jax.tree_util.tree_map_with_path(one, params)


# the parameters of a branching encoder that are not its cheap branch or its arbiter
FROZEN_EXPENSIVE = r"^(?!.*(?:/cheap_|^encoder/arbiter/)).*$"


def freeze_mask(params, freeze: str):
    """Tree of bools: the parameters a recipe's `freeze` leaves as they are (its regex searched
    in each '/'-joined path; 'expensive': `FROZEN_EXPENSIVE`; '': none)."""
    regex = FROZEN_EXPENSIVE if freeze == "expensive" else freeze
    pat = re.compile(regex) if regex else None
    return jax.tree_util.tree_map_with_path(
        lambda path, _: bool(pat and pat.search("/".join(_path_names(path)))), params
    )


def sparsity_exclude_regex(value: str) -> str:
    """The regex a recipe's `sparsity_exclude` stands for ('small': `SMALL_LAYERS`)."""
    return SMALL_LAYERS if value == "small" else value


def _eligible_counts(params, embeddings: bool, exclude: str) -> tuple[int, int]:
    """(sparsifiable weights, those of them `exclude` leaves)."""

    def size(mask):
        leaves = zip(
            jax.tree_util.tree_leaves(params), jax.tree_util.tree_leaves(mask), strict=True
        )
        return sum(int(np.size(w)) for w, e in leaves if e)

    return size(eligible_mask(params, embeddings)), size(eligible_mask(params, embeddings, exclude))


def eligible_share(params, share: float, embeddings: bool = False, exclude: str = "") -> float:
    """The share of the eligible weights (those `exclude` leaves) to zero so that `share` of
    all sparsifiable weights (kernels, with `embeddings` the tables) is zero. Raises
    ValueError when the eligible ones are too few for that."""
    n_all, n_el = _eligible_counts(params, embeddings, exclude)
    if n_el == n_all:
        return share
    if n_el == 0 or share * n_all > n_el:
        raise ValueError(
            f"sparsity {share:g} of {n_all} weights needs more than the {n_el} weights "
            f"left after excluding {exclude!r}"
        )
    return share * n_all / n_el


def _smallest(mags: jax.Array, k) -> jax.Array:
    """bool, shape of `mags`: exactly the `k` smallest entries (ties broken by position)."""
    flat = mags.ravel()
    order = jnp.argsort(flat, stable=True)
    ranks = jnp.zeros(flat.shape, jnp.int32).at[order].set(jnp.arange(flat.size, dtype=jnp.int32))
    return (ranks < k).reshape(mags.shape)


def prune_masks(params, eligible, share, scope: str = "layer"):
    """Tree of bool masks (True = to be zero) over `params`: per eligible leaf (scope 'layer')
    or over all of them together ('global'), exactly floor(share * n) smallest-magnitude
    weights; False for other leaves. `share` may be traced."""
    leaves, treedef = jax.tree_util.tree_flatten(params)
    elig = treedef.flatten_up_to(eligible)
    share = jnp.asarray(share, jnp.float32)
    masks = [jnp.zeros(np.shape(w), bool) for w in leaves]
    idx = [i for i, e in enumerate(elig) if e]
    if scope == "layer":
        for i in idx:
            w = leaves[i]
            k = jnp.floor(share * w.size + 1e-6).astype(jnp.int32)
            masks[i] = _smallest(jnp.abs(w), k)
    elif scope == "global":
        if idx:
            flat = jnp.concatenate([jnp.abs(leaves[i]).ravel() for i in idx])
            k = jnp.floor(share * flat.size + 1e-6).astype(jnp.int32)
            sel = _smallest(flat, k)
            off = 0
            for i in idx:
                n = leaves[i].size
                masks[i] = sel[off : off + n].reshape(np.shape(leaves[i]))
                off += n
    else:
        raise ValueError(f"sparsity scope must be one of {SPARSITY_SCOPES}, got {scope!r}")
    return jax.tree_util.tree_unflatten(treedef, masks)


class SparsifyState(NamedTuple):
    count: jax.Array  # int32[] updates made
    masks: object  # tree of bool, like params: True = being driven to zero


def sparsify(
    final: float,
    start: int,
    end: int,
    every: int = 10,
    method: str = "penalty",
    scope: str = "layer",
    embeddings: bool = False,
    exclude: str = "",
) -> optax.GradientTransformation:
    """Gradual sparsification as an optax transform (module docstring): chain it after the
    optimizer. At update t (0-based) the masks select sparsity_target(t + 1) of the weights
    (recomputed when t % every == 0 and at every update from end - 1 on), and selected weights
    get the update (1 - rho) u - rho w, rho = 1 for `method` 'hard' and for t >= end - 1, else
    ramp(t + 1)^2; one that this leaves below ZERO_FLOOR times its leaf's largest magnitude
    gets -w instead (exactly zero). Layers matching the regex `exclude` stay dense, and the
    share counts every kernel all the same: the other layers give up proportionally more."""
    if method not in SPARSITY_METHODS:
        raise ValueError(f"sparsity method must be one of {SPARSITY_METHODS}, got {method!r}")
    if scope not in SPARSITY_SCOPES:
        raise ValueError(f"sparsity scope must be one of {SPARSITY_SCOPES}, got {scope!r}")

    if exclude:
        re.compile(exclude)  # a bad pattern fails here, not inside the jitted step

    def init(params):
        eligible_share(params, final, embeddings, exclude)  # enough weights left to zero?
        masks = jax.tree_util.tree_map(lambda w: jnp.zeros(np.shape(w), bool), params)
        return SparsifyState(jnp.zeros((), jnp.int32), masks)

    def update(updates, state, params=None):
        if params is None:
            raise ValueError("sparsify needs the parameters (optax.apply_updates order)")
        t = state.count
        eligible = eligible_mask(params, embeddings, exclude)
        n_all, n_el = _eligible_counts(params, embeddings, exclude)  # static: from shapes
        share = sparsity_target(t + 1, final, start, end) * (n_all / max(n_el, 1))
        recompute = (t % every == 0) | (t >= end - 1)
        masks = jax.lax.cond(
            recompute,
            lambda: prune_masks(params, eligible, share, scope),
            lambda: state.masks,
        )
        if method == "hard":
            rho = jnp.float32(1.0)
        else:
            rho = jnp.where(t >= end - 1, 1.0, ramp(t + 1, start, end) ** 2)

        def one(u, w, m):
            shrunk = (1.0 - rho) * u - rho * w
            # a selected weight shrunk below ZERO_FLOOR of its layer's largest becomes exactly 0
            floor = ZERO_FLOOR * jnp.max(jnp.abs(w))
            shrunk = jnp.where(jnp.abs(w + shrunk) < floor, -w, shrunk)
            return jnp.where(m, shrunk, u).astype(u.dtype)

        new = jax.tree_util.tree_map(one, updates, params, masks)
        return new, SparsifyState(t + 1, masks)

    return optax.GradientTransformation(init, update)


def zero_shares(params, eligible) -> dict[str, jax.Array]:
    """{layer name: share of exact zeros} over the eligible leaves, and 'all'."""
    out, zeros, total = {}, 0, 0
    for (path, w), e in zip(
        jax.tree_util.tree_leaves_with_path(params),
        jax.tree_util.tree_leaves(eligible),
        strict=True,
    ):
        if not e:
            continue
        z = jnp.sum(w == 0)
        out[layer_name(path)] = z / w.size
        zeros, total = zeros + z, total + w.size
    out["all"] = zeros / max(total, 1)
    return out


def sparsity_penalty(params, masks) -> jax.Array:
    """Mean over the selected weights of w^2 / 2: what the sparsifier still has to remove."""
    num = sum(
        jnp.sum(jnp.where(m, w * w, 0.0))
        for w, m in zip(
            jax.tree_util.tree_leaves(params), jax.tree_util.tree_leaves(masks), strict=True
        )
    )
    cnt = sum(jnp.sum(m) for m in jax.tree_util.tree_leaves(masks))
    return 0.5 * num / jnp.maximum(cnt, 1)


def find_sparsify_state(opt_state):
    """The `SparsifyState` inside an optax chain state, or None."""
    for s in jax.tree_util.tree_leaves(opt_state, is_leaf=lambda x: isinstance(x, SparsifyState)):
        if isinstance(s, SparsifyState):
            return s
    return None


__all__ = [
    "FROZEN_EXPENSIVE",
    "QUANT_METHODS",
    "SPARSITY_METHODS",
    "SMALL_LAYERS",
    "SPARSITY_SCOPES",
    "SparsifyState",
    "acos_penalty",
    "eligible_mask",
    "find_sparsify_state",
    "fit_levels",
    "freeze_mask",
    "mr_acos_penalty",
    "prune_masks",
    "ramp",
    "sparsify",
    "eligible_share",
    "sparsity_exclude_regex",
    "sparsity_penalty",
    "sparsity_target",
    "zero_shares",
]
