"""Context lists for biasing: the user's names (contacts, devices) given with a request.

A context list is a list of phrases (1 to thousands), each optionally with a weight that scales
the shallow-fusion boost. It comes from a file (`asr transcribe --context names.txt`: one
phrase a line, optionally ``phrase<TAB>weight``; blank lines and lines starting with ``#``
skipped), from a manifest row's `context` field (a list of strings), or from the recognizer
API. Phrases are normalized like transcripts (`asr.text.normalize_text`) and deduplicated
(the largest weight kept), so a phrase is matched against what the model writes.

Both biasing techniques read the same tokenized phrases: the shallow-fusion context graph
(`asr.decoding.context_graph`) and the learned attention biasing network
(`asr.models.biasing`).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from asr.text import normalize_text


class ContextError(ValueError):
    """A context list or file that cannot be used (names the file and line)."""


@dataclass(frozen=True)
class ContextList:
    """Normalized, distinct phrases with their boost weights (same length)."""

    phrases: tuple[str, ...]
    weights: tuple[float, ...]

    def __len__(self) -> int:
        return len(self.phrases)

    def __bool__(self) -> bool:
        return bool(self.phrases)


def make_context(phrases: Iterable[str], weights: Sequence[float] | None = None) -> ContextList:
    """Phrases (and optional positive weights, default 1.0) -> a normalized `ContextList`.

    Phrases empty after normalization are dropped; a phrase given twice keeps its largest
    weight; order of first appearance is kept."""
    phrases = list(phrases)
    if isinstance(phrases, str):  # pragma: no cover - list() of a str is never a str
        raise ContextError("phrases: expected a list of strings")
    if weights is None:
        weights = [1.0] * len(phrases)
    if len(weights) != len(phrases):
        raise ContextError(f"{len(phrases)} phrases but {len(weights)} weights")
    best: dict[str, float] = {}
    for i, (p, w) in enumerate(zip(phrases, weights, strict=True)):
        if not isinstance(p, str):
            raise ContextError(f"phrase {i}: expected a string, got {type(p).__name__}")
        w = float(w)
        if not (math.isfinite(w) and w > 0):
            raise ContextError(f"phrase {i} ({p!r}): weight must be a finite number > 0, got {w}")
        norm = normalize_text(p)
        if norm:
            best[norm] = max(w, best.get(norm, 0.0))
    return ContextList(tuple(best), tuple(best.values()))


def read_context_file(path: str | Path) -> ContextList:
    """One phrase a line, optionally ``phrase<TAB>weight``; '#' lines and blank lines skipped."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ContextError(f"{path}: context file not found") from None
    except UnicodeDecodeError as e:
        raise ContextError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    except OSError as e:
        raise ContextError(f"{path}: cannot read context file ({e.strerror})") from None
    phrases, weights = [], []
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        phrase, _, weight = line.partition("\t")
        w = 1.0
        if weight.strip():
            try:
                w = float(weight)
            except ValueError:
                raise ContextError(
                    f"{path}:{n}: weight after the tab must be a number, got {weight.strip()!r}"
                ) from None
            if not (math.isfinite(w) and w > 0):
                raise ContextError(f"{path}:{n}: weight must be a finite number > 0, got {w}")
        if not normalize_text(phrase):
            raise ContextError(f"{path}:{n}: phrase {phrase!r} has no words")
        phrases.append(phrase)
        weights.append(w)
    if not phrases:
        raise ContextError(f"{path}: no phrases (one a line; '#' lines are comments)")
    return make_context(phrases, weights)


def tokenize_phrases(tokenizer, context: ContextList) -> list[list[int]]:
    """Token ids of each phrase as the model writes it inside a sentence (non-empty lists).

    sentencepiece marks a word start with '▁', and a name in the middle of a request starts a
    word, so encoding the phrase alone gives the same pieces as in the sentence."""
    out = []
    for p in context.phrases:
        ids = [int(i) for i in tokenizer.encode(p)]
        if not ids:  # pragma: no cover - a normalized non-empty phrase always has pieces
            raise ContextError(f"phrase {p!r} has no tokens")
        out.append(ids)
    return out


def phrase_occurrences(reference: str, context: ContextList) -> list[bool]:
    """Which words of the normalized reference belong to an occurrence of a context phrase.

    bool per word of ``normalize_text(reference).split()``; phrases match whole words."""
    words = normalize_text(reference).split()
    mark = [False] * len(words)
    for p in context.phrases:
        seq = p.split()
        n = len(seq)
        for i in range(len(words) - n + 1):
            if words[i : i + n] == seq:
                for j in range(i, i + n):
                    mark[j] = True
    return mark
