"""The emulated edge processor's runtime: executes an artifact (`export/`) with the hardware's
primitives, behind the same recognizer interface as a float model.

How it runs a model. The transducer's own Flax modules (`asr.models`) are applied unchanged; a
Flax method interceptor (`flax.linen.intercept_methods`) replaces every product that holds a
weight matrix by what the chip does, and the policy's `einsum` does the same for the two
activation x activation products of attention:

  NPU (integer, `hw.primitives`)                      DSP (float32, as a vector DSP would)
  ------------------------------------------------    -----------------------------------------
  decode_weights: packed low-bit codes + zero map     activation scale per row (max |x| / 127)
     or Huffman-coded codes -> int8 weights, in       and rounding to int8 (`quantize_rows`)
     circuitry
  int_matmul: int8 x int8 -> int32 accumulators,      int32 -> float32 times row scale times
     products on zero weights skipped, requantized    the layer's output scale; bias add;
     per output channel by a fixed-point multiplier   softmax, LayerNorm, GLU, swish, tanh,
     and shift                                         sigmoid, rotary positions, masking

Dense, DenseGeneral (attention projections), Conv (the 4x subsampling convolutions by im2col,
the depthwise causal convolution as one product per channel: a batched `int_matmul`) and the
LSTM cell's input and recurrent products run on the NPU; attention scores (q k^T) and the
attention-weighted values (w v) are int8 x int8 products with scales applied on the DSP. The
arithmetic of the activations (per-row scales, per-utterance scales for convolution inputs) is
the fake-quantization policy's (`asr.models.quant.QuantPolicy`), so the runtime recognizes what
the artifact's fake-quant model recognizes; they differ only where the integer requantization
rounds (tested: identical hypotheses, see README).

Requantization: channel n of a kernel with per-channel steps s[n] and codes c[k, n] has an
accumulator |acc[n]| <= 127 * sum_k |c[k, n]| (an exact bound: activation codes are within
+-127); when the artifact is loaded ("compiled") the steps become fixed-point multipliers
mult[n] * 2^-shift[n] = s[n] / max(s) * 2^F, with F the largest integer keeping every channel's
product below 2^31 (no saturation possible), and one float output scale max(s) * 2^-F per layer
that the DSP multiplies in with the activation scale. The int32 output keeps F fractional bits
of the scaled sum, so the requantization rounds at about 1e-6 of a typical output.

Branch rows. A branching encoder (`asr.models.branching`) runs each branch's products inside
`only_rows(mask)`, mask f32[B, T'] nonzero on the frames that chose the branch. While a mask is
active the interceptor passes it to `int_matmul` as the row-activity operand, so only the
chosen frames' rows are computed (the others are 0; the model mixes the branches by the choice,
so they change nothing) and the cost model (`hw.cost`) counts only them (and the DSP work inside
the mask on the share of chosen rows, from the named scope `only_rows` opens): a Dense or
DenseGeneral over x[B, T', ...] takes rows = mask[b, t] (broadcast over further leading dims);
a convolution whose output is [B, T', ...] takes mask[b, t] for every output position of time
step t (the subsampling convolutions' frequency rows, every channel of a depthwise one). The
attention products (`integer_einsum`) take it for their query rows (scores q k^T and the
weighted values w v of a frame that skips attention are not needed). A mask whose shape does not
lead the product's rows (the first subsampling convolution, which both branches share, runs
outside any mask; the predictor, joiner and biasing network too) changes nothing.
`EdgePolicy(branch_rows=False)` computes every row, as float execution does (for comparisons).

Like a float model, everything runs on the same segments, batches and chunked attention mask as
`asr.recognizer.Recognizer` (whole-utterance encoder with the chunk mask), or step by step:
`encode_step` (`init_stream` has no product and is inherited) runs a chunk with the encoder's
caches (`asr.models.encoder`), so `asr.streaming.StreamingRecognizer` / `Recognizer.stream()`
decode an artifact as it streams. Per-call scales: a convolution input is quantized with one
step over all its frames (per utterance whole; per step when streaming: the chunk and its
cached left context), and the attention values with one step per head and channel over the
keys of the call (the utterance whole; the cache and the chunk in a step). So the streamed
encoder output differs from the whole-utterance run by a few activation steps (about 3% of its
largest value on a tiny random model, tests/test_hw_streaming.py), what the device itself
does; the fake-quant model streams with the same scales, and the runtime's step matches it as
its whole run does. `load_edge(path)` is the `edge` entry of the `asr.model_loaders`
entry-point group: `asr transcribe|eval --model model.edge` finds it without `asr` importing `hw`.

References: Jacob et al. 2018, "Quantization and Training of Neural Networks for Efficient
Integer-Arithmetic-Only Inference"; Chen et al. 2019, "Eyeriss v2" (compressed sparse weights
decoded on chip, zero skipping).
"""

from __future__ import annotations

import functools
import itertools
import math
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from asr.model_io import LoadedModel, ModelLoadError
from asr.models.branching import active_rows
from asr.models.predictor import PREDICTORS
from asr.models.quant import LSTM_GATES, LstmCell, QuantPolicy, lstm_update, qmax
from asr.models.transducer import ENCODER_CLASSES, Transducer
from asr.phonetic import PhoneHead, PhoneModel
from export.artifact import Artifact, ArtifactError, read_artifact
from export.encodings import decode
from export.exporter import (
    PHONES_PREFIX,
    SCALE_SUFFIX,
    artifact_config,
    artifact_tokenizer,
    phone_meta,
    unflatten,
)
from hw.primitives import decode_weights, int_matmul
from hw.primitives.fixedpoint import quantize_multiplier

# operand order of each encoding's fields for `decode_weights`
FIELD_ORDER = {
    "int8": ("values",),
    "int4": ("values",),
    "bitmap": ("bitmap", "values"),
    "gaps": ("gaps", "values"),
    "huffman": ("lengths", "blocks", "stream"),
}
UNIT_MULT, UNIT_SHIFT = 1 << 30, 30  # the fixed-point multiplier 1.0


class KernelLayout(NamedTuple):
    """Static facts of one packed kernel (a jit cache key): where, how packed, what shape."""

    path: str  # module path + "/kernel" (e.g. encoder/layer_0/SelfAttention_0/qkv/kernel)
    encoding: str
    bits: int
    count: int  # stored values
    k: int  # contracted inputs
    n: int  # output channels


def quantize_rows(x: jax.Array, bits: int, axes) -> tuple[jax.Array, jax.Array]:
    """x f32 -> (int8 codes, f32 step with `axes` kept as size 1): the DSP's activation
    quantization, `asr.models.quant.fake_quant`'s levels (step = max|x| / qmax over `axes`)."""
    m = qmax(bits)
    amax = jnp.max(jnp.abs(x), axis=tuple(axes), keepdims=True)
    step = jnp.where(amax > 0, amax, 1.0) / m
    return jnp.clip(jnp.round(x / step), -m, m).astype(jnp.int8), step


def requantization(step: np.ndarray, codes: np.ndarray, act_bits: int):
    """Per-channel steps f32[N] and the codes int8[K, N] of a kernel -> (mult int32[N],
    shift int32[N], output scale f32): see the module docstring. The bound on channel n's
    accumulator is exact: |acc[n]| <= qmax(act_bits) * sum_k |codes[k, n]|."""
    step = np.asarray(step, np.float64)
    ref = float(np.max(step)) if step.size and np.max(step) > 0 else 1.0
    ratio = step / ref  # (0, 1]
    acc_max = qmax(act_bits) * np.sum(np.abs(np.asarray(codes, np.int64)), axis=0)
    live = (acc_max > 0) & (ratio > 0)
    worst = float(np.max(acc_max[live] * ratio[live])) if np.any(live) else 1.0
    # the largest F with every channel's |acc| * ratio * 2^F < 2^31, and the multiplier's
    # range (ratio * 2^F < 2^30) respected
    frac = min(math.floor(math.log2((2**31 - 1) / worst)), 29)
    mult, shift = quantize_multiplier(ratio * 2.0**frac)
    return (
        np.asarray(mult, np.int32),
        np.asarray(shift, np.int32),
        np.float32(ref * 2.0**-frac),
    )


@dataclass(frozen=True)
class EdgePolicy(QuantPolicy):
    """The quantization policy of the emulated processor: activation x activation products
    (attention) as int8 products on the NPU; every weight product is intercepted (module
    docstring), so `dot_general` and `conv` are never reached. `branch_rows`: compute a
    branching encoder's products only on the frames of the chosen branch (module docstring);
    False computes every row."""

    branch_rows: bool = True

    def describe(self) -> str:
        rows = "" if self.branch_rows else ", every row"
        return f"edge {super().describe()}{rows}"

    def einsum(self, spec: str, a, b):
        rows = active_rows() if self.branch_rows else None
        return integer_einsum(spec, a, b, self.act_bits, rows)


def integer_einsum(
    spec: str, a: jax.Array, b: jax.Array, act_bits: int, rows: jax.Array | None = None
) -> jax.Array:
    """`jnp.einsum(spec, a, b)` of two float activations as an int8 product: each operand
    quantized over the axes it contracts (one step per remaining index, as the fake-quant
    policy does), integer product and int32 sums on the NPU, both steps applied after.

    `rows` (nonzero = needed), when shaped [a's first axis, a's free axes] (e.g. f32[B, T'] for
    the attention products "bqhd,bkhd->bhqk" and "bhqk,bkhd->bqhd": utterance and query) and
    a's first axis is a batch axis of the product: only those rows of the product are computed
    (the others are 0), the same for every other batch index (heads). Otherwise ignored."""
    ins, out = spec.replace(" ", "").split("->")
    sa, sb = ins.split(",")
    batch = [c for c in out if c in sa and c in sb]
    afree = [c for c in out if c in sa and c not in sb]
    bfree = [c for c in out if c in sb and c not in sa]
    contr = [c for c in sa if c in sb and c not in out]
    assert len(batch + afree + bfree) == len(out) and all(c in sa for c in contr), spec
    qa, stepa = quantize_rows(a, act_bits, [sa.index(c) for c in contr])
    qb, stepb = quantize_rows(b, act_bits, [sb.index(c) for c in contr])
    dims = {**dict(zip(sa, a.shape, strict=True)), **dict(zip(sb, b.shape, strict=True))}

    def size(chars):
        return int(np.prod([dims[c] for c in chars]))

    xa = jnp.transpose(qa, [sa.index(c) for c in batch + afree + contr])
    xb = jnp.transpose(qb, [sb.index(c) for c in batch + contr + bfree])
    nb = size(batch)
    xa = xa.reshape(nb, size(afree), size(contr))
    xb = xb.reshape(nb, size(contr), size(bfree))
    ones = jnp.full((nb, size(bfree)), UNIT_MULT, jnp.int32)
    active = None
    want = (dims[sa[0]], *(dims[c] for c in afree))
    if rows is not None and sa[0] in batch and tuple(rows.shape) == want:
        # mask[i, r] at a's first axis = i among the batch axes, the same for the others
        lead = [dims[c] if c == sa[0] else 1 for c in batch]
        active = jnp.broadcast_to(
            (rows != 0).reshape(*lead, *(dims[c] for c in afree)),
            [dims[c] for c in batch + afree],
        ).reshape(nb, size(afree))
    acc = int_matmul(xa, xb, ones, jnp.full_like(ones, UNIT_SHIFT), active)  # -> [nb, Ma, Nb]
    acc = acc.reshape([dims[c] for c in batch + afree + bfree])
    # the steps, laid out as the product's axes (contracted axes are size 1 in each)
    ta = jnp.transpose(stepa, [sa.index(c) for c in batch + afree + contr])
    ta = ta.reshape([dims[c] for c in batch + afree] + [1] * len(bfree))
    tb = jnp.transpose(stepb, [sb.index(c) for c in batch + contr + bfree])
    tb = tb.reshape([dims[c] for c in batch] + [1] * len(afree) + [dims[c] for c in bfree])
    y = acc.astype(jnp.float32) * ta * tb
    order = batch + afree + bfree
    return jnp.transpose(y, [order.index(c) for c in out])


def _decode(entry: dict, lay: KernelLayout) -> jax.Array:
    """The packed kernel -> int8[K, N], decoded on chip."""
    fields = tuple(entry["fields"])
    n = lay.k * lay.n
    w = decode_weights(fields, encoding=lay.encoding, bits=lay.bits, n=n, count=lay.count)
    return w.reshape(lay.k, lay.n)


def _kernel_matmul(
    entry: dict, lay: KernelLayout, xq: jax.Array, rows: jax.Array | None = None
) -> jax.Array:
    """int8[..., M, K] activations (rows bool[..., M] or None: all) x the packed kernel ->
    f32[..., M, N] (without the activation step): decode on chip, integer product, requantize,
    output scale."""
    acc = int_matmul(xq, _decode(entry, lay), entry["mult"], entry["shift"], rows)
    return acc.astype(jnp.float32) * entry["oscale"]


def _linear(
    entry, lay: KernelLayout, x: jax.Array, act_bits: int, rows: jax.Array | None = None
) -> jax.Array:
    """f32[..., K] -> f32[..., N] through the packed kernel, activations per row; with `rows`
    bool[...] only the active rows are computed (0 elsewhere, before the caller's bias)."""
    assert x.shape[-1] == lay.k, (lay.path, x.shape, lay.k)
    xq, step = quantize_rows(x, act_bits, (-1,))
    lead = x.shape[:-1]
    flat = None if rows is None else rows.reshape(-1)
    y = _kernel_matmul(entry, lay, xq.reshape(-1, lay.k), flat)
    return y.reshape(*lead, lay.n) * step


class _Edge:
    """The interceptor: module calls -> NPU programs (see the module docstring)."""

    def __init__(self, layout: tuple[KernelLayout, ...], act_bits: int, branch_rows: bool = True):
        self.layout = {lay.path: lay for lay in layout}
        self.act_bits = act_bits
        self.branch_rows = branch_rows

    def _lay(self, module, name="kernel") -> KernelLayout:
        return self.layout["/".join(module.path) + "/" + name]

    def _rows(self, lead: tuple[int, ...]) -> jax.Array | None:
        """bool[*lead]: the innermost `only_rows` mask (f32[B, T']) broadcast over the product
        rows `lead` = (B, T', ...) it leads, or None (every row) outside a mask or when its
        shape does not lead `lead`."""
        mask = active_rows() if self.branch_rows else None
        if mask is None or mask.ndim > len(lead) or tuple(mask.shape) != tuple(lead[: mask.ndim]):
            return None
        active = (mask != 0).reshape(*mask.shape, *(1,) * (len(lead) - mask.ndim))
        return jnp.broadcast_to(active, lead)

    def __call__(self, next_fun, args, kwargs, context):
        m = context.module
        if context.method_name != "__call__":
            return next_fun(*args, **kwargs)
        if isinstance(m, LstmCell):
            return self.lstm(m, *args, **kwargs)
        if isinstance(m, nn.Dense):
            return self.dense(m, *args, **kwargs)
        if isinstance(m, nn.DenseGeneral):
            return self.dense_general(m, *args, **kwargs)
        if isinstance(m, nn.Conv):
            return self.conv(m, *args, **kwargs)
        return next_fun(*args, **kwargs)

    def _bias(self, m, like: jax.Array, shape) -> jax.Array:
        if not m.use_bias:
            return like
        return like + jnp.asarray(m.get_variable("params", "bias")).reshape(shape)

    def dense(self, m: nn.Dense, x: jax.Array) -> jax.Array:
        rows = self._rows(x.shape[:-1])
        y = _linear(m.get_variable("edge", "kernel"), self._lay(m), x, self.act_bits, rows)
        return self._bias(m, y, (1,) * (y.ndim - 1) + (-1,))

    def dense_general(self, m: nn.DenseGeneral, x: jax.Array) -> jax.Array:
        axes = (m.axis,) if isinstance(m.axis, int) else tuple(m.axis)
        axes = tuple(sorted(a % x.ndim for a in axes))
        lead = x.ndim - len(axes)
        assert axes == tuple(range(lead, x.ndim)) and not m.batch_dims, (m.path, m.axis)
        feats = (m.features,) if isinstance(m.features, int) else tuple(m.features)
        y = _linear(
            m.get_variable("edge", "kernel"),
            self._lay(m),
            x.reshape(*x.shape[:lead], -1),
            self.act_bits,
            self._rows(x.shape[:lead]),
        )
        y = y.reshape(*x.shape[:lead], *feats)
        return self._bias(m, y, (1,) * lead + feats)

    def conv(self, m: nn.Conv, x: jax.Array) -> jax.Array:
        """NHWC-style x f32[B, *spatial, Cin], padding VALID (the model pads explicitly)."""
        lay, entry = self._lay(m), m.get_variable("edge", "kernel")
        ks = tuple(m.kernel_size)
        nd = len(ks)
        strides = (m.strides,) * nd if isinstance(m.strides, int) else tuple(m.strides or (1,) * nd)
        assert m.padding == "VALID" and x.ndim == nd + 2, (m.path, m.padding, x.shape)
        assert m.kernel_dilation in (None, 1) and m.input_dilation in (None, 1), m.path
        xq, step = quantize_rows(x, self.act_bits, tuple(range(1, x.ndim)))  # per utterance
        b, cin = x.shape[0], x.shape[-1]
        out = [(x.shape[1 + i] - ks[i]) // strides[i] + 1 for i in range(nd)]
        taps = []
        for off in itertools.product(*[range(k) for k in ks]):
            sl = tuple(
                slice(o, o + (out[i] - 1) * strides[i] + 1, strides[i]) for i, o in enumerate(off)
            )
            taps.append(xq[(slice(None), *sl)])  # -> [B, *out, Cin]
        p = jnp.stack(taps, axis=-2)  # -> [B, *out, taps, Cin]; K order = (taps, Cin)
        m_rows = int(np.prod(out))
        rows = self._rows((b, *out))  # output positions of the chosen frames, or None
        if m.feature_group_count == 1:
            flat = None if rows is None else rows.reshape(b, m_rows)
            y = _kernel_matmul(entry, lay, p.reshape(b, m_rows, len(taps) * cin), flat)
        else:  # depthwise: one product of [B*M, taps] x [taps, 1] per channel
            assert m.feature_group_count == cin == lay.n and lay.k == len(taps), m.path
            cols = jnp.moveaxis(p.reshape(b * m_rows, len(taps), cin), -1, 0)  # [C, BM, taps]
            w = _decode(entry, lay)
            per_channel = None
            if rows is not None:  # the same rows for every channel
                per_channel = jnp.broadcast_to(rows.reshape(b * m_rows), (cin, b * m_rows))
            mult, shift = entry["mult"][:, None], entry["shift"][:, None]
            acc = int_matmul(cols, w.T[:, :, None], mult, shift, per_channel)  # -> [C, BM, 1]
            y = acc[..., 0].T.reshape(b, m_rows, cin).astype(jnp.float32) * entry["oscale"]
        y = y.reshape(b, *out, lay.n) * step
        return self._bias(m, y, (1,) * (nd + 1) + (-1,))

    def lstm(self, m: LstmCell, carry, inputs):
        c, h = carry
        edge = {g: m.get_variable("edge", g)["kernel"] for g in ("i" + x for x in LSTM_GATES)}
        edge.update({g: m.get_variable("edge", g)["kernel"] for g in ("h" + x for x in LSTM_GATES)})
        zi = jnp.concatenate(
            [_linear(edge["i" + g], self._lay(m, f"i{g}/kernel"), inputs, self.act_bits)
             for g in LSTM_GATES], axis=-1)  # fmt: skip
        zh = jnp.concatenate(
            [_linear(edge["h" + g], self._lay(m, f"h{g}/kernel"), h, self.act_bits)
             for g in LSTM_GATES], axis=-1)  # fmt: skip
        bias = jnp.concatenate(
            [jnp.asarray(m.get_variable("params", "h" + g)["bias"]) for g in LSTM_GATES]
        )
        new_c, new_h = lstm_update(zi, zh + bias, c)
        return (new_c, new_h), new_h


def _on_edge(method):
    """A Transducer method run with every weight product on the emulated NPU."""

    @functools.wraps(method)
    def run(self, *args, **kwargs):
        edge = _Edge(self.layout, self.quant.act_bits, self.quant.branch_rows)
        with nn.intercept_methods(edge):
            return method(self, *args, **kwargs)

    return run


class EdgeTransducer(Transducer):
    """`Transducer` whose weights live packed in the `edge` variable collection and whose
    products run on the emulated processor; `layout` (static) says how each kernel is packed.
    Same methods, same outputs' shapes: `asr.recognizer` and `asr.decoding` use it unchanged."""

    layout: tuple[KernelLayout, ...] = ()

    encode = _on_edge(Transducer.encode)
    encode_aux = _on_edge(Transducer.encode_aux)
    encode_states = _on_edge(Transducer.encode_states)
    encode_step = _on_edge(Transducer.encode_step)  # init_stream has no product: inherited
    encode_step_states = _on_edge(Transducer.encode_step_states)
    bias_attention = _on_edge(Transducer.bias_attention)
    context_entries = _on_edge(Transducer.context_entries)
    predict = _on_edge(Transducer.predict)
    predict_step = _on_edge(Transducer.predict_step)
    joint = _on_edge(Transducer.joint)
    ctc_logits = _on_edge(Transducer.ctc_logits)


class EdgePhoneHead(PhoneHead):
    """`asr.phonetic.PhoneHead` with its dense and convolution products on the emulated NPU
    (int8 activations per row, the convolution's per utterance, as the encoder's); the norm,
    GELU and log-softmax on the DSP."""

    layout: tuple[KernelLayout, ...] = ()
    act_bits: int = 8

    def __call__(self, x, paddings, train: bool = False):
        with nn.intercept_methods(_Edge(self.layout, self.act_bits, False)):
            return PhoneHead.__call__(self, x, paddings, train)


@dataclass(frozen=True)
class EdgePhoneModel(PhoneModel):
    """A phone head from an artifact: `params` holds its float parameters (`params`) and its
    packed kernels (`edge`), `layout` how they are packed."""

    layout: tuple[KernelLayout, ...] = ()

    @property
    def head(self) -> EdgePhoneHead:
        return EdgePhoneHead(
            len(self.inventory), self.hidden, self.kernel, conv=self.conv, layout=self.layout
        )


def _packed(artifact: Artifact, names: list[str], prefix: str, source: str, act_bits: int = 8):
    """The tensors `names` (each starting with `prefix`, which is cut off) -> (float variables,
    packed kernels {'edge/<path>': ...}, layouts): kernels stay packed for the NPU, with their
    fixed-point multipliers, shifts and output scale; other parameters widened to float32."""
    flat, edge, layout = {}, {}, []
    for full in names:
        rec = artifact.tensors[full]
        name = full[len(prefix) :]
        role = rec.meta.get("role")
        if role == "scale":
            continue
        if role != "kernel":
            flat[name] = np.asarray(rec.fields["data"], np.float32).reshape(rec.meta["shape"])
            continue
        col, _, path = name.partition("/")
        assert col == "params", name
        k, n = int(rec.meta["K"]), int(rec.meta["N"])
        step = np.asarray(artifact.tensors[full + SCALE_SUFFIX].fields["data"], np.float32)
        try:
            codes = decode(rec.to_encoded()).reshape(k, n)  # the compiler reads them once
        except ValueError as e:  # well-formed file (checksums hold), non-canonical codes
            raise ModelLoadError(f"{source}: tensor {full!r}: {e}") from None
        mult, shift, oscale = requantization(step, codes, act_bits)
        fields = tuple(np.asarray(rec.fields[f]) for f in FIELD_ORDER[rec.encoding])
        edge["edge/" + path] = {"fields": fields, "mult": mult, "shift": shift, "oscale": oscale}
        layout.append(KernelLayout(path, rec.encoding, rec.bits, rec.count, k, n))
    return flat, edge, tuple(layout)


def _edge_phones(artifact: Artifact, source: str) -> EdgePhoneModel | None:
    """The artifact's phone head compiled for the processor, or None without one."""
    try:
        meta = phone_meta(artifact, source)
    except ValueError as e:
        raise ModelLoadError(str(e)) from None
    if meta is None:
        return None
    names = [k for k in artifact.tensors if k.startswith(PHONES_PREFIX)]
    flat, edge, layout = _packed(artifact, names, PHONES_PREFIX, source)
    variables = unflatten(flat)
    variables.update(unflatten(edge))
    return EdgePhoneModel(variables, layout=layout, **meta)


def compile_artifact(artifact: Artifact, source: str = "artifact") -> LoadedModel:
    """An artifact -> a LoadedModel executing on the emulated processor: kernels stay packed
    (the `edge` collection: fields, fixed-point multipliers and shifts, output scale), other
    parameters widened to float32 for the DSP."""
    config = artifact_config(artifact)
    if config.encoder not in ENCODER_CLASSES:
        raise ModelLoadError(
            f"{source}: unknown encoder {config.encoder!r} (known: {sorted(ENCODER_CLASSES)})"
        )
    quant = artifact.header["quant"]
    bits, act_bits = int(quant["weight_bits"]), int(quant["act_bits"])
    small_bits = int(quant.get("small_bits", 0))  # the small layers' (mixed precision)
    if not 2 <= bits <= 8 or act_bits != 8 or not (small_bits == 0 or 2 <= small_bits <= 8):
        small = f" (small layers w{small_bits})" if small_bits else ""
        raise ModelLoadError(
            f"{source}: the processor runs w2..8 a8, artifact is w{bits}a{act_bits}{small}"
        )
    names = [k for k in artifact.tensors if not k.startswith(PHONES_PREFIX)]
    flat, edge, layout = _packed(artifact, names, "", source, act_bits)
    variables = unflatten(flat)
    variables.update(unflatten(edge))
    model = EdgeTransducer(
        config=config,
        predictor_cls=PREDICTORS[config.predictor],
        quant=EdgePolicy(bits, act_bits, small_bits if small_bits != bits else 0),
        encoder_cls=ENCODER_CLASSES[config.encoder],
        layout=layout,
    )
    tok = artifact_tokenizer(artifact)
    return LoadedModel(model, variables, tok, config, source, _edge_phones(artifact, source))


def load_edge(path: str | Path) -> LoadedModel:
    """`asr.model_loaders` entry point: a `.edge` file -> a recognizer-ready LoadedModel.
    Damaged files raise `asr.model_io.ModelLoadError` naming what is wrong."""
    try:
        artifact = read_artifact(path)
    except ArtifactError as e:
        raise ModelLoadError(f"{path}: {e}") from None
    return compile_artifact(artifact, str(path))


__all__ = [
    "EdgePhoneHead",
    "EdgePhoneModel",
    "EdgePolicy",
    "EdgeTransducer",
    "KernelLayout",
    "compile_artifact",
    "integer_einsum",
    "load_edge",
    "quantize_rows",
    "requantization",
]
