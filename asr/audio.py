"""Audio input: read, validate, convert to mono float32 at 16 kHz.

Every path into the recognizer (files, arrays from a microphone, manifests) goes through
`load_audio` or `validate_audio`, so bad input fails early with an `AudioError` (a ValueError)
that names the input and says what was expected and what came, never another traceback or a hang:

- arrays: empty; NaN/inf samples; non-numeric dtypes (bool, complex, object, strings, dates,
  records, ragged lists); shapes other than [N] or [N, channels]; float samples far beyond full
  scale (see `MAX_FLOAT_PEAK`); sample rates that are not a positive whole number of Hz in
  4000..384000 (integral floats and numpy scalars are accepted).
- files: missing, folders, anything that is not a regular file (a named pipe would block
  forever), bytes libsndfile cannot decode (truncated, damaged or lying headers; its errors are
  caught and re-raised naming the file). Files are read in blocks, so a header claiming more
  samples than the body holds never makes us allocate what it claims.

Conversions: integer PCM is scaled to [-1, 1) (signed by 2^(bits-1); unsigned is offset binary, as
in 8-bit WAV: 128 is silence); channels are averaged; other rates are resampled to 16 kHz.
"""

from __future__ import annotations

import math
import os
import stat
from fractions import Fraction
from pathlib import Path

import numpy as np
import soundfile as sf

SAMPLE_RATE = 16000
MIN_RATE, MAX_RATE = 4000, 384000
# Float samples are full scale at 1.0. Real recordings stay near it (float WAVs may clip a little
# above); a peak beyond 100 (40 dB over full scale) is a mistake, typically integer PCM stored as
# floats (peaks near 32767): rejected rather than guessed at. It also keeps log-mel finite: the
# power of a 400-sample frame overflows float32 once samples reach about 4e16.
MAX_FLOAT_PEAK = 100.0
# Resampling ratios are reduced to up/down terms of at most this size: exact for every usual rate
# (44100 -> 160/441), nearest ratio within 1/1000 relative for odd ones (16001 Hz), instead of a
# filter with up * 20 taps that takes seconds per second of audio.
MAX_RATIO_TERM = 1000
READ_BLOCK = 1 << 20  # frames per read from a file


class AudioError(ValueError):
    """Raised for audio that cannot be used: unreadable, empty, non-finite, wrong type or rate."""


def _check_rate(sample_rate, name: str) -> int:
    """The sample rate as an int, or AudioError: positive, whole, within MIN_RATE..MAX_RATE."""
    whole = isinstance(sample_rate, (int, np.integer)) and not isinstance(sample_rate, bool)
    if isinstance(sample_rate, (float, np.floating)):
        whole = math.isfinite(sample_rate) and float(sample_rate).is_integer()
    if not whole or sample_rate <= 0:
        raise AudioError(
            f"{name}: sample rate must be a positive whole number of Hz, got {sample_rate!r}"
        )
    rate = int(sample_rate)
    if rate < MIN_RATE or rate > MAX_RATE:
        raise AudioError(f"{name}: sample rate {rate} Hz is outside {MIN_RATE}..{MAX_RATE} Hz")
    return rate


def validate_audio(x: np.ndarray, sample_rate: int, *, name: str = "audio") -> np.ndarray:
    """Checks samples and returns them as mono float32 at `SAMPLE_RATE`.

    Args:
      x: float or integer samples [N] or [N, C] (soundfile layout, channels last; an array with
        more channels than samples is taken for channels first and refused). Integer PCM is
        scaled to [-1, 1); unsigned integers are offset binary (uint8: 128 is silence). Float
        samples must be finite with peak magnitude <= `MAX_FLOAT_PEAK`. Channels are averaged.
      sample_rate: rate of `x` in Hz, a whole number (int, integral float or numpy scalar) in
        4000..384000; resampled to 16 kHz when different.
      name: how to call the input in error messages (a file path, say).

    Returns:
      f32[M] mono samples at 16 kHz, finite, so `log_mel` of them is finite.

    Raises:
      AudioError: for anything else, naming `name`.
    """
    rate = _check_rate(sample_rate, name)
    try:
        x = np.asarray(x)
    except (ValueError, TypeError) as e:  # ragged nested lists
        raise AudioError(
            f"{name}: expected numeric samples, got {type(x).__name__} ({e})"
        ) from None
    if x.dtype.kind not in "iuf":
        raise AudioError(f"{name}: expected numeric samples (int or float), got dtype {x.dtype}")
    if x.ndim == 2:
        if x.shape[1] == 0 or x.shape[1] > x.shape[0]:
            raise AudioError(
                f"{name}: expected [N, channels] with 1 <= channels <= N, got {x.shape} "
                "(channels-first audio: pass x.T)"
            )
    elif x.ndim != 1:
        raise AudioError(f"{name}: expected samples shaped [N] or [N, channels], got {x.shape}")
    if x.size == 0:
        raise AudioError(f"{name}: audio is empty (0 samples)")
    if x.dtype.kind in "iu":
        half = 2.0 ** (8 * x.dtype.itemsize - 1)
        x = (x.astype(np.float64) - (half if x.dtype.kind == "u" else 0.0)) / half
    else:
        finite = np.isfinite(x)
        if not np.all(finite):
            bad = int(np.sum(~finite))
            raise AudioError(f"{name}: audio has {bad} NaN or infinite samples")
        peak = float(np.max(np.abs(x)))
        if peak > MAX_FLOAT_PEAK:
            raise AudioError(
                f"{name}: float samples peak at {peak:.3g}, expected full scale 1.0 (at most "
                f"{MAX_FLOAT_PEAK:g}); integer PCM stored as floats? divide by 32768 for 16-bit"
            )
    if x.ndim == 2:
        x = x.mean(axis=1)
    x = x.astype(np.float32, copy=False)
    if rate != SAMPLE_RATE:
        x = resample(x, rate, SAMPLE_RATE)
    return x


def resample(x: np.ndarray, rate_in: int, rate_out: int) -> np.ndarray:
    """Band-limited polyphase resampling of f32[N] from `rate_in` to `rate_out` Hz.

    Exact when the reduced ratio rate_out / rate_in has terms <= `MAX_RATIO_TERM` (all usual
    rates); else the nearest ratio with denominator <= MAX_RATIO_TERM (relative error < 1e-3).
    """
    from scipy import signal

    if rate_in == rate_out:
        return x
    ratio = Fraction(rate_out, rate_in)
    if max(ratio.numerator, ratio.denominator) > MAX_RATIO_TERM:
        ratio = ratio.limit_denominator(MAX_RATIO_TERM)
    return signal.resample_poly(x, ratio.numerator, ratio.denominator).astype(np.float32)


def load_audio(path: str | os.PathLike) -> np.ndarray:
    """Reads an audio file (wav, flac, ogg: whatever libsndfile reads) as f32[N] mono 16 kHz.

    Raises:
      AudioError: naming the file, for a missing path, a folder or other non-regular file, bytes
        libsndfile cannot read, and everything `validate_audio` refuses.
    """
    p = Path(path)
    try:
        mode = p.stat().st_mode
    except FileNotFoundError:
        raise AudioError(f"{p}: no such file") from None
    except OSError as e:
        raise AudioError(f"{p}: cannot access ({e.strerror or e})") from None
    if stat.S_ISDIR(mode):
        raise AudioError(f"{p}: is a folder, expected an audio file")
    if not stat.S_ISREG(mode):
        raise AudioError(f"{p}: not a regular file (a pipe or device), expected an audio file")
    blocks = []
    try:
        with sf.SoundFile(str(p)) as f:
            sr = f.samplerate
            while True:  # in blocks: the header's frame count may be a lie (see module doc)
                b = f.read(READ_BLOCK, dtype="float32", always_2d=True)  # -> [n, channels]
                if len(b) == 0:
                    break
                blocks.append(b.mean(axis=1, dtype=np.float32) if b.shape[1] > 1 else b[:, 0])
    except sf.SoundFileError as e:  # libsndfile's errors for bytes it cannot decode
        raise AudioError(f"{p}: not a readable audio file ({e})") from None
    x = np.concatenate(blocks) if blocks else np.zeros(0, np.float32)
    return validate_audio(x, sr, name=str(p))
