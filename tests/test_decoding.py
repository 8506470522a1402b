"""Tests of asr.decoding: greedy and modified beam search against NumPy references.

A fake model whose joint logits are a table indexed by (frame, last token) gives exact
references: greedy against a NumPy greedy loop, beam search (with a beam holding every sequence)
against a brute-force sum over all alignments, with one symbol per frame (modified search) or up
to S per frame (each frame's emissions end with blank, or after the S-th symbol). A tiny random
Transducer checks batched against one by one, beam=1 against greedy, ordering, uniqueness and no
retracing. With shallow fusion (a context graph): no fusion and an empty graph are bit-identical,
beam scores are the brute-force sums over alignments plus the string-matching context score of
each sequence, greedy matches a NumPy loop over the graph's arrays, per-utterance graphs stay in
their utterance, and new lists of the same size bucket do not retrace.

References: Graves 2012, "Sequence Transduction with Recurrent Neural Networks"; Kang et al. 2023,
"Fast and Parallel Decoding for Transducer"; Zhao et al. 2019, "Shallow-Fusion End-to-End
Contextual Biasing".
"""

from __future__ import annotations

import inspect
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from asr.decoding import (
    NEG,
    DecoderFns,
    beam_search,
    build_context_graph,
    context_fusion,
    context_score,
    decoder_fns,
    greedy_search,
    stack_graphs,
    strip,
)
from asr.decoding.beam import _beam_search
from asr.decoding.greedy import _greedy_search, initial_predictor
from asr.models.config import get_config
from asr.models.transducer import Transducer, build_model, init_variables
from asr.recognizer import DecodeSettings

# ---- fake model: logits = table[t, last token]; enc_p = one_hot(t), pred_p = one_hot(last) ----


def _fake_init(variables, batch):
    return jnp.zeros((batch,), jnp.int32)  # state: last token (blank = start)


def _fake_step(variables, state, tokens):
    return tokens.astype(jnp.int32), jax.nn.one_hot(tokens, variables["table"].shape[-1])


def _fake_joint(variables, enc_p, pred_p):
    return jnp.einsum("...t,...u,tuv->...v", enc_p, pred_p, variables["table"])


def fake_fns(table: np.ndarray, joint=_fake_joint) -> DecoderFns:
    """table f32[T, V, V]: logits at frame t after last token u."""
    return DecoderFns(_fake_init, _fake_step, joint, {"table": jnp.asarray(table, jnp.float32)})


def peaked_table(t: int, v: int, blank_logit: float, emits) -> np.ndarray:
    """A [T, V(last token), V] logit table: blank (`blank_logit`) unless an (frame, last token,
    token) in `emits` makes that token the likely one (logit 10)."""
    table = np.zeros((t, v, v), np.float32)
    table[:, :, 0] = blank_logit
    for frame, last, tok in emits:
        table[frame, last, tok] = 10.0
    return table


def fake_enc(batch: int, lengths: list[int], t: int):
    enc_p = jnp.broadcast_to(jnp.eye(t), (batch, t, t))
    paddings = (np.arange(t)[None] >= np.asarray(lengths)[:, None]).astype(np.float32)
    return enc_p, jnp.asarray(paddings)


def log_softmax(x):
    x = x - x.max(-1, keepdims=True)
    return x - np.log(np.exp(x).sum(-1, keepdims=True))


def np_greedy(table, n_frames, max_symbols):
    last, out, score = 0, [], 0.0
    for t in range(n_frames):
        for _ in range(max_symbols):
            lp = log_softmax(table[t, last])
            k = int(np.argmax(lp))
            score += lp[k]
            if k == 0:
                break
            out.append(k)
            last = k
    return out, score


def np_sequence_scores(table, n_frames):
    """Brute force: {token sequence: log sum over its alignments}, one symbol per frame."""
    v = table.shape[-1]
    total: dict[tuple, float] = {}
    for choice in itertools.product(range(v), repeat=n_frames):
        last, lp = 0, 0.0
        for t, c in enumerate(choice):
            lp += log_softmax(table[t, last])[c]
            if c != 0:
                last = c
        seq = tuple(c for c in choice if c != 0)
        total[seq] = np.logaddexp(total.get(seq, -np.inf), lp)
    return total


def np_sequence_scores_multi(table, n_frames, max_symbols):
    """Brute force in float64: {token sequence: log sum over its alignments}, where each frame
    emits m <= S tokens followed by blank if m < S (the S-th token ends the frame by itself)."""
    v = table.shape[-1]
    lsm = log_softmax(table.astype(np.float64))  # -> [T, V, V]
    tokens = range(1, v)
    segments = [
        (*seg, 0) for m in range(max_symbols) for seg in itertools.product(tokens, repeat=m)
    ]
    segments += list(itertools.product(tokens, repeat=max_symbols))
    total: dict[tuple, float] = {}
    for choice in itertools.product(segments, repeat=n_frames):
        last, lp, seq = 0, 0.0, []
        for t, seg in enumerate(choice):
            for c in seg:
                lp += lsm[t, last, c]
                if c != 0:
                    seq.append(c)
                    last = c
        total[tuple(seq)] = np.logaddexp(total.get(tuple(seq), -np.inf), lp)
    return total


def test_greedy_recovers_known_path():
    t, v = 4, 5
    table = peaked_table(t, v, 5.0, [(0, 0, 1), (0, 1, 2), (2, 2, 3)])  # frame 0: 1, 2; frame 2: 3
    enc_p, pads = fake_enc(1, [t], t)
    tokens, token_pads, score = greedy_search(fake_fns(table), enc_p, pads, max_symbols_per_frame=3)
    assert strip(tokens, token_pads) == [[1, 2, 3]]
    assert tokens.shape == (1, t * 3) and tokens.dtype == jnp.int32
    np.testing.assert_allclose(score, [np_greedy(table, t, 3)[1]], rtol=1e-5)


@pytest.mark.parametrize("max_symbols", [1, 2, 3])
def test_greedy_matches_numpy_reference(max_symbols):
    rng = np.random.default_rng(max_symbols)
    t, v = 6, 5
    table = rng.normal(size=(t, v, v)).astype(np.float32) * 2.0
    lengths = [6, 4, 0]
    enc_p, pads = fake_enc(3, lengths, t)
    tokens, token_pads, scores = greedy_search(fake_fns(table), enc_p, pads, max_symbols)
    for b, n in enumerate(lengths):
        ref, ref_score = np_greedy(table, n, max_symbols)
        assert strip(tokens, token_pads)[b] == ref
        np.testing.assert_allclose(scores[b], ref_score, rtol=1e-5, atol=1e-5)


def test_greedy_max_len_truncates():
    t, v = 3, 4
    table = np.zeros((t, v, v), np.float32)
    table[:, :, 2] = 10.0  # always emit 2
    enc_p, pads = fake_enc(1, [t], t)
    tokens, token_pads, _ = greedy_search(fake_fns(table), enc_p, pads, 3, max_len=4)
    assert tokens.shape == (1, 4)
    assert strip(tokens, token_pads) == [[2, 2, 2, 2]]


def test_beam_equals_brute_force_over_alignments():
    rng = np.random.default_rng(0)
    t, v = 4, 3
    table = (rng.normal(size=(t, v, v)) * 1.5).astype(np.float32)
    n_seqs = sum((v - 1) ** n for n in range(t + 1))  # every sequence fits in the beam: 31
    lengths = [4, 3]
    enc_p, pads = fake_enc(2, lengths, t)
    tokens, token_pads, scores = beam_search(fake_fns(table), enc_p, pads, beam=n_seqs)
    assert tokens.shape == (2, n_seqs, t) and scores.shape == (2, n_seqs)
    hyps = strip(tokens, token_pads)
    for b, n in enumerate(lengths):
        ref = np_sequence_scores(table, n)
        ref_sorted = sorted(ref.items(), key=lambda kv: -kv[1])
        live = np.asarray(scores[b]) > NEG / 2
        assert live.sum() == len(ref)
        got = {tuple(h): float(s) for h, s, ok in zip(hyps[b], scores[b], live, strict=True) if ok}
        assert set(got) == set(ref)
        for seq, lp in ref.items():
            np.testing.assert_allclose(got[seq], lp, rtol=1e-5, atol=1e-5)
        assert tuple(hyps[b][0]) == ref_sorted[0][0]  # the best by merged probability
        # (total probability of all sequences is 1)
        np.testing.assert_allclose(jax.nn.logsumexp(scores[b][live]), 0.0, atol=1e-5)


def test_beam_small_beam_best_is_exact_for_peaked_table():
    rng = np.random.default_rng(1)
    t, v = 5, 4
    table = (rng.normal(size=(t, v, v)) * 4.0).astype(np.float32)
    enc_p, pads = fake_enc(1, [t], t)
    tokens, token_pads, scores = beam_search(fake_fns(table), enc_p, pads, beam=8)
    ref = np_sequence_scores(table, t)
    best = max(ref, key=ref.get)
    assert tuple(strip(tokens, token_pads)[0][0]) == best
    assert float(scores[0, 0]) <= ref[best] + 1e-5  # pruning can only lose alignments


def test_beam_one_equals_greedy_one_symbol_on_fake():
    rng = np.random.default_rng(2)
    t, v = 7, 6
    table = (rng.normal(size=(t, v, v)) * 2.0).astype(np.float32)
    enc_p, pads = fake_enc(2, [7, 5], t)
    g_tok, g_pad, g_sc = greedy_search(fake_fns(table), enc_p, pads, max_symbols_per_frame=1)
    b_tok, b_pad, b_sc = beam_search(fake_fns(table), enc_p, pads, beam=1)
    assert strip(g_tok, g_pad) == [h[0] for h in strip(b_tok, b_pad)]
    np.testing.assert_allclose(g_sc, b_sc[:, 0], rtol=1e-5)


def _check_against_brute_force(table, lengths, max_symbols, beam):
    t = table.shape[0]
    enc_p, pads = fake_enc(len(lengths), lengths, t)
    tokens, token_pads, scores = beam_search(
        fake_fns(table), enc_p, pads, beam=beam, max_symbols=max_symbols
    )
    assert tokens.shape == (len(lengths), beam, max_symbols * t)
    hyps = strip(tokens, token_pads)
    for b, n in enumerate(lengths):
        ref = np_sequence_scores_multi(table, n, max_symbols)
        live = np.asarray(scores[b]) > NEG / 2
        assert live.sum() == len(ref)
        got = {tuple(h): float(s) for h, s, ok in zip(hyps[b], scores[b], live, strict=True) if ok}
        assert set(got) == set(ref)
        for seq, lp in ref.items():
            np.testing.assert_allclose(got[seq], lp, rtol=1e-5, atol=1e-5)
        assert tuple(hyps[b][0]) == max(ref, key=ref.get)
        np.testing.assert_allclose(jax.nn.logsumexp(scores[b][live]), 0.0, atol=1e-5)


@pytest.mark.parametrize("max_symbols, t, v", [(2, 3, 3), (3, 2, 3), (2, 2, 4)])
def test_multi_symbol_beam_equals_brute_force_over_alignments(max_symbols, t, v):
    rng = np.random.default_rng(10 * max_symbols + v)
    table = (rng.normal(size=(t, v, v)) * 1.5).astype(np.float32)
    # every sequence (length <= S*T) fits in the beam, and so does every intermediate state
    n_seqs = sum((v - 1) ** n for n in range(max_symbols * t + 1))
    _check_against_brute_force(table, [t, t - 1, 0], max_symbols, n_seqs)


def test_multi_symbol_brute_force_with_one_symbol_is_the_modified_one():
    rng = np.random.default_rng(11)
    table = (rng.normal(size=(4, 3, 3)) * 1.5).astype(np.float32)
    multi, single = np_sequence_scores_multi(table, 4, 1), np_sequence_scores(table, 4)
    assert set(multi) == set(single)
    for seq, lp in single.items():
        np.testing.assert_allclose(multi[seq], lp, rtol=1e-6)
    _check_against_brute_force(table, [4, 2], 1, 31)


def test_multi_symbol_beam_needs_several_symbols_per_frame():
    t, v = 2, 4
    table = peaked_table(t, v, 8.0, [(0, 0, 1), (0, 1, 2), (1, 2, 3)])  # frame 0: 1, 2; frame 1: 3
    enc_p, pads = fake_enc(1, [t], t)
    fns = fake_fns(table)
    tok1, pad1, _ = beam_search(fns, enc_p, pads, beam=4, max_symbols=1)
    assert all(len(h) <= t for h in strip(tok1, pad1)[0])  # one symbol per frame: 3 cannot fit
    assert strip(tok1, pad1)[0][0] != [1, 2, 3]
    tok2, pad2, sc2 = beam_search(fns, enc_p, pads, beam=4, max_symbols=2)
    assert tok2.shape == (1, 4, 2 * t)
    assert strip(tok2, pad2)[0][0] == [1, 2, 3]
    ref = np_sequence_scores_multi(table, t, 2)
    assert ref[(1, 2, 3)] - 1e-3 < float(sc2[0, 0]) <= ref[(1, 2, 3)] + 1e-5  # pruning loses a bit
    g_tok, g_pad, _ = greedy_search(fns, enc_p, pads, max_symbols_per_frame=2)
    assert strip(g_tok, g_pad) == [[1, 2, 3]]


def test_multi_symbol_beam_max_len_and_bad_input():
    t, v = 3, 4
    table = np.zeros((t, v, v), np.float32)
    table[:, :, 2] = 10.0  # always emit 2
    enc_p, pads = fake_enc(1, [t], t)
    tokens, token_pads, scores = beam_search(
        fake_fns(table), enc_p, pads, beam=2, max_len=4, max_symbols=2
    )
    assert tokens.shape == (1, 2, 4)
    assert strip(tokens, token_pads)[0][0] == [2, 2, 2, 2]  # buffer full: blank only after
    assert np.all(np.asarray(scores) > NEG / 2)
    with pytest.raises(ValueError, match="max_symbols"):
        beam_search(fake_fns(table), enc_p, pads, max_symbols=0)


class _CountingJoint:
    """A fake joint that counts how often it is traced (called outside jit it is not used)."""

    def __init__(self):
        self.calls = 0

    def __call__(self, variables, enc_p, pred_p):
        self.calls += 1
        return _fake_joint(variables, enc_p, pred_p)


def test_no_retrace_on_same_shapes():
    """New weights, new encoder values and new lengths at the same shapes: each search is traced
    once (the counting joint runs only while tracing)."""
    rng = np.random.default_rng(3)
    t, v = 5, 4
    searches = (
        (greedy_search, {"max_symbols_per_frame": 2}),
        (beam_search, {"beam": 3}),
        (beam_search, {"beam": 3, "max_symbols": 2}),
    )
    for search, kw in searches:
        joint = _CountingJoint()
        enc_p, pads = fake_enc(2, [5, 3], t)
        table = rng.normal(size=(t, v, v)).astype(np.float32)
        jax.block_until_ready(search(fake_fns(table, joint), enc_p, pads, **kw))
        traced = joint.calls
        assert traced > 0
        for lengths in ([5, 3], [4, 1]):
            table2 = rng.normal(size=(t, v, v)).astype(np.float32)  # new weights, same shapes
            enc_p2, pads2 = fake_enc(2, lengths, t)
            out = search(fake_fns(table2, joint), enc_p2 * 1.5, pads2, **kw)
            jax.block_until_ready(out)
            assert joint.calls == traced, (search.__name__, kw, lengths)


def test_bad_inputs_raise():
    table = np.zeros((3, 4, 4), np.float32)
    enc_p, pads = fake_enc(1, [3], 3)
    with pytest.raises(ValueError, match="enc_p"):
        greedy_search(fake_fns(table), enc_p[0], pads)
    with pytest.raises(ValueError, match="enc_paddings"):
        beam_search(fake_fns(table), enc_p, pads[:, :2])
    with pytest.raises(ValueError, match="beam"):
        beam_search(fake_fns(table), enc_p, pads, beam=0)
    with pytest.raises(ValueError, match="max_symbols"):
        greedy_search(fake_fns(table), enc_p, pads, max_symbols_per_frame=0)


# ---- a tiny random Transducer ----


@pytest.fixture(scope="module")
def tiny():
    model = build_model(get_config("tiny").replace(vocab_size=16))
    variables = jax.jit(lambda rng: init_variables(model, rng))(jax.random.PRNGKey(0))
    feats = jax.random.normal(jax.random.PRNGKey(1), (3, 64, model.config.n_mels))
    feat_pads = (np.arange(64)[None] >= np.array([64, 44, 28])[:, None]).astype(np.float32)
    encode = jax.jit(lambda v, x, p: model.apply(v, x, p, method=Transducer.encode))
    enc_p, enc_pads = encode(variables, feats, feat_pads)
    lengths = [int(n) for n in np.sum(np.asarray(enc_pads) < 0.5, axis=1)]
    assert len(set(lengths)) == 3, lengths  # variable lengths
    return decoder_fns(model, variables), enc_p, enc_pads, lengths


def test_greedy_batched_equals_one_by_one(tiny):
    fns, enc_p, enc_pads, lengths = tiny
    tokens, token_pads, scores = greedy_search(fns, enc_p, enc_pads, max_symbols_per_frame=2)
    hyps = strip(tokens, token_pads)
    assert any(hyps), "random model emitted nothing: test would be vacuous"
    for b, n in enumerate(lengths):
        t1, p1, s1 = greedy_search(fns, enc_p[b : b + 1, :n], enc_pads[b : b + 1, :n], 2)
        assert strip(t1, p1)[0] == hyps[b]
        np.testing.assert_allclose(s1[0], scores[b], rtol=1e-4, atol=1e-4)


def test_beam_batched_equals_one_by_one(tiny):
    fns, enc_p, enc_pads, lengths = tiny
    tokens, token_pads, scores = beam_search(fns, enc_p, enc_pads, beam=4)
    hyps = strip(tokens, token_pads)
    for b, n in enumerate(lengths):
        t1, p1, s1 = beam_search(fns, enc_p[b : b + 1, :n], enc_pads[b : b + 1, :n], beam=4)
        assert strip(t1, p1)[0] == hyps[b]
        np.testing.assert_allclose(s1[0], scores[b], rtol=1e-4, atol=1e-4)


def test_beam_sorted_distinct_and_beam_one_is_greedy(tiny):
    fns, enc_p, enc_pads, _ = tiny
    tokens, token_pads, scores = beam_search(fns, enc_p, enc_pads, beam=4)
    scores = np.asarray(scores)
    assert np.all(np.diff(scores, axis=1) <= 0)
    assert np.all(scores > NEG / 2)  # plenty of distinct sequences: no dead slots
    for hyps in strip(tokens, token_pads):
        assert len({tuple(h) for h in hyps}) == len(hyps), hyps
    g_tok, g_pad, g_sc = greedy_search(fns, enc_p, enc_pads, max_symbols_per_frame=1)
    b_tok, b_pad, b_sc = beam_search(fns, enc_p, enc_pads, beam=1)
    assert strip(g_tok, g_pad) == [h[0] for h in strip(b_tok, b_pad)]
    np.testing.assert_allclose(g_sc, b_sc[:, 0], rtol=1e-5, atol=1e-5)


def np_modified_beam_search(fns: DecoderFns, enc_p, n_frames: int, beam: int):
    """Reference modified beam search (one symbol per frame) for one utterance, written
    independently of `asr.decoding.beam`: Python dicts of hypotheses keyed by their token tuple,
    scores in float64. Each frame, every hypothesis takes blank (stays) or one token; candidates
    spelling the same sequence are log-added, then the best `beam` are kept.

    enc_p: f32[T, J] projected encoder frames (the first n_frames are used).
    Returns [(tokens tuple, log-prob)], best first.
    """
    joint = jax.jit(fns.joint)
    pred_step = jax.jit(fns.pred_step)
    state, pred_p = initial_predictor(fns, 1)
    hyps = {(): (0.0, state, pred_p)}  # sequence -> (score, predictor state, predictor output)
    for t in range(n_frames):
        cands: dict[tuple, float] = {}
        for seq, (score, _, p) in hyps.items():
            logits = np.asarray(joint(fns.variables, enc_p[t][None], p)[0], np.float64)
            lp = log_softmax(logits)
            for v, lv in enumerate(lp):
                new = seq if v == fns.blank_id else (*seq, v)
                cands[new] = np.logaddexp(cands.get(new, -np.inf), score + lv)
        kept = sorted(cands, key=lambda q: -cands[q])[:beam]
        new_hyps = {}
        for seq in kept:
            if seq in hyps:  # took blank (possibly merged with an extension of a shorter one)
                new_hyps[seq] = (cands[seq], *hyps[seq][1:])
            else:  # a hypothesis extended by one token
                _, st, _ = hyps[seq[:-1]]
                st, p = pred_step(fns.variables, st, jnp.array([seq[-1]], jnp.int32))
                new_hyps[seq] = (cands[seq], st, p)
        hyps = new_hyps
    return sorted(((q, s) for q, (s, _, _) in hyps.items()), key=lambda qs: -qs[1])


def _with_blank_bias(fns: DecoderFns, bias: float) -> DecoderFns:
    """The same model with `bias` added to the blank logit (a random model hardly takes blank,
    so its hypotheses would never spell the same sequence and merging would go untested)."""
    v = jax.tree_util.tree_map(jnp.asarray, fns.variables)
    out = v["params"]["joiner"]["out"]
    out = dict(out, bias=out["bias"].at[fns.blank_id].add(bias))
    v = {**v, "params": {**v["params"], "joiner": {**v["params"]["joiner"], "out": out}}}
    return fns.replace(variables=v)


def test_beam_one_symbol_is_modified_beam_search(tiny):
    """max_symbols=1 (beam_search's default) equals the independent reference above: the same
    hypotheses in the same order, the same merged scores, and a buffer of one symbol per frame."""
    fns0, enc_p, enc_pads, lengths = tiny
    assert inspect.signature(beam_search).parameters["max_symbols"].default == 1
    for blank_bias, beam in ((0.0, 4), (3.0, 1), (3.0, 4)):
        fns = _with_blank_bias(fns0, blank_bias)
        tokens, token_pads, scores = beam_search(fns, enc_p, enc_pads, beam=beam, max_symbols=1)
        assert tokens.shape == (3, beam, enc_p.shape[1])  # buffer: one symbol per frame
        hyps = strip(tokens, token_pads)
        for b, n in enumerate(lengths):
            ref = np_modified_beam_search(fns, enc_p[b], n, beam)
            assert len(ref) == beam
            assert [tuple(h) for h in hyps[b]] == [q for q, _ in ref], (blank_bias, beam, b)
            np.testing.assert_allclose(scores[b], [s for _, s in ref], rtol=1e-4, atol=1e-4)
            assert any(len(q) < n for q, _ in ref) == (blank_bias > 0)  # blanks were taken


def test_recognizer_default_is_two_symbols_and_finds_what_one_misses():
    """The recognizer decodes with 2 symbols per frame by default (README measurements), which
    finds a path that needs two symbols in a frame; 1 symbol per frame cannot spell it."""
    s = DecodeSettings().beam_symbols_per_frame
    assert s == 2
    t, v = 3, 4
    table = peaked_table(t, v, 8.0, [(0, 0, 1), (0, 1, 2), (1, 2, 3)])  # frame 0: 1, 2; frame 1: 3
    enc_p, pads = fake_enc(1, [t], t)
    default = strip(*beam_search(fake_fns(table), enc_p, pads, beam=4, max_symbols=s)[:2])
    one = strip(*beam_search(fake_fns(table), enc_p, pads, beam=4, max_symbols=1)[:2])
    assert default[0][0] == [1, 2, 3] and one[0][0] != [1, 2, 3]


def test_multi_symbol_beam_batched_equals_one_by_one(tiny):
    fns, enc_p, enc_pads, lengths = tiny
    tokens, token_pads, scores = beam_search(fns, enc_p, enc_pads, beam=4, max_symbols=2)
    assert tokens.shape == (3, 4, 2 * enc_p.shape[1])
    scores = np.asarray(scores)
    assert np.all(np.diff(scores, axis=1) <= 0) and np.all(scores > NEG / 2)
    hyps = strip(tokens, token_pads)
    assert any(h[0] for h in hyps), "random model emitted nothing: test would be vacuous"
    for nbest in hyps:
        assert len({tuple(h) for h in nbest}) == len(nbest), nbest
    for b, n in enumerate(lengths):
        t1, p1, s1 = beam_search(
            fns, enc_p[b : b + 1, :n], enc_pads[b : b + 1, :n], beam=4, max_symbols=2
        )
        assert strip(t1, p1)[0] == hyps[b]
        np.testing.assert_allclose(s1[0], scores[b], rtol=1e-4, atol=1e-4)


def test_decoder_fns_of_a_model_hit_the_jit_cache(tiny):
    """Rebuilding DecoderFns for the same model (as the recognizer does per call) with new
    weights reuses the compiled greedy and beam searches: no new jit cache entry."""
    fns, enc_p, enc_pads, _ = tiny
    model = fns.joint.model
    other = jax.tree_util.tree_map(lambda x: x + 1.0, fns.variables)
    for search, jitted, kw in (
        (greedy_search, _greedy_search, {"max_symbols_per_frame": 2}),
        (beam_search, _beam_search, {"beam": 3, "max_symbols": 2}),
    ):
        jax.block_until_ready(search(fns, enc_p, enc_pads, **kw))
        compiled = jitted._cache_size()
        assert compiled > 0
        jax.block_until_ready(search(decoder_fns(model, other), enc_p, enc_pads, **kw))
        assert jitted._cache_size() == compiled, search.__name__


# ---- shallow fusion: context graphs ----

SEARCHES = (
    (greedy_search, {"max_symbols_per_frame": 2}),
    (beam_search, {"beam": 3, "max_symbols": 1}),
    (beam_search, {"beam": 3, "max_symbols": 2}),
)


def np_greedy_fused(table, n_frames, max_symbols, graph):
    """NumPy greedy over log-probs + graph deltas: (tokens, fused score, acoustic path score)."""
    goto, delta, finish = (np.asarray(a) for a in (graph.goto, graph.delta, graph.finish))
    last, state, out, score, am = 0, 0, [], 0.0, 0.0
    for t in range(n_frames):
        for _ in range(max_symbols):
            lp = log_softmax(table[t, last].astype(np.float64))
            k = int(np.argmax(lp + delta[state]))
            score += lp[k] + delta[state, k]
            am += lp[k]
            if k == 0:
                break
            out.append(k)
            last, state = k, int(goto[state, k])
    return out, score + finish[state], am


def test_no_fusion_and_empty_graph_are_bit_identical():
    rng = np.random.default_rng(20)
    t, v = 5, 4
    table = (rng.normal(size=(t, v, v)) * 2.0).astype(np.float32)
    enc_p, pads = fake_enc(2, [5, 3], t)
    fns = fake_fns(table)
    for search, kw in SEARCHES:
        plain = search(fns, enc_p, pads, **kw)
        none = search(fns, enc_p, pads, fusion=None, **kw)
        empty = stack_graphs([None] * 2, v)  # as the recognizer gives: one per utterance
        batched = search(fns, enc_p, pads, fusion=context_fusion(empty), **kw)
        for out in (none, batched):
            for a, b in zip(plain, out, strict=True):
                np.testing.assert_array_equal(a, b, err_msg=f"{search.__name__} {kw}")


def test_context_graph_switches_the_search_to_the_phrase():
    """The model weakly prefers "1 2" to "1 3"; a graph of "1 3" turns every search to it, a graph
    of an unrelated phrase changes nothing."""
    t, v = 3, 5
    table = np.zeros((t, v, v), np.float32)
    table[:, :, 0] = 5.0
    table[0, 0, 1] = 8.0  # frame 0: token 1
    table[1, 1, 0] = 0.0
    table[1, 1, 2], table[1, 1, 3] = 3.0, 2.6  # frame 1: 2 a little likelier than 3
    enc_p, pads = fake_enc(1, [t], t)
    fns = fake_fns(table)
    phrase = context_fusion(build_context_graph([[1, 3]], v, boost=1.5))
    other = context_fusion(build_context_graph([[4, 4, 2]], v, boost=1.5))

    def best(search, kw, fusion):
        """(best token list, its score) of the one utterance."""
        tokens, token_pads, scores = search(fns, enc_p, pads, fusion=fusion, **kw)
        if search is beam_search:
            return strip(tokens, token_pads)[0][0], float(scores[0, 0])
        return strip(tokens, token_pads)[0], float(scores[0])

    for search, kw in SEARCHES:
        plain, plain_score = best(search, kw, None)
        assert plain == [1, 2], (search.__name__, kw)
        fused, fused_score = best(search, kw, phrase)
        assert fused == [1, 3], (search.__name__, kw)
        assert fused_score > plain_score  # the completed phrase's boost is in the score
        # a phrase the best path never touches leaves it and its score as they were (in beam
        # search it may reorder runner-ups spelling a "4", whose pending boost is taken back)
        assert best(search, kw, other) == (plain, plain_score)


def assert_beam_scores(hyps, scores, ref: dict) -> None:
    """One utterance of a beam holding every sequence: its live hypotheses are exactly ref's
    sequences, each scored as ref says, the best first."""
    live = np.asarray(scores) > NEG / 2
    got = {tuple(h): float(s) for h, s, ok in zip(hyps, scores, live, strict=True) if ok}
    assert set(got) == set(ref)
    for seq, lp in ref.items():
        np.testing.assert_allclose(got[seq], lp, rtol=1e-5, atol=1e-4, err_msg=str(seq))
    assert tuple(hyps[0]) == max(ref, key=ref.get)


@pytest.mark.parametrize("max_symbols, t, v", [(1, 4, 3), (2, 3, 3)])
def test_fused_beam_scores_are_alignment_sums_plus_context_score(max_symbols, t, v):
    """Beam holding every sequence: each score is the log-sum over its alignments (brute force)
    plus the context score of its tokens (string matching), and they rank the hypotheses."""
    rng = np.random.default_rng(30 + max_symbols)
    table = (rng.normal(size=(t, v, v)) * 1.5).astype(np.float32)
    phrases, weights, boost = [[1, 2], [2, 2, 1], [1]], [1.0, 2.0, 0.5], 1.2
    graph = build_context_graph(phrases, v, boost=boost, weights=weights)
    n_seqs = sum((v - 1) ** n for n in range(max_symbols * t + 1))
    lengths = [t, t - 1]
    enc_p, pads = fake_enc(2, lengths, t)
    tokens, token_pads, scores = beam_search(
        fake_fns(table),
        enc_p,
        pads,
        beam=n_seqs,
        max_symbols=max_symbols,
        fusion=context_fusion(graph),
    )
    hyps = strip(tokens, token_pads)
    assert np.all(np.diff(np.asarray(scores), axis=1) <= 0)
    for b, n in enumerate(lengths):
        am = np_sequence_scores_multi(table, n, max_symbols)
        ref = {q: lp + context_score(phrases, q, boost, weights) for q, lp in am.items()}
        assert_beam_scores(hyps[b], scores[b], ref)
        assert max(ref, key=ref.get) != max(am, key=am.get) or b  # the boost changed the best


def _lm_joint(variables, enc_p, pred_p):
    """The fake joint plus a predictor-only term: with a zero encoder input it gives
    lm_table[last token], the model's internal LM."""
    return _fake_joint(variables, enc_p, pred_p) + pred_p @ variables["lm"]


def lm_fns(table: np.ndarray, lm_table: np.ndarray) -> DecoderFns:
    variables = {"table": jnp.asarray(table, jnp.float32), "lm": jnp.asarray(lm_table, jnp.float32)}
    return DecoderFns(_fake_init, _fake_step, _lm_joint, variables)


def np_lm_costs(lm_table, seq):
    """-log P_ILM of each token of seq: softmax of lm_table[last token] without blank (float64)."""
    out, last = [], 0
    for tok in seq:
        row = lm_table[last].astype(np.float64)[1:]
        out.append(-(row[tok - 1] - row.max() - np.log(np.exp(row - row.max()).sum())))
        last = tok
    return out


@pytest.mark.parametrize("max_symbols, t, v", [(1, 4, 3), (2, 3, 3)])
def test_lm_discounted_beam_scores_are_alignment_sums_plus_context_score(max_symbols, t, v):
    """With the internal-LM discount, each hypothesis of a beam holding every sequence scores the
    log-sum over its alignments (brute force, the fake model with its predictor-only term) plus
    `context_score` with the ILM costs of its tokens (teacher-forced in NumPy) times lambda."""
    rng = np.random.default_rng(130 + max_symbols)
    table = (rng.normal(size=(t, v, v)) * 1.5).astype(np.float32)
    lm_table = (rng.normal(size=(v, v)) * 2.0).astype(np.float32)
    phrases, weights, boost, lam = [[1, 2], [2, 2, 1], [1]], [1.0, 2.0, 0.5], 0.7, 0.6
    graph = build_context_graph(phrases, v, boost=boost, weights=weights, lm_weight=lam)
    n_seqs = sum((v - 1) ** n for n in range(max_symbols * t + 1))
    lengths = [t, t - 1]
    enc_p, pads = fake_enc(2, lengths, t)
    full = table + lm_table[None]  # the logits the searches see: joint(one_hot(t), one_hot(u))
    tokens, token_pads, scores = beam_search(
        lm_fns(table, lm_table),
        enc_p,
        pads,
        beam=n_seqs,
        max_symbols=max_symbols,
        fusion=context_fusion(stack_graphs([graph, graph], v)),
    )
    hyps = strip(tokens, token_pads)
    for b, n in enumerate(lengths):
        am = np_sequence_scores_multi(full, n, max_symbols)
        ref = {
            q: lp
            + context_score(
                phrases, q, boost, weights, lm_costs=np_lm_costs(lm_table, q), lm_weight=lam
            )
            for q, lp in am.items()
        }
        plain = {q: lp + context_score(phrases, q, boost, weights) for q, lp in am.items()}
        assert_beam_scores(hyps[b], scores[b], ref)
        assert any(abs(ref[q] - plain[q]) > 0.1 for q in ref)  # the discount counted


def brute_held_lm(phrases, boost, seq, costs, lam):
    """What a hypothesis spelling seq holds, by string matching: `context_score` (boosts and
    the discount of covered tokens) plus what its partial match has pending: the boosts of the
    longest suffix that is a proper prefix of a phrase (weights 1) and lambda times the costs of
    that suffix's tokens no completed occurrence covers."""
    total = context_score(phrases, seq, boost, lm_costs=costs, lm_weight=lam)
    covered = [False] * len(seq)
    for p in map(tuple, phrases):
        for i in range(len(seq) - len(p) + 1):
            if tuple(seq[i : i + len(p)]) == p:
                covered[i : i + len(p)] = [True] * len(p)
    for n in range(len(seq), 0, -1):  # longest suffix first
        suffix = tuple(seq[len(seq) - n :])
        if any(len(p) > n and tuple(p[:n]) == suffix for p in phrases):
            tail = range(len(seq) - n, len(seq))
            return total + boost * n + lam * sum(costs[i] for i in tail if not covered[i])
    return total


def np_greedy_lm(full, lm_table, n_frames, max_symbols, phrases, boost, lam):
    """NumPy greedy over log-probs + the change of `brute_held_lm`: (tokens, fused score)."""
    last, seq, score = 0, [], 0.0
    for t in range(n_frames):
        for _ in range(max_symbols):
            lp = log_softmax(full[t, last].astype(np.float64))
            before = brute_held_lm(phrases, boost, seq, np_lm_costs(lm_table, seq), lam)
            gain = np.zeros_like(lp)
            for k in range(1, len(lp)):
                nxt = [*seq, k]
                gain[k] = brute_held_lm(phrases, boost, nxt, np_lm_costs(lm_table, nxt), lam)
                gain[k] -= before
            k = int(np.argmax(lp + gain))
            score += lp[k] + gain[k]
            if k == 0:
                break
            seq.append(k)
            last = k
    costs = np_lm_costs(lm_table, seq)
    final = context_score(phrases, seq, boost, lm_costs=costs, lm_weight=lam)
    return seq, score - brute_held_lm(phrases, boost, seq, costs, lam) + final


@pytest.mark.parametrize("max_symbols", [1, 2])
def test_lm_discounted_greedy_matches_brute_force(max_symbols):
    """Greedy with the discount against a NumPy greedy whose fusion score is the change of what
    a hypothesis holds, computed by string matching from scratch at every step."""
    rng = np.random.default_rng(150 + max_symbols)
    t, v, lam, boost = 6, 5, 1.0, 0.5
    changed = 0
    for _ in range(6):
        table = rng.normal(size=(t, v, v)).astype(np.float32) * 2.0
        lm_table = (rng.normal(size=(v, v)) * 3.0).astype(np.float32)
        phrases = [[int(x) for x in rng.integers(1, v, rng.integers(1, 4))] for _ in range(3)]
        fns = lm_fns(table, lm_table)
        lengths = [6, 4]
        enc_p, pads = fake_enc(2, lengths, t)
        plain_g = build_context_graph(phrases, v, boost=boost)
        lm_g = build_context_graph(phrases, v, boost=boost, lm_weight=lam)
        plain = greedy_search(fns, enc_p, pads, max_symbols, fusion=context_fusion(plain_g))
        fused = greedy_search(fns, enc_p, pads, max_symbols, fusion=context_fusion(lm_g))
        full = table + lm_table[None]
        for b, n in enumerate(lengths):
            ref, ref_score = np_greedy_lm(full, lm_table, n, max_symbols, phrases, boost, lam)
            assert strip(fused[0], fused[1])[b] == ref
            np.testing.assert_allclose(fused[2][b], ref_score, rtol=1e-5, atol=1e-4)
            changed += ref != strip(plain[0], plain[1])[b]
    assert changed > 0, "the discount never changed greedy's output: test would be vacuous"


@pytest.mark.parametrize("max_symbols", [1, 2, 3])
def test_fused_greedy_matches_numpy_reference(max_symbols):
    rng = np.random.default_rng(40 + max_symbols)
    t, v = 6, 5
    changed = 0
    for _ in range(4):
        table = rng.normal(size=(t, v, v)).astype(np.float32) * 2.0
        phrases = [[int(x) for x in rng.integers(1, v, rng.integers(1, 4))] for _ in range(3)]
        graph = build_context_graph(phrases, v, boost=2.0)
        lengths = [6, 4, 0]
        enc_p, pads = fake_enc(3, lengths, t)
        fused = greedy_search(
            fake_fns(table), enc_p, pads, max_symbols, fusion=context_fusion(graph)
        )
        for b, n in enumerate(lengths):
            ref, ref_score, am = np_greedy_fused(table, n, max_symbols, graph)
            assert strip(fused[0], fused[1])[b] == ref
            np.testing.assert_allclose(fused[2][b], ref_score, rtol=1e-5, atol=1e-4)
            np.testing.assert_allclose(  # score = path log-prob + context score of the tokens
                fused[2][b], am + context_score(phrases, ref, 2.0), rtol=1e-5, atol=1e-4
            )
            changed += ref != np_greedy(table, n, max_symbols)[0]
    assert changed > 0, "the graphs never changed greedy's output: test would be vacuous"


def test_fused_beam_one_equals_fused_greedy_one_symbol():
    rng = np.random.default_rng(50)
    t, v = 7, 6
    table = (rng.normal(size=(t, v, v)) * 2.0).astype(np.float32)
    enc_p, pads = fake_enc(2, [7, 5], t)
    graph = stack_graphs(
        [build_context_graph([[1, 2], [3, 4, 5]], v), build_context_graph([[2, 2]], v)], v
    )
    fusion = context_fusion(graph)
    g_tok, g_pad, g_sc = greedy_search(fake_fns(table), enc_p, pads, 1, fusion=fusion)
    b_tok, b_pad, b_sc = beam_search(fake_fns(table), enc_p, pads, beam=1, fusion=fusion)
    assert strip(g_tok, g_pad) == [h[0] for h in strip(b_tok, b_pad)]
    np.testing.assert_allclose(g_sc, b_sc[:, 0], rtol=1e-5)


def test_per_utterance_graphs_only_bias_their_own_utterance():
    t, v = 3, 5
    table = np.zeros((t, v, v), np.float32)
    table[:, :, 0] = 5.0
    table[0, 0, 1] = 8.0
    table[1, 1, 0] = 0.0
    table[1, 1, 2], table[1, 1, 3], table[1, 1, 4] = 3.0, 2.6, 2.6
    graphs = [build_context_graph([[1, 3]], v), None, build_context_graph([[1, 4]], v)]
    enc_p, pads = fake_enc(3, [3, 3, 2], t)
    fns = fake_fns(table)
    for search, kw in SEARCHES:
        out = search(fns, enc_p, pads, fusion=context_fusion(stack_graphs(graphs, v)), **kw)
        hyps = strip(out[0], out[1])
        best = [h[0] if search is beam_search else h for h in hyps]
        assert best == [[1, 3], [1, 2], [1, 4]], (search.__name__, kw)
        for b, g in enumerate(graphs):
            fusion = None if g is None else context_fusion(g)
            one = search(fns, enc_p[b : b + 1], pads[b : b + 1], fusion=fusion, **kw)
            assert strip(one[0], one[1])[0] == hyps[b]
            np.testing.assert_allclose(one[2][0], out[2][b], rtol=1e-6)


def test_new_context_lists_do_not_retrace():
    """A new list (other phrases, weights, boost) of the same size bucket, new weights, new
    lengths: each search with fusion is traced once."""
    rng = np.random.default_rng(60)
    t, v = 5, 6
    lists = [
        ([[1, 2]], None, 1.5),
        ([[3, 4, 5], [3, 1]], [2.0, 1.0], 0.7),
        ([[5] * 10, [2, 2, 2]], None, 3.0),
    ]
    for search, kw in SEARCHES:
        joint = _CountingJoint()
        traced = None
        for i, (phrases, weights, boost) in enumerate(lists):
            graph = build_context_graph(phrases, v, boost=boost, weights=weights)
            graphs = stack_graphs([graph, None], v)
            table = rng.normal(size=(t, v, v)).astype(np.float32)
            enc_p, pads = fake_enc(2, [[5, 3], [4, 1], [2, 5]][i], t)
            jax.block_until_ready(
                search(fake_fns(table, joint), enc_p, pads, fusion=context_fusion(graphs), **kw)
            )
            traced = traced or joint.calls
            assert joint.calls == traced > 0, (search.__name__, kw, i)
    # a list past the bucket (20 states) is a new shape: one more trace (last search above)
    big = stack_graphs([build_context_graph([list(range(1, 6)) * 4], v), None], v)
    assert big.goto.shape[1] > graphs.goto.shape[1]
    search(fake_fns(table, joint), enc_p, pads, fusion=context_fusion(big), **kw)
    assert joint.calls > traced


def test_fusion_under_jit_and_vmap():
    """The graph is an ordinary traced argument: jit over it, and vmap over utterances with one
    unbatched graph each, give the batched result."""
    rng = np.random.default_rng(70)
    t, v = 5, 5
    table = (rng.normal(size=(t, v, v)) * 2.0).astype(np.float32)
    fns = fake_fns(table)
    enc_p, pads = fake_enc(2, [5, 4], t)
    graphs = stack_graphs(
        [build_context_graph([[1, 2], [3]], v), build_context_graph([[4, 4, 1]], v)], v
    )
    for search, kw in SEARCHES[::2]:  # greedy and beam search with two symbols per frame
        ref = search(fns, enc_p, pads, fusion=context_fusion(graphs), **kw)
        jitted = jax.jit(
            lambda g, e, p, search=search, kw=kw: search(fns, e, p, fusion=context_fusion(g), **kw)
        )
        mapped = jax.vmap(
            lambda g, e, p, search=search, kw=kw: search(
                fns, e[None], p[None], fusion=context_fusion(g), **kw
            )
        )
        outs = [mapped(graphs, enc_p, pads)]
        if search is beam_search:  # (as the recognizer calls it)
            outs.append(jitted(graphs, enc_p, pads))
        for out in outs:
            for a, b in zip(ref, out, strict=True):
                np.testing.assert_allclose(a, np.reshape(b, a.shape), rtol=1e-6)


def test_fusion_bad_inputs_raise():
    table = np.zeros((3, 4, 4), np.float32)
    enc_p, pads = fake_enc(2, [3, 2], 3)
    fns = fake_fns(table)
    wrong_vocab = context_fusion(build_context_graph([[1]], 7))
    wrong_batch = context_fusion(stack_graphs([None] * 3, 4))
    for search, kw in SEARCHES:
        with pytest.raises(ValueError, match=r"fusion scores have shape \(\d+, 7\), expected"):
            search(fns, enc_p, pads, fusion=wrong_vocab, **kw)
        with pytest.raises(ValueError, match="context graph batch 3 != 2 utterances"):
            search(fns, enc_p, pads, fusion=wrong_batch, **kw)
        with pytest.raises(ValueError, match="fusion must be a Fusion"):
            search(fns, enc_p, pads, fusion=build_context_graph([[1]], 4), **kw)


def test_fused_beam_on_a_model_batched_equals_one_by_one(tiny):
    """A random Transducer, two symbols per frame, a list for two of the three utterances built
    from runner-up hypotheses: the boosted phrase wins, and batched equals one by one."""
    fns, enc_p, enc_pads, lengths = tiny
    kw = {"beam": 4, "max_symbols": 2}
    plain = strip(*beam_search(fns, enc_p, enc_pads, **kw)[:2])
    phrases = [h[-1][-3:] for h in plain]  # the tail of the last hypothesis of each
    graphs = [build_context_graph([phrases[0]], 16, boost=3.0), None]
    graphs.append(build_context_graph([phrases[2]], 16, boost=3.0))
    fusion = context_fusion(stack_graphs(graphs, 16))
    tokens, token_pads, scores = beam_search(fns, enc_p, enc_pads, fusion=fusion, **kw)
    hyps = strip(tokens, token_pads)
    for b in (0, 2):
        best = hyps[b][0]
        assert any(best[i : i + 3] == phrases[b] for i in range(len(best))), (best, phrases[b])
    assert hyps[1] == plain[1]
    for b, n in enumerate(lengths):
        one = beam_search(
            fns,
            enc_p[b : b + 1, :n],
            enc_pads[b : b + 1, :n],
            fusion=None if graphs[b] is None else context_fusion(graphs[b]),
            **kw,
        )
        assert strip(one[0], one[1])[0] == hyps[b]
        np.testing.assert_allclose(one[2][0], scores[b], rtol=1e-4, atol=1e-4)
