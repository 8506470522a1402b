"""Delta updates between two artifacts: ship only what a fine-tune changed.

`diff(old, new)` cuts the new file into blocks and says, for each, where its bytes come from;
`apply(old, patch)` rebuilds the new file from the old one and the patch, byte for byte.

Blocks. The new file is split into segments: the head (header + manifest, from offset 0) and
one segment per data region (a tensor field or a blob, from its offset up to the next region,
so with its padding); each segment is cut into blocks of `block_size` bytes (the last one of a
segment shorter). Cutting at region starts keeps a region's block i comparable to block i of the
same region in the old file even when earlier regions grew or shrank and every offset moved.

Each block becomes one operation, the first that applies of:

- COPY from old offset X: the block equals old[X:X+L], where X is looked up, in order, (1) at
  the same block index of the same region (same tensor and field name, or same blob name) in the
  old file, (2) at the same absolute offset, (3) anywhere an old block (cut the same way) holds
  exactly these bytes;
- XOR against old offset X (the first of candidates 1, 2 that lies inside the old file): the
  block stored as new XOR old[X:X+L], used when at most half its bytes differ. A fine-tune that
  moves a few codes leaves mostly zero bytes here, which zlib squeezes to almost nothing;
- LITERAL: the block's bytes as they are (new regions, a rewritten manifest).

Patch layout (integers little-endian):

    offset  size  field
    0       8     magic b"EDGEPTCH"
    8       2     version, uint16 (PATCH_VERSION = 1)
    10      2     reserved, uint16, 0
    12      4     CRC-32 of every byte after this field (16 .. end), uint32
    16      32    SHA-256 of the old file
    48      32    SHA-256 of the new file
    80      8     new file length, uint64
    88      4     block size used by diff, uint32 (informational)
    92      4     number of operations K, uint32
    96      ...   zlib stream of the body

    body = K operation records of 13 bytes: kind uint8 (0 COPY, 1 XOR, 2 LITERAL),
           old offset uint64 (0 for LITERAL), length uint32
           then, for each XOR or LITERAL operation in order, its `length` data bytes.

The zlib stream is compressed with the old file's header and manifest as preset dictionary
(`zdict`), so a manifest with a few changed numbers costs little. The new file is the
concatenation of the operations' outputs. `apply` checks the patch's CRC
("damaged"), the old file's hash ("patch is for another base artifact"), every operation's
range, and the rebuilt file's hash, and raises `PatchError` (an `ArtifactError`) for any
mismatch, so it returns exactly the file `diff` was given (an artifact `read_artifact` accepts)
or nothing.
"""

from __future__ import annotations

import hashlib
import struct
import zlib

import numpy as np

from export.artifact import HEADER_SIZE, ArtifactError, read_artifact, read_manifest

__all__ = ["PATCH_MAGIC", "PATCH_VERSION", "PatchError", "apply", "diff", "patch_stats"]

PATCH_MAGIC = b"EDGEPTCH"
PATCH_VERSION = 1
COPY, XOR, LITERAL = 0, 1, 2
_HEAD = struct.Struct("<8sHHI32s32sQII")  # magic .. number of operations; 96 bytes
_OP = np.dtype([("kind", "u1"), ("offset", "<u8"), ("length", "<u4")])  # 13 bytes, packed
assert _OP.itemsize == 13 and _HEAD.size == 96, (_OP.itemsize, _HEAD.size)


class PatchError(ArtifactError):
    """A patch that cannot be applied: damaged, for another base file, or inconsistent."""


def _segments(data: bytes) -> list[tuple[tuple, int, int]]:
    """(key, start, stop) segments of an artifact that `read_artifact` accepts: the head, then
    one per nonempty region, keyed by ("tensor", name, field) or ("blob", name)."""
    manifest = read_manifest(data)
    starts = {}
    for t in manifest["tensors"]:
        for fname, f in t["fields"].items():
            if f["length"]:
                starts[f["offset"]] = ("tensor", t["name"], fname)
    for name, b in manifest["blobs"].items():
        if b["length"]:
            starts[b["offset"]] = ("blob", name)
    starts[0] = ("head",)
    cuts = sorted(starts) + [len(data)]
    return [(starts[a], a, b) for a, b in zip(cuts[:-1], cuts[1:], strict=True) if b > a]


def _blocks(segments, block_size: int):
    """(key, index within the segment, start, length) of every block."""
    for key, start, stop in segments:
        for i, p in enumerate(range(start, stop, block_size)):
            yield key, i, p, min(block_size, stop - p)


def diff(old: bytes, new: bytes, block_size: int = 1024) -> bytes:
    """The patch that turns artifact `old` into artifact `new` (both file bytes; ArtifactError
    if either is not a valid artifact). block_size: bytes per block, 1 .. 2^32 - 1."""
    if (
        isinstance(block_size, bool)
        or not isinstance(block_size, int)
        or not 0 < block_size < 2**32
    ):
        raise ValueError(f"block_size: expected an int in 1..2^32-1, got {block_size!r}")
    old, new = bytes(old), bytes(new)
    read_artifact(old)
    read_artifact(new)
    old_segments = _segments(old)
    old_start = {key: start for key, start, _ in old_segments}
    index: dict[bytes, int] = {}  # content of every old block -> its offset (first one wins)
    for _, _, p, n in _blocks(old_segments, block_size):
        index.setdefault(old[p : p + n], p)

    ops, chunks = [], []
    for key, i, p, n in _blocks(_segments(new), block_size):
        block = new[p : p + n]
        candidates = [old_start[key] + i * block_size] if key in old_start else []
        candidates = [c for c in (*candidates, p) if c + n <= len(old)]
        src = next((c for c in candidates if old[c : c + n] == block), index.get(block))
        if src is not None:
            ops.append((COPY, src, n))
            continue
        if candidates:
            ref = candidates[0]
            x = np.bitwise_xor(np.frombuffer(block, np.uint8), np.frombuffer(old, np.uint8, n, ref))
            if 2 * np.count_nonzero(x) <= n:
                ops.append((XOR, ref, n))
                chunks.append(x.tobytes())
                continue
        ops.append((LITERAL, 0, n))
        chunks.append(block)

    body = np.array(ops, dtype=_OP).tobytes() + b"".join(chunks)
    rest = struct.pack(
        "<32s32sQII",
        hashlib.sha256(old).digest(),
        hashlib.sha256(new).digest(),
        len(new),
        block_size,
        len(ops),
    )
    z = zlib.compressobj(9, zdict=_zdict(old))
    rest += z.compress(body) + z.flush()
    return struct.pack("<8sHHI", PATCH_MAGIC, PATCH_VERSION, 0, zlib.crc32(rest)) + rest


def _zdict(old: bytes) -> bytes:
    """The zlib preset dictionary of a patch: the old file's header and manifest, so a rewritten
    manifest compresses against the old one (zlib uses the last 32 KiB)."""
    (mlen,) = struct.unpack_from("<I", old, 12)
    return old[: HEADER_SIZE + mlen]


def _parse(patch: bytes, old: bytes):
    """(new sha, new length, block size, ops: _OP[K], data bytes) of a patch for `old` whose
    structure checks out; PatchError otherwise."""
    patch = bytes(patch)
    if len(patch) < _HEAD.size:
        raise PatchError(
            f"patch: truncated: {len(patch)} bytes, shorter than its {_HEAD.size}-byte header"
        )
    magic, version, reserved, crc, old_sha, new_sha, new_len, block_size, k = _HEAD.unpack_from(
        patch
    )
    if magic != PATCH_MAGIC:
        raise PatchError("patch: bad magic: not an edge artifact patch")
    if version != PATCH_VERSION:
        raise PatchError(
            f"patch: version {version} is not supported (this reader reads {PATCH_VERSION})"
        )
    if reserved or zlib.crc32(patch[16:]) != crc:
        raise PatchError("patch: checksum mismatch (damaged)")
    if hashlib.sha256(old).digest() != old_sha:
        raise PatchError(
            "patch is for another base artifact: the old file's SHA-256 is "
            f"{hashlib.sha256(old).hexdigest()[:16]}..., the patch expects {old_sha.hex()[:16]}..."
        )
    limit = k * _OP.itemsize + new_len  # the body can be no longer than this
    d = zlib.decompressobj(zdict=_zdict(old))
    try:
        body = d.decompress(patch[_HEAD.size :], min(limit + 1, 2**62))
    except zlib.error as e:
        raise PatchError(f"patch: body does not decompress: {e}") from None
    if not d.eof or d.unused_data or d.unconsumed_tail:
        raise PatchError("patch: body is not one complete zlib stream")
    if len(body) < k * _OP.itemsize:
        raise PatchError(f"patch: body has {len(body)} bytes, too short for {k} operations")
    ops = np.frombuffer(body, _OP, k)
    return new_sha, new_len, block_size, ops, body[k * _OP.itemsize :]


def apply(old: bytes, patch: bytes) -> bytes:
    """The new artifact's bytes from the old one's and a patch from `diff`. PatchError if the
    patch is damaged, made for another base file, or does not rebuild the file it was made for."""
    old = bytes(old)
    new_sha, new_len, _, ops, data = _parse(patch, old)
    out, pos, size = [], 0, 0
    old_arr = np.frombuffer(old, np.uint8)
    for i, (kind, off, n) in enumerate(ops.tolist()):
        if kind in (COPY, XOR) and off + n > len(old):
            raise PatchError(
                f"patch: operation {i} reads old bytes {off}..{off + n} past {len(old)}"
            )
        if kind == COPY:
            out.append(old[off : off + n])
        elif kind in (XOR, LITERAL):
            if pos + n > len(data):
                raise PatchError(
                    f"patch: operation {i} needs {n} data bytes, {len(data) - pos} left"
                )
            chunk = data[pos : pos + n]
            pos += n
            if kind == XOR:
                chunk = np.bitwise_xor(
                    np.frombuffer(chunk, np.uint8), old_arr[off : off + n]
                ).tobytes()
            out.append(chunk)
        else:
            raise PatchError(f"patch: operation {i} has unknown kind {kind}")
        size += n
        if size > new_len:
            raise PatchError(f"patch: operations write more than the {new_len} bytes announced")
    if pos != len(data):
        raise PatchError(f"patch: {len(data) - pos} data bytes left over")
    new = b"".join(out)
    if len(new) != new_len or hashlib.sha256(new).digest() != new_sha:
        raise PatchError(
            "patch: the rebuilt file does not match the patch's SHA-256 of the new file"
        )
    return new


def patch_stats(old: bytes, new: bytes, patch: bytes) -> dict:
    """What a patch costs: {"patch_bytes", "new_bytes", "ratio" (patch / new), "blocks_total",
    "blocks_changed" (XOR or LITERAL), "bytes_changed" (in those blocks)}. PatchError if the
    patch was not made from `old` to `new`."""
    new_sha, _, block_size, ops, _ = _parse(patch, bytes(old))
    if hashlib.sha256(bytes(new)).digest() != new_sha:
        raise PatchError("patch was not made for this new file")
    changed = ops["kind"] != COPY
    return {
        "patch_bytes": len(patch),
        "new_bytes": len(new),
        "ratio": len(patch) / max(len(new), 1),
        "block_size": block_size,
        "blocks_total": int(ops.size),
        "blocks_changed": int(changed.sum()),
        "bytes_changed": int(ops["length"][changed].sum()),
    }
