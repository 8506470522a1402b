"""Low-bit execution of the same modules: one quantization policy reaches every matrix product.

Every module of the transducer takes a `QuantPolicy` (field `quant`, float by default) and routes
each matrix product through it: `Dense`/`DenseGeneral` get `policy.dot_general`, convolutions
`policy.conv`, the attention einsums `policy.einsum`, and the LSTM cells (`LstmCell`, which
replaces flax's `OptimizedLSTMCell` with the same parameters) its `dot_general`. That is the
single hook the AQT and qwix libraries inject; the same module code serves float training,
fake-quantized training and evaluation, and (export issue) integer execution.

Fake quantization (`fake_quant`) rounds a tensor to `bits`-bit symmetric integer levels and
back: step = max|x| / (2^(bits-1) - 1) over the axes the product contracts, so weights get one
step per output channel and activations one per row (per frame and head). Convolution inputs
get one step per utterance (a window spans frames). The gradient passes straight through (STE:
Bengio et al. 2013), so the same policy trains a model quantization-aware.

Weights that are already on their levels (`quantize_params`, the post-training quantization of
a parameter tree, or a model trained with the absolute-cosine regularizer, `train.regularizers`)
come out of the hook unchanged: rounding is idempotent, since the largest weight of a channel
sits on the largest level.

`contracting_axes(path, shape)` says which axes of a stored kernel its product contracts; it
agrees with the hook's view of every product in the model (tests/test_quant.py traces them).
Embedding tables are lookups, not products: they stay float here (how the export stores them is the export issue's choice
bits).
"""

from __future__ import annotations

import dataclasses
import functools
import re
from dataclasses import dataclass
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax.linen.recurrent import DenseParams
from jax import lax

MAX_BITS = 16

# DenseGeneral kernels whose output spans several axes (heads): they contract only axis 0.
_HEAD_PROJECTIONS = ("qkv", "query", "key", "value", "cheap_kv_up", "cheap_q_up")


SMALL_KERNELS = (
    r"(^|/)(ConvSubsampling_0/Conv_0|CausalConvModule_0/Conv_0|joiner/out|ctc_out)/kernel$"
)
"""The small layers: the kernels whose output units read few weights (the first convolution, 9
per output channel; the depthwise convolutions, 15) and the vocabulary outputs (joiner, CTC
head), 3% of the `small` model's kernel weights. Rounding them to 4 bits costs more than the
other 97% together (README, "What a lead-in costs, part by part"), so a policy can keep them at
more bits (`QuantPolicy.small_bits`) and sparsification can keep them dense
(`train.regularizers`, `sparsity_exclude=small`). The modules building these products take
`policy.small()`; tests/test_quant.py checks that the two views agree."""


def is_small(path) -> bool:
    """Whether kernel `path` (tree path or '/'-joined names) is one of `SMALL_KERNELS`."""
    name = path if isinstance(path, str) else "/".join(_path_names(path))
    return re.search(SMALL_KERNELS, name) is not None


def qmax(bits: int) -> int:
    """The largest integer level of a symmetric `bits`-bit quantizer (127 for 8 bits)."""
    return 2 ** (bits - 1) - 1


def quant_step(x: jax.Array, bits: int, axes) -> jax.Array:
    """f32 step of `x`'s levels, max|x| / qmax(bits) over `axes` (kept as size-1 axes); 1.0
    where that maximum is 0 (an all-zero channel stays zero)."""
    amax = jnp.max(jnp.abs(x), axis=tuple(axes), keepdims=True)
    return jnp.where(amax > 0, amax, 1.0) / qmax(bits)


def fake_quant(x: jax.Array, bits: int, axes) -> jax.Array:
    """`x` rounded to `bits`-bit symmetric levels (one step per slice over `axes`, see
    `quant_step`) and scaled back; gradient straight through. bits 0: `x` unchanged."""
    if not bits:
        return x
    step = lax.stop_gradient(quant_step(x, bits, axes))
    m = qmax(bits)
    q = jnp.clip(jnp.round(x / step), -m, m) * step
    return x + lax.stop_gradient(q - x)


@dataclass(frozen=True)
class QuantPolicy:
    """How matrix products run: `weight_bits` for the weight operand (0: float), `act_bits` for
    the activation operands (0: float). Frozen and hashable: a module field, a jit cache key."""

    weight_bits: int = 0
    act_bits: int = 0
    small_bits: int = 0  # the small layers' weight bits (`SMALL_KERNELS`); 0: weight_bits

    def __post_init__(self):
        for name in ("weight_bits", "act_bits", "small_bits"):
            b = getattr(self, name)
            if not isinstance(b, int) or isinstance(b, bool) or not (b == 0 or 2 <= b <= MAX_BITS):
                raise ValueError(f"{name} must be 0 (float) or in [2, {MAX_BITS}], got {b!r}")
        if self.small_bits and not self.weight_bits:
            raise ValueError("small_bits needs weight_bits (float weights have no small layers)")

    @property
    def is_float(self) -> bool:
        return not (self.weight_bits or self.act_bits)

    def small(self) -> QuantPolicy:
        """The policy of the small layers' products (`SMALL_KERNELS`: the modules that build
        them ask for it): their weights at `small_bits`, the rest as this policy."""
        if not self.small_bits:
            return self
        return dataclasses.replace(self, weight_bits=self.small_bits, small_bits=0)

    def describe(self) -> str:
        if self.is_float:
            return "float"
        w = f"w{self.weight_bits}" if self.weight_bits else "w-float"
        if self.small_bits and self.small_bits != self.weight_bits:
            w += f"s{self.small_bits}"
        a = f"a{self.act_bits}" if self.act_bits else "a-float"
        return f"{w}{a}"

    def dot_general(self, lhs, rhs, dimension_numbers, precision=None, **kw):
        """`lax.dot_general` with the activation `lhs` and the weight `rhs` fake-quantized over
        the axes each contracts (per row and per output channel)."""
        (lc, rc), _ = dimension_numbers
        lhs = fake_quant(lhs, self.act_bits, lc)
        rhs = fake_quant(rhs, self.weight_bits, rc)
        return lax.dot_general(lhs, rhs, dimension_numbers, precision=precision, **kw)

    def conv(self, lhs, rhs, window_strides, padding, *args, dimension_numbers=None, **kw):
        """`lax.conv_general_dilated` with the input fake-quantized per utterance and the kernel
        per output feature."""
        dn = lax.conv_dimension_numbers(lhs.shape, rhs.shape, dimension_numbers)
        lhs_axes = [a for a in range(lhs.ndim) if a != dn.lhs_spec[0]]
        rhs_axes = [a for a in range(rhs.ndim) if a != dn.rhs_spec[0]]
        lhs = fake_quant(lhs, self.act_bits, lhs_axes)
        rhs = fake_quant(rhs, self.weight_bits, rhs_axes)
        return lax.conv_general_dilated(
            lhs, rhs, window_strides, padding, *args, dimension_numbers=dimension_numbers, **kw
        )

    def einsum(self, spec: str, a, b):
        """`jnp.einsum` of two activations (attention scores, attention-weighted values), each
        fake-quantized over the axes it contracts."""
        ins, out = spec.replace(" ", "").split("->")
        sa, sb = ins.split(",")
        if not self.act_bits:
            return jnp.einsum(spec, a, b)
        a = fake_quant(a, self.act_bits, [i for i, ch in enumerate(sa) if ch not in out])
        b = fake_quant(b, self.act_bits, [i for i, ch in enumerate(sb) if ch not in out])
        return jnp.einsum(spec, a, b)

    def dense(self, *args, **kw) -> nn.Dense:
        """`nn.Dense` whose product goes through this policy."""
        return nn.Dense(*args, dot_general=self.dot_general, **kw)

    def dense_general(self, *args, **kw) -> nn.DenseGeneral:
        return nn.DenseGeneral(*args, dot_general=self.dot_general, **kw)

    def conv_module(self, *args, **kw) -> nn.Conv:
        return nn.Conv(*args, conv_general_dilated=self.conv, **kw)


FLOAT = QuantPolicy()


def lstm_update(zi: jax.Array, zh: jax.Array, c: jax.Array) -> tuple[jax.Array, jax.Array]:
    """The LSTM's gate arithmetic: input and recurrent products zi, zh f32[..., 4H] (gates i, f,
    g, o; the recurrent bias inside zh), cell c f32[..., H] -> (new c, new h). Shared by
    `LstmCell` and the integer runtime (`hw.runtime`), which computes the products itself."""
    parts = jnp.split(zh + zi, 4, axis=-1)  # the sums of OptimizedLSTMCell, same order
    i, f = nn.sigmoid(parts[0]), nn.sigmoid(parts[1])
    g, o = nn.tanh(parts[2]), nn.sigmoid(parts[3])
    new_c = f * c + i * g
    return new_c, o * nn.tanh(new_c)


LSTM_GATES = ("i", "f", "g", "o")


class LstmCell(nn.RNNCellBase):
    """An LSTM cell with flax `OptimizedLSTMCell`'s parameters and arithmetic (the same
    outputs, tested), whose two products (input and recurrent, gates concatenated) go through
    the quantization policy. Carry (c, h)."""

    features: int
    quant: QuantPolicy = FLOAT

    @nn.compact
    def __call__(self, carry, inputs):
        c, h = carry
        gates = LSTM_GATES
        ki = [DenseParams(self.features, use_bias=False, name=f"i{g}")(inputs)[0] for g in gates]
        hp = [
            DenseParams(
                self.features,
                use_bias=True,
                kernel_init=nn.initializers.orthogonal(),
                name=f"h{g}",
            )(h)
            for g in gates
        ]
        dims = (((inputs.ndim - 1,), (0,)), ((), ()))
        zi = self.quant.dot_general(inputs, jnp.concatenate(ki, axis=-1), dims)
        zh = self.quant.dot_general(h, jnp.concatenate([k for k, _ in hp], axis=-1), dims)
        zh = zh + jnp.reshape(
            jnp.concatenate([b for _, b in hp], axis=-1), (1,) * (h.ndim - 1) + (-1,)
        )
        new_c, new_h = lstm_update(zi, zh, c)
        return (new_c, new_h), new_h

    @nn.nowrap
    def initialize_carry(self, rng, input_shape):  # noqa: ARG002 - flax's signature
        batch = input_shape[:-1]
        z = jnp.zeros((*batch, self.features))
        return z, z

    @property
    def num_feature_axes(self) -> int:
        return 1


# --------------------------------------------------------------------------- parameter trees


def _path_names(path) -> tuple[str, ...]:
    return tuple(str(getattr(k, "key", k)) for k in path)


def is_kernel(path) -> bool:
    """Whether a parameter (tree path) is the weight operand of a matrix product: a `kernel`
    of Dense, DenseGeneral, Conv or an LSTM cell (embedding tables, biases and norm scales are
    not)."""
    return _path_names(path)[-1] == "kernel"


def contracting_axes(path, shape) -> tuple[int, ...]:
    """The axes of kernel `path` (shape `shape`) that its product contracts: axis 0 for the
    attention projections that output (heads, head width), every axis but the last otherwise
    (Dense, the attention output projection, convolutions: window and input features). The
    rule goes by module name: a new DenseGeneral with several output axes must be named like
    the projections in `_HEAD_PROJECTIONS` (tests/test_quant.py traces every product and fails
    when this disagrees with what the hook sees)."""
    names = _path_names(path)
    if len(names) >= 2 and names[-2] in _HEAD_PROJECTIONS:
        return (0,)
    return tuple(range(len(shape) - 1))


def map_kernels(fn, params):
    """`params` with its kernels replaced by fn(kernels, axes): `kernels` the tuple of kernel
    leaves in tree order, `axes` the tuple of their contracting axes; fn returns the new
    kernels, in that order. All kernels go through one call, so a jitted `fn` compiles once per
    model, not once per op and kernel shape (eager ops over 80 kernels cost seconds of
    compiling). Other leaves are left as they are."""
    leaves, treedef = jax.tree_util.tree_flatten_with_path(params)
    idx = [i for i, (path, _) in enumerate(leaves) if is_kernel(path)]
    axes = tuple(contracting_axes(leaves[i][0], np.shape(leaves[i][1])) for i in idx)
    new = fn(tuple(jnp.asarray(leaves[i][1]) for i in idx), axes)
    out = [w for _, w in leaves]
    for i, w in zip(idx, new, strict=True):
        out[i] = w
    return jax.tree_util.tree_unflatten(treedef, out)


def kernel_bits(params, bits: int, small_bits: int = 0) -> tuple[int, ...]:
    """The weight bits of every kernel of `params` (tree order): `small_bits` for the small
    layers (`SMALL_KERNELS`) when given, `bits` for the others."""
    return tuple(
        small_bits if small_bits and is_small(p) else bits
        for p, _ in jax.tree_util.tree_leaves_with_path(params)
        if is_kernel(p)
    )


def quantize_params(params, bits: int, small_bits: int = 0):
    """Post-training quantization: every kernel rounded to `bits`-bit symmetric levels (the
    small layers to `small_bits` when given: `QuantPolicy.small_bits`), one step per output
    channel (float values on the levels; zeros stay zero). Other leaves as they are. bits 0:
    `params` unchanged."""
    if not bits:
        return params
    kb = kernel_bits(params, bits, small_bits)
    return map_kernels(lambda ws, axes: _fake_quant_kernels(ws, axes, kb), params)


@functools.partial(jax.jit, static_argnums=(1, 2))
def _fake_quant_kernels(ws, axes, bits: tuple[int, ...]):
    return tuple(fake_quant(w, b, a) for w, a, b in zip(ws, axes, bits, strict=True))


@functools.partial(jax.jit, static_argnums=(2,))
def _snap_kernels(ws, levels, axes):
    out = []
    for k, (w, a) in enumerate(zip(ws, axes, strict=True)):
        amax = jnp.max(jnp.abs(w), axis=a, keepdims=True)
        scale = jnp.where(amax > 0, amax, 1.0)
        idx = jnp.argmin(jnp.abs((w / scale)[..., None] - levels[k]), axis=-1)
        out.append(levels[k][idx] * scale)
    return tuple(out)


def snap_to_levels(params, levels):
    """Non-uniform quantization: kernel k (tree order) moved to its nearest level of
    `levels[k]` (f32[K, L] sorted levels in units of the channel's max |w|, as
    `train.regularizers.fit_levels` gives) times that maximum, per output channel."""
    levels = jnp.asarray(levels)
    n_kernels = sum(is_kernel(p) for p, _ in jax.tree_util.tree_leaves_with_path(params))
    if levels.ndim != 2 or levels.shape[0] != n_kernels:
        raise ValueError(
            f"levels must be [K={n_kernels} kernels, L], one row per kernel; got {levels.shape}"
        )
    return map_kernels(lambda ws, axes: _snap_kernels(ws, levels, axes), params)


def zero_fraction(params) -> float:
    """Share of kernel weights that are exactly zero."""
    zeros = total = 0
    for path, w in jax.tree_util.tree_leaves_with_path(params):
        if is_kernel(path):
            w = np.asarray(w)
            zeros += int(np.sum(w == 0))
            total += w.size
    return zeros / max(total, 1)


def layer_name(path) -> str:
    """A kernel's module path without 'params' and 'kernel' (e.g. encoder/layer_0/Dense_0)."""
    names = [n for n in _path_names(path) if n not in ("params", "kernel")]
    return "/".join(names)


def kernel_table(params) -> list[tuple[str, Any]]:
    """[(layer name, kernel array)] in tree order."""
    return [
        (layer_name(p), w) for p, w in jax.tree_util.tree_leaves_with_path(params) if is_kernel(p)
    ]


__all__ = [
    "FLOAT",
    "LSTM_GATES",
    "LstmCell",
    "QuantPolicy",
    "SMALL_KERNELS",
    "contracting_axes",
    "fake_quant",
    "is_kernel",
    "is_small",
    "kernel_bits",
    "kernel_table",
    "lstm_update",
    "map_kernels",
    "qmax",
    "quant_step",
    "quantize_params",
    "snap_to_levels",
    "zero_fraction",
]
