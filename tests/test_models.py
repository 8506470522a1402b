"""Tests of asr/models: the chunk mask, streaming, the rotary embedding against a float64
reference, predictor steps, batching, sizes; and finding a model folder (asr/model_io.py).

References: Su et al. 2021, "RoFormer: Enhanced Transformer with Rotary Position Embedding".
"""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from asr.model_io import ModelLoadError, load_model
from asr.models import build_model, get_config
from asr.models.encoder import chunk_attention_mask, rotary
from asr.models.transducer import Transducer, count_params, init_variables


def _model(predictor="stateless", **kw):
    cfg = get_config("tiny").replace(predictor=predictor, vocab_size=16, **kw)
    m = build_model(cfg)
    return m, init_variables(m, jax.random.PRNGKey(0))


def test_chunk_mask_matches_brute_force():
    pads = np.zeros((1, 11), np.float32)
    pads[0, 9:] = 1.0
    for chunk, left in [(3, 0), (3, 1), (4, -1), (1, 2)]:
        got = np.asarray(chunk_attention_mask(jnp.asarray(pads), chunk, left))[0, 0]
        for i in range(11):
            for j in range(11):
                ci, cj = i // chunk, j // chunk
                want = cj <= ci and (left < 0 or cj >= ci - left) and j < 9
                assert got[i, j] == want, (chunk, left, i, j)


def np_rotary(x: np.ndarray, positions: np.ndarray) -> np.ndarray:
    """float64 reference (RoFormer, halves layout): pair (x[i], x[i + Dh/2]) is rotated by the
    angle position * 10000^(-i / (Dh/2)). x: [B, T, H, Dh], positions: [T]."""
    x = x.astype(np.float64)
    half = x.shape[-1] // 2
    out = np.empty_like(x)
    for t, p in enumerate(positions):
        for i in range(half):
            a = float(p) * 10000.0 ** (-i / half)
            c, s = np.cos(a), np.sin(a)
            x1, x2 = x[:, t, :, i], x[:, t, :, i + half]
            out[:, t, :, i] = c * x1 - s * x2
            out[:, t, :, i + half] = s * x1 + c * x2
    return out


def test_rotary_matches_float64_reference_and_preserves_norms():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 7, 3, 16)).astype(np.float32)
    positions = np.array([0, 1, 2, 5, 17, 63, 200])
    got = np.asarray(rotary(jnp.asarray(x), jnp.asarray(positions)))
    np.testing.assert_allclose(got, np_rotary(x, positions), rtol=1e-4, atol=1e-4)
    np.testing.assert_array_equal(got[:, 0], x[:, 0])  # position 0: identity
    np.testing.assert_allclose(
        np.linalg.norm(got, axis=-1), np.linalg.norm(x, axis=-1), rtol=1e-5
    )  # a rotation of each pair


def test_rotary_scores_depend_only_on_relative_position():
    """<rotary(q, m), rotary(k, n)> is a function of m - n: attention sees relative positions."""
    rng = np.random.default_rng(1)
    q, k = rng.standard_normal((2, 1, 1, 1, 32)).astype(np.float32)

    def score(m, n):
        qm = rotary(jnp.asarray(q), jnp.array([m]))
        kn = rotary(jnp.asarray(k), jnp.array([n]))
        return float(jnp.sum(qm * kn))

    for offset in (0, 1, 3, -4, 25):
        scores = [score(n + offset, n) for n in (0, 1, 7, 40, 100) if n + offset >= 0]
        np.testing.assert_allclose(scores, scores[0], rtol=1e-4, atol=1e-4)
    assert abs(score(3, 0) - score(0, 0)) > 1e-2  # and it does depend on the offset


def test_encoder_is_streaming_future_frames_do_not_matter():
    m, v = _model(chunk_size=4, left_chunks=-1)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((1, 64, 80)).astype(np.float32)
    pads = np.zeros((1, 64), np.float32)
    y = x.copy()
    y[:, 32:] = rng.standard_normal((1, 32, 80))  # change inputs from encoder frame 8 on
    e1, _ = m.apply(v, x, pads, method=Transducer.encode)
    e2, _ = m.apply(v, y, pads, method=Transducer.encode)
    # encoder frames 0..7 (chunks 0 and 1) read input frames <= 4 * 7 = 28 only
    np.testing.assert_allclose(e1[:, :8], e2[:, :8], atol=1e-5)
    assert np.abs(np.asarray(e1[:, 8:] - e2[:, 8:])).max() > 1e-3


@pytest.mark.parametrize("predictor", ["lstm", "stateless"])
def test_predictor_steps_equal_full_sequence(predictor):
    m, v = _model(predictor)
    labels = jnp.array([[0, 5, 7, 9, 3, 2], [0, 1, 1, 4, 15, 8]], jnp.int32)
    full = m.apply(v, labels, method=Transducer.predict)
    state = m.apply(v, 2, method=Transducer.predictor_init)
    steps = []
    for u in range(labels.shape[1]):
        state, out = m.apply(v, state, labels[:, u], method=Transducer.predict_step)
        steps.append(out)
    np.testing.assert_allclose(jnp.stack(steps, 1), full, atol=1e-5)


def test_batched_encoder_equals_one_by_one():
    m, v = _model()
    rng = np.random.default_rng(1)
    x = rng.standard_normal((3, 40, 80)).astype(np.float32)
    lengths = [40, 25, 9]
    pads = np.ones((3, 40), np.float32)
    for b, n in enumerate(lengths):
        pads[b, :n] = 0.0
    enc, enc_pads = m.apply(v, x, pads, method=Transducer.encode)
    for b, n in enumerate(lengths):
        one, one_pads = m.apply(v, x[b : b + 1, :n], pads[b : b + 1, :n], method=Transducer.encode)
        k = one.shape[1]
        assert float(jnp.sum(1 - enc_pads[b])) == k == -(-n // 4)
        np.testing.assert_allclose(enc[b, :k], one[0], atol=1e-5)
        assert float(jnp.abs(enc[b, k:]).max(initial=0.0)) == 0.0  # padded frames are zero


def test_sizes_and_shapes():
    sizes = {}
    for name in ("tiny", "small", "large"):
        cfg = get_config(name)
        m = build_model(cfg)
        v = jax.eval_shape(lambda m=m: init_variables(m, jax.random.PRNGKey(0)))
        sizes[name] = count_params(v["params"])
    assert sizes["tiny"] < sizes["small"] < sizes["large"]
    assert sizes["small"] * 4 <= 20e6, sizes  # the shipped default fits 20 MB even as float32
    m, v = _model()
    logits = m.apply(v, jnp.zeros((2, 20, 80)), jnp.zeros((2, 20)), jnp.zeros((2, 4), jnp.int32))
    assert logits.shape == (2, 5, 4, 16)


def test_bad_config_and_input():
    with pytest.raises(ValueError, match="predictor"):
        build_model(get_config("tiny").replace(predictor="gru"))
    with pytest.raises(ValueError, match="unknown model size"):
        get_config("huge")
    m, v = _model()
    with pytest.raises(ValueError, match="feats must be"):
        m.apply(v, jnp.zeros((1, 20, 40)), jnp.zeros((1, 20)), method=Transducer.encode)
    with pytest.raises(ValueError, match="feat_paddings must be"):
        m.apply(v, jnp.zeros((1, 20, 80)), jnp.zeros((1, 21)), method=Transducer.encode)


def test_load_model_on_a_folder_of_runs_names_them(tmp_path):
    """`asr eval --model runs/demo` where the model is in runs/demo/tiny: the error names the
    folders inside that hold a model (work folder and its model/), nearest first."""
    for sub in ("tiny", "tiny/model", "small/model"):
        (tmp_path / "runs" / sub).mkdir(parents=True)
        (tmp_path / "runs" / sub / "config.json").write_text(json.dumps({"model": {}}))
    (tmp_path / "runs" / "corpus").mkdir()  # a synthesized corpus' config.json: not a model
    (tmp_path / "runs" / "corpus" / "config.json").write_text(json.dumps({"seed": 0}))
    with pytest.raises(ModelLoadError) as e:
        load_model(tmp_path / "runs")
    msg = str(e.value)
    assert "no config.json" in msg and "did you mean" in msg, msg
    runs = tmp_path / "runs"
    assert f"{runs / 'tiny'}?" in msg.split("did you mean")[1], msg  # the nearest one
    assert str(runs / "small" / "model") in msg and str(runs / "tiny" / "model") in msg
    assert "corpus" not in msg
    (runs / "corpus" / "audio").mkdir()
    with pytest.raises(ModelLoadError, match="no config.json; not a model or training folder$"):
        load_model(runs / "corpus" / "audio")  # no model inside: the plain error
    with pytest.raises(ModelLoadError, match=r"did you mean .*small.model\?$"):
        load_model(runs / "small")  # a model folder two levels down is named too
