"""Waveform augmentation on the host (NumPy): speed, pitch, VTLP, reverberation, noise, and
the channel (microphone response, lossy codecs, clipping).

Owns the pure augmentation functions used by the corpus synthesizer and by the training data
pipeline on real speech, the :class:`NoiseBank` of background-noise clips (Speech Commands
``_silence_``) with a synthetic fallback, and :func:`random_augment`, their random composition;
:func:`random_channel` composes the channel effects (:func:`mic_response`,
:func:`codec_roundtrip`, :func:`clip_peaks`). All audio is f32[N] mono at 16 kHz; every function returns a new float32 array.

Measured on one CPU core for a 3 s clip (2 cores, this repository's test machine): speed
perturbation 0.5 ms, pitch shift 5.5 ms, VTLP 6 ms, reverberation 1 ms, noise from the bank
0.1 ms (synthetic babble 6 ms); :func:`random_augment` 5 ms on average, under 20 ms at worst.

References:
    Ko et al., "Audio augmentation for speech recognition", Interspeech 2015 (speed perturbation).
    Jaitly & Hinton, "Vocal Tract Length Perturbation (VTLP) improves speech recognition",
    ICML WDLASL 2013.
    Ko et al., "A study on data augmentation of reverberant speech for robust speech
    recognition", ICASSP 2017 (simulated room impulse responses).
    R. Bristow-Johnson, "Cookbook formulae for audio EQ biquad filter coefficients" (peaking EQ).
    Lossy codecs are libsndfile's (through soundfile): Opus, Vorbis, MP3, GSM 06.10, G.711.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import numpy as np
import soundfile as sf
from scipy.signal import butter, fftconvolve, istft, resample_poly, sosfilt, stft

SAMPLE_RATE = 16000
NOISE_KINDS = ("white", "pink", "brown", "babble")


def _check_audio(x: np.ndarray, name: str = "x") -> np.ndarray:
    x = np.asarray(x)
    if x.ndim != 1:
        raise ValueError(f"{name}: expected a 1-D waveform f32[N], got shape {x.shape}")
    if x.size == 0:
        raise ValueError(f"{name}: expected at least one sample, got an empty array")
    if not np.issubdtype(x.dtype, np.floating):
        raise ValueError(f"{name}: expected a float waveform, got dtype {x.dtype}")
    return x.astype(np.float32, copy=False)


def _check_range(name: str, value: float, lo: float, hi: float) -> float:
    if not (np.isfinite(value) and lo <= value <= hi):
        raise ValueError(f"{name}: expected in [{lo}, {hi}], got {value}")
    return float(value)


def _resample_ratio(x: np.ndarray, ratio: float) -> np.ndarray:
    """Resample so that the output has about ``len(x) * ratio`` samples (polyphase filter)."""
    frac = Fraction(ratio).limit_denominator(200)
    return resample_poly(x, frac.numerator, frac.denominator).astype(np.float32)


def speed_perturb(x: np.ndarray, factor: float) -> np.ndarray:
    """Play ``x`` ``factor`` times faster (tempo and pitch both change, as on tape).

    Args:
        x: f32[N] waveform.
        factor: speed factor in [0.5, 2]; 1.1 is 10% faster.

    Returns:
        f32[round(N / factor)] (up to the 1/200 rational approximation of the ratio).
    """
    x = _check_audio(x)
    factor = _check_range("factor", factor, 0.5, 2.0)
    if factor == 1.0:
        return x.copy()
    return _resample_ratio(x, 1.0 / factor)


def pitch_shift(x: np.ndarray, semitones: float, sr: int = SAMPLE_RATE) -> np.ndarray:
    """Shift the pitch by ``semitones`` keeping the duration.

    Phase-vocoder time stretch (librosa) by the pitch ratio, then polyphase resampling back to
    the original length.

    Args:
        x: f32[N] waveform.
        semitones: shift in [-12, 12].
        sr: sample rate in Hz.

    Returns:
        f32[N].
    """
    import librosa

    x = _check_audio(x)
    semitones = _check_range("semitones", semitones, -12.0, 12.0)
    if semitones == 0.0:
        return x.copy()
    ratio = 2.0 ** (semitones / 12.0)
    y = librosa.effects.time_stretch(x, rate=1.0 / ratio)  # -> ~N * ratio samples, same pitch
    y = _resample_ratio(y, 1.0 / ratio)  # -> ~N samples, pitch times ratio
    return _fit_length(y, x.size)


def _fit_length(y: np.ndarray, n: int) -> np.ndarray:
    if y.size >= n:
        return y[:n]
    return np.pad(y, (0, n - y.size))


def vtlp_warp(freqs: np.ndarray, alpha: float, f_max: float, f_hi: float = 4800.0) -> np.ndarray:
    """Jaitly & Hinton's piecewise-linear frequency warp.

    ``f -> f * alpha`` below the boundary ``f_hi * min(alpha, 1) / alpha``, then a straight line
    that maps ``f_max`` (Nyquist) onto itself.

    Args:
        freqs: f[K] frequencies in Hz, in [0, f_max].
        alpha: warp factor (> 1 moves formants up, like a shorter vocal tract).
        f_max: the Nyquist frequency in Hz.
        f_hi: upper boundary frequency in Hz (4800 in the paper).

    Returns:
        f[K] warped frequencies, monotone, with 0 -> 0 and f_max -> f_max.
    """
    boundary = f_hi * min(alpha, 1.0) / alpha
    slope = (f_max - f_hi * min(alpha, 1.0)) / (f_max - boundary)
    return np.where(freqs <= boundary, freqs * alpha, f_max - (f_max - freqs) * slope)


def vtlp(
    x: np.ndarray, alpha: float, sr: int = SAMPLE_RATE, n_fft: int = 512, hop: int = 128
) -> np.ndarray:
    """Vocal tract length perturbation: warp the STFT magnitude along frequency.

    The magnitude at output frequency ``f`` is read (linear interpolation) at the source
    frequency ``warp^-1(f)``, so spectral envelopes move by ``alpha``; the original phase is kept
    and the signal is re-synthesised by overlap-add (Hann window, 75% overlap).

    Args:
        x: f32[N] waveform.
        alpha: warp factor in [0.8, 1.2] (the paper samples 0.9-1.1).
        sr: sample rate in Hz.
        n_fft: STFT size; hop: STFT hop.

    Returns:
        f32[N].
    """
    x = _check_audio(x)
    alpha = _check_range("alpha", alpha, 0.8, 1.2)
    if alpha == 1.0:
        return x.copy()
    _, _, spec = stft(x, fs=sr, nperseg=n_fft, noverlap=n_fft - hop, boundary="even")
    # spec: c64[F = n_fft/2 + 1, T]
    freqs = np.linspace(0.0, sr / 2.0, spec.shape[0])
    warped = vtlp_warp(freqs, alpha, sr / 2.0)  # where each source bin lands
    src = np.interp(freqs, warped, freqs)  # inverse warp: source frequency of each output bin
    pos = src / (sr / 2.0) * (spec.shape[0] - 1)
    lo = np.clip(np.floor(pos).astype(np.int64), 0, spec.shape[0] - 1)
    hi = np.clip(lo + 1, 0, spec.shape[0] - 1)
    w = (pos - lo)[:, None]
    mag = np.abs(spec)
    new_mag = (1.0 - w) * mag[lo] + w * mag[hi]  # -> [F, T]
    phase = np.exp(1j * np.angle(spec))
    _, y = istft(new_mag * phase, fs=sr, nperseg=n_fft, noverlap=n_fft - hop, boundary=True)
    return _fit_length(y.astype(np.float32), x.size)


def room_impulse_response(
    rng: np.random.Generator, rt60: float, sr: int = SAMPLE_RATE
) -> np.ndarray:
    """A synthetic room impulse response: direct path, early reflections, exponential tail.

    Args:
        rng: randomness source.
        rt60: reverberation time in seconds (time for a 60 dB decay), in [0.05, 2].
        sr: sample rate in Hz.

    Returns:
        f32[L] with ``L = min(rt60, 1) * sr`` samples, unit energy, direct path at index 0.
    """
    rt60 = _check_range("rt60", rt60, 0.05, 2.0)
    n = max(16, int(min(rt60, 1.0) * sr))
    t = np.arange(n) / sr
    tail = rng.standard_normal(n) * np.exp(-6.9078 * t / rt60)  # ln(1000): 60 dB amplitude decay
    onset = int(0.005 * sr)  # the diffuse tail starts after ~5 ms
    tail[:onset] = 0.0
    h = 0.4 * tail / (np.sqrt(np.sum(tail**2)) + 1e-12)
    h[0] = 1.0
    for _ in range(int(rng.integers(3, 8))):  # early reflections within 2-50 ms
        k = int(rng.uniform(0.002, 0.05) * sr)
        if k < n:
            h[k] += rng.uniform(0.2, 0.7) * np.exp(-6.9078 * k / sr / rt60) * rng.choice((-1, 1))
    return (h / np.sqrt(np.sum(h**2))).astype(np.float32)


def reverberate(
    x: np.ndarray, rng: np.random.Generator, rt60: float, sr: int = SAMPLE_RATE
) -> np.ndarray:
    """Convolve ``x`` with a synthetic room impulse response, keeping the length and peak level.

    Args:
        x: f32[N] waveform.
        rng: randomness source for the impulse response.
        rt60: reverberation time in seconds, in [0.05, 2].
        sr: sample rate in Hz.

    Returns:
        f32[N]: the first N samples of the convolution (the direct path is at lag 0, so speech
        keeps its timing), scaled to the input's peak.
    """
    x = _check_audio(x)
    h = room_impulse_response(rng, rt60, sr)
    y = fftconvolve(x, h, mode="full")[: x.size]
    peak_in, peak_out = float(np.max(np.abs(x))), float(np.max(np.abs(y)))
    if peak_out > 0:
        y = y * (peak_in / peak_out)
    return y.astype(np.float32)


def synthetic_noise(rng: np.random.Generator, n: int, kind: str = "white") -> np.ndarray:
    """Synthetic background noise with unit RMS.

    Args:
        rng: randomness source.
        n: number of samples (> 0).
        kind: ``"white"`` (flat), ``"pink"`` (1/f power), ``"brown"`` (1/f^2 power) or
            ``"babble"`` (several speech-shaped noises with 3-7 Hz syllable-rate amplitude
            modulation, a stand-in for distant talkers).

    Returns:
        f32[n], RMS 1.
    """
    if int(n) <= 0:
        raise ValueError(f"n: expected a positive number of samples, got {n}")
    if kind not in NOISE_KINDS:
        raise ValueError(f"kind: expected one of {NOISE_KINDS}, got {kind!r}")
    n = int(n)
    if kind == "white":
        y = rng.standard_normal(n)
    elif kind in ("pink", "brown"):
        spec = np.fft.rfft(rng.standard_normal(n))
        f = np.fft.rfftfreq(n, 1.0 / SAMPLE_RATE)
        f[0] = f[1] if n > 1 else 1.0
        spec *= f ** (-0.5 if kind == "pink" else -1.0)
        y = np.fft.irfft(spec, n)
    else:
        t = np.arange(n) / SAMPLE_RATE
        f = np.fft.rfftfreq(n, 1.0 / SAMPLE_RATE)
        shape = 1.0 / (1.0 + (f / 500.0) ** 2) * (f > 80)  # speech-like long-term spectrum
        y = np.zeros(n)
        for _ in range(int(rng.integers(4, 8))):
            talker = np.fft.irfft(np.fft.rfft(rng.standard_normal(n)) * shape, n)
            rate = rng.uniform(3.0, 7.0)
            env = np.maximum(0.0, np.sin(2 * np.pi * rate * t + rng.uniform(0, 2 * np.pi)))
            y += talker * env
    y = y - np.mean(y)
    rms = np.sqrt(np.mean(y**2))
    return (y / rms if rms > 0 else y).astype(np.float32)


def add_noise(x: np.ndarray, noise: np.ndarray, snr_db: float) -> np.ndarray:
    """Add ``noise`` to ``x`` at a signal-to-noise ratio of ``snr_db``.

    The SNR is the ratio of mean powers over the whole clip: ``10 log10(mean(x^2) /
    mean(n^2))`` where ``n`` is the scaled noise as added. Noise shorter than ``x`` is tiled,
    longer noise is cut to ``len(x)``.

    Args:
        x: f32[N] waveform.
        noise: f32[M] noise (M > 0, not all zero).
        snr_db: target SNR in dB, in [-20, 80].

    Returns:
        f32[N] = x + scaled noise (not renormalised, may exceed [-1, 1]). A silent ``x`` is
        returned unchanged.
    """
    x = _check_audio(x)
    noise = _check_audio(noise, "noise")
    snr_db = _check_range("snr_db", snr_db, -20.0, 80.0)
    if noise.size < x.size:
        noise = np.tile(noise, -(-x.size // noise.size))
    noise = noise[: x.size].astype(np.float64)
    p_noise = float(np.mean(noise**2))
    if p_noise <= 0:
        raise ValueError("noise: expected a non-silent noise signal, got all zeros")
    p_x = float(np.mean(x.astype(np.float64) ** 2))
    if p_x <= 0:
        return x.copy()
    scale = np.sqrt(p_x / (p_noise * 10.0 ** (snr_db / 10.0)))
    return (x + scale * noise).astype(np.float32)


class NoiseBank:
    """Background-noise clips held in memory, cropped at random.

    Loads every ``.wav``/``.flac`` file under ``folder`` (e.g. Speech Commands ``_silence_``),
    resampled to 16 kHz mono. With ``folder=None`` (or no files) it falls back to
    :func:`synthetic_noise` of a random kind.
    """

    def __init__(self, folder: str | Path | None = None, max_clips: int = 2000):
        self.clips: list[np.ndarray] = []
        self.folder = None if folder is None else Path(folder)
        if self.folder is None:
            return
        if not self.folder.is_dir():
            raise ValueError(f"folder: expected a directory of noise clips, got {self.folder}")
        files = sorted(
            p for p in self.folder.rglob("*") if p.suffix.lower() in (".wav", ".flac", ".ogg")
        )
        for path in files[:max_clips]:
            y, sr = sf.read(path, dtype="float32", always_2d=True)
            y = y.mean(axis=1)
            if sr != SAMPLE_RATE:
                y = _resample_ratio(y, SAMPLE_RATE / sr)
            if y.size and np.any(y):
                self.clips.append(y.astype(np.float32))

    @property
    def synthetic(self) -> bool:
        """Whether crops come from :func:`synthetic_noise` (no clips loaded)."""
        return not self.clips

    def crop(self, rng: np.random.Generator, n: int) -> np.ndarray:
        """A random noise segment f32[n] (clips are concatenated when one is too short)."""
        if int(n) <= 0:
            raise ValueError(f"n: expected a positive number of samples, got {n}")
        n = int(n)
        if not self.clips:
            return synthetic_noise(rng, n, NOISE_KINDS[int(rng.integers(len(NOISE_KINDS)))])
        parts, total = [], 0
        while total < n:
            clip = self.clips[int(rng.integers(len(self.clips)))]
            start = int(rng.integers(clip.size)) if total == 0 else 0
            parts.append(clip[start:])
            total += clip.size - start
        return np.concatenate(parts)[:n]


# codec name -> (libsndfile format, subtype, sample rate, takes a compression level)
CODECS = {
    "opus": ("OGG", "OPUS", 16000, True),
    "vorbis": ("OGG", "VORBIS", 16000, True),
    "mp3": ("MP3", "MPEG_LAYER_III", 16000, True),
    "gsm": ("WAV", "GSM610", 8000, False),  # GSM 06.10 full rate, 13 kbit/s (mobile phones)
    "ulaw": ("WAV", "ULAW", 8000, False),  # G.711 (telephone)
    "alaw": ("WAV", "ALAW", 8000, False),
}


def codec_roundtrip(
    x: np.ndarray, codec: str, compression: float = 0.5, sr: int = SAMPLE_RATE
) -> np.ndarray:
    """Encode with a lossy codec in memory and decode again.

    Args:
        x: f32[N] waveform at ``sr`` (values beyond [-1, 1] are clipped, as a codec input would).
        codec: a key of :data:`CODECS`; the 8 kHz ones (GSM, G.711) also band-limit to 4 kHz.
        compression: libsndfile's compression level in [0, 1] (1 = fewest bits: Opus about
            33 kbit/s, MP3 24, Vorbis 37 for speech at 16 kHz); ignored by fixed-rate codecs.
        sr: sample rate of ``x`` in Hz.

    Returns:
        f32[N], time-aligned with ``x`` (libsndfile removes the codecs' priming delay; tested).
    """
    from asr.audio import resample

    x = _check_audio(x)
    if codec not in CODECS:
        raise ValueError(f"codec: expected one of {sorted(CODECS)}, got {codec!r}")
    compression = _check_range("compression", compression, 0.0, 1.0)
    fmt, subtype, rate, leveled = CODECS[codec]
    y = np.clip(resample(x, sr, rate), -1.0, 1.0)
    buf = io.BytesIO()
    extra = {"compression_level": compression} if leveled else {}
    sf.write(buf, y, rate, format=fmt, subtype=subtype, **extra)
    buf.seek(0)
    y, _ = sf.read(buf, dtype="float32", always_2d=False)
    return _fit_length(resample(np.asarray(y, np.float32), rate, sr).astype(np.float32), x.size)


def peaking_sos(f0: float, gain_db: float, q: float, sr: int = SAMPLE_RATE) -> np.ndarray:
    """f64[1, 6] second-order section of a peaking equalizer (Bristow-Johnson's cookbook):
    ``gain_db`` at ``f0`` Hz, 0 dB far from it, bandwidth set by ``q``."""
    a = 10 ** (gain_db / 40)
    w0 = 2 * np.pi * f0 / sr
    alpha = np.sin(w0) / (2 * q)
    b = np.array([1 + alpha * a, -2 * np.cos(w0), 1 - alpha * a])
    den = np.array([1 + alpha / a, -2 * np.cos(w0), 1 - alpha / a])
    return np.concatenate([b / den[0], den / den[0]])[None, :]


def mic_response(x: np.ndarray, rng: np.random.Generator, sr: int = SAMPLE_RATE) -> np.ndarray:
    """A random microphone and loudspeaker-path response, the speech keeping its peak level.

    A high-pass at 50-400 Hz (small capsules lose the bass; 70% of the time), a low-pass at
    3-7.5 kHz (cheap capsules, 50%), and 1-3 resonances or dips of +-12 dB between 150 Hz and
    6 kHz (Q 0.7-4). Frequencies are drawn log-uniformly.

    Args:
        x: f32[N] waveform; rng: randomness source; sr: sample rate in Hz.

    Returns:
        f32[N], scaled to the input's peak (silence stays silence).
    """
    x = _check_audio(x)
    sections = []
    if rng.random() < 0.7:
        sections.append(
            butter(2, np.exp(rng.uniform(np.log(50), np.log(400))), "highpass", fs=sr, output="sos")
        )
    if rng.random() < 0.5:
        sections.append(
            butter(
                4, np.exp(rng.uniform(np.log(3000), np.log(7500))), "lowpass", fs=sr, output="sos"
            )
        )
    for _ in range(int(rng.integers(1, 4))):
        f0 = np.exp(rng.uniform(np.log(150), np.log(6000)))
        sections.append(peaking_sos(f0, rng.uniform(-12, 12), rng.uniform(0.7, 4.0), sr))
    y = sosfilt(np.concatenate(sections), x.astype(np.float64))
    peak_in, peak_out = float(np.max(np.abs(x), initial=0.0)), float(np.max(np.abs(y), initial=0.0))
    if peak_out > 0:
        y = y * (peak_in / peak_out)
    return y.astype(np.float32)


def clip_peaks(x: np.ndarray, level: float) -> np.ndarray:
    """Hard clipping (an overdriven input stage): samples beyond ``level`` times the peak are cut,
    then the result is scaled back to the input's peak. ``level`` in [0.05, 1]."""
    x = _check_audio(x)
    level = _check_range("level", level, 0.05, 1.0)
    peak = float(np.max(np.abs(x), initial=0.0))
    if peak == 0:
        return x.copy()
    return (np.clip(x, -level * peak, level * peak) / level).astype(np.float32)


@dataclass(frozen=True)
class ChannelConfig:
    """Probabilities and ranges of :func:`random_channel`."""

    p_mic: float = 0.7  # probability of a microphone response
    p_codec: float = 0.5  # probability of a lossy codec (drawn uniformly from CODECS)
    compression: tuple[float, float] = (0.0, 1.0)
    p_clip: float = 0.1  # probability of clipping
    clip_level: tuple[float, float] = (0.2, 0.7)  # share of the peak kept


def random_channel(
    x: np.ndarray,
    rng: np.random.Generator,
    p: ChannelConfig = ChannelConfig(),  # noqa: B008 - frozen, immutable default
) -> np.ndarray:
    """The channel between a talker and the recognizer, randomly: a microphone response, then
    clipping, then a lossy codec (in that order, as in a phone). f32[N] -> f32[N], time-aligned,
    level kept (but for what the codec changes)."""
    x = _check_audio(x)
    if rng.random() < p.p_mic:
        x = mic_response(x, rng)
    if rng.random() < p.p_clip:
        x = clip_peaks(x, rng.uniform(*p.clip_level))
    if rng.random() < p.p_codec:
        codec = sorted(CODECS)[int(rng.integers(len(CODECS)))]
        x = codec_roundtrip(x, codec, rng.uniform(*p.compression))
    return x


@dataclass(frozen=True)
class AugmentConfig:
    """Probabilities and ranges of :func:`random_augment` (each range is sampled uniformly)."""

    p_speed: float = 0.5  # probability of speed perturbation
    speed: tuple[float, float] = (0.9, 1.1)  # speed factor
    p_pitch: float = 0.2  # probability of a pitch shift (the slowest step, ~20 ms)
    semitones: tuple[float, float] = (-2.0, 2.0)
    p_vtlp: float = 0.4  # probability of vocal tract length perturbation
    alpha: tuple[float, float] = (0.9, 1.1)
    p_reverb: float = 0.3  # probability of reverberation
    rt60: tuple[float, float] = (0.2, 0.8)  # seconds
    p_noise: float = 0.6  # probability of additive noise
    snr_db: tuple[float, float] = (5.0, 30.0)
    peak: float = 0.9  # output peak level


def random_augment(
    x: np.ndarray,
    rng: np.random.Generator,
    noise_bank: NoiseBank | None = None,
    p: AugmentConfig = AugmentConfig(),  # noqa: B008 - frozen, immutable default
    return_voice: bool = False,
) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
    """Randomly compose speed, pitch, VTLP, reverberation and noise, then peak-normalise.

    Args:
        x: f32[N] waveform at 16 kHz.
        rng: randomness source (the only one used).
        noise_bank: where noise comes from; ``None`` uses synthetic noise.
        p: probabilities and ranges.
        return_voice: also return the speech after the talker's changes only (speed, pitch,
            VTLP), before the room (reverberation, noise): what a teacher hears in
            distillation with `teacher_clean`. The random draws are the same either way.

    Returns:
        f32[M], finite, peak ``p.peak`` (unless silent). ``M == N`` unless speed perturbation was
        applied, then ``M ~= N / factor``. With ``return_voice``: (that, voice f32[M], also
        peak-normalised).
    """
    x = _check_audio(x)
    if not isinstance(rng, np.random.Generator):
        raise ValueError(f"rng: expected np.random.Generator, got {type(rng).__name__}")
    y = x
    if rng.random() < p.p_speed:
        y = speed_perturb(y, rng.uniform(*p.speed))
    if rng.random() < p.p_pitch:
        y = pitch_shift(y, rng.uniform(*p.semitones))
    if rng.random() < p.p_vtlp:
        y = vtlp(y, rng.uniform(*p.alpha))
    voice = y
    if rng.random() < p.p_reverb:
        y = reverberate(y, rng, rng.uniform(*p.rt60))
    if rng.random() < p.p_noise:
        bank = noise_bank if noise_bank is not None else _SYNTHETIC_BANK
        y = add_noise(y, bank.crop(rng, y.size), rng.uniform(*p.snr_db))
    if return_voice:
        return peak_normalize(y, p.peak), peak_normalize(voice, p.peak)
    return peak_normalize(y, p.peak)


_SYNTHETIC_BANK = NoiseBank(None)


def peak_normalize(x: np.ndarray, peak: float = 0.9) -> np.ndarray:
    """Scale f32[N] so that max |x| == peak (silence stays silence); non-finite values -> 0."""
    x = np.nan_to_num(_check_audio(x), nan=0.0, posinf=0.0, neginf=0.0)
    m = float(np.max(np.abs(x)))
    return (x * (peak / m) if m > 0 else x).astype(np.float32)
