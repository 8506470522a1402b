"""Audio input: read, validate, convert to mono float32 at 16 kHz.

Every path into the recognizer (files, arrays from a microphone, manifests) goes through
`load_audio` or `validate_audio`, so bad input fails early with a message that says what was
expected and what came: empty audio, NaN/inf samples, a file that is not audio, a wrong rate.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import soundfile as sf

SAMPLE_RATE = 16000


class AudioError(ValueError):
    """Raised for audio that cannot be used: unreadable, empty, non-finite."""


def validate_audio(x: np.ndarray, sample_rate: int, *, name: str = "audio") -> np.ndarray:
    """Checks samples and returns them as mono float32 at `SAMPLE_RATE`.

    Args:
      x: f32/f64/int[N] or [N, C] (soundfile layout, channels last). Integer PCM is scaled to
        [-1, 1]. Several channels are averaged.
      sample_rate: rate of `x` in Hz; resampled to 16 kHz when different.
      name: how to call the input in error messages (a file path, say).

    Returns:
      f32[M] mono samples at 16 kHz.
    """
    if not isinstance(sample_rate, (int, np.integer)) or sample_rate <= 0:
        raise AudioError(f"{name}: sample rate must be a positive integer, got {sample_rate!r}")
    if sample_rate < 4000 or sample_rate > 384000:
        raise AudioError(f"{name}: sample rate {sample_rate} Hz is outside 4000..384000 Hz")
    x = np.asarray(x)
    if x.dtype.kind in "iu":
        info = np.iinfo(x.dtype)
        x = x.astype(np.float32) / max(abs(info.min), info.max)
    elif x.dtype.kind != "f":
        raise AudioError(f"{name}: expected numeric samples, got dtype {x.dtype}")
    if x.ndim == 2:
        x = x.mean(axis=1)
    elif x.ndim != 1:
        raise AudioError(f"{name}: expected samples shaped [N] or [N, channels], got {x.shape}")
    if x.size == 0:
        raise AudioError(f"{name}: audio is empty (0 samples)")
    if not np.all(np.isfinite(x)):
        bad = int(np.sum(~np.isfinite(x)))
        raise AudioError(f"{name}: audio has {bad} NaN or infinite samples")
    x = x.astype(np.float32, copy=False)
    if sample_rate != SAMPLE_RATE:
        x = resample(x, int(sample_rate), SAMPLE_RATE)
    return x


def resample(x: np.ndarray, rate_in: int, rate_out: int) -> np.ndarray:
    """Band-limited polyphase resampling of f32[N] from `rate_in` to `rate_out` Hz."""
    from math import gcd

    from scipy.signal import resample_poly

    if rate_in == rate_out:
        return x
    g = gcd(rate_in, rate_out)
    return resample_poly(x, rate_out // g, rate_in // g).astype(np.float32)


def load_audio(path: str | os.PathLike) -> np.ndarray:
    """Reads an audio file (wav, flac, ogg: whatever libsndfile reads) as f32[N] mono 16 kHz."""
    p = Path(path)
    if not p.exists():
        raise AudioError(f"{p}: no such file")
    if p.is_dir():
        raise AudioError(f"{p}: is a folder, expected an audio file")
    try:
        x, sr = sf.read(str(p), dtype="float32", always_2d=False)
    except Exception as e:  # libsndfile raises its own error types for non-audio bytes
        raise AudioError(f"{p}: not a readable audio file ({e})") from None
    return validate_audio(x, sr, name=str(p))
