"""Row masks for the emulated device: the products traced inside `only_rows(mask)` are needed
only on the encoder frames where the mask is nonzero (`asr.models.branching`: each branch's
frames). Its own module so that the plain encoder's attention can open one for the cheap
branch's queries without importing the branching encoder."""

from __future__ import annotations

import contextlib
import itertools
import re
from collections.abc import Iterator

import jax

_ROWS: list = []
ROWS_SCOPE = re.compile(r"only_rows_[0-9]+")  # the named scopes `only_rows` opens
_SCOPES = itertools.count()


@contextlib.contextmanager
def only_rows(rows: jax.Array) -> Iterator[None]:
    """Within it, the products of the branch being traced are needed only on the frames where
    `rows` (f32/bool[B, T']) is nonzero. Float and fake-quant execution ignore it (they compute
    every row and the branches are mixed by the choice); the emulated processor's runtime
    (`active_rows`) computes and counts only those rows.

    It also opens a `jax.named_scope` of its own (`only_rows_<n>`, n unique in the process,
    matching `ROWS_SCOPE`): metadata only, so that the equations traced inside carry the region
    in their name stack and the cost model (`hw.cost`) can count their DSP work on the active
    rows only."""
    _ROWS.append(rows)
    try:
        with jax.named_scope(f"only_rows_{next(_SCOPES)}"):
            yield
    finally:
        _ROWS.pop()


def active_rows() -> jax.Array | None:
    """The innermost `only_rows` mask, or None outside any."""
    return _ROWS[-1] if _ROWS else None
