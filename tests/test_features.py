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


def _stream(x: np.ndarray, chunks) -> np.ndarray:
    """Feeds `x` in chunks of the given sizes (the rest in one last push), then finishes."""
    s, out, pos = FeatureStream(), [], 0
    for c in chunks:
        out.append(s.push(x[pos : pos + c]))
        pos += c
    out.append(s.push(x[pos:]))
    out.append(s.finish())
    return np.concatenate(out)


@settings(max_examples=25, deadline=None, derandomize=True)
@given(n=st.integers(1, 6000), chunks=st.lists(st.integers(0, 900), min_size=1, max_size=30))
def test_chunked_equals_whole(n, chunks):
    x = np.random.default_rng(n).standard_normal(n).astype(np.float32)
    got = _stream(x, chunks)
    assert got.dtype == np.float32
    np.testing.assert_array_equal(got, log_mel(x))  # bit for bit, not approximately


def test_stream_equals_whole_for_every_length():
    """Every length 1..1200 (below one window, at it, across hops), random chunkings: the
    streamed frames are exactly `log_mel` of the whole, including the zero-padded single frame
    of signals shorter than one window."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal(1200).astype(np.float32)
    for n in range(1, 1201):
        chunks = rng.integers(0, 2 * WIN_LENGTH, size=rng.integers(0, 6)).tolist()
        got = _stream(x[:n], chunks)
        ref = log_mel(x[:n])
        assert got.shape == ref.shape == (max(1, num_frames(n)), N_MELS), (n, chunks)
        np.testing.assert_array_equal(got, ref, err_msg=f"n={n} chunks={chunks}")


def test_stream_finish_contract():
    s = FeatureStream()
    assert s.finish().shape == (0, N_MELS)  # nothing pushed: nothing to emit (log_mel refuses)
    assert s.push(np.ones(100, np.float32)).shape == (0, N_MELS)
    assert s.finish().shape == (1, N_MELS)  # short signal: the padded frame log_mel gives
    # finish() starts a new utterance: the next one does not see the old samples
    x = np.random.default_rng(1).standard_normal(WIN_LENGTH + HOP_LENGTH).astype(np.float32)
    got = np.concatenate([s.push(x), s.finish()])
    np.testing.assert_array_equal(got, log_mel(x))
    assert s.finish().shape == (0, N_MELS)


def test_short_and_bad_input():
    assert log_mel(np.zeros(10, np.float32)).shape == (1, 80)
    with pytest.raises(ValueError, match="empty"):
        log_mel(np.zeros(0, np.float32))
    with pytest.raises(ValueError, match="mono"):
        log_mel(np.zeros((10, 2), np.float32))
