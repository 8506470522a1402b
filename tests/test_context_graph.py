"""Tests of asr.decoding.context_graph: the dense Aho-Corasick context graph against string matching.

The automaton is run in plain Python over its arrays and compared, token by token, with a
brute-force reference written over token strings (no automaton): the score held after each
token is the locked score of every phrase occurrence completed so far (`context_score`) plus the
pending score of the longest suffix that is still a partial match; at the end the graph's total
equals `context_score`. Random phrase sets (hypothesis and seeded NumPy), then the documented
cases one by one (failed matches, completions, back-to-back, overlapping and nested phrases,
weights, blank), padding buckets, batching, the Fusion callbacks and input errors.

References: Aho and Corasick 1975, "Efficient String Matching: An Aid to Bibliographic Search";
icefall `icefall/context_graph.py`.
"""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from asr.decoding import (
    STATE_BUCKETS,
    ContextGraph,
    build_context_graph,
    context_fusion,
    context_score,
    empty_context_graph,
    stack_graphs,
)


def run_graph(graph: ContextGraph, tokens, state: int = 0):
    """Python walk over the arrays: (score held after each token, total with finish, state)."""
    goto, delta, finish = (np.asarray(a) for a in (graph.goto, graph.delta, graph.finish))
    held, total = [], 0.0
    for t in tokens:
        total += float(delta[state, t])
        state = int(goto[state, t])
        held.append(total)
    return held, total + float(finish[state]), state


def brute_held(phrases, weights, boost, tokens, blank_id=0):
    """Reference by string matching: after each token, the locked score of the completed
    occurrences plus the pending score of the longest suffix that is a proper prefix of a
    phrase (each of its prefixes counted with the largest weight of the phrases it starts)."""
    best: dict[tuple, float] = {}
    for p, w in zip(phrases, weights, strict=True):
        best[tuple(p)] = max(w, best.get(tuple(p), 0.0))
    seq, held = [], []
    for t in tokens:
        if t != blank_id:
            seq.append(int(t))
        locked = context_score(phrases, seq, boost, weights, blank_id=blank_id)
        pending = 0.0
        for n in range(len(seq), 0, -1):  # longest suffix first
            s = tuple(seq[len(seq) - n :])
            if any(len(p) > n and p[:n] == s for p in best):
                pending = sum(
                    boost * max(w for p, w in best.items() if p[:i] == s[:i])
                    for i in range(1, n + 1)
                )
                break
        held.append(locked + pending)
    return held


def check_against_reference(phrases, weights, boost, tokens, v, blank_id=0):
    graph = build_context_graph(phrases, v, boost=boost, weights=weights, blank_id=blank_id)
    held, total, _ = run_graph(graph, tokens)
    ref = brute_held(phrases, weights, boost, tokens, blank_id)
    np.testing.assert_allclose(held, ref, rtol=1e-5, atol=1e-4, err_msg=f"{phrases} {tokens}")
    want = context_score(phrases, tokens, boost, weights, blank_id=blank_id)
    np.testing.assert_allclose(total, want, rtol=1e-5, atol=1e-4, err_msg=f"{phrases} {tokens}")


@st.composite
def phrase_sets(draw):
    v = draw(st.integers(2, 6))  # tokens 1..v-1, blank 0
    tok = st.integers(1, v - 1)
    phrases = draw(st.lists(st.lists(tok, min_size=1, max_size=4), max_size=6))
    weights = draw(
        st.lists(
            st.sampled_from([0.5, 1.0, 2.0, 3.0]), min_size=len(phrases), max_size=len(phrases)
        )
    )
    tokens = draw(st.lists(st.integers(0, v - 1), max_size=20))
    boost = draw(st.sampled_from([0.5, 1.5, 4.0]))
    return phrases, weights, boost, tokens, v


@settings(max_examples=300, deadline=None)
@given(phrase_sets())
def test_matches_string_matching_reference(case):
    check_against_reference(*case)


def test_matches_reference_on_seeded_sets_with_shared_prefixes():
    """Larger lists whose phrases share prefixes and suffixes, and token sequences made of
    pieces of phrases (so matches, near misses and overlaps are frequent)."""
    rng = np.random.default_rng(0)
    for _ in range(30):
        v = int(rng.integers(4, 12))
        stems = [list(rng.integers(1, v, rng.integers(1, 4))) for _ in range(4)]
        phrases = [
            [int(x) for x in stems[rng.integers(4)] + list(rng.integers(1, v, rng.integers(0, 3)))]
            for _ in range(int(rng.integers(1, 12)))
        ]
        weights = [float(w) for w in rng.uniform(0.2, 3.0, len(phrases))]
        for _ in range(10):
            tokens = []
            while len(tokens) < 25:
                p = phrases[rng.integers(len(phrases))]
                tokens += p[: rng.integers(1, len(p) + 1)] + list(rng.integers(0, v, 2))
            check_against_reference(phrases, weights, 1.5, [int(t) for t in tokens], v)


B = 1.5  # boost of the cases below


def held_and_total(phrases, tokens, weights=None, v=8):
    graph = build_context_graph(phrases, v, boost=B, weights=weights)
    held, total, _ = run_graph(graph, tokens)
    return held, total


def test_failed_partial_match_nets_zero():
    held, total = held_and_total([[1, 2, 3]], [1, 2, 4])
    np.testing.assert_allclose(held, [B, 2 * B, 0.0])
    assert total == 0.0
    held, total = held_and_total([[1, 2, 3]], [1, 2])  # unfinished at the end: finish takes back
    np.testing.assert_allclose(held, [B, 2 * B])
    assert total == 0.0
    # a failure that lands on another partial match keeps that one's boost
    held, total = held_and_total([[1, 2, 3], [2, 4, 5]], [1, 2, 4])
    np.testing.assert_allclose(held, [B, 2 * B, 2 * B])  # "2 4" pending
    assert total == 0.0


def test_completion_is_locked_in_and_back_to_back_names_count():
    held, total = held_and_total([[1, 2, 3]], [1, 2, 3, 4, 5])
    np.testing.assert_allclose(held, [B, 2 * B, 3 * B, 3 * B, 3 * B])
    assert total == pytest.approx(3 * B)
    held, total = held_and_total([[1, 2]], [1, 2, 1, 2, 1])
    np.testing.assert_allclose(held, [B, 2 * B, 3 * B, 4 * B, 5 * B])
    assert total == pytest.approx(4 * B)
    held, total = held_and_total([[1, 1]], [1, 1, 1])  # overlapping occurrences: both
    np.testing.assert_allclose(held, [B, 3 * B, 5 * B])
    assert total == pytest.approx(4 * B)


def test_overlapping_and_nested_phrases_all_count():
    # overlapping "1 2" and "2 3": "1 2 3" earns both; after "1 2", "2" is pending for "2 3"
    held, total = held_and_total([[1, 2], [2, 3]], [1, 2, 3])
    np.testing.assert_allclose(held, [B, 3 * B, 4 * B])
    assert total == pytest.approx(4 * B)
    # nested "1 2" inside "1 2 3": a completed phrase does not stop the longer one
    held, total = held_and_total([[1, 2], [1, 2, 3]], [1, 2, 3])
    np.testing.assert_allclose(held, [B, 4 * B, 5 * B])
    assert total == pytest.approx(5 * B)
    held, total = held_and_total([[1, 2], [1, 2, 3]], [1, 2, 4])  # the longer one fails
    np.testing.assert_allclose(held, [B, 4 * B, 2 * B])
    assert total == pytest.approx(2 * B)
    # a phrase that is a suffix of another: both
    held, total = held_and_total([[1, 2], [2]], [1, 2])
    assert total == pytest.approx(3 * B)


def test_weights_scale_boosts_and_shared_prefixes_pend_the_largest():
    held, total = held_and_total([[1, 2], [1, 3]], [1, 2], weights=[1.0, 3.0])
    np.testing.assert_allclose(held, [3 * B, 2 * B])  # "1" pending at the best weight
    assert total == pytest.approx(2 * B)  # the completed phrase's own weight
    _, total = held_and_total([[1, 3]], [1, 3], weights=[0.5])
    assert total == pytest.approx(B)
    _, total = held_and_total([[1, 3], [1, 3]], [1, 3], weights=[0.5, 2.0])  # duplicate: max
    assert total == pytest.approx(4 * B)


@pytest.mark.parametrize("blank_id", [0, 2])
def test_blank_self_loops_score_nothing(blank_id):
    phrases = [[1, 3], [3, 4, 1]]
    graph = build_context_graph(phrases, 5, boost=B, blank_id=blank_id)
    n = graph.num_states
    np.testing.assert_array_equal(graph.goto[:, blank_id], np.arange(n))
    np.testing.assert_array_equal(graph.delta[:, blank_id], 0.0)
    seq = [1, blank_id, 3, blank_id, blank_id, 3, 4, blank_id, 1]
    check_against_reference(phrases, [1.0, 1.0], B, seq, 5, blank_id=blank_id)
    assert run_graph(graph, seq)[1] == pytest.approx(5 * B)
    with pytest.raises(ValueError, match="blank"):
        build_context_graph([[1, blank_id]], 5, blank_id=blank_id)


def test_state_count_and_padding_buckets():
    graph = build_context_graph([[1, 2, 3], [1, 2, 4], [5]], 8)
    # states: root and the proper prefixes "1", "1 2" (completed phrases with nothing after
    # them are their failure state); padded to the first bucket
    assert graph.goto.shape == (STATE_BUCKETS[0], 8) and graph.goto.dtype == np.int32
    assert graph.delta.shape == (STATE_BUCKETS[0], 8) and graph.delta.dtype == np.float32
    assert graph.finish.shape == (STATE_BUCKETS[0],) and graph.finish.dtype == np.float32
    used = 3
    assert np.all(graph.goto[:used] < used)
    pad = graph.goto[used:]
    np.testing.assert_array_equal(pad[:, 1:], 0)  # padded states go to the root
    np.testing.assert_array_equal(pad[:, 0], np.arange(used, STATE_BUCKETS[0]))  # blank stays
    np.testing.assert_array_equal(graph.delta[used:], 0.0)
    np.testing.assert_array_equal(graph.finish[used:], 0.0)
    # the smallest bucket holding the states; explicit sizes
    chain = [list(range(1, 17))]  # 16 tokens: root + 15 proper prefixes = 16 states
    assert build_context_graph(chain, 20).num_states == 16
    assert build_context_graph([list(range(1, 18))], 20).num_states == 64
    assert build_context_graph(chain, 20, num_states=20).num_states == 20
    with pytest.raises(ValueError, match="needs 16 states, got num_states=15"):
        build_context_graph(chain, 20, num_states=15)
    # padding changes nothing
    a = build_context_graph(chain, 20)
    b = build_context_graph(chain, 20, num_states=100)
    seq = list(range(1, 17)) + [1, 2, 0, 3, 1]
    assert run_graph(a, seq)[:2] == run_graph(b, seq)[:2]


def test_too_many_states_for_the_largest_bucket():
    long = [[1 + i % 3 for i in range(STATE_BUCKETS[-1] + 1)]]  # one chain past the last bucket
    with pytest.raises(ValueError, match=f"needs {STATE_BUCKETS[-1] + 1} states.*largest bucket"):
        build_context_graph(long, 4)
    assert build_context_graph(long, 4, num_states=STATE_BUCKETS[-1] + 1).num_states == (
        STATE_BUCKETS[-1] + 1
    )


def test_empty_graph():
    graph = empty_context_graph(6)
    assert graph.goto.shape == (STATE_BUCKETS[0], 6)
    np.testing.assert_array_equal(graph.delta, 0.0)
    np.testing.assert_array_equal(graph.finish, 0.0)
    np.testing.assert_array_equal(graph.goto[:, 0], np.arange(STATE_BUCKETS[0]))
    np.testing.assert_array_equal(graph.goto[:, 1:], 0)
    assert run_graph(graph, [1, 2, 3])[:2] == ([0.0] * 3, 0.0)
    assert build_context_graph([], 6).goto.tolist() == graph.goto.tolist()


def test_stack_graphs_pads_to_the_largest_bucket():
    small = build_context_graph([[1, 2]], 30)
    big = build_context_graph([list(range(1, 21))], 30)  # 20 states -> bucket 64
    stacked = stack_graphs([small, None, big], 30)
    assert stacked.goto.shape == (3, 64, 30) and stacked.delta.shape == (3, 64, 30)
    assert stacked.finish.shape == (3, 64)
    np.testing.assert_array_equal(stacked.goto[:, :, 0], np.broadcast_to(np.arange(64), (3, 64)))
    rng = np.random.default_rng(0)
    for _ in range(20):
        seq = [int(t) for t in rng.integers(0, 22, 30)]
        for i, g in enumerate([small, None, big]):
            row = ContextGraph(stacked.goto[i], stacked.delta[i], stacked.finish[i])
            ref = run_graph(g, seq)[:2] if g is not None else ([0.0] * len(seq), 0.0)
            assert run_graph(row, seq)[:2] == ref
    assert stack_graphs([None, None], 30).goto.shape == (2, STATE_BUCKETS[0], 30)
    with pytest.raises(ValueError, match="vocab size 30, expected 31"):
        stack_graphs([small], 31)
    with pytest.raises(ValueError, match="at least one"):
        stack_graphs([], 30)
    with pytest.raises(ValueError, match="unbatched"):
        stack_graphs([stacked], 30)


# ---- the internal-LM discount (lm_weight > 0) ----


def brute_held_lm(phrases, weights, boost, seq, costs, lam):
    """By string matching: `context_score` with the costs (boosts of every occurrence and
    lambda * cost of every token some occurrence covers) plus what the longest suffix that is a
    proper prefix of a phrase holds pending: its boosts (as `brute_held`) and lambda * the costs
    of its tokens that no completed occurrence covers."""
    total = context_score(phrases, seq, boost, weights, lm_costs=costs, lm_weight=lam)
    pending = (
        brute_held(phrases, weights, boost, seq)[-1] - context_score(phrases, seq, boost, weights)
        if seq
        else 0.0
    )
    covered = [False] * len(seq)
    for p in map(tuple, phrases):
        for i in range(len(seq) - len(p) + 1):
            if tuple(seq[i : i + len(p)]) == p:
                covered[i : i + len(p)] = [True] * len(p)
    for n in range(len(seq), 0, -1):
        suffix = tuple(seq[len(seq) - n :])
        if any(len(p) > n and tuple(p[:n]) == suffix for p in phrases):
            pending += lam * sum(costs[i] for i in range(len(seq) - n, len(seq)) if not covered[i])
            break
    return total + pending


def run_fusion_lm(graph, tokens, costs):
    """The graph's Fusion callbacks (jitted, one hypothesis row) over tokens, where token i's
    internal-LM log-prob row gives it -costs[i]: (held after each token, total with finalize)."""
    fusion = context_fusion(graph)
    utts = jnp.zeros(1, jnp.int32)
    v = graph.vocab_size
    step = jax.jit(
        lambda f, e, lm, t: (f.scores(f.params, e, utts, lm), f.advance(f.params, e, t, utts, lm))
    )
    extra, held, total = fusion.init(fusion.params, utts, 1), [], 0.0
    for tok, c in zip(tokens, costs, strict=True):
        lm = jnp.full((1, v), -50.0).at[0, tok].set(-c).at[0, 0].set(0.0)
        scores, extra = step(fusion, extra, lm, jnp.array([tok], jnp.int32))
        total += float(scores[0, tok])
        held.append(total)
    return held, total + float(jax.jit(fusion.finalize)(fusion.params, extra, utts)[0])


@st.composite
def lm_cases(draw):
    phrases, weights, boost, _, v = draw(phrase_sets())
    tokens = draw(st.lists(st.integers(1, v - 1), max_size=14))  # blank keeps everything as is
    costs = draw(
        st.lists(
            st.sampled_from([0.0, 0.3, 1.0, 2.5, 7.0]), min_size=len(tokens), max_size=len(tokens)
        )
    )
    lam = draw(st.sampled_from([0.25, 1.0]))
    return phrases, weights, boost, tokens, costs, lam, v


@settings(max_examples=60, deadline=None)
@given(lm_cases())
def test_lm_discount_matches_string_matching_reference(case):
    phrases, weights, boost, tokens, costs, lam, v = case
    graph = build_context_graph(phrases, v, boost=boost, weights=weights, lm_weight=lam)
    held, total = run_fusion_lm(graph, tokens, costs)
    ref = [
        brute_held_lm(phrases, weights, boost, tokens[: i + 1], costs[: i + 1], lam)
        for i in range(len(tokens))
    ]
    np.testing.assert_allclose(held, ref, rtol=1e-5, atol=1e-4, err_msg=f"{phrases} {tokens}")
    want = context_score(phrases, tokens, boost, weights, lm_costs=costs, lm_weight=lam)
    np.testing.assert_allclose(total, want, rtol=1e-5, atol=1e-4, err_msg=f"{phrases} {tokens}")


def test_lm_discount_cases():
    """A failed match gives back its discount; a completed name keeps it; a token inside two
    occurrences keeps its discount once; without phrases the discount is nothing."""
    g = build_context_graph([[1, 2, 3], [3, 4]], 6, boost=B, lm_weight=0.5)
    held, total = run_fusion_lm(g, [1, 2, 5], [2.0, 4.0, 1.0])
    np.testing.assert_allclose(held, [B + 1.0, 2 * B + 3.0, 0.0], atol=1e-5)
    assert abs(total) < 1e-5
    held, total = run_fusion_lm(g, [1, 2, 3, 4], [2.0, 4.0, 6.0, 8.0])  # "1 2 3" and "3 4"
    np.testing.assert_allclose(total, 5 * B + 0.5 * (2 + 4 + 6 + 8), atol=1e-5)  # 3 counted once
    held, total = run_fusion_lm(g, [1, 2], [2.0, 4.0])  # unfinished at the end: taken back
    assert abs(total) < 1e-5 and held[-1] > 0
    plain = build_context_graph([[1, 2, 3], [3, 4]], 6, boost=B)
    assert not plain.uses_lm and plain.done is None and g.uses_lm
    np.testing.assert_array_equal(plain.goto, g.goto)
    np.testing.assert_array_equal(plain.delta, g.delta)
    empty = empty_context_graph(6, lm=True)
    held, total = run_fusion_lm(empty, [1, 3, 4], [3.0, 3.0, 3.0])
    assert held == [0.0, 0.0, 0.0] and total == 0.0


def test_stack_graphs_mixes_lists_with_and_without_the_discount():
    lm = build_context_graph([[1, 2]], 8, lm_weight=0.4)
    plain = build_context_graph([[3, 4, 5]], 8)
    stacked = stack_graphs([lm, None, plain], 8)
    assert stacked.uses_lm
    assert stacked.done.shape == stacked.goto.shape and stacked.done.dtype == np.uint8
    assert stacked.depth.shape == stacked.finish.shape
    np.testing.assert_allclose(stacked.lm_weight, [0.4, 0.0, 0.0])
    assert stacked.done[0, 1, 2] == 2 and stacked.depth[0, 1] == 1  # "1" then 2 completes "1 2"
    assert not stack_graphs([plain, None], 8).uses_lm
    with pytest.raises(ValueError, match="at most 128"):
        build_context_graph([[1] * 129], 8, lm_weight=0.5)
    build_context_graph([[1] * 129], 8)  # no limit without the discount
    with pytest.raises(ValueError, match="lm_weight must be a finite number >= 0"):
        build_context_graph([[1]], 8, lm_weight=-0.1)
    with pytest.raises(ValueError, match="pass lm"):
        from asr.decoding.greedy import fusion_scores

        f = context_fusion(lm)
        utts = jnp.zeros(1, jnp.int32)
        fusion_scores(f, f.init(f.params, utts, 1), utts, jnp.zeros((1, 8)))


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"phrases": [[1], []]}, "phrase 1 is empty"),
        ({"phrases": [[1, 9]]}, r"phrase 0: token id 9 is not an int in \[0, 8\)"),
        ({"phrases": [[-1]]}, "not an int in"),
        ({"phrases": [[1.0]]}, "not an int in"),
        ({"phrases": [[1]], "boost": 0.0}, "boost must be a finite number > 0, got 0.0"),
        ({"phrases": [[1]], "boost": float("nan")}, "boost"),
        ({"phrases": [[1]], "weights": [1.0, 2.0]}, "1 phrases but 2 weights"),
        ({"phrases": [[1], [2]], "weights": [1.0, -1.0]}, "phrase 1: weight must be"),
        ({"phrases": [[1]], "weights": [float("inf")]}, "weight must be"),
        ({"phrases": [[1]], "vocab_size": 1}, "vocab_size"),
        ({"phrases": [[1]], "blank_id": 8}, "blank_id"),
    ],
)
def test_bad_input_raises(kwargs, match):
    kwargs = {"vocab_size": 8, **kwargs}
    with pytest.raises(ValueError, match=match):
        build_context_graph(**kwargs)


def test_builds_a_thousand_phrases_fast():
    """1000 phrases of ~5 tokens (V = 128): a few thousand states, built in well under 100 ms
    (the bound here is loose for a loaded CI machine)."""
    rng = np.random.default_rng(0)
    phrases = [[int(t) for t in rng.integers(1, 128, rng.integers(3, 8))] for _ in range(1000)]
    times = []
    for _ in range(3):
        t0 = time.perf_counter()
        graph = build_context_graph(phrases, 128)
        times.append(time.perf_counter() - t0)
    assert graph.num_states == 4096
    assert min(times) < 0.5, times


def test_context_fusion_callbacks_gather_rows():
    g1 = build_context_graph([[1, 2], [2, 3]], 5)
    g2 = build_context_graph([[3, 3, 4]], 5)
    stacked = stack_graphs([g1, g2], 5)
    fusion = context_fusion(stacked)
    utts = jnp.array([0, 0, 1, 1], jnp.int32)  # B = 2 utterances, K = 2 rows each

    @jax.jit
    def step(fusion, state, tokens):
        scores = fusion.scores(fusion.params, state, utts)
        new = fusion.advance(fusion.params, state, tokens, utts)
        return scores, new, fusion.finalize(fusion.params, new, utts)

    state = fusion.init(fusion.params, utts, 2)
    assert state.shape == (4,) and state.dtype == jnp.int32
    for tokens in ([1, 2, 3, 3], [2, 3, 3, 1], [3, 0, 4, 3]):
        scores, new, fin = step(fusion, state, jnp.array(tokens, jnp.int32))
        for r, (u, s) in enumerate(zip([0, 0, 1, 1], np.asarray(state), strict=True)):
            np.testing.assert_array_equal(scores[r], stacked.delta[u, s])
            assert new[r] == stacked.goto[u, s, tokens[r]]
            assert fin[r] == stacked.finish[u, new[r]]
        state = new
    shared = context_fusion(g1)  # an unbatched graph serves every utterance
    np.testing.assert_array_equal(
        shared.scores(g1, jnp.zeros(3, jnp.int32), utts[:3]), np.broadcast_to(g1.delta[0], (3, 5))
    )
    with pytest.raises(ValueError, match="context graph batch 2 != 3 utterances"):
        fusion.init(fusion.params, jnp.zeros(6, jnp.int32), 3)
    with pytest.raises(ValueError, match="expected goto"):
        context_fusion(ContextGraph(g1.goto, g1.delta[:, :3], g1.finish))
