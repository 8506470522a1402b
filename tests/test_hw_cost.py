"""hw.cost: the jaxpr-interpreting cost model, checked against hand-computed counts on small
programs (one product, decode -> reshape -> product, attention-like products, every control-flow
primitive, vmap, float products), the cycle formula, and the interpreter's outputs against the
program's own."""

from __future__ import annotations

import dataclasses
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from hw.cost import EDGE_NPU, Cost, Processor, cost, format_table
from hw.primitives import decode_weights, int_matmul

M, K, N = 4, 8, 3
UNIT = (1 << 30, 30)  # fixed-point multiplier 1.0


def requant(n: int = N):
    return np.full(n, UNIT[0], np.int32), np.full(n, UNIT[1], np.int32)


def weights(k: int, n: int, zeros: int, seed: int = 0) -> np.ndarray:
    """int8[k, n] with exactly `zeros` zero entries, the others nonzero."""
    rng = np.random.default_rng(seed)
    w = rng.integers(1, 128, (k, n)) * rng.choice([-1, 1], (k, n))
    w.reshape(-1)[rng.choice(k * n, zeros, replace=False)] = 0
    return w.astype(np.int8)


def acts(*shape: int, seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).integers(-127, 128, shape).astype(np.int8)


def pack_int4(codes: np.ndarray) -> np.ndarray:
    """int8 codes in [-8, 7] -> uint8 nibbles, element 2i in the low nibble (decode's layout)."""
    nib = (codes.reshape(-1).astype(np.int16) & 0xF).astype(np.uint8)
    nib = np.concatenate([nib, np.zeros(len(nib) % 2, np.uint8)])
    return nib[0::2] | (nib[1::2] << 4)


def leaves(tree) -> list:
    return jax.tree_util.tree_leaves(tree)


def product(x, w):
    mult, shift = requant(w.shape[-1])
    return int_matmul(x, w, mult, shift)


def check_single(c: Cost, zeros: int, times: int = 1, w_read: bool = True):
    """One [M, K] x [K, N] product with `zeros` zero weights, run `times` times."""
    assert c.macs_total == times * M * K * N
    assert c.macs_skipped == times * M * zeros
    assert c.macs_done == c.macs_total - c.macs_skipped
    assert c.macs_skipped_rows == 0  # no row-activity operand: every row computed
    assert c.bytes_read == times * (M * K + (K * N if w_read else 0))
    assert c.bytes_written == times * M * N * 4
    assert c.per_primitive["edge_int_matmul"]["calls"] == times


def test_one_product_counts_zero_weights_exactly():
    z = 7
    x, w = acts(M, K), weights(K, N, z)
    c = cost(product, x, w)
    check_single(c, z)
    assert c.float_macs == 0 and c.dsp_ops == 0 and c.weights_decoded == 0
    ref = (x.astype(np.int64) @ w.astype(np.int64)).astype(np.int32)  # multiplier 1.0
    np.testing.assert_array_equal(np.asarray(c.outputs), ref)


def test_decode_reshape_product_counts_the_stream_not_the_decoded_weights():
    w = weights(K, N, 5)
    codes = np.clip(w, -8, 7).astype(np.int8)  # 4-bit codes
    fields = (pack_int4(codes),)  # ceil(K*N / 2) bytes

    def fn(x, fields):
        wd = decode_weights(fields, encoding="int4", bits=4, n=K * N, count=K * N)
        return product(x, wd.reshape(K, N))

    x = acts(M, K)
    c = cost(fn, x, fields)
    assert c.per_primitive["edge_decode_weights"]["bytes_read"] == (K * N + 1) // 2
    assert c.bytes_read == (K * N + 1) // 2 + M * K  # stream + activations, no int8 weights
    assert c.weights_decoded == K * N
    assert c.macs_skipped == M * np.count_nonzero(codes == 0)
    assert c.dsp_ops == 0  # the reshape of a decoded weight is free
    np.testing.assert_array_equal(np.asarray(c.outputs), np.asarray(fn(x, fields)))


def test_huffman_decode_is_charged_its_compressed_bytes():
    encodings = pytest.importorskip("export.encodings")
    k, n = 64, 48  # 3072 peaked 4-bit codes: 12 blocks
    rng = np.random.default_rng(2)
    codes = np.clip(np.round(rng.laplace(0, 1.0, (k, n))), -7, 7).astype(np.int8)
    enc = encodings.encode(codes, 4, "huffman")
    fields = tuple(enc.fields[f] for f in ("lengths", "blocks", "stream"))

    def fn(x, fields):
        wd = decode_weights(fields, encoding="huffman", bits=4, n=k * n, count=enc.count)
        return product(x, wd.reshape(k, n))

    x = acts(M, k)
    c = cost(fn, x, fields)
    stored = 8 + 2 * 12 + enc.count  # lengths, block lengths, stream
    assert stored == enc.nbytes < (k * n) // 2  # smaller than int4
    assert c.per_primitive["edge_decode_weights"]["bytes_read"] == stored
    assert c.bytes_read == stored + M * k and c.weights_decoded == k * n
    assert c.macs_skipped == M * np.count_nonzero(codes == 0)
    np.testing.assert_array_equal(np.asarray(c.outputs), np.asarray(fn(x, fields)))


def test_decoded_weights_stay_on_chip_through_jit_transpose_and_loop_constants():
    codes = weights(N, K, 4)  # stored transposed
    fields = (codes.reshape(-1).view(np.uint8),)

    def fn(xs, fields):
        wd = jax.jit(lambda f: decode_weights(f, encoding="int8", bits=8, n=K * N, count=K * N))(
            fields
        )
        w = wd.reshape(N, K).T  # -> [K, N]

        def body(s):
            i, acc = s
            return i + 1, acc + product(xs[i], w)

        return lax.while_loop(lambda s: s[0] < 2, body, (0, jnp.zeros((M, N), jnp.int32)))

    xs = acts(2, M, K)
    c = cost(fn, xs, fields)
    assert c.bytes_read == K * N + 2 * M * K  # the stream once, the weights never
    assert c.macs_skipped == 2 * M * 4


def test_activation_by_activation_counts_both_operands():
    def fn(a, b):
        q = (a * 10).astype(jnp.int8)  # -> [M, K]
        k = (b * 10).astype(jnp.int8).T  # -> [K, N]
        return product(q, k)

    rng = np.random.default_rng(0)
    a = rng.uniform(-1, 1, (M, K)).astype(np.float32)
    b = rng.uniform(-1, 1, (N, K)).astype(np.float32)
    c = cost(fn, a, b)
    assert c.bytes_read == M * K + K * N
    # mul + convert per operand, transpose of a (non-weight) activation
    assert c.dsp_ops == 2 * M * K + 3 * N * K
    assert c.macs_total == M * K * N


@pytest.mark.parametrize("wrap", ["jit", "checkpoint", "custom_jvp", "custom_vjp"])
def test_product_inside_calls(wrap):
    x, w = acts(M, K), weights(K, N, 3)
    if wrap == "jit":
        fn = jax.jit(product)
    elif wrap == "checkpoint":
        fn = jax.checkpoint(product)
    elif wrap == "custom_jvp":
        fn = jax.custom_jvp(product)
        fn.defjvp(lambda p, t: (product(*p), product(*p)))
    else:
        fn = jax.custom_vjp(product)
        fn.defvjp(lambda x, w: (product(x, w), None), lambda r, g: (None, None))
    name = jax.make_jaxpr(fn)(x, w).jaxpr.eqns[0].primitive.name
    assert name != "edge_int_matmul", name  # a call-like primitive around the product
    c = cost(fn, x, w)
    check_single(c, 3)


@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("concrete", [False, True])
def test_product_inside_scan(reverse, concrete):
    """length L: counts x L. concrete=True puts a while loop in the body, so the scan is
    iterated by the interpreter instead of compiled as a lax.scan."""
    L, z = 5, 6
    xs, w = acts(L, M, K), weights(K, N, z)

    def fn(xs, w):
        def body(carry, x):
            y = product(x, w)
            if concrete:
                carry = lax.while_loop(lambda c: c < 0, lambda c: c + 1, carry)
            return carry + y.sum(), y

        return lax.scan(body, jnp.int32(0), xs, reverse=reverse)

    c = cost(fn, xs, w)
    check_single(c, z, times=L)
    ref = fn(xs, w)
    for a, b in zip(leaves(c.outputs), leaves(ref), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_product_inside_while_counts_the_iterations_run():
    x, w = acts(M, K), weights(K, N, 2)

    def fn(x, w, n):
        def body(s):
            i, acc = s
            return i + 1, acc + product(x, w)

        return lax.while_loop(lambda s: s[0] < n, body, (0, jnp.zeros((M, N), jnp.int32)))

    for r in (0, 1, 4):
        c = cost(fn, x, w, jnp.int32(r))
        assert c.macs_total == r * M * K * N and c.macs_skipped == r * M * 2
        assert c.bytes_read == r * (M * K + K * N)
        assert int(c.outputs[0]) == r


def test_product_inside_cond_counts_the_taken_branch_only():
    x, w1, w2 = acts(M, K), weights(K, N, 1), weights(K, 2 * N, 9)

    def fn(x, w1, w2, p):
        return lax.cond(
            p,
            lambda: product(x, w2)[:, :N],  # K x 2N product, then a slice (DSP)
            lambda: product(x, w1),
        )

    c0 = cost(fn, x, w1, w2, False)
    check_single(c0, 1)
    c1 = cost(fn, x, w1, w2, True)
    assert c1.macs_total == M * K * 2 * N and c1.macs_skipped == M * 9
    assert c1.bytes_read == M * K + K * 2 * N
    np.testing.assert_array_equal(np.asarray(c1.outputs), np.asarray(fn(x, w1, w2, True)))


def test_product_inside_vmap_is_one_batched_product():
    B, z = 3, 5
    xs, w = acts(B, M, K), weights(K, N, z)
    shared = cost(jax.vmap(product, in_axes=(0, None)), xs, w)
    assert shared.per_primitive["edge_int_matmul"]["calls"] == 1
    assert shared.macs_total == B * M * K * N and shared.macs_skipped == B * M * z
    assert shared.bytes_read == B * M * K + K * N  # the shared weights are read once
    ws = np.stack([weights(K, N, z, seed=s) for s in range(B)])
    per = cost(jax.vmap(product), xs, ws)
    assert per.macs_total == B * M * K * N and per.macs_skipped == B * M * z
    assert per.bytes_read == B * (M * K + K * N) and per.bytes_written == B * M * N * 4
    np.testing.assert_array_equal(np.asarray(per.outputs), np.asarray(jax.vmap(product)(xs, ws)))


def test_float_products_are_float_macs_on_the_dsp():
    def fn(a, b, img, ker):
        y = jnp.dot(a, b)  # [M, K] x [K, N]
        z = lax.conv_general_dilated(img, ker, (1, 1), "VALID")  # NCHW, OIHW
        return y, z

    a, b = np.ones((M, K), np.float32), np.ones((K, N), np.float32)
    img, ker = np.ones((2, 3, 6, 5), np.float32), np.ones((4, 3, 3, 2), np.float32)
    c = cost(fn, a, b, img, ker)
    conv = 2 * 4 * 4 * 4 * (3 * 3 * 2)  # out [2, 4, 4, 4] x (Cin * taps)
    assert c.float_macs == M * K * N + conv
    assert c.macs_total == 0 and c.npu_cycles == 0
    assert c.dsp_cycles == pytest.approx((M * K * N + conv) / EDGE_NPU.dsp_ops_per_cycle)


TOY = Processor("toy", clock_hz=1000.0, macs_per_cycle=4, bytes_per_cycle=8.0,
                dsp_ops_per_cycle=2.0)  # fmt: skip


def test_cycles_formula_by_hand():
    k, n = 64, 16
    x, w = acts(2, k), weights(k, n, 0)

    def fn(x, w):
        return product(x, w) + 1  # one NPU product, 2 * n DSP adds

    c = cost(fn, x, w, processor=TOY)
    mac = 2 * k * n / 4  # 512: MAC-bound
    mem = (2 * k + k * n + 2 * n * 4) / 8  # 160
    assert c.mac_cycles == pytest.approx(mac) and c.memory_cycles == pytest.approx(mem)
    assert c.npu_cycles == pytest.approx(max(mac, mem))
    assert c.dsp_ops == 2 * n and c.dsp_cycles == pytest.approx(2 * n / 2)
    assert c.cycles == pytest.approx(max(mac, mem) + n)
    assert c.seconds == pytest.approx(c.cycles / 1000.0)
    slow = cost(fn, x, w, processor=dataclasses.replace(TOY, bytes_per_cycle=1.0))
    assert slow.npu_cycles == pytest.approx(2 * k + k * n + 2 * n * 4)  # memory-bound


def test_half_zeros_halve_the_macs_done_and_skip_zeros_off_pays_them():
    k, n = 64, 16
    x, w = acts(2, k), weights(k, n, k * n // 2)
    dense = cost(product, x, weights(k, n, 0), processor=TOY)
    half = cost(product, x, w, processor=TOY)
    assert half.macs_done == dense.macs_done // 2 == half.macs_total // 2
    assert half.mac_cycles == pytest.approx(dense.mac_cycles / 2)
    assert half.npu_cycles == pytest.approx(max(half.mac_cycles, half.memory_cycles))
    off = cost(product, x, w, processor=dataclasses.replace(TOY, skip_zeros=False))
    assert off.mac_cycles == pytest.approx(off.macs_total / 4) == pytest.approx(dense.mac_cycles)
    assert off.macs_skipped == half.macs_skipped  # still reported: the zero-weight products


def test_outputs_equal_the_program_on_a_mixed_program():
    """Brute force: decode, jit, scan, while, cond, vmap and float math, all outputs equal."""
    codes = weights(K, N, 6)
    fields = (codes.reshape(-1).view(np.uint8),)

    def fn(x, fields, feats, n):
        w = decode_weights(fields, encoding="int8", bits=8, n=K * N, count=K * N).reshape(K, N)
        y = jax.vmap(product, in_axes=(0, None))(x, w)  # -> [2, M, N]
        h = jax.nn.softmax(feats @ feats.T)

        def step(c, xi):
            acc = lax.while_loop(lambda s: s[0] < n, lambda s: (s[0] + 1, s[1] * 2), (0, c))[1]
            return acc + lax.cond(acc[0, 0] > 0, lambda: product(xi, w), lambda: -product(xi, w)), h

        out, hs = lax.scan(step, y[0], x)
        return {"y": y, "out": out, "hs": hs, "n": n + 1}

    x = acts(2, M, K)
    feats = np.random.default_rng(3).normal(size=(5, 7)).astype(np.float32)
    c = cost(fn, x, fields, feats, jnp.int32(2))
    ref = fn(x, fields, feats, jnp.int32(2))
    assert jax.tree_util.tree_structure(c.outputs) == jax.tree_util.tree_structure(ref)
    for a, b in zip(leaves(c.outputs), leaves(ref), strict=True):
        assert a.dtype == b.dtype and a.shape == b.shape
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6, atol=1e-6)
    assert c.bytes_read == K * N + 2 * M * K + 2 * M * K  # one stream; x read by 1 + 2 products
    assert c.float_macs == 5 * 7 * 5


def test_per_audio_add_to_dict_and_table():
    x, w = acts(M, K), weights(K, N, 2)
    c = cost(product, x, w)
    per = c.per_audio(2.0)  # 200 units of 10 ms
    assert per["macs_total"] == pytest.approx(c.macs_total / 200)
    assert per["seconds"] == pytest.approx(c.seconds / 200)
    both = c + c
    assert both.macs_done == 2 * c.macs_done and both.cycles == pytest.approx(2 * c.cycles)
    assert both.per_primitive["edge_int_matmul"]["calls"] == 2
    assert sum([c, c, c]).macs_total == 3 * c.macs_total
    with pytest.raises(ValueError, match="processors differ"):
        c + cost(product, x, w, processor=TOY)
    d = json.loads(json.dumps(c.to_dict()))
    assert d["macs_skipped"] == M * 2 and d["processor"]["name"] == EDGE_NPU.name
    table = format_table({"w8": c, "w8 x2": both}, 2.0)
    lines = table.splitlines()
    assert len(lines) == 4 and lines[0].count("|") == lines[1].count("|") == lines[2].count("|")
    assert lines[3].startswith("| w8 x2 |")
    with pytest.raises(ValueError, match="seconds_of_audio"):
        c.per_audio(0)


def test_errors_say_what_is_wrong():
    from jax.custom_batching import custom_vmap

    @custom_vmap
    def f(x):
        return x * 2

    f.def_vmap(lambda size, batched, x: (x * 2, batched[0]))
    with pytest.raises(ValueError, match="unknown higher-order primitive 'custom_vmap_call'"):
        cost(f, np.ones(3, np.float32))
    with pytest.raises(ValueError, match="macs_per_cycle"):
        dataclasses.replace(EDGE_NPU, macs_per_cycle=0)
