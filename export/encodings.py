"""How one tensor of low-bit integer codes is packed into bytes: dense, bitmap or gap-coded.

Input: `codes`, an int8 array of any shape, read flat in row-major order (n = codes.size), of
symmetric `bits`-bit levels: every value in [-q, q] with q = 2^(bits-1) - 1, bits in 2..8.

Value layout (`value_bits(bits)`): how a sequence of values is stored.

- 4-bit, for bits <= 4: two's-complement nibbles, two per byte; element 2i in the LOW nibble,
  element 2i+1 in the HIGH nibble; an odd count leaves the last high nibble 0.
  Example: values [1, -1, 0, 7] -> nibbles 1, F, 0, 7 -> bytes [0xF1, 0x70].
- 8-bit, for bits > 4: one byte per value, the int8 bit pattern read as uint8 (-1 -> 0xFF).

Encodings (every field a 1-D uint8 array; `count` = number of stored values):

- "int8":   {"values": n bytes}, 8-bit layout whatever `bits` is; count = n.
- "int4":   {"values": ceil(n/2) bytes}, 4-bit layout; only for bits <= 4; count = n.
- "bitmap": {"bitmap": ceil(n/8) bytes, bit i (LSB first: `np.packbits(bitorder="little")`)
             set where codes[i] != 0; "values": the nonzero codes in order, value layout};
             count = nnz.
- "gaps":   a list of entries (gap, value), gap in 0..15 = zeros skipped since the previous
             entry (the first entry counts from position -1), so entry j sits at position
             sum_{i<=j}(gap_i + 1) - 1. A run of more than 15 zeros is bridged by filler
             entries (gap 15, value 0), each covering 16 positions; zeros after the last nonzero
             need no entry. Fields {"gaps": the gap nibbles packed like the 4-bit layout but
             unsigned (low nibble first), "values": entry values in the value layout};
             count = entries including fillers.
             Example: codes [0, 3, 0, 0, -2] -> entries (1, 3), (2, -2).

Sizes in bytes, with v(c) = ceil(c/2) for the 4-bit layout and c for the 8-bit one:
int8 n, int4 ceil(n/2), bitmap ceil(n/8) + v(nnz), gaps ceil(count/2) + v(count). `choose`
takes the smallest valid one (ties: dense, then bitmap, then gaps).

`count` cannot be recovered from the field lengths (the nibble padding of an odd count), so it
travels with the fields in `Encoded` and in the artifact's manifest. `decode` is the NumPy
reference decoder the device-side decoders are tested against bit for bit; it rejects any
non-canonical input (nonzero padding bits, a nibble of -8, a gap past the end).

References:
  Han, Mao, Dally 2016, "Deep Compression: Compressing Deep Neural Networks with Pruning,
    Trained Quantization and Huffman Coding", ICLR 2016 (relative-index sparse storage with
    filler zeros where a gap exceeds the index width).
  Han et al. 2016, "EIE: Efficient Inference Engine on Compressed Deep Neural Network",
    ISCA 2016 (4-bit relative indices interleaved with 4-bit values, padding zeros).
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

__all__ = [
    "ENCODINGS",
    "Encoded",
    "choose",
    "decode",
    "encode",
    "entry_count",
    "field_lengths",
    "pack_nibbles",
    "pack_values",
    "unpack_nibbles",
    "unpack_values",
    "valid_encodings",
    "value_bits",
]

ENCODINGS = ("int8", "int4", "bitmap", "gaps")
MIN_BITS, MAX_BITS = 2, 8
MAX_GAP = 15  # the largest gap a 4-bit index holds; a filler entry covers MAX_GAP + 1 positions


class Encoded(NamedTuple):
    """One packed tensor. n: number of codes; count: number of stored values (n for dense,
    nnz for bitmap, entries incl. fillers for gaps); fields: name -> uint8[length]."""

    encoding: str
    bits: int
    n: int
    count: int
    fields: dict[str, np.ndarray]

    @property
    def nbytes(self) -> int:
        """Total bytes of the fields (what the tensor costs in an artifact, before alignment)."""
        return sum(int(f.nbytes) for f in self.fields.values())


def _check_bits(bits) -> int:
    if isinstance(bits, bool) or not isinstance(bits, int | np.integer):
        raise ValueError(f"bits: expected an int in {MIN_BITS}..{MAX_BITS}, got {bits!r}")
    if not MIN_BITS <= bits <= MAX_BITS:
        raise ValueError(f"bits: expected {MIN_BITS}..{MAX_BITS}, got {bits}")
    return int(bits)


def value_bits(bits: int) -> int:
    """Width of the value layout for `bits`-bit codes: 4 if bits <= 4, else 8."""
    return 4 if _check_bits(bits) <= 4 else 8


def valid_encodings(bits: int) -> tuple[str, ...]:
    """The encodings that can hold `bits`-bit codes, in `choose`'s order of preference."""
    dense = ("int4",) if value_bits(bits) == 4 else ()
    return (*dense, "int8", "bitmap", "gaps")


def _check_codes(codes, bits: int) -> np.ndarray:
    """codes as a flat int8 array, checked to lie on the symmetric `bits`-bit levels."""
    if not isinstance(codes, np.ndarray) or codes.dtype != np.int8:
        got = codes.dtype if isinstance(codes, np.ndarray) else type(codes).__name__
        raise ValueError(f"codes: expected an int8 numpy array, got {got}")
    flat = codes.ravel()
    q = 2 ** (bits - 1) - 1
    if flat.size and (int(flat.min()) < -q or int(flat.max()) > q):
        bad = flat[(flat < -q) | (flat > q)][0]
        raise ValueError(f"codes: expected {bits}-bit levels in [-{q}, {q}], got {bad}")
    return flat


def pack_nibbles(nibbles: np.ndarray) -> np.ndarray:
    """uint8[ceil(c/2)] from c values in 0..15: element 2i low nibble, 2i+1 high, pad 0."""
    nib = np.asarray(nibbles, dtype=np.uint8)
    assert nib.ndim == 1 and (nib.size == 0 or int(nib.max()) <= 15), nib
    if nib.size % 2:
        nib = np.append(nib, np.uint8(0))
    return (nib[0::2] | (nib[1::2] << 4)).astype(np.uint8)


def unpack_nibbles(data: np.ndarray, count: int) -> np.ndarray:
    """uint8[count] of values 0..15, the inverse of `pack_nibbles`. data: uint8[ceil(count/2)];
    ValueError on a wrong length or a nonzero pad nibble."""
    data = np.asarray(data, dtype=np.uint8)
    if data.shape != ((count + 1) // 2,):
        raise ValueError(f"expected {(count + 1) // 2} bytes for {count} nibbles, got {data.shape}")
    nib = np.empty(2 * data.size, dtype=np.uint8)
    nib[0::2] = data & 0x0F
    nib[1::2] = data >> 4
    if count % 2 and nib[-1]:
        raise ValueError(f"pad nibble after {count} nibbles is {int(nib[-1])}, expected 0")
    return nib[:count]


def pack_values(values: np.ndarray, bits: int) -> np.ndarray:
    """values: int8[c] (on `bits`-bit levels) -> uint8 bytes in the value layout of `bits`:
    ceil(c/2) two's-complement nibbles (low first) for bits <= 4, else c bytes."""
    v = _check_codes(np.asarray(values), _check_bits(bits))
    if value_bits(bits) == 8:
        return v.view(np.uint8).copy()
    return pack_nibbles(v.view(np.uint8) & 0x0F)


def unpack_values(data: np.ndarray, count: int, bits: int) -> np.ndarray:
    """int8[count] from `data` in the value layout of `bits` (the inverse of `pack_values`).
    ValueError on a wrong length, nonzero padding or a value off the `bits`-bit levels."""
    return _unpack(data, count, bits, value_bits(bits))


def _unpack(data: np.ndarray, count: int, bits: int, width: int) -> np.ndarray:
    """int8[count] of `bits`-bit levels stored `width` (4 or 8) bits each."""
    data = np.asarray(data, dtype=np.uint8)
    if width == 8:
        if data.shape != (count,):
            raise ValueError(f"expected {count} bytes for {count} 8-bit values, got {data.shape}")
        v = data.view(np.int8).copy()
    else:
        nib = unpack_nibbles(data, count).astype(np.int8)
        v = np.where(nib >= 8, nib - 16, nib).astype(np.int8)  # sign-extend the nibble
    q = 2 ** (bits - 1) - 1
    if v.size and (int(v.min()) < -q or int(v.max()) > q):
        bad = v[(v < -q) | (v > q)][0]
        raise ValueError(f"stored value {bad} is off the {bits}-bit levels [-{q}, {q}]")
    return v


def _gap_entries(flat: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(gaps uint8[count], values int8[count]) of the gap code of flat codes, fillers included."""
    pos = np.flatnonzero(flat)
    gap = np.diff(pos, prepend=-1) - 1  # zeros before each nonzero, since its predecessor
    fillers = gap // (MAX_GAP + 1)  # each filler (gap 15, value 0) covers 16 positions
    per = fillers + 1  # entries emitted for each nonzero
    count = int(per.sum())
    gaps = np.full(count, MAX_GAP, dtype=np.uint8)
    values = np.zeros(count, dtype=np.int8)
    last = np.cumsum(per) - 1  # index of each nonzero's own entry, after its fillers
    gaps[last] = gap % (MAX_GAP + 1)
    values[last] = flat[pos]
    return gaps, values


def entry_count(codes: np.ndarray, encoding: str) -> int:
    """Number of stored values of `codes` under `encoding`: n for dense, nnz for bitmap,
    entries incl. fillers for gaps."""
    flat = np.asarray(codes).ravel()
    if encoding in ("int8", "int4"):
        return int(flat.size)
    if encoding == "bitmap":
        return int(np.count_nonzero(flat))
    if encoding == "gaps":
        gap = np.diff(np.flatnonzero(flat), prepend=-1) - 1
        return int((gap // (MAX_GAP + 1) + 1).sum())
    raise ValueError(f"encoding: expected one of {ENCODINGS}, got {encoding!r}")


def field_lengths(encoding: str, bits: int, n: int, count: int) -> dict[str, int]:
    """Byte length of every field of an encoding with these sizes; ValueError if the encoding
    is unknown or cannot hold `bits`-bit codes, or if count is impossible for n."""
    if encoding not in ENCODINGS:
        raise ValueError(f"encoding: expected one of {ENCODINGS}, got {encoding!r}")
    if encoding not in valid_encodings(bits):
        raise ValueError(f"encoding {encoding!r} cannot hold {bits}-bit codes (expected bits <= 4)")
    for name, val in (("n", n), ("count", count)):
        if isinstance(val, bool) or not isinstance(val, int | np.integer) or val < 0:
            raise ValueError(f"{name}: expected an int >= 0, got {val!r}")
    vb = value_bits(bits)

    def values_len(c: int) -> int:
        return (c + 1) // 2 if vb == 4 else c

    if encoding in ("int8", "int4"):
        if count != n:
            raise ValueError(f"{encoding}: expected count == n == {n}, got count {count}")
        return {"values": n if encoding == "int8" else (n + 1) // 2}
    if encoding == "bitmap":
        if count > n:
            raise ValueError(f"bitmap: expected count (nnz) <= n == {n}, got {count}")
        return {"bitmap": (n + 7) // 8, "values": values_len(count)}
    if count > n:  # every entry sits on its own position
        raise ValueError(f"gaps: expected count (entries) <= n == {n}, got {count}")
    return {"gaps": (count + 1) // 2, "values": values_len(count)}


def encode(codes: np.ndarray, bits: int, encoding: str) -> Encoded:
    """codes: int8[...] on symmetric `bits`-bit levels -> `Encoded` with `encoding`'s fields.

    ValueError for a wrong dtype, bits outside 2..8, codes off the levels, an unknown encoding
    or "int4" with bits > 4.
    """
    bits = _check_bits(bits)
    flat = _check_codes(codes, bits)
    n = int(flat.size)
    if encoding not in ENCODINGS:
        raise ValueError(f"encoding: expected one of {ENCODINGS}, got {encoding!r}")
    if encoding not in valid_encodings(bits):
        raise ValueError(f"encoding {encoding!r} cannot hold {bits}-bit codes (expected bits <= 4)")
    if encoding == "int8":
        fields = {"values": flat.view(np.uint8).copy()}
        count = n
    elif encoding == "int4":
        fields = {"values": pack_values(flat, bits)}
        count = n
    elif encoding == "bitmap":
        nz = flat[flat != 0]
        fields = {
            "bitmap": np.packbits(flat != 0, bitorder="little"),
            "values": pack_values(nz, bits),
        }
        count = int(nz.size)
    else:
        gaps, values = _gap_entries(flat)
        fields = {"gaps": pack_nibbles(gaps), "values": pack_values(values, bits)}
        count = int(values.size)
    enc = Encoded(encoding, bits, n, count, fields)
    assert {k: v.size for k, v in fields.items()} == field_lengths(encoding, bits, n, count), enc
    return enc


def decode(enc: Encoded) -> np.ndarray:
    """The reference decoder: int8[n] codes from an `Encoded` (flat; reshape with the tensor's
    shape). ValueError on anything `encode` would not have produced: field names, lengths or
    dtypes, nonzero padding bits, values off the levels, a bitmap whose popcount is not `count`
    or that marks a stored 0, a gap entry past n, a 0-valued gap entry that is not a filler
    (gap 15) or that ends the list. So decode(enc) succeeds iff encode(decode(enc)) == enc."""
    n, count, bits = enc.n, enc.count, enc.bits
    lengths = field_lengths(enc.encoding, bits, n, count)
    f = {k: np.asarray(v) for k, v in enc.fields.items()}
    want = {k: (v,) for k, v in lengths.items()}
    got = {k: v.shape for k, v in f.items()}
    if got != want:
        raise ValueError(f"{enc.encoding} fields: expected shapes {want}, got {got}")
    if any(v.dtype != np.uint8 for v in f.values()):
        dtypes = {k: str(v.dtype) for k, v in f.items()}
        raise ValueError(f"fields: expected uint8 arrays, got {dtypes}")
    if enc.encoding in ("int8", "int4"):
        return _unpack(f["values"], n, bits, 8 if enc.encoding == "int8" else 4)
    values = unpack_values(f["values"], count, bits)
    out = np.zeros(n, dtype=np.int8)
    if enc.encoding == "bitmap":
        mask = np.unpackbits(f["bitmap"], bitorder="little").astype(bool)
        if mask[n:].any():
            raise ValueError(f"bitmap: padding bits after the {n} codes must be 0")
        mask = mask[:n]
        if int(mask.sum()) != count:
            raise ValueError(f"bitmap: {int(mask.sum())} bits set, expected count {count}")
        if not values.all():
            raise ValueError("bitmap: a stored value is 0 (only nonzero codes are stored)")
        out[mask] = values
        return out
    gaps = unpack_nibbles(f["gaps"], count)
    zero = values == 0
    if (zero & (gaps != MAX_GAP)).any() or (count and zero[-1]):
        raise ValueError(f"gaps: a 0 value must be a filler (gap {MAX_GAP}) before a nonzero")
    pos = np.cumsum(gaps.astype(np.int64) + 1) - 1  # entry j at sum_{i<=j}(gap_i + 1) - 1
    if count and int(pos[-1]) >= n:
        raise ValueError(f"gaps: entry at position {int(pos[-1])}, past the {n} codes")
    out[pos] = values
    return out


def choose(codes: np.ndarray, bits: int) -> Encoded:
    """The smallest valid encoding of `codes` (int8[...] on `bits`-bit levels); ties go to the
    dense form, then bitmap, then gaps (the order of `valid_encodings`)."""
    bits = _check_bits(bits)
    flat = _check_codes(codes, bits)
    n, nnz = int(flat.size), int(np.count_nonzero(flat))
    sizes = {}
    for name in valid_encodings(bits):
        count = entry_count(flat, name) if name == "gaps" else (nnz if name == "bitmap" else n)
        sizes[name] = sum(field_lengths(name, bits, n, count).values())
    best = min(sizes, key=sizes.__getitem__)  # first of the smallest: the order breaks ties
    return encode(codes, bits, best)
