"""The cost model of the emulated edge processor: MACs, memory traffic, cycles and time of a
program, measured by interpreting its jaxpr.

`cost(fn, *args)` traces `jax.make_jaxpr(fn)(*args)` and evaluates that jaxpr on the concrete
arguments, equation by equation (`eqn.primitive.bind`, as in JAX's "Writing custom
interpreters"), tallying what each equation costs on a `Processor`. Control flow is followed as it
runs: a `while` loop is charged for the iterations it actually makes, a `cond` for the branch it
actually takes, a `scan` for `length` iterations; calls (jit, closed_call, custom_jvp/vjp,
checkpoint) are entered. It returns the counts and the program's outputs (`Cost.outputs`).

Counting rules (per executed equation):

- `edge_decode_weights` (NPU, weight decoder): bytes_read += the fields' bytes (the compressed
  weight stream read from memory: an entropy-coded "huffman" tensor counts at its compressed
  size, code lengths, block lengths and stream; the decoder is assumed to keep pace with memory,
  its lookups are not counted); weights_decoded += the decoded codes; no MACs. Every decode
  streams its weights again: no reuse of decoded weights across decodes is assumed. A decode is
  not charged (it still counts in `calls`) when its weights are never needed: every use of its
  output is the weight operand of an `edge_int_matmul` of the same compiled segment (through
  layout operations and calls) and none of those products has an active row (branch rows,
  below). Decoded weights used in any other way, leaving their segment (into a while, a cond, a
  later segment) or entering a scan body are charged: the rule only ever drops a decode whose
  every consumer is known to skip it.
- `edge_int_matmul` x int8[..., M, K], w int8[(...,) K, N], optional rows bool[..., M] (NPU, MAC
  array): the active rows are those rows marks (every row of x without the operand), per weight
  matrix b (one for shared weights). macs_total = active rows * K * N; macs_skipped = the
  products on zero weights of the active rows (sum over b of active_b * zeros(w[b]), from the
  concrete weights and rows); macs_done = total - skipped; macs_skipped_rows = inactive rows * K
  * N (not in macs_total). bytes_read += the active rows of x, plus each weight matrix that has
  an active row unless w comes from a decode (its stream is counted there): provenance follows
  the values through layout operations (reshape, transpose, slicing, broadcasting, dtype
  conversion, concatenation, squeeze, expand_dims), calls and loop constants. bytes_written +=
  the active rows of the int32 output. The per-channel multiplier and shift (8 bytes per output
  channel) are neglected.
- float `dot_general` / `conv_general_dilated` (products outside the NPU primitives): float_macs,
  run on the DSP at one op per MAC. The emulated runtime's model layers have none; a nonzero
  count shows float products left outside the NPU (per_primitive names them).
- every other primitive runs on the DSP: dsp_ops += its output elements (reductions: the input's
  elements). Free: metadata-only reshapes (reshape, squeeze, expand_dims) and layout operations
  on decoded weights (the decoder writes them in the layout the product reads). Activations live
  in on-chip SRAM: DSP work moves no counted memory traffic.

Branch rows. On the device a branching encoder (`asr.models.branching`) runs each branch's
products only on the frames that chose it (`hw.runtime` passes the choice as the products' row
activity): the rules above then count the chosen rows only, so MACs, activation and output
bytes scale with each branch's share of frames, a weight stream is read only by a program in
which some frame chose its branch, and macs_skipped_rows says what the unchosen rows would have
cost. The DSP too runs a branch only on its frames (the emulator computes every row: the
unchosen ones are then dropped by the mixing). `only_rows` opens a named scope
(`only_rows_<n>`, unique) that the equations traced inside carry in their name stack; a
callee's, a scan body's or a loop body's equations are inside the regions around the equation
that runs them. A DSP equation whose innermost region is R counts dsp_ops * a / m instead of
dsp_ops, a / m being the share of active elements of R's rows mask: the `rows` operand of R's
first `edge_int_matmul` in the same compiled segment (or scan body), counted on the concrete
mask (every product of a region takes the same mask, broadcast over further row axes), rounded
per run of the segment. Counted in full, as before, are:
  - every DSP equation of a region without a product with `rows` in its segment (a region of
    DSP work only, or a runtime computing every row: `EdgePolicy(branch_rows=False)`);
  - the work of R whose result reaches, through equations of R, an operand of an R product
    other than x: the weights, multipliers and the row mask itself, and the keys and values
    attention reads from every frame (the mixing of both branches' keys and values, their
    rotary positions and quantization). The walk back stops at products: the projection that
    made those keys still counts only its active rows, but the DSP work between it and the
    keys (requantization, bias) counts in full, although it too runs on the active rows only
    (an overcount, conservative);
  - values made by R's DSP work that are used later inside R but not seen (they leave their
    segment, across a loop or a branch, or a scan body inside R, or enter a scan body), and
    the work of R behind them: so a region around a loop or a scan counts the work of its
    body in full, while a region opened inside the body counts its share;
  - everything outside any region: the norms both branches share, the mixing of the branches'
    outputs, the arbiter, the first subsampling convolution; float products (float_macs) too.
The values a region hands on (its output, mixed by the choice) are needed on its active rows
only: that is what `only_rows` declares.

Cycles. Each NPU operation takes max(MAC cycles, memory cycles): its DMA is double-buffered and
overlaps with the MAC array (Sze et al. 2017, roofline of a layer). MAC cycles = macs_done /
macs_per_cycle (macs_total on a processor with skip_zeros=False); memory cycles = (bytes read +
written) / bytes_per_cycle; a decode is memory-only. DSP cycles = (dsp_ops + float_macs) /
dsp_ops_per_cycle. The NPU and the DSP run one after the other (no overlap is assumed):
cycles = npu_cycles + dsp_cycles, seconds = cycles / clock_hz. Cycles are fractional (no
per-operation rounding).

How it runs fast enough. Thousands of small equations per loop iteration, each dispatched alone,
would take minutes; instead every maximal run of equations between control-flow points (while,
cond, or a call/scan that contains them) is bound under one `jax.jit`: traced once, so each
equation is still bound with its own parameters and counted from its shapes, then compiled once;
the counts that depend on values (active rows and zero weights of every weight matrix of every
`edge_int_matmul`, whether each decode is charged, the active elements of each branch-rows
region's mask) are extra outputs of that compiled segment (a
`scan` inside a segment becomes a `lax.scan` stacking them). A `while` iteration is then one or
two dispatches, and the per-operation cycle maxima are taken at the end in NumPy.

References:
  Sze, Chen, Yang and Emer 2017, "Efficient Processing of Deep Neural Networks: A Tutorial and
    Survey", Proc. IEEE 105(12) (MAC and data-movement counting, zero skipping, roofline).
  Arm Ethos-U55 Technical Overview (Arm, 2020) and Cortex-M55 Technical Reference Manual (the
    default processor's shape: 32-256 int8 MACs/cycle next to a Helium vector CPU).
  JAX documentation, "Writing custom interpreters in JAX" (jaxpr interpretation).
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

try:
    from jax.extend.core import ClosedJaxpr, Jaxpr, Literal
except ImportError:  # older JAX: the jaxpr types lived in jax.core only
    from jax.core import ClosedJaxpr, Jaxpr, Literal

from asr.models.branching import ROWS_SCOPE
from hw.primitives import decode_weights_p, int_matmul_p

_TRACER = getattr(jax.core, "Tracer", ())  # public in jax.core; () matches nothing
_INSTANCES = itertools.count()  # ids of traced callee instances (region keys)


@dataclass(frozen=True)
class Processor:
    """An edge processor: an int8 MAC array (NPU) with a weight decoder and a DMA, next to a
    float vector DSP. Variants by `dataclasses.replace(EDGE_NPU, macs_per_cycle=128)`."""

    name: str  # label in tables
    clock_hz: float  # one clock for the NPU and the DSP
    macs_per_cycle: int  # int8 x int8 MACs issued per cycle by the NPU
    bytes_per_cycle: float  # bandwidth from weight/activation memory to the NPU, bytes per cycle
    dsp_ops_per_cycle: float  # float32 vector operations per cycle of the DSP
    skip_zeros: bool = True  # the NPU does not issue products on zero weights

    def __post_init__(self):
        for f in ("clock_hz", "macs_per_cycle", "bytes_per_cycle", "dsp_ops_per_cycle"):
            v = getattr(self, f)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not v > 0:
                raise ValueError(f"Processor.{f}: expected a positive number, got {v!r}")


EDGE_NPU = Processor(
    name="edge NPU (Ethos-U55-256-like, 500 MHz)",
    clock_hz=500e6,
    macs_per_cycle=256,
    bytes_per_cycle=8.0,
    dsp_ops_per_cycle=8.0,
)
"""The default processor. It resembles an Arm Ethos-U55 in its largest configuration (256 int8
MACs per cycle) clocked at 500 MHz, fed at about 8 bytes per cycle (4 GB/s) from memory, next to
a Cortex-M55-class DSP whose Helium vector unit does about 8 float32 operations per cycle. These
numbers are assumptions that give the right orders of magnitude, not a datasheet model: the real
chips' compressed-weight decoder, SRAM banking, command stream and CPU pipeline are not
modeled."""

FIELDS = (
    "calls",  # equations executed
    "macs_total",  # int8 MACs of the NPU products, zero weights included
    "macs_done",  # ... on nonzero weights
    "macs_skipped",  # ... on zero weights (skipped when skip_zeros)
    "macs_skipped_rows",  # MACs of the inactive rows (branch not chosen): not done, not in total
    "float_macs",  # MACs of dot_general / conv outside the NPU primitives (on the DSP)
    "bytes_read",  # bytes the NPU reads: compressed weight streams, activations
    "bytes_written",  # bytes the NPU writes: int32 products
    "weights_decoded",  # int8 weight codes out of the decoder
    "dsp_ops",  # DSP vector element operations
    "mac_cycles",  # sum over NPU operations of their MAC terms
    "memory_cycles",  # sum over NPU operations of their memory terms
    "npu_cycles",  # sum over NPU operations of max(MAC term, memory term)
    "dsp_cycles",  # (dsp_ops + float_macs) / dsp_ops_per_cycle
    "cycles",  # npu_cycles + dsp_cycles
)
INT_FIELDS = FIELDS[:10]

DECODE = decode_weights_p.name  # "edge_decode_weights"
MATMUL = int_matmul_p.name  # "edge_int_matmul"
PRODUCTS = ("dot_general", "conv_general_dilated")
# metadata-only: free on any data
FREE = frozenset({"reshape", "squeeze", "expand_dims"})
# layout operations that keep a decoded weight "on chip" (free on decoded weights)
LAYOUT = FREE | {
    "transpose",
    "slice",
    "dynamic_slice",
    "broadcast_in_dim",
    "convert_element_type",
    "concatenate",
    "stack",
    "split",
    "copy",
    "copy_p",
    "rev",
}
REDUCTIONS = frozenset({"argmax", "argmin", "reduce", "reduce_and", "reduce_or", "reduce_xor"})
# call-like higher-order primitives: (names, parameter holding the callee jaxpr)
CALLS = {
    "pjit": "jaxpr",
    "jit": "jaxpr",
    "closed_call": "call_jaxpr",
    "core_call": "call_jaxpr",
    "custom_jvp_call": "call_jaxpr",
    "custom_vjp_call": ("call_jaxpr", "fun_jaxpr"),
    "custom_vjp_call_jaxpr": "fun_jaxpr",
    "remat": "jaxpr",
    "remat2": "jaxpr",
    "checkpoint": "jaxpr",
}
CONTROL = ("while", "cond", "scan")


@dataclass(frozen=True)
class Cost:
    """What a program costs on a processor: totals, their split by primitive, and the outputs
    of the interpreted program. Counts are per program run (all its loop iterations)."""

    macs_total: int
    macs_done: int
    macs_skipped: int
    macs_skipped_rows: int
    float_macs: int
    bytes_read: int
    bytes_written: int
    weights_decoded: int
    dsp_ops: int
    npu_cycles: float
    mac_cycles: float
    memory_cycles: float
    dsp_cycles: float
    cycles: float
    seconds: float
    per_primitive: dict  # primitive name -> {field in FIELDS: count}
    processor: Processor
    outputs: Any = field(default=None, compare=False, repr=False)  # fn(*args), same pytree

    @staticmethod
    def from_primitives(per_primitive: Mapping[str, Mapping], processor: Processor) -> Cost:
        """Totals of per-primitive counts (each a dict over FIELDS)."""
        per = {
            name: {f: (int(c.get(f, 0)) if f in INT_FIELDS else float(c.get(f, 0))) for f in FIELDS}
            for name, c in sorted(per_primitive.items())
        }
        tot = {f: sum(c[f] for c in per.values()) for f in FIELDS if f != "calls"}
        return Cost(**tot, seconds=tot["cycles"] / processor.clock_hz, per_primitive=per,
                    processor=processor)  # fmt: skip

    def scalars(self) -> dict[str, float]:
        """The totals: every field but per_primitive, processor and outputs."""
        skip = ("per_primitive", "processor", "outputs")
        return {
            f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name not in skip
        }

    def per_audio(self, seconds_of_audio: float, unit: float = 0.01) -> dict[str, float]:
        """Every total scaled to one `unit` seconds of audio (default 10 ms): the program having
        processed `seconds_of_audio` seconds. `seconds` becomes the processor time per unit."""
        if not seconds_of_audio > 0 or not unit > 0:
            raise ValueError(
                f"per_audio: expected positive seconds_of_audio and unit, got "
                f"{seconds_of_audio!r}, {unit!r}"
            )
        k = unit / seconds_of_audio
        return {name: v * k for name, v in self.scalars().items()}

    def to_dict(self) -> dict:
        """JSON-ready: the totals, per_primitive and the processor's fields (no outputs)."""
        return {
            **self.scalars(),
            "per_primitive": {k: dict(v) for k, v in self.per_primitive.items()},
            "processor": dataclasses.asdict(self.processor),
        }

    def __add__(self, other: Cost) -> Cost:
        """The cost of running both programs (same processor); outputs are dropped."""
        if not isinstance(other, Cost):
            return NotImplemented
        if other.processor != self.processor:
            raise ValueError(
                f"Cost +: processors differ: {self.processor.name!r} vs {other.processor.name!r}"
            )
        per = {k: dict(v) for k, v in self.per_primitive.items()}
        for name, c in other.per_primitive.items():
            mine = per.setdefault(name, dict.fromkeys(FIELDS, 0))
            for f in FIELDS:
                mine[f] += c[f]
        return Cost.from_primitives(per, self.processor)

    def __radd__(self, other):
        if isinstance(other, int) and other == 0:  # sum([...])
            return self
        return NotImplemented


def format_table(costs: Mapping[str, Cost], audio_seconds: float, unit: float = 0.01) -> str:
    """A Markdown table of costs per `unit` seconds of audio (default 10 ms), one row each.

    Args:
      costs: row label -> Cost of a program that processed `audio_seconds` of audio.
      audio_seconds: the audio duration behind every Cost.

    Returns:
      The table; "load" is processor time over audio time (below 100%: keeps up in real time).
    """
    ms = f"{1000 * unit:g} ms"
    head = (
        f"| per {ms} of audio | MACs done | MACs skipped | MACs of unchosen rows | float MACs "
        "| bytes read | "
        "bytes written | DSP ops | MAC cycles | memory cycles | DSP cycles | cycles | time (us) "
        "| load |"
    )
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for label, c in costs.items():
        p = c.per_audio(audio_seconds, unit)
        cells = [
            f"{p[k]:,.0f}"
            for k in (
                "macs_done",
                "macs_skipped",
                "macs_skipped_rows",
                "float_macs",
                "bytes_read",
                "bytes_written",
                "dsp_ops",
                "mac_cycles",
                "memory_cycles",
                "dsp_cycles",
                "cycles",
            )
        ]
        cells += [f"{1e6 * p['seconds']:.1f}", f"{100 * p['seconds'] / unit:.2f}%"]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def cost(fn: Callable, *args, processor: Processor = EDGE_NPU, **kwargs) -> Cost:
    """Run `fn(*args, **kwargs)` by interpreting its jaxpr and count what it costs.

    Args:
      fn: a JAX-traceable function (jitted or not).
      *args: its arguments (pytrees of arrays): traced, then fed concretely.
      processor: the processor to charge cycles on.
      **kwargs: keyword arguments bound statically (closed over, not traced).

    Returns:
      The Cost, with `outputs` = what fn(*args, **kwargs) returns.

    Raises:
      ValueError: on a higher-order primitive the interpreter does not know, or on traced
        (non-concrete) arguments.
    """
    if not isinstance(processor, Processor):
        raise ValueError(f"cost: processor must be a Processor, got {type(processor).__name__}")
    closed, out_shape = jax.make_jaxpr(functools.partial(fn, **kwargs), return_shape=True)(*args)
    leaves = jax.tree_util.tree_leaves(args)
    if any(isinstance(x, _TRACER) for x in leaves):
        raise ValueError("cost: the arguments must be concrete arrays, got tracers (under jit?)")
    assert len(leaves) == len(closed.jaxpr.invars), (len(leaves), len(closed.jaxpr.invars))
    interp = _Interpreter(processor)
    outs, _ = interp.run(closed.jaxpr, closed.consts, leaves, (False,) * len(leaves))
    result = interp.finish()
    return dataclasses.replace(
        result, outputs=jax.tree_util.tree_unflatten(jax.tree_util.tree_structure(out_shape), outs)
    )


# ---------------------------------------------------------------------------------------------
# the interpreter


def _size(aval) -> int:
    return math.prod(getattr(aval, "shape", ()) or ()) if hasattr(aval, "dtype") else 0


def _nbytes(aval) -> int:
    return _size(aval) * np.dtype(aval.dtype).itemsize if hasattr(aval, "dtype") else 0


def _read(env: dict, v):
    return v.val if isinstance(v, Literal) else env[v]


def _is_jaxpr(p) -> bool:
    return isinstance(p, (Jaxpr, ClosedJaxpr))


def _open(j) -> tuple[Jaxpr, list]:
    """(jaxpr, consts) of a Jaxpr or a ClosedJaxpr."""
    return (j.jaxpr, list(j.consts)) if isinstance(j, ClosedJaxpr) else (j, [])


def _callee(eqn) -> tuple[Jaxpr, list] | None:
    """The callee of a call-like equation, or None."""
    keys = CALLS.get(eqn.primitive.name)
    if keys is None:
        return None
    for k in (keys,) if isinstance(keys, str) else keys:
        if _is_jaxpr(eqn.params.get(k)):
            return _open(eqn.params[k])
    return None


def _has_subjaxprs(eqn) -> bool:
    for p in eqn.params.values():
        if _is_jaxpr(p) or (isinstance(p, (tuple, list)) and any(_is_jaxpr(q) for q in p)):
            return True
    return False


def _kind(eqn) -> str:
    """The equation's kind: first (first-order), call, or its control-flow primitive's name."""
    name = eqn.primitive.name
    if name in CONTROL:
        return name
    if _callee(eqn) is not None:
        return "call"
    if _has_subjaxprs(eqn):
        raise ValueError(
            f"hw.cost: unknown higher-order primitive {name!r}: the interpreter knows "
            f"{sorted(set(CALLS) | set(CONTROL))}"
        )
    return "first"


def _regions(eqn) -> tuple[str, ...]:
    """The `only_rows` scopes (`asr.models.branching.ROWS_SCOPE`) of the equation's name stack,
    outermost first (relative to its jaxpr)."""
    stack = getattr(getattr(eqn.source_info, "name_stack", None), "stack", ())
    names = (getattr(s, "name", None) for s in stack)
    return tuple(n for n in names if isinstance(n, str) and ROWS_SCOPE.fullmatch(n))


@dataclass(frozen=True, eq=False)
class _Columns:
    """How to read a traced segment's dynamic vector int32[width] (one per run of the segment):
    the columns of every NPU product and decode whose counts depend on values.

    pairs: int64[P, 5], one row per weight matrix of a product (a product with weights int8[...,
      K, N] has prod(...) of them, a shared int8[K, N] one): (column of its active rows of x,
      column of its zero weights, K * N, bytes of the matrix when read from memory (0: decoded
      weights, counted at their decode), rows of x it multiplies when every row is active).
    ops: int64[O, 3], one row per product: (its first pair; its pairs run to the next product's
      first), bytes per active row of x, bytes per active row of the output.
    decodes: int64[D, 3], one row per decode: (column of its flag 0/1: charged or not, bytes of
      its fields, codes it decodes).
    dsp: int64[S, 3], one row per (branch-rows region, primitive) of DSP work counted on the
      region's active rows: (column of the active elements of the region's rows mask, the mask's
      elements, the DSP ops of every row); dsp_names[s] is row s's primitive."""

    width: int
    pairs: np.ndarray
    ops: np.ndarray
    decodes: np.ndarray
    dsp: np.ndarray
    dsp_names: tuple[str, ...]

    def tiled(self, times: int) -> _Columns:
        """The columns of `times` runs' vectors laid end to end (a scan's stacked iterations)."""
        i = np.arange(times, dtype=np.int64)
        pairs, ops, decodes, dsp = (
            np.tile(a, (times, 1)) for a in (self.pairs, self.ops, self.decodes, self.dsp)
        )
        pairs[:, :2] += np.repeat(i * self.width, len(self.pairs))[:, None]
        ops[:, 0] += np.repeat(i * len(self.pairs), len(self.ops))
        decodes[:, 0] += np.repeat(i * self.width, len(self.decodes))
        dsp[:, 0] += np.repeat(i * self.width, len(self.dsp))
        return _Columns(self.width * times, pairs, ops, decodes, dsp, self.dsp_names * times)


class _Recorder:
    """Counts of one traced segment (or scan body): static per-primitive counts (known from
    shapes), and the NPU products and decodes whose counts depend on values: their traced int32
    pieces of the segment's dynamic vector and its `_Columns`.

    Decode attribution: the decodes of this trace are charged unless every use of their output
    is the weight operand of a product of this same trace (through layout operations and calls)
    and none of those products has an active row; a decoded weight that leaves the trace (an
    output, into a scan body) or meets any other operation is charged.

    Branch rows: the DSP work of the equations of an `only_rows` region (`nodes`, with their
    inputs' nodes of the same trace) is counted at `close()`: on the region's active rows when
    a product of this trace gave the region its rows mask (`mask`), except the work whose
    result reaches, through equations of the region, an operand of one of its products other
    than x (`full`; also a region's values leaving the trace); in full otherwise."""

    def __init__(self, dsp_ops_per_cycle: float):
        self.dsp_rate = dsp_ops_per_cycle
        self.static: dict[str, dict[str, float]] = {}
        self.values: list[jax.Array] = []  # traced int32[...] pieces of the dynamic vector
        self.width = 0
        self.pairs: list[np.ndarray] = []
        self.ops: list[np.ndarray] = []
        self.decodes: list[np.ndarray] = []
        self.n_pairs = 0
        self.pending: list[dict] = []  # this trace's decodes: bytes, codes, uses, escaped
        self.nodes: list[tuple] = []  # DSP equations of regions: (region, name, ops, parents)
        self.masks: dict = {}  # region -> (column of its active mask elements, mask elements)
        self.roots: list[tuple] = []  # (node ids, region): needed on every row
        self.dsp: list[list[int]] = []
        self.dsp_names: list[str] = []

    def add(self, name: str, times: float = 1, **counts) -> None:
        c = self.static.setdefault(name, dict.fromkeys(FIELDS, 0))
        c["calls"] += times
        for k, v in counts.items():
            c[k] += v * times

    def merge(self, other: _Recorder, times: int) -> None:
        for name, c in other.static.items():
            mine = self.static.setdefault(name, dict.fromkeys(FIELDS, 0))
            for k, v in c.items():
                mine[k] += v * times

    def _push(self, value: jax.Array) -> int:
        """Appends a traced piece; returns the column of its first element."""
        col = self.width
        self.values.append(value.reshape(-1).astype(jnp.int32))
        self.width += math.prod(value.shape)
        return col

    def product(self, active, zeros, kn: int, w_bytes: int, rows: int, x_row: int, out_row: int):
        """One NPU product: active int32[L] (active rows of x per weight matrix), zeros int32[L]
        (zero weights per matrix), static sizes as in `_Columns`."""
        count = active.shape[0]
        a = self._push(active)
        z = self._push(zeros)
        cols = np.arange(count, dtype=np.int64)
        const = np.broadcast_to(np.array([kn, w_bytes, rows], np.int64), (count, 3))
        self.pairs.append(np.concatenate([np.stack([a + cols, z + cols], 1), const], 1))
        self.ops.append(np.array([[self.n_pairs, x_row, out_row]], np.int64))
        self.n_pairs += count

    def node(self, region, name: str, ops: int, parents) -> int:
        """A first-order DSP (or free) equation of `region` doing `ops` operations on inputs
        made by nodes `parents`; returns its id (the node of its outputs)."""
        self.nodes.append((region, name, ops, tuple(parents)))
        return len(self.nodes) - 1

    def mask(self, region, rows: jax.Array) -> None:
        """The row activity of a product of `region`: the region's mask (its first product's)."""
        if region is not None and region not in self.masks:
            col = self._push(jnp.count_nonzero(rows).astype(jnp.int32))
            self.masks[region] = (col, math.prod(rows.shape))

    def full(self, ids, region=None) -> None:
        """The values of nodes `ids` are needed on every row by `region` (an operand of its
        product other than x, or, with `region` None, leaving the trace inside each node's own
        region): the region's nodes they come from are counted in full."""
        for i in ids:
            if i is not None:
                self.roots.append((i, self.nodes[i][0] if region is None else region))

    def region_of(self, i: int | None):
        """The region of node i (None: no node)."""
        return None if i is None else self.nodes[i][0]

    def _close_nodes(self) -> None:
        full, stack = set(), list(self.roots)
        while stack:
            i, region = stack.pop()
            if i in full or self.nodes[i][0] != region:
                continue
            full.add(i)
            stack.extend((j, region) for j in self.nodes[i][3])
        scaled: dict[tuple, int] = {}
        for i, (region, name, ops, _) in enumerate(self.nodes):
            if not ops:
                continue
            if i in full or region not in self.masks:
                c = self.static.setdefault(name, dict.fromkeys(FIELDS, 0))
                c["dsp_ops"] += ops
                c["dsp_cycles"] += ops / self.dsp_rate
                c["cycles"] += ops / self.dsp_rate
            else:
                scaled[region, name] = scaled.get((region, name), 0) + ops
        for (region, name), ops in scaled.items():
            self.dsp.append([*self.masks[region], ops])
            self.dsp_names.append(name)
        self.nodes, self.roots = [], []

    def decode(self, nbytes: int, codes: int) -> int:
        """A decode of this trace; returns its id (provenance of the decoded weights)."""
        self.pending.append({"bytes": nbytes, "codes": codes, "uses": [], "escaped": False})
        return len(self.pending) - 1

    def use(self, ids, any_active: jax.Array) -> None:
        """Decoded weights of decodes `ids` are the weights of a product: needed iff it has an
        active row."""
        for i in ids:
            self.pending[i]["uses"].append(any_active)

    def escape(self, ids) -> None:
        """Decoded weights of decodes `ids` are used otherwise: their decodes are charged."""
        for i in ids:
            self.pending[i]["escaped"] = True

    def close(self) -> None:
        """Ends the trace: appends every decode's flag (1: charged) to the dynamic vector and
        counts the regions' DSP work (class docstring)."""
        self._close_nodes()
        for d in self.pending:
            if d["escaped"] or not d["uses"]:
                flag = jnp.ones((), jnp.int32)
            else:
                flag = jnp.any(jnp.stack(d["uses"])).astype(jnp.int32)
            col = self._push(flag)
            self.decodes.append(np.array([[col, d["bytes"], d["codes"]]], np.int64))
        self.pending = []

    def append(self, cols: _Columns, values: jax.Array) -> None:
        """Adds another trace's columns and its traced vector (e.g. a scan's stacked bodies)."""
        if not cols.width:
            return
        pairs, ops, decodes = cols.pairs.copy(), cols.ops.copy(), cols.decodes.copy()
        pairs[:, :2] += self.width
        ops[:, 0] += self.n_pairs
        decodes[:, 0] += self.width
        for col, size, n in cols.dsp.tolist():
            self.dsp.append([col + self.width, size, n])
        self.dsp_names.extend(cols.dsp_names)
        self._push(values)
        self.pairs.append(pairs)
        self.ops.append(ops)
        self.decodes.append(decodes)
        self.n_pairs += len(pairs)

    def vector(self) -> jax.Array:
        """int32[width]: the dynamic vector of this trace."""
        if not self.values:
            return jnp.zeros((0,), jnp.int32)
        return jnp.concatenate(self.values)

    def columns(self) -> _Columns:
        def cat(parts, cols):
            return np.concatenate(parts) if parts else np.zeros((0, cols), np.int64)

        dsp = np.array(self.dsp, np.int64).reshape(-1, 3)
        return _Columns(self.width, cat(self.pairs, 5), cat(self.ops, 3), cat(self.decodes, 3),
                        dsp, tuple(self.dsp_names))  # fmt: skip


class _Segment:
    """A run of traceable equations compiled as one function (one per decoded-input pattern and
    regions around it); regions[i]: the `only_rows` scopes of the later equations that read
    outputs[i]."""

    def __init__(self, interp: _Interpreter, eqns: list, inputs: list, outputs: list, regions):
        self.interp, self.eqns, self.inputs, self.outputs = interp, eqns, inputs, outputs
        self.regions = regions
        self.compiled: dict[tuple, tuple] = {}

    def __call__(self, invals: list, flags: tuple, ctx: tuple = ()):
        """ctx: the branch-rows regions around the segment's jaxpr (`_Interpreter.run`)."""
        entry = self.compiled.get((flags, ctx))
        if entry is None:
            holder: dict = {}

            def run(*vals):
                rec = _Recorder(self.interp.p.dsp_ops_per_cycle)
                env = dict(zip(self.inputs, vals, strict=True))
                dec = {v: frozenset() for v, f in zip(self.inputs, flags, strict=True) if f}
                nodes: dict = {}
                self.interp.trace_eqns(self.eqns, env, dec, rec, nodes, ctx, "run")
                for v, regs in zip(self.outputs, self.regions, strict=True):
                    rec.escape(dec.get(v, ()))  # decoded weights leaving the segment: charged
                    # a region's values read later in the region: needed on every row
                    region = rec.region_of(nodes.get(v))
                    if region is not None and (region in ctx or region[1] in regs):
                        rec.full([nodes[v]])
                rec.close()
                # last trace wins: a retrace records the same counts again
                holder["template"] = (rec.static, rec.columns(),
                                      tuple(v in dec for v in self.outputs))  # fmt: skip
                return [_read(env, v) for v in self.outputs], rec.vector()

            entry = self.compiled[flags, ctx] = (jax.jit(run), holder)
        fn, holder = entry
        outs, vector = fn(*invals)
        return outs, vector, holder["template"]


class _Interpreter:
    """Evaluates jaxprs concretely: compiled segments between control-flow equations, loops
    and branches followed on the concrete values; `finish()` turns the log into a Cost."""

    def __init__(self, processor: Processor):
        self.p = processor
        self.log: list[tuple[tuple, jax.Array]] = []  # (segment template, its dynamic vector)
        self._plans: dict[int, tuple[Jaxpr, list]] = {}
        self._traceable: dict[int, tuple[Jaxpr, bool]] = {}

    # -- planning ------------------------------------------------------------------------------

    def traceable(self, jaxpr: Jaxpr) -> bool:
        """No while/cond anywhere inside: can run under one jit."""
        hit = self._traceable.get(id(jaxpr))
        if hit is None:
            hit = self._traceable[id(jaxpr)] = (jaxpr, all(map(self._eqn_traceable, jaxpr.eqns)))
        return hit[1]

    def _eqn_traceable(self, eqn) -> bool:
        k = _kind(eqn)
        if k == "first":
            return True
        if k == "call":
            return self.traceable(_callee(eqn)[0])
        if k == "scan":
            return self.traceable(_open(eqn.params["jaxpr"])[0])
        return False

    def plan(self, jaxpr: Jaxpr) -> list:
        """The jaxpr's steps: `_Segment`s and the control-flow equations between them."""
        hit = self._plans.get(id(jaxpr))
        if hit is not None:
            return hit[1]
        eqns = list(jaxpr.eqns)
        runs, start = [], None  # (start, stop) of traceable runs, or an eqn index
        for i, eqn in enumerate(eqns):
            if self._eqn_traceable(eqn):
                start = i if start is None else start
                continue
            if start is not None:
                runs.append((start, i))
                start = None
            runs.append(i)
        if start is not None:
            runs.append((start, len(eqns)))
        # vars read at or after each run's end (segment outputs are those it defines), with the
        # branch-rows regions of the equations that read them
        later: dict = {v: set() for v in jaxpr.outvars if not isinstance(v, Literal)}
        needed_after = {}
        pos = len(eqns)
        for r in reversed(runs):
            lo, hi = r if isinstance(r, tuple) else (r, r + 1)
            for e in eqns[hi:pos]:
                regs = _regions(e)
                for v in e.invars:
                    if not isinstance(v, Literal):
                        later.setdefault(v, set()).update(regs)
            pos = hi
            if isinstance(r, tuple):
                needed_after[r] = {v: frozenset(g) for v, g in later.items()}
        steps = []
        for r in runs:
            if not isinstance(r, tuple):
                steps.append(eqns[r])
                continue
            seg = eqns[r[0] : r[1]]
            defined, inputs, seen = set(), [], set()
            for e in seg:
                for v in e.invars:
                    if not isinstance(v, Literal) and v not in defined and v not in seen:
                        seen.add(v)
                        inputs.append(v)
                defined.update(e.outvars)
            outputs = [v for e in seg for v in e.outvars if v in needed_after[r]]
            regions = [needed_after[r][v] for v in outputs]
            steps.append(_Segment(self, seg, inputs, outputs, regions))
        self._plans[id(jaxpr)] = (jaxpr, steps)
        return steps

    # -- concrete evaluation ---------------------------------------------------------------------

    def run(self, jaxpr: Jaxpr, consts, args, flags, ctx: tuple = ()) -> tuple[list, tuple]:
        """Evaluate `jaxpr` on concrete values; flags[i]: args[i] is a decoded weight; ctx: the
        branch-rows regions around it (keys ("run", scope name): a jaxpr's name stacks are
        relative to its caller's)."""
        env = dict(zip(jaxpr.constvars, consts, strict=True))
        env.update(zip(jaxpr.invars, args, strict=True))
        dec = {v for v, f in zip(jaxpr.invars, flags, strict=True) if f}
        for step in self.plan(jaxpr):
            if isinstance(step, _Segment):
                invals = [env[v] for v in step.inputs]
                outs, vector, template = step(invals, tuple(v in dec for v in step.inputs), ctx)
                self.log.append((template, vector))
                env.update(zip(step.outputs, outs, strict=True))
                dec.update(v for v, f in zip(step.outputs, template[2], strict=True) if f)
                continue
            eqn = step
            invals = [_read(env, v) for v in eqn.invars]
            inflags = tuple(not isinstance(v, Literal) and v in dec for v in eqn.invars)
            regs = ctx + tuple(("run", s) for s in _regions(eqn))
            outs, oflags = getattr(self, "_run_" + _kind(eqn))(eqn, invals, inflags, regs)
            env.update(zip(eqn.outvars, outs, strict=True))
            dec.update(v for v, f in zip(eqn.outvars, oflags, strict=True) if f)
        outs = [_read(env, v) for v in jaxpr.outvars]
        return outs, tuple(v in dec for v in jaxpr.outvars)

    def _run_call(self, eqn, invals, flags, ctx):
        jaxpr, consts = _callee(eqn)
        return self.run(jaxpr, consts, invals, flags, ctx)

    def _run_cond(self, eqn, invals, flags, ctx):
        branches = eqn.params["branches"]
        i = min(max(int(np.asarray(invals[0])), 0), len(branches) - 1)
        jaxpr, consts = _open(branches[i])
        return self.run(jaxpr, consts, invals[1:], flags[1:], ctx)

    def _run_while(self, eqn, invals, flags, ctx):
        cn, bn = eqn.params["cond_nconsts"], eqn.params["body_nconsts"]
        cj, cc = _open(eqn.params["cond_jaxpr"])
        bj, bc = _open(eqn.params["body_jaxpr"])
        cconst, bconst, carry = invals[:cn], invals[cn : cn + bn], invals[cn + bn :]
        cflags = flags[:cn] + (False,) * len(carry)  # carries are never decoded weights
        bflags = flags[cn : cn + bn] + (False,) * len(carry)
        while True:
            (pred,), _ = self.run(cj, cc, [*cconst, *carry], cflags, ctx)
            if not bool(pred):
                return carry, (False,) * len(carry)
            carry, _ = self.run(bj, bc, [*bconst, *carry], bflags, ctx)

    def _run_scan(self, eqn, invals, flags, ctx):
        prm = eqn.params
        nc, ncar, length = prm["num_consts"], prm["num_carry"], prm["length"]
        jaxpr, bconsts = _open(prm["jaxpr"])
        consts, carry, xs = invals[:nc], invals[nc : nc + ncar], invals[nc + ncar :]
        bflags = flags[:nc] + (False,) * ncar + flags[nc + ncar :]
        ys: list[list] = [[None] * length for _ in eqn.outvars[ncar:]]
        for it in range(length):
            i = length - 1 - it if prm["reverse"] else it
            outs, _ = self.run(jaxpr, bconsts, [*consts, *carry, *(x[i] for x in xs)], bflags, ctx)
            carry = outs[:ncar]
            for acc, y in zip(ys, outs[ncar:], strict=True):
                acc[i] = y
        stacked = [
            jnp.stack(acc) if length else jnp.zeros(v.aval.shape, v.aval.dtype)
            for acc, v in zip(ys, eqn.outvars[ncar:], strict=True)
        ]
        return [*carry, *stacked], (False,) * len(eqn.outvars)

    # -- tracing (inside a segment's jit) --------------------------------------------------------

    def trace_jaxpr(self, jaxpr: Jaxpr, consts, args, prov, rec: _Recorder, innodes=None,
                    ctx: tuple = ()):  # fmt: skip
        """Trace a callee; prov[i]: None, or the decodes args[i] is the decoded weights of;
        innodes[i]: None, or the region node args[i] comes from; ctx: the regions around it.
        Returns (outputs, their provenance, their nodes)."""
        env = dict(zip(jaxpr.constvars, consts, strict=True))
        env.update(zip(jaxpr.invars, args, strict=True))
        dec = {v: p for v, p in zip(jaxpr.invars, prov, strict=True) if p is not None}
        nodes = {v: n for v, n in zip(jaxpr.invars, innodes or [None] * len(args), strict=True)
                 if n is not None}  # fmt: skip
        self.trace_eqns(jaxpr.eqns, env, dec, rec, nodes, ctx, next(_INSTANCES))
        outs = [_read(env, v) for v in jaxpr.outvars]
        return outs, [dec.get(v) for v in jaxpr.outvars], [nodes.get(v) for v in jaxpr.outvars]

    def trace_eqns(self, eqns, env: dict, dec: dict, rec: _Recorder, nodes: dict,
                   ctx: tuple, inst) -> None:  # fmt: skip
        """Bind each equation (on tracers), count it, and follow decoded-weight provenance:
        `dec` maps a decoded weight to the decodes of this trace it comes from (empty: decoded
        outside this trace). Branch rows: an equation's region is the innermost of `ctx` (the
        regions around this jaxpr) and the `only_rows` scopes of its name stack, keyed (inst,
        scope name) with `inst` this jaxpr's instance; `nodes` maps a value made by a DSP
        equation of a region to its node (`_Recorder.node`)."""
        for eqn in eqns:
            invals = [_read(env, v) for v in eqn.invars]
            prov = [None if isinstance(v, Literal) else dec.get(v) for v in eqn.invars]
            innodes = [None if isinstance(v, Literal) else nodes.get(v) for v in eqn.invars]
            regs = ctx + tuple((inst, s) for s in _regions(eqn))
            kind = _kind(eqn)
            if kind == "call":
                jaxpr, consts = _callee(eqn)
                outs, oprov, onodes = self.trace_jaxpr(jaxpr, consts, invals, prov, rec, innodes,
                                                       regs)  # fmt: skip
                env.update(zip(eqn.outvars, outs, strict=True))
                dec.update((v, p) for v, p in zip(eqn.outvars, oprov, strict=True) if p is not None)
                nodes.update(
                    (v, n) for v, n in zip(eqn.outvars, onodes, strict=True) if n is not None
                )
                continue
            if kind == "scan":
                for p in prov:  # the body is traced apart: its weights are not attributed
                    rec.escape(p or ())
                if regs:  # ... nor are its rows: what it reads is needed on every row
                    rec.full(innodes, regs[-1])
                outs = self._trace_scan(eqn, invals, [p is not None for p in prov], rec, regs)
                env.update(zip(eqn.outvars, outs, strict=True))
                continue
            assert kind == "first", (kind, eqn.primitive.name)
            out = eqn.primitive.bind(*invals, **eqn.params)
            outs = out if eqn.primitive.multiple_results else [out]
            env.update(zip(eqn.outvars, outs, strict=True))
            oprov, onode = self._count(eqn, invals, prov, rec, innodes, regs[-1] if regs else None)
            if oprov is not None:
                dec.update((v, oprov) for v in eqn.outvars)
            if onode is not None:
                nodes.update((v, onode) for v in eqn.outvars)

    def _count(self, eqn, invals, prov, rec: _Recorder, innodes, region):
        """Tally one first-order equation of branch-rows region `region` (None: outside any);
        returns (the provenance of its outputs when they are decoded weights, else None; the
        region node of its outputs, else None), recording how decoded inputs are used."""
        name = eqn.primitive.name
        p = self.p
        inflags = [q is not None for q in prov]
        if name == DECODE:
            rec.add(name)
            nbytes = sum(_nbytes(v.aval) for v in eqn.invars)
            return frozenset({rec.decode(nbytes, _size(eqn.outvars[0].aval))}), None
        if name == MATMUL:
            x, w = (v.aval for v in eqn.invars[:2])
            k, n = w.shape[-2:]
            mats = math.prod(w.shape[:-2])  # weight matrices (1: shared)
            rows = math.prod(x.shape[:-1]) // max(mats, 1)  # rows of x per matrix
            if len(invals) > 4:  # row activity
                rec.mask(region, invals[4])
                active = invals[4].reshape(max(mats, 1), -1)
                active = jnp.count_nonzero(active, axis=1).astype(jnp.int32)
            else:
                active = jnp.full((max(mats, 1),), rows, jnp.int32)
            zeros = (invals[1] == 0).reshape(max(mats, 1), -1)
            zeros = jnp.count_nonzero(zeros, axis=1).astype(jnp.int32)
            w_bytes = 0 if inflags[1] else k * n * np.dtype(w.dtype).itemsize
            out_row = n * np.dtype(eqn.outvars[0].aval.dtype).itemsize
            rec.product(active, zeros, k * n, w_bytes, rows, k * np.dtype(x.dtype).itemsize,
                        out_row)  # fmt: skip
            if prov[1] is not None:
                rec.use(prov[1], jnp.any(active > 0))
            for q in prov[:1] + prov[2:]:
                rec.escape(q or ())
            if region is not None:  # weights, multipliers, row mask: needed on every row
                rec.full(innodes[1:], region)
            return None, None
        if name in PRODUCTS:
            macs = _product_macs(eqn)
            cyc = macs / p.dsp_ops_per_cycle
            rec.add(name, float_macs=macs, dsp_cycles=cyc, cycles=cyc)
            for q in prov:
                rec.escape(q or ())
            return None, None
        decoded = name in LAYOUT and any(inflags) and _layout_keeps(name, inflags)
        keep = [0] if decoded and name not in ("concatenate", "stack") else range(len(prov))
        oprov = frozenset().union(*(prov[i] for i in keep if prov[i] is not None))
        for i, q in enumerate(prov):
            if q is not None and not (decoded and i in keep):
                rec.escape(q)
        if decoded:
            rec.add(name)
            return oprov, None
        if name in FREE:
            ops = 0
        elif (name.startswith("reduce_") and name != "reduce_precision") or name in REDUCTIONS:
            ops = _size(eqn.invars[0].aval)
        else:
            ops = sum(_size(v.aval) for v in eqn.outvars)
        if region is not None:  # counted when the trace closes (`_Recorder.close`)
            rec.add(name)
            return None, rec.node(region, name, ops, (n for n in innodes if n is not None))
        cyc = ops / p.dsp_ops_per_cycle
        rec.add(name, dsp_ops=ops, dsp_cycles=cyc, cycles=cyc)
        return None, None

    def _trace_scan(self, eqn, invals, inflags, rec: _Recorder, ctx: tuple) -> list:
        """A scan inside a segment: `lax.scan` over the interpreted body, stacking the body's
        dynamic vectors; the body's static counts times `length`."""
        prm = eqn.params
        nc, ncar, length = prm["num_consts"], prm["num_carry"], prm["length"]
        jaxpr, bconsts = _open(prm["jaxpr"])
        consts, init, xs = invals[:nc], invals[nc : nc + ncar], invals[nc + ncar :]
        flags = [*inflags[:nc], *(False,) * ncar, *inflags[nc + ncar :]]
        bprov = [frozenset() if f else None for f in flags]
        holder = {}

        def body(carry, x):
            sub = _Recorder(self.p.dsp_ops_per_cycle)
            outs, oprov, onodes = self.trace_jaxpr(jaxpr, bconsts, [*consts, *carry, *x], bprov,
                                                   sub, None, ctx)  # fmt: skip
            for q in oprov:
                sub.escape(q or ())
            sub.full([n for n in onodes if sub.region_of(n) in ctx])  # out, still in a region
            sub.close()
            holder["sub"] = sub  # last trace wins
            return outs[:ncar], (outs[ncar:], sub.vector())

        carry, (ys, vectors) = lax.scan(body, list(init), list(xs), length=length,
                                        reverse=prm["reverse"])  # fmt: skip
        sub = holder["sub"]
        rec.merge(sub, length)
        rec.append(sub.columns().tiled(length), vectors)  # vectors: [length, width]
        return [*carry, *ys]

    # -- totals ----------------------------------------------------------------------------------

    def finish(self) -> Cost:
        p = self.p
        per: dict[str, dict[str, float]] = {}

        def add(name, counts: Mapping, times=1):
            mine = per.setdefault(name, dict.fromkeys(FIELDS, 0))
            for k, v in counts.items():
                mine[k] += v * times

        groups: dict[int, tuple[tuple, list]] = {}
        for template, vector in self.log:
            groups.setdefault(id(template), (template, []))[1].append(vector)
        host = jax.device_get([g[1] for g in groups.values()])
        for (template, _), vs in zip(groups.values(), host, strict=True):
            static, cols, _ = template
            for name, c in static.items():
                add(name, c, len(vs))
            if not cols.width:
                continue
            z = np.stack([np.asarray(a, np.int64) for a in vs])  # -> [runs, width]
            if len(cols.ops):
                add(MATMUL, _product_counts(z, cols, p))
            if len(cols.dsp):
                active = z[:, cols.dsp[:, 0]]  # -> [runs, S]
                size, ops = np.maximum(cols.dsp[:, 1], 1), cols.dsp[:, 2]
                scaled = ((2 * ops * active + size) // (2 * size)).sum(axis=0)  # rounded per run
                for name, n in zip(cols.dsp_names, scaled.tolist(), strict=True):
                    cyc = n / p.dsp_ops_per_cycle
                    add(name, {"dsp_ops": n, "dsp_cycles": cyc, "cycles": cyc})
            if len(cols.decodes):
                flag = z[:, cols.decodes[:, 0]]  # -> [runs, D]
                nbytes = int((flag * cols.decodes[:, 1]).sum())
                cyc = nbytes / p.bytes_per_cycle
                add(DECODE, {"bytes_read": nbytes,
                             "weights_decoded": int((flag * cols.decodes[:, 2]).sum()),
                             "memory_cycles": cyc, "npu_cycles": cyc, "cycles": cyc})  # fmt: skip
        return Cost.from_primitives(per, p)


def _product_counts(z: np.ndarray, cols: _Columns, p: Processor) -> dict:
    """The counts of the products of `cols` over its runs' dynamic vectors z int64[runs, width]."""
    pairs, ops = cols.pairs, cols.ops
    active, zeros = z[:, pairs[:, 0]], z[:, pairs[:, 1]]  # -> [runs, P]
    kn, w_bytes, rows = pairs[:, 2], pairs[:, 3], pairs[:, 4]

    def per_op(a: np.ndarray) -> np.ndarray:  # [runs, P] -> [runs, O]
        return np.add.reduceat(a, ops[:, 0], axis=1)

    act = per_op(active)
    total = per_op(active * kn)
    skipped = per_op(active * zeros)
    read = act * ops[:, 1] + per_op((active > 0) * w_bytes)
    written = act * ops[:, 2]
    done = total - skipped
    mac = (done if p.skip_zeros else total) / p.macs_per_cycle
    mem = (read + written) / p.bytes_per_cycle
    npu = np.maximum(mac, mem)
    return {"calls": act.size, "macs_total": int(total.sum()), "macs_done": int(done.sum()),
            "macs_skipped": int(skipped.sum()),
            "macs_skipped_rows": int(((rows - active) * kn).sum()),
            "bytes_read": int(read.sum()), "bytes_written": int(written.sum()),
            "mac_cycles": float(mac.sum()), "memory_cycles": float(mem.sum()),
            "npu_cycles": float(npu.sum()), "cycles": float(npu.sum())}  # fmt: skip


def _layout_keeps(name: str, inflags) -> bool:
    """A layout op's output is a decoded weight: its data operand is (all of them for
    concatenate; index operands of dynamic_slice do not matter)."""
    if name in ("concatenate", "stack"):
        return all(inflags)
    return bool(inflags[0])


def _product_macs(eqn) -> int:
    out = _size(eqn.outvars[0].aval)
    if eqn.primitive.name == "dot_general":
        (lc, _), _ = eqn.params["dimension_numbers"]
        shape = eqn.invars[0].aval.shape
        return out * math.prod(shape[d] for d in lc)
    rhs = eqn.invars[1].aval.shape  # conv: every output element takes (Cin / groups) * taps
    o_dim = eqn.params["dimension_numbers"].rhs_spec[0]
    return out * math.prod(rhs) // rhs[o_dim]


__all__ = ["EDGE_NPU", "FIELDS", "Cost", "Processor", "cost", "format_table"]
