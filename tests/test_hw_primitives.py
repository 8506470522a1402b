"""Tests of hw/primitives: weight decoding and the requantized integer matmul, bit for bit.

References are NumPy: a decoder/encoder written here from the byte-layout spec (cross-checked
against export/encodings.py; Huffman codes by the textbook heap merge and RFC 1951's canonical
code assignment, decoded bit by bit), `requantize_reference` / `int_matmul_reference` in exact integer
arithmetic. Every primitive is checked eagerly, under jit, under vmap (each operand batched or
not, nested, batch axis not first), that vmapped jaxprs still contain the primitive, that bad
inputs raise ValueError, and that jitted callers do not retrace.
"""

from __future__ import annotations

import functools
import heapq
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import hw.primitives.decode as decode_module
from hw.primitives import (
    ENCODINGS,
    MAX_K,
    decode_weights,
    dequantize_multiplier,
    field_sizes,
    int_matmul,
    int_matmul_p,
    int_matmul_reference,
    quantize_multiplier,
    requantize,
    requantize_reference,
    zero_weight_macs,
)

BITS = (2, 3, 4, 5, 8)
SPARSITY = (0.0, 0.5, 0.9, 1.0)
N = 77  # odd, not a multiple of 8: exercises nibble and bitmap padding

# ---------------------------------------------------------------------------------------------
# NumPy reference of the byte layouts, written from the spec.


def _pack_nibbles(nib: np.ndarray) -> np.ndarray:
    nib = np.asarray(nib, np.uint8) & 0x0F
    if nib.size % 2:
        nib = np.append(nib, np.uint8(0))
    return (nib[0::2] | (nib[1::2] << 4)).astype(np.uint8)


def _unpack_nibbles(buf: np.ndarray, count: int) -> np.ndarray:
    out = np.empty(2 * buf.size, np.uint8)
    out[0::2], out[1::2] = buf & 0x0F, buf >> 4
    return out[:count]


def _pack_values(v: np.ndarray, bits: int) -> np.ndarray:
    v = np.asarray(v, np.int8)
    return _pack_nibbles(v.view(np.uint8)) if bits <= 4 else v.view(np.uint8).copy()


def _unpack_values(buf: np.ndarray, count: int, bits: int) -> np.ndarray:
    if bits > 4:
        return buf[:count].view(np.int8)
    nib = _unpack_nibbles(buf, count).astype(np.int16)
    return np.where(nib >= 8, nib - 16, nib).astype(np.int8)


HUFF_MAX_LEN, HUFF_BLOCK = 12, 256  # the layout's constants


def _heap_huffman_lengths(freq: np.ndarray) -> np.ndarray:
    """Huffman's code lengths by the heap merge (any optimal code: the decoder takes any)."""
    heap = [(int(f), i, (i,)) for i, f in enumerate(freq) if f > 0]
    lengths = np.zeros(freq.size, np.int64)
    if len(heap) == 1:
        lengths[heap[0][1]] = 1
    heapq.heapify(heap)
    while len(heap) > 1:
        a, b = heapq.heappop(heap), heapq.heappop(heap)
        lengths[list(a[2] + b[2])] += 1
        heapq.heappush(heap, (a[0] + b[0], min(a[1], b[1]), a[2] + b[2]))
    assert lengths.max(initial=0) <= HUFF_MAX_LEN, lengths
    return lengths


def _canonical_codewords(lengths: np.ndarray) -> dict[int, str]:
    """symbol -> codeword bits, by RFC 1951 section 3.2.2 (bl_count, next_code)."""
    bl_count = np.bincount(lengths[lengths > 0], minlength=HUFF_MAX_LEN + 1)
    code, next_code = 0, {}
    for length in range(1, HUFF_MAX_LEN + 1):  # bl_count[0] is 0: absent symbols
        code = (code + int(bl_count[length - 1])) << 1
        next_code[length] = code
    out = {}
    for sym, length in enumerate(lengths.tolist()):
        if length:
            out[sym] = format(next_code[length], f"0{length}b")
            next_code[length] += 1
    return out


def _bytes_msb_first(bitstr: str) -> np.ndarray:
    bitstr += "0" * (-len(bitstr) % 8)
    return np.array([int(bitstr[i : i + 8], 2) for i in range(0, len(bitstr), 8)], np.uint8)


def _huffman_encode(codes: np.ndarray, bits: int) -> tuple[tuple[np.ndarray, ...], int]:
    q = 2 ** (bits - 1) - 1
    sym = codes.astype(np.int64) + q
    lengths = _heap_huffman_lengths(np.bincount(sym, minlength=2 * q + 1))
    words = _canonical_codewords(lengths)
    per_block = [
        "".join(words[s] for s in sym[i : i + HUFF_BLOCK]) for i in range(0, sym.size, HUFF_BLOCK)
    ]
    blocks = np.array([len(b) for b in per_block], "<u2").view(np.uint8)
    stream = _bytes_msb_first("".join(per_block))
    return (_pack_nibbles(lengths), blocks, stream), stream.size


def _huffman_decode(fields, bits: int, n: int) -> np.ndarray:
    """Bit by bit through the whole stream; checks every block's stated length on the way."""
    q = 2 ** (bits - 1) - 1
    lengths = _unpack_nibbles(fields[0], 2 * q + 1).astype(np.int64)
    words = {w: s for s, w in _canonical_codewords(lengths).items()}
    bitstr = "".join(format(b, "08b") for b in fields[2].tolist())
    blocks = fields[1].view("<u2").tolist()
    out, pos, word = [], 0, ""
    for k, size in enumerate(blocks):
        start = pos
        for _ in range(min(HUFF_BLOCK, n - k * HUFF_BLOCK)):
            while word not in words:
                word += bitstr[pos]
                pos += 1
            out.append(words[word] - q)
            word = ""
        assert pos - start == size, (k, pos - start, size)
    return np.array(out, np.int8)


def np_encode(codes: np.ndarray, bits: int, encoding: str) -> tuple[tuple[np.ndarray, ...], int]:
    """codes: int8[n] -> (fields, count) in `encoding`'s layout."""
    n = codes.size
    if encoding == "huffman":
        return _huffman_encode(codes, bits)
    if encoding == "int8":
        return (codes.view(np.uint8).copy(),), n
    if encoding == "int4":
        return (_pack_values(codes, 4),), n
    nz = np.flatnonzero(codes)
    if encoding == "bitmap":
        return (np.packbits(codes != 0, bitorder="little"), _pack_values(codes[nz], bits)), nz.size
    gaps, vals, prev = [], [], -1
    for p in nz:
        gap = p - prev - 1
        while gap > 15:  # filler entry: 16 positions, value 0
            gaps.append(15)
            vals.append(0)
            gap -= 16
        gaps.append(gap)
        vals.append(codes[p])
        prev = p
    vals = np.array(vals, np.int8)
    return (_pack_nibbles(np.array(gaps, np.uint8)), _pack_values(vals, bits)), len(gaps)


def np_decode(fields, encoding: str, bits: int, n: int, count: int) -> np.ndarray:
    """The reference decoder: int8[n] from the fields, by loops over the spec's definitions."""
    if encoding == "huffman":
        return _huffman_decode(fields, bits, n)
    if encoding == "int8":
        return fields[0].view(np.int8).copy()
    if encoding == "int4":
        return _unpack_values(fields[0], n, 4)
    vals = _unpack_values(fields[1], count, bits)
    out = np.zeros(n, np.int8)
    if encoding == "bitmap":
        mask = np.unpackbits(fields[0], bitorder="little")[:n]
        out[np.flatnonzero(mask)] = vals
        return out
    pos = -1
    for gap, v in zip(_unpack_nibbles(fields[0], count), vals, strict=True):
        pos += int(gap) + 1
        out[pos] = v
    return out


def random_codes(rng, n: int, bits: int, sparsity: float, mask=None) -> np.ndarray:
    """int8[n] on the symmetric bits-bit levels; exactly `sparsity` of them zero (or `mask`)."""
    q = 2 ** (bits - 1) - 1
    mag = rng.integers(1, q + 1, n) * rng.choice([-1, 1], n)  # nonzero everywhere
    if mask is None:
        mask = np.ones(n, bool)
        mask[rng.permutation(n)[: round(sparsity * n)]] = False
    return np.where(mask, mag, 0).astype(np.int8)


CASES = [
    (enc, bits, sp)
    for enc, bits, sp in itertools.product(ENCODINGS, BITS, SPARSITY)
    if not (enc == "int4" and bits > 4)
]


def _decode_jit(fields, **params):
    return jax.jit(lambda f: decode_weights(f, **params))(fields)


# ---------------------------------------------------------------------------------------------
# Decoding.


@pytest.mark.parametrize("encoding,bits,sparsity", CASES)
def test_decode_matches_reference(encoding, bits, sparsity):
    rng = np.random.default_rng([ENCODINGS.index(encoding), bits, int(100 * sparsity)])
    codes = random_codes(rng, N, bits, sparsity)
    fields, count = np_encode(codes, bits, encoding)
    params = dict(encoding=encoding, bits=bits, n=N, count=count)
    assert tuple(f.size for f in fields) == field_sizes(**params)
    np.testing.assert_array_equal(np_decode(fields, **params), codes)
    eager = decode_weights(fields, **params)
    assert eager.dtype == jnp.int8 and eager.shape == (N,)
    np.testing.assert_array_equal(eager, codes)
    np.testing.assert_array_equal(_decode_jit(fields, **params), codes)


def test_decode_gap_fillers_and_edges():
    codes = np.zeros(101, np.int8)
    codes[[0, 40, 41, 100]] = [3, -1, 7, -7]  # runs of 39 and 58 zeros need fillers
    fields, count = np_encode(codes, 4, "gaps")
    assert count == 4 + 2 + 3
    np.testing.assert_array_equal(
        decode_weights(fields, encoding="gaps", bits=4, n=101, count=count), codes
    )
    for enc in ENCODINGS:  # an empty tensor
        fields, count = np_encode(np.zeros(0, np.int8), 4, enc)
        out = decode_weights(fields, encoding=enc, bits=4, n=0, count=count)
        assert out.shape == (0,) and out.dtype == jnp.int8


def test_decode_cross_checks_export_encodings():
    encodings = pytest.importorskip("export.encodings")
    assert encodings.ENCODINGS == ENCODINGS
    assert (encodings.HUFFMAN_MAX_LEN, encodings.HUFFMAN_BLOCK) == (HUFF_MAX_LEN, HUFF_BLOCK)
    assert (decode_module.HUFFMAN_MAX_LEN, decode_module.HUFFMAN_BLOCK) == (12, 256)
    rng = np.random.default_rng(7)
    for enc, bits, sp in CASES:
        codes = random_codes(rng, N, bits, sp)
        ref = encodings.encode(codes, bits, enc)
        fields, count = np_encode(codes, bits, enc)
        if enc == "huffman":  # optimal lengths may differ at ties: same cost, same layout
            assert ref.count == count and len(fields) == len(ref.fields), (bits, sp)
            np.testing.assert_array_equal(
                np_decode(tuple(ref.fields.values()), enc, bits, N, 0), codes
            )
        else:
            assert ref.count == count, (enc, bits, sp)
            for mine, theirs in zip(fields, ref.fields.values(), strict=True):
                np.testing.assert_array_equal(mine, theirs)
        count = ref.count
        got = decode_weights(tuple(ref.fields.values()), encoding=enc, bits=bits, n=N, count=count)
        np.testing.assert_array_equal(got, encodings.decode(ref))


def _batch(rng, encoding: str, bits: int, shape: tuple[int, ...], n: int = N):
    """Stacked fields of prod(shape) tensors with one zero pattern (so one `count`); for
    huffman, permutations of one tensor (one histogram: one code, one stream length)."""
    mask = rng.random(n) > 0.6
    base = random_codes(rng, n, bits, 0, mask)
    codes = np.stack(
        [
            rng.permutation(base) if encoding == "huffman" else random_codes(rng, n, bits, 0, mask)
            for _ in range(int(np.prod(shape)))
        ]
    )
    enc = [np_encode(c, bits, encoding) for c in codes]
    assert len({e[1] for e in enc}) == 1, [e[1] for e in enc]
    fields = tuple(
        np.stack([e[0][i] for e in enc]).reshape(*shape, -1) for i in range(len(enc[0][0]))
    )
    return fields, enc[0][1], codes.reshape(*shape, n)


@pytest.mark.parametrize(
    "encoding,bits,n",
    [("int8", 8, N), ("int4", 3, N), ("bitmap", 5, N), ("gaps", 4, N), ("huffman", 4, 600)],
)
def test_decode_batched(encoding, bits, n):
    rng = np.random.default_rng(bits)
    fields, count, codes = _batch(rng, encoding, bits, (2, 3), n)
    params = dict(encoding=encoding, bits=bits, n=n, count=count)
    dec = lambda f: decode_weights(f, **params)  # noqa: E731
    np.testing.assert_array_equal(dec(fields), codes)  # leading dims, no vmap
    flat = tuple(f[0] for f in fields)  # [3, bytes]
    np.testing.assert_array_equal(jax.vmap(dec)(flat), codes[0])
    np.testing.assert_array_equal(jax.jit(jax.vmap(jax.vmap(dec)))(fields), codes)
    moved = tuple(np.swapaxes(f, 0, 1) for f in fields)  # batch axis 1
    np.testing.assert_array_equal(jax.vmap(dec, in_axes=1)(moved), codes)
    nested = jax.vmap(jax.vmap(dec), in_axes=1, out_axes=1)(moved)  # -> [3, 2, n]
    np.testing.assert_array_equal(nested, np.swapaxes(codes, 0, 1))
    if len(fields) >= 2:  # the first field shared (same zero pattern; same code lengths)
        shared = (fields[0][0, 0], *flat[1:])
        axes = ((None, *[0] * (len(fields) - 1)),)
        np.testing.assert_array_equal(jax.vmap(dec, in_axes=axes)(shared), codes[0])
    names = _primitives(jax.make_jaxpr(jax.vmap(jax.vmap(dec)))(fields))
    assert names.count("edge_decode_weights") == 1, names


def _primitives(closed_jaxpr) -> list[str]:
    """Primitive names of every equation, nested jaxprs (jit, scan, ...) included."""
    names = []

    def walk(obj):
        if hasattr(obj, "eqns"):  # a Jaxpr
            for eqn in obj.eqns:
                names.append(eqn.primitive.name)
                for v in eqn.params.values():
                    walk(v)
        elif hasattr(obj, "jaxpr"):  # a ClosedJaxpr
            walk(obj.jaxpr)
        elif isinstance(obj, tuple | list):
            for v in obj:
                walk(v)

    walk(closed_jaxpr)
    return names


@settings(max_examples=15, deadline=None)
@given(
    data=st.lists(st.integers(-7, 7), min_size=1, max_size=40),
    zeros=st.lists(st.booleans(), min_size=40, max_size=40),
    encoding=st.sampled_from(ENCODINGS),
)
def test_decode_hypothesis(data, zeros, encoding):
    codes = np.where(zeros[: len(data)], 0, data).astype(np.int8)
    fields, count = np_encode(codes, 4, encoding)
    got = decode_weights(fields, encoding=encoding, bits=4, n=codes.size, count=count)
    np.testing.assert_array_equal(got, codes)


def test_decode_errors():
    good = (np.zeros(10, np.uint8), np.zeros(3, np.uint8))  # bitmap, n=77, count=3, bits=5
    params = dict(encoding="bitmap", bits=5, n=N, count=3)
    bad = [
        (good, dict(params, encoding="rle"), "encoding"),
        (good[:1], params, "field"),
        ((good[0].astype(np.int8), good[1]), params, "uint8"),
        ((good[0][:9], good[1]), params, r"\[..., 10\]"),
        (good, dict(params, count=78), "count"),
        (good, dict(params, bits=9), "bits"),
        ((np.zeros((2, 10), np.uint8), good[1]), params, "leading dims"),
        ((np.zeros(39, np.uint8),), dict(encoding="int4", bits=5, n=N, count=N), "int4"),
        ((np.zeros(N, np.uint8),), dict(encoding="int8", bits=8, n=N, count=3), "count"),
    ]
    for fields, p, match in bad:
        with pytest.raises(ValueError, match=match):
            decode_weights(fields, **p)
        with pytest.raises(ValueError, match=match):
            jax.jit(lambda f, p=p: decode_weights(f, **p))(fields)
    with pytest.raises(ValueError, match="tuple"):
        decode_weights(good[0], **params)


# ---------------------------------------------------------------------------------------------
# Fixed-point multipliers and requantization.


def test_quantize_multiplier():
    rng = np.random.default_rng(0)
    real = np.concatenate([np.exp(rng.uniform(-20, 20, 1000)), [2.0**-32, 2.0**30 - 1, 1.0, 0.0]])
    mult, shift = quantize_multiplier(real)
    assert mult.dtype == np.int32 and shift.dtype == np.int32
    nz = real > 0
    assert np.all((mult[nz] >= 2**30) & (shift[nz] >= 1) & (shift[nz] <= 62))
    assert mult[~nz] == 0 and shift[~nz] == 1
    rel = np.abs(dequantize_multiplier(mult, shift)[nz] - real[nz]) / real[nz]
    assert rel.max() < 2.0**-30, rel.max()
    for r, match in [(-1.0, ">= 0"), (np.nan, "finite"), (np.inf, "finite"), (2.0**30, "< 2")]:
        with pytest.raises(ValueError, match=match):
            quantize_multiplier([r])
    with pytest.raises(ValueError, match=">= 2"):
        quantize_multiplier([1e-3], max_shift=8)
    with pytest.raises(ValueError, match="max_shift"):
        quantize_multiplier([1.0], max_shift=63)


def _requant_cases(rng, size: int):
    """(acc, mult, shift) int32[size]: random full-range, extremes and exact .5 ties."""
    acc = rng.integers(-(2**31), 2**31, size, dtype=np.int64)
    mult = rng.integers(0, 2**31, size, dtype=np.int64)
    shift = rng.integers(1, 63, size)
    ext = np.array(
        list(
            itertools.product(
                [-(2**31), -(2**31) + 1, -1, 0, 1, 2**31 - 1],
                [0, 1, 2**30, 2**31 - 1],
                [1, 2, 31, 32, 33, 61, 62],
            )
        )
    )
    # ties: acc * mult = odd * 2**(shift-1), negative and positive
    k = size // 2
    s = rng.integers(1, 62, k)
    a_exp = rng.integers(0, np.minimum(s, 31))  # a_exp <= min(s-1, 30)
    m_exp = np.minimum(s - 1 - a_exp, 30)
    a_exp = s - 1 - m_exp
    odd_a = 2 * rng.integers(0, 2 ** (30 - a_exp)) + 1
    odd_m = 2 * rng.integers(0, 2 ** (30 - m_exp)) + 1
    tie_acc = odd_a * 2**a_exp * rng.choice([-1, 1], k)
    tie_mult = odd_m * 2**m_exp
    acc = np.concatenate([acc, ext[:, 0], tie_acc])
    mult = np.concatenate([mult, ext[:, 1], tie_mult])
    shift = np.concatenate([shift, ext[:, 2], s])
    return acc.astype(np.int32), mult.astype(np.int32), shift.astype(np.int32)


def test_requantize_bit_exact():
    acc, mult, shift = _requant_cases(np.random.default_rng(1), 20000)
    ref = requantize_reference(acc, mult, shift)
    ties = slice(-10000, None)  # acc * mult = odd * 2**(shift - 1)
    a, m, s = (v[ties].astype(object) for v in (acc, mult, shift))
    assert np.all((a * m) % 2**s == 2 ** (s - 1)) and (a < 0).any()
    assert (ref == 2**31 - 1).any() and (ref == -(2**31)).any()  # saturation both ways
    np.testing.assert_array_equal(requantize(acc, mult, shift), ref)
    np.testing.assert_array_equal(jax.jit(requantize)(acc, mult, shift), ref)
    # the int64 fast path agrees with arbitrary precision
    exact = [
        min(max((int(a) * int(m) + (1 << (int(s) - 1))) >> int(s), -(2**31)), 2**31 - 1)
        for a, m, s in zip(acc[::97], mult[::97], shift[::97], strict=True)
    ]
    np.testing.assert_array_equal(ref[::97], exact)


def test_requantize_rounds_half_up():
    acc = np.array([-3, -1, 1, 3, -5, 5], np.int32)
    got = requantize(acc, np.ones(6, np.int32), np.ones(6, np.int32))  # acc / 2, ties up
    np.testing.assert_array_equal(got, [-1, 0, 1, 2, -2, 3])


def test_requantize_reference_wide_accumulators():
    acc = np.array([2**40, -(2**40), 3 * 2**50, -(2**45) - 1], np.int64)  # beyond int64 products
    mult = np.array([2**30, 2**31 - 1, 2**31 - 1, 2**31 - 1], np.int64)
    shift = np.array([40, 62, 62, 40], np.int64)
    want = [
        min(max((int(a) * int(m) + (1 << (int(k) - 1))) >> int(k), -(2**31)), 2**31 - 1)
        for a, m, k in zip(acc, mult, shift, strict=True)
    ]
    np.testing.assert_array_equal(requantize_reference(acc, mult, shift), want)


@settings(max_examples=30, deadline=None)
@given(
    acc=st.integers(-(2**31), 2**31 - 1),
    mult=st.integers(0, 2**31 - 1),
    shift=st.integers(1, 62),
)
def test_requantize_hypothesis(acc, mult, shift):
    a, m, s = (np.array([v], np.int32) for v in (acc, mult, shift))
    want = min(max((acc * mult + (1 << (shift - 1))) >> shift, -(2**31)), 2**31 - 1)
    assert int(requantize(a, m, s)[0]) == want == int(requantize_reference(a, m, s)[0])


# ---------------------------------------------------------------------------------------------
# Integer matmul.


def _operands(rng, x_shape, w_shape, real_scale=True):
    x = rng.integers(-128, 128, x_shape).astype(np.int8)
    w = rng.integers(-127, 128, w_shape).astype(np.int8)
    w[rng.random(w_shape) < 0.5] = 0
    n_shape = (*w_shape[:-2], w_shape[-1])
    if real_scale:
        mult, shift = quantize_multiplier(np.exp(rng.uniform(-12, 0, n_shape)))
    else:
        mult = rng.integers(0, 2**31, n_shape).astype(np.int32)
        shift = rng.integers(1, 63, n_shape).astype(np.int32)
    return x, w, mult, shift


@pytest.mark.parametrize(
    "x_shape,w_shape",
    [((5, 7), (7, 3)), ((2, 5, 7), (7, 3)), ((2, 3, 4, 9), (2, 3, 9, 5)), ((1, 1), (1, 1))],
)
def test_int_matmul_matches_reference(x_shape, w_shape):
    rng = np.random.default_rng(len(x_shape) * 10 + len(w_shape))
    for real_scale in (True, False):
        x, w, mult, shift = _operands(rng, x_shape, w_shape, real_scale)
        ref = int_matmul_reference(x, w, mult, shift)
        got = int_matmul(x, w, mult, shift)
        assert got.dtype == jnp.int32 and got.shape == ref.shape
        np.testing.assert_array_equal(got, ref)
        np.testing.assert_array_equal(jax.jit(int_matmul)(x, w, mult, shift), ref)
        # with a row-activity operand: the active rows as before, the others 0
        rows = rng.random(x_shape[:-1]) < 0.5
        masked = int_matmul_reference(x, w, mult, shift, rows)
        np.testing.assert_array_equal(masked, np.where(rows[..., None], ref, 0))
        np.testing.assert_array_equal(int_matmul(x, w, mult, shift, rows), masked)
        np.testing.assert_array_equal(jax.jit(int_matmul)(x, w, mult, shift, rows), masked)
        as_int8 = int_matmul(x, w, mult, shift, rows.astype(np.int8))  # nonzero = active
        np.testing.assert_array_equal(as_int8, masked)


def test_int_matmul_extremes():
    k = MAX_K  # acc = +-K * 127 * 127, the largest the int32 accumulator is promised to hold
    x = np.full((2, k), 127, np.int8)
    x[1] = -127
    w = np.stack([np.full(k, 127), np.full(k, -127), np.zeros(k)] * 2, axis=1).astype(np.int8)
    mult = np.array([2**31 - 1, 2**31 - 1, 2**31 - 1, 1, 2**30, 2**31 - 1], np.int32)
    shift = np.array([1, 62, 31, 1, 62, 33], np.int32)
    ref = int_matmul_reference(x, w, mult, shift)
    assert ref[0, 0] == 2**31 - 1 and ref[1, 0] == -(2**31)  # saturated both ways
    np.testing.assert_array_equal(int_matmul(x, w, mult, shift), ref)
    np.testing.assert_array_equal(jax.jit(int_matmul)(x, w, mult, shift), ref)
    assert zero_weight_macs(x.shape, w) == 2 * 2 * k


@pytest.mark.parametrize(
    "in_axes,w_lead",
    [
        ((0, None, None, None), ()),  # batched activations, shared 2-D weights
        ((0, None, None, None), (3,)),  # shared weights with leading dims: folded into M
        ((None, 0, 0, 0), ()),  # one input, a batch of weight matrices
        ((None, 0, 0, 0), (3,)),
        ((0, 0, 0, 0), ()),
        ((0, 0, None, None), (3,)),  # batched weights, shared scales
        ((None, None, 0, None), ()),  # only the multipliers batched
    ],
)
@pytest.mark.parametrize("rows_axis", ["none", 0, None])  # no rows; batched; shared
def test_int_matmul_vmap(in_axes, w_lead, rows_axis):
    rng = np.random.default_rng(len(w_lead))
    b, m, k, n = 4, 5, 6, 3
    x_lead = w_lead or (2,)
    x, w, mult, shift = _operands(rng, (b, *x_lead, m, k), (b, *w_lead, k, n))
    ops = (x, w, mult, shift)
    if rows_axis != "none":
        ops += (rng.random((b, *x_lead, m)) < 0.6,)
        in_axes = (*in_axes, rows_axis)
    args = [a if ax == 0 else a[0] for a, ax in zip(ops, in_axes, strict=True)]
    full = [
        a if ax == 0 else np.broadcast_to(a, (b, *a.shape))
        for a, ax in zip(args, in_axes, strict=True)
    ]
    ref = np.stack([int_matmul_reference(*(a[i] for a in full)) for i in range(b)])
    f = jax.vmap(int_matmul, in_axes=in_axes)
    np.testing.assert_array_equal(f(*args), ref)
    np.testing.assert_array_equal(jax.jit(f)(*args), ref)
    names = _primitives(jax.make_jaxpr(f)(*args))
    assert names.count("edge_int_matmul") == 1 and "dot_general" not in names, names


def test_int_matmul_nested_vmap_and_axes():
    rng = np.random.default_rng(3)
    x, w, mult, shift = _operands(rng, (2, 3, 5, 6), (2, 6, 4))  # w batched over the outer axis
    ref = np.stack(
        [int_matmul_reference(x[i], w[i], mult[i], shift[i]) for i in range(2)]
    )  # x[i]: [3, 5, 6] against a shared [6, 4]
    inner = jax.vmap(int_matmul, in_axes=(0, None, None, None))
    f = jax.vmap(inner, in_axes=(0, 0, 0, 0))
    np.testing.assert_array_equal(f(x, w, mult, shift), ref)
    g = jax.vmap(inner, in_axes=(2, 0, 0, 0), out_axes=2)  # batch axis not first
    np.testing.assert_array_equal(g(np.moveaxis(x, 0, 2), w, mult, shift), np.moveaxis(ref, 0, 2))
    names = _primitives(jax.make_jaxpr(g)(np.moveaxis(x, 0, 2), w, mult, shift))
    assert names.count("edge_int_matmul") == 1, names
    rows = np.random.default_rng(4).random((2, 3, 5)) < 0.5  # with rows, batch axes moved too
    want = np.where(rows[..., None], ref, 0)
    inner_r = jax.vmap(int_matmul, in_axes=(0, None, None, None, 0))
    h = jax.vmap(inner_r, in_axes=(2, 0, 0, 0, 1), out_axes=2)
    got = h(np.moveaxis(x, 0, 2), w, mult, shift, np.moveaxis(rows, 0, 1))
    np.testing.assert_array_equal(got, np.moveaxis(want, 0, 2))


def test_int_matmul_errors():
    x = np.zeros((2, 5, 7), np.int8)
    w = np.zeros((7, 3), np.int8)
    m = np.ones(3, np.int32)
    bad = [
        ((x.astype(np.int32), w, m, m), "x must be int8"),
        ((x, w.astype(np.float32), m, m), "w must be int8"),
        ((x, w, m.astype(np.uint32), m), "mult must be int32"),
        ((x, w, m, m.astype(np.int8)), "shift must be int32"),
        ((x, w[:6], m, m), "K=7 but w has K=6"),
        ((x, np.zeros((3, 7, 3), np.int8), m, m), "leading dims"),
        ((x, w, np.ones(4, np.int32), m), "mult must have shape"),
        ((x[0, 0], w, m, m), r"\[..., M, K\]"),
        ((x, w, m, m, np.ones((2, 7), bool)), r"rows must be bool\[2, 5\]"),
    ]
    for args, match in bad:
        with pytest.raises(ValueError, match=match):
            int_matmul(*args)
        with pytest.raises(ValueError, match=match):
            jax.jit(int_matmul)(*args)
    big = (
        jax.ShapeDtypeStruct((1, MAX_K + 1), jnp.int8),
        jax.ShapeDtypeStruct((MAX_K + 1, 1), jnp.int8),
        jax.ShapeDtypeStruct((1,), jnp.int32),
        jax.ShapeDtypeStruct((1,), jnp.int32),
    )
    with pytest.raises(ValueError, match="overflow"):
        jax.eval_shape(int_matmul, *big)
    with pytest.raises(ValueError, match="rows must be bool"):  # the primitive itself
        int_matmul_p.bind(*(jnp.asarray(a) for a in (x, w, m, m)), jnp.ones((2, 5), jnp.int8))


def test_zero_weight_macs():
    w = np.array([[0, 1, 0], [2, 0, 0]], np.int8)  # 4 zeros, K=2, N=3
    assert zero_weight_macs((5, 2), w) == 5 * 4
    assert zero_weight_macs((3, 5, 2), w) == 15 * 4
    wb = np.stack([w, np.ones_like(w)])  # per-example weights: 4 + 0 zeros
    assert zero_weight_macs((2, 5, 2), wb) == 5 * 4
    with pytest.raises(ValueError):
        zero_weight_macs((5, 3), w)
    with pytest.raises(ValueError):
        zero_weight_macs((3, 5, 2), wb)
    rows = np.array([[1, 0, 0, 1, 1], [0, 0, 0, 0, 1]])  # 3 and 1 active rows
    assert zero_weight_macs((2, 5, 2), w, rows) == 4 * 4
    assert zero_weight_macs((2, 5, 2), wb, rows) == 3 * 4 + 1 * 0
    with pytest.raises(ValueError):
        zero_weight_macs((2, 5, 2), w, rows[:, :4])


# ---------------------------------------------------------------------------------------------
# No retrace.


def test_jitted_callers_do_not_retrace():
    traces = []

    @jax.jit
    def layer(fields, x, mult, shift):
        traces.append(1)
        w = decode_weights(fields, encoding="int4", bits=4, n=12, count=12).reshape(4, 3)
        return int_matmul(x, w, mult, shift)

    rng = np.random.default_rng(5)
    for _ in range(3):
        codes = random_codes(rng, 12, 4, 0.5)
        fields, _ = np_encode(codes, 4, "int4")
        x = rng.integers(-128, 128, (2, 4)).astype(np.int8)
        mult, shift = quantize_multiplier(rng.uniform(1e-3, 1e-2, 3))
        got = layer(fields, x, mult, shift)
        np.testing.assert_array_equal(
            got, int_matmul_reference(x, codes.reshape(4, 3), mult, shift)
        )
    assert len(traces) == 1


# ---------------------------------------------------------------------------------------------
# Huffman: block boundaries, skewed codes, malformed streams.


@pytest.mark.parametrize("bits", [2, 4, 8])
def test_decode_huffman_blocks(bits):
    """Several blocks (and a short last one) of skewed codes, eager and under jit, against
    the spec decoder and export.encodings (whose package-merge code this decodes)."""
    encodings = pytest.importorskip("export.encodings")
    rng = np.random.default_rng(bits)
    q = 2 ** (bits - 1) - 1
    for n in (1, 257, 1000):  # one code; a block and one more; a short last block
        codes = np.clip(np.round(rng.laplace(0, 0.2 * q + 0.3, n)), -q, q).astype(np.int8)
        fields, count = np_encode(codes, bits, "huffman")
        params = dict(encoding="huffman", bits=bits, n=n, count=count)
        assert tuple(f.size for f in fields) == field_sizes(**params)
        np.testing.assert_array_equal(np_decode(fields, **params), codes)
        dec = jax.jit(lambda f, p=params: decode_weights(f, **p))
        np.testing.assert_array_equal(dec(fields), codes)
        ref = encodings.encode(codes, bits, "huffman")
        assert ref.count == count  # both codes optimal: the same stream length
        np.testing.assert_array_equal(dec(tuple(ref.fields.values())), encodings.decode(ref))
        if n == 257:
            np.testing.assert_array_equal(decode_weights(fields, **params), codes)  # eager
    for codes in (np.full(300, q, np.int8), np.zeros(300, np.int8)):  # one symbol: 1 bit
        fields, count = np_encode(codes, bits, "huffman")
        assert count == 38
        got = decode_weights(fields, encoding="huffman", bits=bits, n=300, count=count)
        np.testing.assert_array_equal(got, codes)


@functools.cache
def _jitted_decode(**params):
    return jax.jit(lambda f: decode_weights(f, **params))


@settings(max_examples=40, deadline=None, derandomize=True)
@given(
    data=st.data(),
    shape=st.sampled_from([(2, 1, 1), (4, 300, 38), (4, 300, 450), (8, 600, 200)]),
)
def test_decode_huffman_malformed_fields_do_not_crash(data, shape):
    """Arbitrary bytes of the right sizes: some int8[n] on the levels, never an error."""
    bits, n, count = shape
    sizes = field_sizes("huffman", bits, n, count)
    fields = tuple(
        np.frombuffer(data.draw(st.binary(min_size=m, max_size=m)), np.uint8) for m in sizes
    )
    out = np.asarray(_jitted_decode(encoding="huffman", bits=bits, n=n, count=count)(fields))
    q = 2 ** (bits - 1) - 1
    assert out.shape == (n,) and out.dtype == np.int8 and np.abs(out).max() <= q


def test_decode_huffman_errors():
    n, count = 600, 300  # 4-bit: lengths 8 bytes, blocks 2 * 3, stream 75..900
    good = (np.zeros(8, np.uint8), np.zeros(6, np.uint8), np.zeros(count, np.uint8))
    params = dict(encoding="huffman", bits=4, n=n, count=count)
    assert field_sizes(**params) == (8, 6, count)
    bad = [
        ((np.zeros(7, np.uint8), *good[1:]), params, r"field 0 must be \[..., 8\]"),
        ((good[0], np.zeros(4, np.uint8), good[2]), params, r"field 1 must be \[..., 6\]"),
        (good[:2], params, "takes 3 field"),
        (good, dict(params, count=74), r"count \(stream bytes\) in 75..900"),
        (good, dict(params, count=901), r"in 75..900"),
        (good, dict(params, n=0, count=0), r"field 1 must be \[..., 0\]"),
    ]
    for fields, p, match in bad:
        with pytest.raises(ValueError, match=match):
            decode_weights(fields, **p)
        with pytest.raises(ValueError, match=match):
            jax.jit(lambda f, p=p: decode_weights(f, **p))(fields)
