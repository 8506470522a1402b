"""Decoding a transducer's encoder output into token ids: greedy and modified beam search.

Decoders run on `DecoderFns` (the predictor and joiner as pure functions of the variables; build
it with `decoder_fns(model, variables)`), return fixed-shape padded token arrays, and leave
detokenization to the caller; `strip` turns the arrays into Python lists on the host. Both
searches take an optional `Fusion` (per-hypothesis extra state and scores added to the model's):
`context_fusion(build_context_graph(...))` biases them toward a context list (shallow fusion).

References: Graves 2012, "Sequence Transduction with Recurrent Neural Networks"; Kang et al. 2023,
"Fast and Parallel Decoding for Transducer"; Zhao et al. 2019, "Shallow-Fusion End-to-End
Contextual Biasing".
"""

from asr.decoding.beam import BeamState, beam_search
from asr.decoding.context_graph import (
    STATE_BUCKETS,
    ContextGraph,
    build_context_graph,
    context_fusion,
    context_score,
    empty_context_graph,
    stack_graphs,
)
from asr.decoding.greedy import (
    NEG,
    DecoderFns,
    Fusion,
    GreedyState,
    decoder_fns,
    greedy_frames,
    greedy_init,
    greedy_result,
    greedy_search,
    strip,
)

__all__ = [
    "NEG",
    "STATE_BUCKETS",
    "BeamState",
    "ContextGraph",
    "DecoderFns",
    "Fusion",
    "GreedyState",
    "beam_search",
    "build_context_graph",
    "context_fusion",
    "context_score",
    "decoder_fns",
    "empty_context_graph",
    "greedy_frames",
    "greedy_init",
    "greedy_result",
    "greedy_search",
    "stack_graphs",
    "strip",
]
