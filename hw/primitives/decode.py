"""Weight decoding in circuitry: packed low-bit, sparse and entropy-coded weight streams -> int8.

`decode_weights(fields, encoding=..., bits=..., n=..., count=...)` is the custom primitive
`edge_decode_weights`. It decodes one flattened weight tensor of `n` int8 codes from the uint8
byte fields that the artifact stores (`export/encodings.py` writes the same layouts in NumPy):

Value layout (shared by the value-storing encodings; `count` = number of stored values):
  - 4-bit when bits <= 4: two's-complement nibbles, two per byte, element 2i in the LOW nibble
    and 2i+1 in the HIGH nibble; an odd count pads the last high nibble with 0.
    ceil(count / 2) bytes. Decoded by masking/shifting and sign extension (v >= 8 -> v - 16).
  - 8-bit when bits > 4: the int8 bit pattern stored as uint8, `count` bytes.

Encodings (fields in this order):
  - "int8":   (values,)          values = n bytes in the 8-bit layout (any bits); count == n.
  - "int4":   (values,)          ceil(n/2) bytes in the 4-bit layout (bits <= 4); count == n.
  - "bitmap": (bitmap, values)   bitmap = np.packbits(codes != 0, bitorder="little"),
              ceil(n/8) bytes; values = the `count` nonzero codes in order, value layout.
              Decoded as: position p holds values[cumsum(mask)[p] - 1] where mask[p], else 0.
  - "gaps":   (gaps, values)     `count` entries, each a 4-bit unsigned gap (packed like 4-bit
              values, low nibble first, ceil(count/2) bytes) and a value (value layout). Entry j
              sits at position sum_{i<=j}(gap_i + 1) - 1; uncovered positions are 0; zero runs
              longer than 15 are bridged by filler entries with value 0. Decoded by a scatter
              into zeros(n).
  - "huffman": (lengths, blocks, stream)   a canonical Huffman code per tensor over the S =
              2^bits - 1 symbols s = code + q (q = 2^(bits-1) - 1); count = stream bytes.
              lengths = the codeword length of each symbol (0 = absent, 1..12), S unsigned
              nibbles low first, 2^(bits-1) bytes; blocks = the bit length of each block of
              256 codes, uint16 little-endian, 2 ceil(n/256) bytes; stream = the codewords
              back to back as a big-endian bit string (bit i = bit 7 - i % 8 of byte i // 8,
              each codeword from its MSB), block k starting at bit sum_{j<k} blocks[j].
              Codewords are canonical (symbols sorted by (length, symbol) take consecutive
              codes), so the left-aligned code of the i-th is sum_{j<i} 2^(12 - l_j).
              Decoded by a table of 2^12 entries built from the lengths on every call (for
              each entry, a binary search of the left-aligned codes: entry t = the codeword
              that 12 bits t start with), and a `lax.scan` of 256 steps in which every block
              (a decoder lane) reads the 24 bits from the byte its next codeword starts in,
              shifts out its next 12 bits, looks up (symbol, length) and advances by the
              length. Malformed fields give some codes on the levels, never an error or an
              out-of-bounds read (reads are clamped; bits that start no codeword advance 0).

Every field may carry the same extra leading dims (several tensors of one shape, or a vmapped
axis); the output is int8[..., n]. The batching rule binds `edge_decode_weights` again with the
vmapped axis moved into those leading dims, so a jaxpr of a vmapped model still shows every
decode to the cost model that interprets it. No differentiation rule: decoding is inference-only
(the codes are integers and have no tangent).

References:
  Han, Mao and Dally 2016, "Deep Compression: Compressing Deep Neural Networks with Pruning,
    Trained Quantization and Huffman Coding", ICLR 2016 (sparse weights stored as 4-bit relative
    index gaps with zero-padding fillers for long runs).
  Jacob et al. 2018, "Quantization and Training of Neural Networks for Efficient
    Integer-Arithmetic-Only Inference", CVPR 2018 (int8 weight codes).
  Huffman 1952, "A Method for the Construction of Minimum-Redundancy Codes", Proc. IRE 40(9);
    Moffat and Turpin 1997, "On the Implementation of Minimum Redundancy Prefix Codes", IEEE
    Trans. Communications 45(10) (canonical codes decoded by table lookup).
  JAX documentation, "JAX Primitives" (abstract evaluation, lowering with `mlir.lower_fun`,
    batching rules).
"""

from __future__ import annotations

from collections.abc import Sequence

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

ENCODINGS = ("int8", "int4", "bitmap", "gaps", "huffman")
HUFFMAN_MAX_LEN = 12  # longest codeword (bits): the lookup table has 2^12 entries
HUFFMAN_BLOCK = 256  # codes per block; blocks decode in parallel, 256 sequential steps


def value_bytes(bits: int, count: int) -> int:
    """Bytes of `count` values in the value layout: 4-bit nibbles if bits <= 4, else bytes."""
    return (count + 1) // 2 if bits <= 4 else count


def field_sizes(encoding: str, bits: int, n: int, count: int) -> tuple[int, ...]:
    """Byte length of each field (last dim) for a tensor of n codes, `count` stored values
    (for "huffman": the stream's bytes).

    Raises:
      ValueError: on an unknown encoding or inconsistent bits/n/count.
    """
    if encoding not in ENCODINGS:
        raise ValueError(f"decode_weights: encoding must be one of {ENCODINGS}, got {encoding!r}")
    for name, v in (("bits", bits), ("n", n), ("count", count)):
        if isinstance(v, bool) or not isinstance(v, int):
            raise ValueError(f"decode_weights: {name} must be a Python int, got {v!r}")
    if not 2 <= bits <= 8:
        raise ValueError(f"decode_weights: bits must be in [2, 8], got {bits}")
    if n < 0:
        raise ValueError(f"decode_weights: need n >= 0, got n={n}")
    if encoding == "huffman":
        lo, hi = (n + 7) // 8, (n * HUFFMAN_MAX_LEN + 7) // 8  # 1..12 bits per code
        if not lo <= count <= hi:
            raise ValueError(
                f"decode_weights: huffman needs count (stream bytes) in {lo}..{hi} for n={n}, "
                f"got count={count}"
            )
        return (2 ** (bits - 1), 2 * -(-n // HUFFMAN_BLOCK), count)
    if not 0 <= count <= n:
        raise ValueError(f"decode_weights: need 0 <= count <= n, got count={count} n={n}")
    if encoding in ("int8", "int4") and count != n:
        raise ValueError(f"decode_weights: {encoding} stores every code: count={count} != n={n}")
    if encoding == "int8":
        return (n,)
    if encoding == "int4":
        if bits > 4:
            raise ValueError(f"decode_weights: int4 holds bits <= 4, got bits={bits}")
        return ((n + 1) // 2,)
    if encoding == "bitmap":
        return ((n + 7) // 8, value_bytes(bits, count))
    return ((count + 1) // 2, value_bytes(bits, count))  # gaps


def _nibbles(buf: jax.Array, count: int) -> jax.Array:
    """uint8[..., B] -> uint8[..., count]: low nibble of byte i is element 2i, high is 2i+1."""
    pairs = jnp.stack([buf & np.uint8(0x0F), buf >> np.uint8(4)], axis=-1)  # -> [..., B, 2]
    return pairs.reshape(*buf.shape[:-1], 2 * buf.shape[-1])[..., :count]


def _values(buf: jax.Array, four_bit: bool, count: int) -> jax.Array:
    """Decode `count` int8 values from the value layout."""
    if four_bit:
        v = _nibbles(buf, count).astype(jnp.int8)
        return jnp.where(v >= 8, v - np.int8(16), v)  # sign-extend the nibble
    return lax.bitcast_convert_type(buf[..., :count], jnp.int8)


def _take(a: jax.Array, idx: jax.Array) -> jax.Array:
    """a[r, idx[r, ...]] along the last axis; every index is clamped in range by the caller (so
    XLA skips the bounds handling, several times faster on the CPU)."""
    return jnp.take_along_axis(a, idx, axis=-1, mode="promise_in_bounds")


def _huffman_table(lengths: jax.Array, bits: int) -> jax.Array:
    """uint8[R, 2^(bits-1)] length nibbles -> int32[R, 2^12] table: entry t = symbol << 4 |
    length of the codeword that 12 stream bits t (big-endian) start with, 0 where none does."""
    rows, size = lengths.shape[0], 2**HUFFMAN_MAX_LEN
    nsym = 2**bits - 1
    ln = _nibbles(lengths, nsym).astype(jnp.int32)  # -> [R, S]
    valid = (ln >= 1) & (ln <= HUFFMAN_MAX_LEN)
    ids = jnp.arange(nsym, dtype=jnp.int32)
    order = jnp.argsort(jnp.where(valid, ln * 256 + ids, 1 << 16), axis=-1)  # (length, symbol)
    sln = _take(ln, order)
    svalid = _take(valid, order)
    span = jnp.where(svalid, 1 << jnp.clip(HUFFMAN_MAX_LEN - sln, 0, HUFFMAN_MAX_LEN), 0)
    left = jnp.cumsum(span, axis=-1) - span  # left-aligned canonical codes, increasing
    left = jnp.where(svalid, left, 1 << 30)  # -> [R, S]; absent symbols after every t
    # codeword of t: the last i with left[i] <= t; binary search, vectorized over t
    t = jnp.broadcast_to(jnp.arange(size, dtype=jnp.int32), (rows, size))
    found = jnp.zeros((rows, size), jnp.int32)  # -> number of left[i] <= t
    for step in (1 << k for k in reversed(range(nsym.bit_length()))):
        probe = _take(left, jnp.minimum(found + step, nsym) - 1)
        found = jnp.where((found + step <= nsym) & (probe <= t), found + step, found)
    entry = _take((order << 4) | sln, jnp.maximum(found - 1, 0))
    # no codeword: before the first (an empty code) or past the Kraft sum (incomplete code)
    inside = (found > 0) & (t < jnp.sum(span, axis=-1, keepdims=True))
    return jnp.where(inside, entry, 0)


def _huffman_decode(lengths, blocks, stream, bits: int, n: int, count: int) -> jax.Array:
    """The "huffman" fields (leading dims flattened to R rows) -> int8[R, n] (module docstring)."""
    rows, nb = stream.shape[0], blocks.shape[-1] // 2
    table = _huffman_table(lengths, bits)  # -> [R, 4096]
    b16 = blocks.reshape(rows, nb, 2).astype(jnp.int32)
    bl = b16[..., 0] | (b16[..., 1] << 8)  # uint16 little-endian bit lengths -> [R, nb]
    start = jnp.cumsum(bl, axis=-1) - bl  # first bit of every block (lane)
    buf = jnp.concatenate([stream, jnp.zeros((rows, 2), jnp.uint8)], axis=-1).astype(jnp.int32)
    # the 24 bits from every byte on, big-endian: a codeword's next 12 bits lie in those of
    # the byte it starts in
    window = (buf[:, :-2] << 16) | (buf[:, 1:-1] << 8) | buf[:, 2:]  # -> [R, count]

    def step(pos, _):  # one codeword of every lane; pos: int32[R, nb] bit positions
        w = _take(window, jnp.clip(pos >> 3, 0, max(count - 1, 0)))  # reads clamped
        peek = (w >> (24 - HUFFMAN_MAX_LEN - (pos & 7))) & (2**HUFFMAN_MAX_LEN - 1)
        e = _take(table, peek)
        return pos + (e & 15), e >> 4

    _, sym = lax.scan(step, start, None, length=min(HUFFMAN_BLOCK, n))  # -> [steps, R, nb]
    sym = jnp.moveaxis(sym, 0, -1).reshape(rows, -1)[:, :n]  # block k, step j -> code 256k + j
    return (sym - (2 ** (bits - 1) - 1)).astype(jnp.int8)


def _decode_impl(*fields: jax.Array, encoding: str, bits: int, n: int, count: int) -> jax.Array:
    """The jnp implementation: the primitive's eager impl and (via `mlir.lower_fun`) lowering."""
    lead = fields[0].shape[:-1]
    if encoding == "huffman":
        if n == 0:
            return jnp.zeros((*lead, 0), jnp.int8)
        rows = int(np.prod(lead, dtype=np.int64))
        flat = [f.reshape(rows, f.shape[-1]) for f in fields]
        return _huffman_decode(*flat, bits=bits, n=n, count=count).reshape(*lead, n)
    if encoding == "int8":
        return _values(fields[0], False, n)
    if encoding == "int4":
        return _values(fields[0], True, n)
    if count == 0:
        return jnp.zeros((*lead, n), jnp.int8)
    vals = _values(fields[1], bits <= 4, count)  # -> int8[..., count]
    if encoding == "bitmap":
        shifts = jnp.arange(8, dtype=jnp.uint8)
        mask = (fields[0][..., :, None] >> shifts) & np.uint8(1)  # -> [..., ceil(n/8), 8]
        mask = mask.reshape(*lead, -1)[..., :n].astype(bool)  # -> [..., n], bit p = code p
        rank = jnp.cumsum(mask, axis=-1, dtype=jnp.int32) - 1  # index among the nonzeros
        picked = jnp.take_along_axis(vals, jnp.clip(rank, 0, count - 1), axis=-1)
        return jnp.where(mask, picked, np.int8(0))
    gaps = _nibbles(fields[0], count).astype(jnp.int32)  # -> [..., count], unsigned 0..15
    pos = jnp.cumsum(gaps + 1, axis=-1, dtype=jnp.int32) - 1  # strictly increasing positions
    rows = int(np.prod(lead, dtype=np.int64))
    out = jnp.zeros((rows, n), jnp.int8)
    out = out.at[jnp.arange(rows)[:, None], pos.reshape(rows, count)].set(
        vals.reshape(rows, count), mode="drop", indices_are_sorted=True, unique_indices=True
    )  # positions >= n (malformed streams) are dropped
    return out.reshape(*lead, n)


_decode_jit = jax.jit(_decode_impl, static_argnames=("encoding", "bits", "n", "count"))


def _decode_abstract_eval(*fields, encoding: str, bits: int, n: int, count: int) -> ShapedArray:
    """Shape/dtype rule: uint8 fields [..., field_sizes] -> int8[..., n]."""
    sizes = field_sizes(encoding, bits, n, count)
    if len(fields) != len(sizes):
        raise ValueError(
            f"decode_weights: {encoding} takes {len(sizes)} field(s), got {len(fields)}"
        )
    lead = None
    for i, (f, size) in enumerate(zip(fields, sizes, strict=True)):
        if f.dtype != np.uint8:
            raise ValueError(f"decode_weights: field {i} must be uint8, got {f.dtype}")
        if f.ndim < 1 or f.shape[-1] != size:
            raise ValueError(
                f"decode_weights: {encoding} field {i} must be [..., {size}] bytes "
                f"(bits={bits}, n={n}, count={count}), got {tuple(f.shape)}"
            )
        if lead is None:
            lead = tuple(f.shape[:-1])
        elif tuple(f.shape[:-1]) != lead:
            raise ValueError(
                f"decode_weights: fields need equal leading dims, got "
                f"{[tuple(g.shape) for g in fields]}"
            )
    return ShapedArray((*lead, n), jnp.int8)


def _decode_eager(*fields, **params):
    _decode_abstract_eval(*fields, **params)  # same errors eagerly as under jit
    return _decode_jit(*fields, **params)


def _decode_batch(args, dims, **params):
    """Batching rule: bind `edge_decode_weights` again with the vmapped axis leading."""
    size = next(a.shape[d] for a, d in zip(args, dims, strict=True) if d is not None)
    fields = [
        jnp.broadcast_to(a, (size, *a.shape)) if d is None else jnp.moveaxis(a, d, 0)
        for a, d in zip(args, dims, strict=True)
    ]
    return decode_weights_p.bind(*fields, **params), 0


decode_weights_p = jax.extend.core.Primitive("edge_decode_weights")
decode_weights_p.def_impl(_decode_eager)
decode_weights_p.def_abstract_eval(_decode_abstract_eval)
mlir.register_lowering(decode_weights_p, mlir.lower_fun(_decode_impl, multiple_results=False))
batching.primitive_batchers[decode_weights_p] = _decode_batch


def decode_weights(
    fields: Sequence[ArrayLike], *, encoding: str, bits: int, n: int, count: int
) -> jax.Array:
    """Decode a packed weight stream to int8 codes (primitive `edge_decode_weights`).

    Args:
      fields: the encoding's uint8 byte fields, each [..., field_size] with equal leading dims:
        ("int8", "int4") -> (values,); ("bitmap") -> (bitmap, values); ("gaps") -> (gaps, values);
        ("huffman") -> (lengths, blocks, stream).
      encoding: one of "int8", "int4", "bitmap", "gaps", "huffman".
      bits: code width in [2, 8]; values use the 4-bit layout when bits <= 4, else 8-bit.
      n: number of codes in the decoded tensor.
      count: number of stored values (n for "int8"/"int4"; nonzeros or entries for "bitmap",
        "gaps"); for "huffman" the stream's bytes.

    Returns:
      int8[..., n]: the codes.

    Raises:
      ValueError: on an unknown encoding, wrong field count, dtype or byte length, or
        inconsistent bits/n/count.
    """
    if isinstance(fields, (str, bytes)) or not isinstance(fields, Sequence):
        raise ValueError(f"decode_weights: fields must be a tuple of arrays, got {type(fields)}")
    params = dict(encoding=encoding, bits=_as_int(bits), n=_as_int(n), count=_as_int(count))
    return decode_weights_p.bind(*(jnp.asarray(f) for f in fields), **params)


def _as_int(v):
    return int(v) if isinstance(v, np.integer) else v
