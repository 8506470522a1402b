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


def test_absurd_magnitudes_are_rejected_and_accepted_ones_give_finite_features():
    """Float samples are full scale at 1.0: far beyond that (1e30 overflows the log-mel power to
    inf, and integer PCM stored as floats is 90 dB too loud) is an AudioError, not NaN logits."""
    from asr.audio import MAX_FLOAT_PEAK
    from asr.features import log_mel

    for peak in (1e30, 1e300, 3.4e38, 32767.0, 2 * MAX_FLOAT_PEAK):
        dtype = np.float64 if peak > 3.4e38 else np.float32
        x = np.zeros(1000, dtype)
        x[10] = -peak
        with pytest.raises(AudioError, match="peak"):
            validate_audio(x, SAMPLE_RATE, name="clip")
    with pytest.raises(AudioError, match="clip: .*integer PCM"):
        validate_audio(np.full(100, 32767.0), SAMPLE_RATE, name="clip")
    rng = np.random.default_rng(0)
    for peak in (MAX_FLOAT_PEAK, 1.5, 1e-30, 1e-45):
        x = (peak * np.sign(rng.standard_normal(4000))).astype(np.float64)
        for rate in (SAMPLE_RATE, 8000, 44100):
            y = validate_audio(x, rate)
            assert np.all(np.isfinite(log_mel(y))), (peak, rate)


@pytest.mark.parametrize(
    "x",
    [
        np.array([True, False]),
        np.array([0.1 + 1j, 0.2]),
        np.array([0.1, 0.2], dtype=object),
        np.array(["2020-01-01"], dtype="datetime64[D]"),
        np.zeros(3, dtype=[("a", "f4")]),
        [[0.1, 0.2], [0.3]],  # ragged
        "abc",
        None,
    ],
    ids=["bool", "complex", "object", "datetime", "structured", "ragged", "str", "none"],
)
def test_non_numeric_dtypes_raise(x):
    with pytest.raises(AudioError, match="mic: expected"):
        validate_audio(x, SAMPLE_RATE, name="mic")


def test_odd_numeric_dtypes_convert():
    np.testing.assert_array_equal(validate_audio(np.full(5, 0.5, np.float16), SAMPLE_RATE), 0.5)
    # unsigned PCM is offset binary (8-bit WAV): 128 is silence, 0 is -1
    y = validate_audio(np.array([0, 128, 255], np.uint8), SAMPLE_RATE)
    np.testing.assert_allclose(y, [-1.0, 0.0, 127 / 128], atol=1e-6)
    y = validate_audio(np.array([-(2**31), 0], np.int32), SAMPLE_RATE)
    np.testing.assert_allclose(y, [-1.0, 0.0])


@pytest.mark.parametrize(
    "shape, msg",
    [((), "shaped"), ((4, 2, 1), "shaped"), ((100, 0), "channels"), ((2, 1600), "channels")],
)
def test_bad_shapes_raise(shape, msg):
    with pytest.raises(AudioError, match=msg):
        validate_audio(np.zeros(shape, np.float32), SAMPLE_RATE)


@pytest.mark.parametrize("rate", [16000.0, np.float32(16000), np.int64(16000), np.uint16(16000)])
def test_integral_sample_rates_of_any_numeric_type(rate):
    y = validate_audio(np.zeros(100, np.float32), rate)
    assert y.shape == (100,)
    with pytest.raises(AudioError, match="outside"):
        validate_audio(np.zeros(100, np.float32), 10**400)  # too big for a float: no OverflowError


@pytest.mark.parametrize(
    "rate",
    [True, np.bool_(True), 16000.5, float("nan"), float("inf"), "16000", None, -8000, -(10**400)],
)
def test_bad_sample_rates_raise(rate):
    with pytest.raises(AudioError, match="sample rate must be a positive whole number of Hz"):
        validate_audio(np.zeros(100, np.float32), rate)


def test_odd_rates_resample_with_a_small_ratio(monkeypatch):
    """A rate with no small ratio to 16 kHz (16001 Hz: up 16000, down 16001, a 300k-tap filter
    and seconds per second of audio) is resampled by the nearest ratio with terms <= 1000:
    fast, and the tone stays in place."""
    import scipy.signal

    calls = []
    real = scipy.signal.resample_poly

    def spy(x, up, down, **kw):
        calls.append((up, down))
        return real(x, up, down, **kw)

    monkeypatch.setattr(scipy.signal, "resample_poly", spy)
    t = np.arange(3 * 16001) / 16001
    x = (0.5 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
    y = validate_audio(x, 16001)
    assert calls and all(max(c) <= 1000 for c in calls), calls
    assert abs(len(y) - 3 * SAMPLE_RATE) <= 3, len(y)
    f = np.fft.rfftfreq(len(y), 1 / SAMPLE_RATE)[np.argmax(np.abs(np.fft.rfft(y)))]
    assert abs(f - 440) < 2, f
    validate_audio(x, 44100)  # the usual rates stay exact: 160 / 441
    assert calls[-1] == (160, 441)


def _wav(tmp_path, name="a.wav", n=16000, **kw) -> bytes:
    p = tmp_path / name
    sf.write(p, (0.1 * np.random.default_rng(0).standard_normal(n)).astype(np.float32), 16000, **kw)
    return p.read_bytes()


def test_truncated_files_give_samples_or_an_error_naming_the_file(tmp_path):
    for name, kw in [("a.wav", {}), ("a.flac", {}), ("a.ogg", {"subtype": "VORBIS"})]:
        data = _wav(tmp_path, name, **kw)
        for cut in (0, 4, 12, 44, 45, 100, len(data) // 2, len(data) - 1):
            p = tmp_path / f"cut{cut}_{name}"
            p.write_bytes(data[:cut])
            try:
                y = load_audio(p)
            except AudioError as e:
                assert str(p) in str(e)
            else:
                assert y.dtype == np.float32 and 0 < y.size <= 16000 and np.all(np.isfinite(y))


def test_lying_headers(tmp_path):
    # FLAC STREAMINFO claiming 2**36 - 1 samples (256 GiB as float32) over a 1 s body: an
    # AudioError or the real samples, never a MemoryError from allocating what the header says
    data = bytearray(_wav(tmp_path, "a.flac"))
    v = int.from_bytes(data[18:26], "big") | (2**36 - 1)
    data[18:26] = v.to_bytes(8, "big")
    p = tmp_path / "huge.flac"
    p.write_bytes(bytes(data))
    try:
        assert load_audio(p).size <= 16000
    except AudioError as e:
        assert str(p) in str(e) and "allocate" not in str(e)
    # WAV data size larger than the file: the samples that are there
    data = bytearray(_wav(tmp_path))
    data[40:44] = (2**31).to_bytes(4, "little")
    p = tmp_path / "long.wav"
    p.write_bytes(bytes(data))
    assert load_audio(p).size == 16000
    # absurd sample rate and zero channels in the header
    for off, size, value, msg in [(24, 4, 2**31 - 1, "outside"), (22, 2, 0, "not a readable")]:
        data = bytearray(_wav(tmp_path))
        data[off : off + size] = value.to_bytes(size, "little")
        p = tmp_path / f"h{off}.wav"
        p.write_bytes(bytes(data))
        with pytest.raises(AudioError, match=f"{p}: .*{msg}"):
            load_audio(p)


def test_files_that_are_not_regular_files(tmp_path):
    import os

    fifo = tmp_path / "pipe.wav"
    os.mkfifo(fifo)  # opening it would wait for a writer forever
    with pytest.raises(AudioError, match="not a regular file"):
        load_audio(fifo)
    p = tmp_path / "noise.wav"
    p.write_bytes(np.random.default_rng(0).bytes(5000))
    with pytest.raises(AudioError, match=f"{p}: not a readable audio file"):
        load_audio(p)
