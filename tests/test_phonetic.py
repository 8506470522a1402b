"""Tests of asr.phonetic (phone head, keyword spotting, CTC scoring, the name-correcting second
pass), its place in the recognizer and model folders, and train.phone_head.

References are independent: spans are enumerated by brute force with a plain Viterbi, CTC
likelihoods by a float64 NumPy forward pass over all alignments, and the second pass is fed
phone posteriors built by hand from eSpeak NG's phones of the spoken sentence.
"""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import soundfile as sf
from test_loss import brute_force_loss, columns

from asr.model_io import ModelLoadError, load_model
from asr.models import build_model, get_config
from asr.models.quant import quantize_params
from asr.models.transducer import init_variables
from asr.phonetic import (
    NEG,
    PhoneHead,
    PhoneModel,
    candidates,
    correct_names,
    ctc_log_likelihoods,
    rank_names,
    spot,
    text_phones,
    word_phones,
)
from asr.recognizer import DecodeSettings, Recognizer
from asr.tokenizer import Tokenizer
from train.phone_head import encoder_states, row_accent, save_with_phones, train_phone_head

SR = 16000


# ---- phones ----


def test_word_phones_ties_and_drops_stress():
    p = word_phones("time")
    assert "a^ɪ" in p  # the diphthong is one phone
    assert not any(c in "".join(p) for c in "ˈˌː")
    assert p[0] == "t" and p[-1] == "m"
    # accents differ where they should ("office": US ɑ, British ɒ)
    assert word_phones("office", "en-us") != word_phones("office", "en-gb")
    assert text_phones("call  kennedy") == word_phones("call kennedy")
    assert text_phones("  ") == ()


# ---- keyword spotting against brute force ----


def _brute_spot(rel, seq):
    """max over spans [s, e] of the best CTC path of seq within exactly those frames (NEG for
    an empty seq: it has no label to end on)."""
    if not seq:
        return NEG
    ext = [0]
    for q in seq:
        ext += [q, 0]
    best = NEG
    for s in range(rel.shape[0]):
        d = np.full(len(ext), NEG)
        d[1] = rel[s, ext[1]]
        best = max(best, d[len(ext) - 2])
        for t in range(s + 1, rel.shape[0]):
            nd = np.full(len(ext), NEG)
            for j in range(len(ext)):
                c = d[j]
                if j >= 1:
                    c = max(c, d[j - 1])
                if j >= 2 and ext[j] != 0 and ext[j] != ext[j - 2]:
                    c = max(c, d[j - 2])
                nd[j] = c + rel[t, ext[j]]
            d = nd
            best = max(best, d[len(ext) - 2])
    return best


def _check_spot(rel, seqs):
    score, start, end = spot(rel, seqs)
    ref = np.array([_brute_spot(rel.astype(np.float64), s) for s in seqs])
    feasible = ref > NEG / 2
    np.testing.assert_allclose(score[feasible], ref[feasible], atol=1e-4)
    assert np.all(score[~feasible] < NEG / 2)
    for k in np.flatnonzero(feasible):  # the span returned holds the best path (ties may differ)
        assert start[k] <= end[k]
        assert abs(_brute_spot(rel[start[k] : end[k] + 1], seqs[k]) - ref[k]) < 1e-4


def test_spot_equals_brute_force_over_spans():
    rng = np.random.default_rng(0)
    for _ in range(25):
        t, k = int(rng.integers(2, 11)), 5
        lp = np.log(rng.dirichlet(np.ones(k), t))
        seqs = [list(rng.integers(1, k, int(rng.integers(1, 4)))) for _ in range(4)]
        seqs.append([2, 2])  # a repeated label needs a blank between
        _check_spot(lp - lp.max(1, keepdims=True), seqs)
    # longer utterances and more names than one padded block (64), sequences up to 10 phones
    lp = np.log(rng.dirichlet(np.full(12, 0.3), 37))
    seqs = [list(rng.integers(1, 12, int(rng.integers(1, 11)))) for _ in range(70)] + [[]]
    _check_spot(lp - lp.max(1, keepdims=True), seqs)


def test_spot_finds_the_span_and_scores_an_empty_sequence_out():
    rel = np.full((12, 4), -5.0)
    path = [0, 0, 0, 1, 1, 0, 2, 3, 0, 0, 0, 0]  # label 1 at frames 3-4, 2 at 6, 3 at 7
    rel[np.arange(12), path] = 0.0
    score, start, end = spot(rel, [[1, 2, 3], [3, 1], []])
    assert score[0] == 0.0 and (start[0], end[0]) == (3, 7)
    assert score[1] < 0.0
    assert score[2] < NEG / 2


# ---- CTC likelihoods against a float64 forward pass ----


def _ctc_forward(lp, seq):
    ext = [0]
    for q in seq:
        ext += [q, 0]
    a = np.full(len(ext), -np.inf)
    a[0] = lp[0, 0]
    if seq:
        a[1] = lp[0, ext[1]]
    for t in range(1, lp.shape[0]):
        n = np.full(len(ext), -np.inf)
        for j in range(len(ext)):
            terms = [a[j]]
            if j >= 1:
                terms.append(a[j - 1])
            if j >= 2 and ext[j] != 0 and ext[j] != ext[j - 2]:
                terms.append(a[j - 2])
            n[j] = np.logaddexp.reduce(terms) + lp[t, ext[j]]
        a = n
    return np.logaddexp(a[-1], a[-2]) if seq else a[-1]


def test_ctc_log_likelihoods_match_a_float64_forward_pass():
    rng = np.random.default_rng(1)
    lp = np.log(rng.dirichlet(np.ones(6), 14)).astype(np.float32)
    seqs = [[1, 2, 3], [4], [2, 2, 5], [], [1, 2, 3, 4, 5, 1, 2]]
    got = ctc_log_likelihoods(lp, seqs)
    ref = [_ctc_forward(lp.astype(np.float64), s) for s in seqs]
    np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-3)


# ---- the second pass ----


def test_candidates_replace_and_insert():
    got = candidates(["call", "kevin"], ["kennedy"], max_span=2)
    assert set(got) == {
        "kennedy call kevin",
        "kennedy kevin",
        "kennedy",
        "call kennedy kevin",
        "call kennedy",
        "call kevin kennedy",
    }
    assert "call kevin" not in candidates(["call", "kevin"], ["kevin"])


def _posteriors(pm: PhoneModel, text: str, accent: str = "en-us", p: float = 0.9) -> np.ndarray:
    """f32[T, P+1]: each phone of `text` for two frames, a blank frame after each, the rest of
    the mass spread evenly."""
    k = len(pm.inventory) + 1
    path = [0, 0]
    for q in pm.encode(text, accent):
        path += [q, q, 0]
    path += [0, 0]
    lp = np.full((len(path), k), np.log((1 - p) / (k - 1)), np.float32)
    lp[np.arange(len(path)), path] = np.log(p)
    return lp


@pytest.fixture(scope="module")
def pm() -> PhoneModel:
    words = (
        "call kennedy kevin dial zoe bauer weber wagner the lights turn on and off greta".split()
    )
    inv = sorted({p for w in words for a in ("en-us", "en-gb") for p in word_phones(w, a)})
    head = PhoneHead(len(inv), hidden=16, kernel=3)
    params = head.init(jax.random.PRNGKey(0), jnp.zeros((1, 8, 32)), jnp.zeros((1, 8)))
    return PhoneModel(jax.device_get(params), tuple(inv), 16, 3)


def test_correct_names_writes_the_spoken_name(pm):
    lp = _posteriors(pm, "call kennedy")
    names = ["zoe", "kennedy", "bauer", "greta"]
    scores = rank_names(lp, names, pm)
    assert int(np.argmax(scores)) == 1
    assert correct_names("call kevin", lp, names, pm) == "call kennedy"
    # a missing word is inserted
    assert correct_names("call", lp, names, pm) == "call kennedy"
    # nothing changes: with a margin too large, without a list, and where the sentence says
    # what the phones say, even with a name that sounds alike listed ("kevin" / "kennedy")
    assert correct_names("call kevin", lp, names, pm, margin=1e6) == "call kevin"
    assert correct_names("call kevin", _posteriors(pm, "call kevin"), names, pm) == "call kevin"
    assert correct_names("call kevin", lp, [], pm) == "call kevin"
    # a sentence that already says what the phones say stays
    lp2 = _posteriors(pm, "turn on the lights")
    assert correct_names("turn on the lights", lp2, names, pm) == "turn on the lights"


def test_correct_names_tries_only_names_that_match_well_enough(pm):
    lp = _posteriors(pm, "call kennedy")
    names = ["zoe", "kennedy", "bauer", "greta"]
    scores = rank_names(lp, names, pm)
    s = float(scores[1])  # kennedy's, the best (0: its span is the frame-best phones)
    assert s == scores.max()
    assert correct_names("call kevin", lp, names, pm, min_spot=s) == "call kennedy"
    assert correct_names("call kevin", lp, names, pm, min_spot=s + 1e-3) == "call kevin"
    # the gate holds out the weaker names only: with kennedy unlisted, the next best (below
    # its own score) is not tried at kennedy's score, and is at its own
    rest = ["zoe", "bauer", "greta"]
    best_rest = float(rank_names(lp, rest, pm).max())
    assert best_rest < s
    assert correct_names("call kevin", lp, rest, pm, min_spot=s) == "call kevin"
    assert (
        correct_names("call kevin", lp, rest, pm, min_spot=best_rest, margin=-1e6) != "call kevin"
    )


def test_correct_names_weighs_in_the_transducer(pm):
    lp = _posteriors(pm, "call kennedy")
    names = ["zoe", "kennedy", "bauer", "greta"]
    calls = []

    def sure_of_kevin(texts):  # the transducer finds "call kevin" 100 nats likelier
        calls.append(list(texts))
        return np.array([0.0 if t == "call kevin" else -100.0 for t in texts])

    def indifferent(texts):
        calls.append(list(texts))
        return np.zeros(len(texts))

    # the gain of the phones alone (large: the posteriors say "kennedy" at p=0.9)
    gain = correct_names("call kevin", lp, names, pm, margin=0.0)
    assert gain == "call kennedy"
    assert correct_names("call kevin", lp, names, pm, transducer=sure_of_kevin, weight=1.0) == (
        "call kevin"
    )
    assert calls == [["call kevin", "call kennedy"]]  # the sentence and the best candidate only
    assert correct_names("call kevin", lp, names, pm, transducer=indifferent, weight=1.0) == (
        "call kennedy"
    )
    # weight 0 (or no transducer) never calls it; a sentence that already fits never calls it
    calls.clear()
    assert correct_names("call kevin", lp, names, pm, transducer=sure_of_kevin) == "call kennedy"
    assert correct_names("call kennedy", lp, names, pm, transducer=sure_of_kevin, weight=1.0) == (
        "call kennedy"
    )
    assert calls == []


def test_correct_names_only_tries_the_top_k(pm):
    lp = _posteriors(pm, "dial weber")
    # weber ranks first; with top_k=1 and weber listed, it is tried; listing it last changes
    # nothing about the rank
    names = ["zoe", "bauer", "greta", "wagner", "weber"]
    assert correct_names("dial wagner", lp, names, pm, top_k=1) == "dial weber"


# ---- model folders and the recognizer ----


def _tiny(tmp_path, with_phones: bool, head_dim: int | None = None):
    tok = Tokenizer.train(["call kennedy", "turn on the lights", "dial zoe"] * 20, vocab_size=24)
    cfg = get_config("tiny").replace(vocab_size=tok.vocab_size, num_layers=1)
    model = build_model(cfg)
    variables = jax.device_get(init_variables(model, jax.random.PRNGKey(0)))
    folder = tmp_path / "m"
    folder.mkdir(parents=True)
    from asr.model_io import save_model_folder

    save_model_folder(folder, cfg, tok, variables)
    loaded = load_model(folder)
    assert loaded.phones is None
    if with_phones:
        inv = tuple(sorted({p for w in ("call", "kennedy", "zoe", "dial") for p in word_phones(w)}))
        head = PhoneHead(len(inv), hidden=16, kernel=3)
        dim = head_dim or cfg.d_model
        params = head.init(jax.random.PRNGKey(1), jnp.zeros((1, 8, dim)), jnp.zeros((1, 8)))
        PhoneModel(jax.device_get(params), inv, 16, 3).save(folder)
    return folder, cfg


def test_phone_model_round_trip_and_damage(tmp_path):
    folder, cfg = _tiny(tmp_path, True)
    loaded = load_model(folder)
    assert loaded.phones is not None and loaded.phones.hidden == 16
    assert json.loads((folder / "phones.json").read_text())["accents"] == ["en-us", "en-gb"]
    good = (folder / "phones.msgpack").read_bytes()
    (folder / "phones.msgpack").write_bytes(b"\xc1garbage")
    with pytest.raises(ModelLoadError, match="phones.msgpack"):
        load_model(folder)
    from flax import serialization

    (folder / "phones.msgpack").write_bytes(serialization.msgpack_serialize({"x": np.zeros(3)}))
    with pytest.raises(ModelLoadError, match="do not fit"):
        load_model(folder)
    folder2, _ = _tiny(tmp_path / "b", True, head_dim=cfg.d_model + 8)
    with pytest.raises(ModelLoadError, match="wide encoder states"):
        load_model(folder2)
    (folder / "phones.msgpack").write_bytes(good)
    assert load_model(folder).phones is not None
    meta = json.loads((folder / "phones.json").read_text())
    meta["hidden"] = 17
    (folder / "phones.json").write_text(json.dumps(meta))
    with pytest.raises(ModelLoadError, match="do not fit"):
        load_model(folder)


def test_recognizer_phone_head_outputs_and_unchanged_without_lists(tmp_path):
    folder, _ = _tiny(tmp_path, True)
    loaded = load_model(folder)
    rng = np.random.default_rng(0)
    audios = [(0.2 * rng.standard_normal(int(s * SR))).astype(np.float32) for s in (0.8, 1.3)]
    on = Recognizer(loaded, DecodeSettings(batch_size=2))
    off = Recognizer(loaded, DecodeSettings(batch_size=2, phonetic_margin=None))
    a = on.recognize(audios)
    b = off.recognize(audios)
    assert [h[0].text for h in a] == [h[0].text for h in b]
    assert [h[0].score for h in a] == [h[0].score for h in b]
    # the decode function's phone log-probs are the head on the encoder output
    from asr.features import log_mel

    x = log_mel(np.concatenate([audios[0], np.zeros(5120, np.float32)]))[None]
    pad = np.zeros(x.shape[:2], np.float32)
    res = on._phone_decoder.run(on._variables, x, pad, None, None, on._phone_params)
    enc_p, enc_pad, _, states = loaded.model.apply(loaded.variables, x, pad, method="encode_states")
    want = loaded.phones.head.apply(loaded.phones.params, states, enc_pad)
    # the states are the encoder's before the joiner's projection
    np.testing.assert_allclose(
        np.asarray(enc_p),
        np.asarray(loaded.model.apply(loaded.variables, x, pad, method="encode")[0]),
        atol=1e-5,
    )
    assert states.shape[-1] == loaded.config.d_model
    np.testing.assert_allclose(np.asarray(res[4][0]), np.asarray(want), atol=1e-5)
    # without lists the phone head does not run (the batch shapes compiled say which decoder)
    assert on.timing.seen and not any(key[-1] for key in on.timing.seen)
    # with lists it runs and returns one text per input
    c = on.recognize(audios, context=["kennedy", "zoe"])
    assert len(c) == 2 and all(isinstance(h[0].text, str) for h in c)
    assert any(key[-1] for key in on.timing.seen)
    with pytest.raises(ValueError, match="phonetic_margin"):
        Recognizer(loaded, DecodeSettings(phonetic_margin=float("nan")))
    with pytest.raises(ValueError, match="phonetic_top_k"):
        Recognizer(loaded, DecodeSettings(phonetic_top_k=0))
    with pytest.raises(ValueError, match="phonetic_transducer_weight"):
        Recognizer(loaded, DecodeSettings(phonetic_transducer_weight=-1.0))


def test_sentence_log_likelihoods_equal_a_brute_force_sum_over_alignments(tmp_path):
    folder, _ = _tiny(tmp_path, False)
    loaded = load_model(folder)
    model, variables, tok = loaded.model, loaded.variables, loaded.tokenizer
    rec = Recognizer(loaded)
    rng = np.random.default_rng(3)
    from asr.features import log_mel

    x = log_mel((0.2 * rng.standard_normal(int(0.3 * SR))).astype(np.float32))[None]
    pad = np.zeros(x.shape[:2], np.float32)
    enc_p = np.asarray(model.apply(variables, x, pad, method="encode")[0][0])
    texts = ["call zoe", "dial kennedy", ""]
    got = rec.sentence_log_likelihoods(enc_p, texts)
    blank = loaded.config.blank_id
    for text, g in zip(texts, got, strict=True):
        ids = tok.encode(text)
        hist = np.array([[blank, *ids]], np.int32)
        pred = model.apply(variables, hist, method="predict")
        logits = model.apply(variables, enc_p[None, :, None], pred[:, None], method="joint")[0]
        z = np.asarray(logits, np.float64)
        m = z.max(-1, keepdims=True)
        logp = z - m - np.log(np.exp(z - m).sum(-1, keepdims=True))
        assert len(enc_p) + len(ids) <= 20  # the brute force stays small (C(19, 12) paths)
        want = -brute_force_loss(*columns(logp, np.array(ids, np.int64), blank))
        np.testing.assert_allclose(g, want, rtol=1e-4, atol=1e-3)


# ---- training ----


def test_row_accent():
    assert row_accent({"speaker": "en-gb-x-rp+Andrea"}) == "en-gb-x-rp"
    assert row_accent({"speaker": "x", "voice": {"name": "en-029+f3"}}) == "en-029"
    assert row_accent({"speaker": "x", "voice": {"accent": "en-gb", "name": "jf_alpha"}}) == "en-gb"
    assert row_accent({"speaker": "george"}) == "en-us"
    assert row_accent({}) == "en-us"


def _np_head(params: dict, x: np.ndarray, pads: np.ndarray, kernel: int) -> np.ndarray:
    """A float64 NumPy forward pass of a separable `PhoneHead` (eval mode)."""
    from scipy.special import log_softmax

    p = jax.tree_util.tree_map(lambda a: np.asarray(a, np.float64), params["params"])

    def gelu(v):  # flax's default is the tanh approximation
        return 0.5 * v * (1 + np.tanh(np.sqrt(2 / np.pi) * (v + 0.044715 * v**3)))

    mu, var = x.mean(-1, keepdims=True), x.var(-1, keepdims=True)
    h = (x - mu) / np.sqrt(var + 1e-6) * p["LayerNorm_0"]["scale"] + p["LayerNorm_0"]["bias"]
    h = gelu(h @ p["Dense_0"]["kernel"] + p["Dense_0"]["bias"])
    left = (kernel - 1) // 2
    hp = np.pad(h * (1 - pads)[..., None], ((0, 0), (left, kernel - 1 - left), (0, 0)))
    w = p["Conv_0"]["kernel"][:, 0, :]  # [taps, channels]
    dw = sum(hp[:, t : t + h.shape[1]] * w[t] for t in range(kernel)) + p["Conv_0"]["bias"]
    h = h + gelu(dw @ p["pointwise"]["kernel"] + p["pointwise"]["bias"])
    return log_softmax(h @ p["Dense_1"]["kernel"] + p["Dense_1"]["bias"], axis=-1)


def test_separable_head_matches_a_float64_reference_and_saves_its_kind(tmp_path):
    inv = ("a", "b", "k", "z")
    full = PhoneHead(len(inv), hidden=16, kernel=3)
    sep = PhoneHead(len(inv), hidden=16, kernel=3, conv="separable")
    x = np.random.default_rng(0).standard_normal((2, 9, 12)).astype(np.float32)
    pads = np.zeros((2, 9), np.float32)
    pads[1, 6:] = 1.0
    pf = full.init(jax.random.PRNGKey(0), x, pads)
    ps = sep.init(jax.random.PRNGKey(0), x, pads)
    shapes = {"/".join(k.key for k in path): v.shape for path, v in
              jax.tree_util.tree_leaves_with_path(ps)}  # fmt: skip
    assert shapes["params/Conv_0/kernel"] == (3, 1, 16)  # depthwise
    assert shapes["params/pointwise/kernel"] == (16, 16)
    n = lambda v: sum(np.size(a) for a in jax.tree_util.tree_leaves(v))  # noqa: E731
    assert n(pf) - n(ps) == 3 * 16 * 16 - (3 * 16 + 16 * 16 + 16)
    # random biases and norm too, so every term of the reference is exercised
    leaves, tree = jax.tree_util.tree_flatten(ps)
    keys = jax.random.split(jax.random.PRNGKey(3), len(leaves))
    ps = jax.tree_util.tree_unflatten(
        tree, [0.3 * jax.random.normal(k, a.shape) + a for k, a in zip(keys, leaves, strict=True)]
    )
    got = np.asarray(sep.apply(ps, x, pads))
    want = _np_head(ps, x.astype(np.float64), pads.astype(np.float64), 3)
    np.testing.assert_allclose(got, want, atol=2e-4)
    # the kind is saved and read back; a phones.json from before `conv` reads as full
    pm = PhoneModel(jax.device_get(ps), inv, 16, 3, conv="separable")
    pm.save(tmp_path)
    assert PhoneModel.load(tmp_path).conv == "separable"
    meta = json.loads((tmp_path / "phones.json").read_text())
    del meta["conv"]
    (tmp_path / "phones.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="do not fit"):  # read as full: the weights disagree
        PhoneModel.load(tmp_path)
    meta["conv"] = "dilated"
    (tmp_path / "phones.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="phones.json.*dilated"):
        PhoneModel.load(tmp_path)
    with pytest.raises(ValueError, match="conv must be one of"):
        PhoneHead(4, conv="dilated").init(jax.random.PRNGKey(0), x, pads)


def test_train_phone_head_learns_and_saves(tmp_path):
    folder, _ = _tiny(tmp_path, False)
    loaded = load_model(folder)
    rng = np.random.default_rng(0)
    rows = []
    for i, text in enumerate(["call kennedy", "dial zoe", "call zoe", "dial kennedy"] * 2):
        f = tmp_path / f"{i}.wav"
        sf.write(f, (0.2 * rng.standard_normal(SR)).astype(np.float32), SR)
        rows.append({"audio": str(f), "text": text, "speaker": "en-us+m1"})
    rows.append({"audio": str(tmp_path / "0.wav"), "text": ""})  # no transcript: left out
    pm, log = train_phone_head(loaded, rows, steps=60, batch=4, progress=False, log_every=20)
    assert [x["step"] for x in log] == [20, 40, 60]
    assert log[-1]["loss"] < log[0]["loss"]
    assert set(pm.inventory) == {p for t in ("call kennedy", "dial zoe") for p in text_phones(t)}
    out = save_with_phones(loaded, pm, tmp_path / "with_phones")
    again = load_model(out)
    assert again.phones is not None and again.phones.inventory == pm.inventory
    with pytest.raises(ValueError, match="itself"):
        save_with_phones(loaded, pm, folder)
    with pytest.raises(ValueError, match="transcript"):
        train_phone_head(loaded, rows[-1:], steps=1, progress=False)

    # a separable student on 4-bit levels, taught by that head's posteriors as well
    states = encoder_states(loaded, rows[:-1], progress=False)
    kw = dict(steps=60, batch=4, progress=False, log_every=60, states=states + [states[0]])
    with pytest.raises(ValueError, match="2 encoder states for 9 rows"):
        train_phone_head(loaded, rows, **dict(kw, states=states[:2]))
    alone, _ = train_phone_head(loaded, rows, conv="separable", weight_bits=4, **kw)
    taught, _ = train_phone_head(
        loaded, rows, conv="separable", weight_bits=4, teacher=pm, distill_weight=5.0, **kw
    )
    assert taught.conv == alone.conv == "separable" and taught.inventory == pm.inventory

    def kl_to_teacher(student):
        def lp(m, params):
            return np.concatenate([np.asarray(m.head.apply(params, e[None], np.zeros((1, len(e)))))[0] for e in states])  # fmt: skip

        q = quantize_params(student.params, 4)
        t = lp(pm, pm.params)
        return float(np.mean(np.sum(np.exp(t) * (t - lp(student, q)), -1)))

    assert kl_to_teacher(taught) < 0.5 * kl_to_teacher(alone)
    small = PhoneModel(pm.params, pm.inventory[:-1], pm.hidden, pm.kernel)
    with pytest.raises(ValueError, match="inventory lacks"):
        train_phone_head(loaded, rows, teacher=small, **kw)
    with pytest.raises(ValueError, match="weight_bits"):
        train_phone_head(loaded, rows, weight_bits=1, **kw)
    with pytest.raises(ValueError, match="distill_weight"):
        train_phone_head(loaded, rows, teacher=pm, distill_weight=float("nan"), **kw)
    with pytest.raises(ValueError, match="conv must be"):
        train_phone_head(loaded, rows, conv="dilated", **kw)


def test_biasing_benchmark_conditions_add_the_phonetic_ones(tmp_path):
    from train.benchmarks.biasing import CONDITIONS, conditions

    folder, _ = _tiny(tmp_path, True)
    with_head = conditions(load_model(folder), 0.5, margin=3.0, weight=0.1, min_spot=-2.0)
    assert with_head["phonetic"] == (0.0, False, True, 0.0, (3.0, 0.1, -2.0))
    assert with_head["fusion_phonetic"] == (0.5, False, True, 0.0, (3.0, 0.1, -2.0))
    d = DecodeSettings()
    assert conditions(load_model(folder), 0.5)["phonetic"][4] == (
        d.phonetic_margin,
        d.phonetic_transducer_weight,
        d.phonetic_min_spot,
    )
    assert all(v[4] is None for k, v in with_head.items() if "phonetic" not in k)
    assert list(with_head) == [c for c in CONDITIONS if c in with_head]
    (folder / "phones.json").unlink()
    (folder / "phones.msgpack").unlink()
    assert "phonetic" not in conditions(load_model(folder), 0.5)


def test_cli_phonetic_flags(tmp_path, capsys):
    from asr.cli import main

    folder, _ = _tiny(tmp_path, False)
    wav = tmp_path / "a.wav"
    sf.write(wav, (0.1 * np.random.default_rng(0).standard_normal(SR)).astype(np.float32), SR)
    names = tmp_path / "names.txt"
    names.write_text("kennedy\nzoe\n")
    args = ["transcribe", "--model", str(folder), "--context", str(names), str(wav)]
    assert main([*args, "--phonetic-margin", "2"]) == 2
    assert "has no phone head" in capsys.readouterr().err
    assert main([*args, "--no-phonetic"]) == 0
    folder2, _ = _tiny(tmp_path / "b", True)
    args2 = ["transcribe", "--model", str(folder2), "--context", str(names), str(wav)]
    assert main([*args2, "--phonetic-margin", "2"]) == 0
    assert main([*args2, "--phonetic-margin", "2", "--no-phonetic"]) == 2  # one or the other
    for flag, value in (("--phonetic-transducer-weight", "0.5"), ("--phonetic-min-spot", "-1.5")):
        assert main([*args2, flag, value]) == 0
        assert main([*args, flag, value]) == 2  # no head
        assert flag in capsys.readouterr().err
        assert main([*args2, flag, value, "--no-phonetic"]) == 2
        assert "not --no-phonetic" in capsys.readouterr().err
    assert main([*args2, "--phonetic-transducer-weight", "-1"]) == 2
    assert main([*args2, "--phonetic-min-spot", "nan"]) == 2
    assert "phonetic_min_spot must be a finite number" in capsys.readouterr().err


def test_cli_export_takes_the_phone_head_and_add_phones_adds_it(tmp_path, capsys):
    import shutil

    from asr.cli import main

    folder, _ = _tiny(tmp_path, True)
    bare = tmp_path / "bare"
    shutil.copytree(folder, bare)
    (bare / "phones.json").unlink()
    (bare / "phones.msgpack").unlink()
    a, b, c = (tmp_path / f"{n}.edge" for n in "abc")
    assert main(["export", "--model", str(folder), "--bits", "4", "-o", str(a)]) == 0
    assert "phone head" in capsys.readouterr().out
    assert main(["export", "--model", str(bare), "--bits", "4", "-o", str(b)]) == 0
    assert "phone head" not in capsys.readouterr().out
    assert load_model(b).phones is None and load_model(a).phones is not None
    assert main(["export", "add-phones", str(b), "--phones", str(folder), "-o", str(c)]) == 0
    # the same artifact as exported with its head (but for the header's source folder)
    from export.artifact import read_artifact

    got, want = read_artifact(c), read_artifact(a)
    assert {k: v for k, v in got.header.items() if k != "source"} == {
        k: v for k, v in want.header.items() if k != "source"
    }
    assert list(got.tensors) == list(want.tensors)
    for name, rec in want.tensors.items():
        g = got.tensors[name]
        assert (g.encoding, g.meta, sorted(g.fields)) == (
            rec.encoding,
            rec.meta,
            sorted(rec.fields),
        )
        assert all(np.array_equal(g.fields[f], rec.fields[f]) for f in rec.fields), name
    assert main(["export", "add-phones", str(b), "--phones", str(bare), "-o", str(c)]) == 2
    assert "no phone head" in capsys.readouterr().err


def test_cli_train_phones_on_an_artifact_writes_the_artifact_with_the_head(tmp_path, capsys):
    """`asr train-phones --model X.edge`: the head learns on the artifact's fake-quant encoder
    (taught by a float model's head here) and lands in a copy of the artifact whose other
    tensors are byte for byte the original's."""
    from asr.cli import main
    from export.artifact import read_artifact

    teacher, _ = _tiny(tmp_path / "t", True)
    bare = tmp_path / "bare.edge"
    assert main(["export", "--model", str(teacher), "--bits", "4", "--phone-bits", "8", "-o", str(bare)]) == 0  # fmt: skip
    art = read_artifact(bare)
    plain = {k: v for k, v in art.tensors.items() if not k.startswith("phones/")}
    rng = np.random.default_rng(1)
    lines = []
    for i, text in enumerate(["call kennedy", "dial zoe", "call zoe", "dial kennedy"]):
        f = tmp_path / f"{i}.wav"
        sf.write(f, (0.2 * rng.standard_normal(SR)).astype(np.float32), SR)
        lines.append(json.dumps({"audio": str(f), "text": text, "speaker": "en-us"}) + "\n")
    man = tmp_path / "m.jsonl"
    man.write_text("".join(lines))
    out = tmp_path / "small.edge"
    args = ["train-phones", "--model", str(bare), "--data", str(man), "--steps", "20",
            "--batch", "2", "--hidden", "8", "--kernel", "3", "--conv", "separable",
            "--weight-bits", "4", "--teacher", str(teacher), "--no-progress"]  # fmt: skip
    assert main([*args, "--out", str(out)]) == 0
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert report["out"] == str(out) and report["phone_bits"] == 4
    assert report["bytes"] == out.stat().st_size
    got = read_artifact(out)
    assert got.header["phones"]["conv"] == "separable" and got.header["phones"]["hidden"] == 8
    for name, rec in plain.items():
        g = got.tensors[name]
        assert all(np.array_equal(g.fields[f], rec.fields[f]) for f in rec.fields), name
    edge = load_model(out)
    assert edge.phones.conv == "separable" and edge.phones.inventory == load_model(teacher).phones.inventory  # fmt: skip
    assert (tmp_path / "small.phones_log.jsonl").exists()
    with pytest.raises(SystemExit, match="into an .edge file"):
        main([*args, "--out", str(tmp_path / "folder")])
