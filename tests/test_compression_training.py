"""Compression-aware training in the trainer: the regularizer and the sparsifier in the jitted
step, their state in checkpoints (a resumed run is the run that never stopped), the compressed
model folder and how it loads."""

import json

import jax
import numpy as np
import pytest
from conftest import tiny_recipe

from asr.manifest import read_manifest
from asr.model_io import load_model, quantized
from asr.models.quant import (
    QuantPolicy,
    contracting_axes,
    is_kernel,
    is_small,
    qmax,
    quant_step,
    zero_fraction,
)
from train.configs import TrainConfig
from train.trainer import make_optimizer, train


def _leaves(workdir):
    return jax.tree_util.tree_leaves(load_model(workdir / "model").variables)


def _metrics(workdir):
    lines = (workdir / "metrics.jsonl").read_text().splitlines()
    return [json.loads(ln) for ln in lines if "loss" in ln]


def _on_levels(params, bits: int, small_bits: int = 0) -> bool:
    """Every kernel on its `bits`-bit levels (the small layers' on `small_bits`' when given)."""
    for path, w in jax.tree_util.tree_leaves_with_path(params):
        if not is_kernel(path):
            continue
        b = small_bits if small_bits and is_small(path) else bits
        w = np.asarray(w, np.float64)
        step = np.asarray(quant_step(w, b, contracting_axes(path, w.shape)), np.float64)
        x = w / step
        # float16 storage rounds a level and the step a little: 2^-11 of each, |w| <= qmax steps
        if np.max(np.abs(x - np.round(x))) > 2e-2 + qmax(b) * 2.0**-10:
            return False
    return True


def test_regularizer_and_sparsifier_resume_to_the_same_compressed_model(corpus, tmp_path):
    rows = read_manifest(corpus)
    cfg = tiny_recipe(
        quant_method="acos", quant_bits=4, quant_weight=10.0, quant_end=0.5, sparsity=0.5,
        sparsity_every=2,
    )  # fmt: skip
    train(cfg, rows, tmp_path / "a", progress=False)
    train(cfg, rows, tmp_path / "b", progress=False, stop_after=4)  # "killed" at step 4
    train(cfg, rows, tmp_path / "b", progress=False)
    for x, y in zip(_leaves(tmp_path / "a"), _leaves(tmp_path / "b"), strict=True):
        np.testing.assert_array_equal(x, y)
    m = _metrics(tmp_path / "a")
    # the schedules, logged per step: regularizer ramp and value, share near a level, zeros
    assert [r["quant_weight"] for r in m] == pytest.approx([2.5, 7.5, 10.0, 10.0])  # step 1, 3, ..
    assert all(0 <= r["quant_near"] <= 1 and r["quant_reg"] > 0 for r in m)
    assert m[-1]["zeros"] == pytest.approx(0.5, abs=1e-3) == m[-1]["sparsity_target"]
    assert any(k.startswith("zeros/encoder/layer_0/") for k in m[-1])
    np.testing.assert_allclose(
        [r["loss"] for r in m], [r["loss"] for r in _metrics(tmp_path / "b")], rtol=1e-6
    )
    # the model folder: weights on 4-bit levels, half of every kernel zero, and it runs as it
    # was trained (4-bit weights, 8-bit activations)
    loaded = load_model(tmp_path / "a" / "model")
    meta = json.loads((tmp_path / "a" / "model" / "config.json").read_text())["quant"]
    assert meta["bits"] == 4 and meta["method"] == "acos"
    assert meta["zero_fraction"] == pytest.approx(0.5, abs=1e-3)
    assert loaded.model.quant == QuantPolicy(4, 8)
    assert _on_levels(loaded.variables["params"], 4)
    assert zero_fraction(loaded.variables["params"]) == pytest.approx(0.5, abs=1e-3)


def test_nonuniform_levels_are_fitted_once_and_checkpointed(corpus, tmp_path):
    rows = read_manifest(corpus)
    cfg = tiny_recipe(quant_method="mr-acos", quant_bits=3, steps=4, ckpt_every=2)
    train(cfg, rows, tmp_path / "a", progress=False)
    train(cfg, rows, tmp_path / "b", progress=False, stop_after=2)
    train(cfg, rows, tmp_path / "b", progress=False)
    for x, y in zip(_leaves(tmp_path / "a"), _leaves(tmp_path / "b"), strict=True):
        np.testing.assert_array_equal(x, y)
    loaded = load_model(tmp_path / "a" / "model")
    assert loaded.model.quant == QuantPolicy(0, 8)  # levels in the weights, not the hook
    # each output channel holds at most 7 distinct values (3-bit levels) times its scale
    for path, w in jax.tree_util.tree_leaves_with_path(loaded.variables["params"]):
        if is_kernel(path) and w.ndim == 2:
            assert max(len(np.unique(w[:, j])) for j in range(w.shape[1])) <= 7


def test_straight_through_training_runs_the_model_fake_quantized(corpus, tmp_path):
    """STE-QAT at 4 bits with the small layers at 8 (one run covers both: the uniform policy is
    the mixed one's other layers)."""
    small_bits = 8
    rows = read_manifest(corpus)
    cfg = tiny_recipe(
        quant_method="ste",
        quant_bits=4,
        steps=4,
        sparsity=0.5,
        sparsity_method="hard",
        quant_small_bits=small_bits,
    )
    train(cfg, rows, tmp_path / "a", progress=False)
    loaded = load_model(tmp_path / "a" / "model")
    assert loaded.model.quant == QuantPolicy(4, 8, small_bits)
    params = loaded.variables["params"]
    assert _on_levels(params, 4, small_bits)
    # the small layers sit on 8-bit levels that 4 bits do not have
    meta = json.loads((tmp_path / "a" / "model" / "config.json").read_text())["quant"]
    assert meta["small_bits"] == 8 and meta["weight_bits"] == 4
    assert not _on_levels(params, 4)
    assert zero_fraction(loaded.variables["params"]) == pytest.approx(0.5, abs=1e-3)
    assert "quant_reg" not in _metrics(tmp_path / "a")[-1]


def test_plain_recipes_keep_their_optimizer_state_and_checkpoints(corpus, tmp_path):
    # no compression: the optimizer chain (and so every checkpoint's structure) is the one
    # recipes had before compression existed, and the train state has no extras
    plain = jax.eval_shape(make_optimizer(TrainConfig()).init, {"kernel": np.zeros((3, 2))})
    assert len(plain) == 2
    sparse = make_optimizer(TrainConfig(sparsity=0.5)).init({"kernel": np.zeros((3, 2))})
    assert len(sparse) == 3
    rows = read_manifest(corpus)
    train(tiny_recipe(steps=2, ckpt_every=2), rows, tmp_path / "a", progress=False)
    meta = json.loads((tmp_path / "a" / "model" / "config.json").read_text())
    assert "quant" not in meta
    assert load_model(tmp_path / "a" / "model").model.quant == QuantPolicy()


def test_post_training_quantization_of_a_loaded_model():
    loaded = load_model("default")
    q = quantized(loaded, QuantPolicy(4, 8))
    assert q.model.quant == QuantPolicy(4, 8)
    assert _on_levels(q.variables["params"], 4)
    # only kernels change; the float model is left as it was
    for path, w in jax.tree_util.tree_leaves_with_path(loaded.variables["params"]):
        if not is_kernel(path):
            v = q.variables["params"]
            for k in path:
                v = v[k.key]
            np.testing.assert_array_equal(w, v)


@pytest.mark.parametrize(
    "field,value",
    [
        ("quant_method", "int4"),
        ("sparsity_method", "soft"),
        ("sparsity_scope", "row"),
        ("sparsity_exclude", "conv_[0-"),
        ("sparsity", 1.0),
        ("quant_bits", 1),
        ("quant_small_bits", 1),
        ("quant_small_bits", 9),
    ],
)
def test_bad_compression_settings_are_refused_naming_the_field(field, value):
    with pytest.raises(ValueError, match=field):
        TrainConfig(**{field: value})


def test_small_bits_are_refused_with_nonuniform_levels():
    with pytest.raises(ValueError, match="quant_small_bits"):
        TrainConfig(quant_method="mr-acos", quant_small_bits=8)
    assert TrainConfig(quant_method="ste", quant_small_bits=8).quant_small_bits == 8


def test_asr_eval_runs_a_model_post_training_quantized(corpus, capsys):
    from asr.cli import main

    rows = [r for r in read_manifest(corpus)][:4]
    from asr.manifest import write_manifest

    m = write_manifest(rows, corpus.parent / "four.jsonl")
    assert main(["eval", "--model", "default", "--manifest", str(m), "--bits", "4", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["quant"] == "w4a8"
    args = ["eval", "--model", "default", "--manifest", str(m), "--bits", "4"]
    assert main([*args, "--small-bits", "8", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["quant"] == "w4s8a8"
    args = ["eval", "--model", "default", "--manifest", str(m), "--small-bits", "8"]
    assert main(args) == 2  # a usage error
    assert "--small-bits: goes with --bits" in capsys.readouterr().err
    assert main(["eval", "--model", "default", "--manifest", str(m), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["quant"] == "float"
    try:
        code = main(["eval", "--model", "default", "--manifest", str(m), "--bits", "1"])
    except SystemExit as e:
        code = e.code
    assert code == 2
    assert "--bits: invalid choice: 1" in capsys.readouterr().err
