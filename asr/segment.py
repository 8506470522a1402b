"""Cutting long audio into segments at pauses, so any length decodes in bounded memory.

Owns `segment_bounds` (where to cut) and `frame_energy_db` (the energy it decides on); NumPy only,
O(N) time and memory. The recognizer decodes each segment as an ordinary batch item and joins
the texts, so a 10-minute file costs about 30 times a 20-second one, never a 10-minute attention
matrix or beam search.

The algorithm, on 10 ms frames (`HOP` samples, no overlap):

1. Frame energy in dB (mean square, floored at -100 dB), then a boundary energy for every
   possible cut (frame boundary c): the mean energy of the `smooth_s` (0.1 s) around it, in dB.
2. A robust noise floor and level: the 10th and 95th percentiles of the frame energies. A
   boundary is *quiet* when its energy is at most floor + a quarter of the range (level -
   floor), the margin clipped to 3..12 dB: 12 dB above the floor for speech with real silences,
   a few dB for speech without any (only its quietest dips count), and everything for stationary
   noise or silence (where no place is better than another). A run of quiet boundaries is a
   pause.
3. Greedy from the start, one cut at a time:
   a. with `min_pause_s`, the next pause at least that long (not the input's leading or
      trailing silence) whose middle lies within `max_samples` of the segment start, and at
      least `min_pause_s` after it, is cut in its middle. The shipped model, trained on single
      requests, stops transcribing after the first request of a segment that holds several:
      one request per segment is what it can read (measured in `train/benchmarks/long_audio.py`).
   b. otherwise, while more than `max_samples` remain, the cut is searched in [start + max/4,
      start + max], also leaving at least max/4 for the rest (no slivers). Of the pauses in
      that window, the deepest ones (quietest boundary within 6 dB of the quietest pause's: real
      pauses beat dips between syllables) are candidates and the last of them wins (longest
      segments); the cut goes to the middle of the whole pause, clipped to the window (so
      silence and stationary noise, one long "pause", cut at the limit). With no quiet boundary
      (continuous speech), it is a hard cut at the quietest boundary of the window's last second.

Segments are contiguous, cover the input and are at most `max_samples` long; cuts fall on
multiples of `HOP` samples; cuts of (b) leave segments of at least max/4, cuts of (a) of at least
`min_pause_s`. Inputs of at most `max_samples` are one segment, whatever their pauses.

References: the energy-threshold voice activity detection of Rabiner & Sambur 1975, "An
Algorithm for Determining the Endpoints of Isolated Utterances" (Bell System Technical Journal),
used here only to place cuts, not to drop audio.
"""

from __future__ import annotations

import numpy as np

HOP = 160  # 10 ms at 16 kHz: energy frame and cut granularity
FLOOR_DB = -100.0  # energy of digital silence


def frame_energy_db(x: np.ndarray, hop: int = HOP) -> np.ndarray:
    """f32[N] samples -> f32[ceil(N / hop)]: mean square of each `hop`-sample frame in dB
    (the last frame may be shorter), floored at `FLOOR_DB`."""
    x = np.asarray(x, np.float32)
    if x.ndim != 1:
        raise ValueError(f"frame_energy_db expects f32[N] mono samples, got shape {x.shape}")
    full = x.size // hop
    frames = x[: full * hop].reshape(full, hop)
    power = np.einsum("ij,ij->i", frames, frames, dtype=np.float64) / hop  # no N-sized copy
    tail = x[full * hop :]
    if tail.size:
        power = np.append(power, np.mean(np.square(tail, dtype=np.float64)))
    return np.maximum(10.0 * np.log10(power + 1e-30), FLOOR_DB).astype(np.float32)


def _boundary_db(frame_db: np.ndarray, half: int) -> np.ndarray:
    """f32[F] frame energies -> f32[F + 1]: mean energy (dB) of frames [c - half, c + half)
    around each boundary c (fewer at the edges)."""
    power = np.concatenate([[0.0], np.cumsum(10.0 ** (frame_db.astype(np.float64) / 10.0))])
    c = np.arange(frame_db.size + 1)
    lo, hi = np.maximum(c - half, 0), np.minimum(c + half, frame_db.size)
    mean = (power[hi] - power[lo]) / np.maximum(hi - lo, 1)
    return (10.0 * np.log10(np.maximum(mean, 1e-30))).astype(np.float32)


def _pick_pause(
    quiet: np.ndarray, bound_db: np.ndarray, lo: int, hi: int, tol_db: float
) -> tuple[int, int] | None:
    """The pause to cut in: of the runs of quiet boundaries within [lo, hi], those whose
    quietest boundary is within `tol_db` of the quietest run's, the last one -> (first, last)
    boundary of its part inside the window; None when no boundary there is quiet."""
    q = quiet[lo : hi + 1].astype(np.int8)
    edges = np.diff(np.concatenate([[0], q, [0]]))
    starts, ends = np.flatnonzero(edges == 1), np.flatnonzero(edges == -1) - 1  # inclusive
    if starts.size == 0:
        return None
    depth = np.minimum.reduceat(bound_db[lo : hi + 1], starts)  # quietest boundary per run
    k = int(np.flatnonzero(depth <= depth.min() + tol_db)[-1])
    return lo + int(starts[k]), lo + int(ends[k])


def _long_pauses(
    quiet: np.ndarray, half: int, min_pause_s: float | None, sample_rate: int
) -> tuple[np.ndarray, np.ndarray]:
    """Runs of quiet boundaries spanning a pause of at least `min_pause_s`, not touching either
    end -> (first boundary, middle boundary) of each, int[P] each, in order; empty for None."""
    if min_pause_s is None:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    edges = np.diff(np.concatenate([[0], quiet.astype(np.int8), [0]]))
    starts, ends = np.flatnonzero(edges == 1), np.flatnonzero(edges == -1) - 1  # inclusive
    # a pause of P frames leaves about P - 2 * half + 1 quiet boundaries (the smoothing)
    long = (ends - starts + 2 * half) * HOP >= min_pause_s * sample_rate
    keep = long & (starts > 0) & (ends < quiet.size - 1)
    return starts[keep], (starts[keep] + ends[keep]) // 2


def segment_bounds(
    x: np.ndarray,
    max_samples: int,
    *,
    smooth_s: float = 0.1,
    hard_window_s: float = 1.0,
    depth_tol_db: float = 6.0,
    min_pause_s: float | None = None,
    sample_rate: int = 16000,
) -> list[tuple[int, int]]:
    """Where to cut f32[N] audio: [(start, end), ...] sample ranges (see module docstring).

    Args:
      x: f32[N] mono samples.
      max_samples: longest segment, at least 4 * HOP.
      smooth_s: seconds of audio averaged around each candidate cut.
      hard_window_s: without any pause, the cut is at the quietest place of this last stretch
        before the limit.
      depth_tol_db: pauses whose quietest boundary is within this of the window's quietest
        pause count as equally good; the last of them is taken.
      min_pause_s: if given (and `x` is longer than `max_samples`), also cut in the middle of
        every pause at least this long (leading and trailing silence excepted), however short
        the segments get (at least `min_pause_s` each).
      sample_rate: rate of `x` (for the durations above).

    Returns:
      Contiguous ranges covering [0, N), each 0 < end - start <= max_samples.
    """
    x = np.asarray(x)
    if x.ndim != 1:
        raise ValueError(f"segment_bounds expects f32[N] mono samples, got shape {x.shape}")
    if max_samples < 4 * HOP:
        raise ValueError(f"max_samples must be >= {4 * HOP} (4 energy frames), got {max_samples}")
    if min_pause_s is not None and not min_pause_s > 0:
        raise ValueError(f"min_pause_s must be > 0 seconds or None, got {min_pause_s!r}")
    n = int(x.size)
    if n <= max_samples:
        return [(0, n)]
    frame_db = frame_energy_db(x)  # -> [F]
    half = max(1, round(smooth_s * sample_rate / HOP / 2))
    bound_db = _boundary_db(frame_db, half)  # -> [F + 1], boundary c is sample c * HOP
    floor, level = np.percentile(frame_db, [10, 95])
    quiet = bound_db <= floor + np.clip(0.25 * (level - floor), 3.0, 12.0)  # bool[F + 1]
    max_f = max_samples // HOP  # cut c in frames: segment [start, c) has (c - start) * HOP samples
    min_f = -(-max_f // 4)  # ceil: segments >= max_samples / 4
    hard_f = max(1, round(hard_window_s * sample_rate / HOP))
    pause_f = max(1, round((min_pause_s or 0.0) * sample_rate / HOP))
    pause_starts, pause_mids = _long_pauses(quiet, half, min_pause_s, sample_rate)
    bounds, start = [], 0
    while True:
        j = int(np.searchsorted(pause_starts, start, side="right"))  # pauses after `start`
        while j < pause_mids.size and pause_mids[j] < start + pause_f:
            j += 1  # too close: segments at least min_pause_s long
        if j < pause_mids.size and pause_mids[j] <= start + max_f:
            cut = int(pause_mids[j])
            bounds.append((start * HOP, cut * HOP))
            start = cut
            continue
        if n - start * HOP <= max_samples:
            break
        lo = start + min_f
        hi = min(start + max_f, (n - min_f * HOP) // HOP)  # leaves >= min_f frames after
        assert lo <= hi, (start, lo, hi, n)
        run = _pick_pause(quiet, bound_db, lo, hi, depth_tol_db)
        if run is not None:
            first, last = run  # quiet boundaries first..last, inside the window
            loud_before = np.flatnonzero(~quiet[start:first])
            run_start = start + int(loud_before[-1]) + 1 if loud_before.size else start
            loud_after = np.flatnonzero(~quiet[last : last + max_f])
            run_end = last + int(loud_after[0]) - 1 if loud_after.size else last + max_f - 1
            cut = min(max((run_start + run_end) // 2, lo), hi)  # middle of the whole pause
        else:  # no pause: hard cut at the quietest boundary just before the limit
            a = max(lo, hi - hard_f)
            cut = a + int(np.argmin(bound_db[a : hi + 1]))
        bounds.append((start * HOP, cut * HOP))
        start = cut
    bounds.append((start * HOP, n))
    return bounds
