"""Learned attention biasing (asr/models/biasing.py) and its training (train/data.py's
ContextSampler, train/trainer.py): the network against float64 NumPy references (BLSTM and
transformer phrase encoders, masked multi-head attention, combiner), masking and bucketing,
identity at initialization, no retrace for new lists, the training lists' statistics, a short
training run that adds biasing to a model without it, and the attention plot.

References: Chang et al. 2021, "Context-Aware Transformer Transducer for Speech Recognition".
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import PHRASES, tiny_recipe
from test_models import np_rotary

from asr.models import build_model, context_arrays, get_config
from asr.models.biasing import ContextBiasing
from asr.models.transducer import Transducer, init_variables

V = 33  # vocabulary of the test models: that of `_tokenizer()`, so models can be shared


@functools.cache
def _tokenizer():
    from asr.tokenizer import Tokenizer

    tok = Tokenizer.train(PHRASES * 2, vocab_size=40)  # the corpus fixture's transcripts
    assert tok.vocab_size == V, tok.vocab_size
    return tok


def _cfg(**kw):
    base = dict(vocab_size=V, bias_dim=16, bias_heads=2)
    base.update(kw)
    return get_config("tiny").replace(**base)


@functools.cache
def _built(encoder: str | None = "lstm"):
    """(model, variables at key 0) of the tiny test model, with a biasing network of that
    phrase encoder or none; built once per module (initialization compiles for seconds)."""
    cfg = (
        get_config("tiny").replace(vocab_size=V) if encoder is None else _cfg(bias_encoder=encoder)
    )
    m = build_model(cfg)
    return m, jax.device_get(jax.jit(lambda k: init_variables(m, k))(jax.random.PRNGKey(0)))


@functools.cache
def _jitted(m, method: str):
    """m.apply(variables, feats, feat_paddings, context) of `encode` or `bias_attention`, jitted
    once per model."""
    if method == "encode":
        return jax.jit(lambda v, x, p, c: m.apply(v, x, p, False, c, method=Transducer.encode))
    return jax.jit(lambda v, x, p, c: m.apply(v, x, p, c, method=Transducer.bias_attention))


def _feats(b=2, t=48, seed=0):
    x = jnp.asarray(np.random.default_rng(seed).standard_normal((b, t, 80)), jnp.float32)
    p = jnp.zeros((b, t)).at[1, 30:].set(1.0)
    return x, p


def _nonzero_combiner(variables, seed=1, scale=0.3):
    """The variables with a random (non-identity) combiner, as after some training."""
    rng = np.random.default_rng(seed)
    v = jax.tree_util.tree_map(lambda x: x, variables)
    comb = v["params"]["biasing"]["combine"] if "biasing" in v["params"] else v["params"]["combine"]
    comb["kernel"] = jnp.asarray(scale * rng.standard_normal(comb["kernel"].shape), jnp.float32)
    comb["bias"] = jnp.asarray(scale * rng.standard_normal(comb["bias"].shape), jnp.float32)
    return v


# ---------------------------------------------------------------- float64 NumPy references


def _sig(x):
    return 1.0 / (1.0 + np.exp(-x))


def np_layer_norm(x, p, eps=1e-6):
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)
    return (x - mu) / np.sqrt(var + eps) * p["scale"] + p["bias"]


def np_lstm_final(xs, p):
    """Final hidden state of an LSTM (i, f, g, o gates; input kernels without bias, recurrent
    kernels with) over the rows of xs [L, E], from zero state."""
    n = p["hi"]["kernel"].shape[0]
    h, c = np.zeros(n), np.zeros(n)
    for x in xs:
        g = {k: x @ p[f"i{k}"]["kernel"] + h @ p[f"h{k}"]["kernel"] + p[f"h{k}"]["bias"]
             for k in "ifgo"}  # fmt: skip
        c = _sig(g["f"]) * c + _sig(g["i"]) * np.tanh(g["g"])
        h = _sig(g["o"]) * np.tanh(c)
    return h


def np_transformer_phrase(xs, p, heads):
    """One pre-norm rotary self-attention layer and feed-forward over xs [L, E], mean-pooled."""
    n, e = xs.shape
    dh = e // heads
    a = p["SelfAttention_0"]
    h = np_layer_norm(xs, p["LayerNorm_0"])
    qkv = np.einsum("le,ecnd->lcnd", h, a["qkv"]["kernel"]) + a["qkv"]["bias"]
    q = np_rotary(qkv[None, :, 0], np.arange(n))[0]  # -> [L, H, Dh]
    k = np_rotary(qkv[None, :, 1], np.arange(n))[0]
    logits = np.einsum("qhd,khd->hqk", q, k) / np.sqrt(dh)
    w = np.exp(logits - logits.max(-1, keepdims=True))
    w /= w.sum(-1, keepdims=True)
    att = np.einsum("hqk,khd->qhd", w, qkv[:, 2])
    x = xs + np.einsum("qhd,hde->qe", att, a["out"]["kernel"]) + a["out"]["bias"]
    f = np_layer_norm(x, p["LayerNorm_1"]) @ p["Dense_0"]["kernel"] + p["Dense_0"]["bias"]
    f = f * _sig(f)  # swish
    x = x + f @ p["Dense_1"]["kernel"] + p["Dense_1"]["bias"]
    return x.mean(0)


def np_biasing(p, enc, enc_pad, phrases, encoder="lstm", heads=2):
    """The biasing network in float64 from its parameters `p`, on unpadded phrase lists.

    enc [B, T, D], enc_pad [B, T], phrases: per utterance a list of token-id lists. Returns
    (biased [B, T, D], per utterance the weights [H, T, 1 + len(list)])."""
    p = jax.tree_util.tree_map(lambda x: np.asarray(x, np.float64), p)
    enc = np.asarray(enc, np.float64)
    out, weights = [], []
    for b, utt in enumerate(phrases):
        vecs = [p["no_bias"]]
        for toks in utt:
            xs = p["embed"]["embedding"][toks]
            pe = p["phrase_encoder"]
            if encoder == "lstm":
                v = np.concatenate(
                    [np_lstm_final(xs, pe["fwd_cell"]), np_lstm_final(xs[::-1], pe["bwd_cell"])]
                )
            else:
                v = np_transformer_phrase(xs, pe, heads)
            vecs.append(np_layer_norm(v, p["phrase_norm"]))
        ents = np.stack(vecs)  # -> [1 + P, E]
        q = np.einsum("td,dhk->thk", enc[b], p["query"]["kernel"]) + p["query"]["bias"]
        k = np.einsum("pe,ehk->phk", ents, p["key"]["kernel"]) + p["key"]["bias"]
        v = np.einsum("pe,ehk->phk", ents, p["value"]["kernel"]) + p["value"]["bias"]
        logits = np.einsum("thk,phk->htp", q, k) / np.sqrt(q.shape[-1])
        w = np.exp(logits - logits.max(-1, keepdims=True))
        w /= w.sum(-1, keepdims=True)
        att = np.einsum("htp,phk->thk", w, v)
        att = np.einsum("thk,hke->te", att, p["out"]["kernel"]) + p["out"]["bias"]
        mixed = np_layer_norm(np.concatenate([enc[b], att], -1), p["combine_norm"])
        y = enc[b] + mixed @ p["combine"]["kernel"] + p["combine"]["bias"]
        out.append(y * (1.0 - np.asarray(enc_pad[b]))[:, None])
        weights.append(w)
    return np.stack(out), weights


@pytest.mark.parametrize("encoder", ["lstm", "transformer"])
def test_biasing_network_matches_float64_reference(encoder):
    cfg = _cfg(bias_encoder=encoder)
    rng = np.random.default_rng(0)
    enc = jnp.asarray(rng.standard_normal((3, 6, cfg.d_model)), jnp.float32)
    enc_pad = jnp.zeros((3, 6)).at[2, 4:].set(1.0)
    phrases = [[[3, 4, 5], [7], [2, 9, 9, 11, 12]], [], [[6, 6]]]
    ctx = context_arrays(phrases, num_phrases=8, max_tokens=8)  # padding in both axes
    net = ContextBiasing(cfg)
    params = net.init(jax.random.PRNGKey(0), enc, enc_pad, ctx)["params"]
    params = _nonzero_combiner({"params": params})["params"]
    got, w = net.apply({"params": params}, enc, enc_pad, ctx)
    want, want_w = np_biasing(params, enc, enc_pad, phrases, encoder, cfg.bias_heads)
    err = np.abs(np.asarray(got) - want).max()
    assert err < 2e-4, f"max difference {err}"
    assert w.shape == (3, cfg.bias_heads, 6, 9)
    for b, utt in enumerate(phrases):
        n = 1 + len(utt)
        np.testing.assert_allclose(np.asarray(w[b, :, :, :n]), want_w[b], atol=2e-5)
        assert np.all(np.asarray(w[b, :, :, n:]) == 0.0)  # padding slots: exactly zero


def test_context_arrays_pad_to_buckets_and_truncate():
    toks, pads = context_arrays([[[5, 6], [7, 8, 9]], [[3]]])
    assert toks.shape == pads.shape == (2, 8, 4) and toks.dtype == np.int32
    assert pads.dtype == np.float32
    np.testing.assert_array_equal(toks[0, 1], [7, 8, 9, 0])
    np.testing.assert_array_equal(pads[0, 1], [0, 0, 0, 1])
    assert pads[0, 2:].min() == 1.0 and pads[1, 1:].min() == 1.0  # absent slots
    # buckets: 9 phrases -> 32 slots; 5 tokens -> 8; 17 tokens -> truncated to 16
    toks, pads = context_arrays([[[1]] * 9, [list(range(2, 7))]])
    assert toks.shape == (2, 32, 8)
    toks, pads = context_arrays([[list(range(1, 18))]])
    assert toks.shape == (1, 8, 16)
    np.testing.assert_array_equal(toks[0, 0], np.arange(1, 17))  # the first 16 tokens
    assert context_arrays([[]] * 3)[0].shape == (3, 8, 4)  # no phrases at all
    assert context_arrays([[[1]] * 2049])[0].shape == (1, 4096, 4)  # past the largest bucket
    # fixed sizes, as a training recipe gives them
    toks, pads = context_arrays([[[1, 2, 3]]], num_phrases=3, max_tokens=2)
    assert toks.shape == (1, 3, 2) and list(toks[0, 0]) == [1, 2]
    with pytest.raises(ValueError, match="longest list"):
        context_arrays([[[1], [2], [3]]], num_phrases=2)
    with pytest.raises(ValueError, match="utterance 0, phrase 1: expected token ids"):
        context_arrays([[[1], []]])
    with pytest.raises(ValueError, match="expected a list"):
        context_arrays("alice")


def test_no_bias_entry_is_always_there_and_padding_slots_get_nothing():
    m, v = _built()
    attention, encode = _jitted(m, "bias_attention"), _jitted(m, "encode")
    x, p = _feats()
    ctx = context_arrays([[[3, 4], [5]], []])
    w = np.asarray(attention(v, x, p, ctx))
    assert w.shape == (2, 2, 12, 9)  # [B, H, T', 1 + 8 slots]
    np.testing.assert_allclose(w.sum(-1), 1.0, rtol=1e-5)
    assert np.all(w[0, :, :, 3:] == 0.0) and np.all(w[0, :, :, :3] > 0.0)
    np.testing.assert_array_equal(w[1, :, :, 0], 1.0)  # an empty list: all on <no-bias>
    w_none = np.asarray(attention(v, x, p, None))
    assert w_none.shape == (2, 2, 12, 1) and np.all(w_none == 1.0)  # no list at all
    # an empty list is no list: same biased frames
    v = _nonzero_combiner(v)
    empty = context_arrays([[], []])
    a, _ = encode(v, x, p, None)
    b, _ = encode(v, x, p, empty)
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-6)


def test_encode_is_unchanged_without_biasing_and_at_initialization():
    plain, v0 = _built(None)
    x, p = _feats()
    ctx = context_arrays([[[3, 4], [5]], [[6]]])
    e0, p0 = _jitted(plain, "encode")(v0, x, p, None)
    e0c, _ = _jitted(plain, "encode")(v0, x, p, ctx)  # ignored
    np.testing.assert_array_equal(np.asarray(e0), np.asarray(e0c))
    with pytest.raises(ValueError, match="no biasing network"):
        plain.apply(v0, x, p, ctx, method=Transducer.bias_attention)
    for encoder in ("lstm", "transformer"):
        m, v = _built(encoder)
        encode = _jitted(m, "encode")
        # the other parameters are those of the model without biasing (same key)
        rest = {k: x for k, x in v["params"].items() if k != "biasing"}
        for a, b in zip(*map(jax.tree_util.tree_leaves, (rest, v0["params"])), strict=True):
            np.testing.assert_array_equal(a, b)
        # zero-initialized combiner: any list, or none, changes nothing, bit for bit
        for c in (None, ctx):
            e, pads = encode(v, x, p, c)
            np.testing.assert_array_equal(np.asarray(e), np.asarray(e0))
            np.testing.assert_array_equal(np.asarray(pads), np.asarray(p0))
        # ... and once the combiner has learned something, the list matters
        vt = _nonzero_combiner(v)
        e1, _ = encode(vt, x, p, ctx)
        e2, _ = encode(vt, x, p, context_arrays([[[9]], [[6]]]))
        assert np.abs(np.asarray(e1 - e2)[0]).max() > 1e-3
        np.testing.assert_allclose(np.asarray(e1 - e2)[1], 0.0, atol=1e-6)  # same list


@pytest.mark.parametrize("encoder", ["lstm", "transformer"])
def test_lists_are_order_and_padding_free_and_the_encoder_stays_streaming(encoder):
    m, v = _built(encoder)
    v = _nonzero_combiner(v)
    x, p = _feats()

    def enc(ctx, feats=x):
        return np.asarray(_jitted(m, "encode")(v, feats, p, ctx)[0])

    lists = [[[3, 4], [5], [7, 8, 9]], [[6], [2, 2]]]
    ref = enc(context_arrays(lists))
    # other slot order, bigger buckets, junk token ids under the padding: the same frames
    moved = enc(context_arrays([u[::-1] for u in lists]))
    bigger = enc(context_arrays(lists, num_phrases=32, max_tokens=8))
    toks, pads = context_arrays(lists)
    junk = enc((np.where(pads > 0.5, 13, toks), pads))
    for other in (moved, bigger, junk):
        np.testing.assert_allclose(other, ref, atol=2e-5)
    # streaming: frames of the first two chunks (8 encoder frames, 32 feature frames) do not
    # depend on later audio
    later = x.at[:, 40:].set(5.0)
    np.testing.assert_allclose(enc(context_arrays(lists), later)[:, :8], ref[:, :8], atol=1e-5)


def test_a_new_list_of_the_same_bucket_compiles_nothing():
    m, v = _built()
    x, p = _feats()
    encode = jax.jit(lambda v, x, p, c: m.apply(v, x, p, False, c, method=Transducer.encode))
    encode(v, x, p, context_arrays([[[3, 4], [5]], []]))
    encode(v, x, p, context_arrays([[[7]] * 8, [[1, 2, 3, 4], [9]]]))  # (8, 4) again
    assert encode._cache_size() == 1
    encode(v, x, p, context_arrays([[[7]] * 9, []]))  # 32 slots: a new shape
    assert encode._cache_size() == 2


@pytest.mark.parametrize("encoder", ["lstm", "transformer"])
def test_precomputed_entries_bias_as_the_tokens_do(encoder):
    """A list's `ContextEntries` (phrases encoded once) give the frames and attention that its
    token arrays give, also for no list; the recognizer hands them to the decoder, and the
    stream's steps too."""
    from asr.models.biasing import ContextEntries

    m, v = _built(encoder)
    v = _nonzero_combiner(v)
    x, p = _feats()
    entries = jax.jit(lambda v, c: m.apply(v, c, 2, method="context_entries"))
    for ctx in (context_arrays([[[3, 4], [5], [7, 8, 9]], [[6], [2, 2]]]), None):
        e = entries(v, ctx)
        assert isinstance(e, ContextEntries) and e.keys.shape[:2] == e.paddings.shape
        for method in ("encode", "bias_attention"):
            want = np.asarray(_jitted(m, method)(v, x, p, ctx)[0])
            got = np.asarray(_jitted(m, method)(v, x, p, e)[0])
            np.testing.assert_allclose(got, want, atol=1e-5)
    with pytest.raises(ValueError, match=r"context entries must be \[B=2, P\+1, H, Dh\]"):
        m.apply(v, x, p, False, ContextEntries(e.keys[:1], e.values[:1], e.paddings[:1]),
                method=Transducer.encode)  # fmt: skip
    m0, v0 = _built(None)
    with pytest.raises(ValueError, match="no biasing network"):
        m0.apply(v0, ctx, 2, method="context_entries")


def test_bad_biasing_configs_and_contexts_are_refused():
    with pytest.raises(ValueError, match="multiple of bias_heads"):
        build_model(_cfg(bias_dim=10, bias_heads=4))
    with pytest.raises(ValueError, match="bias_encoder must be one of"):
        build_model(_cfg(bias_encoder="gru"))
    m, v = _built()
    x, p = _feats()
    toks, pads = context_arrays([[[3]], [[4]]])
    with pytest.raises(ValueError, match=r"context tokens must be \[B=2, P, Lp\]"):
        m.apply(v, x, p, False, (toks[:1], pads[:1]), method=Transducer.encode)
    with pytest.raises(ValueError, match="context paddings must be"):
        m.apply(v, x, p, False, (toks, pads[:, :, :2]), method=Transducer.encode)
    # the recipe fields, as `asr train --set` gives them
    from train.configs import get_recipe

    with pytest.raises(ValueError, match="bias_encoder: expected one of"):
        get_recipe("tiny").override(["bias_dim=32", "bias_encoder=gru"])
    with pytest.raises(ValueError, match="bias_dim: expected a multiple of bias_heads"):
        get_recipe("tiny").override(["bias_dim=30"])


# ------------------------------------------------------------------------- training lists

NAMES = [f"{a}{b}" for a in ("al", "bo", "ca", "de", "el", "fa") for b in ("ice", "ris", "mon")]


def _sampler_rows():
    rng = np.random.default_rng(0)
    rows = []
    for i in range(30):
        spoken = NAMES[i % len(NAMES)]
        others = [n for n in rng.choice(NAMES, 3, replace=False) if n != spoken]
        text = f"call {spoken} now" if i % 3 else f"message {spoken} and anna maria"
        ctx = [spoken, *others] + (["anna maria"] if i % 3 == 0 else [])
        rows.append({"text": text, "context": ctx, "voice": {"name": "x"}})
    rows.append({"text": "call alice"})  # real speech: no context, but a pool name spoken
    rows.append({"text": "turn on the lights"})
    return rows


def test_training_lists_include_spoken_names_at_the_set_rate():
    from asr.tokenizer import Tokenizer
    from train.data import ContextSampler

    rows = _sampler_rows()
    tok = Tokenizer.train([r["text"] for r in rows] + NAMES, vocab_size=40)
    cfg = tiny_recipe(bias_dim=16, bias_heads=2, context_phrases=8, context_spoken_prob=0.7)
    s = ContextSampler(rows, tok, cfg)
    assert "anna maria" in s.pool and len(s.pool) == len(NAMES) + 1
    assert [s.pool[j] for j in s.spoken(0)] == [NAMES[0], "anna maria"]
    assert s.spoken(30) == [] and s.names_in("call alice") == {s.index["alice"]}
    hits = total = 0
    sizes = []
    for step in range(600):
        for i in (1, 2, 30, 31):
            got = s.draw(i, np.random.default_rng((0, step, i)))
            assert len(got) == len(set(got)) <= 8
            spoken = set(s.spoken(i))
            # distractors are never names the utterance speaks
            assert not (set(got) - spoken) & s.names_in(rows[i]["text"])
            if spoken:
                hits += len(spoken & set(got))
                total += len(spoken)
            else:
                sizes.append(len(got))
    assert abs(hits / total - 0.7) < 0.04, hits / total
    assert min(sizes) == 0 and max(sizes) == 8 and abs(np.mean(sizes) - 4.0) < 0.3
    # the batches: fixed shape [B, P, Lp], a share context_none_prob with no list at all,
    # and each a function of (seed, step)
    a = [s.batch([1, 2, 30, 31], step) for step in range(300)]
    lp = s.max_tokens
    assert all(b["context_tokens"].shape == (4, 8, lp) for b in a)
    empty = np.mean([b["context_paddings"].min() == 1.0 for b in a])
    assert abs(empty - 0.1) < 0.05, empty
    again = s.batch([1, 2, 30, 31], 17)
    np.testing.assert_array_equal(again["context_tokens"], a[17]["context_tokens"])
    other = ContextSampler(rows, tok, cfg.replace(seed=1)).batch([1, 2, 30, 31], 17)
    assert not np.array_equal(other["context_tokens"], a[17]["context_tokens"])


def test_training_batches_carry_lists_only_with_biasing(corpus):
    from asr.manifest import read_manifest
    from asr.tokenizer import Tokenizer
    from train.data import training_dataset

    rows = [dict(r, context=["mom", "jazz", "bob"]) for r in read_manifest(corpus)]
    rows = [r for r in rows if r["split"] == "train"]
    tok = Tokenizer.train([r["text"] for r in rows], vocab_size=40)
    cfg = tiny_recipe(steps=2, augment_prob=0.0)
    plain, info = training_dataset(rows, tok, cfg, noise_bank=None)
    assert info["context_shape"] is None and "context_tokens" not in next(iter(plain))
    cfg = cfg.replace(bias_dim=16, bias_heads=2, context_phrases=4, context_none_prob=0.0)
    biased, info = training_dataset(rows, tok, cfg, noise_bank=None)
    a, b = next(iter(plain)), next(iter(biased))
    assert info["context_pool"] == 3
    assert b["context_tokens"].shape == (len(b["feats"]), 4, info["context_shape"][1])
    # the same audio and labels as without biasing: the lists have their own random streams
    for k in a:
        np.testing.assert_array_equal(a[k], b[k])


def test_loss_sees_the_lists_and_a_teacher_without_biasing_ignores_them():
    from train.trainer import loss_fn, teacher_collapsed

    m, v = _built()
    v = _nonzero_combiner(v)
    x, p = _feats()
    toks, pads = context_arrays([[[3, 4], [5]], [[6]]])
    batch = {
        "feats": x,
        "feat_paddings": p,
        "labels": jnp.asarray([[3, 4, 5, 0], [6, 7, 0, 0]], jnp.int32),
        "label_paddings": jnp.asarray([[0, 0, 0, 1], [0, 0, 1, 1]], jnp.float32),
    }
    with_ctx = dict(batch, context_tokens=toks, context_paddings=pads)
    loss = jax.jit(lambda q, b: loss_fn(q, v["norm"], m, b, jax.random.PRNGKey(1), False)[0])
    assert np.isfinite(float(loss(v["params"], with_ctx)))
    assert abs(float(loss(v["params"], with_ctx)) - float(loss(v["params"], batch))) > 1e-4
    grads = jax.jit(jax.grad(loss))(v["params"], with_ctx)
    g = grads["biasing"]
    for name in ("embed", "phrase_encoder", "key", "query", "no_bias"):
        assert max(float(jnp.abs(x).max()) for x in jax.tree_util.tree_leaves(g[name])) > 0
    teacher, tv = _built(None)
    lattice = jax.jit(lambda b: teacher_collapsed(teacher, tv, b))
    np.testing.assert_array_equal(np.asarray(lattice(with_ctx)), np.asarray(lattice(batch)))


# ------------------------------------------------------- fine-tuning a model without biasing


def test_fine_tuning_adds_biasing_to_a_model_without_it():
    import optax

    from asr.model_io import LoadedModel
    from train.trainer import _initial_state, can_start_from, merge_params

    base, bv = _built(None)
    base_cfg = base.config
    bv = jax.tree_util.tree_map(lambda x: x, bv)
    bv["norm"]["mean"] = np.full(80, 0.5, np.float32)
    init = LoadedModel(base, bv, None, base_cfg, "base")
    cfg = tiny_recipe(bias_dim=16, bias_heads=2)
    model = build_model(cfg.model_config(V))
    assert can_start_from(base_cfg, model.config) and not can_start_from(model.config, base_cfg)
    assert not can_start_from(base_cfg, model.config.replace(d_model=64))
    # the shipped model loads unchanged, and the README's recipe can add biasing to it
    from asr.model_io import load_model
    from train.configs import get_recipe

    shipped = load_model("default")
    assert shipped.config.bias_dim == 0
    recipe = get_recipe("small").override(["init_from=default", "bias_dim=96", "bias_heads=4"])
    target = recipe.model_config(shipped.tokenizer.vocab_size)
    assert target.bias_dim == 96 and can_start_from(shipped.config, target)
    state = _initial_state(None, None, model, optax.sgd(0.1), cfg, init, [])
    for path, x in jax.tree_util.tree_leaves_with_path(bv["params"]):
        got = state.params
        for k in path:
            got = got[k.key]
        np.testing.assert_array_equal(np.asarray(got), x)
    np.testing.assert_array_equal(np.asarray(state.norm["mean"]), 0.5)
    assert model.config == _built()[0].config and cfg.seed == 0
    fresh = _built()[1]["params"]["biasing"]
    for a, b in zip(*map(jax.tree_util.tree_leaves, (state.params["biasing"], fresh)), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    # at step 0 the fine-tuned model is the starting model, whatever the list
    x, p = _feats()
    ctx = context_arrays([[[3, 4]], [[5]]])
    v = {"params": state.params, "norm": state.norm}
    e, _ = _jitted(model, "encode")(v, x, p, ctx)
    e0, _ = _jitted(base, "encode")(bv, x, p, None)
    np.testing.assert_array_equal(np.asarray(e), np.asarray(e0))
    with pytest.raises(ValueError, match="encoder/layer_0.* has no match"):
        bad = jax.tree_util.tree_map(lambda x: x, bv["params"])
        bad["encoder"]["layer_0"]["Dense_0"]["kernel"] = np.zeros((3, 3))
        merge_params(state.params, bad)


def test_training_with_biasing_from_a_model_without_it(corpus, tmp_path):
    from asr.manifest import read_manifest
    from asr.model_io import load_model, save_model_folder
    from train.trainer import train

    rows = read_manifest(corpus)
    names = {"call mom": ["mom", "dad"], "play some jazz": ["jazz", "rock", "mom"]}
    rows = [dict(r, context=names.get(r["text"], ["dad", "rock"])) for r in rows]
    tok = _tokenizer()
    assert sorted({r["text"] for r in rows}) == sorted(PHRASES)
    base, bv = _built(None)
    base_cfg = tiny_recipe().model_config(tok.vocab_size)
    assert base.config == base_cfg
    save_model_folder(tmp_path / "base", base_cfg, tok, bv)
    cfg = tiny_recipe(
        steps=4,
        init_from=str(tmp_path / "base"),
        bias_dim=16,
        bias_heads=2,
        context_phrases=4,
        precompile=True,  # compiled up front for the batches' context shape
    )
    res = train(cfg, rows, tmp_path / "ft", progress=False)
    assert res["steps"] == 4 and np.isfinite(res["loss"]) and 0 <= res["dev_wer"]
    ft = load_model(tmp_path / "ft" / "model")
    assert ft.config.bias_dim == 16 and ft.config.without_biasing() == base_cfg
    comb = ft.variables["params"]["biasing"]["combine"]["kernel"]
    assert np.abs(comb).max() > 0  # the biasing network trained
    # removing (or resizing) a biasing network by fine-tuning is refused, naming the reason
    with pytest.raises(ValueError, match="can be added to a model without one"):
        train(tiny_recipe(init_from=str(tmp_path / "ft" / "model")), rows, tmp_path / "x")


# ----------------------------------------------------------------------------------- plot


def test_attention_plot(tmp_path):
    pytest.importorskip("matplotlib")
    from asr.features import log_mel
    from asr.model_io import LoadedModel, save_model_folder
    from asr.plot import attention_map, plot_attention

    tok = _tokenizer()
    m, v = _built()
    cfg = m.config
    v = _nonzero_combiner(v)
    loaded = LoadedModel(m, v, tok, cfg, "test")
    audio = (0.1 * np.random.default_rng(0).standard_normal(16000)).astype(np.float32)
    feats, w, labels = attention_map(loaded, audio, ["Mom", "some jazz", "mom"])
    assert labels == ["<no-bias>", "mom", "some jazz"]
    n = len(log_mel(audio))
    assert feats.shape == (n, 80) and w.shape == (-(-n // 4), 3)
    np.testing.assert_allclose(w.sum(1), 1.0, rtol=1e-5)
    out = plot_attention(loaded, audio, ["mom", "some jazz"], tmp_path / "a.png")
    assert out.stat().st_size > 5000
    save_model_folder(tmp_path / "m", cfg, tok, v)  # a model folder and an audio file
    import soundfile as sf

    sf.write(tmp_path / "x.wav", audio, 16000)
    out = plot_attention(tmp_path / "m", tmp_path / "x.wav", ["mom"], tmp_path / "b.png")
    assert out.stat().st_size > 5000
    pm, pv = _built(None)
    with pytest.raises(ValueError, match="no biasing network"):
        attention_map(LoadedModel(pm, pv, tok, pm.config, "plain"), audio, ["mom"])


def test_strip_biasing_keeps_the_rest_and_loads(tmp_path):
    from asr.model_io import load_model, save_model_folder, strip_biasing
    from asr.tokenizer import Tokenizer

    tok = Tokenizer.train(["turn on the lights", "call mom", "stop", "go"] * 20, vocab_size=24)
    cfg = get_config("tiny").replace(vocab_size=tok.vocab_size, bias_dim=16, bias_heads=2)
    variables = jax.device_get(init_variables(build_model(cfg), jax.random.PRNGKey(0)))
    src = save_model_folder(tmp_path / "bias", cfg, tok, variables)
    out = strip_biasing(src, tmp_path / "plain")
    plain, full = load_model(out), load_model(src)
    assert plain.config.bias_dim == 0 and "biasing" not in plain.variables["params"]
    assert plain.config == cfg.without_biasing()
    for k, v in plain.variables["params"].items():
        jax.tree_util.tree_map(np.testing.assert_array_equal, v, full.variables["params"][k])
    # a fresh biasing network adds zero: the stripped model decodes the same features the same
    feats = np.random.default_rng(0).standard_normal((1, 64, 80)).astype(np.float32)
    pads = np.zeros((1, 64), np.float32)
    a = plain.model.apply(plain.variables, feats, pads, method=Transducer.encode)[0]
    b = full.model.apply(full.variables, feats, pads, method=Transducer.encode)[0]
    np.testing.assert_allclose(a, b, atol=1e-6)
    with pytest.raises(ValueError, match="no attention biasing network"):
        strip_biasing(out, tmp_path / "again")
