import numpy as np
import pytest
import soundfile as sf

from asr.audio import SAMPLE_RATE, AudioError, load_audio, validate_audio


def test_reads_wav_and_flac_and_resamples(tmp_path):
    t = np.arange(8000) / 8000
    x = (0.5 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
    for ext in ("wav", "flac"):
        p = tmp_path / f"a.{ext}"
        sf.write(p, x, 8000)
        y = load_audio(p)
        assert y.dtype == np.float32 and y.ndim == 1
        assert abs(len(y) - SAMPLE_RATE) <= 1, len(y)
        # the tone survives resampling: its spectrum peaks at 440 Hz
        f = np.fft.rfftfreq(len(y), 1 / SAMPLE_RATE)[np.argmax(np.abs(np.fft.rfft(y)))]
        assert abs(f - 440) < 2, f


def test_stereo_int16_to_mono_float():
    x = np.stack([np.full(100, 16384, np.int16), np.zeros(100, np.int16)], axis=1)
    y = validate_audio(x, SAMPLE_RATE)
    np.testing.assert_allclose(y, 0.25, atol=1e-4)


@pytest.mark.parametrize(
    "x, rate, msg",
    [
        (np.zeros(0, np.float32), 16000, "empty"),
        (np.array([0.0, np.nan], np.float32), 16000, "NaN"),
        (np.array([0.0, np.inf], np.float32), 16000, "NaN or infinite"),
        (np.zeros((2, 2, 2), np.float32), 16000, "shaped"),
        (np.zeros(10, np.float32), 0, "positive"),
        (np.zeros(10, np.float32), 1000, "outside"),
        (np.array(["a"]), 16000, "numeric"),
    ],
)
def test_bad_samples_raise(x, rate, msg):
    with pytest.raises(AudioError, match=msg):
        validate_audio(x, rate)


def test_bad_files_raise(tmp_path):
    with pytest.raises(AudioError, match="no such file"):
        load_audio(tmp_path / "missing.wav")
    with pytest.raises(AudioError, match="folder"):
        load_audio(tmp_path)
    p = tmp_path / "text.wav"
    p.write_text("this is not audio")
    with pytest.raises(AudioError, match="not a readable audio file"):
        load_audio(p)
    p = tmp_path / "empty.wav"
    sf.write(p, np.zeros(0, np.float32), 16000)
    with pytest.raises(AudioError, match="empty"):
        load_audio(p)
