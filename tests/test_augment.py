"""Tests of the waveform augmentations: lengths, finiteness, SNR accuracy and the noise bank.

Timings are in `train/benchmarks/augment.py`, not asserted here (they depend on the machine
and its load).
"""

from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf

from train import augment

SR = 16000


def _tone(n: int = 3 * SR, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(n) / SR
    x = 0.5 * np.sin(2 * np.pi * 220 * t) * (1 + 0.5 * np.sin(2 * np.pi * 3 * t))
    return (x + 0.01 * rng.standard_normal(n)).astype(np.float32)


@pytest.mark.parametrize("factor", [0.9, 1.0, 1.1, 1.25])
def test_speed_perturb_changes_length_by_factor(factor):
    x = _tone()
    y = augment.speed_perturb(x, factor)
    assert y.dtype == np.float32 and np.isfinite(y).all()
    assert abs(y.size - x.size / factor) <= 2


def test_speed_perturb_shifts_frequency():
    x = _tone()
    y = augment.speed_perturb(x, 1.2)
    f_x = np.argmax(np.abs(np.fft.rfft(x))) * SR / x.size
    f_y = np.argmax(np.abs(np.fft.rfft(y))) * SR / y.size
    assert f_y == pytest.approx(f_x * 1.2, rel=0.02)


@pytest.mark.parametrize(
    "fn",
    [
        lambda x, r: augment.pitch_shift(x, 2.0),
        lambda x, r: augment.pitch_shift(x, -1.5),
        lambda x, r: augment.vtlp(x, 0.9),
        lambda x, r: augment.vtlp(x, 1.1),
        lambda x, r: augment.reverberate(x, r, 0.5),
    ],
)
def test_length_preserving_transforms(fn):
    x = _tone()
    y = fn(x, np.random.default_rng(0))
    assert y.shape == x.shape and y.dtype == np.float32 and np.isfinite(y).all()
    assert np.max(np.abs(y)) > 0.05


def test_pitch_shift_moves_the_tone():
    x = _tone()
    y = augment.pitch_shift(x, 12.0)
    f_x = np.argmax(np.abs(np.fft.rfft(x))) * SR / x.size
    f_y = np.argmax(np.abs(np.fft.rfft(y))) * SR / y.size
    assert f_y == pytest.approx(2 * f_x, rel=0.03)


def test_vtlp_warp_endpoints_and_monotone():
    f = np.linspace(0, 8000, 257)
    for alpha in (0.9, 1.0, 1.1):
        w = augment.vtlp_warp(f, alpha, 8000.0)
        assert w[0] == 0 and w[-1] == pytest.approx(8000.0)
        assert np.all(np.diff(w) > 0)
        assert w[10] == pytest.approx(f[10] * alpha)


def test_vtlp_near_identity():
    x = _tone()
    assert np.max(np.abs(augment.vtlp(x, 1.0001) - x)) < 0.01


def test_reverb_keeps_timing_and_length():
    x = np.zeros(SR, np.float32)
    x[4000] = 1.0
    y = augment.reverberate(x, np.random.default_rng(1), 0.4)
    assert y.shape == x.shape
    assert np.max(np.abs(y[:4000])) < 1e-6  # causal: nothing before the direct path
    assert np.argmax(np.abs(y)) == 4000
    assert np.sum(y[4100:] ** 2) > 0  # a tail


@pytest.mark.parametrize("snr_db", [-5.0, 0.0, 5.0, 17.5, 30.0])
@pytest.mark.parametrize("kind", augment.NOISE_KINDS)
def test_add_noise_hits_snr(snr_db, kind):
    x = _tone()
    noise = augment.synthetic_noise(np.random.default_rng(2), 12345, kind)  # shorter: tiled
    y = augment.add_noise(x, noise, snr_db)
    added = y.astype(np.float64) - x.astype(np.float64)
    snr = 10 * np.log10(np.mean(x.astype(np.float64) ** 2) / np.mean(added**2))
    assert abs(snr - snr_db) < 0.5, snr


def test_synthetic_noise_kinds_differ_in_spectrum():
    rng = np.random.default_rng(0)
    tilt = {}
    for kind in augment.NOISE_KINDS:
        y = augment.synthetic_noise(rng, SR, kind)
        assert y.shape == (SR,) and np.isfinite(y).all()
        assert np.sqrt(np.mean(y.astype(np.float64) ** 2)) == pytest.approx(1.0, rel=1e-3)
        p = np.abs(np.fft.rfft(y)) ** 2
        tilt[kind] = p[100:1000].sum() / p[4000:7000].sum()
    assert tilt["white"] < tilt["pink"] < tilt["brown"]


def test_noise_bank_from_folder(tmp_path):
    rng = np.random.default_rng(0)
    sf.write(tmp_path / "a.wav", 0.1 * rng.standard_normal(8000), 8000)
    sf.write(tmp_path / "b.flac", 0.1 * rng.standard_normal(16000), 16000, subtype="PCM_16")
    bank = augment.NoiseBank(tmp_path)
    assert not bank.synthetic and len(bank.clips) == 2
    assert bank.clips[0].size == 16000  # resampled from 8 kHz
    crop = bank.crop(rng, 40000)  # longer than any clip
    assert crop.shape == (40000,) and np.isfinite(crop).all()


def test_noise_bank_fallback_and_errors(tmp_path):
    bank = augment.NoiseBank(None)
    assert bank.synthetic
    assert bank.crop(np.random.default_rng(0), 100).shape == (100,)
    with pytest.raises(ValueError, match="directory"):
        augment.NoiseBank(tmp_path / "missing")


def test_noise_bank_real_silence_clips(shared_data):
    folder = shared_data / "speech_commands" / "_silence_"
    if not folder.is_dir():
        pytest.skip(f"no {folder}")
    bank = augment.NoiseBank(folder, max_clips=20)
    assert len(bank.clips) == 20
    assert bank.crop(np.random.default_rng(0), 3 * SR).shape == (3 * SR,)


def test_random_augment_finite_normalised_and_changed():
    """Timing is measured by `python -m train.benchmarks.augment`, not asserted here."""
    x = _tone()
    bank = augment.NoiseBank(None)
    outputs = []
    for seed in range(30):
        y = augment.random_augment(x, np.random.default_rng(seed), bank)
        assert y.dtype == np.float32 and np.isfinite(y).all()
        assert np.max(np.abs(y)) == pytest.approx(0.9, rel=1e-5)
        assert 0.85 * x.size <= y.size <= 1.15 * x.size
        outputs.append(y)
    sizes = {y.size for y in outputs}
    assert x.size in sizes and len(sizes) > 5  # some kept the length, others were sped up/down
    # an utterance whose every coin missed is the input at the 0.9 peak (P = 0.067 with the
    # default probabilities: 2 of these 30); the others are new signals
    scaled = augment.peak_normalize(x, 0.9)
    changed = [y.size != x.size or np.max(np.abs(y - scaled)) > 1e-2 for y in outputs]
    assert 20 <= sum(changed) < 30, changed
    for y, c in zip(outputs, changed, strict=True):
        if not c:
            np.testing.assert_array_equal(y, scaled)


def test_random_augment_deterministic():
    x = _tone()
    a = augment.random_augment(x, np.random.default_rng(5))
    b = augment.random_augment(x, np.random.default_rng(5))
    np.testing.assert_array_equal(a, b)


def test_validation_errors():
    x = _tone()
    with pytest.raises(ValueError, match="1-D"):
        augment.speed_perturb(x[None], 1.1)
    with pytest.raises(ValueError, match="factor"):
        augment.speed_perturb(x, 3.0)
    with pytest.raises(ValueError, match="alpha"):
        augment.vtlp(x, 2.0)
    with pytest.raises(ValueError, match="rt60"):
        augment.reverberate(x, np.random.default_rng(0), 5.0)
    with pytest.raises(ValueError, match="all zeros"):
        augment.add_noise(x, np.zeros(10, np.float32), 10.0)
    with pytest.raises(ValueError, match="kind"):
        augment.synthetic_noise(np.random.default_rng(0), 10, "purple")
    with pytest.raises(ValueError, match="empty"):
        augment.add_noise(np.zeros(0, np.float32), x, 10.0)
