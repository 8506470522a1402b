"""Model -> artifact (export/exporter.py) and the `asr export` command line."""

from __future__ import annotations

import json

import jax
import numpy as np
import pytest
from test_hw_runtime import _loaded

from asr.cli import main
from asr.model_io import quantized
from asr.models.config import get_config
from asr.models.quant import QuantPolicy, contracting_axes, fake_quant, is_kernel, kernel_table
from asr.models.transducer import build_model, count_params, init_variables
from export.artifact import read_artifact, to_bytes
from export.encodings import decode
from export.exporter import (
    artifact_variables,
    export_model,
    matrix_shape,
    prune_kernel,
    quantize_kernel,
    reference_model,
    size_report,
)


@pytest.mark.parametrize("bits", [8, 6, 4, 2])
def test_quantize_kernel_is_the_fake_quant_hook_exactly(bits):
    rng = np.random.default_rng(bits)
    for shape, axes in (((20, 7), (0,)), ((3, 3, 4, 5), (0, 1, 2)), ((8, 3, 2, 4), (0,))):
        w = rng.standard_normal(shape).astype(np.float32)
        w[..., 0] = 0.0  # an all-zero channel (for the 2-D and conv shapes)
        k = int(np.prod([shape[a] for a in axes]))
        codes, step = quantize_kernel(w, bits, k)
        assert codes.dtype == np.int8 and np.abs(codes).max() <= 2 ** (bits - 1) - 1
        want = np.asarray(fake_quant(jax.numpy.asarray(w), bits, axes)).reshape(k, -1)
        np.testing.assert_array_equal(codes.astype(np.float32) * step[None], want)


@pytest.mark.parametrize("bits", [8, 4])
def test_artifact_variables_are_the_post_training_quantized_model(bits):
    lm = _loaded("lstm")
    art = read_artifact(to_bytes(export_model(lm, bits)))
    got = artifact_variables(art)
    assert lm.config.ctc_head and not art.header["model"]["ctc_head"]  # the CTC head stays home
    want = quantized(lm, QuantPolicy(bits, 8)).variables
    want = {**want, "params": {k: v for k, v in want["params"].items() if k != "ctc_out"}}
    flat_got = dict(jax.tree_util.tree_leaves_with_path(got))
    for path, w in jax.tree_util.tree_leaves_with_path(want):
        np.testing.assert_array_equal(flat_got[path], np.asarray(w), err_msg=str(path))
    assert len(flat_got) == len(jax.tree_util.tree_leaves(want))


def test_mixed_precision_artifact_is_the_mixed_fake_quant_model():
    """--small-bits: the small layers' records at 8 bits, the rest at 4; the artifact decodes to
    exactly the mixed post-training quantized model, and the header carries the policy."""
    lm = _loaded("lstm")
    art = read_artifact(to_bytes(export_model(lm, 4, small_bits=8)))
    assert art.header["quant"] == {"weight_bits": 4, "act_bits": 8, "small_bits": 8}
    bits = {n: r.bits for n, r in art.tensors.items() if r.meta.get("role") == "kernel"}
    ends = (
        "ConvSubsampling_0/Conv_0/kernel",
        "CausalConvModule_0/Conv_0/kernel",
        "joiner/out/kernel",
    )
    small = {n for n in bits if n.endswith(ends)}
    assert len(small) >= 3 and {bits[n] for n in small} == {8}
    assert {b for n, b in bits.items() if n not in small} == {4}
    got = artifact_variables(art)
    want = quantized(lm, QuantPolicy(4, 8, 8)).variables
    want = {**want, "params": {k: v for k, v in want["params"].items() if k != "ctc_out"}}
    flat_got = dict(jax.tree_util.tree_leaves_with_path(got))
    for path, w in jax.tree_util.tree_leaves_with_path(want):
        np.testing.assert_array_equal(flat_got[path], np.asarray(w), err_msg=str(path))
    assert reference_model(art).model.quant == QuantPolicy(4, 8, 8)
    plain = read_artifact(to_bytes(export_model(lm, 4, small_bits=4)))
    assert plain.header["quant"] == {"weight_bits": 4, "act_bits": 8}  # same as no mix
    assert size_report(art, 0)["small_bits"] == 8 and size_report(plain, 0)["small_bits"] == 0
    # a model trained mixed (its policy says so) exports mixed by default
    mixed = quantized(lm, QuantPolicy(4, 8, 8))
    assert export_model(mixed, 4).header["quant"]["small_bits"] == 8
    for bad in (1, 9, 4.0, True):
        with pytest.raises(ValueError, match="small_bits"):
            export_model(lm, 4, small_bits=bad)


def test_prune_kernel_reaches_the_share_and_keeps_the_largest():
    w = np.random.default_rng(0).standard_normal((30, 11)).astype(np.float32)
    p = prune_kernel(w, 0.5)
    assert np.sum(p == 0) == 165
    assert np.min(np.abs(w[p != 0])) >= np.max(np.abs(w[p == 0]))
    np.testing.assert_array_equal(p[p != 0], w[p != 0])
    already = np.where(np.abs(w) < 1.0, 0.0, w).astype(np.float32)  # ~68% zeros
    np.testing.assert_array_equal(prune_kernel(already, 0.5), already)


def test_size_report_counts_bytes_zeros_and_the_large_model():
    lm = _loaded("stateless")
    dense, sparse = export_model(lm, 4), export_model(lm, 4, 0.7)
    rd, rs = (size_report(a, len(to_bytes(a))) for a in (dense, sparse))
    assert rd["bytes"] == len(to_bytes(dense))
    assert not lm.config.ctc_head and rd["float32_bytes"] == 4 * count_params(lm.variables)
    large = build_model(get_config("large"))
    shapes = jax.eval_shape(lambda: init_variables(large, jax.random.PRNGKey(0))["params"])
    assert rd["large_float32_bytes"] == 4 * sum(
        int(np.prod(s.shape)) for s in jax.tree_util.tree_leaves(shapes)
    )
    kernels = [w for _, w in kernel_table(lm.variables["params"])]
    assert rs["zero_fraction"] >= 0.7 and rd["zero_fraction"] < 0.5
    assert rs["kernel_bytes"] < 0.75 * rd["kernel_bytes"]  # bitmap / gaps forms pay off
    assert sum(r["zero_fraction"] is not None for r in rd["tensors"]) == len(kernels)
    assert rd["bits"] == 4 and set(rs["encodings"]) <= {"int4", "bitmap", "gaps", "huffman"}


def test_matrix_shape_of_every_kernel():
    lm = _loaded("biasing")
    for path, w in jax.tree_util.tree_leaves_with_path(lm.variables["params"]):
        if is_kernel(path):
            k, n = matrix_shape(path, w.shape)
            axes = contracting_axes(path, w.shape)
            assert k == int(np.prod([w.shape[a] for a in axes])) and k * n == w.size


def test_export_rejects_bad_bits_and_sparsity():
    lm = _loaded("stateless")
    for bad in (1, 9, 4.0):
        with pytest.raises(ValueError, match="bits"):
            export_model(lm, bad)
    with pytest.raises(ValueError, match="sparsity"):
        export_model(lm, 4, 1.0)


def test_cli_export_report_diff_apply(tmp_path, capsys):
    from asr.model_io import save_model_folder

    lm = _loaded("lstm")
    folder = save_model_folder(tmp_path / "m", lm.config, lm.tokenizer, lm.variables)
    out = tmp_path / "m.edge"
    assert main(["export", "--model", str(folder), "--bits", "4", "-o", str(out), "--json"]) == 0
    rep = json.loads(capsys.readouterr().out)
    for key in ("bytes", "float32_bytes", "large_float32_bytes", "bits", "zero_fraction"):
        assert key in rep
    assert rep["bytes"] == out.stat().st_size and rep["bits"] == 4
    assert main(["export", "report", str(out)]) == 0
    assert "of the large server model" in capsys.readouterr().out
    # the artifact runs on the emulated processor through the same commands as a model folder
    import soundfile as sf

    wav = tmp_path / "a.wav"
    sf.write(wav, (0.1 * np.random.default_rng(0).standard_normal(12000)).astype(np.float32), 16000)
    assert main(["transcribe", "--model", str(out), "--json", str(wav)]) == 0
    assert json.loads(capsys.readouterr().out.splitlines()[0])["audio"] == str(wav)
    assert main(["transcribe", "--model", str(out), "--bits", "8", str(wav)]) == 2
    assert "edge artifact" in capsys.readouterr().err
    # a fine-tune that changed one layer: the patch carries little more than that layer
    params = jax.tree_util.tree_map(np.array, lm.variables)
    params["params"]["joiner"]["out"]["kernel"] *= 1.5
    folder2 = save_model_folder(tmp_path / "m2", lm.config, lm.tokenizer, params)
    out2 = tmp_path / "m2.edge"
    assert main(["export", "--model", str(folder2), "--bits", "4", "-o", str(out2)]) == 0
    patch = tmp_path / "u.patch"
    assert main(["export", "diff", str(out), str(out2), "-o", str(patch), "--json"]) == 0
    capsys.readouterr()
    assert patch.stat().st_size < 0.5 * out2.stat().st_size
    rebuilt = tmp_path / "r.edge"
    assert main(["export", "apply", str(out), str(patch), "-o", str(rebuilt)]) == 0
    assert rebuilt.read_bytes() == out2.read_bytes()
    # --no-entropy-coding: no kernel entropy-coded, the same codes
    out3 = tmp_path / "m3.edge"
    cmd = ["export", "--model", str(folder), "--bits", "4", "--no-entropy-coding", "-o", str(out3)]
    assert main(cmd) == 0
    capsys.readouterr()
    plain, coded = read_artifact(out3.read_bytes()), read_artifact(out.read_bytes())
    assert all(rec.encoding != "huffman" for rec in plain.tensors.values())
    for name, rec in coded.tensors.items():
        if rec.encoding != "raw":
            np.testing.assert_array_equal(
                decode(plain.tensors[name].to_encoded()), decode(rec.to_encoded())
            )
    # errors: a clear message, exit status 2
    assert main(["export", "--model", str(folder), "--bits", "4"]) == 2
    assert "-o" in capsys.readouterr().err
    assert (
        main(["export", "--model", str(folder), "--bits", "4", "-o", str(tmp_path / "x.bin")]) == 2
    )
    assert ".edge" in capsys.readouterr().err
    assert main(["export", "apply", str(out2), str(patch), "-o", str(tmp_path / "z.edge")]) == 2
    assert "base" in capsys.readouterr().err
