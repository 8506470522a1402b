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


def utterance_errors(reference: str, hypothesis: str) -> dict:
    """Edit counts of one pair -> {ref, hyp (both normalized), errors, words, substitutions,
    deletions, insertions}.

    Summed over utterances these give the corpus WER of :func:`word_error_rate` (jiwer's corpus
    WER is the same sum); an empty reference has 0 words and every hypothesis word is an insertion.
    """
    import jiwer

    ref, hyp = normalize_text(reference), normalize_text(hypothesis)
    if not ref:
        n = len(hyp.split())
        return {
            "ref": ref,
            "hyp": hyp,
            "errors": n,
            "words": 0,
            "substitutions": 0,
            "deletions": 0,
            "insertions": n,
        }
    out = jiwer.process_words(ref, hyp)
    s, d, i = out.substitutions, out.deletions, out.insertions
    return {
        "ref": ref,
        "hyp": hyp,
        "errors": s + d + i,
        "words": len(ref.split()),
        "substitutions": s,
        "deletions": d,
        "insertions": i,
    }


def group_key(row: dict, field: str) -> str:
    """The label of `row` for a breakdown by `field` ("(none)" when absent); lists and objects
    (e.g. ``context``) are not labels and raise ValueError."""
    v = row.get(field, "(none)")
    if isinstance(v, (list, dict)):
        raise ValueError(f"--by {field}: its values are {type(v).__name__}s, not labels")
    return str(v)


def group_error_rates(rows: list[dict], field: str) -> dict[str, dict]:
    """WER per value of ``row[field]`` over scored rows (each with ``errors`` and ``words``).

    -> {value: {wer, words, utterances}}, worst first; rows without the field go under "(none)";
    a group whose references are all empty has wer None. Lists (e.g. ``context``) are not
    groupable and raise ValueError.
    """
    acc: dict[str, list[int]] = {}
    for r in rows:
        a = acc.setdefault(group_key(r, field), [0, 0, 0])
        a[0] += r["errors"]
        a[1] += r["words"]
        a[2] += 1
    out = {
        k: {"wer": (e / w if w else None), "words": w, "utterances": n}
        for k, (e, w, n) in acc.items()
    }
    return dict(sorted(out.items(), key=lambda kv: (-(kv[1]["wer"] or 0.0), kv[0])))


def marked_word_errors(reference: str, hypothesis: str, marks: list[bool]) -> tuple[int, int]:
    """Errors on chosen reference words -> (errors, marked words).

    `marks`: bool per word of ``normalize_text(reference).split()`` (which words count, e.g. the
    words of a context phrase, `asr.context.phrase_occurrences`). A marked word is an error when
    the word-level alignment (jiwer's, the one WER is counted on) substitutes or deletes it;
    insertions belong to no reference word and are not counted."""
    import jiwer

    ref, hyp = normalize_text(reference), normalize_text(hypothesis)
    words = ref.split()
    if len(marks) != len(words):
        raise ValueError(f"{len(marks)} marks for {len(words)} reference words")
    total = sum(bool(m) for m in marks)
    if not total:
        return 0, 0
    if not hyp:
        return total, total
    errors = 0
    for chunk in jiwer.process_words(ref, hyp).alignments[0]:
        if chunk.type in ("substitute", "delete"):
            errors += sum(bool(m) for m in marks[chunk.ref_start_idx : chunk.ref_end_idx])
    return errors, total
