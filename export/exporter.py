"""A trained model -> one edge artifact: kernels quantized per output channel, optionally pruned,
packed in the smallest encoding; everything else stored plainly; config and tokenizer inside.

What goes in (`export_model`):
- every kernel (the weight operand of a matrix product: Dense, DenseGeneral, Conv, LSTM gates;
  `asr.models.quant.is_kernel`) as a matrix [K, N]: K = the product of the axes its product
  contracts (the leading axes, `asr.models.quant.contracting_axes`), N = the output channels.
  Codes are `bits`-bit symmetric integers (the small layers', `asr.models.quant.SMALL_KERNELS`,
  `small_bits`-bit with mixed precision: `QuantPolicy.small_bits`), one step per output
  channel, computed exactly as the fake-quantization hook computes them
  (`asr.models.quant.fake_quant`), so the artifact holds what the fake-quant model multiplies
  by. Codes are packed by `export.encodings.choose` (dense int8 / int4, a bitmap of nonzeros
  plus the nonzero values, 4-bit gaps for high sparsity, or a per-tensor Huffman code when the
  codes' distribution is skewed enough to pay for it);
  the steps are a float32[N] record `<name>@scale`;
- with `sparsity` s: every kernel first pruned by magnitude to at least a share s of exact zeros
  (one-shot, per kernel; a model trained sparse already has them and is left as it is);
- not the auxiliary CTC head (a training aid; the artifact's config says `ctc_head: false`);
- embedding tables, biases, normalization parameters and the feature statistics as float16
  (the shipped model folder stores them as float16 too, so it loses nothing);
- the tokenizer's sentencepiece model as a blob (without the NFKC table it never needs:
  `compact_tokenizer`), the model config and quantization policy in the header;
- the model's phone head (`asr.phonetic`), when it has one, under `phones/` (`PHONES_PREFIX`):
  its kernels at `phone_bits` (8 by default: with the first shipped head on the emulated
  processor, 4 bits added 5 errors on 600 dev requests without names against 1 at 8 bits;
  README), the rest float16, its inventory, sizes and
  accents in the header's `phones`. `with_phones` adds (or replaces) a head in an existing
  artifact without touching its other bytes (`asr export add-phones`), for an artifact whose
  source folder holds no head (a fine-tune of a model that has one).

`artifact_variables` reverses it in NumPy (`artifact_phones` the phone head): float variables
whose kernels are codes x steps, i.e. the fake-quant model of the artifact (`asr.models.quant.QuantPolicy(bits, act_bits, small_bits)`
over these weights), the reference the emulated processor (`hw.runtime`) is measured against.
`size_report` says what the bytes are spent on.
"""

from __future__ import annotations

from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from asr.model_io import LoadedModel
from asr.models.config import ModelConfig, get_config
from asr.models.quant import QuantPolicy, contracting_axes, is_kernel, is_small, qmax
from asr.models.transducer import build_model, init_variables
from asr.phonetic import CONVS, PhoneModel, in_dim
from asr.tokenizer import Tokenizer
from export.artifact import Artifact, TensorRecord
from export.encodings import choose, decode

EXPORTER_VERSION = 1
SCALE_SUFFIX = "@scale"
TOKENIZER_BLOB = "tokenizer.model"
ACT_BITS = 8
PHONES_PREFIX = "phones/"  # the phone head's tensors: phones/params/Dense_0/kernel, ...
PHONE_BITS = 8


def _names(path) -> tuple[str, ...]:
    return tuple(str(getattr(k, "key", k)) for k in path)


def compact_tokenizer(proto: bytes) -> bytes:
    """The sentencepiece model without its NFKC normalization table (240 KB of the 243 KB
    file): text reaches the tokenizer already normalized by `asr.text.normalize_text` (only
    a-z, 0-9, apostrophes and single spaces), on which NFKC is the identity, so the ids are
    the same (tested on the corpus). Pieces, scores and whitespace rules are kept."""
    from sentencepiece import sentencepiece_model_pb2 as spm_pb2

    m = spm_pb2.ModelProto()
    m.ParseFromString(bytes(proto))
    m.normalizer_spec.name = "identity"
    m.normalizer_spec.precompiled_charsmap = b""
    return m.SerializeToString()


def matrix_shape(path, shape) -> tuple[int, int]:
    """(K, N) of kernel `path` with `shape`: contracted (leading) axes, then output channels."""
    axes = contracting_axes(path, shape)
    assert tuple(axes) == tuple(range(len(axes))), (path, shape, axes)  # leading axes
    k = int(np.prod(shape[: len(axes)]))
    return k, int(np.prod(shape)) // max(k, 1)


def quantize_kernel(w: np.ndarray, bits: int, k: int) -> tuple[np.ndarray, np.ndarray]:
    """f32 kernel -> (codes int8[K, N], steps f32[N]): the levels and steps `fake_quant` uses
    (step = max|w| / qmax over K, 1 / qmax for an all-zero channel; round half to even)."""
    m = jnp.asarray(w, jnp.float32).reshape(k, -1)
    amax = jnp.max(jnp.abs(m), axis=0, keepdims=True)
    step = jnp.where(amax > 0, amax, 1.0) / qmax(bits)
    codes = jnp.clip(jnp.round(m / step), -qmax(bits), qmax(bits))
    return np.asarray(codes, np.int8), np.asarray(step[0], np.float32)


def prune_kernel(w: np.ndarray, share: float) -> np.ndarray:
    """`w` with its smallest-magnitude weights zeroed until at least a `share` of it is zero."""
    w = np.asarray(w, np.float32)
    want = int(np.ceil(share * w.size))
    have = int(np.sum(w == 0))
    if want <= have:
        return w
    order = np.argsort(np.abs(w).ravel(), kind="stable")
    out = w.ravel().copy()
    out[order[:want]] = 0.0
    return out.reshape(w.shape)


def export_model(
    loaded: LoadedModel,
    bits: int,
    sparsity: float | None = None,
    act_bits: int = ACT_BITS,
    entropy: bool = True,
    small_bits: int | None = None,
    phone_bits: int = PHONE_BITS,
) -> Artifact:
    """The artifact of `loaded` (see module docstring) at `bits` (2..8) weight bits, the small
    layers at `small_bits` (2..8; None: as `loaded` was trained, `QuantPolicy.small_bits`, else
    `bits`); `entropy=False`: no entropy-coded kernels (`export.encodings.choose`); a phone
    head, when `loaded` has one, at `phone_bits`."""
    if small_bits is None:
        small_bits = getattr(loaded.model.quant, "small_bits", 0) or bits
    for name, b in (("bits", bits), ("small_bits", small_bits)):
        if not isinstance(b, int) or isinstance(b, bool) or not 2 <= b <= 8:
            raise ValueError(f"{name} must be an integer in [2, 8], got {b!r}")
    if sparsity is not None and not 0.0 <= sparsity < 1.0:
        raise ValueError(f"sparsity must be in [0, 1), got {sparsity!r}")
    tensors: dict[str, TensorRecord] = {}
    variables, config = loaded.variables, loaded.config
    if config.ctc_head:  # a training aid: recognition never reads it
        params = {k: v for k, v in variables["params"].items() if k != "ctc_out"}
        variables, config = {**variables, "params": params}, config.replace(ctc_head=False)
    leaves = jax.tree_util.tree_leaves_with_path(variables)
    for path, value in leaves:
        names = _names(path)
        name = "/".join(names)
        w = np.asarray(value, np.float32)
        if not is_kernel(path):
            meta = {"shape": list(w.shape), "role": "param"}
            tensors[name] = TensorRecord.raw(name, meta, w.astype(np.float16))
            continue
        if sparsity:
            w = prune_kernel(w, sparsity)
        b = small_bits if is_small(path[1:]) else bits
        rec, srec = _quantized_record(name, path[1:], w, b, entropy)  # path without collection
        tensors[name], tensors[srec.name] = rec, srec
    header = {
        "model": config.to_dict(),
        "quant": {"weight_bits": bits, "act_bits": act_bits}
        | ({"small_bits": small_bits} if small_bits != bits else {}),
        "sparsity_requested": sparsity,
        "source": str(loaded.source),
        "exporter_version": EXPORTER_VERSION,
    }
    blobs = {TOKENIZER_BLOB: compact_tokenizer(loaded.tokenizer.model_proto)}
    art = Artifact(header=header, tensors=tensors, blobs=blobs)
    phones = getattr(loaded, "phones", None)
    return art if phones is None else with_phones(art, phones, phone_bits, entropy)


def _quantized_record(name: str, path, w: np.ndarray, bits: int, entropy: bool):
    """A kernel's record and its steps' record (`<name>@scale`)."""
    k, n = matrix_shape(path, w.shape)
    codes, step = quantize_kernel(w, bits, k)
    enc = choose(codes, bits, entropy=entropy)
    meta = {"shape": list(w.shape), "role": "kernel", "K": k, "N": n}
    sname = name + SCALE_SUFFIX
    return TensorRecord.from_encoded(name, meta, enc), TensorRecord.raw(
        sname, {"shape": [n], "role": "scale"}, step
    )


def with_phones(
    artifact: Artifact, phones: PhoneModel, bits: int = PHONE_BITS, entropy: bool = True
) -> Artifact:
    """`artifact` with `phones` as its phone head (an existing one replaced; every other
    tensor, blob and header field kept as it is). Raises ValueError when the head reads states
    of another width than the artifact's encoder, or for bits outside 2..8."""
    if not isinstance(bits, int) or isinstance(bits, bool) or not 2 <= bits <= 8:
        raise ValueError(f"phone_bits must be an integer in [2, 8], got {bits!r}")
    d_model = artifact_config(artifact).d_model
    if in_dim(phones.params) != d_model:
        raise ValueError(
            f"the phone head reads {in_dim(phones.params)}-wide encoder states, the artifact's "
            f"encoder gives {d_model}"
        )
    tensors = {k: v for k, v in artifact.tensors.items() if not k.startswith(PHONES_PREFIX)}
    for path, value in jax.tree_util.tree_leaves_with_path(phones.params):
        names = _names(path)
        name = PHONES_PREFIX + "/".join(names)
        w = np.asarray(value, np.float32)
        if is_kernel(path):
            rec, srec = _quantized_record(name, path[1:], w, bits, entropy)
            tensors[name], tensors[srec.name] = rec, srec
        else:
            meta = {"shape": list(w.shape), "role": "param"}
            tensors[name] = TensorRecord.raw(name, meta, w.astype(np.float16))
    header = dict(artifact.header, phones=dict(phones.meta(), bits=bits))
    return Artifact(header=header, tensors=tensors, blobs=dict(artifact.blobs))


def phone_meta(artifact: Artifact, source: str = "artifact") -> dict | None:
    """The header's `phones` entry, checked, with the phone tensors checked against it (None:
    no head). Raises ValueError naming what is wrong."""
    meta = artifact.header.get("phones")
    has = any(k.startswith(PHONES_PREFIX) for k in artifact.tensors)
    if meta is None and not has:
        return None
    if meta is None or not has:
        what = "phone tensors without a header entry" if has else "a header entry, no tensors"
        raise ValueError(f"{source}: damaged phone head ({what})")
    try:
        out = {
            "inventory": tuple(str(p) for p in meta["inventory"]),
            "hidden": int(meta["hidden"]),
            "kernel": int(meta["kernel"]),
            "accents": tuple(str(a) for a in meta["accents"]),
            "conv": str(meta.get("conv", "full")),  # heads exported before `conv` are full
        }
    except (KeyError, TypeError, ValueError) as e:
        raise ValueError(f"{source}: damaged phone head header ({e!r})") from None
    bad = not out["inventory"] or min(out["hidden"], out["kernel"]) < 1 or not out["accents"]
    if bad or out["conv"] not in CONVS:
        raise ValueError(f"{source}: damaged phone head header ({meta})")
    _check_phone_tensors(artifact, out, source)
    return out


def _phone_shapes(meta: dict, d_model: int) -> dict:
    """{'params/Dense_0/kernel': shape, ...} of the head `meta` describes."""
    head = PhoneModel(
        {}, meta["inventory"], meta["hidden"], meta["kernel"], conv=meta.get("conv", "full")
    ).head
    want = jax.eval_shape(
        head.init, jax.random.PRNGKey(0), jnp.zeros((1, 8, d_model)), jnp.zeros((1, 8))
    )
    return {
        "/".join(_names(p)): tuple(x.shape) for p, x in jax.tree_util.tree_leaves_with_path(want)
    }


def _check_phone_tensors(artifact: Artifact, meta: dict, source: str) -> None:
    """Raises ValueError unless the artifact's phone tensors are exactly the head `meta`
    describes, on the artifact's encoder width."""
    want = _phone_shapes(meta, artifact_config(artifact).d_model)
    got = {
        k[len(PHONES_PREFIX) :]: tuple(r.meta.get("shape", ()))
        for k, r in artifact.tensors.items()
        if k.startswith(PHONES_PREFIX) and r.meta.get("role") != "scale"
    }
    if got != want:
        raise ValueError(f"{source}: the phone head's tensors do not fit its header")


def artifact_phones(artifact: Artifact, source: str = "artifact") -> PhoneModel | None:
    """The artifact's phone head as float weights (kernels = codes x steps), or None."""
    meta = phone_meta(artifact, source)
    if meta is None:
        return None
    flat = {}
    for name, rec in artifact.tensors.items():
        if not name.startswith(PHONES_PREFIX) or rec.meta.get("role") == "scale":
            continue
        key = name[len(PHONES_PREFIX) :]
        if rec.meta.get("role") == "kernel":
            codes, step = kernel_codes(artifact, name)
            flat[key] = (codes.astype(np.float32) * step[None, :]).reshape(rec.meta["shape"])
        else:
            flat[key] = np.asarray(rec.fields["data"], np.float32).reshape(rec.meta["shape"])
    return PhoneModel(unflatten(flat), **meta)


def artifact_config(artifact: Artifact) -> ModelConfig:
    return ModelConfig.from_dict(artifact.header["model"])


def artifact_tokenizer(artifact: Artifact) -> Tokenizer:
    return Tokenizer(bytes(artifact.blobs[TOKENIZER_BLOB]))


def kernel_codes(artifact: Artifact, name: str) -> tuple[np.ndarray, np.ndarray]:
    """(codes int8[K, N], steps f32[N]) of kernel record `name`, decoded in NumPy."""
    rec = artifact.tensors[name]
    codes = decode(rec.to_encoded()).reshape(rec.meta["K"], rec.meta["N"])
    return codes, np.asarray(artifact.tensors[name + SCALE_SUFFIX].fields["data"], np.float32)


def unflatten(flat: dict) -> dict:
    """{'a/b/c': x} -> {'a': {'b': {'c': x}}} (tensor names back to a variables tree)."""
    tree: dict = {}
    for name, value in flat.items():
        *parents, leaf = name.split("/")
        node = tree
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    return tree


def artifact_variables(artifact: Artifact) -> dict:
    """Float variables {'params', 'norm'} of the artifact: kernels = codes x steps (float32),
    the rest widened from float16. With `QuantPolicy(bits, act_bits)` these are the artifact's
    fake-quant model."""
    flat = {}
    for name, rec in artifact.tensors.items():
        role = rec.meta.get("role")
        if role == "scale" or name.startswith(PHONES_PREFIX):
            continue
        if role == "kernel":
            codes, step = kernel_codes(artifact, name)
            w = codes.astype(np.float32) * step[None, :]
            flat[name] = w.reshape(rec.meta["shape"])
        else:
            flat[name] = np.asarray(rec.fields["data"], np.float32).reshape(rec.meta["shape"])
    return unflatten(flat)


def reference_model(artifact: Artifact, source: str = "artifact (fake-quant)") -> LoadedModel:
    """The artifact's fake-quant model in plain JAX: its decoded weights under
    `QuantPolicy(bits, act_bits, small_bits)`; what the emulated processor (`hw.runtime`) must
    recognize alike."""
    q = artifact.header["quant"]
    config = artifact_config(artifact)
    model = build_model(
        config, QuantPolicy(q["weight_bits"], q["act_bits"], q.get("small_bits", 0))
    )
    tok = artifact_tokenizer(artifact)
    phones = artifact_phones(artifact, source)
    return LoadedModel(model, artifact_variables(artifact), tok, config, source, phones)


def float32_params(config: ModelConfig) -> int:
    """Number of parameters (all variables) of a model of `config`."""
    shapes = jax.eval_shape(
        lambda: init_variables(build_model(config), jax.random.PRNGKey(0))["params"]
    )
    return int(sum(np.prod(s.shape) for s in jax.tree_util.tree_leaves(shapes)))


def size_report(artifact: Artifact, file_bytes: int | None = None) -> dict:
    """Bytes per tensor and in total, against float32 and the `large` model's float32 size.

    Keys: bytes (the file, or the tensors plus blobs without one), tensor_bytes,
    float32_bytes (every variable of this model as float32, its phone head's too),
    phone_bytes (the phone head's tensors, also in bytes and tensor_bytes), large_float32_bytes,
    share_of_large, bits, zero_fraction (share of zero codes in the packed kernels),
    kernel_bytes, other_bytes, encodings (count per encoding), tensors (per tensor rows).
    """
    rows, zeros, total_w = [], 0, 0
    float32 = kernel_bytes = other_bytes = phone_bytes = 0
    encodings: dict[str, int] = {}
    for name, rec in artifact.tensors.items():
        role = rec.meta.get("role")
        nbytes = rec.nbytes
        if name.startswith(PHONES_PREFIX):  # the phone head: counted apart
            phone_bytes += nbytes
            if role != "scale":
                float32 += 4 * int(np.prod(rec.meta["shape"]))
            continue
        if role == "kernel":
            codes, _ = kernel_codes(artifact, name)
            z = int(np.sum(codes == 0))
            zeros += z
            total_w += codes.size
            nbytes += artifact.tensors[name + SCALE_SUFFIX].nbytes
            kernel_bytes += nbytes
            encodings[rec.encoding] = encodings.get(rec.encoding, 0) + 1
            row_zero = z / codes.size
        elif role == "scale":
            continue
        else:
            other_bytes += nbytes
            row_zero = None
        n = int(np.prod(rec.meta["shape"]))
        float32 += 4 * n
        rows.append(
            {
                "name": name,
                "shape": rec.meta["shape"],
                "encoding": rec.encoding,
                "bytes": nbytes,
                "float32_bytes": 4 * n,
                "zero_fraction": row_zero,
            }
        )
    tensor_bytes = kernel_bytes + other_bytes + phone_bytes
    blob_bytes = sum(len(b) for b in artifact.blobs.values())
    large = 4 * float32_params(get_config("large"))
    total = int(file_bytes) if file_bytes is not None else tensor_bytes + blob_bytes
    return {
        "bytes": total,
        "tensor_bytes": tensor_bytes,
        "kernel_bytes": kernel_bytes,
        "other_bytes": other_bytes,
        "phone_bytes": phone_bytes,
        "blob_bytes": blob_bytes,
        "float32_bytes": float32,
        "large_float32_bytes": large,
        "share_of_float32": total / float32,
        "share_of_large": total / large,
        "bits": artifact.header["quant"]["weight_bits"],
        "act_bits": artifact.header["quant"]["act_bits"],
        "small_bits": artifact.header["quant"].get("small_bits", 0),
        "zero_fraction": zeros / max(total_w, 1),
        "encodings": encodings,
        "tensors": rows,
    }


def format_report(report: dict, top: int = 12) -> str:
    """The size report as text: totals, then the largest tensors."""
    mb = 1e6
    lines = [
        f"artifact: {report['bytes'] / mb:.3f} MB ({report['bytes']} bytes) at "
        f"{report['bits']}-bit weights"
        + (f" (small layers {report['small_bits']}-bit)" if report.get("small_bits") else "")
        + f", {100 * report['zero_fraction']:.1f}% zero weights",
        f"  kernels {report['kernel_bytes'] / mb:.3f} MB (encodings {report['encodings']}), "
        f"other parameters {report['other_bytes'] / mb:.3f} MB (float16), "
        f"tokenizer etc. {report['blob_bytes'] / mb:.3f} MB"
        + (
            f", phone head {report['phone_bytes'] / mb:.3f} MB" if report.get("phone_bytes") else ""
        ),
        f"  vs float32 of this model {report['float32_bytes'] / mb:.3f} MB: "
        f"{100 * report['share_of_float32']:.1f}%",
        f"  vs float32 of the large server model {report['large_float32_bytes'] / mb:.1f} MB: "
        f"{100 * report['share_of_large']:.2f}%",
        f"largest {min(top, len(report['tensors']))} tensors:",
    ]
    for r in sorted(report["tensors"], key=lambda r: -r["bytes"])[:top]:
        z = "" if r["zero_fraction"] is None else f", {100 * r['zero_fraction']:.0f}% zeros"
        lines.append(
            f"  {r['name']:<52} {str(tuple(r['shape'])):<18} {r['encoding']:<7} "
            f"{r['bytes']:>8} B ({100 * r['bytes'] / r['float32_bytes']:.1f}% of float32{z})"
        )
    return "\n".join(lines)


def export_to_file(
    loaded: LoadedModel,
    out: str | Path,
    bits: int,
    sparsity=None,
    entropy: bool = True,
    small_bits: int | None = None,
    phone_bits: int = PHONE_BITS,
) -> dict:
    """Exports `loaded` to `out` and returns its size report."""
    from export.artifact import write_artifact

    art = export_model(
        loaded, bits, sparsity, entropy=entropy, small_bits=small_bits, phone_bits=phone_bits
    )
    n = write_artifact(out, art)
    return size_report(art, n)


__all__ = [
    "PHONES_PREFIX",
    "artifact_config",
    "artifact_phones",
    "compact_tokenizer",
    "artifact_tokenizer",
    "artifact_variables",
    "export_model",
    "export_to_file",
    "format_report",
    "kernel_codes",
    "matrix_shape",
    "prune_kernel",
    "quantize_kernel",
    "reference_model",
    "size_report",
    "unflatten",
    "phone_meta",
    "with_phones",
]
