"""The branching encoder (asr/models/branching.py) on the emulated processor: each branch's
products run only on the rows (frames) that chose it.

- the primitive's row-activity operand against the NumPy reference (eager, jit, vmap);
- the cost model on small programs: only active rows are counted, a product without an active
  row reads nothing, a decode whose only products have no active row is not charged (and is
  charged whenever its weights are used otherwise); the DSP work of an `only_rows` region counts
  its mask's active share (through calls, scans and loops, per call of a shared function), in
  full where it feeds a product's weights or the region has no product with rows, and the work
  outside regions is unchanged;
- a small exported branching model: its emulated encoder output with the chosen rows only equals
  the output with every row computed, and the fake-quant model's; the cost of the encoder
  follows the arbiter's choice exactly as `asr.models.macs` predicts (up to the attention's keys
  and the joiner's projection, computed here), the unchosen branch's weights are not read, and
  NPU, DSP and total cycles drop with the share of expensive frames (the DSP's every-row count
  is that of the runtime computing every row);
- `asr export` of a branching model folder and the `.edge` file loaded back: config fields,
  every cheap-branch and arbiter kernel packed, a branching `EdgeTransducer` rebuilt,
  `encode_aux` on the processor.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import random_variables

from asr.cli import main
from asr.model_io import LoadedModel, load_model, save_model_folder
from asr.models.branching import ROWS_SCOPE, BranchingEncoder, only_rows
from asr.models.config import BRANCH_FIELDS, get_config
from asr.models.macs import frame_macs
from asr.models.transducer import Transducer, build_model
from asr.tokenizer import Tokenizer
from export.exporter import export_model, reference_model
from hw.cost import cost
from hw.primitives import (
    decode_weights,
    int_matmul,
    int_matmul_reference,
    quantize_multiplier,
    zero_weight_macs,
)
from hw.runtime import EdgeTransducer, compile_artifact, integer_einsum

M, K, N = 6, 8, 3
UNIT = (np.full(N, 1 << 30, np.int32), np.full(N, 30, np.int32))  # multiplier 1.0


def weights(k: int, n: int, zeros: int, seed: int = 0) -> np.ndarray:
    """int8[k, n] with exactly `zeros` zero entries, the others nonzero."""
    rng = np.random.default_rng(seed)
    w = rng.integers(1, 128, (k, n)) * rng.choice([-1, 1], (k, n))
    w.reshape(-1)[rng.choice(k * n, zeros, replace=False)] = 0
    return w.astype(np.int8)


def acts(*shape: int, seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).integers(-127, 128, shape).astype(np.int8)


def product(x, w, rows=None):
    return int_matmul(x, w, *UNIT, rows)


# ---------------------------------------------------------------------------------------------
# The primitive.


def test_int_matmul_rows_match_the_numpy_reference():
    rng = np.random.default_rng(0)
    mult, shift = quantize_multiplier(rng.uniform(1e-3, 1e-1, N))
    x = acts(2, M, K)
    for w in (weights(K, N, 5), np.stack([weights(K, N, 4, seed=s) for s in range(2)])):
        m, s = (np.broadcast_to(a, (*w.shape[:-2], N)) for a in (mult, shift))
        full = int_matmul_reference(x, w, m, s)
        for rows in (rng.random((2, M)) < 0.5, np.zeros((2, M), bool), np.ones((2, M), bool)):
            want = int_matmul_reference(x, w, m, s, rows)
            np.testing.assert_array_equal(want, np.where(rows[..., None], full, 0))
            np.testing.assert_array_equal(int_matmul(x, w, m, s, rows), want)
            np.testing.assert_array_equal(jax.jit(int_matmul)(x, w, m, s, rows), want)
            f = jax.vmap(int_matmul, in_axes=(0, 0 if w.ndim == 3 else None, None, None, 0))
            mv, sv = (a[0] if w.ndim == 3 else a for a in (m, s))
            np.testing.assert_array_equal(f(x, w, mv, sv, rows), want)
        np.testing.assert_array_equal(int_matmul(x, w, m, s, np.ones((2, M), bool)), full)


def test_integer_einsum_computes_only_the_query_rows():
    rng = np.random.default_rng(2)
    b, t, h, dh = 2, 5, 3, 4
    q, k = rng.standard_normal((2, b, t, h, dh)).astype(np.float32)
    w = rng.random((b, h, t, t)).astype(np.float32)
    rows = (rng.random((b, t)) < 0.5).astype(np.float32)
    for spec, x, y, query_axis in (("bqhd,bkhd->bhqk", q, k, 2), ("bhqk,bkhd->bqhd", w, k, 1)):
        full = np.asarray(integer_einsum(spec, x, y, 8))
        got = np.asarray(integer_einsum(spec, x, y, 8, jnp.asarray(rows)))
        shape = [1] * full.ndim
        shape[0], shape[query_axis] = b, t
        np.testing.assert_array_equal(got, np.where(rows.reshape(shape) != 0, full, 0))
        other = np.asarray(integer_einsum(spec, x, y, 8, jnp.ones((b, h))))  # not [B, queries]
        np.testing.assert_array_equal(other, full)


# ---------------------------------------------------------------------------------------------
# The cost model on small programs.


def test_cost_counts_only_the_active_rows():
    z = 7
    x, w = acts(2, M, K), weights(K, N, z)
    rows = np.zeros((2, M), bool)
    rows[0, [0, 2]] = rows[1, [1, 3, 5]] = True  # 5 of 12 rows active
    a = 5
    c = cost(product, x, w, rows)
    assert c.macs_total == a * K * N and c.macs_skipped == a * z
    assert c.macs_done == c.macs_total - c.macs_skipped
    assert c.macs_skipped_rows == (2 * M - a) * K * N
    assert c.macs_skipped == zero_weight_macs(x.shape, w, rows)
    assert c.bytes_read == a * K + K * N and c.bytes_written == a * N * 4
    np.testing.assert_array_equal(np.asarray(c.outputs), np.asarray(product(x, w, rows)))
    # no active row: nothing computed, read or written
    none = cost(product, x, w, np.zeros((2, M), bool))
    assert none.macs_total == none.bytes_read == none.bytes_written == 0
    assert none.npu_cycles == 0 and none.macs_skipped_rows == 2 * M * K * N
    # per-example weights: a matrix whose rows are all inactive is not read
    ws = np.stack([weights(K, N, z, seed=s) for s in range(2)])
    rows[1] = False
    per = cost(jax.vmap(product), x, ws, rows)
    assert per.macs_total == 2 * K * N and per.macs_skipped == 2 * z
    assert per.bytes_read == 2 * K + K * N  # x's 2 active rows, only the first matrix


def _decode(fields):
    return decode_weights(fields, encoding="int8", bits=8, n=K * N, count=K * N).reshape(K, N)


def _scan(body, xs):
    """The stacked outputs of `body(carry, x)` over xs (an int32 carry it passes through)."""
    return jax.lax.scan(body, jnp.int32(0), xs)[1]


def test_a_decode_is_charged_only_when_a_product_needs_its_weights():
    w = weights(K, N, 3)
    fields = (w.reshape(-1).view(np.uint8),)
    x = acts(M, K)
    off, on = np.zeros(M, bool), np.eye(M, dtype=bool)[0]

    def one(x, fields, rows):
        return product(x, _decode(fields).T.T, rows)  # through layout operations

    def two(x, fields, r1, r2):
        wd = jax.jit(_decode)(fields)  # through a call
        return product(x, wd, r1), product(x, wd, r2)

    def also_dsp(x, fields, rows):
        wd = _decode(fields)
        return product(x, wd, rows), jnp.sum(wd.astype(jnp.int32))

    def into_scan(x, fields, rows):
        wd = _decode(fields)
        return _scan(lambda c, r: (c, product(x, wd, r)), rows[None])

    stream = K * N
    for fn, args, charged in [
        (one, (off,), False),
        (one, (on,), True),
        (two, (off, off), False),
        (two, (off, on), True),
        (also_dsp, (off,), True),  # the weights are read by the DSP anyway
        (into_scan, (off,), True),  # a scan body's products are not attributed
    ]:
        c = cost(fn, x, fields, *args)
        dec = c.per_primitive["edge_decode_weights"]
        assert dec["calls"] == 1, fn.__name__
        assert dec["bytes_read"] == (stream if charged else 0), (fn.__name__, args)
        assert dec["weights_decoded"] == (stream if charged else 0)
        ref = fn(x, fields, *args)
        for got, want in zip(jax.tree.leaves(c.outputs), jax.tree.leaves(ref), strict=True):
            np.testing.assert_array_equal(np.asarray(got), np.asarray(want))


def test_decodes_inside_a_scan_are_charged_per_iteration_with_an_active_row():
    w = weights(K, N, 3)
    fields = (w.reshape(-1).view(np.uint8),)
    xs = acts(4, M, K)
    rows = np.ones((4, M), bool)
    rows[1] = rows[3] = False  # two iterations without an active row
    rows[2, 1:] = False

    def fn(xs, rows, fields):
        return _scan(lambda c, xr: (c, product(xr[0], _decode(fields), xr[1])), (xs, rows))

    c = cost(fn, xs, rows, fields)
    assert c.per_primitive["edge_decode_weights"]["calls"] == 4
    assert c.per_primitive["edge_decode_weights"]["bytes_read"] == 2 * K * N
    assert c.macs_total == (M + 1) * K * N and c.macs_skipped_rows == (3 * M - 1) * K * N
    np.testing.assert_array_equal(np.asarray(c.outputs), np.asarray(fn(xs, rows, fields)))


def _region(x, w, mask):
    """An `only_rows(mask)` region around a product with rows and a tanh of its output."""
    with only_rows(mask):
        y = product(x, w, mask != 0).astype(jnp.float32)  # 3 DSP ops per element: ne, convert,
        return jnp.tanh(y)  # tanh (the row mask is needed in full: ne counts every element)


def _dsp(c, name: str) -> int:
    return c.per_primitive.get(name, {}).get("dsp_ops", 0)


def test_a_region_counts_its_dsp_work_on_its_active_rows():
    x, w = acts(2, M, K), weights(K, N, 2)
    mask = np.zeros((2, M), np.float32)
    mask[0, [0, 2]] = mask[1, [1, 3, 5]] = 1.0  # 5 of 12 rows
    rows, out = 2 * M, 2 * M * N  # mask elements, output elements

    def fn(x, w, mask):
        h = _region(x, w, mask)
        return jnp.sin(h) + jnp.sum(mask)  # outside: sin, add (out each), reduce_sum (rows)

    c = cost(fn, x, w, mask)
    # by hand: the region's convert and tanh on 5 of 12 rows; its mask test on every element
    assert _dsp(c, "tanh") == _dsp(c, "convert_element_type") == 5 * out // rows == 5 * N
    assert _dsp(c, "ne") == rows
    assert _dsp(c, "sin") == _dsp(c, "add") == out and _dsp(c, "reduce_sum") == rows
    assert c.dsp_ops == 2 * 5 * N + rows + 2 * out + rows
    assert c.dsp_cycles == c.dsp_ops / c.processor.dsp_ops_per_cycle
    np.testing.assert_array_equal(np.asarray(c.outputs), np.asarray(fn(x, w, mask)))
    # the same code outside a region: every row, as is every op of a region without a mask
    plain = cost(lambda x, w, m: jnp.sin(jnp.tanh(product(x, w, m != 0).astype(jnp.float32))),
                 x, w, mask)  # fmt: skip

    def no_product(x, w, mask):
        with only_rows(mask):
            return jnp.tanh(x.astype(jnp.float32))

    bare = cost(no_product, x, w, mask)
    assert _dsp(plain, "tanh") == _dsp(plain, "sin") == out
    assert _dsp(bare, "tanh") == _dsp(bare, "convert_element_type") == x.size
    # nothing active: only the mask test is left; everything active: the full count
    none = cost(fn, x, w, np.zeros_like(mask))
    assert _dsp(none, "tanh") == 0 and _dsp(none, "ne") == rows
    assert _dsp(cost(fn, x, w, np.ones_like(mask)), "tanh") == out
    # per-example weights: the share of the [2, M] mask, whatever the matrices
    ws = np.stack([w, weights(K, N, 4, seed=3)])
    per = cost(lambda x, w, m: jax.vmap(_region)(x, w, m), x, ws, mask)
    assert _dsp(per, "tanh") == 5 * N


def test_region_work_feeding_a_products_weights_counts_in_full():
    x, w = acts(2, M, K), weights(K, N, 2)
    mask = np.zeros((2, M), np.float32)
    mask[1, :3] = 1.0  # 3 of 12 rows

    def fn(x, w, mask):
        with only_rows(mask):
            v = jnp.tanh(x.astype(jnp.float32))  # -> keys-like: the weights of the second
            k = jnp.round(v[0].T[:, :N] * 100).astype(jnp.int8)  # product, needed on every row
            y = product(x, w, mask != 0) + product(x, k, mask != 0)
            return jnp.exp(y.astype(jnp.float32))  # row work: 3 of 12 rows

    c = cost(fn, x, w, mask)
    assert _dsp(c, "tanh") == x.size  # it reaches the weights of a product
    assert _dsp(c, "round") == K * N and _dsp(c, "exp") == 3 * N
    np.testing.assert_array_equal(np.asarray(c.outputs), np.asarray(fn(x, w, mask)))


def test_regions_through_calls_scans_and_loops():
    x, w = acts(2, M, K), weights(K, N, 2)
    masks = np.zeros((3, 2, M), np.float32)
    masks[0, 0, :4] = masks[1, 1, :1] = masks[2] = 1.0  # 4, 1 and 12 of 12 rows
    active = masks.reshape(3, -1).sum(1).astype(int)
    shared = jax.jit(_region)  # one jaxpr for both calls: each call is its own region

    def calls(x, w, masks):
        return shared(x, w, masks[0]) + shared(x, w, masks[1])

    def scan(x, w, masks):
        return _scan(lambda c, m: (c, _region(x, w, m)), masks)

    def loop(x, w, masks):  # a while: each iteration's body is a segment of its own
        def body(carry):
            i, acc = carry
            return i + 1, acc + _region(x, w, masks[i])

        return jax.lax.while_loop(lambda c: c[0] < 3, body, (0, jnp.zeros((2, M, N))))[1]

    def around(x, w, masks):  # a region around a jitted tanh: its equations are inside
        with only_rows(masks[0]):
            return jax.jit(jnp.tanh)(product(x, w, masks[0] != 0).astype(jnp.float32))

    def around_loop(x, w, masks):  # a region around a while: the bodies are inside it, but
        # their results go on in the region unseen (the next iteration): counted in full
        def body(carry):
            i, acc = carry
            return i + 1, acc + jnp.tanh(product(x, w, masks[0] != 0).astype(jnp.float32))

        with only_rows(masks[0]):
            return jax.lax.while_loop(lambda c: c[0] < 2, body, (0, jnp.zeros((2, M, N))))[1]

    rows = 2 * M
    for fn, share in [
        (calls, active[:2]),
        (scan, active),
        (loop, active),
        (around, active[:1]),
        (around_loop, [rows, rows]),
    ]:
        c = cost(fn, x, w, masks)
        assert _dsp(c, "tanh") == int(np.sum(share)) * N, fn.__name__
        got, want = jax.tree.leaves(c.outputs), jax.tree.leaves(fn(x, w, jnp.asarray(masks)))
        for a, b in zip(got, want, strict=True):
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_only_rows_is_a_named_scope_and_changes_no_value():
    x = np.random.default_rng(3).standard_normal((2, 5)).astype(np.float32)
    mask = np.array([[1, 0, 1, 0, 0], [0, 1, 1, 1, 0]], np.float32)

    def fn(x, mask, region: bool):
        if not region:
            return jnp.tanh(x) * 2
        with only_rows(mask):
            return jnp.tanh(x) * 2

    jaxpr = jax.make_jaxpr(functools.partial(fn, region=True))(x, mask)
    scopes = {
        getattr(s, "name", "") for e in jaxpr.jaxpr.eqns for s in e.source_info.name_stack.stack
    }
    assert len([s for s in scopes if ROWS_SCOPE.fullmatch(s)]) == 1

    def nested(x):  # two scopes, unique names
        with only_rows(mask), only_rows(mask):
            return x + 1

    inner = jax.make_jaxpr(nested)(x).jaxpr.eqns[0].source_info.name_stack
    names = [s.name for s in inner.stack if ROWS_SCOPE.fullmatch(s.name)]
    assert len(set(names)) == 2
    want = np.asarray(jax.jit(functools.partial(fn, region=False))(x, mask))
    np.testing.assert_array_equal(
        np.asarray(jax.jit(functools.partial(fn, region=True))(x, mask)), want
    )


# ---------------------------------------------------------------------------------------------
# A small branching model on the processor.


@functools.cache
def _tokenizer() -> Tokenizer:
    words = "turn on the lights call mom play some jazz set a timer what is the weather"
    return Tokenizer.train([words, "stop go yes no one two three four five six seven"], 32)


@functools.cache
def _artifact(attend: bool = True):
    """(float LoadedModel, its 8-bit artifact) of a one-layer tiny branching model (branch
    sizes off their defaults, so the artifact's config is seen to carry them; with `attend`,
    the cheap frames attend)."""
    cfg = get_config("tiny").replace(
        vocab_size=_tokenizer().vocab_size,
        num_layers=1,
        encoder="branching",
        branch_rank=8,
        branch_ff=24,
        arbiter_dim=16,
        branch_attend=attend,
        branch_budget_init=0.3,
    )
    model = build_model(cfg)
    variables = random_variables(model, half=True)
    out = variables["params"]["encoder"]["arbiter"]["out"]
    out["kernel"] = 20 * out["kernel"]  # logits spread well away from 0 (robust choices)
    lm = LoadedModel(model, variables, _tokenizer(), cfg, "random")
    return lm, export_model(lm, 8)


@functools.cache
def _pair(attend: bool = True):
    art = _artifact(attend)[1]
    return reference_model(art), compile_artifact(art, "test")


def _inputs(cfg):
    feats = np.random.default_rng(8).standard_normal((2, 64, cfg.n_mels)).astype(np.float32)
    return feats, np.zeros((2, 64), np.float32)  # unpadded: padded frames run the cheap branch


def _with_bias(variables, bias: float):
    """`variables` with the arbiter's output bias set to `bias` (+-50: every frame expensive /
    cheap; else a mix)."""
    out = jax.tree.map(lambda a: a, variables)
    out["params"]["encoder"]["arbiter"]["out"]["bias"] = np.full((1,), bias, np.float32)
    return out


MIX = 2.0  # the arbiter's bias that gives this model's frames a mix (15 of 32 expensive)


@functools.cache
def _encode(model) -> Callable:
    feats, pads = _inputs(model.config)
    return jax.jit(lambda v: model.apply(v, feats, pads, method="encode_aux"))


@pytest.mark.parametrize("attend", [False, True], ids=["cheap", "cheap-attends"])
def test_chosen_rows_give_the_all_rows_output_and_the_fake_quant_one(attend):
    ref, edge = _pair(attend)
    every_row = edge.model.clone(quant=dataclasses.replace(edge.model.quant, branch_rows=False))
    assert every_row.quant.describe() == "edge w8a8, every row"
    enc, pads, aux = _encode(edge.model)(_with_bias(edge.variables, MIX))
    share = float(np.mean(aux["expensive"]))
    assert 0.2 < share < 0.8, share
    enc_all, _, aux_all = _encode(every_row)(_with_bias(edge.variables, MIX))
    # the unchosen rows (0 now) only ever meet a 0 choice in the mix: nothing changes
    np.testing.assert_array_equal(np.asarray(enc), np.asarray(enc_all))
    np.testing.assert_array_equal(np.asarray(aux["expensive"]), np.asarray(aux_all["expensive"]))
    want, _, aux_ref = _encode(ref.model)(_with_bias(ref.variables, MIX))
    np.testing.assert_array_equal(np.asarray(aux["expensive"]), np.asarray(aux_ref["expensive"]))
    err = np.max(np.abs(np.asarray(enc) - np.asarray(want))) / np.max(np.abs(np.asarray(want)))
    assert err < 0.02, err
    # the branches' 18 products take the rows (24 when the cheap frames attend: their query
    # and output projections and their two attention products); the first convolution, the
    # arbiter's two and the joiner's projection (4) run on every frame
    jaxpr = jax.make_jaxpr(_encode(edge.model))(edge.variables)
    ops = [len(e.invars) for e in _equations(jaxpr.jaxpr) if e.primitive.name == "edge_int_matmul"]
    rows = 24 if attend else 18
    assert len(ops) == rows + 4 and ops.count(5) == rows, ops


def _equations(jaxpr):
    for e in jaxpr.eqns:
        yield e
        for p in e.params.values():
            sub = getattr(p, "jaxpr", p)
            if hasattr(sub, "eqns"):
                yield from _equations(sub)


def _part(path: str) -> str | None:
    """The part of `encode_aux` a kernel serves: "shared" (the first convolution, the arbiter,
    the joiner's projection of the encoder output), "cheap", "expensive", or None (not run)."""
    if path.startswith(
        ("joiner/enc_proj/", "encoder/arbiter/", "encoder/ConvSubsampling_0/Conv_0/")
    ):
        return "shared"
    if not path.startswith("encoder/"):
        return None
    return "cheap" if "/cheap_" in path else "expensive"


def _codes(layout, parts) -> int:
    """Codes of the kernels of `parts` (what decoding them gives)."""
    return sum(lay.k * lay.n for lay in layout if _part(lay.path) in parts)


@pytest.mark.parametrize("attend", [False, True], ids=["cheap", "cheap-attends"])
def test_the_cost_follows_the_choice_of_branch(attend):
    _, edge = _pair(attend)
    cfg = edge.config
    fm = frame_macs(cfg)
    layers, d = cfg.num_layers, cfg.d_model
    feats, pads = _inputs(cfg)
    costs, shares = {}, {}
    for name, bias in (("expensive", 50.0), ("mix", MIX), ("cheap", -50.0)):
        c = cost(
            lambda v, f, p: edge.model.apply(v, f, p, method="encode_aux"),
            _with_bias(edge.variables, bias),
            feats,
            pads,
        )
        e = np.asarray(c.outputs[2]["expensive"])
        b, t = e.shape
        # the analytic count (asr.models.macs) has the attention over the keys a frame sees;
        # the processor computes every key's score and masks it, and projects the encoder
        # output for the joiner (joint_dim per frame): the rest agrees MAC for MAC
        keys = np.minimum((np.arange(t) // cfg.chunk_size + 1) * cfg.chunk_size, t)
        attention = layers * 2 * d * (e * (t - keys)).sum()
        if attend:  # the cheap frames' queries too
            attention += layers * 2 * d * ((1.0 - e) * (t - keys)).sum()
        joiner = b * t * d * cfg.joint_dim
        assert c.macs_total == int(np.sum(c.outputs[2]["macs"])) + attention + joiner, name
        costs[name], shares[name] = c, e.mean()
    assert shares["expensive"] == 1.0 and shares["cheap"] == 0.0
    assert 0.2 < shares["mix"] < 0.8
    exp, mix, cheap = costs["expensive"], costs["mix"], costs["cheap"]
    # every row of both branches: the same whatever the choice
    assert len({c.macs_total + c.macs_skipped_rows for c in costs.values()}) == 1
    assert exp.macs_skipped_rows == b * t * (fm["cheap"] + (layers * 2 * d * t if attend else 0))
    assert cheap.macs_skipped_rows == b * t * (fm["expensive"] + layers * 2 * d * t)
    # the unchosen branch's weights are never decoded
    layout = edge.model.layout
    assert mix.weights_decoded == _codes(layout, ("shared", "cheap", "expensive"))
    assert exp.weights_decoded == _codes(layout, ("shared", "expensive"))
    assert cheap.weights_decoded == _codes(layout, ("shared", "cheap"))
    # MACs, traffic and cycles drop with the expensive share
    assert exp.macs_done > mix.macs_done > cheap.macs_done
    assert exp.bytes_read > cheap.bytes_read
    assert exp.npu_cycles > mix.npu_cycles > cheap.npu_cycles
    assert exp.dsp_ops > mix.dsp_ops > cheap.dsp_ops  # each branch's DSP work on its rows
    assert exp.dsp_cycles > mix.dsp_cycles > cheap.dsp_cycles
    assert exp.cycles > mix.cycles > cheap.cycles
    # the attending cheap branch adds six products' fixed costs: 0.73 of the expensive cycles
    assert cheap.npu_cycles < (0.8 if attend else 0.7) * exp.npu_cycles
    # the runtime computing every row: no row mask, every region's DSP work in full, whatever
    # the choice; with the rows, never more, and the mix of both branches well below it
    every_row = edge.model.clone(quant=dataclasses.replace(edge.model.quant, branch_rows=False))
    full = {
        name: cost(
            lambda v, f, p: every_row.apply(v, f, p, method="encode_aux"),
            _with_bias(edge.variables, bias),
            feats,
            pads,
        ).dsp_ops
        for name, bias in (("expensive", 50.0), ("cheap", -50.0))
    }
    assert full["expensive"] == full["cheap"] > exp.dsp_ops
    assert mix.dsp_ops < 0.75 * full["expensive"]


def test_a_branching_model_round_trips_through_asr_export(tmp_path, capsys):
    lm = _artifact()[0]
    folder = save_model_folder(tmp_path / "m", lm.config, lm.tokenizer, lm.variables)
    path = tmp_path / "b.edge"
    assert main(["export", "--model", str(folder), "--bits", "8", "-o", str(path)]) == 0
    capsys.readouterr()
    edge = load_model(path)  # the `edge` loader: compile_artifact
    assert edge.config == lm.config  # the branching fields included
    defaults = get_config("tiny")
    assert all(getattr(edge.config, f) != getattr(defaults, f) for f in BRANCH_FIELDS)
    assert isinstance(edge.model, EdgeTransducer)
    assert edge.model.encoder_cls is BranchingEncoder
    assert type(edge.model).encode_aux is not Transducer.encode_aux  # counted by recognizers
    packed = {lay.path for lay in edge.model.layout}
    kernels = {
        "/".join(str(getattr(k, "key", k)) for k in p)
        for p, _ in jax.tree_util.tree_leaves_with_path(lm.variables["params"])
        if str(getattr(p[-1], "key", "")) == "kernel"
    }
    assert packed == kernels  # every kernel, the cheap branch's and the arbiter's included
    for name in (
        "cheap_conv", "cheap_down", "cheap_up", "arbiter/hidden", "layer_0/cheap_kv_up",
        "layer_0/cheap_q_up", "layer_0/cheap_out_down",
    ):  # fmt: skip
        assert any(name in p for p in packed), name

    # the same model; the packing may differ (the folder's round trip moves a few codes, and
    # a Huffman-coded kernel's stream length with them)
    def unpacked(m):
        return m.clone(layout=tuple(lay._replace(encoding="", count=0) for lay in m.layout))

    assert unpacked(edge.model) == unpacked(_pair()[1].model)
    enc, _, aux = _encode(edge.model)(edge.variables)
    assert enc.shape == (2, 16, lm.config.joint_dim) and set(aux) >= {"expensive", "macs"}
    assert np.all(np.isfinite(np.asarray(enc)))
