"""The artifact file: one versioned, checksummed file holding a model's packed tensors and blobs.

Layout (all integers little-endian; offsets from the start of the file):

    offset  size  field
    0       8     magic b"EDGEASR\\x00"
    8       2     format version, uint16 (VERSION = 1)
    10      2     reserved, uint16, must be 0
    12      4     manifest length M in bytes, uint32
    16      4     CRC-32 of the manifest bytes, uint32
    20      8     total file length in bytes, uint64
    28      M     manifest: UTF-8 JSON (sorted keys, no spaces)
    28+M    ...   zero bytes up to a multiple of 64
    ...           data regions (tensor fields and blobs), each at a 64-byte aligned offset,
                  with zero bytes between them; the file ends where the last region ends

The manifest is a JSON object:

    {"format": "edge-asr", "version": 1,
     "header": {...},                      # the caller's: model config, quantization, ...
     "blobs": {name: {"offset", "length", "crc32"}},
     "tensors": [{"name", "meta": {...},   # meta: the caller's, per tensor (shape, scales...)
                  "encoding", "bits", "n", "count",
                  "fields": {field: {"offset", "length", "dtype", "shape", "crc32"}}}]}

A tensor is either packed codes (`encoding` one of `export.encodings.ENCODINGS`: uint8 fields,
lengths given by `field_lengths(encoding, bits, n, count)`; the reader checks those lengths, and
`export.encodings.decode` the fields' content) or a plain array (encoding "raw",
bits 0, n = count = size, one field "data" of dtype uint8, int8, int32, float16 or float32).
Regions are written in order: tensors as listed, each tensor's fields by sorted name, then blobs
by sorted name. The same `Artifact` always gives the same bytes.

Every byte is checked on read, so any damage is an `ArtifactError`, never a wrong model: the
header fields are checked by value, the manifest by its CRC, every region by its own CRC, and
all bytes outside the regions (padding) must be zero. In particular every single-bit flip
anywhere in a file is detected (CRC-32 detects all single-bit errors). Nothing is executed on
load: the manifest is JSON and the arrays are read with `np.frombuffer` (read-only views of the
file's bytes).

References:
  ISO 3309 / ITU-T V.42 CRC-32, as computed by `zlib.crc32` (detects every burst error of up to
    32 bits, so every single-bit flip).
"""

from __future__ import annotations

import json
import math
import os
import struct
import tempfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from export.encodings import ENCODINGS, Encoded, field_lengths

__all__ = [
    "ALIGN",
    "DTYPES",
    "HEADER_SIZE",
    "MAGIC",
    "VERSION",
    "Artifact",
    "ArtifactError",
    "TensorRecord",
    "read_artifact",
    "read_header",
    "read_manifest",
    "to_bytes",
    "write_artifact",
]

MAGIC = b"EDGEASR\x00"
VERSION = 1
FORMAT = "edge-asr"
ALIGN = 64
_HEADER = struct.Struct("<8sHHIIQ")  # magic, version, reserved, manifest length, CRC, total
HEADER_SIZE = _HEADER.size  # 28
DTYPES = ("uint8", "int8", "int32", "float16", "float32")
RAW = "raw"


class ArtifactError(ValueError):
    """A file that is not a readable artifact: the message says what is wrong and where."""


@dataclass
class TensorRecord:
    """One stored tensor. encoding: one of ENCODINGS or "raw"; bits: code width (0 for raw);
    n: number of elements; count: stored values, or stream bytes for "huffman" (see
    export.encodings); fields: name -> array (uint8[length] for encoded tensors, the array
    itself as "data" for raw ones); meta: the caller's JSON-able description (shape,
    scales...), stored as is."""

    name: str
    meta: dict
    encoding: str
    bits: int
    n: int
    count: int
    fields: dict[str, np.ndarray]

    @property
    def nbytes(self) -> int:
        """Total bytes of the fields (before alignment padding)."""
        return sum(int(np.asarray(f).nbytes) for f in self.fields.values())

    @classmethod
    def from_encoded(cls, name: str, meta: dict, enc: Encoded) -> TensorRecord:
        """A record of packed codes (`export.encodings.encode`/`choose`)."""
        return cls(name, dict(meta), enc.encoding, enc.bits, enc.n, enc.count, dict(enc.fields))

    @classmethod
    def raw(cls, name: str, meta: dict, array: np.ndarray) -> TensorRecord:
        """A plain array (e.g. float16 biases): encoding "raw", one field "data"."""
        array = np.asarray(array)
        return cls(name, dict(meta), RAW, 0, int(array.size), int(array.size), {"data": array})

    def to_encoded(self) -> Encoded:
        """The `Encoded` to pass to `export.encodings.decode`; ValueError for a raw record."""
        if self.encoding == RAW:
            raise ValueError(f"tensor {self.name!r}: expected an encoded tensor, got a raw one")
        return Encoded(self.encoding, self.bits, self.n, self.count, dict(self.fields))


@dataclass
class Artifact:
    """header: the caller's JSON-able dict (model config, quantization...); tensors: name ->
    record, in file order; blobs: name -> bytes (e.g. the tokenizer model)."""

    header: dict
    tensors: dict[str, TensorRecord] = field(default_factory=dict)
    blobs: dict[str, bytes] = field(default_factory=dict)


# --- checks shared by the writer and the reader ---------------------------------------------


def _is_int(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _check_record(rec: TensorRecord) -> None:
    """ValueError unless the record's encoding, sizes and field arrays agree."""
    where = f"tensor {rec.name!r}"
    if not isinstance(rec.name, str) or not rec.name:
        raise ValueError(f"tensor name: expected a non-empty string, got {rec.name!r}")
    if not isinstance(rec.meta, dict):
        raise ValueError(f"{where}: meta: expected a dict, got {type(rec.meta).__name__}")
    for key in ("bits", "n", "count"):
        if not _is_int(getattr(rec, key)):
            raise ValueError(f"{where}: {key}: expected an int, got {getattr(rec, key)!r}")
    if not isinstance(rec.fields, dict) or not all(isinstance(k, str) for k in rec.fields):
        raise ValueError(f"{where}: fields: expected a dict of name -> array")
    arrays = {k: np.asarray(v) for k, v in rec.fields.items()}
    for k, a in arrays.items():
        if a.dtype.name not in DTYPES:
            raise ValueError(
                f"{where} field {k!r}: dtype {a.dtype.name} not allowed (expected one of {DTYPES})"
            )
    if rec.encoding == RAW:
        if set(arrays) != {"data"}:
            raise ValueError(f"{where}: raw fields: expected ['data'], got {sorted(arrays)}")
        size = int(arrays["data"].size)
        if (rec.bits, rec.n, rec.count) != (0, size, size):
            raise ValueError(
                f"{where}: raw: expected bits 0, n = count = {size}, "
                f"got bits {rec.bits}, n {rec.n}, count {rec.count}"
            )
        return
    if rec.encoding not in ENCODINGS:
        raise ValueError(
            f"{where}: encoding: expected one of {(*ENCODINGS, RAW)}, got {rec.encoding!r}"
        )
    try:
        want = field_lengths(rec.encoding, rec.bits, rec.n, rec.count)
    except ValueError as e:
        raise ValueError(f"{where}: {e}") from None
    got = {k: (a.dtype.name, a.shape) for k, a in arrays.items()}
    if got != {k: ("uint8", (m,)) for k, m in want.items()}:
        raise ValueError(
            f"{where}: {rec.encoding} fields: expected uint8 of lengths {want}, got {got}"
        )


def _json_bytes(obj) -> bytes:
    return json.dumps(
        obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    ).encode("utf-8")


def _align(x: int) -> int:
    return -(-x // ALIGN) * ALIGN


# --- writing ---------------------------------------------------------------------------------


def to_bytes(artifact: Artifact) -> bytes:
    """The artifact's file bytes (deterministic). ValueError for anything that would not read
    back: a record whose fields disagree with its encoding, a dtype outside DTYPES, a header or
    meta that is not JSON (NaN included), a dict key that differs from the record's name."""
    if not isinstance(artifact.header, dict):
        raise ValueError(f"header: expected a dict, got {type(artifact.header).__name__}")
    regions: list[tuple[bytes, dict]] = []  # (data, its manifest entry, offset filled in below)
    tensors = []
    for key, rec in artifact.tensors.items():
        if key != rec.name:
            raise ValueError(f"tensors: key {key!r} differs from the record's name {rec.name!r}")
        _check_record(rec)
        entry_fields = {}
        for fname in sorted(rec.fields):
            arr = np.asarray(rec.fields[fname])
            data = np.ascontiguousarray(arr, dtype=arr.dtype.newbyteorder("<")).tobytes()
            entry = {"dtype": arr.dtype.name, "shape": list(arr.shape), "length": len(data)}
            entry["crc32"] = zlib.crc32(data)
            entry_fields[fname] = entry
            regions.append((data, entry))
        tensors.append(
            {
                "name": rec.name,
                "meta": rec.meta,
                "encoding": rec.encoding,
                "bits": rec.bits,
                "n": rec.n,
                "count": rec.count,
                "fields": entry_fields,
            }
        )
    blobs = {}
    for name in sorted(artifact.blobs):
        data = artifact.blobs[name]
        if not isinstance(name, str) or not isinstance(data, bytes | bytearray | memoryview):
            raise ValueError(f"blobs: expected str -> bytes, got {name!r} -> {type(data).__name__}")
        data = bytes(data)
        blobs[name] = {"length": len(data), "crc32": zlib.crc32(data)}
        regions.append((data, blobs[name]))
    manifest = {
        "format": FORMAT,
        "version": VERSION,
        "header": artifact.header,
        "blobs": blobs,
        "tensors": tensors,
    }
    # Offsets appear in the manifest, whose length decides where the data starts: lay out from a
    # guess and move the start on until the manifest fits (lengths only grow, so this ends).
    start = 0
    while True:
        offset = start
        for data, entry in regions:
            entry["offset"] = offset
            offset = _align(offset + len(data))
        try:
            text = _json_bytes(manifest)
        except (TypeError, ValueError) as e:
            raise ValueError(f"header/meta: expected JSON-able values: {e}") from None
        need = _align(HEADER_SIZE + len(text))
        if need <= start:
            break
        start = need
    total = max([start] + [e["offset"] + len(d) for d, e in regions])
    out = bytearray(total)
    out[:HEADER_SIZE] = _HEADER.pack(MAGIC, VERSION, 0, len(text), zlib.crc32(text), total)
    out[HEADER_SIZE : HEADER_SIZE + len(text)] = text
    for data, entry in regions:
        out[entry["offset"] : entry["offset"] + len(data)] = data
    return bytes(out)


def write_artifact(path: str | os.PathLike, artifact: Artifact) -> int:
    """Writes the artifact to `path` atomically (a temporary file in the same folder, then
    `os.replace`: an interrupted write never leaves a partial file). Returns bytes written."""
    data = to_bytes(artifact)
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return len(data)


# --- reading ---------------------------------------------------------------------------------


def _load(source) -> tuple[bytes, str]:
    """(file bytes, the name errors use) of a path or of bytes."""
    if isinstance(source, bytes | bytearray | memoryview):
        return bytes(source), "<bytes>"
    try:
        return Path(source).read_bytes(), str(source)
    except OSError as e:
        raise ArtifactError(f"{source}: cannot read: {e}") from None


def _parse_header(head: bytes, size: int, where: str) -> tuple[int, int]:
    """(manifest length, manifest CRC) from the first HEADER_SIZE bytes of a `size`-byte file."""
    if size == 0:
        raise ArtifactError(f"{where}: empty file, not an edge artifact")
    k = min(len(head), len(MAGIC))
    if head[:k] != MAGIC[:k]:
        raise ArtifactError(f"{where}: bad magic: not an edge artifact")
    if len(head) < HEADER_SIZE:
        raise ArtifactError(
            f"{where}: truncated: {len(head)} bytes, shorter than the {HEADER_SIZE}-byte header"
        )
    magic, version, reserved, mlen, mcrc, total = _HEADER.unpack(head[:HEADER_SIZE])
    if version != VERSION:
        raise ArtifactError(
            f"{where}: format version {version} is not supported (this reader reads {VERSION})"
        )
    if reserved != 0:
        raise ArtifactError(f"{where}: reserved header field is {reserved}, expected 0")
    if total != size:
        what = "truncated" if size < total else "trailing bytes"
        raise ArtifactError(f"{where}: {what}: header says {total} bytes, file has {size}")
    if HEADER_SIZE + mlen > size:
        raise ArtifactError(
            f"{where}: manifest length {mlen} runs past the end of the {size}-byte file"
        )
    return mlen, mcrc


def _parse_manifest(text: bytes, crc: int, where: str) -> dict:
    """The manifest object, its checksum and top-level structure checked."""
    if zlib.crc32(text) != crc:
        raise ArtifactError(f"{where}: manifest checksum mismatch (damaged)")
    try:
        manifest = json.loads(text.decode("utf-8"))
    except (ValueError, RecursionError) as e:  # UnicodeDecodeError and JSONDecodeError included
        raise ArtifactError(f"{where}: manifest is not UTF-8 JSON: {e}") from None
    if not isinstance(manifest, dict):
        raise ArtifactError(
            f"{where}: manifest: expected a JSON object, got {type(manifest).__name__}"
        )
    for key, typ in (
        ("format", str),
        ("version", int),
        ("header", dict),
        ("blobs", dict),
        ("tensors", list),
    ):
        if key not in manifest:
            raise ArtifactError(f"{where}: manifest: missing key {key!r}")
        if not isinstance(manifest[key], typ) or isinstance(manifest[key], bool):
            got = type(manifest[key]).__name__
            raise ArtifactError(f"{where}: manifest {key!r}: expected {typ.__name__}, got {got}")
    if manifest["format"] != FORMAT:
        raise ArtifactError(f"{where}: manifest format {manifest['format']!r}, expected {FORMAT!r}")
    if manifest["version"] != VERSION:
        raise ArtifactError(
            f"{where}: manifest version {manifest['version']} disagrees with the header's {VERSION}"
        )
    return manifest


def _entry(obj, keys: dict[str, type], where: str) -> dict:
    """obj checked to be a dict holding `keys` with values of the given types (ints not bool,
    ints >= 0)."""
    if not isinstance(obj, dict):
        raise ArtifactError(f"{where}: expected a JSON object, got {type(obj).__name__}")
    for key, typ in keys.items():
        if key not in obj:
            raise ArtifactError(f"{where}: missing key {key!r}")
        val = obj[key]
        if typ is int:
            if not _is_int(val) or val < 0:
                raise ArtifactError(f"{where}: {key}: expected an int >= 0, got {val!r}")
        elif not isinstance(val, typ):
            raise ArtifactError(
                f"{where}: {key}: expected {typ.__name__}, got {type(val).__name__}"
            )
    return obj


_REGION = {"offset": int, "length": int, "crc32": int}


def read_manifest(source: str | os.PathLike | bytes) -> dict:
    """The checked manifest of an artifact (a path, or the file's bytes), reading only the
    header and the manifest from a path. ArtifactError if they are damaged."""
    if isinstance(source, bytes | bytearray | memoryview):
        data, where = bytes(source), "<bytes>"
        head, size = data[:HEADER_SIZE], len(data)
    else:
        where = str(source)
        try:
            with open(source, "rb") as f:
                size = os.fstat(f.fileno()).st_size
                head = f.read(HEADER_SIZE)
                mlen, mcrc = _parse_header(head, size, where)
                text = f.read(mlen)
        except OSError as e:
            raise ArtifactError(f"{where}: cannot read: {e}") from None
        return _parse_manifest(text, mcrc, where)
    mlen, mcrc = _parse_header(head, size, where)
    return _parse_manifest(data[HEADER_SIZE : HEADER_SIZE + mlen], mcrc, where)


def read_header(source: str | os.PathLike | bytes) -> dict:
    """The caller's header dict (model config...) of an artifact, without reading its data."""
    return read_manifest(source)["header"]


def _region(data: bytes, entry: dict, where: str, data_start: int) -> tuple[int, int]:
    """(offset, length) of a region entry, checked against the file and its CRC."""
    off, length = entry["offset"], entry["length"]
    if off < data_start or off + length > len(data):
        raise ArtifactError(
            f"{where}: offset out of range: bytes {off}..{off + length} outside the data "
            f"({data_start}..{len(data)})"
        )
    if off % ALIGN:
        raise ArtifactError(f"{where}: offset {off} is not {ALIGN}-byte aligned")
    if zlib.crc32(data[off : off + length]) != entry["crc32"]:
        raise ArtifactError(f"{where}: checksum mismatch (damaged)")
    return off, length


def read_artifact(source: str | os.PathLike | bytes) -> Artifact:
    """The artifact in a file (a path, or the file's bytes), every byte checked: ArtifactError
    naming the problem for anything else. Arrays come back read-only, of the stored dtype and
    shape; blobs as bytes."""
    data, where = _load(source)
    mlen, mcrc = _parse_header(data[:HEADER_SIZE], len(data), where)
    manifest = _parse_manifest(data[HEADER_SIZE : HEADER_SIZE + mlen], mcrc, where)
    data_start = _align(HEADER_SIZE + mlen)
    used: list[tuple[int, int, str]] = []  # (offset, length, what) of every region

    tensors: dict[str, TensorRecord] = {}
    for i, obj in enumerate(manifest["tensors"]):
        t = _entry(
            obj,
            {
                "name": str,
                "meta": dict,
                "encoding": str,
                "bits": int,
                "n": int,
                "count": int,
                "fields": dict,
            },
            f"{where}: tensor #{i}",
        )
        name = t["name"]
        tw = f"{where}: tensor {name!r}"
        if name in tensors:
            raise ArtifactError(f"{tw}: stored twice")
        fields = {}
        for fname, fobj in sorted(t["fields"].items()):
            fw = f"{tw} field {fname!r}"
            e = _entry(fobj, {**_REGION, "dtype": str, "shape": list}, fw)
            if e["dtype"] not in DTYPES:
                raise ArtifactError(
                    f"{fw}: dtype {e['dtype']!r} not allowed (expected one of {DTYPES})"
                )
            shape = e["shape"]
            if not all(_is_int(s) and s >= 0 for s in shape):
                raise ArtifactError(f"{fw}: shape: expected ints >= 0, got {shape}")
            dtype = np.dtype(e["dtype"]).newbyteorder("<")
            if math.prod(shape) * dtype.itemsize != e["length"]:
                raise ArtifactError(
                    f"{fw}: shape {shape} of {e['dtype']} is {math.prod(shape) * dtype.itemsize} "
                    f"bytes, length says {e['length']}"
                )
            off, length = _region(data, e, fw, data_start)
            used.append((off, length, fw))
            arr = np.frombuffer(data, dtype=dtype, count=math.prod(shape), offset=off)
            try:
                fields[fname] = arr.reshape(shape)
            except ValueError as err:  # over 64 axes, or an axis past the address space
                raise ArtifactError(f"{fw}: shape {shape} is not a possible array: {err}") from None
        rec = TensorRecord(name, t["meta"], t["encoding"], t["bits"], t["n"], t["count"], fields)
        try:
            _check_record(rec)
        except ValueError as e:
            raise ArtifactError(f"{where}: {e}") from None
        tensors[name] = rec

    blobs = {}
    for name, obj in manifest["blobs"].items():
        bw = f"{where}: blob {name!r}"
        off, length = _region(data, _entry(obj, _REGION, bw), bw, data_start)
        used.append((off, length, bw))
        blobs[name] = data[off : off + length]
    blobs = dict(sorted(blobs.items()))

    # Everything outside the regions is padding and must be zero, so no byte goes unchecked.
    pos = HEADER_SIZE + mlen
    for off, length, what in sorted(used):
        if off < pos:
            raise ArtifactError(f"{what}: overlaps the previous region (offset {off} < {pos})")
        _check_zero(data, pos, off, where)
        pos = off + length
    _check_zero(data, pos, len(data), where)
    return Artifact(dict(manifest["header"]), tensors, blobs)


def _check_zero(data: bytes, start: int, stop: int, where: str) -> None:
    if stop > start and np.frombuffer(data, np.uint8, stop - start, start).any():
        raise ArtifactError(f"{where}: padding bytes {start}..{stop} are not zero (damaged)")
