"""export.artifact: round trip, determinism, layout, and a reader that turns every damaged or
foreign input into ArtifactError (every single-bit flip of a file, every truncation, fuzzed
bytes), never another exception."""

from __future__ import annotations

import json
import struct
import zlib

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from export.artifact import (
    ALIGN,
    DTYPES,
    MAGIC,
    Artifact,
    ArtifactError,
    TensorRecord,
    read_artifact,
    read_header,
    read_manifest,
    to_bytes,
    write_artifact,
)
from export.encodings import choose, decode, encode

FUZZ = settings(
    max_examples=150,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow],
)
HEADER = {"model": {"dim": 8, "name": "tiny"}, "quant": {"weight_bits": 4, "act_bits": 8}}


def make_artifact(seed: int = 0) -> Artifact:
    """Encoded tensors in every encoding, raw arrays of every dtype, two blobs."""
    rng = np.random.default_rng(seed)
    codes = (rng.integers(-7, 8, size=(24, 10)) * (rng.random((24, 10)) < 0.3)).astype(np.int8)
    tensors = {}
    for encoding in ("int8", "int4", "bitmap", "gaps", "huffman"):
        name = f"encoder/layer_0/{encoding}/kernel"
        meta = {"shape": [24, 10], "kind": "kernel"}
        tensors[name] = TensorRecord.from_encoded(name, meta, encode(codes, 4, encoding))
    for dtype in DTYPES:
        name = f"raw/{dtype}"
        arr = (rng.standard_normal((3, 5)) * 50).astype(dtype)
        tensors[name] = TensorRecord.raw(name, {"note": "plain"}, arr)
    tensors["scalar"] = TensorRecord.raw("scalar", {}, np.array(1.5, np.float32))
    tensors["empty"] = TensorRecord.raw("empty", {}, np.zeros((0, 4), np.float16))
    blobs = {"tokenizer.model": b"\x0a\x05hello" * 7, "vocab.txt": "ä b c\n".encode()}
    return Artifact(dict(HEADER), tensors, blobs)


@pytest.fixture(scope="module")
def small_file() -> bytes:
    """A small artifact (about 1 KB) to flip every bit of; `resealed` edits may drop the
    header's note to make room for longer values."""
    codes = np.array([[0, 3, 0, -1], [0, 0, 0, 2]], np.int8)
    tensors = {
        "k": TensorRecord.from_encoded("k", {"shape": [2, 4]}, choose(codes, 4)),
        "b": TensorRecord.raw("b", {}, np.array([1.0, -2.0], np.float16)),
    }
    header = {"v": 1, "note": "room to grow the manifest in place" * 4}
    return to_bytes(Artifact(header, tensors, {"tok": b"abc"}))


def assert_same(a: Artifact, b: Artifact) -> None:
    assert a.header == b.header
    assert list(a.tensors) == list(b.tensors)
    for name, rec in a.tensors.items():
        got = b.tensors[name]
        assert (rec.name, rec.meta, rec.encoding, rec.bits, rec.n, rec.count) == (
            got.name,
            got.meta,
            got.encoding,
            got.bits,
            got.n,
            got.count,
        )
        assert sorted(rec.fields) == sorted(got.fields)
        for k, arr in rec.fields.items():
            assert got.fields[k].dtype == arr.dtype and got.fields[k].shape == arr.shape
            np.testing.assert_array_equal(got.fields[k], arr)
    assert a.blobs == b.blobs


# --- round trip and layout ----------------------------------------------------------------


def test_round_trip(tmp_path):
    art = make_artifact()
    path = tmp_path / "model.edge"
    n = write_artifact(path, art)
    assert n == path.stat().st_size
    back = read_artifact(path)
    assert_same(art, back)
    codes = decode(art.tensors["encoder/layer_0/gaps/kernel"].to_encoded())
    np.testing.assert_array_equal(
        decode(back.tensors["encoder/layer_0/gaps/kernel"].to_encoded()), codes
    )
    for rec in back.tensors.values():
        for arr in rec.fields.values():
            assert not arr.flags.writeable
    assert isinstance(back.blobs["tokenizer.model"], bytes)
    assert read_artifact(path.read_bytes()).header == HEADER
    assert read_header(path) == HEADER
    assert read_manifest(path)["tensors"][0]["name"] == "encoder/layer_0/int8/kernel"
    assert [p.name for p in tmp_path.iterdir()] == ["model.edge"]  # no temporary file left


def test_deterministic_and_idempotent():
    a = to_bytes(make_artifact())
    assert to_bytes(make_artifact()) == a
    assert to_bytes(read_artifact(a)) == a
    art = make_artifact()
    art.blobs = dict(reversed(art.blobs.items()))  # blobs are stored by sorted name
    assert to_bytes(art) == a
    assert to_bytes(make_artifact(seed=1)) != a


def test_layout():
    data = to_bytes(make_artifact())
    magic, version, reserved, mlen, mcrc, total = struct.unpack_from("<8sHHIIQ", data)
    assert (magic, version, reserved, total) == (MAGIC, 1, 0, len(data))
    text = data[28 : 28 + mlen]
    assert zlib.crc32(text) == mcrc
    manifest = json.loads(text)
    assert (
        text
        == json.dumps(manifest, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
    )
    assert (manifest["format"], manifest["version"]) == ("edge-asr", 1)
    regions = [f for t in manifest["tensors"] for f in t["fields"].values()]
    regions += list(manifest["blobs"].values())
    offsets = [r["offset"] for r in regions]
    assert all(o % ALIGN == 0 for o in offsets)
    assert min(offsets) >= 28 + mlen and offsets == sorted(offsets)  # file order = manifest order
    for r in regions:
        assert zlib.crc32(data[r["offset"] : r["offset"] + r["length"]]) == r["crc32"]
    raw = manifest["tensors"][5]
    assert raw["encoding"] == "raw" and raw["fields"]["data"]["dtype"] == "uint8"
    assert raw["fields"]["data"]["shape"] == [3, 5] and raw["bits"] == 0


def test_big_endian_and_fortran_arrays_are_stored_little_endian_c_order():
    arr = np.arange(6, dtype=">i4").reshape(2, 3).T
    art = Artifact({}, {"x": TensorRecord.raw("x", {}, arr)})
    back = read_artifact(to_bytes(art)).tensors["x"].fields["data"]
    assert back.dtype == np.dtype("<i4") and back.shape == (3, 2)
    np.testing.assert_array_equal(back, arr)


@pytest.mark.parametrize(
    "art, match",
    [
        (Artifact([]), "header: expected a dict"),
        (Artifact({"x": float("nan")}), "JSON"),
        (Artifact({"x": object()}), "JSON"),
        (Artifact({}, {"a": TensorRecord.raw("b", {}, np.zeros(1, np.float32))}), "differs"),
        (
            Artifact({}, {"a": TensorRecord.raw("a", {}, np.zeros(1, np.float64))}),
            "float64 not allowed",
        ),
        (Artifact({}, {"a": TensorRecord.raw("a", {}, np.zeros(1, bool))}), "bool not allowed"),
        (
            Artifact(
                {}, {"a": TensorRecord("a", {}, "int4", 4, 3, 3, {"values": np.zeros(3, np.uint8)})}
            ),
            "lengths",
        ),
        (
            Artifact(
                {}, {"a": TensorRecord("a", {}, "int4", 6, 2, 2, {"values": np.zeros(1, np.uint8)})}
            ),
            "cannot hold",
        ),
        (Artifact({}, {"a": TensorRecord("a", {}, "zip", 4, 2, 2, {})}), "encoding"),
        (
            Artifact(
                {}, {"a": TensorRecord("a", {}, "raw", 0, 2, 2, {"data": np.zeros(3, np.int8)})}
            ),
            "n = count = 3",
        ),
        (Artifact({}, {}, {"t": "text"}), "str -> bytes"),
    ],
)
def test_write_errors(art, match):
    with pytest.raises(ValueError, match=match):
        to_bytes(art)


def test_failed_write_keeps_the_old_file(tmp_path):
    path = tmp_path / "model.edge"
    write_artifact(path, make_artifact())
    before = path.read_bytes()
    with pytest.raises(ValueError):
        write_artifact(path, Artifact({"x": float("inf")}))
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["model.edge"]


# --- the reader on damaged input ----------------------------------------------------------


def test_every_single_bit_flip_is_detected(small_file):
    assert len(small_file) < 2048
    for i in range(len(small_file) * 8):
        bad = bytearray(small_file)
        bad[i // 8] ^= 1 << (i % 8)
        with pytest.raises(ArtifactError):
            read_artifact(bytes(bad))


def test_every_truncation_is_detected(small_file):
    for n in range(len(small_file)):
        with pytest.raises(ArtifactError):
            read_artifact(small_file[:n])
    with pytest.raises(ArtifactError, match="trailing bytes"):
        read_artifact(small_file + b"\0")


def resealed(data: bytes, edit) -> bytes:
    """data with its manifest edited by `edit(manifest)` and the header fixed up (length, CRC,
    total), so only the reader's structural checks can catch the edit."""
    _, _, _, mlen, _, _ = struct.unpack_from("<8sHHIIQ", data)
    manifest = json.loads(data[28 : 28 + mlen])
    edit(manifest)
    text = json.dumps(manifest, sort_keys=True, separators=(",", ":")).encode()
    start = -(-(28 + mlen) // ALIGN) * ALIGN
    assert 28 + len(text) <= start, "edit made the manifest too long for this test"
    body = text + bytes(start - 28 - len(text)) + data[start:]
    return struct.pack("<8sHHIIQ", MAGIC, 1, 0, len(text), zlib.crc32(text), 28 + len(body)) + body


@pytest.mark.parametrize(
    "edit, match",
    [
        (lambda m: m.pop("tensors"), "missing key 'tensors'"),
        (lambda m: m.update(tensors={}), "'tensors': expected list, got dict"),
        (lambda m: m.update(format="other"), "format 'other'"),
        (lambda m: m.update(version=2), "version 2 disagrees"),
        (lambda m: m["tensors"][0].pop("count"), "tensor #0: missing key 'count'"),
        (lambda m: m["tensors"][0].update(bits=True), "bits: expected an int"),
        (lambda m: m["tensors"][0].update(n=-1), "n: expected an int >= 0"),
        (
            lambda m: m["tensors"][0].update(count=1),
            "tensor 'k': bitmap fields: expected uint8 of lengths",
        ),
        (lambda m: m["tensors"][0].update(encoding="rle"), "encoding"),
        (lambda m: m["tensors"][1].update(name="k"), "stored twice"),
        (
            lambda m: m["tensors"][1]["fields"]["data"].update(dtype="float64"),
            "dtype 'float64' not allowed",
        ),
        (
            lambda m: m["tensors"][1]["fields"]["data"].update(shape=[3]),
            r"shape \[3\] of float16 is 6 bytes",
        ),
        (lambda m: m["tensors"][1]["fields"]["data"].update(shape=[1.5]), "shape: expected ints"),
        (lambda m: m["tensors"][1]["fields"]["data"].update(offset=10**9), "offset out of range"),
        (lambda m: m["tensors"][1]["fields"]["data"].update(offset=0), "offset out of range"),
        (
            lambda m: m["tensors"][1]["fields"]["data"].update(crc32=0),
            "tensor 'b' field 'data': checksum",
        ),
        (lambda m: m["blobs"]["tok"].update(crc32=1), "blob 'tok': checksum mismatch"),
        (lambda m: m["blobs"]["tok"].update(length="3"), "length: expected an int"),
        (
            lambda m: m["blobs"]["tok"].update(
                {k: m["tensors"][1]["fields"]["data"][k] for k in ("offset", "length", "crc32")}
            ),
            "overlaps",
        ),
        (
            lambda m: m["blobs"]["tok"].update(offset=m["blobs"]["tok"]["offset"] - 1),
            "not 64-byte aligned",
        ),
        (lambda m: m["blobs"].pop("tok"), "padding bytes .* are not zero"),
        (
            lambda m: (
                m["header"].pop("note")
                and m["tensors"][1]["fields"]["data"].update(length=0, crc32=0, shape=[0, 2**70])
            ),
            "not a possible array",
        ),
        (
            lambda m: (
                m["header"].pop("note")
                and m["tensors"][1]["fields"]["data"].update(
                    length=0, crc32=0, shape=[1] * 70 + [0]
                )
            ),
            "not a possible array",
        ),
        (lambda m: m.update(header=[]), "'header': expected dict"),
    ],
)
def test_structural_errors(small_file, edit, match):
    with pytest.raises(ArtifactError, match=match):
        read_artifact(resealed(small_file, edit))


def test_header_errors(small_file, tmp_path):
    with pytest.raises(ArtifactError, match="empty file"):
        read_artifact(b"")
    with pytest.raises(ArtifactError, match="bad magic: not an edge artifact"):
        read_artifact(b"PK\x03\x04" + small_file[4:])
    bad = bytearray(small_file)
    bad[8] = 7
    with pytest.raises(
        ArtifactError, match=r"format version 7 is not supported \(this reader reads 1\)"
    ):
        read_artifact(bytes(bad))
    bad = bytearray(small_file)
    bad[10] = 1
    with pytest.raises(ArtifactError, match="reserved"):
        read_artifact(bytes(bad))
    path = tmp_path / "model.edge"
    path.write_bytes(small_file[:500])
    with pytest.raises(
        ArtifactError,
        match=f"model.edge: truncated: header says {len(small_file)} bytes, file has 500",
    ):
        read_artifact(path)
    with pytest.raises(ArtifactError, match="truncated"):
        read_header(path)
    with pytest.raises(ArtifactError, match="cannot read"):
        read_artifact(tmp_path / "missing.edge")
    bad = bytearray(small_file)
    bad[40] ^= 0x20
    with pytest.raises(ArtifactError, match="manifest checksum mismatch"):
        read_header(bytes(bad))
    payload = resealed(small_file, lambda m: None)
    assert payload == small_file
    text = b"[" * 100_000  # deep nesting: RecursionError inside json, reported as ArtifactError
    body = text + bytes(-(-(28 + len(text)) // ALIGN) * ALIGN - 28 - len(text))
    head = struct.pack("<8sHHIIQ", MAGIC, 1, 0, len(text), zlib.crc32(text), 28 + len(body))
    with pytest.raises(ArtifactError, match="not UTF-8 JSON"):
        read_artifact(head + body)


def test_damaged_field_names_tensor_and_field(small_file):
    art = read_artifact(small_file)
    off = read_manifest(small_file)["tensors"][0]["fields"]["values"]["offset"]
    bad = bytearray(small_file)
    bad[off] ^= 1
    assert art.tensors["k"].encoding == "bitmap"
    with pytest.raises(
        ArtifactError, match="tensor 'k' field 'values': checksum mismatch \\(damaged\\)"
    ):
        read_artifact(bytes(bad))


def _huffman_record() -> tuple[TensorRecord, np.ndarray]:
    """A 4-bit kernel [64, 40] of peaked codes, which `choose` Huffman-codes (10 blocks)."""
    rng = np.random.default_rng(11)
    codes = np.clip(np.round(rng.laplace(0, 1.2, (64, 40))), -7, 7).astype(np.int8)
    enc = choose(codes, 4)
    assert enc.encoding == "huffman"
    return TensorRecord.from_encoded("k", {"shape": [64, 40]}, enc), codes


def test_huffman_tensor_round_trip_and_damage():
    rec, codes = _huffman_record()
    data = to_bytes(Artifact(dict(HEADER), {"k": rec}, {}))
    back = read_artifact(data)
    np.testing.assert_array_equal(decode(back.tensors["k"].to_encoded()), codes.ravel())
    entry = read_manifest(data)["tensors"][0]
    assert (entry["encoding"], entry["count"]) == ("huffman", rec.count)
    assert {k: f["length"] for k, f in entry["fields"].items()} == {
        "lengths": 8,
        "blocks": 20,
        "stream": rec.count,
    }
    for name, f in entry["fields"].items():  # damage to any field: its checksum
        bad = bytearray(data)
        bad[f["offset"] + f["length"] - 1] ^= 0x04
        with pytest.raises(ArtifactError, match=f"tensor 'k' field '{name}': checksum mismatch"):
            read_artifact(bytes(bad))
    # a manifest whose count (stream bytes) disagrees with the stream, checksums made valid
    for count in (rec.count - 1, 10**6):
        with pytest.raises(ArtifactError, match="huffman"):
            read_artifact(resealed(data, lambda m, c=count: m["tensors"][0].update(count=c)))


@pytest.mark.parametrize(
    "field, mutate, match",
    [
        ("lengths", lambda a: a.__setitem__(0, 0xFF), "length over 12"),
        ("blocks", lambda a: a.__setitem__(0, a[0] ^ 1), "huffman: block|huffman: blocks"),
        ("stream", lambda a: a.__setitem__(-1, a[-1] | 1), "padding bits"),
        ("stream", lambda a: a.fill(0), "huffman: block 0 decodes in"),  # shortest codes
    ],
)
def test_huffman_content_errors_surface_at_decode(field, mutate, match):
    """A well-formed file (a writer's valid checksums) of non-canonical Huffman content: the
    reader checks sizes only; `export.encodings.decode` (what every loader runs) rejects it."""
    rec, _ = _huffman_record()
    total = int(rec.fields["blocks"].view("<u2").sum())
    assert total % 8, total  # the stream has padding bits to damage
    fields = {k: v.copy() for k, v in rec.fields.items()}
    mutate(fields[field])
    bad = TensorRecord("k", rec.meta, "huffman", 4, rec.n, rec.count, fields)
    back = read_artifact(to_bytes(Artifact(dict(HEADER), {"k": bad}, {})))
    with pytest.raises(ValueError, match=match):
        decode(back.tensors["k"].to_encoded())


def _read_or_artifact_error(data: bytes) -> None:
    try:
        read_artifact(data)
    except ArtifactError:
        pass


@FUZZ
@given(st.binary(max_size=300))
def test_arbitrary_bytes_raise_only_artifact_error(data):
    _read_or_artifact_error(data)
    _read_or_artifact_error(MAGIC + data)
    _read_or_artifact_error(MAGIC + b"\x01\x00\x00\x00" + data)


@FUZZ
@given(
    edits=st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 255)), min_size=1, max_size=4),
    cut=st.none() | st.integers(0, 10**6),
)
def test_mutated_files_raise_artifact_error(small_file, edits, cut):
    bad = bytearray(small_file)
    for pos, val in edits:
        bad[pos % len(bad)] = val
    if cut is not None:
        bad = bad[: cut % len(bad)]
    if bytes(bad) == small_file:
        return
    with pytest.raises(ArtifactError):
        read_artifact(bytes(bad))


def _manifest_values():
    leaf = (
        st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats() | st.text(max_size=4)
    )
    return st.recursive(
        leaf,
        lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=6), c, max_size=3),
        max_leaves=8,
    )


@FUZZ
@given(data=st.data())
def test_resealed_manifest_mutations_raise_artifact_error(small_file, data):
    """A manifest with a value replaced by junk but valid checksums: still only ArtifactError."""
    manifest = read_manifest(small_file)
    paths = []

    def walk(obj, path):
        paths.append(path)
        items = (
            obj.items()
            if isinstance(obj, dict)
            else enumerate(obj)
            if isinstance(obj, list)
            else ()
        )
        for k, v in items:
            walk(v, (*path, k))

    walk(manifest, ())
    path = data.draw(st.sampled_from(paths[1:]))
    junk = data.draw(_manifest_values())

    def edit(m):
        for k in path[:-1]:
            m = m[k]
        m[path[-1]] = junk

    try:
        mutated = resealed(small_file, edit)
    except (AssertionError, ValueError):  # too long to reseal in place, or NaN in JSON
        return
    try:
        art = read_artifact(mutated)
    except ArtifactError:
        return
    # only the free-form parts may take any value: the header, a meta, a tensor's name
    assert path[0] == "header" or "meta" in path or path[-1] == "name", path
    assert len(art.tensors) == 2
