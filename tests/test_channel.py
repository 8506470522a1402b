"""The channel augmentation (microphone response, clipping, lossy codecs) and distillation with a
teacher that hears the utterance before the room and the channel (`teacher_clean`)."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.signal import sosfreqz
from test_noise_stream import _cfg, rows, tok  # noqa: F401 - fixtures

import train.data as data
from asr.features import SAMPLE_RATE
from train import augment
from train.augment import CODECS, clip_peaks, codec_roundtrip, mic_response, peaking_sos


def _speechlike(seconds=1.5, seed=0):
    """Harmonics of a gliding 120-220 Hz pitch under a slow envelope, with faint noise."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * SAMPLE_RATE)) / SAMPLE_RATE
    f0 = 120 + 100 * t / seconds
    phase = 2 * np.pi * np.cumsum(f0) / SAMPLE_RATE
    x = sum(np.sin(k * phase) / k for k in range(1, 25))
    x = x * (0.5 - 0.5 * np.cos(2 * np.pi * 2 * t)) + 0.01 * rng.standard_normal(t.size)
    return (0.5 * x / np.max(np.abs(x))).astype(np.float32)


def _band_energy(x, lo, hi):
    spec = np.abs(np.fft.rfft(x)) ** 2
    f = np.fft.rfftfreq(x.size, 1 / SAMPLE_RATE)
    return float(spec[(f >= lo) & (f < hi)].sum())


@pytest.mark.parametrize("codec", sorted(CODECS))
def test_codec_roundtrip_keeps_length_timing_and_most_of_the_signal(codec):
    x = _speechlike()
    y = codec_roundtrip(x, codec, 0.5)
    assert y.dtype == np.float32 and y.shape == x.shape and np.all(np.isfinite(y))
    assert not np.array_equal(x, y)  # lossy: it did something
    # time-aligned: the cross-correlation peaks at lag 0 (within a sample)
    lags = np.arange(-400, 401)
    mid = slice(4000, 20000)
    xc = [float(np.dot(x[mid], np.roll(y, -k)[mid])) for k in lags]
    assert abs(int(lags[int(np.argmax(xc))])) <= 1
    # below 3.4 kHz the codec keeps the waveform: residual well under the signal
    err = _band_energy(y - x, 0, 3400) / _band_energy(x, 0, 3400)
    assert err < 0.3, err
    if CODECS[codec][2] == 8000:  # the telephone codecs band-limit to 4 kHz
        assert _band_energy(y, 4200, 8000) < 0.05 * _band_energy(x, 4200, 8000)


def test_codec_roundtrip_refuses_bad_arguments():
    x = _speechlike(0.2)
    with pytest.raises(ValueError, match="codec"):
        codec_roundtrip(x, "aac")
    with pytest.raises(ValueError, match="compression"):
        codec_roundtrip(x, "opus", 1.5)
    with pytest.raises(ValueError, match="empty"):
        codec_roundtrip(np.zeros(0, np.float32), "mp3")
    # more compression, fewer bits, larger error
    e = [float(np.mean((codec_roundtrip(x, "opus", c) - x) ** 2)) for c in (0.0, 1.0)]
    assert e[1] > e[0]


def test_peaking_section_matches_its_specification():
    """The cookbook formula, checked by its frequency response: gain_db at f0, 0 dB far away,
    half the dB gain at the band edges f0 * 2^(+-1/(2Q)) (bandwidth in octaves ~ 1/Q)."""
    for f0, g, q in ((1000.0, 9.0, 2.0), (300.0, -12.0, 0.7), (4000.0, 6.0, 4.0)):
        sos = peaking_sos(f0, g, q)
        freqs = np.array([f0, 20.0, 7900.0])
        _, h = sosfreqz(sos, worN=freqs, fs=SAMPLE_RATE)
        db = 20 * np.log10(np.abs(h))
        np.testing.assert_allclose(db[0], g, atol=1e-6)
        assert abs(db[1]) < 0.3 and abs(db[2]) < 1.5
        # unity gain at 0 Hz and at Nyquist exactly
        _, h2 = sosfreqz(sos, worN=np.array([0.0, SAMPLE_RATE / 2]), fs=SAMPLE_RATE)
        np.testing.assert_allclose(np.abs(h2), 1.0, atol=1e-9)


def test_mic_response_keeps_length_and_peak_and_colours_the_spectrum():
    x = _speechlike()
    changed = 0
    for seed in range(8):
        y = mic_response(x, np.random.default_rng(seed))
        assert y.shape == x.shape and y.dtype == np.float32
        np.testing.assert_allclose(np.max(np.abs(y)), np.max(np.abs(x)), rtol=1e-5)
        # the balance of low and high bands moves by more than 1 dB
        ratio = lambda z: _band_energy(z, 100, 1000) / _band_energy(z, 1000, 6000)  # noqa: E731
        changed += abs(10 * np.log10(ratio(y) / ratio(x))) > 1.0
        np.testing.assert_array_equal(y, mic_response(x, np.random.default_rng(seed)))
    assert changed >= 6
    assert not np.any(mic_response(np.zeros(800, np.float32), np.random.default_rng(0)))


def test_clip_peaks_against_numpy():
    x = _speechlike(0.3)
    y = clip_peaks(x, 0.4)
    p = np.max(np.abs(x))
    np.testing.assert_allclose(y, np.clip(x, -0.4 * p, 0.4 * p) / 0.4, rtol=1e-6)
    np.testing.assert_array_equal(clip_peaks(x, 1.0), x)
    with pytest.raises(ValueError, match="level"):
        clip_peaks(x, 0.0)


def test_random_channel_is_a_function_of_the_stream_and_keeps_timing():
    x = _speechlike()
    outs = [augment.random_channel(x, np.random.default_rng(s)) for s in range(6)]
    for s, y in enumerate(outs):
        assert y.shape == x.shape
        np.testing.assert_array_equal(y, augment.random_channel(x, np.random.default_rng(s)))
    assert sum(not np.array_equal(y, x) for y in outs) >= 4


def test_random_augment_returns_the_voice_with_the_same_draws():
    x = _speechlike()
    for seed in range(6):
        y = augment.random_augment(x, np.random.default_rng(seed))
        y2, voice = augment.random_augment(x, np.random.default_rng(seed), return_voice=True)
        np.testing.assert_array_equal(y, y2)
        assert voice.shape == y.shape  # speed changes both alike
    # with reverberation and noise certain, the voice is the speech without them
    p = augment.AugmentConfig(p_speed=0, p_pitch=0, p_vtlp=0, p_reverb=1.0, p_noise=1.0)
    y, voice = augment.random_augment(x, np.random.default_rng(0), p=p, return_voice=True)
    np.testing.assert_allclose(voice, augment.peak_normalize(x), atol=1e-6)
    assert not np.allclose(y, voice, atol=1e-3)


def test_teacher_clean_batches_carry_the_teachers_features(rows, tok):  # noqa: F811
    """The student's stream is that of the recipe without `teacher_clean` (same draws); the
    teacher's features are of the same frames, without the band limit, the channel, and the
    room of `random_augment`."""
    base = dict(steps=3, channel_prob=1.0, narrowband_prob=1.0, noise_pad_prob=0.5)
    plain, _ = data.training_dataset(rows, tok, _cfg(**base), None)
    cfg = _cfg(**base, teacher="some-model", teacher_clean=True)
    both, _ = data.training_dataset(rows, tok, cfg, None)
    for a, b in zip(list(plain), list(both), strict=True):
        assert "teacher_feats" not in a
        np.testing.assert_array_equal(a["feats"], b["feats"])
        assert b["teacher_feats"].shape == b["feats"].shape
        pad = b["feat_paddings"] > 0
        assert not np.any(b["teacher_feats"][pad])
        # narrowband on every student row: the teacher's top bands are louder
        live = ~pad
        top_s = b["feats"][live][:, 70:].mean()
        top_t = b["teacher_feats"][live][:, 70:].mean()
        assert top_t > top_s + 1.0

    # without augmentation the teacher hears exactly what the student does
    loader = data.UtteranceLoader(rows, tok, cfg, None, augment=False)
    f, ft = loader.features_pair(1, np.random.default_rng(0))
    assert f is ft
    # with only a band limit, the teacher's is the student's waveform before it (same gain)
    quiet = cfg.replace(augment_prob=0.0, channel_prob=0.0, narrowband_prob=1.0)
    loader = data.UtteranceLoader(rows, tok, quiet, None)
    f, ft = loader.features_pair(1, np.random.default_rng(3))
    wide = data.UtteranceLoader(rows, tok, quiet.replace(narrowband_prob=0.0), None)
    np.testing.assert_array_equal(ft, wide.features(1, np.random.default_rng(3)))
    assert not np.array_equal(f, ft)


def test_teacher_clean_needs_a_teacher(rows, tmp_path):  # noqa: F811
    from train.trainer import train

    with pytest.raises(ValueError, match="teacher_clean"):
        train(_cfg(steps=1, teacher_clean=True), rows, tmp_path / "w", progress=False)
