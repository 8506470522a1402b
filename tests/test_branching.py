"""The branching encoder (asr.models.branching): its expensive branch is the plain encoder, its
choices are causal and straight-through, its MAC counts agree with the products it traces, the
cheap branch's initialization is the truncated SVD / top units it claims, and the trainer's
budget term, temperature schedule and fine-tuning rules."""

from __future__ import annotations

import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import random_variables

from asr.models.branching import choose, init_cheap_branch
from asr.models.config import get_config
from asr.models.encoder import chunk_attention_mask
from asr.models.macs import count_macs, frame_macs
from asr.models.transducer import Transducer, build_model, init_variables
from train.configs import get_recipe
from train.trainer import branch_temperature, can_start_from, keep_layers, loss_fn, merge_params

TINY = get_config("tiny")
BRANCH = TINY.replace(encoder="branching", branch_rank=4, branch_ff=8, arbiter_dim=8)
ATTEND = BRANCH.replace(branch_attend=True)  # the cheap frames attend too


def _forced(params, expensive: bool | None):
    """`params` with the arbiter forced: all expensive (True), all cheap (False), or left."""
    if expensive is None:
        return params
    p = flax.core.unfreeze(jax.tree_util.tree_map(lambda x: x, params))
    out = p["encoder"]["arbiter"]["out"]
    out["kernel"] = jnp.zeros_like(out["kernel"])
    out["bias"] = jnp.full_like(out["bias"], 100.0 if expensive else -100.0)
    return p


def _branching(seed=3, cfg=BRANCH):
    plain = build_model(TINY)
    pv = random_variables(plain, seed=seed)
    model = build_model(cfg)
    bv = random_variables(model, seed=seed + 1)
    params = init_cheap_branch(merge_params(bv["params"], pv["params"]), cfg)
    return plain, pv, model, {"params": params, "norm": pv["norm"]}


def _inputs(b=2, t=96, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((b, t, TINY.n_mels)).astype(np.float32)
    pads = np.zeros((b, t), np.float32)
    pads[1, t - 30 :] = 1.0
    return jnp.asarray(x), jnp.asarray(pads)


@pytest.mark.parametrize("cfg", [BRANCH, ATTEND], ids=["branching", "attend"])
def test_all_expensive_is_the_plain_encoder_bit_for_bit(cfg):
    plain, pv, model, bv = _branching(cfg=cfg)
    x, pads = _inputs()
    e0, p0, a0 = plain.apply(pv, x, pads, method=Transducer.encode_aux)
    v = dict(bv, params=_forced(bv["params"], True))
    e1, p1, a1 = model.apply(v, x, pads, method=Transducer.encode_aux)
    np.testing.assert_array_equal(np.asarray(e0), np.asarray(e1))
    np.testing.assert_array_equal(np.asarray(p0), np.asarray(p1))
    valid = 1.0 - np.asarray(p1)
    np.testing.assert_array_equal(np.asarray(a1["expensive"]), valid)
    # the same MACs plus the arbiter's on every frame
    extra = frame_macs(cfg)["arbiter"] * valid
    np.testing.assert_allclose(np.asarray(a1["macs"]), np.asarray(a0["macs"]) + extra, rtol=1e-6)
    cheap = dict(bv, params=_forced(bv["params"], False))
    e2, _, a2 = model.apply(cheap, x, pads, method=Transducer.encode_aux)
    assert np.abs(np.asarray(e2 - e1)).max() > 1e-2  # the cheap branch is another network
    assert float(jnp.sum(a2["expensive"])) == 0.0
    m = frame_macs(cfg)
    want = (m["shared"] + m["arbiter"] + m["cheap"]) * valid
    if cfg.branch_attend:  # the expensive frames' attention over the keys, now the cheap ones'
        want = want + (np.asarray(a0["macs"]) - m["shared"] - m["expensive"]) * valid
    np.testing.assert_allclose(np.asarray(a2["macs"]), want, rtol=1e-6)


@pytest.mark.parametrize("base", [BRANCH, ATTEND], ids=["branching", "attend"])
def test_branching_encoder_is_streaming_with_mixed_choices(base):
    """Changing the audio from encoder frame 8 on changes neither the choices nor the outputs
    of frames 0..7 (two chunks of 4), whichever branches they took."""
    cfg = base.replace(chunk_size=4, left_chunks=-1)
    model = build_model(cfg)
    v = random_variables(model, seed=11)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((1, 64, cfg.n_mels)).astype(np.float32)
    y = x.copy()
    y[:, 29:] = rng.standard_normal((1, 35, cfg.n_mels))  # input frames 29+ feed frame 8 on
    pads = np.zeros((1, 64), np.float32)
    e1, _, a1 = model.apply(v, x, pads, method=Transducer.encode_aux)
    e2, _, a2 = model.apply(v, y, pads, method=Transducer.encode_aux)
    choices = np.asarray(a1["expensive"])[0]
    assert 0 < choices[:8].sum() < 8, choices  # a mix, so both branches are exercised
    np.testing.assert_array_equal(choices[:8], np.asarray(a2["expensive"])[0, :8])
    np.testing.assert_allclose(e1[:, :8], e2[:, :8], atol=1e-5)
    assert np.abs(np.asarray(e1[:, 8:] - e2[:, 8:])).max() > 1e-3


def test_choose_is_hard_straight_through_and_unbiased():
    logits = jnp.array([-2.0, -0.3, 0.0, 0.4, 3.0])
    hard, prob = choose(logits, False, 1.0, None)
    np.testing.assert_array_equal(np.asarray(hard), [0, 0, 0, 1, 1])
    np.testing.assert_allclose(np.asarray(prob), 1 / (1 + np.exp(-np.asarray(logits))), rtol=1e-6)
    key = jax.random.PRNGKey(0)
    sample, _ = choose(logits, True, 0.5, key)
    assert set(np.unique(np.asarray(sample))) <= {0.0, 1.0}

    def soft(lg):  # the relaxed sample with the same noise
        u = jax.random.uniform(key, lg.shape, minval=1e-6, maxval=1.0 - 1e-6)
        return jax.nn.sigmoid((lg + jnp.log(u) - jnp.log1p(-u)) / 0.5)

    w = jnp.arange(1.0, 6.0)
    g_st = jax.grad(lambda lg: jnp.sum(w * choose(lg, True, 0.5, key)[0]))(logits)
    g_soft = jax.grad(lambda lg: jnp.sum(w * soft(lg)))(logits)
    np.testing.assert_allclose(np.asarray(g_st), np.asarray(g_soft), rtol=1e-5)
    # P(sample = 1) = sigmoid(logit) at any temperature (logistic noise)
    many = jnp.full((20000,), 0.7)
    share = float(jnp.mean(choose(many, True, 0.3, jax.random.PRNGKey(5))[0]))
    assert abs(share - 1 / (1 + np.exp(-0.7))) < 0.015


def _traced_macs(fn, *args) -> int:
    """Multiply-accumulates of every dot_general and convolution in `fn`'s jaxpr (nested
    jaxprs entered): output elements x contraction size (x kernel window for convolutions)."""
    total = 0

    def visit(jaxpr):
        nonlocal total
        for eqn in jaxpr.eqns:
            for p in eqn.params.values():
                for sub in p if isinstance(p, (list, tuple)) else [p]:
                    inner = getattr(sub, "jaxpr", None)
                    if inner is not None:
                        visit(getattr(inner, "jaxpr", inner))
            if eqn.primitive.name == "dot_general":
                (lc, _), _ = eqn.params["dimension_numbers"]
                k = int(np.prod([eqn.invars[0].aval.shape[a] for a in lc]))
                total += int(np.prod(eqn.outvars[0].aval.shape)) * k
            elif eqn.primitive.name == "conv_general_dilated":
                rhs = eqn.invars[1].aval.shape
                dn = eqn.params["dimension_numbers"]
                out_feat = rhs[dn.rhs_spec[0]]
                per_out = int(np.prod(rhs)) // out_feat  # window x input features per group
                total += int(np.prod(eqn.outvars[0].aval.shape)) * per_out

    visit(jax.make_jaxpr(fn)(*args).jaxpr)
    return total


@pytest.mark.parametrize("cfg", [TINY, BRANCH, ATTEND], ids=["plain", "branching", "attend"])
def test_mac_counts_agree_with_the_traced_products(cfg):
    """Training-mode arithmetic computes every branch on every frame and full T' x T' attention
    scores; the analytic counts, summed the same way, must equal the jaxpr's products."""
    model = build_model(cfg)
    v = random_variables(model)
    t = 64  # divisible by 4: exactly 2 first-convolution rows per encoder frame
    x = jnp.zeros((1, t, cfg.n_mels))
    pads = jnp.zeros((1, t))

    def encode(x):
        return model.apply(v, x, pads, method=Transducer.encode_aux)[0]

    n = t // 4
    m = frame_macs(cfg)
    joint_proj = cfg.d_model * cfg.joint_dim  # encode_aux also projects to the joiner
    want = n * (m["shared"] + m["expensive"] + m["arbiter"] + joint_proj)
    if cfg.encoder == "branching":
        want += n * m["cheap"]
    want += m["attention_per_key"] * n * n  # every query against every key, masked after
    if cfg.branch_attend:  # the cheap queries too
        want += m["attention_per_key"] * n * n
    assert _traced_macs(encode, x) == want


@pytest.mark.parametrize("cfg", [BRANCH, ATTEND], ids=["branching", "attend"])
def test_count_macs_counts_visible_keys(cfg):
    pads = jnp.zeros((1, 20)).at[0, 17:].set(1.0)
    mask = chunk_attention_mask(pads, chunk_size=4, left_chunks=1)
    e = jnp.asarray([[1, 0] * 10], jnp.float32)
    got = np.asarray(count_macs(cfg, mask, pads, e))[0]
    m = frame_macs(cfg)
    d, r, layers = cfg.d_model, cfg.branch_rank, cfg.num_layers
    assert m["cheap"] - frame_macs(BRANCH)["cheap"] == (4 * d * r * layers if cfg is ATTEND else 0)
    for t in range(20):
        if t >= 17:
            assert got[t] == 0
            continue
        keys = sum(1 for j in range(17) if t // 4 - 1 <= j // 4 <= t // 4)  # brute force
        exp = m["shared"] + m["arbiter"]
        if t % 2 == 0:
            exp += m["expensive"] + m["attention_per_key"] * keys
        else:
            exp += m["cheap"] + (m["attention_per_key"] * keys if cfg.branch_attend else 0)
        assert got[t] == pytest.approx(exp, rel=1e-6), t


def test_cheap_branch_starts_from_the_truncated_svd_and_top_units():
    plain = build_model(TINY)
    pv = random_variables(plain, seed=2)
    model = build_model(ATTEND)
    fresh = random_variables(model, seed=9)["params"]
    p = init_cheap_branch(merge_params(fresh, pv["params"]), ATTEND)
    r, w = ATTEND.branch_rank, ATTEND.branch_ff
    lay, src = p["encoder"]["layer_0"], pv["params"]["encoder"]["layer_0"]
    att = src["SelfAttention_0"]
    for name, kernel in (
        ("cheap_kv", np.asarray(att["qkv"]["kernel"])[:, 1:]),
        ("cheap_q", np.asarray(att["qkv"]["kernel"])[:, 0]),
        ("cheap_out", np.asarray(att["out"]["kernel"]).reshape(TINY.d_model, -1)),
    ):
        kernel = kernel.reshape(TINY.d_model, -1)
        u, s, vt = np.linalg.svd(kernel.astype(np.float64))
        best = (u[:, :r] * s[:r]) @ vt[:r]
        approx = np.asarray(lay[f"{name}_down"]["kernel"]) @ np.asarray(
            lay[f"{name}_up"]["kernel"]
        ).reshape(r, -1)
        np.testing.assert_allclose(approx, best, atol=1e-5, err_msg=name)
    np.testing.assert_array_equal(lay["cheap_q_up"]["bias"], att["qkv"]["bias"][0])
    np.testing.assert_array_equal(lay["cheap_out_up"]["bias"], att["out"]["bias"])
    w1, w2 = np.asarray(src["Dense_0"]["kernel"]), np.asarray(src["Dense_1"]["kernel"])
    score = np.linalg.norm(w1, axis=0) * np.linalg.norm(w2, axis=1)
    top = set(np.argsort(-score)[:w].tolist())
    kept = [j for j in range(w1.shape[1]) if any(
        np.array_equal(w1[:, j], c) for c in np.asarray(lay["cheap_ff_in"]["kernel"]).T
    )]  # fmt: skip
    assert set(kept) == top
    # everything the plain model has is unchanged
    flat = flax.traverse_util.flatten_dict(flax.core.unfreeze(pv["params"]))
    got = flax.traverse_util.flatten_dict(flax.core.unfreeze(p))
    for k, val in flat.items():
        np.testing.assert_array_equal(np.asarray(got[k]), np.asarray(val))


def test_fine_tuning_rules_and_kept_layers():
    assert can_start_from(TINY, BRANCH)
    assert not can_start_from(BRANCH, TINY)
    assert can_start_from(BRANCH, BRANCH)
    assert not can_start_from(BRANCH, BRANCH.replace(branch_rank=5))
    assert can_start_from(TINY, TINY.replace(num_layers=1))
    assert not can_start_from(TINY.replace(num_layers=1), TINY)
    assert can_start_from(TINY, BRANCH.replace(bias_dim=16))
    assert not can_start_from(TINY, TINY.replace(d_model=64))
    params = init_variables(build_model(TINY), jax.random.PRNGKey(0))["params"]
    kept = keep_layers(flax.core.unfreeze(params), 1)
    assert sorted(k for k in kept["encoder"] if k.startswith("layer_")) == ["layer_0"]
    shallow = init_variables(build_model(TINY.replace(num_layers=1)), jax.random.PRNGKey(1))
    merged = merge_params(shallow["params"], kept)  # fits the shallower model exactly
    np.testing.assert_array_equal(
        np.asarray(merged["encoder"]["layer_0"]["Dense_0"]["kernel"]),
        np.asarray(params["encoder"]["layer_0"]["Dense_0"]["kernel"]),
    )


def test_recipe_builds_the_branching_model_and_anneals():
    cfg = get_recipe("tiny").replace(
        encoder="branching", branch_budget=0.3, branch_rank=4, encoder_layers=1, steps=101
    )
    m = cfg.model_config(64)
    assert m.encoder == "branching" and m.branch_rank == 4 and m.num_layers == 1
    assert m.branch_budget_init == 0.3
    assert get_recipe("tiny").model_config(64).encoder == "transformer"
    with pytest.raises(ValueError, match="encoder"):
        get_recipe("tiny").replace(encoder="forked")
    assert float(branch_temperature(cfg, 0)) == pytest.approx(cfg.branch_tau)
    assert float(branch_temperature(cfg, 100)) == pytest.approx(cfg.branch_tau_end, rel=1e-5)
    mid = float(branch_temperature(cfg, 50))
    assert mid == pytest.approx(np.sqrt(cfg.branch_tau * cfg.branch_tau_end), rel=1e-4)


def test_loss_adds_the_budget_term_and_trains_the_arbiter():
    _, _, model, v = _branching()
    x, pads = _inputs()
    batch = {
        "feats": x,
        "feat_paddings": pads,
        "labels": jnp.array([[3, 4, 5], [6, 7, 0]], jnp.int32),
        "label_paddings": jnp.array([[0, 0, 0], [0, 0, 1]], jnp.float32),
    }
    key = jax.random.PRNGKey(0)

    def run(params, weight, budget=0.2):
        return loss_fn(
            params, v["norm"], model, batch, key, True, branch_temperature=1.0,
            branch_budget=budget, branch_weight=weight,
        )  # fmt: skip

    l0, m0 = run(v["params"], 0.0)
    l1, m1 = run(v["params"], 10.0)
    share = float(m1["expensive_share"])
    assert float(l1 - l0) == pytest.approx(10.0 * (share - 0.2) ** 2, rel=1e-4)
    assert 0.0 <= float(m1["expensive_share"]) <= 1.0
    assert float(m1["encoder_macs_per_frame"]) > 0
    g = jax.grad(lambda p: run(p, 10.0, budget=0.0)[0])(v["params"])
    assert float(jnp.abs(g["encoder"]["arbiter"]["out"]["bias"]).sum()) > 0
    # the penalty alone pushes the arbiter's logits down when the budget is below the share
    gp = jax.grad(lambda p: run(p, 10.0, 0.0)[0] - run(p, 0.0, 0.0)[0])(v["params"])
    assert float(gp["encoder"]["arbiter"]["out"]["bias"][0]) > 0


def test_imitation_error_is_zero_for_a_perfect_cheap_branch_and_trains_it():
    _, _, model, v = _branching()
    x, pads = _inputs()
    key = {"dropout": jax.random.PRNGKey(0)}

    def imitation(params):
        out = model.apply(
            {"params": params, "norm": v["norm"]}, x, pads, True, None, 1.0, True,
            method=Transducer.encode_aux, rngs=key,
        )  # fmt: skip
        return out[2]["imitation"]

    err = float(imitation(v["params"]))
    assert 0.0 < err < 2.0 * (BRANCH.num_layers + 1)  # relative errors, one per stage
    g = jax.grad(imitation)(v["params"])
    enc = g["encoder"]
    assert float(jnp.abs(enc["layer_0"]["cheap_ff_in"]["kernel"]).sum()) > 0
    assert float(jnp.abs(enc["ConvSubsampling_0"]["cheap_down"]["kernel"]).sum()) > 0
    # the targets are stopped: no gradient reaches the expensive branch's own products
    assert float(jnp.abs(enc["layer_0"]["Dense_1"]["kernel"]).sum()) == 0.0
    # the relative error itself, against NumPy
    from asr.models.branching import relative_error

    rng = np.random.default_rng(0)
    a, t = rng.standard_normal((2, 5, 3)), rng.standard_normal((2, 5, 3))
    valid = np.ones((2, 5))
    valid[1, 3:] = 0
    m = valid[..., None]
    want = np.sum(((a - t) * m) ** 2) / np.sum((t * m) ** 2)
    got = float(relative_error(jnp.asarray(a), jnp.asarray(t), jnp.asarray(valid)))
    assert got == pytest.approx(want, rel=1e-5)


@pytest.mark.parametrize("weight_decay", [0.0, 0.1])
def test_freeze_expensive_trains_only_the_cheap_branch_and_arbiter(weight_decay):
    """`freeze='expensive'`: optimizer steps leave every other parameter bit for bit (weight
    decay included) and move the cheap branch's and the arbiter's; a regex freezes what it
    matches."""
    import re

    from train.regularizers import FROZEN_EXPENSIVE, freeze_mask
    from train.trainer import make_optimizer

    _, _, _, v = _branching(cfg=ATTEND)
    params = v["params"]
    flat = flax.traverse_util.flatten_dict(flax.core.unfreeze(params), sep="/")
    trainable = {k for k in flat if "/cheap_" in k or k.startswith("encoder/arbiter/")}
    assert {k.split("/")[1] for k in trainable} >= {"arbiter", "layer_0"}
    assert len(trainable) < len(flat) / 2
    assert not any(re.search(FROZEN_EXPENSIVE, k) for k in trainable)
    cfg = get_recipe("tiny").replace(
        freeze="expensive", weight_decay=weight_decay, peak_lr=1e-2, warmup_steps=1
    )
    tx = make_optimizer(cfg)
    state = tx.init(params)
    grads = jax.tree_util.tree_map(jnp.ones_like, params)
    p = params
    for _ in range(3):
        updates, state = tx.update(grads, state, p)
        p = jax.tree_util.tree_map(lambda a, u: a + u, p, updates)
    after = flax.traverse_util.flatten_dict(flax.core.unfreeze(p), sep="/")
    for k, x in flat.items():
        same = np.array_equal(np.asarray(after[k]), np.asarray(x))
        assert same == (k not in trainable), k
    mask = flax.traverse_util.flatten_dict(
        flax.core.unfreeze(freeze_mask(params, "joiner/|predictor/")), sep="/"
    )
    assert {k for k, m in mask.items() if m} == {
        k for k in flat if k.startswith(("joiner/", "predictor/"))
    }
    with pytest.raises(ValueError, match="freeze: not a regular expression"):
        get_recipe("tiny").replace(freeze="(")
