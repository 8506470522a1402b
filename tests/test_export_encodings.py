"""export.encodings: hand-computed layouts, round trips at every bit width and sparsity, sizes,
`choose`, errors, and the reference decoder's canonical-form checks."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from export.encodings import (
    ENCODINGS,
    Encoded,
    choose,
    decode,
    encode,
    entry_count,
    field_lengths,
    huffman_lengths,
    pack_values,
    unpack_values,
    valid_encodings,
    value_bits,
)

SETTINGS = settings(max_examples=60, deadline=None, derandomize=True)


def qmax(bits: int) -> int:
    return 2 ** (bits - 1) - 1


def random_codes(rng: np.random.Generator, n: int, bits: int, zero_frac: float) -> np.ndarray:
    """int8[n] uniform nonzero levels of `bits`, each zeroed with probability zero_frac."""
    q = qmax(bits)
    mag = rng.integers(1, q + 1, size=n)
    sign = rng.choice([-1, 1], size=n)
    keep = rng.random(n) >= zero_frac
    return (mag * sign * keep).astype(np.int8)


def fields_list(enc: Encoded) -> dict[str, list[int]]:
    return {k: v.tolist() for k, v in enc.fields.items()}


# --- hand-computed layouts ------------------------------------------------------------------


def test_int4_layout_low_nibble_first():
    enc = encode(np.array([1, -1, 0, 7], np.int8), 4, "int4")
    assert fields_list(enc) == {"values": [0xF1, 0x70]}
    assert (enc.n, enc.count, enc.nbytes) == (4, 4, 2)


def test_int4_odd_count_pads_high_nibble_with_zero():
    enc = encode(np.array([-7, 3, -2], np.int8), 4, "int4")
    assert fields_list(enc) == {"values": [0x39, 0x0E]}  # -7 = 0x9, -2 = 0xE
    assert unpack_values(enc.fields["values"], 3, 4).tolist() == [-7, 3, -2]


def test_int8_layout_is_the_bit_pattern():
    enc = encode(np.array([[1, -1], [-127, 127]], np.int8), 8, "int8")
    assert fields_list(enc) == {"values": [0x01, 0xFF, 0x81, 0x7F]}
    # "int8" stores 8 bits per value whatever the bit width
    assert fields_list(encode(np.array([1, -1], np.int8), 2, "int8")) == {"values": [1, 255]}


def test_bitmap_layout():
    codes = np.array([1, -1, 0, 7], np.int8)
    enc = encode(codes, 4, "bitmap")
    assert fields_list(enc) == {"bitmap": [0b1011], "values": [0xF1, 0x07]}
    assert enc.count == 3
    codes9 = np.array([0, 0, 0, 0, 0, 0, 0, 0, -5], np.int8)  # bit 8 -> byte 1, bit 0
    assert fields_list(encode(codes9, 8, "bitmap")) == {"bitmap": [0, 1], "values": [0xFB]}


def test_gaps_layout():
    enc = encode(np.array([0, 3, 0, 0, -2], np.int8), 3, "gaps")  # entries (1, 3), (2, -2)
    assert fields_list(enc) == {"gaps": [0x21], "values": [0xE3]}
    assert enc.count == 2


def test_gaps_fillers_at_15_and_16_zeros():
    z15 = np.zeros(16, np.int8)
    z15[15] = 1  # 15 zeros: one entry with gap 15, no filler
    assert fields_list(encode(z15, 2, "gaps")) == {"gaps": [0x0F], "values": [0x01]}
    z16 = np.zeros(17, np.int8)
    z16[16] = 1  # 16 zeros: filler (15, 0) covers 16 positions, then (0, 1)
    assert fields_list(encode(z16, 2, "gaps")) == {"gaps": [0x0F], "values": [0x10]}
    z40 = np.zeros(40, np.int8)
    z40[[15, 32, 39]] = [1, -1, 1]  # (15, 1), filler (15, 0), (0, -1), (6, 1)
    enc = encode(z40, 2, "gaps")
    assert fields_list(enc) == {"gaps": [0xFF, 0x60], "values": [0x01, 0x1F]}
    assert enc.count == entry_count(z40, "gaps") == 4


def test_trailing_zeros_need_no_entry():
    codes = np.array([5] + [0] * 100, np.int8)
    enc = encode(codes, 8, "gaps")
    assert (enc.count, fields_list(enc)) == (1, {"gaps": [0], "values": [5]})
    assert encode(np.zeros(100, np.int8), 8, "gaps").nbytes == 0


def test_pack_values_helpers():
    v = np.array([-3, 2, 1], np.int8)
    assert pack_values(v, 3).tolist() == [0x2D, 0x01]
    assert pack_values(v, 5).tolist() == [0xFD, 0x02, 0x01]
    assert unpack_values(pack_values(v, 3), 3, 3).tolist() == v.tolist()
    assert value_bits(4) == 4 and value_bits(5) == 8


# --- round trips ---------------------------------------------------------------------------


@SETTINGS
@given(
    bits=st.integers(2, 8),
    n=st.integers(0, 300),
    zero_frac=st.sampled_from([0.0, 0.3, 0.9, 0.97, 1.0]) | st.floats(0, 1),
    seed=st.integers(0, 2**32 - 1),
)
def test_round_trip_every_encoding(bits, n, zero_frac, seed):
    codes = random_codes(np.random.default_rng(seed), n, bits, zero_frac)
    for name in valid_encodings(bits):
        enc = encode(codes, bits, name)
        assert enc.count == entry_count(codes, name)
        assert {k: v.size for k, v in enc.fields.items()} == field_lengths(name, bits, n, enc.count)
        assert all(v.dtype == np.uint8 and v.ndim == 1 for v in enc.fields.values())
        np.testing.assert_array_equal(decode(enc), codes)
    best = choose(codes, bits)
    assert best.nbytes == min(encode(codes, bits, e).nbytes for e in valid_encodings(bits))
    np.testing.assert_array_equal(decode(best), codes)


@pytest.mark.parametrize("bits", range(2, 9))
@pytest.mark.parametrize(
    "codes",
    [
        [],
        [0],
        [1],
        [-1, 0, 1],  # odd n
        [1] * 33,  # no zeros
        [0] * 33,  # all zero
        [0] * 15 + [1],  # a run of exactly 15
        [0] * 16 + [-1],  # exactly 16
        [1] + [0] * 47 + [1] + [0] * 5,  # run of 47 (2 fillers + gap 15), trailing zeros
        [0] * 32 + [1, 1],  # run of 32: 2 fillers, gap 0
    ],
    ids=["empty", "zero", "one", "odd", "dense", "allzero", "run15", "run16", "run47", "run32"],
)
def test_round_trip_edge_cases(bits, codes):
    codes = np.array(codes, np.int8)
    for name in valid_encodings(bits):
        np.testing.assert_array_equal(decode(encode(codes, bits, name)), codes)


def test_shape_is_read_row_major():
    codes = np.arange(-3, 3, dtype=np.int8).reshape(2, 3)
    enc = encode(codes, 3, "int4")
    assert enc.n == 6
    np.testing.assert_array_equal(decode(enc), codes.ravel())
    np.testing.assert_array_equal(decode(encode(codes.T, 3, "int4")), codes.T.ravel())


# --- sizes and choose ----------------------------------------------------------------------


def test_sizes():
    rng = np.random.default_rng(0)
    codes = random_codes(rng, 1001, 4, 0.5)
    nnz = int(np.count_nonzero(codes))
    assert encode(codes, 4, "int8").nbytes == 1001
    assert encode(codes, 4, "int4").nbytes == 501
    assert encode(codes, 4, "bitmap").nbytes == 126 + (nnz + 1) // 2
    assert encode(codes, 6, "bitmap").nbytes == 126 + nnz
    count = entry_count(codes, "gaps")
    assert encode(codes, 4, "gaps").nbytes == 2 * ((count + 1) // 2)
    assert encode(codes, 6, "gaps").nbytes == (count + 1) // 2 + count


def test_choose_gaps_when_sparse_dense_when_full():
    rng = np.random.default_rng(1)
    sparse = random_codes(rng, 4096, 4, 0.9)
    assert choose(sparse, 4).encoding == "gaps"
    # small: huffman's 8 bytes of lengths and 2 per block do not pay off
    assert choose(random_codes(rng, 64, 4, 0.0), 4).encoding == "int4"
    # 14 nonzero levels, uniform: 2 codewords of 3 bits, 12 of 4 -> 3.86 bits a code
    assert choose(random_codes(rng, 4096, 4, 0.0), 4).encoding == "huffman"
    assert choose(random_codes(rng, 4096, 8, 0.0), 8).encoding == "int8"
    assert choose(random_codes(rng, 4096, 8, 0.6), 8).encoding == "bitmap"


def test_choose_ties_prefer_dense_then_bitmap():
    # n = 1, nonzero, 4-bit: int4 1 byte, bitmap 1 + 1, gaps 1 + 1
    assert choose(np.array([3], np.int8), 4).encoding == "int4"
    assert choose(np.array([], np.int8), 8).encoding == "int8"  # all sizes 0
    # 16 codes, one nonzero at 0, 8-bit: bitmap 2 + 1 = 3; gaps 1 + 1 = 2 -> gaps
    one = np.zeros(16, np.int8)
    one[0] = 1
    assert choose(one, 8).encoding == "gaps"
    # 8 codes, nonzero in front, 8-bit: bitmap 1 + 1 == gaps 1 + 1 -> bitmap
    assert choose(one[:8], 8).encoding == "bitmap"


# --- errors ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "codes, bits, encoding, match",
    [
        (np.array([1, 2], np.int16), 4, "int8", "int8 numpy array, got int16"),
        ([1, 2], 4, "int8", "int8 numpy array, got list"),
        (np.array([8], np.int8), 4, "int4", r"levels in \[-7, 7\], got 8"),
        (np.array([-128], np.int8), 8, "int8", r"levels in \[-127, 127\], got -128"),
        (np.array([2], np.int8), 2, "gaps", r"levels in \[-1, 1\], got 2"),
        (np.array([1], np.int8), 1, "int8", "bits: expected 2..8, got 1"),
        (np.array([1], np.int8), 9, "int8", "bits: expected 2..8, got 9"),
        (np.array([1], np.int8), 4.0, "int8", "bits: expected an int"),
        (np.array([1], np.int8), 5, "int4", "cannot hold 5-bit codes"),
        (np.array([1], np.int8), 4, "rle", "expected one of"),
    ],
)
def test_encode_errors(codes, bits, encoding, match):
    with pytest.raises(ValueError, match=match):
        encode(codes, bits, encoding)


@pytest.mark.parametrize(
    "enc, match",
    [
        (Encoded("int4", 4, 3, 3, {"values": np.array([0x11, 0x11], np.uint8)}), "pad nibble"),
        (Encoded("int4", 4, 2, 2, {"values": np.array([0x08], np.uint8)}), "-8 is off"),
        (Encoded("int8", 3, 1, 1, {"values": np.array([0x04], np.uint8)}), "4 is off"),
        (Encoded("int8", 8, 2, 2, {"values": np.array([1], np.uint8)}), "expected shapes"),
        (Encoded("int8", 8, 1, 1, {"data": np.array([1], np.uint8)}), "expected shapes"),
        (Encoded("int8", 8, 1, 1, {"values": np.array([1], np.int8)}), "uint8 arrays"),
        (Encoded("int8", 8, 2, 1, {"values": np.array([1], np.uint8)}), "count == n"),
        (
            Encoded(
                "bitmap",
                8,
                3,
                1,
                {"bitmap": np.array([0x09], np.uint8), "values": np.array([1], np.uint8)},
            ),
            "padding bits",
        ),
        (
            Encoded(
                "bitmap",
                8,
                4,
                1,
                {"bitmap": np.array([0x03], np.uint8), "values": np.array([1], np.uint8)},
            ),
            "2 bits set",
        ),
        (
            Encoded(
                "bitmap",
                8,
                4,
                1,
                {"bitmap": np.array([0x01], np.uint8), "values": np.array([0], np.uint8)},
            ),
            "stored value is 0",
        ),
        (
            Encoded(
                "gaps",
                8,
                4,
                1,
                {"gaps": np.array([0x04], np.uint8), "values": np.array([1], np.uint8)},
            ),
            "past the 4 codes",
        ),
        (
            Encoded(
                "gaps",
                8,
                20,
                2,
                {"gaps": np.array([0x03], np.uint8), "values": np.array([0, 1], np.uint8)},
            ),
            "must be a filler",
        ),
        (
            Encoded(
                "gaps",
                8,
                20,
                1,
                {"gaps": np.array([0x0F], np.uint8), "values": np.array([0], np.uint8)},
            ),
            "must be a filler",
        ),
        (
            Encoded(
                "gaps",
                8,
                2,
                3,
                {"gaps": np.array([0, 0], np.uint8), "values": np.array([1, 1, 1], np.uint8)},
            ),
            "count",
        ),
    ],
)
def test_decode_rejects_noncanonical(enc, match):
    with pytest.raises(ValueError, match=match):
        decode(enc)


@SETTINGS
@given(
    encoding=st.sampled_from(ENCODINGS),
    bits=st.integers(2, 8),
    n=st.integers(0, 40),
    count=st.integers(0, 40),
    data=st.data(),
)
def test_decode_succeeds_iff_canonical(encoding, bits, n, count, data):
    """Arbitrary field bytes: decode either raises ValueError or returns codes whose encoding
    is exactly the input (the reference decoder accepts canonical input only)."""
    try:
        lengths = field_lengths(encoding, bits, n, count)
    except ValueError:
        return
    fields = {
        k: np.frombuffer(data.draw(st.binary(min_size=m, max_size=m)), np.uint8)
        for k, m in lengths.items()
    }
    enc = Encoded(encoding, bits, n, count, fields)
    try:
        codes = decode(enc)
    except ValueError:
        return
    again = encode(codes, bits, encoding)
    assert (again.n, again.count) == (n, count)
    assert fields_list(again) == fields_list(enc)


# --- huffman -------------------------------------------------------------------------------


def skewed_codes(rng: np.random.Generator, n: int, bits: int, width: float) -> np.ndarray:
    """int8[n]: Laplace-distributed levels of `bits` (width in steps), clipped: a trained
    layer's peaked weight histogram."""
    q = qmax(bits)
    return np.clip(np.round(rng.laplace(0.0, width, n)), -q, q).astype(np.int8)


def heap_huffman_cost(freq) -> int:
    """sum_s freq_s * l_s of Huffman's own (unlimited) code, by the textbook heap merge."""
    import heapq

    heap = [int(f) for f in freq if f > 0]
    if len(heap) == 1:
        return heap[0]
    heapq.heapify(heap)
    cost = 0
    while len(heap) > 1:
        merged = heapq.heappop(heap) + heapq.heappop(heap)
        cost += merged  # every merge adds one bit to each of its symbols
        heapq.heappush(heap, merged)
    return cost


def test_huffman_layout_of_the_docstring_example():
    enc = encode(np.array([0, 0, 1, -1, 0], np.int8), 2, "huffman")
    # symbols 1 1 2 0 1; lengths 2, 1, 2; codewords 1 = "0", 0 = "10", 2 = "11"
    assert fields_list(enc) == {"lengths": [0x12, 0x02], "blocks": [7, 0], "stream": [0x38]}
    assert (enc.n, enc.count) == (5, 1)
    assert decode(enc).tolist() == [0, 0, 1, -1, 0]


def test_huffman_codewords_are_canonical_and_msb_first():
    # counts 8, 4, 2, 1, 1 on codes 0, 1, -1, 2, -2 -> lengths 1, 2, 3, 4, 4
    codes = np.array([0] * 8 + [1] * 4 + [-1] * 2 + [2, -2], np.int8)
    enc = encode(codes, 3, "huffman")  # symbols: code + 3
    lengths = [b >> s & 15 for b in enc.fields["lengths"].tolist() for s in (0, 4)][:7]
    assert lengths == [0, 4, 3, 1, 2, 4, 0]  # -3..3
    # canonical: 0 -> 0, 1 -> 10, -1 -> 110, -2 -> 1110, 2 -> 1111 (symbol 1 before 5)
    bits = "0" * 8 + "10" * 4 + "110" * 2 + "1111" + "1110"
    assert enc.fields["blocks"].view("<u2").tolist() == [len(bits)]
    padded = bits + "0" * (-len(bits) % 8)
    want = [int(padded[i : i + 8], 2) for i in range(0, len(padded), 8)]
    assert enc.fields["stream"].tolist() == want


@pytest.mark.parametrize("bits", range(2, 9))
@pytest.mark.parametrize("n", [0, 1, 255, 256, 257, 1000])
@pytest.mark.parametrize("kind", ["uniform", "skewed", "single", "zeros"])
def test_huffman_round_trip(bits, n, kind):
    rng = np.random.default_rng([bits, n, len(kind)])
    q = qmax(bits)
    codes = {
        "uniform": lambda: rng.integers(-q, q + 1, n).astype(np.int8),
        "skewed": lambda: skewed_codes(rng, n, bits, 0.3 * q),
        "single": lambda: np.full(n, -q, np.int8),
        "zeros": lambda: np.zeros(n, np.int8),
    }[kind]()
    enc = encode(codes, bits, "huffman")
    assert enc.count == entry_count(codes, "huffman")
    assert {k: v.size for k, v in enc.fields.items()} == field_lengths(
        "huffman", bits, n, enc.count
    )
    blocks = enc.fields["blocks"].view("<u2")
    assert blocks.size == -(-n // 256) and int(blocks.sum()) <= 8 * enc.count < blocks.sum() + 8
    np.testing.assert_array_equal(decode(enc), codes)
    if kind in ("single", "zeros") and n:  # one symbol: codeword "0", one bit a code
        assert enc.count == (n + 7) // 8 and not enc.fields["stream"].any()


def test_huffman_lengths_optimal_and_limited():
    rng = np.random.default_rng(3)
    for _ in range(200):
        s = int(rng.integers(2, 40))
        freq = rng.integers(0, 1000, s) * (rng.random(s) < 0.8)
        lengths = huffman_lengths(freq)
        present = freq > 0
        assert ((lengths > 0) == present).all()
        if present.sum() >= 2:
            assert np.sum(2.0 ** -lengths[present].astype(int)) == 1.0  # complete
        if present.sum() >= 1:
            # Huffman's cost when his code fits in 12 bits (it does for < 40 symbols and
            # counts < 1000, since a depth-13 tree needs counts growing like Fibonacci)
            assert int(np.dot(freq, lengths)) == heap_huffman_cost(freq)
        np.testing.assert_array_equal(huffman_lengths(freq), lengths)  # deterministic
    assert huffman_lengths([0, 5, 0]).tolist() == [0, 1, 0]
    assert huffman_lengths([0, 0]).tolist() == [0, 0]
    fib = [1, 1, 2, 3, 5, 8, 13, 21, 34, 55, 89, 144, 233, 377, 610]  # Huffman depth 14
    lengths = huffman_lengths(fib)
    assert lengths.max() == 12 and np.sum(2.0 ** -lengths.astype(int)) == 1.0
    assert int(np.dot(fib, lengths)) > heap_huffman_cost(fib)  # the limit costs a little
    with pytest.raises(ValueError, match="5 symbols need codewords over max_len 2"):
        huffman_lengths([1, 1, 1, 1, 1], max_len=2)


def test_huffman_lengths_limited_match_brute_force():
    """Package-merge against every length vector with Kraft sum <= 1, under small limits."""
    import itertools

    rng = np.random.default_rng(4)
    for _ in range(40):
        s, max_len = int(rng.integers(2, 6)), int(rng.integers(2, 5))
        if s > 2**max_len:
            continue
        freq = rng.integers(1, 60, s) ** 2
        best = min(
            int(np.dot(freq, ln))
            for ln in itertools.product(range(1, max_len + 1), repeat=s)
            if sum(2.0**-x for x in ln) <= 1
        )
        lengths = huffman_lengths(freq, max_len)
        assert lengths.max() <= max_len and int(np.dot(freq, lengths)) == best


def test_choose_huffman_for_skewed_codes():
    rng = np.random.default_rng(5)
    codes = skewed_codes(rng, 576 * 16, 4, 1.5)
    best = choose(codes, 4)
    assert best.encoding == "huffman"
    sizes = {e: encode(codes, 4, e).nbytes for e in valid_encodings(4)}
    assert best.nbytes == min(sizes.values()) < 0.85 * sizes["int4"]
    assert best.nbytes == sum(field_lengths("huffman", 4, codes.size, best.count).values())
    np.testing.assert_array_equal(decode(best), codes)
    wide = skewed_codes(rng, 4096, 8, 6.0)  # 8-bit codes in a narrow band: ~5 bits each
    assert choose(wide, 8).encoding == "huffman"
    # without entropy coding: the smallest of the others
    plain = choose(codes, 4, entropy=False)
    assert plain.encoding != "huffman"
    assert plain.nbytes == min(v for e, v in sizes.items() if e != "huffman")
    assert choose(wide, 8, entropy=False).encoding == "int8"


def _huffman(lengths, blocks, stream, bits=2, n=None) -> Encoded:
    nb = len(blocks)
    n = nb * 256 if n is None else n
    return Encoded(
        "huffman",
        bits,
        n,
        len(stream),
        {
            "lengths": np.array(lengths, np.uint8),
            "blocks": np.array(blocks, "<u2").view(np.uint8),
            "stream": np.array(stream, np.uint8),
        },
    )


@pytest.mark.parametrize(
    "enc, match",
    [
        # 2-bit: 3 symbols, 2 bytes of lengths; single code "0" for symbol 1 (code 0)
        (_huffman([0x10, 0x00], [5], [0x00], n=5), None),  # canonical: five zeros
        (_huffman([0x10, 0x10], [5], [0x00], n=5), "pad nibble"),
        (_huffman([0xD0, 0x00], [5], [0x00], n=5), "length over 12"),
        (_huffman([0x11, 0x01], [5], [0x00], n=5), r"no prefix code \(Kraft sum > 1\)"),
        (_huffman([0x10, 0x00], [9], [0x00], n=5), "add up to 9 bits, stream has 1 bytes"),
        (_huffman([0x10, 0x00], [5], [0x04], n=5), "padding bits"),
        (_huffman([0x10, 0x00], [5], [0x40], n=5), "stream bit 1 starts no codeword"),
        (_huffman([0x10, 0x00], [4], [0x00], n=5), "runs out of its 4 bits after 4 codes"),
        # lengths 2, 1, 2 (a full code) for five codes "0": decodes, but is not the code of
        # those counts (one symbol: length 1 for it, 0 for the others)
        (_huffman([0x12, 0x02], [5], [0x00], n=5), "not the code of the decoded counts"),
        # two blocks: 256 + 1 codes of one bit each; the first block claims 255 bits
        (_huffman([0x10, 0x00], [255, 2], [0] * 33, n=257), "block 0 runs out of its 255"),
        (_huffman([0x10, 0x00], [257, 0], [0] * 33, n=257), "block 1 runs out of its 0 bits"),
        # code 0 = "10" stated as 1 bit: the codeword overruns its block
        (_huffman([0x12, 0x02], [1], [0x80], n=1), "block 0 decodes in 2 bits, blocks says 1"),
    ],
)
def test_huffman_decode_rejects_noncanonical(enc, match):
    if match is None:
        assert decode(enc).tolist() == [0] * enc.n
        assert fields_list(encode(decode(enc), enc.bits, "huffman")) == fields_list(enc)
        return
    with pytest.raises(ValueError, match=match):
        decode(enc)


@SETTINGS
@given(
    bits=st.integers(2, 8),
    n=st.integers(1, 600),
    width=st.floats(0.05, 20),
    seed=st.integers(0, 2**32 - 1),
    field=st.sampled_from(["lengths", "blocks", "stream"]),
    where=st.floats(0, 1, exclude_max=True),
    bit=st.integers(0, 7),
)
def test_huffman_mutations_are_rejected_or_canonical(bits, n, width, seed, field, where, bit):
    """One flipped bit in a huffman tensor: decode raises ValueError, or the result is the
    canonical encoding of other codes (e.g. two codewords of one length swapped)."""
    codes = skewed_codes(np.random.default_rng(seed), n, bits, width)
    enc = encode(codes, bits, "huffman")
    fields = {k: v.copy() for k, v in enc.fields.items()}
    fields[field][int(where * fields[field].size)] ^= np.uint8(1 << bit)
    bad = enc._replace(fields=fields)
    try:
        got = decode(bad)
    except ValueError:
        return
    assert not np.array_equal(got, codes)
    assert fields_list(encode(got, bits, "huffman")) == fields_list(bad)
