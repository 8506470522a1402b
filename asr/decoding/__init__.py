"""Decoding a transducer's encoder output into token ids: greedy and modified beam search.

Decoders run on `DecoderFns` (the predictor and joiner as pure functions of the variables; build
it with `decoder_fns(model, variables)`), return fixed-shape padded token arrays, and leave
detokenization to the caller; `strip` turns the arrays into Python lists on the host.

References: Graves 2012, "Sequence Transduction with Recurrent Neural Networks"; Kang et al. 2023,
"Fast and Parallel Decoding for Transducer".
"""

from asr.decoding.beam import BeamState, beam_search
from asr.decoding.greedy import NEG, DecoderFns, decoder_fns, greedy_search, strip

__all__ = [
    "NEG",
    "BeamState",
    "DecoderFns",
    "beam_search",
    "decoder_fns",
    "greedy_search",
    "strip",
]
