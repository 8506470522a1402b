"""Pictures of compression: per-layer sparsity against step, weights in units of their step."""

import json
import struct

import jax
import numpy as np
import pytest

from asr.cli import main
from asr.model_io import load_model, save_model_folder
from asr.models.quant import kernel_table, qmax, quantize_params
from asr.plot import (
    kernel_axes,
    level_stats,
    level_units,
    plot_sparsity,
    plot_weight_histograms,
    representative_layers,
    sparsity_curves,
)

pytest.importorskip("matplotlib")

LAYERS = [
    "encoder/ConvSubsampling_0/Conv_0",
    "encoder/layer_0/Dense_0",
    "encoder/layer_1/Dense_0",
    "predictor/lstm_0/hi",
    "joiner/out",
]


def png_size(path) -> tuple[int, int]:
    """(width, height) of a PNG, from its IHDR chunk; asserts the PNG signature."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


def write_metrics(path, steps=range(0, 101, 10), final=0.5, with_zeros=True):
    """A metrics.jsonl as a sparsified run writes it: training lines with zeros, the target and
    zeros/<layer>, and dev lines."""
    with open(path, "w") as f:
        for s in steps:
            target = final * (1 - (1 - min(s / 80, 1.0)) ** 3)
            m = {"step": s, "loss": 3.0 - s / 100}
            if with_zeros:
                per = {n: min(1.0, target * (0.5 + i / 4)) for i, n in enumerate(LAYERS)}
                m |= {f"zeros/{n}": v for n, v in per.items()}
                m |= {"zeros": float(np.mean(list(per.values()))), "sparsity_target": target}
            f.write(json.dumps(m) + "\n")
            if s % 50 == 0:
                f.write(json.dumps({"step": s, "dev_wer": 0.2}) + "\n")
    return path


# --------------------------------------------------------------------------- sparsity


def test_sparsity_curves_reads_layers_and_overall(tmp_path):
    m = write_metrics(tmp_path / "metrics.jsonl")
    with open(m, "a") as f:  # a resume logs step 100 again; a line being written
        f.write(json.dumps({"step": 100, "zeros": 0.9, "zeros/joiner/out": 0.8}) + "\n")
        f.write('{"step": 110, "zer')
    c = sparsity_curves(tmp_path)  # the work folder, or the file itself
    np.testing.assert_array_equal(c["step"], np.arange(0, 101, 10))
    assert list(c["layers"]) == LAYERS
    assert c["zeros"][-1] == 0.9 and c["layers"]["joiner/out"][-1] == 0.8
    assert c["layers"]["encoder/layer_0/Dense_0"][-1] == pytest.approx(0.5 * 0.75)
    assert c["target"][0] == 0.0 and c["target"][-1] == pytest.approx(0.5)
    np.testing.assert_array_equal(sparsity_curves(m)["step"], c["step"])


def test_plot_sparsity_writes_a_png(tmp_path):
    wd = tmp_path / "run"
    wd.mkdir()
    write_metrics(wd / "metrics.jsonl")
    out = plot_sparsity(wd, tmp_path / "sub" / "sparsity.png")
    assert out == tmp_path / "sub" / "sparsity.png"
    w, h = png_size(out)
    assert 600 <= w <= 2000 and 300 <= h <= 1200
    # one logged step: drawn as points, still a picture
    one = write_metrics(tmp_path / "one.jsonl", steps=[10])
    assert png_size(plot_sparsity(one, tmp_path / "one.png"))[0] >= 600


def test_plot_sparsity_clear_errors(tmp_path):
    with pytest.raises(
        ValueError, match=r"no such work folder or metrics file.*--set sparsity=0\.5"
    ):
        plot_sparsity(tmp_path, tmp_path / "x.png")
    write_metrics(tmp_path / "metrics.jsonl", with_zeros=False)
    with pytest.raises(ValueError, match=r"no per-layer zero shares.*--set sparsity=0\.5"):
        plot_sparsity(tmp_path, tmp_path / "x.png")
    assert not (tmp_path / "x.png").exists()


# --------------------------------------------------------------------------- weight levels


def small_params(seed=0):
    """A parameter tree shaped like the transducer's: an attention qkv, feed-forward Dense
    layers, a depthwise conv, an LSTM gate, the joiner out (plus a bias, which is no kernel)."""
    rng = np.random.default_rng(seed)

    def k(*shape):
        return {"kernel": rng.standard_normal(shape).astype(np.float32) * 0.1}

    layer = {
        "SelfAttention_0": {"qkv": k(16, 3, 2, 8), "out": k(2, 8, 16)},
        "CausalConvModule_0": {"Conv_0": k(5, 1, 16)},
        "Dense_0": {**k(16, 32), "bias": np.zeros(32, np.float32)},
        "Dense_1": k(32, 16),
    }
    return {
        "encoder": {"layer_0": layer, "layer_1": jax.tree_util.tree_map(np.copy, layer)},
        "predictor": {"lstm_0": {"hi": k(12, 12)}},
        "joiner": {"out": k(24, 20)},
    }


def numpy_level_units(w, bits, axes):
    amax = np.max(np.abs(w), axis=axes, keepdims=True)
    return w / (np.where(amax > 0, amax, 1.0) / (2 ** (bits - 1) - 1))


@pytest.mark.parametrize("bits", [2, 4, 8])
def test_level_units_against_numpy(bits):
    rng = np.random.default_rng(bits)
    for name, shape in [
        ("encoder/layer_0/SelfAttention_0/qkv", (16, 3, 2, 8)),  # contracts axis 0 only
        ("encoder/layer_0/SelfAttention_0/out", (2, 8, 16)),
        ("encoder/layer_0/CausalConvModule_0/Conv_0", (5, 1, 16)),
        ("joiner/out", (24, 20)),
    ]:
        axes = kernel_axes(name, shape)
        w = rng.standard_normal(shape).astype(np.float32)
        w[..., 0] = 0.0  # an all-zero output channel stays zero
        u = level_units(w, bits, axes)
        assert u.shape == w.shape and u.dtype == np.float32
        np.testing.assert_allclose(u, numpy_level_units(w, bits, axes), rtol=1e-5, atol=1e-5)
        assert np.all(u[..., 0] == 0) and np.abs(u).max() == pytest.approx(qmax(bits))
    assert kernel_axes("encoder/layer_0/SelfAttention_0/qkv", (16, 3, 2, 8)) == (0,)
    assert kernel_axes("encoder/layer_0/CausalConvModule_0/Conv_0", (5, 1, 16)) == (0, 1)


def test_quantized_weights_land_on_integer_levels():
    params = small_params()
    q = quantize_params(params, 4)
    for name, w in kernel_table(q):
        u = level_units(w, 4, kernel_axes(name, np.shape(w)))
        np.testing.assert_allclose(u, np.round(u), atol=1e-4)
        zeros, dist = level_stats(u, np.asarray(w))
        assert 0 < zeros < 0.5 and dist < 1e-4
    name, w = kernel_table(params)[0]
    zeros, dist = level_stats(level_units(w, 4, kernel_axes(name, w.shape)), w)
    assert zeros == 0 and 0.15 < dist < 0.35  # spread evenly between the levels


def test_representative_layers():
    names = [n for n, _ in kernel_table(small_params())]
    assert representative_layers(names) == [
        "encoder/layer_1/SelfAttention_0/qkv",
        "encoder/layer_1/Dense_0",
        "encoder/layer_1/CausalConvModule_0/Conv_0",
        "joiner/out",
    ]
    assert representative_layers(["joiner/out", "a/b"], n=4) == ["joiner/out", "a/b"]
    assert representative_layers(names, n=2) == [
        "encoder/layer_1/SelfAttention_0/qkv",
        "encoder/layer_1/Dense_0",
    ]


def test_plot_weight_histograms_writes_a_png(tmp_path):
    before = small_params()
    after = quantize_params(before, 4)
    out = plot_weight_histograms(before, after, 4, tmp_path / "w.png")
    w, h = png_size(out)
    assert 800 <= w <= 2000 and 700 <= h <= 1600  # four panels
    # chosen layers; weights already on the levels on both sides; a variables dict
    out = plot_weight_histograms(
        {"params": after},
        after,
        4,
        tmp_path / "one.png",
        layers=["joiner/out"],
        labels=("quantized", "same"),
    )
    w1, h1 = png_size(out)
    assert h1 < h / 2
    assert png_size(plot_weight_histograms(before, quantize_params(before, 8), 8, out))[0] > 0


def test_plot_weight_histograms_clear_errors(tmp_path):
    p = small_params()
    with pytest.raises(ValueError, match=r"before: no kernel named 'joiner/nope'"):
        plot_weight_histograms(p, p, 4, tmp_path / "x.png", layers=["joiner/nope"])
    with pytest.raises(ValueError, match=r"bits must be an integer in \[2, 16\]"):
        plot_weight_histograms(p, p, 1, tmp_path / "x.png")
    other = small_params()
    other["joiner"]["out"]["kernel"] = np.zeros((24, 21), np.float32)
    with pytest.raises(ValueError, match=r"joiner/out: .* must share an architecture"):
        plot_weight_histograms(p, other, 4, tmp_path / "x.png", layers=["joiner/out"])
    with pytest.raises(ValueError, match=r"before: no kernels"):
        plot_weight_histograms({}, p, 4, tmp_path / "x.png")
    assert not (tmp_path / "x.png").exists()


# --------------------------------------------------------------------------- CLI


def test_cli_plot_sparsity(tmp_path, capsys):
    wd = tmp_path / "run"
    wd.mkdir()
    write_metrics(wd / "metrics.jsonl")
    out = tmp_path / "s.png"
    assert main(["plot", "sparsity", "--workdir", str(wd), "-o", str(out)]) == 0
    assert capsys.readouterr().out.strip() == str(out)
    assert png_size(out)[0] > 0
    write_metrics(wd / "metrics.jsonl", with_zeros=False)
    assert main(["plot", "sparsity", "--workdir", str(wd), "-o", str(out)]) == 2
    err = capsys.readouterr().err
    assert "asr plot: error:" in err and "no per-layer zero shares" in err
    assert "--set sparsity=0.5" in err


def test_cli_plot_weights(tmp_path, capsys):
    shipped = load_model("default")
    variables = quantize_params(shipped.variables, 4)  # every collection, kernels rounded
    qdir = save_model_folder(tmp_path / "q4", shipped.config, shipped.tokenizer, variables)
    out = tmp_path / "w.png"
    argv = ["plot", "weights", "--before", "default", "--after", str(qdir)]
    assert main([*argv, "-o", str(out)]) == 0  # --bits 4 by default
    assert capsys.readouterr().out.strip() == str(out)
    assert png_size(out)[1] > 700
    assert main([*argv, "--bits", "4", "--layer", "joiner/nope", "-o", str(out)]) == 2
    assert "no kernel named 'joiner/nope'" in capsys.readouterr().err
    assert main([*argv, "--bits", "1", "-o", str(out)]) == 2
    assert "argument --bits: must be >= 2" in capsys.readouterr().err
