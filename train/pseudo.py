"""Pseudo-labels for untranscribed audio: a teacher's hypotheses as training transcripts.

Owns `pseudo_label`, used for teacher-student training on unlabelled speech (`asr corpus
pseudo-label`): the teacher decodes each row with beam search and its best hypothesis becomes
the row's `text`; the student is then trained on it, with the distillation term
(`train.distill`, `TrainConfig.teacher`) comparing the two models over the lattice of that
label sequence, as in Panchapagesan et al. 2021 (the teacher's 1-best for unlabelled audio).

Rows that carry `keywords` (words the speaker is known to have said, e.g. the slot values of
the speech-to-intent recordings) are weakly labelled: the label is the best of the teacher's
n-best hypotheses that contains every keyword (`asr.recognizer.keyword_matches`), and a row
with no such hypothesis is left out (counted), since a transcript known to be wrong would teach
the student the teacher's mistake. Rows without keywords take the 1-best, unless its average
log-probability per second is below `min_score_per_second`.

Each written row keeps its fields and gets `text` and `pseudo_label` = {model, score, rank}
(rank in the n-best list, 0 = best).
"""

from __future__ import annotations

from asr.model_io import LoadedModel
from asr.recognizer import DecodeSettings, Recognizer, keyword_matches


def pseudo_label(
    teacher: LoadedModel,
    rows: list[dict],
    nbest: int = 8,
    beam: int = 8,
    min_score_per_second: float | None = None,
    progress: bool = False,
) -> tuple[list[dict], dict]:
    """(labelled rows, counts) for manifest rows (`asr.manifest.read_manifest`).

    Args:
      teacher: the model whose hypotheses become transcripts.
      rows: rows with `audio`; `keywords` when known (then the label must contain them all);
        a row's existing `text` is replaced.
      nbest: hypotheses searched for one containing the keywords (1..beam).
      beam: beam width of the search.
      min_score_per_second: rows without keywords whose best hypothesis scores below this
        log-probability per second of audio are left out (None: keep all).

    Returns:
      rows: the labelled rows, in input order; counts: {rows, labelled, no_keyword_match,
      low_score, empty, unreadable}.
    """
    if not 1 <= nbest <= beam:
        raise ValueError(f"nbest: expected 1 <= nbest <= beam ({beam}), got {nbest}")
    if not rows:
        raise ValueError("rows: nothing to label")
    rec = Recognizer(teacher, DecodeSettings(method="beam", beam=beam))
    counts = dict(rows=len(rows), labelled=0, no_keyword_match=0, low_score=0, empty=0)
    results = dict(rec.transcribe_files([r["audio"] for r in rows], nbest, progress))
    counts["unreadable"] = sum(1 for v in results.values() if isinstance(v, Exception))
    out = []
    for r in rows:
        hyps = results[r["audio"]]
        if isinstance(hyps, Exception) or not hyps:
            continue
        keywords = r.get("keywords")
        if keywords:
            ranked = [(k, h) for k, h in enumerate(hyps) if all(keyword_matches(keywords, h.text))]
            if not ranked:
                counts["no_keyword_match"] += 1
                continue
            rank, best = ranked[0]
        else:
            rank, best = 0, hyps[0]
            seconds = float(r.get("duration") or 0.0)
            if (
                min_score_per_second is not None
                and seconds > 0
                and best.score / seconds < min_score_per_second
            ):
                counts["low_score"] += 1
                continue
        if not best.text.strip():
            counts["empty"] += 1
            continue
        label = {"model": teacher.source, "score": round(best.score, 3), "rank": rank}
        out.append(dict(r, text=best.text.strip(), pseudo_label=label))
        counts["labelled"] += 1
    return out, counts
