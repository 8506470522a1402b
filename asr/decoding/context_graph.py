"""Shallow-fusion context biasing: an Aho-Corasick graph of token phrases, compiled to a dense DFA.

Owns `ContextGraph` (the automaton as arrays), `build_context_graph` (host-side build from the
tokenized phrases of a context list, `asr.context.tokenize_phrases`), `empty_context_graph`,
`stack_graphs` (one graph per utterance of a batch), `context_fusion` (the graph as a
`Fusion` for `greedy_search` / `beam_search`) and `context_score` (the brute-force reference of
the total a graph adds to a hypothesis, by string matching: the specification, used by tests).

Scores. With `boost` b and phrase weights w(p) (default 1):

* Every occurrence of a phrase p in the emitted token sequence earns b * w(p) * len(p) once it
  is complete, and keeps it ("locked in"). Occurrences may overlap or nest, and all count: with
  phrases "ab" and "bc", "abc" earns both; with "ab" and "abc", "abc" earns both; with "ab"
  and "b", "ab" earns both; back-to-back names "ab ab" earn twice. This is `context_score`.
* While a phrase is being spelled, each token on the partial match earns its boost at once, so
  a beam keeps the hypothesis before the name is complete: the pending score of a partial match
  s (a proper prefix of some phrase) is potential(s) = sum over i <= len(s) of
  b * max{w(p) : p starts with s[:i]} (a prefix shared by several phrases counts with the
  largest weight). The search runs on the automaton state: the longest suffix of the tokens so
  far that is a proper prefix of some phrase (Aho-Corasick's state, where a state that no phrase
  extends, a completed phrase with nothing after it, is replaced by its failure state, the
  longest suffix that can still grow).
* The score a hypothesis holds after each token is locked + potential(state), so the delta of a
  token is  out(token) + potential(new state) - potential(old state), where out is the sum of
  b * w(p) * len(p) over the phrases completed by that token. A partial match that fails
  follows failure links to the longest suffix that is still a partial match, and the delta
  takes back the boost of the abandoned part: a failed partial match nets zero. A completed
  phrase ending a longer partial match ("ab" inside "abc") keeps the longer match pending.
* At the end of the utterance `finish[state] = -potential(state)` takes back what is pending,
  so the total added to a finished hypothesis is exactly `context_score` of its tokens.
* Blank never changes the state and scores 0 (`goto[:, blank] = arange(N)`); phrases may not
  contain blank.

Internal-LM discount (`lm_weight` lambda > 0). A transducer's predictor is an internal language
model: trained on the training sentences, it gives a name it never saw a very low probability
(measured on held-out-name requests: the right sentence trails the one the beam found by a
median 18 nats, and without the internal LM's scores it is ahead in 17 of 30; README "Context
biasing", which also measures what the discount achieves). So a token on a phrase also earns
lambda times its cost under the internal LM, c = -log P_ILM(token | tokens before) (the joiner
with the encoder input set to zero, blank left out: Meng et al. 2021, "Internal Language Model
Estimation for Domain-Adaptive End-to-End Speech Recognition"), which the search passes in
(`Fusion.uses_lm`).
Scores, on top of the boosts above:

* A token covered by at least one completed phrase occurrence keeps lambda * c once (a union:
  nested or overlapping occurrences do not count a token twice, unlike the boosts; the discount
  undoes the LM's penalty on a name's tokens, it is not a reward per match). This is
  `context_score(..., lm_costs=, lm_weight=)`.
* While a phrase is being spelled, the tokens of the partial match that no completed occurrence
  covers yet earn their lambda * c at once, and a failed match gives back what the tokens it
  abandons earned, as the boosts do; the end of the utterance takes back what is pending.
* State per hypothesis: the automaton state, the last `LM_SPAN` tokens' lambda * c, and which of
  them a completed occurrence covers. `done[n, v]`, the length of the longest phrase completed
  by token v from state n (it covers that many tokens; shorter ones completed at once are its
  suffixes), and `depth[n]`, the length of state n's partial match, say which earned amounts
  are locked in and which are pending.

Arrays. N states (state 0 the root, the empty match), padded with unused states up to one of
`STATE_BUCKETS` so that a new list of similar size reuses the compiled search; padded states go
to the root on every token (blank: stay) and score 0. The device-side step is one gather: row
`delta[state]` holds the scores of every next token, `goto[state, token]` the next state.
Memory is 8 * N * V bytes per graph (1000 phrases of ~5 tokens: N = 4096, V = 128: 4 MiB).

References: Aho and Corasick 1975, "Efficient String Matching: An Aid to Bibliographic Search";
Hall et al. 2015, "Composition-based on-the-fly rescoring for salient n-gram biasing"; Zhao et
al. 2019, "Shallow-Fusion End-to-End Contextual Biasing"; icefall `icefall/context_graph.py`
(the token-level graph with failure arcs and per-token boosts taken back on failure).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from asr.decoding.greedy import Fusion

# Tokens of internal-LM discounts a hypothesis keeps: phrases up to this long with lm_weight > 0.
LM_SPAN = 128

# Sizes N the state axis is padded to; a list needs (root + proper prefixes of its phrases)
# states, about 0.8 * total tokens. Past the last bucket, pass num_states explicitly.
STATE_BUCKETS = (16, 64, 256, 1024, 4096, 16384)


@flax.struct.dataclass
class ContextGraph:
    """A dense Aho-Corasick automaton over tokens (module docstring); optional leading batch [B].

    A pytree of arrays only (no static fields), so graphs of equal shapes share a compiled search.
    """

    goto: np.ndarray | jax.Array  # int32[..., N, V]: next state after token v from state n
    delta: np.ndarray | jax.Array  # f32[..., N, V]: score added when taking token v from state n
    finish: np.ndarray | jax.Array  # f32[..., N]: added at the end in state n (-pending score)
    # internal-LM discount (module docstring), all three None without one (lm_weight 0):
    done: np.ndarray | jax.Array | None = (
        None  # uint8[..., N, V]: longest phrase completed (0 none)
    )
    depth: np.ndarray | jax.Array | None = None  # int32[..., N]: tokens of the partial match
    lm_weight: np.ndarray | jax.Array | None = None  # f32[...]: lambda
    blank_id: int = flax.struct.field(pytree_node=False, default=0)

    @property
    def uses_lm(self) -> bool:
        return self.done is not None

    @property
    def num_states(self) -> int:
        return int(np.shape(self.goto)[-2])

    @property
    def vocab_size(self) -> int:
        return int(np.shape(self.goto)[-1])


def _bucket(n: int) -> int | None:
    """The smallest of STATE_BUCKETS holding n states, None past the largest."""
    return next((s for s in STATE_BUCKETS if s >= n), None)


def _check_vocab(vocab_size: int, blank_id: int) -> None:
    if not (isinstance(vocab_size, (int, np.integer)) and vocab_size >= 2):
        raise ValueError(f"vocab_size must be an int >= 2 (blank and a token), got {vocab_size!r}")
    if not 0 <= blank_id < vocab_size:
        raise ValueError(f"blank_id must be in [0, {vocab_size}), got {blank_id}")


def build_context_graph(
    phrases: Sequence[Sequence[int]],
    vocab_size: int,
    boost: float = 1.5,
    weights: Sequence[float] | None = None,
    blank_id: int = 0,
    num_states: int | None = None,
    lm_weight: float = 0.0,
) -> ContextGraph:
    """The context graph of tokenized phrases (NumPy arrays; semantics in the module docstring).

    Args:
      phrases: token ids of each phrase (`asr.context.tokenize_phrases`): non-empty lists of ids
        in [0, vocab_size), none equal to blank_id. A phrase given twice keeps its largest weight.
        No phrases: the empty graph.
      vocab_size: V, the model's output size (blank included).
      boost: b > 0, log-score per token of a phrase (times its weight).
      weights: w(p) > 0 per phrase (default 1.0 each), scaling its boost.
      blank_id: the blank symbol (state self-loop, score 0).
      num_states: N to pad to; default the smallest of STATE_BUCKETS that fits.
      lm_weight: lambda >= 0, the share of the internal LM's cost of a phrase's tokens given
        back (module docstring); 0: no discount (and no `done` / `depth` arrays). Phrases may
        then have at most LM_SPAN tokens.

    Returns:
      ContextGraph with goto int32[N, V], delta f32[N, V], finish f32[N], and with lm_weight >
      0 done uint8[N, V], depth int32[N], lm_weight f32[].
    """
    _check_vocab(vocab_size, blank_id)
    if not (isinstance(boost, (int, float, np.number)) and math.isfinite(boost) and boost > 0):
        raise ValueError(f"boost must be a finite number > 0, got {boost!r}")
    if not (
        isinstance(lm_weight, (int, float, np.number))
        and math.isfinite(lm_weight)
        and lm_weight >= 0
    ):
        raise ValueError(f"lm_weight must be a finite number >= 0, got {lm_weight!r}")
    phrases = [list(p) for p in phrases]
    if weights is None:
        weights = [1.0] * len(phrases)
    weights = [float(w) for w in weights]
    if len(weights) != len(phrases):
        raise ValueError(f"{len(phrases)} phrases but {len(weights)} weights")

    # Trie. Node 0 is the root; children[n]: token -> node.
    children: list[dict[int, int]] = [{}]
    parent, token, depth = [0], [0], [0]
    max_w = [0.0]  # largest weight of the phrases through each node
    end_w = [0.0]  # largest weight of the phrases ending at each node (0: none)
    for i, (p, w) in enumerate(zip(phrases, weights, strict=True)):
        if not (math.isfinite(w) and w > 0):
            raise ValueError(f"phrase {i}: weight must be a finite number > 0, got {w}")
        if not p:
            raise ValueError(f"phrase {i} is empty: every phrase needs at least one token")
        node = 0
        for t in p:
            if not (isinstance(t, (int, np.integer)) and 0 <= t < vocab_size):
                raise ValueError(f"phrase {i}: token id {t!r} is not an int in [0, {vocab_size})")
            if t == blank_id:
                raise ValueError(f"phrase {i}: token id {t} is the blank id")
            nxt = children[node].get(int(t))
            if nxt is None:
                nxt = len(children)
                children[node][int(t)] = nxt
                children.append({})
                parent.append(node)
                token.append(int(t))
                depth.append(depth[node] + 1)
                max_w.append(0.0)
                end_w.append(0.0)
            node = nxt
            max_w[node] = max(max_w[node], w)
        end_w[node] = max(end_w[node], w)
        if lm_weight > 0 and len(p) > LM_SPAN:
            raise ValueError(
                f"phrase {i} has {len(p)} tokens: with lm_weight > 0 phrases may have at most "
                f"{LM_SPAN}"
            )

    # DFA states: the root and every node with children (a proper prefix of some phrase).
    m = len(children)
    has_children = np.array([bool(c) for c in children])
    has_children[0] = True
    keep = np.flatnonzero(has_children)  # -> [N']: trie node of each state
    needed = len(keep)
    if num_states is None:
        num_states = _bucket(needed)
        if num_states is None:
            raise ValueError(
                f"the context graph needs {needed} states, more than the largest bucket "
                f"{STATE_BUCKETS[-1]}: shorten the list or pass num_states"
            )
    elif num_states < needed:
        raise ValueError(f"the context graph needs {needed} states, got num_states={num_states}")

    # Level by level (breadth-first, vectorized over a level): failure links, the full goto
    # over all trie nodes (failures resolved), pending scores, and the locked score of the
    # phrases completed on reaching each node (its own and, through failure links, suffixes).
    parent, token, depth = (np.asarray(a, np.int64) for a in (parent, token, depth))
    max_w, end_w = np.asarray(max_w), np.asarray(end_w)
    full = np.zeros((m, vocab_size), np.int64)  # -> [M, V]: trie node after each token
    fail = np.zeros(m, np.int64)  # longest proper suffix that is a trie node
    potential = np.zeros(m, np.float64)  # pending score of the partial match of each node
    out = np.zeros(m, np.float64)  # locked score earned on reaching each node
    eff = np.zeros(m, np.int64)  # the state of a node: itself if it has children, else eff[fail]
    longest = np.zeros(m, np.int64)  # the longest phrase ending at a node (itself or a suffix)
    levels = [np.flatnonzero(depth == d) for d in range(int(depth.max()) + 1)]
    for d, nodes in enumerate(levels):
        if d:
            f = fail[nodes]
            full[nodes] = full[f]
            out[nodes] = boost * end_w[nodes] * d + out[f]
            eff[nodes] = np.where(has_children[nodes], nodes, eff[f])
            longest[nodes] = np.where(end_w[nodes] > 0, d, longest[f])
            potential[nodes] = potential[parent[nodes]] + boost * max_w[nodes]
        if d + 1 < len(levels):
            kids = levels[d + 1]
            pk, tk = parent[kids], token[kids]
            fail[kids] = np.where(pk == 0, 0, full[fail[pk], tk])
            full[pk, tk] = kids

    index = np.zeros(m, np.int64)
    index[keep] = np.arange(needed)
    nxt = full[keep]  # -> [N', V] trie node reached
    new = eff[nxt]  # -> [N', V] state node
    goto = np.zeros((num_states, vocab_size), np.int32)
    delta = np.zeros((num_states, vocab_size), np.float32)
    finish = np.zeros((num_states,), np.float32)
    goto[:needed] = index[new]
    delta[:needed] = out[nxt] + potential[new] - potential[keep][:, None]
    finish[:needed] = 0.0 - potential[keep]
    goto[:, blank_id] = np.arange(num_states)
    delta[:, blank_id] = 0.0
    if lm_weight == 0:
        return ContextGraph(goto=goto, delta=delta, finish=finish, blank_id=blank_id)
    done = np.zeros((num_states, vocab_size), np.uint8)
    depth_of = np.zeros(num_states, np.int32)
    done[:needed] = longest[nxt]
    done[:, blank_id] = 0
    depth_of[:needed] = depth[keep]
    return ContextGraph(
        goto=goto,
        delta=delta,
        finish=finish,
        done=done,
        depth=depth_of,
        lm_weight=np.float32(lm_weight),
        blank_id=blank_id,
    )


def empty_context_graph(
    vocab_size: int, num_states: int = STATE_BUCKETS[0], blank_id: int = 0, lm: bool = False
):
    """The graph of no phrases: the root only, every score 0 (decoding as without a graph);
    `lm`: with the (all-zero) internal-LM discount arrays, to stack with graphs that have them."""
    _check_vocab(vocab_size, blank_id)
    g = build_context_graph([], vocab_size, blank_id=blank_id, num_states=num_states)
    if not lm:
        return g
    return g.replace(
        done=np.zeros(g.goto.shape, np.uint8),
        depth=np.zeros(g.goto.shape[:1], np.int32),
        lm_weight=np.float32(0.0),
    )


def _pad(graph: ContextGraph, n: int, blank_id: int) -> ContextGraph:
    """An unbatched graph padded with unused states up to n (to the root on tokens, blank: stay)."""
    goto, delta, finish = (np.asarray(a) for a in (graph.goto, graph.delta, graph.finish))
    n0, v = goto.shape
    pad_goto = np.zeros((n - n0, v), np.int32)
    pad_goto[:, blank_id] = np.arange(n0, n)
    out = ContextGraph(
        goto=np.concatenate([goto.astype(np.int32), pad_goto]),
        delta=np.concatenate([delta.astype(np.float32), np.zeros((n - n0, v), np.float32)]),
        finish=np.concatenate([finish.astype(np.float32), np.zeros(n - n0, np.float32)]),
        blank_id=blank_id,
    )
    if not graph.uses_lm:
        return out
    return out.replace(
        done=np.concatenate([np.asarray(graph.done, np.uint8), np.zeros((n - n0, v), np.uint8)]),
        depth=np.concatenate([np.asarray(graph.depth, np.int32), np.zeros(n - n0, np.int32)]),
        lm_weight=np.float32(graph.lm_weight),
    )


def stack_graphs(
    graphs: Sequence[ContextGraph | None], vocab_size: int, blank_id: int = 0
) -> ContextGraph:
    """One unbatched graph per utterance -> a batched ContextGraph [B, N, V] (NumPy).

    N is the smallest of STATE_BUCKETS holding the largest graph (or the largest N itself past
    the last bucket); None stands for no list (the empty graph: that utterance is unbiased).
    When any graph has the internal-LM discount, the others get it at weight 0 (the stacked
    graph has `done` [B, N, V], `depth` [B, N] and `lm_weight` [B]).
    """
    _check_vocab(vocab_size, blank_id)
    graphs = list(graphs)
    if not graphs:
        raise ValueError("stack_graphs: expected at least one graph (or None), got none")
    for i, g in enumerate(graphs):
        if g is None:
            continue
        if np.ndim(g.goto) != 2:
            raise ValueError(
                f"graph {i}: expected an unbatched graph [N, V], got shape {np.shape(g.goto)}"
            )
        if g.vocab_size != vocab_size:
            raise ValueError(f"graph {i}: vocab size {g.vocab_size}, expected {vocab_size}")
    largest = max((g.num_states for g in graphs if g is not None), default=STATE_BUCKETS[0])
    n = _bucket(largest) or largest
    lm = any(g is not None and g.uses_lm for g in graphs)
    empty = empty_context_graph(vocab_size, 1, blank_id=blank_id, lm=lm)

    def with_lm(g: ContextGraph) -> ContextGraph:  # a graph without the discount, at weight 0
        if not lm or g.uses_lm:
            return g
        return g.replace(
            done=np.zeros(np.shape(g.goto), np.uint8),
            depth=np.zeros(np.shape(g.goto)[:1], np.int32),
            lm_weight=np.float32(0.0),
        )

    padded = [_pad(with_lm(empty if g is None else g), n, blank_id) for g in graphs]
    out = ContextGraph(
        goto=np.stack([g.goto for g in padded]),
        delta=np.stack([g.delta for g in padded]),
        finish=np.stack([g.finish for g in padded]),
        blank_id=blank_id,
    )
    if not lm:
        return out
    return out.replace(
        done=np.stack([g.done for g in padded]),
        depth=np.stack([g.depth for g in padded]),
        lm_weight=np.stack([np.float32(g.lm_weight) for g in padded]),
    )


def context_score(
    phrases: Sequence[Sequence[int]],
    tokens: Sequence[int],
    boost: float = 1.5,
    weights: Sequence[float] | None = None,
    blank_id: int = 0,
    lm_costs: Sequence[float] | None = None,
    lm_weight: float = 0.0,
) -> float:
    """Reference, by string matching (not the automaton): the total a graph of `phrases` adds to
    a finished hypothesis spelling `tokens` (blanks ignored): the sum over every occurrence of
    every distinct phrase p of boost * w(p) * len(p), overlapping and nested ones included;
    plus, with `lm_costs` (one per non-blank token: its -log P_ILM), lm_weight times the sum of
    the costs of the tokens that at least one occurrence covers."""
    weights = [1.0] * len(phrases) if weights is None else list(weights)
    best: dict[tuple[int, ...], float] = {}
    for p, w in zip(phrases, weights, strict=True):
        best[tuple(p)] = max(float(w), best.get(tuple(p), 0.0))
    seq = [int(t) for t in tokens if t != blank_id]
    total = 0.0
    covered = [False] * len(seq)
    for p, w in best.items():
        starts = [i for i in range(len(seq) - len(p) + 1) if tuple(seq[i : i + len(p)]) == p]
        total += len(starts) * boost * w * len(p)
        for i in starts:
            covered[i : i + len(p)] = [True] * len(p)
    if lm_costs is not None:
        if len(lm_costs) != len(seq):
            raise ValueError(f"{len(seq)} tokens but {len(lm_costs)} lm_costs")
        total += lm_weight * sum(float(c) for c, k in zip(lm_costs, covered, strict=True) if k)
    return total


# ---- the graph as a Fusion for the searches: one int32 state per hypothesis row ----


def _rows(graph: ContextGraph, utts: jax.Array, state: jax.Array) -> tuple:
    """Index of each row's graph and state: batched graphs pick the row's utterance."""
    return (state,) if np.ndim(graph.goto) == 2 else (utts, state)


def _init(graph: ContextGraph, utts: jax.Array, batch: int):
    if np.ndim(graph.goto) == 3 and np.shape(graph.goto)[0] != batch:
        raise ValueError(
            f"context graph batch {np.shape(graph.goto)[0]} != {batch} utterances decoded"
        )
    state = jnp.zeros(jnp.shape(utts), jnp.int32)  # every hypothesis starts at the root
    if not graph.uses_lm:
        return state
    n = jnp.shape(utts)[0]
    # (state, the last LM_SPAN tokens' lambda * c newest first, and which of them a completed
    # occurrence covers)
    return state, jnp.zeros((n, LM_SPAN), jnp.float32), jnp.zeros((n, LM_SPAN), bool)


def _lm_weight(graph: ContextGraph, utts: jax.Array) -> jax.Array:
    w = jnp.asarray(graph.lm_weight, jnp.float32)
    return w[utts] if w.ndim else jnp.broadcast_to(w, jnp.shape(utts))  # -> [n]


def _uncovered_sums(hist: jax.Array, cov: jax.Array) -> jax.Array:
    """f32[n, D+1]: entry k is what the newest k tokens earned that no completed occurrence
    covers yet (hist f32[n, D], cov bool[n, D], newest first)."""
    return jnp.pad(jnp.cumsum(jnp.where(cov, 0.0, hist), axis=1), ((0, 0), (1, 0)))


def _take(sums: jax.Array, k: jax.Array) -> jax.Array:
    """sums f32[n, D+1] at k int32[n, ...] in [0, D] -> f32[n, ...]."""
    flat = k.reshape(k.shape[0], -1)
    return jnp.take_along_axis(sums, flat, axis=1).reshape(k.shape)


def _scores(graph: ContextGraph, extra, utts: jax.Array, lm=None) -> jax.Array:
    if not graph.uses_lm:
        return jnp.asarray(graph.delta)[_rows(graph, utts, extra)]  # -> [n, V]: one row each
    state, hist, cov = extra
    rows = _rows(graph, utts, state)
    delta = jnp.asarray(graph.delta)[rows]  # -> [n, V]
    goto = jnp.asarray(graph.goto)[rows]  # -> [n, V]
    done = jnp.asarray(graph.done)[rows].astype(jnp.int32)  # -> [n, V]: L, 0 = none
    depth = jnp.asarray(graph.depth)
    d_new = depth[goto] if depth.ndim == 1 else depth[utts[:, None], goto]  # -> [n, V]
    gain = _lm_weight(graph, utts)[:, None] * -lm  # -> [n, V]: lambda * c of each next token

    sums = _uncovered_sums(hist, cov)  # once per step, gathered below

    def older(k):  # uncovered earnings of the newest k - 1 tokens before the new one
        return _take(sums, jnp.maximum(k - 1, 0))

    # a completion covers the new token and the L - 1 before it; the partial match (d_new
    # tokens, the new one included) holds what the tokens no completion covers earned
    locked = jnp.where(done > 0, gain + older(done), 0.0)
    pending = jnp.where(
        done > 0,
        jnp.where(d_new > done, older(d_new) - older(done), 0.0),
        jnp.where(d_new > 0, gain + older(d_new), 0.0),
    )
    before = _take(sums, depth[rows][:, None])  # -> [n, 1]
    lm_delta = locked + pending - before
    blank = jnp.arange(delta.shape[-1]) == graph.blank_id
    return delta + jnp.where(blank, 0.0, lm_delta)


def _advance(graph: ContextGraph, extra, tokens: jax.Array, utts: jax.Array, lm=None):
    if not graph.uses_lm:
        return jnp.asarray(graph.goto)[(*_rows(graph, utts, extra), tokens)]  # -> [n]
    state, hist, cov = extra
    rows = (*_rows(graph, utts, state), tokens)
    gain = _lm_weight(graph, utts) * -jnp.take_along_axis(lm, tokens[:, None], axis=1)[:, 0]
    hist = jnp.concatenate([gain[:, None], hist[:, :-1]], axis=1)
    done = jnp.asarray(graph.done)[rows].astype(jnp.int32)  # -> [n]
    cov = jnp.concatenate([jnp.zeros_like(cov[:, :1]), cov[:, :-1]], axis=1)
    cov = cov | (jnp.arange(LM_SPAN)[None] < done[:, None])
    return jnp.asarray(graph.goto)[rows], hist, cov


def _finalize(graph: ContextGraph, extra, utts: jax.Array) -> jax.Array:
    if not graph.uses_lm:
        return jnp.asarray(graph.finish)[_rows(graph, utts, extra)]  # -> [n]
    state, hist, cov = extra
    rows = _rows(graph, utts, state)
    pending = _take(_uncovered_sums(hist, cov), jnp.asarray(graph.depth)[rows][:, None])[:, 0]
    return jnp.asarray(graph.finish)[rows] - pending


def context_fusion(graph: ContextGraph) -> Fusion:
    """The graph as a shallow-fusion `Fusion`: per hypothesis an int32 state (root at the start),
    the scores of the next tokens `delta[state]`, and `finish[state]` at the end; a graph with
    the internal-LM discount (`uses_lm`) also keeps the last LM_SPAN discounts and which of those
    tokens a completed phrase covers, and reads the search's internal-LM log-probs.

    graph: unbatched [N, V] (one list for every utterance) or batched [B, N, V] (row r of the
    search decodes utterance utts[r] and reads its graph); works on traced graphs inside jit.
    """
    shapes = tuple(np.shape(a) for a in (graph.goto, graph.delta, graph.finish))
    if (
        len(shapes[0]) not in (2, 3)
        or shapes[1] != shapes[0]
        or shapes[2] != shapes[0][:-1]
        or shapes[0][-2] < 1
    ):
        raise ValueError(
            "context graph: expected goto [..., N, V], delta [..., N, V], finish [..., N] with an "
            f"optional batch axis, got shapes {shapes}"
        )
    lm_shapes = (np.shape(graph.done), np.shape(graph.depth), np.shape(graph.lm_weight))
    if graph.uses_lm and lm_shapes != (shapes[0], shapes[2], shapes[2][:-1]):
        raise ValueError(
            "context graph: expected done [..., N, V], depth [..., N], lm_weight [...] like goto, "
            f"got shapes {lm_shapes} for goto {shapes[0]}"
        )
    return Fusion(
        init=_init,
        scores=_scores,
        advance=_advance,
        finalize=_finalize,
        params=graph,
        uses_lm=graph.uses_lm,
    )
