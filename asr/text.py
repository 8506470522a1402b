"""Text normalization shared by training targets, evaluation references and hypotheses.

Lower case; every character that is not a letter, digit or apostrophe becomes a space;
apostrophes are kept inside words (`what's`, `o'clock`) and dropped at word edges; runs of
spaces collapse. Reference and hypothesis go through the same function before WER.
"""

from __future__ import annotations

import re

_NON_WORD = re.compile(r"[^a-z0-9']+")
_EDGE_APOS = re.compile(r"(?<![a-z0-9])'|'(?![a-z0-9])")


def normalize_text(text: str) -> str:
    """'Computer, what's the time?' -> "computer what's the time"."""
    t = text.lower().replace("\u2019", "'")
    t = _NON_WORD.sub(" ", t)
    t = _EDGE_APOS.sub(" ", t)
    return " ".join(t.split())


def word_error_rate(references: list[str], hypotheses: list[str]) -> dict:
    """Corpus WER via jiwer on normalized text -> {wer, substitutions, deletions, insertions, words}."""
    import jiwer

    if len(references) != len(hypotheses):
        raise ValueError(f"{len(references)} references but {len(hypotheses)} hypotheses")
    refs = [normalize_text(r) for r in references]
    hyps = [normalize_text(h) for h in hypotheses]
    keep = [i for i, r in enumerate(refs) if r]
    if not keep:
        raise ValueError("all references are empty after normalization")
    refs = [refs[i] for i in keep]
    hyps = [hyps[i] for i in keep]
    out = jiwer.process_words(refs, hyps)
    words = sum(len(r.split()) for r in refs)
    return {
        "wer": out.wer,
        "substitutions": out.substitutions,
        "deletions": out.deletions,
        "insertions": out.insertions,
        "words": words,
    }
