"""Log-mel features: 80 mel bands, 25 ms window, 10 ms hop, librosa's mel filters.

Frames are not centred (frame i covers samples [160 i, 160 i + 400)), so a signal fed in
chunks of any size gives exactly the frames of the whole signal: `FeatureStream` carries the
unfinished tail of one chunk into the next, and its `finish` emits the zero-padded frame that
`log_mel` gives a signal shorter than one window. The mel projection sums in a fixed order per
frame (`_mel_power`), so streamed and whole features are equal bit for bit, for every length and
chunking (tests/test_features.py checks lengths 1..1200). That is what makes on-device streaming
exact.
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


@functools.lru_cache(maxsize=4)
def _mel_taps(n_mels: int) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """`mel_filters` as sparse taps: entry j is (bands i64[b], fft_bins i64[b], weights f32[b]),
    the j-th non-zero weight of each band that has more than j of them."""
    fb = mel_filters(n_mels)
    nonzero = [np.nonzero(row)[0] for row in fb]
    taps = []
    for j in range(max(len(k) for k in nonzero)):
        bands = np.array([m for m, k in enumerate(nonzero) if len(k) > j], np.int64)
        bins = np.array([nonzero[m][j] for m in bands], np.int64)
        taps.append((bands, bins, fb[bands, bins]))
    return taps


def _mel_power(power: np.ndarray, n_mels: int) -> np.ndarray:
    """f32[n, 257] power spectra -> f32[n, n_mels] mel energies.

    Equal to `power @ mel_filters(n_mels).T` up to rounding, but each output is summed over its
    band's non-zero weights in one fixed order with elementwise operations, so a frame's value
    does not depend on how many frames are computed together (a BLAS matmul picks kernels, and
    summation orders, by the number of rows). That makes `FeatureStream` bit-exact.
    """
    mel = np.zeros((power.shape[0], n_mels), np.float32)
    for bands, bins, weights in _mel_taps(n_mels):
        mel[:, bands] += power[:, bins] * weights
    return mel


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
    mel = _mel_power(power.astype(np.float32), n_mels)  # -> [n, n_mels]
    return np.log(mel + LOG_FLOOR).astype(np.float32)


class FeatureStream:
    """Computes `log_mel` chunk by chunk: the frames of `push` calls, then `finish`, concatenated,
    equal `log_mel` of the whole signal bit for bit, for every length and every chunking.

    Usage, one utterance::

        s = FeatureStream()
        frames = [s.push(chunk) for chunk in chunks]  # frames as soon as their window is full
        frames.append(s.finish())  # end of the utterance: what `log_mel` of the whole still gives

    `push` emits frame i once samples [160 i, 160 i + 400) have arrived. `finish` emits the one
    frame `push` cannot know about: `log_mel` zero-pads a non-empty signal shorter than one window
    (400 samples) to a single frame, so when fewer than 400 samples came in total, `finish` returns
    that padded frame; otherwise (and for a stream that got no samples, where `log_mel` would
    refuse the empty signal) it returns no frames. `finish` then resets the stream for the next
    utterance.
    """

    def __init__(self, n_mels: int = N_MELS):
        self.n_mels = n_mels
        self._reset()

    def _reset(self) -> None:
        self._buf = np.zeros(0, dtype=np.float32)  # f32[n]: samples not yet consumed
        self._seen = 0  # samples pushed since the utterance started

    def push(self, chunk: np.ndarray) -> np.ndarray:
        """Appends f32[n] samples; returns the f32[k, n_mels] frames completed by them."""
        chunk = np.asarray(chunk, dtype=np.float32)
        if chunk.ndim != 1:
            raise ValueError(f"FeatureStream.push expects f32[n], got shape {chunk.shape}")
        self._buf = np.concatenate([self._buf, chunk])
        self._seen += chunk.size
        n = num_frames(self._buf.size)
        if n == 0:
            return np.zeros((0, self.n_mels), np.float32)
        feats = log_mel(self._buf[: (n - 1) * HOP_LENGTH + WIN_LENGTH], self.n_mels)
        self._buf = self._buf[n * HOP_LENGTH :]
        return feats

    def finish(self) -> np.ndarray:
        """Ends the utterance: f32[1, n_mels] (the zero-padded frame) when 1..399 samples came in
        total, else f32[0, n_mels]; then resets the stream."""
        short = 0 < self._seen < WIN_LENGTH
        feats = log_mel(self._buf, self.n_mels) if short else np.zeros((0, self.n_mels), np.float32)
        self._reset()
        return feats
