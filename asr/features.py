"""Log-mel features: 80 mel bands, 25 ms window, 10 ms hop, librosa's mel filters.

Frames are not centred (frame i covers samples [160 i, 160 i + 400)), so a signal fed in
chunks of any size gives exactly the frames of the whole signal: `FeatureStream` carries the
unfinished tail of one chunk into the next. That is what makes on-device streaming exact.
"""

from __future__ import annotations

import functools

import numpy as np

SAMPLE_RATE = 16000
WIN_LENGTH = 400  # 25 ms
HOP_LENGTH = 160  # 10 ms
N_FFT = 512
N_MELS = 80
LOG_FLOOR = 1e-6


@functools.lru_cache(maxsize=4)
def mel_filters(n_mels: int = N_MELS) -> np.ndarray:
    """f32[n_mels, N_FFT // 2 + 1] Slaney-normalized mel filterbank (librosa)."""
    import librosa

    fb = librosa.filters.mel(sr=SAMPLE_RATE, n_fft=N_FFT, n_mels=n_mels, fmin=20.0, fmax=7600.0)
    return fb.astype(np.float32)


@functools.lru_cache(maxsize=1)
def _window() -> np.ndarray:
    w = np.hanning(WIN_LENGTH + 1)[:-1]  # periodic Hann
    return w.astype(np.float32)


def num_frames(num_samples: int) -> int:
    """Frames produced for `num_samples` samples (0 when shorter than one window)."""
    if num_samples < WIN_LENGTH:
        return 0
    return 1 + (num_samples - WIN_LENGTH) // HOP_LENGTH


def log_mel(x: np.ndarray, n_mels: int = N_MELS) -> np.ndarray:
    """Log-mel features of f32[N] 16 kHz samples -> f32[num_frames(N), n_mels].

    Signals shorter than one window are zero-padded to one frame, so every non-empty input
    gives at least one frame.
    """
    x = np.asarray(x, dtype=np.float32)
    if x.ndim != 1:
        raise ValueError(f"log_mel expects mono samples f32[N], got shape {x.shape}")
    if x.size == 0:
        raise ValueError("log_mel got empty audio")
    if x.size < WIN_LENGTH:
        x = np.pad(x, (0, WIN_LENGTH - x.size))
    n = num_frames(x.size)
    frames = np.lib.stride_tricks.sliding_window_view(x, WIN_LENGTH)[::HOP_LENGTH][:n]
    spec = np.fft.rfft(frames * _window(), n=N_FFT, axis=-1)  # -> [n, 257]
    power = spec.real**2 + spec.imag**2
    mel = power.astype(np.float32) @ mel_filters(n_mels).T  # -> [n, n_mels]
    return np.log(mel + LOG_FLOOR).astype(np.float32)


class FeatureStream:
    """Computes `log_mel` chunk by chunk; concatenated outputs equal `log_mel` of the whole.

    Usage: `s = FeatureStream(); f1 = s.push(chunk1); f2 = s.push(chunk2)`.
    """

    def __init__(self, n_mels: int = N_MELS):
        self.n_mels = n_mels
        self._buf = np.zeros(0, dtype=np.float32)

    def push(self, chunk: np.ndarray) -> np.ndarray:
        """Appends f32[n] samples; returns the f32[k, n_mels] frames completed by them."""
        chunk = np.asarray(chunk, dtype=np.float32)
        if chunk.ndim != 1:
            raise ValueError(f"FeatureStream.push expects f32[n], got shape {chunk.shape}")
        self._buf = np.concatenate([self._buf, chunk])
        n = num_frames(self._buf.size)
        if n == 0:
            return np.zeros((0, self.n_mels), np.float32)
        feats = log_mel(self._buf[: (n - 1) * HOP_LENGTH + WIN_LENGTH], self.n_mels)
        self._buf = self._buf[n * HOP_LENGTH :]
        return feats
