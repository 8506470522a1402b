"""export.delta: apply(old, diff(old, new)) == new across the changes a model update makes, small
patches for small changes, and PatchError for a wrong base or a damaged patch."""

from __future__ import annotations

import struct
import zlib

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from export.artifact import Artifact, ArtifactError, TensorRecord, read_artifact, to_bytes
from export.delta import PATCH_MAGIC, PatchError, apply, diff, patch_stats
from export.encodings import choose, encode

FUZZ = settings(
    max_examples=40,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)


def kernels(seed: int = 0, layers: int = 6) -> dict[str, np.ndarray]:
    """int8 4-bit codes of `layers` kernels [96, 64], about 60% zeros."""
    rng = np.random.default_rng(seed)
    out = {}
    for i in range(layers):
        codes = rng.integers(-7, 8, size=(96, 64)) * (rng.random((96, 64)) < 0.4)
        out[f"encoder/layer_{i}/Dense_0/kernel"] = codes.astype(np.int8)
    return out


def build(codes: dict[str, np.ndarray], header: dict | None = None, encoding=None) -> bytes:
    tensors = {}
    for name, c in codes.items():
        enc = choose(c, 4) if encoding is None else encode(c, 4, encoding)
        tensors[name] = TensorRecord.from_encoded(name, {"shape": list(c.shape)}, enc)
        scale = np.linspace(0.01, 0.02, c.shape[1], dtype=np.float32)
        tensors[name + "@scale"] = TensorRecord.raw(name + "@scale", {}, scale)
    blobs = {"tokenizer.model": bytes(range(256)) * 8}
    return to_bytes(Artifact(header or {"model": {"dim": 64}}, tensors, blobs))


@pytest.fixture(scope="module")
def base() -> bytes:
    return build(kernels())


def read_manifest_end(data: bytes) -> int:
    return 28 + struct.unpack_from("<I", data, 12)[0]


def round_trip(old: bytes, new: bytes, **kw) -> bytes:
    patch = diff(old, new, **kw)
    assert patch[:8] == PATCH_MAGIC
    rebuilt = apply(old, patch)
    assert rebuilt == new
    read_artifact(rebuilt)
    return patch


def test_identical(base):
    patch = round_trip(base, base)
    stats = patch_stats(base, base, patch)
    assert stats["blocks_changed"] == 0 and stats["blocks_total"] > 10
    assert stats["patch_bytes"] < 300


def test_one_changed_code_gives_a_small_patch(base):
    codes = kernels()
    kernel = codes["encoder/layer_3/Dense_0/kernel"].reshape(-1)
    i = np.flatnonzero(kernel)[100]
    kernel[i] = 1 if kernel[i] != 1 else 2  # a nonzero code moves: every size stays the same
    new = build(codes)
    assert len(new) == len(base)
    patch = round_trip(base, new)
    stats = patch_stats(base, new, patch)
    head_blocks = -(-read_manifest_end(base) // 1024)
    assert stats["blocks_changed"] <= head_blocks + 1, stats  # the manifest and the code's block
    assert stats["patch_bytes"] < 500 and stats["ratio"] < 0.03, stats
    assert stats["new_bytes"] == len(new)


def test_zero_code_becoming_nonzero(base):
    codes = kernels()
    kernel = codes["encoder/layer_3/Dense_0/kernel"].reshape(-1)
    kernel[np.flatnonzero(kernel == 0)[50]] = -3  # one more entry: the encoded field grows
    new = build(codes)
    patch = round_trip(base, new)
    assert len(patch) < len(new) / 4


def test_fine_tune_of_many_codes_stays_small(base):
    codes = kernels()
    rng = np.random.default_rng(5)
    for c in codes.values():  # 1% of the codes of every kernel move by one level
        idx = rng.choice(c.size, c.size // 100, replace=False)
        flat = c.reshape(-1)
        flat[idx] = np.clip(flat[idx] + 1, -7, 7)
    new = build(codes, encoding="int4")  # same sizes as before: int4 is dense
    old = build(kernels(), encoding="int4")
    patch = round_trip(old, new)
    assert len(patch) < len(zlib.compress(new, 9)) / 3


def test_re_encoded_tensor_shifts_offsets(base):
    codes = kernels()
    codes["encoder/layer_1/Dense_0/kernel"][:, :32] = 0  # sparser: a smaller encoding
    new = build(codes)
    old_m, new_m = read_artifact(base), read_artifact(new)
    name = "encoder/layer_1/Dense_0/kernel"
    assert new_m.tensors[name].nbytes < old_m.tensors[name].nbytes
    assert len(new) < len(base)
    patch = round_trip(base, new)
    stats = patch_stats(base, new, patch)
    # the later layers moved but are found again through their names
    assert stats["blocks_changed"] < stats["blocks_total"] / 3, stats
    assert len(patch) < len(new) / 4


def test_added_and_removed_tensors(base):
    codes = kernels()
    codes["decoder/extra/kernel"] = codes.pop("encoder/layer_0/Dense_0/kernel")[:48]
    new = build(codes)
    round_trip(base, new)
    round_trip(new, base)
    fewer = build(dict(list(kernels().items())[2:]))
    round_trip(base, fewer)
    round_trip(fewer, base)


def test_changed_header_and_block_sizes(base):
    new = build(kernels(), header={"model": {"dim": 64, "note": "fine-tuned on names"}})
    for block_size in (1, 64, 1000, 1024, 1 << 20):
        round_trip(base, new, block_size=block_size)
    round_trip(build(kernels(seed=1)), base)  # everything differs


def test_wrong_base_and_bad_arguments(base):
    other = build(kernels(seed=2))
    patch = diff(base, other)
    with pytest.raises(PatchError, match="patch is for another base artifact"):
        apply(other, patch)
    with pytest.raises(PatchError, match="another base artifact"):
        patch_stats(other, base, patch)
    with pytest.raises(PatchError, match="not made for this new file"):
        patch_stats(base, base, patch)
    with pytest.raises(ArtifactError):
        diff(base, b"not an artifact")
    with pytest.raises(ValueError, match="block_size"):
        diff(base, base, block_size=0)
    assert issubclass(PatchError, ArtifactError)


def test_corrupted_patch_messages(base):
    codes = kernels()
    codes["encoder/layer_2/Dense_0/kernel"][0, 0] = 3
    patch = diff(base, build(codes))
    with pytest.raises(PatchError, match="truncated"):
        apply(base, patch[:50])
    with pytest.raises(PatchError, match="bad magic"):
        apply(base, b"EDGEASR\x00" + patch[8:])
    with pytest.raises(PatchError, match="version 2"):
        apply(base, patch[:8] + b"\x02" + patch[9:])
    with pytest.raises(PatchError, match="checksum mismatch"):
        apply(base, patch[:-1])


def zdict(old: bytes) -> bytes:
    """The patch body's zlib dictionary: the old file's header and manifest."""
    return old[: read_manifest_end(old)]


def reseal(
    base: bytes, patch: bytes, body: bytes, k: int | None = None, new_len: int | None = None
) -> bytes:
    """A patch with another body (and op count / length), its CRC made valid again."""
    head = bytearray(patch[:96])
    if k is not None:
        struct.pack_into("<I", head, 92, k)
    if new_len is not None:
        struct.pack_into("<Q", head, 80, new_len)
    z = zlib.compressobj(zdict=zdict(base))
    rest = bytes(head[16:]) + z.compress(body) + z.flush()
    return bytes(head[:12]) + struct.pack("<I", zlib.crc32(rest)) + rest


@FUZZ
@given(pos=st.integers(0, 10**6), bit=st.integers(0, 7), cut=st.integers(0, 10**6))
def test_damaged_patch_raises_patch_error(base, pos, bit, cut):
    codes = kernels()
    codes["encoder/layer_4/Dense_0/kernel"][1, 1] = 0
    patch = diff(base, build(codes))
    bad = bytearray(patch)
    bad[pos % len(bad)] ^= 1 << bit
    with pytest.raises(PatchError):
        apply(base, bytes(bad))
    with pytest.raises(PatchError):
        apply(base, patch[: cut % len(patch)])


@FUZZ
@given(
    edits=st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 255)), min_size=1, max_size=3),
    k_delta=st.sampled_from([0, 0, -1, 1, 1000]),
    len_delta=st.sampled_from([0, 0, -1, 1, 10**12]),
)
def test_resealed_body_mutations_raise_patch_error(base, edits, k_delta, len_delta):
    """Valid checksum, wrong content: apply still fails with PatchError (ops out of range,
    unknown kinds, too little or too much data, or the final SHA-256)."""
    codes = kernels()
    codes["encoder/layer_5/Dense_0/kernel"][7, 7] = 1
    new = build(codes)
    patch = diff(base, new)
    body = bytearray(zlib.decompressobj(zdict=zdict(base)).decompress(patch[96:]))
    for pos, val in edits:
        body[pos % len(body)] = val
    k, new_len = struct.unpack_from("<QII", patch, 80)[2], len(new)
    mutated = reseal(base, patch, bytes(body), k + k_delta, new_len + len_delta)
    try:
        assert apply(base, mutated) == new  # an edit that changed nothing that matters
    except PatchError:
        pass
