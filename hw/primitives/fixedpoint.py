"""Fixed-point multipliers of the integer datapath, and the NumPy references of requantization.

An integer-only accelerator cannot multiply by a real scale such as `s_x * s_w / s_y`; it stores
every real multiplier `r >= 0` as a 31-bit integer `mult` and a right shift `shift` with

    r ~= mult * 2**-shift,    mult in [2**30, 2**31) (normalized), shift in [1, 62],

and applies it to an int32 accumulator with one exact 64-bit product, a rounding constant and an
arithmetic shift (Jacob et al. 2018, section 2.2; gemmlowp's "fixed-point multiplier"):

    out = saturate_int32(floor((acc * mult + 2**(shift - 1)) / 2**shift))

i.e. the exact product `acc * r` rounded half up (ties go towards +infinity, also for negative
accumulators) and clamped to [-2**31, 2**31 - 1]. Because |acc| <= 2**31 and mult < 2**31, the
product and the rounding constant fit a signed 64-bit integer, so the NumPy reference here is
exact in int64 (and falls back to Python integers for anything larger).

Owns:
- `quantize_multiplier`: real multipliers -> (mult, shift), relative error < 2**-30.
- `dequantize_multiplier`: (mult, shift) -> float64.
- `requantize_reference`: the rounding rule above in exact integer NumPy.
- `int_matmul_reference`: the NumPy reference of `hw.primitives.int_matmul` (int8 x int8 ->
  int32 accumulate, wrapping modulo 2**32 like the hardware accumulator, then requantize; 0 on
  the rows an optional row-activity operand marks inactive).

References:
  Jacob et al. 2018, "Quantization and Training of Neural Networks for Efficient
    Integer-Arithmetic-Only Inference", CVPR 2018, arXiv:1712.05877 (section 2.2: the
    normalized multiplier M0 in [0.5, 1) times 2**-n, applied by a fixed-point multiply).
  gemmlowp, doc/quantization.md and fixedpoint/fixedpoint.h (SaturatingRoundingDoublingHighMul,
    RoundingDivideByPOT); TFLite's QuantizeMultiplier in kernels/internal/quantization_util.cc.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike

MAX_SHIFT = 62  # the 64-bit product leaves room for shifts up to 62 (rounding constant 2**61)
INT32_MIN = -(2**31)
INT32_MAX = 2**31 - 1


def quantize_multiplier(
    real: ArrayLike, max_shift: int = MAX_SHIFT
) -> tuple[np.ndarray, np.ndarray]:
    """Represent real multipliers as `mult * 2**-shift` with a normalized 31-bit `mult`.

    Args:
      real: float[...] >= 0, finite.
      max_shift: the largest shift allowed, in [1, 62].

    Returns:
      (mult, shift): int32[...] each; mult in [2**30, 2**31) and shift in [1, max_shift], with
      |mult * 2**-shift - real| < 2**-30 * real. A zero multiplier gives mult 0, shift 1.

    Raises:
      ValueError: on negative or non-finite reals, or reals outside what the shift range can
        represent (real >= 2**30 needs shift < 1; real < 2**(-max_shift + 30) needs a larger
        shift).
    """
    if isinstance(max_shift, bool) or not isinstance(max_shift, int | np.integer):
        raise ValueError(f"max_shift must be an int in [1, {MAX_SHIFT}], got {max_shift!r}")
    if not 1 <= max_shift <= MAX_SHIFT:
        raise ValueError(f"max_shift must be in [1, {MAX_SHIFT}], got {max_shift}")
    r = np.asarray(real, dtype=np.float64)
    if not np.all(np.isfinite(r)):
        raise ValueError(f"real multipliers must be finite, got {r[~np.isfinite(r)][:4]}")
    if np.any(r < 0):
        raise ValueError(f"real multipliers must be >= 0, got {r[r < 0][:4]}")
    frac, exp = np.frexp(r)  # r = frac * 2**exp, frac in [0.5, 1) (0 for r == 0)
    mult = np.rint(np.ldexp(frac, 31)).astype(np.int64)  # in [2**30, 2**31]
    carry = mult == 2**31  # frac rounded up to 1.0: renormalize
    mult = np.where(carry, 2**30, mult)
    exp = exp.astype(np.int64) + carry
    shift = 31 - exp  # r ~= mult * 2**(exp - 31)
    zero = r == 0
    bad_big = ~zero & (shift < 1)
    if np.any(bad_big):
        raise ValueError(
            f"real multipliers must be < 2**30 to fit shift >= 1, got {r[bad_big][:4]}"
        )
    bad_small = ~zero & (shift > max_shift)
    if np.any(bad_small):
        raise ValueError(
            f"real multipliers must be >= 2**{30 - max_shift} (max_shift={max_shift}), "
            f"got {r[bad_small][:4]}"
        )
    mult = np.where(zero, 0, mult).astype(np.int32)
    shift = np.where(zero, 1, shift).astype(np.int32)
    return mult, shift


def dequantize_multiplier(mult: ArrayLike, shift: ArrayLike) -> np.ndarray:
    """The real value `mult * 2**-shift` of fixed-point multipliers, as float64[...]."""
    return np.ldexp(np.asarray(mult, dtype=np.float64), -np.asarray(shift, dtype=np.int64))


def requantize_reference(acc: ArrayLike, mult: ArrayLike, shift: ArrayLike) -> np.ndarray:
    """Exact `saturate_int32(floor((acc * mult + 2**(shift-1)) / 2**shift))`, broadcasting.

    Args:
      acc: integer[...] accumulators (any integer dtype; int32 in the datapath).
      mult: integer[...] multipliers, normally in [0, 2**31).
      shift: integer[...] right shifts in [1, 62].

    Returns:
      int32[broadcast shape]: the product rounded half up (towards +inf) and saturated.
    """
    acc = np.asarray(acc)
    mult = np.asarray(mult)
    shift = np.asarray(shift)
    for name, a in (("acc", acc), ("mult", mult), ("shift", shift)):
        if not np.issubdtype(a.dtype, np.integer):
            raise ValueError(f"{name} must be an integer array, got dtype {a.dtype}")
    if shift.size and (shift.min() < 1 or shift.max() > MAX_SHIFT):
        raise ValueError(f"shift must be in [1, {MAX_SHIFT}], got [{shift.min()}, {shift.max()}]")
    fits_int64 = (acc.size == 0 or (int(acc.min()) >= INT32_MIN and int(acc.max()) <= 2**31)) and (
        mult.size == 0 or (int(mult.min()) >= 0 and int(mult.max()) < 2**31)
    )  # then |acc * mult| < 2**62 and adding 2**61 stays below 2**63
    if fits_int64:
        a, m, s = acc.astype(np.int64), mult.astype(np.int64), shift.astype(np.int64)
        q = (a * m + np.left_shift(np.int64(1), s - 1)) >> s  # >> on int64 is floor division
    else:  # arbitrary precision with Python integers
        a, m, s = np.broadcast_arrays(acc.astype(object), mult.astype(object), shift.astype(object))
        flat = [
            (int(x) * int(y) + (1 << (int(k) - 1))) >> int(k)
            for x, y, k in zip(a.flat, m.flat, s.flat, strict=True)
        ]
        q = np.array(flat, dtype=object).reshape(a.shape)
    return np.clip(q, INT32_MIN, INT32_MAX).astype(np.int32)


def int_matmul_reference(
    x: ArrayLike, w: ArrayLike, mult: ArrayLike, shift: ArrayLike, rows: ArrayLike | None = None
) -> np.ndarray:
    """NumPy reference of `hw.primitives.int_matmul`, bit for bit.

    Args:
      x: int8[..., M, K] activations.
      w: int8[K, N] (shared) or int8[..., K, N] (leading dims equal to x's) weights.
      mult: int32[N] or int32[..., N] (leading dims like w): multipliers in [0, 2**31).
      shift: int32, same shape as mult: right shifts in [1, 62].
      rows: optional [..., M] row activity (nonzero = active); None: every row.

    Returns:
      int32[..., M, N]: requantize(acc) with acc = x @ w accumulated in int32 (wrapping modulo
      2**32 like the hardware accumulator; callers keep K * 127 * 127 < 2**31 so it never does),
      0 on the inactive rows.
    """
    x = np.asarray(x)
    w = np.asarray(w)
    acc = np.matmul(x.astype(np.int64), w.astype(np.int64))  # exact: K * 2**14 << 2**63
    acc = acc.astype(np.int32)  # the int32 accumulator wraps modulo 2**32
    mult = np.asarray(mult)[..., None, :]  # -> [..., 1, N], broadcast over M
    shift = np.asarray(shift)[..., None, :]
    out = requantize_reference(acc, mult, shift)
    if rows is None:
        return out
    return np.where(np.asarray(rows)[..., None] != 0, out, np.int32(0)).astype(np.int32)
