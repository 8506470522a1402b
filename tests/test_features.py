import librosa
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from asr.features import HOP_LENGTH, N_MELS, WIN_LENGTH, FeatureStream, log_mel, num_frames


def _reference(x: np.ndarray) -> np.ndarray:
    """Independent float64 reference: librosa's STFT and mel filterbank, no centering.

    librosa centres the 400-sample window inside the 512-point frame (56 zeros each side), so
    56 leading zeros align its frame i with our samples [160 i, 160 i + 400)."""
    x = np.concatenate([np.zeros(56), x.astype(np.float64)])
    s = (
        np.abs(
            librosa.stft(
                x,
                n_fft=512,
                hop_length=HOP_LENGTH,
                win_length=WIN_LENGTH,
                window="hann",
                center=False,
            )
        )
        ** 2
    )
    fb = librosa.filters.mel(
        sr=16000, n_fft=512, n_mels=N_MELS, fmin=20.0, fmax=7600.0, dtype=np.float64
    )
    return np.log(fb @ s + 1e-6).T


def test_matches_librosa_reference():
    rng = np.random.default_rng(0)
    x = (0.1 * rng.standard_normal(16000)).astype(np.float32)
    f = log_mel(x)
    ref = _reference(x)
    assert f.shape == ref.shape == (num_frames(16000), 80)
    np.testing.assert_allclose(f, ref, atol=2e-3)
    print("max abs diff vs float64 librosa:", np.abs(f - ref).max())


@settings(max_examples=25, deadline=None)
@given(n=st.integers(400, 6000), chunks=st.lists(st.integers(1, 900), min_size=1, max_size=30))
def test_chunked_equals_whole(n, chunks):
    x = np.random.default_rng(n).standard_normal(n).astype(np.float32)
    s, out, pos = FeatureStream(), [], 0
    for c in chunks:
        out.append(s.push(x[pos : pos + c]))
        pos += c
    out.append(s.push(x[pos:]))
    got = np.concatenate(out)
    np.testing.assert_allclose(got, log_mel(x), atol=1e-4)


def test_short_and_bad_input():
    assert log_mel(np.zeros(10, np.float32)).shape == (1, 80)
    with pytest.raises(ValueError, match="empty"):
        log_mel(np.zeros(0, np.float32))
    with pytest.raises(ValueError, match="mono"):
        log_mel(np.zeros((10, 2), np.float32))
