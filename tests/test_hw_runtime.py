"""The emulated processor's runtime (hw/runtime.py) against the artifact's fake-quant model.

Small random models (one encoder layer; LSTM and stateless predictors; with and without the
biasing network) are exported at 8 and 4 bits, dense and sparse; the runtime's outputs must
match the fake-quant model's (same integer levels, float scales applied in another order: close,
not bit-equal), its program must hold no float matrix product (every product on the NPU), and a
recognizer on it must decode like the fake-quant recognizer.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import random_variables

from asr.model_io import LoadedModel, ModelLoadError, load_model
from asr.models.biasing import context_arrays
from asr.models.config import get_config
from asr.models.quant import QuantPolicy, fake_quant, qmax
from asr.models.transducer import build_model
from asr.tokenizer import Tokenizer
from export.artifact import Artifact, TensorRecord, read_artifact, to_bytes, write_artifact
from export.encodings import decode, encode
from export.exporter import artifact_config, export_model, reference_model
from hw.primitives import int_matmul, int_matmul_reference
from hw.primitives.fixedpoint import dequantize_multiplier
from hw.runtime import (
    EdgeTransducer,
    compile_artifact,
    integer_einsum,
    quantize_rows,
    requantization,
)

VARIANTS = {
    "lstm": dict(predictor="lstm", ctc_head=True),
    "stateless": dict(predictor="stateless"),
    "biasing": dict(predictor="lstm", bias_dim=32, bias_heads=2, bias_encoder="lstm"),
}


@functools.cache
def _tokenizer():
    words = "turn on the lights call mom play some jazz set a timer what is the weather"
    return Tokenizer.train([words, "stop go yes no one two three four five six seven"], 32)


@functools.cache
def _loaded(variant: str) -> LoadedModel:
    cfg = get_config("tiny").replace(vocab_size=_tokenizer().vocab_size, num_layers=1)
    cfg = cfg.replace(**VARIANTS[variant])
    model = build_model(cfg)
    variables = random_variables(model, half=True)
    return LoadedModel(model, variables, _tokenizer(), cfg, f"random {variant}")


def _inputs(cfg):
    rng = np.random.default_rng(8)
    feats = rng.standard_normal((2, 64, cfg.n_mels)).astype(np.float32)
    pads = np.zeros((2, 64), np.float32)
    pads[1, 40:] = 1.0
    labels = rng.integers(2, cfg.vocab_size, (2, 4)).astype(np.int32)
    return feats, pads, labels


def _outputs(lm: LoadedModel, ctx=None):
    """(encoder output, joint logits over predict(labels), predictor step output)."""
    feats, pads, labels = _inputs(lm.config)

    def run(v):
        kw = {} if ctx is None else {"context": ctx}
        enc, _ = lm.model.apply(v, feats, pads, method="encode", **kw)
        pred = lm.model.apply(v, labels, method="predict")
        logits = lm.model.apply(v, enc[:, :, None], pred[:, None], method="joint")
        st = lm.model.apply(v, 2, method="predictor_init")
        _, step = lm.model.apply(v, st, jnp.asarray(labels[:, 0]), method="predict_step")
        return enc, logits, step

    return [np.asarray(o) for o in jax.jit(run)(lm.variables)]


@functools.cache
def _pair(variant: str, bits: int, sparsity: float | None, small_bits: int | None = None):
    art = export_model(_loaded(variant), bits, sparsity, small_bits=small_bits)
    return reference_model(art), compile_artifact(art, "test")


def _close(got, want, tol):
    for g, w in zip(got, want, strict=True):
        assert g.shape == w.shape
        assert np.all(np.isfinite(g))
        err = np.max(np.abs(g - w)) / (np.max(np.abs(w)) + 1e-9)
        assert err < tol, err


@pytest.mark.parametrize(
    "variant,bits,sparsity",
    [("lstm", 8, None), ("stateless", 4, None), ("lstm", 4, 0.7), ("stateless", 8, 0.5)],
)
def test_runtime_matches_the_fake_quant_model(variant, bits, sparsity):
    ref, edge = _pair(variant, bits, sparsity)
    assert isinstance(edge.model, EdgeTransducer)
    # int8 activations: a code flipped by a float rounding upstream moves an output by one
    # activation step (1/127 of the row's max); over a layer that stays well under 2%
    _close(_outputs(edge), _outputs(ref), 0.02)


def test_runtime_runs_mixed_precision_artifacts():
    """Small layers at 8 bits, the rest at 4: the processor decodes each record at its own
    bits and matches the mixed fake-quant model; the small layers' bits change the outputs."""
    ref, edge = _pair("lstm", 4, None, 8)
    assert ref.model.quant == QuantPolicy(4, 8, 8)
    assert edge.model.quant.describe() == "edge w4s8a8"
    assert {lay.bits for lay in edge.model.layout} == {4, 8}
    got = _outputs(edge)
    _close(got, _outputs(ref), 0.02)
    plain = _outputs(_pair("lstm", 4, None)[1])
    diffs = [np.max(np.abs(g - p)) / np.max(np.abs(p)) for g, p in zip(got, plain, strict=True)]
    assert max(diffs) > 0.02


def test_runtime_with_the_biasing_network_matches_with_and_without_a_list():
    ref, edge = _pair("biasing", 8, None)
    ctx = context_arrays([[[3, 4], [5, 6, 7]], [[8]]], num_phrases=3, max_tokens=4)
    _close(_outputs(edge, ctx), _outputs(ref, ctx), 0.02)
    _close(_outputs(edge), _outputs(ref), 0.02)


def _primitives(jaxpr, out=None):
    out = {} if out is None else out
    for eqn in jaxpr.eqns:
        out[eqn.primitive.name] = out.get(eqn.primitive.name, 0) + 1
        for v in eqn.params.values():
            for sub in v if isinstance(v, (tuple, list)) else (v,):
                if hasattr(sub, "eqns"):
                    _primitives(sub, out)
                elif hasattr(sub, "jaxpr") and hasattr(sub.jaxpr, "eqns"):
                    _primitives(sub.jaxpr, out)
    return out


@pytest.mark.parametrize("variant", ["lstm", "biasing"])
def test_every_product_runs_on_the_npu(variant):
    _, edge = _pair(variant, 4, None)
    feats, pads, labels = _inputs(edge.config)
    kw = {}
    if edge.config.bias_dim:  # with a list, so the phrase encoder runs too
        kw["context"] = context_arrays([[[3, 4]], [[8]]], num_phrases=2, max_tokens=2)

    def run(v):
        enc, _ = edge.model.apply(v, feats, pads, method="encode", **kw)
        if kw:  # the phrases encoded once per list (what the recognizer does) run there too
            entries = edge.model.apply(v, kw["context"], 2, method="context_entries")
            enc2, _ = edge.model.apply(v, feats, pads, method="encode", context=entries)
            enc = enc + enc2
        pred = edge.model.apply(v, labels, method="predict")
        return edge.model.apply(v, enc[:, :, None], pred[:, None], method="joint")

    prims = _primitives(jax.make_jaxpr(run)(edge.variables).jaxpr)
    assert prims.get("dot_general", 0) == 0 and prims.get("conv_general_dilated", 0) == 0, prims
    # every kernel decoded (the artifact has no CTC head; flax's scan traces its body twice)
    layout = edge.model.layout
    assert not any(lay.path.startswith("ctc_out") for lay in layout)
    assert prims["edge_decode_weights"] >= len(layout), (prims, len(layout))
    assert prims["edge_int_matmul"] >= len(layout)


def test_recognizer_on_the_emulator_decodes_like_the_fake_quant_model():
    from asr.recognizer import DecodeSettings, Recognizer

    ref, edge = _pair("lstm", 8, None)
    rng = np.random.default_rng(3)
    audios = [(0.1 * rng.standard_normal(n)).astype(np.float32) for n in (8000, 12000, 16000)]
    settings = DecodeSettings(beam=2, max_segment_seconds=20.0)
    got = Recognizer(edge, settings).recognize(audios)
    want = Recognizer(ref, settings).recognize(audios)
    assert [h[0].text for h in got] == [h[0].text for h in want]
    for g, w in zip(got, want, strict=True):
        assert abs(g[0].score - w[0].score) < 0.05 * (1 + abs(w[0].score))


def test_integer_einsum_equals_the_fake_quant_einsum():
    rng = np.random.default_rng(0)
    a = rng.standard_normal((2, 5, 3, 4)).astype(np.float32)
    b = rng.standard_normal((2, 6, 3, 4)).astype(np.float32)
    for spec, x, y in (
        ("bqhd,bkhd->bhqk", a, b),
        ("bhqk,bkhd->bqhd", rng.random((2, 3, 5, 6)).astype(np.float32), b),
    ):
        ins, out = spec.split("->")
        sa, sb = ins.split(",")
        xa = fake_quant(jnp.asarray(x), 8, [i for i, c in enumerate(sa) if c not in out])
        xb = fake_quant(jnp.asarray(y), 8, [i for i, c in enumerate(sb) if c not in out])
        want = np.einsum(spec, np.asarray(xa, np.float64), np.asarray(xb, np.float64))
        got = np.asarray(integer_einsum(spec, jnp.asarray(x), jnp.asarray(y), 8))
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_quantize_rows_gives_the_fake_quant_levels():
    x = np.random.default_rng(1).standard_normal((3, 7, 9)).astype(np.float32)
    x[1] = 0.0
    q, step = quantize_rows(jnp.asarray(x), 8, (-1,))
    assert q.dtype == jnp.int8 and step.shape == (3, 7, 1)
    np.testing.assert_array_equal(
        np.asarray(q, np.float32) * np.asarray(step),
        np.asarray(fake_quant(jnp.asarray(x), 8, (-1,))),
    )


@pytest.mark.parametrize("bits,k", [(8, 576), (4, 96), (8, 9), (2, 4000)])
def test_requantization_keeps_the_steps_and_cannot_saturate(bits, k):
    rng = np.random.default_rng(k)
    step = rng.uniform(1e-4, 3e-2, 50).astype(np.float32)
    step[3] = 0.0
    codes = rng.integers(-qmax(bits), qmax(bits) + 1, (k, 50)).astype(np.int8)
    codes[:, 3] = 0
    mult, shift, oscale = requantization(step, codes, 8)
    real = dequantize_multiplier(mult, shift)
    np.testing.assert_allclose(real * float(oscale), step, rtol=1e-6, atol=0)
    # the worst accumulator of every channel stays inside int32 after scaling ...
    worst = 127 * np.abs(codes.astype(np.int64)).sum(axis=0)
    assert np.all(worst * real < 2**31 - 1)
    # ... and the primitive gives the exact scaled sums for the extreme activations
    x = (np.sign(codes.T) * 127).astype(np.int8)  # row n: every product of channel n positive
    got = np.asarray(int_matmul(jnp.asarray(x), jnp.asarray(codes), mult, shift))
    want = int_matmul_reference(x, codes, mult, shift)
    np.testing.assert_array_equal(got, want)
    assert np.all(np.abs(np.diag(got) - worst * real) <= 1)
    assert np.max(np.diag(got)) > 2**29  # the headroom is used: F is as large as it can be


def test_edge_files_load_through_the_entry_point(tmp_path):
    _, edge = _pair("lstm", 4, None)
    art = export_model(_loaded("lstm"), 4)
    path = tmp_path / "m.edge"
    write_artifact(path, art)
    lm = load_model(path)
    assert isinstance(lm.model, EdgeTransducer) and lm.model == edge.model
    assert lm.model.quant.describe() == "edge w4a8"
    data = bytearray(to_bytes(art))
    data[len(data) // 2] ^= 0x10
    bad = tmp_path / "bad.edge"
    bad.write_bytes(bytes(data))
    with pytest.raises(ModelLoadError, match="bad.edge"):
        load_model(bad)
    (tmp_path / "short.edge").write_bytes(bytes(data[:100]))
    with pytest.raises(ModelLoadError, match="short.edge"):
        load_model(tmp_path / "short.edge")
    other = tmp_path / "m.onnx"
    other.write_bytes(b"x")
    with pytest.raises(ModelLoadError, match=r"\.edge"):
        load_model(other)


def _reencoded(art: Artifact, encoding: str) -> Artifact:
    """The artifact with every kernel's codes stored in `encoding` instead (same codes)."""
    tensors = {}
    for name, rec in art.tensors.items():
        if rec.meta.get("role") == "kernel":
            enc = encode(decode(rec.to_encoded()), rec.bits, encoding)
            rec = TensorRecord.from_encoded(name, rec.meta, enc)
        tensors[name] = rec
    return Artifact(dict(art.header), tensors, dict(art.blobs))


def test_huffman_coded_kernels_run_bit_identically():
    """Entropy-coded kernels are decoded on chip to the same codes: the outputs equal the
    dense int4 artifact's bit for bit, after a trip through the file format."""
    art = export_model(_loaded("lstm"), 4)
    dense = _reencoded(art, "int4")
    coded = read_artifact(to_bytes(_reencoded(art, "huffman")))
    assert {r.encoding for r in coded.tensors.values() if r.meta.get("role") == "kernel"} == {
        "huffman"
    }
    for got, want in zip(
        _outputs(compile_artifact(coded, "huffman")),
        _outputs(compile_artifact(dense, "int4")),
        strict=True,
    ):
        np.testing.assert_array_equal(got, want)
    name = next(n for n, r in coded.tensors.items() if r.meta.get("role") == "kernel")
    rec = coded.tensors[name]
    lengths = rec.fields["lengths"].copy()
    lengths[0] = 0xFF  # two codeword lengths of 15
    fields = {**rec.fields, "lengths": lengths}
    bad = TensorRecord(name, rec.meta, rec.encoding, rec.bits, rec.n, rec.count, fields)
    data = to_bytes(Artifact(coded.header, {**coded.tensors, name: bad}, coded.blobs))
    with pytest.raises(
        ModelLoadError, match=f"bad.edge: tensor '{name}': huffman: a codeword length over 12"
    ):
        compile_artifact(read_artifact(data), "bad.edge")


# ---- the phone head (phonetic name matching) in the artifact ----


def _head(d: int, conv: str = "full"):
    from asr.phonetic import PhoneHead, PhoneModel, word_phones

    inv = tuple(sorted({p for w in ("call", "mom", "kennedy", "zoe") for p in word_phones(w)}))
    head = PhoneHead(len(inv), hidden=16, kernel=3, conv=conv)
    params = head.init(jax.random.PRNGKey(1), jnp.zeros((1, 8, d)), jnp.zeros((1, 8)))
    params = jax.tree_util.tree_map(lambda x: np.asarray(x, np.float32), params)
    return PhoneModel(params, inv, 16, 3, conv=conv)


def _with_head(variant: str = "lstm"):
    base = _loaded(variant)
    return dataclasses.replace(base, phones=_head(base.config.d_model))


def _record_bytes(rec: TensorRecord) -> tuple:
    fields = tuple(sorted((k, bytes(np.asarray(v))) for k, v in rec.fields.items()))
    return rec.encoding, rec.bits, fields


def _head_on_npu(path, art, ref_pm, rng, batch: int):
    """The artifact written to `path` and loaded for the processor; its phone head on random
    states (the last row padded after frame 9) checked against `ref_pm` (the fake-quant head)
    in probabilities, within int8 activations' error, and its jaxpr's primitives (no float
    matrix product or convolution). Returns (loaded artifact, primitive counts, rng)."""
    write_artifact(path, art)
    edge = load_model(path)
    d = artifact_config(art).d_model
    states = rng.standard_normal((batch, 12, d)).astype(np.float32)
    pads = np.zeros((batch, 12), np.float32)
    pads[-1, 9:] = 1.0
    got = np.asarray(edge.phones.head.apply(edge.phones.params, states, pads))
    want = np.asarray(ref_pm.head.apply(ref_pm.params, states, pads))
    _close([np.exp(got)], [np.exp(want)], 0.03)
    jaxpr = jax.make_jaxpr(lambda v: edge.phones.head.apply(v, states, pads))(edge.phones.params)
    prims = _primitives(jaxpr.jaxpr)
    assert prims.get("dot_general", 0) == 0 and prims.get("conv_general_dilated", 0) == 0, prims
    return edge, prims, rng


def test_phone_head_travels_in_the_artifact_and_runs_on_the_npu(tmp_path):
    from export.exporter import PHONES_PREFIX, artifact_phones, size_report, with_phones
    from hw.runtime import EdgePhoneHead

    lm = _with_head()
    art = export_model(lm, 4)
    assert art.header["phones"]["bits"] == 8
    assert art.header["phones"]["inventory"] == list(lm.phones.inventory)
    # the transducer's tensors are those of an export without the head, byte for byte
    plain = export_model(dataclasses.replace(lm, phones=None), 4)
    for name, rec in plain.tensors.items():
        assert _record_bytes(art.tensors[name]) == _record_bytes(rec), name
    assert set(art.tensors) - set(plain.tensors) == {
        k for k in art.tensors if k.startswith(PHONES_PREFIX)
    }
    report = size_report(art)
    base = size_report(plain)
    assert report["phone_bytes"] > 0 and report["kernel_bytes"] == base["kernel_bytes"]
    assert report["tensor_bytes"] == base["tensor_bytes"] + report["phone_bytes"]
    head_floats = sum(np.size(x) for x in jax.tree_util.tree_leaves(lm.phones.params))
    assert report["float32_bytes"] == base["float32_bytes"] + 4 * head_floats
    # with_phones on the head-less artifact gives the same artifact
    assert to_bytes(with_phones(plain, lm.phones)) == to_bytes(art)
    # the fake-quant reference: kernels are codes x steps at 8 bits, the rest float16
    ref_pm = artifact_phones(art)
    k = np.asarray(lm.phones.params["params"]["Conv_0"]["kernel"])
    kq = np.asarray(ref_pm.params["params"]["Conv_0"]["kernel"])
    step = np.abs(k).reshape(-1, k.shape[-1]).max(0) / 127
    assert np.all(np.abs(kq - k) <= step / 2 + 1e-7)
    # the runtime's head: products on the NPU, outputs close to the reference head's
    edge, prims, rng = _head_on_npu(tmp_path / "m.edge", art, ref_pm, np.random.default_rng(5), 1)
    assert isinstance(edge.phones.head, EdgePhoneHead)
    assert prims["edge_int_matmul"] == 3  # Dense, Conv, Dense
    # the recognizer on the artifact runs the second pass with a list
    from asr.recognizer import DecodeSettings, Recognizer

    audio = (0.1 * rng.standard_normal(16000)).astype(np.float32)
    rec = Recognizer(edge, DecodeSettings(beam=2, phonetic_margin=-1e6))
    off = Recognizer(edge, DecodeSettings(beam=2, phonetic_margin=None))
    with_list = rec.recognize([audio], context=["kennedy", "zoe"])[0][0].text
    without = off.recognize([audio], context=["kennedy", "zoe"])[0][0].text
    assert with_list != without and ("kennedy" in with_list or "zoe" in with_list)
    assert rec.recognize([audio])[0][0].text == off.recognize([audio])[0][0].text
    # streamed on the processor, `finish` runs the pass too (the stream's text may differ a
    # little from the whole run's: per-step activation scales, hw.runtime docstring)
    greedy = DecodeSettings(method="greedy", phonetic_margin=-1e6)
    stream = Recognizer(edge, greedy).stream(context=["kennedy", "zoe"])
    for i in range(0, len(audio), 4000):
        partial = stream.push(audio[i : i + 4000])
    final = stream.finish()
    assert stream._phonetic and final != partial
    assert "kennedy" in final.split() or "zoe" in final.split()


def test_separable_phone_head_runs_on_the_npu(tmp_path):
    """The small head (depthwise convolution, pointwise product) travels with its kind, at 4
    bits, and runs its four products on the NPU close to its fake-quant reference."""
    from export.exporter import artifact_phones, size_report, with_phones

    base = _loaded("lstm")
    full = dataclasses.replace(base, phones=_head(base.config.d_model))
    sep = dataclasses.replace(base, phones=_head(base.config.d_model, "separable"))
    art = export_model(sep, 4, phone_bits=4)
    assert art.header["phones"]["conv"] == "separable" and art.header["phones"]["bits"] == 4
    assert size_report(art)["phone_bytes"] < size_report(export_model(full, 4))["phone_bytes"]
    ref = artifact_phones(art)
    assert ref.conv == "separable"
    k = np.asarray(sep.phones.params["params"]["Conv_0"]["kernel"])  # [taps, 1, channels]
    kq = np.asarray(ref.params["params"]["Conv_0"]["kernel"])
    step = np.abs(k).reshape(-1, k.shape[-1]).max(0) / 7  # one step per channel, over taps
    assert np.all(np.abs(kq - k) <= step / 2 + 1e-7) and not np.allclose(kq, k)
    edge, prims, _ = _head_on_npu(tmp_path / "s.edge", art, ref, np.random.default_rng(6), 2)
    assert edge.phones.conv == "separable"
    assert prims["edge_int_matmul"] == 4  # Dense, depthwise Conv, pointwise, Dense
    # a header that names another kind than its tensors is a load error
    bad = Artifact(dict(art.header, phones=dict(art.header["phones"], conv="full")),
                   art.tensors, art.blobs)  # fmt: skip
    with pytest.raises(ModelLoadError, match="do not fit"):
        compile_artifact(bad, "bad.edge")
    bad = Artifact(dict(art.header, phones=dict(art.header["phones"], conv="dilated")),
                   art.tensors, art.blobs)  # fmt: skip
    with pytest.raises(ModelLoadError, match="damaged phone head header"):
        compile_artifact(bad, "bad.edge")
    assert to_bytes(with_phones(export_model(base, 4), sep.phones, 4)) == to_bytes(art)


def test_damaged_phone_heads_are_load_errors(tmp_path):
    from export.exporter import PHONES_PREFIX, with_phones

    lm = _with_head()
    art = export_model(lm, 4)
    cases = {
        "no header entry": Artifact(
            {k: v for k, v in art.header.items() if k != "phones"}, art.tensors, art.blobs
        ),
        "no tensors": Artifact(
            art.header,
            {k: v for k, v in art.tensors.items() if not k.startswith(PHONES_PREFIX)},
            art.blobs,
        ),
        "do not fit": Artifact(
            dict(art.header, phones=dict(art.header["phones"], hidden=17)), art.tensors, art.blobs
        ),
        "header": Artifact(dict(art.header, phones={"inventory": "x"}), art.tensors, art.blobs),
    }
    for what, bad in cases.items():
        path = tmp_path / "bad.edge"
        write_artifact(path, bad)
        with pytest.raises(ModelLoadError, match="bad.edge.*phone head"):
            load_model(path)
        if what in ("no header entry", "no tensors"):
            assert what.split()[-1] in str(pytest.raises(ModelLoadError, load_model, path).value)
    # a head for another encoder width is refused when it is added
    with pytest.raises(ValueError, match="wide encoder states"):
        with_phones(art, _head(lm.config.d_model + 8))
    with pytest.raises(ValueError, match="phone_bits"):
        with_phones(art, lm.phones, bits=9)
