"""The integer matrix product of the edge processor: int8 x int8 -> int32, requantized.

`int_matmul(x, w, mult, shift, rows=None)` is the custom primitive `edge_int_matmul`:

    acc[..., m, n] = sum_k int32(x[..., m, k]) * int32(w[..., k, n])          (exact in int32)
    out[..., m, n] = saturate_int32(floor((acc * mult[n] + 2**(shift[n]-1)) / 2**shift[n]))
                     where rows[..., m], else 0

Row activity: the optional operand `rows` bool[..., M] (x's leading dims and M) says which rows
of x the product is needed on (the frames of a branching encoder's chosen branch,
`asr.models.branching.only_rows`). The hardware computes, reads and writes only the active rows;
the inactive rows of the output are 0. Without it every row is active (the primitive then has
four operands, as before). The cost model (`hw.cost`) reads the operand to count only the active
rows' products.

`mult * 2**-shift` is the per-output-channel real scale in the fixed-point form of integer
accelerators (TFLite/gemmlowp, Arm Ethos-U): see `fixedpoint.py` for how reals are converted and
for the NumPy reference this module matches bit for bit.

The 64-bit product without int64. JAX runs without x64 here, so `requantize` computes the
exact signed 64-bit value with pairs of 32-bit limbs (hi: high word, lo: low word, both uint32):

1. |acc| as uint32 (|-2**31| = 2**31 fits) times mult (< 2**31) by schoolbook multiplication of
   16-bit halves: four partial products a_i * m_j < 2**32 each; the middle column
   (p00 >> 16) + low16(p01) + low16(p10) < 3 * 2**16 carries into the high word.
2. Two's-complement negation for negative accumulators: (~hi, ~lo) + 1, the carry into hi
   happening exactly when the new lo is 0.
3. Add the rounding constant 2**(shift-1) to lo (shift <= 32) or to hi (shift > 32); the carry out
   of lo is `lo_new < lo_old` in unsigned arithmetic. |acc * mult| < 2**62 and 2**61 keep the
   sum inside the signed 64-bit range, so nothing overflows.
4. Arithmetic right shift of the 64-bit value, which is floor division by 2**shift:
   for shift < 32, lo' = (lo >> s) | (hi << (32 - s)), hi' = hi >>a s; for shift >= 32,
   lo' = hi >>a (s - 32), hi' = hi >>a 31 (the sign). Shift amounts are clamped per branch so
   no lane ever shifts by 32 or more.
5. Saturation: the result fits int32 exactly when hi' is the sign extension of lo'; otherwise it
   is clamped to INT32_MAX (hi' >= 0) or INT32_MIN.

Zero skipping: products with a zero weight contribute nothing, and the hardware does not issue
them; `zero_weight_macs` counts them (NumPy, on concrete weights; on the active rows only when
given `rows`).

Batching: the primitive accepts arbitrary leading dims, and its batching rule binds
`edge_int_matmul` again with the vmapped axis folded into leading dims (or into M when the
weights are shared; `rows` follows x), so a jaxpr of a vmapped model still shows every integer matmul to the cost
model that interprets it. No differentiation rule: this is an inference-only datapath.

References:
  Jacob et al. 2018, "Quantization and Training of Neural Networks for Efficient
    Integer-Arithmetic-Only Inference", CVPR 2018, arXiv:1712.05877 (int8 x int8 -> int32
    accumulation, requantization by a fixed-point multiplier and a rounding shift).
  gemmlowp, doc/quantization.md, doc/output.md and fixedpoint/fixedpoint.h.
  JAX documentation, "JAX Primitives" (abstract evaluation, lowering with `mlir.lower_fun`,
    batching rules).
"""

from __future__ import annotations

import math

import jax
import jax.extend.core
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.interpreters import batching, mlir
from jax.typing import ArrayLike

try:
    from jax.core import ShapedArray
except ImportError:  # no longer re-exported by the public jax.core
    from jax._src.core import ShapedArray

# K * 127 * 127 < 2**31: the int32 accumulator cannot overflow for symmetric int8 operands.
MAX_K = 133000

_U16 = np.uint32(0xFFFF)
_INT32_MIN = np.int32(-(2**31))
_INT32_MAX = np.int32(2**31 - 1)


def _u32(a: jax.Array) -> jax.Array:
    return lax.bitcast_convert_type(a, jnp.uint32)


def _i32(a: jax.Array) -> jax.Array:
    return lax.bitcast_convert_type(a, jnp.int32)


@jax.jit
def requantize(acc: ArrayLike, mult: ArrayLike, shift: ArrayLike) -> jax.Array:
    """Exact `saturate_int32(floor((acc * mult + 2**(shift-1)) / 2**shift))` in 32-bit limbs.

    Args:
      acc: int32[...] accumulators (full int32 range).
      mult: int32[...] multipliers in [0, 2**31), broadcast against acc.
      shift: int32[...] right shifts in [1, 62], broadcast against acc. Values outside the
        stated ranges give unspecified (but deterministic) results; `quantize_multiplier` only
        produces valid ones.

    Returns:
      int32[broadcast shape], bit-identical to `fixedpoint.requantize_reference`.
    """
    acc = jnp.asarray(acc, jnp.int32)
    mult = jnp.asarray(mult, jnp.int32)
    shift = jnp.asarray(shift, jnp.int32)
    acc, mult, shift = jnp.broadcast_arrays(acc, mult, shift)
    one = jnp.uint32(1)
    # 1. |acc| * mult as an unsigned 64-bit (hi, lo).
    acc_u = _u32(acc)
    neg = acc < 0
    a = jnp.where(neg, jnp.uint32(0) - acc_u, acc_u)  # |acc| <= 2**31
    m = _u32(mult)
    a0, a1 = a & _U16, a >> 16
    m0, m1 = m & _U16, m >> 16
    p00, p01, p10, p11 = a0 * m0, a0 * m1, a1 * m0, a1 * m1  # each < 2**32
    mid = (p00 >> 16) + (p01 & _U16) + (p10 & _U16)  # < 3 * 2**16
    lo = (p00 & _U16) | (mid << 16)
    hi = p11 + (p01 >> 16) + (p10 >> 16) + (mid >> 16)  # < 2**30: |acc * mult| < 2**62
    # 2. Two's-complement negation of the 64-bit value for negative accumulators.
    lo_n = ~lo + one
    hi_n = ~hi + jnp.where(lo_n == 0, one, jnp.uint32(0))
    lo = jnp.where(neg, lo_n, lo)
    hi = jnp.where(neg, hi_n, hi)
    # 3. + 2**(shift - 1), into lo or hi.
    r = (shift - 1).astype(jnp.uint32)  # in [0, 61]
    add_lo = jnp.where(r < 32, one << jnp.minimum(r, 31), jnp.uint32(0))
    add_hi = jnp.where(r >= 32, one << (jnp.maximum(r, 32) - 32), jnp.uint32(0))
    lo_r = lo + add_lo
    hi = hi + add_hi + jnp.where(lo_r < lo, one, jnp.uint32(0))
    lo = lo_r
    # 4. Arithmetic shift right by s in [1, 62] = floor division by 2**s.
    s = shift.astype(jnp.uint32)
    hi_s = _i32(hi)
    s_small = jnp.clip(s, 1, 31)  # branch s < 32
    q_lo_small = (lo >> s_small) | (hi << (32 - s_small))
    q_hi_small = hi_s >> _i32(s_small)
    s_big = _i32(jnp.clip(s, 32, 63) - 32)  # branch s >= 32, in [0, 31]
    q_lo_big = _u32(hi_s >> s_big)
    q_hi_big = hi_s >> 31
    small = s < 32
    q_lo = _i32(jnp.where(small, q_lo_small, q_lo_big))
    q_hi = jnp.where(small, q_hi_small, q_hi_big)
    # 5. Saturate the 64-bit quotient to int32.
    fits = q_hi == (q_lo >> 31)
    return jnp.where(fits, q_lo, jnp.where(q_hi >= 0, _INT32_MAX, _INT32_MIN))


def _int_matmul_impl(
    x: jax.Array, w: jax.Array, mult: jax.Array, shift: jax.Array, rows: jax.Array | None = None
) -> jax.Array:
    """The jnp implementation: the primitive's eager impl and (via `mlir.lower_fun`) lowering."""
    acc = jnp.matmul(x, w, preferred_element_type=jnp.int32)  # -> int32[..., M, N]
    out = requantize(acc, mult[..., None, :], shift[..., None, :])
    if rows is None:
        return out
    return jnp.where(rows[..., None], out, jnp.int32(0))


_int_matmul_jit = jax.jit(_int_matmul_impl)


def _int_matmul_abstract_eval(x, w, mult, shift, *rows) -> ShapedArray:
    """Shape/dtype rule: int8[..., M, K] x int8[(...,) K, N] (rows bool[..., M]) ->
    int32[..., M, N]."""
    for name, a, dt in (("x", x, np.int8), ("w", w, np.int8), ("mult", mult, np.int32)):
        if a.dtype != dt:
            raise ValueError(f"int_matmul: {name} must be {np.dtype(dt)}, got {a.dtype}")
    if shift.dtype != np.int32:
        raise ValueError(f"int_matmul: shift must be int32, got {shift.dtype}")
    if x.ndim < 2 or w.ndim < 2:
        raise ValueError(
            f"int_matmul: x must be [..., M, K] and w [..., K, N], got x{x.shape} w{w.shape}"
        )
    lead = tuple(x.shape[:-2])
    w_lead = tuple(w.shape[:-2])
    if w_lead and w_lead != lead:
        raise ValueError(
            "int_matmul: w's leading dims must be absent or equal to x's, "
            f"got x{tuple(x.shape)} w{tuple(w.shape)}"
        )
    k, n = w.shape[-2:]
    if x.shape[-1] != k:
        raise ValueError(f"int_matmul: x has K={x.shape[-1]} but w has K={k}")
    if k > MAX_K:
        raise ValueError(f"int_matmul: K={k} > {MAX_K} could overflow the int32 accumulator")
    want = (*w_lead, n)
    for name, a in (("mult", mult), ("shift", shift)):
        if tuple(a.shape) != want:
            raise ValueError(f"int_matmul: {name} must have shape {want}, got {tuple(a.shape)}")
    if len(rows) > 1:
        raise ValueError(f"int_matmul: at most one rows operand, got {len(rows)}")
    for r in rows:
        if r.dtype != np.bool_ or tuple(r.shape) != tuple(x.shape[:-1]):
            raise ValueError(
                f"int_matmul: rows must be bool{list(x.shape[:-1])} (x's leading dims and M), "
                f"got {r.dtype}{list(r.shape)}"
            )
    return ShapedArray((*lead, x.shape[-2], n), jnp.int32)


def _int_matmul_eager(*args):
    _int_matmul_abstract_eval(*args)  # same errors eagerly as under jit
    return _int_matmul_jit(*args)


def _to_front(a: jax.Array, dim: int | None, size: int) -> jax.Array:
    """Move the vmapped axis to 0, or broadcast an unbatched operand to `size` there."""
    if dim is None:
        return jnp.broadcast_to(a, (size, *a.shape))
    return jnp.moveaxis(a, dim, 0)


def _int_matmul_batch(args, dims):
    """Batching rule: bind `edge_int_matmul` again with the vmapped axis in the leading dims
    (the rows operand, if any, moved like x)."""
    x, w, mult, shift, *rows = args
    bx, bw, bm, bs, *brows = dims
    size = next(a.shape[d] for a, d in zip(args, dims, strict=True) if d is not None)
    x = _to_front(x, bx, size)  # -> [B, ..., M, K]
    rows = [_to_front(r, d, size) for r, d in zip(rows, brows, strict=True)]  # -> [B, ..., M]
    if bw is None and bm is None and bs is None:  # shared weights
        if w.ndim == 2:
            return int_matmul_p.bind(x, w, mult, shift, *rows), 0
        # w [..., K, N] matches x's per-example leading dims: fold B into M, never copy w.
        x = jnp.moveaxis(x, 0, -3)  # -> [..., B, M, K]
        *lead, b, m, k = x.shape
        rows = [jnp.moveaxis(r, 0, -2).reshape(*lead, b * m) for r in rows]
        out = int_matmul_p.bind(x.reshape(*lead, b * m, k), w, mult, shift, *rows)
        return out.reshape(*lead, b, m, w.shape[-1]), len(lead)
    w, mult, shift = (_to_front(a, d, size) for a, d in ((w, bw), (mult, bm), (shift, bs)))
    if w.ndim == 3:  # per-example weights are 2-D: x's other leading dims fold into M
        lead, (m, k) = x.shape[1:-2], x.shape[-2:]
        rows = [r.reshape(size, math.prod(lead) * m) for r in rows]
        out = int_matmul_p.bind(x.reshape(size, math.prod(lead) * m, k), w, mult, shift, *rows)
        return out.reshape(size, *lead, m, w.shape[-1]), 0
    return int_matmul_p.bind(x, w, mult, shift, *rows), 0


int_matmul_p = jax.extend.core.Primitive("edge_int_matmul")
int_matmul_p.def_impl(_int_matmul_eager)
int_matmul_p.def_abstract_eval(_int_matmul_abstract_eval)
mlir.register_lowering(int_matmul_p, mlir.lower_fun(_int_matmul_impl, multiple_results=False))
batching.primitive_batchers[int_matmul_p] = _int_matmul_batch


def int_matmul(
    x: ArrayLike, w: ArrayLike, mult: ArrayLike, shift: ArrayLike, rows: ArrayLike | None = None
) -> jax.Array:
    """Integer matmul with per-output-channel requantization (primitive `edge_int_matmul`).

    Args:
      x: int8[..., M, K] activations.
      w: int8[K, N] weights shared over x's leading dims, or int8[..., K, N] with leading dims
        equal to x's. K <= 133000 so that K * 127 * 127 fits the int32 accumulator.
      mult: int32[N] (or int32[..., N], leading dims like w): multipliers in [0, 2**31).
      shift: int32, same shape as mult: right shifts in [1, 62]. mult * 2**-shift is the real
        scale of output channel n (`fixedpoint.quantize_multiplier`).
      rows: optional [..., M] (x's leading dims and M), nonzero = the row is needed: only those
        rows are computed (converted to bool). None: every row.

    Returns:
      int32[..., M, N]: saturate_int32(round_half_up(acc * mult * 2**-shift)) with
      acc = x @ w accumulated exactly in int32; 0 on inactive rows.

    Raises:
      ValueError: on wrong dtypes or ranks, mismatched K or leading dims, a rows operand not
        shaped like x's leading dims and M, K > 133000.
    """
    ops = [jnp.asarray(x), jnp.asarray(w), jnp.asarray(mult), jnp.asarray(shift)]
    if rows is not None:
        rows = jnp.asarray(rows)
        ops.append(rows if rows.dtype == jnp.bool_ else rows != 0)
    return int_matmul_p.bind(*ops)


def zero_weight_macs(x_shape: tuple[int, ...], w: ArrayLike, rows: ArrayLike | None = None) -> int:
    """Multiply-accumulates that `int_matmul(x, w, ..., rows)` skips because the weight is zero.

    Args:
      x_shape: the shape of x, (..., M, K).
      w: concrete int8[K, N] or int8[..., K, N] weights (leading dims equal to x's).
      rows: optional concrete [..., M] row activity (nonzero = active); None: every row.

    Returns:
      The sum over weight matrices of (active rows of x that the matrix multiplies) * (its
      number of zero weights): each zero w[k, n] saves one MAC for every active row of x it
      would have multiplied.
    """
    w = np.asarray(w)
    x_shape = tuple(int(d) for d in x_shape)
    if len(x_shape) < 2 or w.ndim < 2 or x_shape[-1] != w.shape[-2]:
        raise ValueError(
            f"zero_weight_macs: want x [..., M, K] and w [..., K, N], got x{x_shape} w{w.shape}"
        )
    if w.ndim > 2 and tuple(w.shape[:-2]) != x_shape[:-2]:
        raise ValueError(f"zero_weight_macs: w's leading dims {w.shape[:-2]} != x's {x_shape[:-2]}")
    active = np.ones(x_shape[:-1], bool) if rows is None else np.asarray(rows) != 0
    if active.shape != x_shape[:-1]:
        raise ValueError(f"zero_weight_macs: rows {active.shape} != x's leading dims and M")
    if w.ndim == 2:
        return int(np.count_nonzero(active)) * int(np.count_nonzero(w == 0))
    per_matrix = np.count_nonzero(active, axis=-1).astype(np.int64)  # -> [...]
    return int(np.sum(per_matrix * np.count_nonzero(w == 0, axis=(-2, -1))))
