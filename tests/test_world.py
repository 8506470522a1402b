"""WORLD resynthesis (train.corpus.world) checked by measurements independent of pyworld.

The test signal is a vowel made here: a pulse train at a known F0 through a -12 dB/octave
glottal low-pass, lip radiation and four formant resonators at known frequencies. F0 is measured
by autocorrelation, formants by LPC roots, breathiness by the energy between harmonics.
"""

from __future__ import annotations

import os

import numpy as np
import pytest
import soundfile as sf
from scipy.linalg import solve_toeplitz
from scipy.signal import lfilter

from asr.audio import resample
from asr.features import log_mel
from asr.manifest import check_rows, read_manifest, write_manifest
from train.corpus import espeak, world
from train.corpus.world import WorldVoice
from train.data import is_real

SR = 16000
FORMANTS = ((700.0, 90.0), (1220.0, 100.0), (2600.0, 140.0), (3300.0, 200.0))  # (Hz, bandwidth)


def vowel(f0=120.0, seconds=0.8, vibrato=0.0, sr=SR, seed=0) -> np.ndarray:
    """f32[seconds * sr]: /a/-like vowel at ``f0`` Hz, log-F0 swinging by ``vibrato`` at 2.5 Hz."""
    t = np.arange(int(seconds * sr)) / sr
    phase = np.cumsum(f0 * np.exp(vibrato * np.sin(2 * np.pi * 2.5 * t))) / sr
    src = np.diff(np.floor(phase), prepend=0.0)  # one impulse per period
    src = lfilter([1.0], [1.0, -0.96], lfilter([1.0], [1.0, -0.96], src))  # glottal pulse
    y = np.diff(src, prepend=0.0)  # lip radiation
    for f, b in FORMANTS:
        r = np.exp(-np.pi * b / sr)
        y = lfilter([1.0 - r], [1.0, -2 * r * np.cos(2 * np.pi * f / sr), r * r], y)
    y = y + 1e-4 * np.abs(y).max() * np.random.default_rng(seed).standard_normal(y.size)
    y = y * np.minimum(1.0, np.minimum(t, t[-1] - t) / 0.02)  # 20 ms fades
    return (0.5 * y / np.abs(y).max()).astype(np.float32)


def _frames(x, n=640, hop=160):
    return np.lib.stride_tricks.sliding_window_view(x.astype(np.float64), n)[::hop]


def acf_f0(x, lo=60.0, hi=500.0) -> np.ndarray:
    """F0 in Hz of the frames (40 ms) whose normalized autocorrelation peak is > 0.4."""
    out = []
    for fr in _frames(x):
        fr = fr - fr.mean()
        if fr.std() < 1e-4:
            continue
        spec = np.fft.rfft(fr * np.hanning(fr.size), 2 * fr.size)
        ac = np.fft.irfft(np.abs(spec) ** 2)[: fr.size]
        ac = ac / ac[0]
        a, b = int(SR / hi), int(SR / lo)
        k = a + int(np.argmax(ac[a:b]))
        if ac[k] < 0.4:
            continue
        y0, y1, y2 = ac[k - 1], ac[k], ac[k + 1]
        out.append(SR / (k + 0.5 * (y0 - y2) / (y0 - 2 * y1 + y2)))  # parabolic peak
    return np.array(out)


def lpc_f1_f2(x, order=10) -> np.ndarray:
    """Median (F1, F2) in Hz over 32 ms frames, from the roots of an LPC polynomial."""
    found = []
    for fr in _frames(x, 512, 160):
        if fr.std() < 1e-3:
            continue
        fr = np.append(fr[0], fr[1:] - 0.63 * fr[:-1]) * np.hamming(fr.size)  # pre-emphasis
        r = np.correlate(fr, fr, "full")[fr.size - 1 : fr.size + order]
        a = solve_toeplitz(r[:-1], -r[1:])
        roots = np.roots(np.concatenate([[1.0], a]))
        freqs = np.sort(np.angle(roots[np.imag(roots) > 0]) * SR / (2 * np.pi))
        freqs = freqs[freqs > 250]
        if freqs.size >= 2:
            found.append(freqs[:2])
    return np.median(np.array(found), axis=0)


def centroid(x, fmax=5000.0) -> float:
    """Spectral centroid (Hz) of the summed power spectrum below ``fmax``."""
    spec = np.abs(np.fft.rfft(_frames(x, 512, 160) * np.hanning(512), axis=1)) ** 2
    f = np.fft.rfftfreq(512, 1 / SR)
    p = spec[:, f <= fmax].sum(0)
    return float((f[f <= fmax] * p).sum() / p.sum())


def harmonic_to_noise_db(x, f0=120.0) -> float:
    """Energy at the harmonics of ``f0`` over energy midway between them, 300-4000 Hz, in dB."""
    seg = x[SR // 8 : -SR // 8]
    power = np.abs(np.fft.rfft(seg * np.hanning(seg.size))) ** 2
    f = np.fft.rfftfreq(seg.size, 1 / SR)
    band = (f > 300) & (f < 4000)
    pos = (f / f0) % 1.0
    at = band & (np.minimum(pos, 1 - pos) < 0.1)
    between = band & (np.abs(pos - 0.5) < 0.15)
    return float(10 * np.log10(power[at].sum() / power[between].sum()))


def logmel_distance(a, b) -> float:
    """Mean |log-mel difference| (nats) over the frames within 8 nats of a's loudest."""
    fa, fb = log_mel(a), log_mel(b)
    active = fa.max(1) > fa.max() - 8.0
    return float(np.abs(fa[active] - fb[active]).mean())


@pytest.fixture(scope="module")
def feats():
    return world.analyze(vowel())


@pytest.fixture(scope="module")
def speech():
    x, sr = espeak.synthesize("turn on the kitchen lights", "en-us+f2", 160, 50, 50)
    assert sr == SR
    return x


def test_identity_voice_reproduces_the_input(feats, speech):
    # Measured: 0.17 nats (vowel), 0.62 (eSpeak NG speech: WORLD's noise excitation differs
    # from the original in every unvoiced frame); random voices are 0.9-2.4 away.
    x = feats.x
    y = world.convert(feats, WorldVoice())
    assert y.dtype == np.float32 and y.shape == x.shape and np.isfinite(y).all()
    assert logmel_distance(x, y) < 0.3
    assert np.sqrt(np.mean(y**2)) == pytest.approx(np.sqrt(np.mean(x**2)), rel=1e-3)
    assert np.median(acf_f0(y)) == pytest.approx(120.0, rel=0.01)
    ys = world.resynthesize(speech, WorldVoice())
    d_identity = logmel_distance(speech, ys)
    assert d_identity < 0.8
    changed = WorldVoice(f0_scale=1.5, formant_warp=1.15)
    assert logmel_distance(speech, world.resynthesize(speech, changed)) > d_identity + 0.3


@pytest.mark.parametrize("scale", [0.7, 1.5])
def test_f0_scale_scales_the_measured_f0(feats, scale):
    f_in = np.median(acf_f0(feats.x))
    y = world.convert(feats, WorldVoice(f0_scale=scale))
    assert np.median(acf_f0(y)) / f_in == pytest.approx(scale, rel=0.05)  # measured: 0.1%
    # the vocal tract stays: F1, F2 move by under 8% (measured: 1-6%, harmonics sample them)
    np.testing.assert_allclose(lpc_f1_f2(y) / lpc_f1_f2(feats.x), 1.0, atol=0.08)


def test_formant_warp_moves_formants_and_centroid_not_f0(feats):
    x = feats.x
    f_ref, c_ref = lpc_f1_f2(x), centroid(x)
    up = world.convert(feats, WorldVoice(formant_warp=1.15))
    down = world.convert(feats, WorldVoice(formant_warp=0.85))
    # measured F1, F2 ratios: 1.16, 1.14 up; 0.88, 0.86 down; centroid 1.15 / 0.83
    np.testing.assert_allclose(lpc_f1_f2(up) / f_ref, 1.15, atol=0.06)
    np.testing.assert_allclose(lpc_f1_f2(down) / f_ref, 0.85, atol=0.06)
    assert centroid(up) > 1.08 * c_ref and centroid(down) < 0.92 * c_ref
    for y in (up, down):
        assert np.median(acf_f0(y)) == pytest.approx(120.0, rel=0.01)


def test_tilt_moves_the_centroid(feats):
    c = centroid(world.convert(feats, WorldVoice()))
    assert centroid(world.convert(feats, WorldVoice(tilt_db=3.0))) > 1.08 * c  # measured 1.13
    assert centroid(world.convert(feats, WorldVoice(tilt_db=-3.0))) < 0.92 * c  # measured 0.87


def test_dio_analysis_works_too():
    y = world.resynthesize(vowel(), WorldVoice(f0_scale=1.5), f0_method="dio")
    assert np.median(acf_f0(y)) == pytest.approx(180.0, rel=0.05)
    with pytest.raises(ValueError, match="f0_method"):
        world.analyze(vowel(), f0_method="yin")


def test_f0_range_scales_intonation_around_the_mean():
    f = world.analyze(vowel(vibrato=0.15))
    f_in = acf_f0(f.x)
    for r in (0.5, 1.5):
        f_out = acf_f0(world.convert(f, WorldVoice(f0_range=r)))
        ratio = np.std(np.log(f_out)) / np.std(np.log(f_in))
        assert ratio == pytest.approx(r, rel=0.1)  # measured: 0.499, 1.495
        assert np.median(f_out) == pytest.approx(np.median(f_in), rel=0.05)


def test_breath_adds_noise_between_harmonics(feats):
    hnr = {
        b: harmonic_to_noise_db(world.convert(feats, WorldVoice(breath=b))) for b in (-0.5, 0, 0.5)
    }
    # measured: 54.5, 51.8, 31.3 dB
    assert hnr[0.5] < hnr[0] - 10
    assert hnr[-0.5] > hnr[0] + 1


def test_silent_short_unvoiced_and_8khz_input():
    zeros = np.zeros(SR, np.float32)
    y = world.resynthesize(zeros, WorldVoice(f0_scale=1.5))
    assert y.dtype == np.float32 and y.shape == zeros.shape and not y.any()
    for n in (1, 100, world.MIN_SAMPLES - 1):
        x = np.random.default_rng(n).uniform(-0.1, 0.1, n).astype(np.float32)
        np.testing.assert_array_equal(world.resynthesize(x, WorldVoice(f0_scale=1.5)), x)
    noise = lfilter([1.0], [1.0, -0.9], np.random.default_rng(0).standard_normal(SR // 2))
    noise = (0.1 * noise / np.abs(noise).max()).astype(np.float32)
    y = world.resynthesize(noise, WorldVoice(f0_scale=1.6, formant_warp=1.2, breath=0.5))
    assert y.shape == noise.shape and np.isfinite(y).all()
    assert np.sqrt(np.mean(y**2)) == pytest.approx(np.sqrt(np.mean(noise**2)), rel=1e-3)
    # 8 kHz audio upsampled (as load_audio does): still band-limited, F0 still scaled
    x8 = resample(vowel(sr=8000), 8000, SR)
    y = world.resynthesize(x8, WorldVoice(f0_scale=1.3))
    power = np.abs(np.fft.rfft(y)) ** 2
    assert power[np.fft.rfftfreq(y.size, 1 / SR) > 4300].sum() < 1e-3 * power.sum()
    assert np.median(acf_f0(y)) == pytest.approx(1.3 * 120.0, rel=0.05)
    assert np.abs(world.resynthesize(0.999 * x8 / np.abs(x8).max(), WorldVoice())).max() <= 0.99


def test_inputs_are_checked():
    with pytest.raises(ValueError, match="f0_scale"):
        WorldVoice(f0_scale=5.0)
    with pytest.raises(ValueError, match="formant_warp"):
        WorldVoice(formant_warp=float("nan"))
    with pytest.raises(ValueError, match="1-D"):
        world.resynthesize(np.zeros((2, 900), np.float32), WorldVoice())
    with pytest.raises(ValueError, match="finite"):
        world.resynthesize(np.full(900, np.nan, np.float32), WorldVoice())
    with pytest.raises(ValueError, match="variants"):
        world.resynthesize_manifest([], "unused", variants=0)


def test_random_voices_are_plausible_and_deterministic(feats):
    rng = np.random.default_rng(0)
    voices = [world.random_voice(rng) for _ in range(2000)]
    for name, (lo, hi) in world.RANDOM_RANGES.items():
        vals = np.array([getattr(v, name) for v in voices])
        assert lo <= vals.min() and vals.max() <= hi, name
    log_f0 = np.log([v.f0_scale for v in voices])
    log_warp = np.log([v.formant_warp for v in voices])
    assert np.corrcoef(log_f0, log_warp)[0, 1] > 0.7  # higher voices, shorter vocal tracts
    for source_f0 in (60.0, 95.0, 300.0):  # new mean F0 stays in the plausible range
        scales = np.array([world.random_voice(rng, source_f0).f0_scale for _ in range(500)])
        lo, hi = np.array(world.PLAUSIBLE_F0) / source_f0
        assert scales.min() >= max(lo, 0.6) - 1e-9 and scales.max() <= min(hi, 1.7) + 1e-9
        assert np.ptp(scales) > 0.3
    v = world.variant_voice(3, "/a/b.flac", 1)
    assert v == world.variant_voice(3, "/a/b.flac", 1)
    assert v != world.variant_voice(3, "/a/b.flac", 2) and v != world.variant_voice(
        4, "/a/b.flac", 1
    )
    assert v != world.variant_voice(3, "/a/c.flac", 1)
    np.testing.assert_array_equal(world.convert(feats, v), world.convert(feats, v))


def test_manifest_variants_check_and_resume(tmp_path, speech):
    from asr.cli import main

    src = tmp_path / "src"
    src.mkdir()
    sf.write(src / "req.flac", speech, SR, subtype="PCM_16")
    sf.write(src / "0_george_0.wav", vowel(sr=8000), 8000, subtype="PCM_16")  # FSDD-like
    rows = [
        {
            "audio": str(src / "req.flac"),
            "text": "turn on the kitchen lights",
            "speaker": "en-us+f2",
            "duration": speech.size / SR,
            "speech_start": 0.01,
            "speech_end": 1.0,
            "context": ["kitchen"],
            "split": "train",
            "domain": "lights",
            "voice": {"name": "en-us+f2", "rate_wpm": 160, "pitch": 50, "pitch_range": 50},
            "family": "espeak",
        },
        {"audio": str(src / "0_george_0.wav"), "text": "zero", "speaker": "george", "split": "dev"},
    ]
    manifest = write_manifest(rows, src / "src.jsonl")
    out = tmp_path / "world"
    args = ["corpus", "world", str(manifest), "--out", str(out), "--variants", "2"]
    assert main([*args, "--workers", "1", "--no-progress"]) == 0
    made = read_manifest(out / "all.jsonl")
    good, problems = check_rows(made)
    assert not problems and len(good) == 4
    assert [r["speaker"] for r in made] == [
        "world0:en-us+f2",
        "world1:en-us+f2",
        "world0:george",
        "world1:george",
    ]
    for r, s in zip(made, [rows[0]] * 2 + [rows[1]] * 2, strict=True):
        assert r["family"] == "world" and r["source_audio"] == s["audio"] and not is_real(r)
        for key in ("text", "split", "speech_start", "speech_end", "context", "domain"):
            assert r.get(key) == s.get(key), key
        assert r["voice"]["source_speaker"] == s["speaker"]
        assert r["voice"]["source_family"] == s.get("family")
        assert sf.info(r["audio"]).samplerate == SR and sf.info(r["audio"]).subtype == "PCM_16"
        assert r["duration"] == pytest.approx(sf.info(s["audio"]).duration, abs=1e-3)
        x = sf.read(r["audio"], dtype="float32")[0]
        assert np.isfinite(x).all() and np.abs(x).max() > 0.01
    assert made[0]["voice"]["source_voice"] == rows[0]["voice"]
    assert made[0]["audio"] != made[1]["audio"] and made[0]["voice"] != made[1]["voice"]
    assert [r["split"] for r in read_manifest(out / "dev.jsonl")] == ["dev", "dev"]
    mtimes = {r["audio"]: os.stat(r["audio"]).st_mtime_ns for r in made}
    # a rerun (in spawned workers) keeps every file and returns the same rows
    again = world.resynthesize_manifest(
        read_manifest(manifest), out, 2, 0, workers=2, progress=False
    )
    assert again == made
    assert {r["audio"]: os.stat(r["audio"]).st_mtime_ns for r in again} == mtimes
    # an interrupted run (one file missing) makes only that file again, the same samples
    lost = made[1]["audio"]
    before = sf.read(lost, dtype="int16")[0]
    os.remove(lost)
    world.resynthesize_manifest(read_manifest(manifest), out, 2, 0, workers=1, progress=False)
    np.testing.assert_array_equal(sf.read(lost, dtype="int16")[0], before)
    others = {a: t for a, t in mtimes.items() if a != lost}
    assert {a: os.stat(a).st_mtime_ns for a in others} == others


def test_rows_with_unreadable_audio_are_skipped_and_listed(tmp_path, capsys):
    sf.write(tmp_path / "a.wav", vowel(seconds=0.3), SR, subtype="PCM_16")
    rows = [
        {"audio": str(tmp_path / "missing.wav"), "text": "one"},
        {"audio": str(tmp_path / "a.wav"), "text": "two"},
    ]
    made = world.resynthesize_manifest(rows, tmp_path / "w", 1, 0, workers=1, progress=False)
    assert [r["text"] for r in made] == ["two"] and made[0]["speaker"] == "world0:a"
    assert "skipped 1 rows" in capsys.readouterr().err
