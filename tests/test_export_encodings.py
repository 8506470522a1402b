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
    assert choose(random_codes(rng, 4096, 4, 0.0), 4).encoding == "int4"
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
