"""How one tensor of low-bit integer codes is packed into bytes: dense, bitmap, gap-coded or
Huffman-coded.

Input: `codes`, an int8 array of any shape, read flat in row-major order (n = codes.size), of
symmetric `bits`-bit levels: every value in [-q, q] with q = 2^(bits-1) - 1, bits in 2..8.

Value layout (`value_bits(bits)`): how a sequence of values is stored.

- 4-bit, for bits <= 4: two's-complement nibbles, two per byte; element 2i in the LOW nibble,
  element 2i+1 in the HIGH nibble; an odd count leaves the last high nibble 0.
  Example: values [1, -1, 0, 7] -> nibbles 1, F, 0, 7 -> bytes [0xF1, 0x70].
- 8-bit, for bits > 4: one byte per value, the int8 bit pattern read as uint8 (-1 -> 0xFF).

Encodings (every field a 1-D uint8 array; `count` = number of stored values, except for
"huffman" where it is the stream's length in bytes):

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
- "huffman": every code entropy-coded with a canonical Huffman code of its tensor, in blocks
             that decode independently (lanes of the weight decoder). Symbol s = code + q, an
             alphabet of S = 2q + 1 = 2^bits - 1 symbols. Fields:
             "lengths": the codeword length of every symbol, 0 (absent) or 1..HUFFMAN_MAX_LEN
               (12), S unsigned nibbles packed like the gap nibbles (low nibble first; S is
               odd, so the last high nibble is a 0 pad): 2^(bits-1) bytes.
             "blocks": the bit length of each block of HUFFMAN_BLOCK (256) codes (the last
               block holds the remaining n - 256 * (ceil(n/256) - 1)), uint16 little-endian:
               2 * ceil(n/256) bytes. Block k starts at bit sum_{j<k} blocks[j] of the stream.
             "stream": the codewords of codes[0], codes[1], ... back to back, no gap between
               blocks, in a big-endian bit string: stream bit i is bit 7 - (i % 8) of byte
               i // 8 (`np.packbits`' default order), each codeword written from its most
               significant bit; zero bits pad the end to a whole byte; count = its bytes.
             The lengths are `huffman_lengths` of the symbol counts: an optimal prefix code
             with codewords of at most 12 bits (package-merge); a tensor of one distinct code
             gives it length 1. Codewords are canonical: present symbols sorted by (length,
             symbol) get consecutive codes, i.e. the i-th one's codeword is the integer
             sum_{j<i} 2^(12 - l_j) >> (12 - l_i) written in l_i bits (DEFLATE's rule). So the
             next 12 bits at a codeword's start, read as a big-endian integer t, pick it by
             a table lookup: it is the last symbol in that order whose left-aligned code
             sum_{j<i} 2^(12 - l_j) is <= t. Example (bits 2, codes [0, 0, 1, -1, 0]):
             symbols 1 1 2 0 1, lengths 0: 2, 1: 1, 2: 2 -> codewords 1 = "0", 0 = "10",
             2 = "11"; stream "0 0 11 10 0" + 000 pad = [0x38]; lengths [0x12, 0x02];
             blocks [7, 0] (one block of 7 bits); count 1.

Sizes in bytes, with v(c) = ceil(c/2) for the 4-bit layout and c for the 8-bit one:
int8 n, int4 ceil(n/2), bitmap ceil(n/8) + v(nnz), gaps ceil(count/2) + v(count), huffman
2^(bits-1) + 2 ceil(n/256) + ceil(sum_s freq_s l_s / 8). `choose` takes the smallest valid one
(ties: dense, then bitmap, then gaps, then huffman).

`count` cannot be recovered from the field lengths (the nibble padding of an odd count), so it
travels with the fields in `Encoded` and in the artifact's manifest. `decode` is the NumPy
reference decoder the device-side decoders are tested against bit for bit; it rejects any
non-canonical input (nonzero padding bits, a nibble of -8, a gap past the end, Huffman lengths
other than those `encode` would write, a block whose bits disagree with its stated length).

References:
  Han, Mao, Dally 2016, "Deep Compression: Compressing Deep Neural Networks with Pruning,
    Trained Quantization and Huffman Coding", ICLR 2016 (relative-index sparse storage with
    filler zeros where a gap exceeds the index width; Huffman coding of the quantized weights).
  Han et al. 2016, "EIE: Efficient Inference Engine on Compressed Deep Neural Network",
    ISCA 2016 (4-bit relative indices interleaved with 4-bit values, padding zeros).
  Huffman 1952, "A Method for the Construction of Minimum-Redundancy Codes", Proc. IRE 40(9).
  Larmore and Hirschberg 1990, "A Fast Algorithm for Optimal Length-Limited Huffman Codes",
    JACM 37(3) (package-merge).
  Moffat and Turpin 1997, "On the Implementation of Minimum Redundancy Prefix Codes", IEEE
    Trans. Communications 45(10) (canonical codes, table-driven decoding); RFC 1951 (DEFLATE)
    section 3.2.2 (the canonical code assignment).
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
    "huffman_lengths",
    "pack_nibbles",
    "pack_values",
    "unpack_nibbles",
    "unpack_values",
    "valid_encodings",
    "value_bits",
]

ENCODINGS = ("int8", "int4", "bitmap", "gaps", "huffman")
MIN_BITS, MAX_BITS = 2, 8
MAX_GAP = 15  # the largest gap a 4-bit index holds; a filler entry covers MAX_GAP + 1 positions
HUFFMAN_MAX_LEN = 12  # longest codeword in bits: the decoder's table has 2^12 entries
HUFFMAN_BLOCK = 256  # codes per independently decodable block of a "huffman" stream
# a block's bit length must fit its uint16, and a length its nibble
assert HUFFMAN_BLOCK * HUFFMAN_MAX_LEN < 2**16 and HUFFMAN_MAX_LEN <= 15


class Encoded(NamedTuple):
    """One packed tensor. n: number of codes; count: number of stored values (n for dense,
    nnz for bitmap, entries incl. fillers for gaps) or, for huffman, the stream's bytes;
    fields: name -> uint8[length]."""

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
    return (*dense, "int8", "bitmap", "gaps", "huffman")


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
    """The `count` of `codes` under `encoding`: stored values (n for dense, nnz for bitmap,
    entries incl. fillers for gaps) or, for huffman, the stream's bytes."""
    flat = np.asarray(codes).ravel()
    if encoding in ("int8", "int4"):
        return int(flat.size)
    if encoding == "bitmap":
        return int(np.count_nonzero(flat))
    if encoding == "gaps":
        gap = np.diff(np.flatnonzero(flat), prepend=-1) - 1
        return int((gap // (MAX_GAP + 1) + 1).sum())
    if encoding == "huffman":
        # the lengths depend on the counts in symbol order only, i.e. of the codes by value
        _, freq = np.unique(flat, return_counts=True)
        return (int(np.dot(freq, huffman_lengths(freq))) + 7) // 8
    raise ValueError(f"encoding: expected one of {ENCODINGS}, got {encoding!r}")


def huffman_lengths(freq, max_len: int = HUFFMAN_MAX_LEN) -> np.ndarray:
    """Codeword lengths uint8[S] of an optimal prefix code for symbol counts freq int[S] >= 0
    whose codewords are at most `max_len` bits: the length-limited Huffman code found by
    package-merge (Larmore and Hirschberg 1990), so exactly Huffman's cost when his code fits.

    A count of 0 gets length 0 (absent); a single present symbol gets length 1; otherwise the
    code is complete (sum_s 2^-l_s = 1). Ties are broken deterministically (symbols ordered by
    (count, index), a symbol before a package of equal weight), so the same counts always give
    the same lengths: `decode` relies on it to accept only canonical input. ValueError when more
    than 2^max_len symbols are present.
    """
    freq = np.asarray(freq)
    if freq.ndim != 1 or (freq.size and (freq.dtype.kind not in "iu" or int(freq.min()) < 0)):
        raise ValueError(f"freq: expected a 1-D array of counts >= 0, got {freq!r:.80}")
    out = np.zeros(freq.size, np.uint8)
    present = np.flatnonzero(freq)
    m = present.size
    if m > 2**max_len:
        raise ValueError(f"{m} symbols need codewords over max_len {max_len} bits")
    if m <= 1:
        out[present] = 1
        return out
    order = present[np.lexsort((present, freq[present]))]  # by count, ties by symbol
    leaf_w = freq[order].astype(np.int64)
    leaf_c = np.eye(m, dtype=np.int32)  # item -> how often each symbol is in it
    w, c = leaf_w, leaf_c
    for _ in range(max_len - 1):  # package pairs of the list, merge with the leaves
        k = w.size // 2 * 2
        all_w = np.concatenate([leaf_w, w[0:k:2] + w[1:k:2]])
        all_c = np.concatenate([leaf_c, c[0:k:2] + c[1:k:2]])
        idx = np.argsort(all_w, kind="stable")  # leaves first among equal weights
        w, c = all_w[idx], all_c[idx]
    out[order] = c[: 2 * m - 2].sum(axis=0)  # the cheapest 2m - 2 items
    assert int(out.max()) <= max_len and _kraft(out, max_len) == 2**max_len, out
    return out


def _kraft(lengths: np.ndarray, max_len: int = HUFFMAN_MAX_LEN) -> int:
    """2^max_len * sum over present symbols of 2^-l (2^max_len for a complete code)."""
    ln = lengths[lengths > 0].astype(np.int64)
    return int(np.sum(np.left_shift(1, max_len - ln)))


def _canonical_codes(lengths: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(order int64[m], left int64[m]): the present symbols sorted by (length, symbol) and
    their left-aligned codes sum_{j<i} 2^(L - l_j) (L = HUFFMAN_MAX_LEN). Symbol order[i]'s
    codeword is left[i] >> (L - l) in l = lengths[order[i]] bits."""
    present = np.flatnonzero(lengths)
    order = present[np.lexsort((present, lengths[present]))]
    size = np.left_shift(1, HUFFMAN_MAX_LEN - lengths[order].astype(np.int64))
    return order, np.cumsum(size) - size


def _huffman_table(lengths: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The decoder's table: (symbol int64[2^L], length int64[2^L]) of the codeword that the
    next L = HUFFMAN_MAX_LEN stream bits t (big-endian) start with; length 0 where t starts
    no codeword (an incomplete code). lengths: a prefix code's (Kraft sum <= 1)."""
    order, left = _canonical_codes(lengths)
    span = np.diff(np.append(left, _kraft(lengths)))  # table entries of each codeword
    sym = np.zeros(2**HUFFMAN_MAX_LEN, np.int64)
    ln = np.zeros(2**HUFFMAN_MAX_LEN, np.int64)
    end = int(span.sum())
    sym[:end] = np.repeat(order, span)
    ln[:end] = np.repeat(lengths[order].astype(np.int64), span)
    return sym, ln


def _huffman_encode(flat: np.ndarray, bits: int) -> tuple[dict[str, np.ndarray], int]:
    """(fields, count) of flat int8 codes in the "huffman" layout (module docstring)."""
    q = 2 ** (bits - 1) - 1
    n = flat.size
    sym = flat.astype(np.int64) + q
    lengths = huffman_lengths(np.bincount(sym, minlength=2 * q + 1))
    order, left = _canonical_codes(lengths)
    code = np.zeros(2 * q + 1, np.int64)
    code[order] = left >> (HUFFMAN_MAX_LEN - lengths[order].astype(np.int64))
    ln = lengths[sym].astype(np.int64)  # -> [n]
    k = np.arange(HUFFMAN_MAX_LEN)
    shift = np.maximum(ln[:, None] - 1 - k, 0)  # bit k of a codeword, from its MSB
    bitmat = (code[sym][:, None] >> shift) & 1  # -> [n, L]
    stream = np.packbits(bitmat[k < ln[:, None]].astype(np.uint8))  # MSB-first bytes
    nb = -(-n // HUFFMAN_BLOCK)
    per_block = np.zeros(nb * HUFFMAN_BLOCK, np.int64)
    per_block[:n] = ln
    blocks = per_block.reshape(nb, HUFFMAN_BLOCK).sum(axis=1)
    fields = {
        "lengths": pack_nibbles(lengths),
        "blocks": blocks.astype("<u2").view(np.uint8),
        "stream": stream,
    }
    return fields, int(stream.size)


def _huffman_decode(f: dict[str, np.ndarray], bits: int, n: int, count: int) -> np.ndarray:
    """int8[n] from checked-length "huffman" fields; ValueError on non-canonical input."""
    q = 2 ** (bits - 1) - 1
    lengths = unpack_nibbles(f["lengths"], 2 * q + 1)
    if int(lengths.max()) > HUFFMAN_MAX_LEN:
        raise ValueError(f"huffman: a codeword length over {HUFFMAN_MAX_LEN}: {lengths.tolist()}")
    if _kraft(lengths) > 2**HUFFMAN_MAX_LEN:
        raise ValueError(f"huffman: lengths {lengths.tolist()} are no prefix code (Kraft sum > 1)")
    blocks = f["blocks"].view("<u2").astype(np.int64)
    total = int(blocks.sum())
    if (total + 7) // 8 != count:
        raise ValueError(f"huffman: blocks add up to {total} bits, stream has {count} bytes")
    stream = np.unpackbits(f["stream"])  # MSB first
    if stream[total:].any():
        raise ValueError(f"huffman: padding bits after the {total} stream bits must be 0")
    table_sym, table_len = _huffman_table(lengths)
    # the table entry at every stream bit: the next L bits as a big-endian integer
    padded = np.concatenate([stream[:total], np.zeros(HUFFMAN_MAX_LEN, np.uint8)])
    peek = np.zeros(total, np.int64)
    for k in range(HUFFMAN_MAX_LEN):
        peek = (peek << 1) | padded[k : k + total]
    at_sym, at_len = table_sym[peek], table_len[peek]
    nb = blocks.size
    ends = np.cumsum(blocks)
    pos = ends - blocks  # -> [nb], each block's next codeword
    out = np.zeros((nb, HUFFMAN_BLOCK), np.int64)
    last = n - (nb - 1) * HUFFMAN_BLOCK  # codes of the last block
    for j in range(HUFFMAN_BLOCK):
        m = nb if j < last else nb - 1  # blocks still decoding
        p = pos[:m]
        over = np.flatnonzero(p >= ends[:m])
        if over.size:
            k = int(over[0])
            raise ValueError(f"huffman: block {k} runs out of its {blocks[k]} bits after {j} codes")
        ln = at_len[p]
        if not ln.all():
            raise ValueError(f"huffman: stream bit {int(p[ln == 0][0])} starts no codeword")
        out[:m, j] = at_sym[p]
        pos[:m] = p + ln
    if (pos != ends).any():
        k = int(np.flatnonzero(pos != ends)[0])
        raise ValueError(
            f"huffman: block {k} decodes in {pos[k] - ends[k] + blocks[k]} bits, "
            f"blocks says {blocks[k]}"
        )
    sym = out.reshape(-1)[:n]
    want = huffman_lengths(np.bincount(sym, minlength=2 * q + 1))
    if not np.array_equal(lengths, want):
        raise ValueError(
            f"huffman: lengths {lengths.tolist()} are not the code of the decoded counts "
            f"(expected {want.tolist()})"
        )
    return (sym - q).astype(np.int8)


def field_lengths(encoding: str, bits: int, n: int, count: int) -> dict[str, int]:
    """Byte length of every field of an encoding with these sizes (count: see `Encoded`);
    ValueError if the encoding is unknown or cannot hold `bits`-bit codes, or if count is
    impossible for n (for huffman: outside ceil(n/8)..ceil(n * HUFFMAN_MAX_LEN / 8))."""
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
    if encoding == "huffman":
        lo, hi = (n + 7) // 8, (n * HUFFMAN_MAX_LEN + 7) // 8  # 1..12 bits per code
        if not lo <= count <= hi:
            raise ValueError(
                f"huffman: expected count (stream bytes) in {lo}..{hi} for n == {n}, got {count}"
            )
        nb = -(-n // HUFFMAN_BLOCK)
        return {"lengths": 2 ** (bits - 1), "blocks": 2 * nb, "stream": count}
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
    elif encoding == "gaps":
        gaps, values = _gap_entries(flat)
        fields = {"gaps": pack_nibbles(gaps), "values": pack_values(values, bits)}
        count = int(values.size)
    else:
        fields, count = _huffman_encode(flat, bits)
    enc = Encoded(encoding, bits, n, count, fields)
    assert {k: v.size for k, v in fields.items()} == field_lengths(encoding, bits, n, count), enc
    return enc


def decode(enc: Encoded) -> np.ndarray:
    """The reference decoder: int8[n] codes from an `Encoded` (flat; reshape with the tensor's
    shape). ValueError on anything `encode` would not have produced: field names, lengths or
    dtypes, nonzero padding bits, values off the levels, a bitmap whose popcount is not `count`
    or that marks a stored 0, a gap entry past n, a 0-valued gap entry that is not a filler
    (gap 15) or that ends the list; for huffman, lengths over 12 or not a prefix code, block
    lengths that do not add up to the stream, bits that start no codeword, a block that does
    not decode in exactly its stated bits, lengths other than `huffman_lengths` of the decoded
    symbol counts. So decode(enc) succeeds iff encode(decode(enc)) == enc.

    Huffman blocks are decoded as the device does, one codeword of every block per step."""
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
    if enc.encoding == "huffman":
        return _huffman_decode(f, bits, n, count)
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


def choose(codes: np.ndarray, bits: int, entropy: bool = True) -> Encoded:
    """The smallest valid encoding of `codes` (int8[...] on `bits`-bit levels); ties go to the
    dense form, then bitmap, then gaps, then huffman (the order of `valid_encodings`). Sizes
    come from `field_lengths` and `entry_count`: only the chosen encoding is encoded.
    `entropy=False` leaves huffman out: a code change then changes only its own bytes, which
    keeps delta updates of fine-tuned models small (an entropy-coded stream shifts after it)."""
    bits = _check_bits(bits)
    flat = _check_codes(codes, bits)
    n, nnz = int(flat.size), int(np.count_nonzero(flat))
    sizes = {}
    for name in valid_encodings(bits):
        if name == "huffman" and not entropy:
            continue
        count = entry_count(flat, name) if name in ("gaps", "huffman") else n
        count = nnz if name == "bitmap" else count
        sizes[name] = sum(field_lengths(name, bits, n, count).values())
    best = min(sizes, key=sizes.__getitem__)  # first of the smallest: the order breaks ties
    return encode(codes, bits, best)
