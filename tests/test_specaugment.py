"""Tests of train/specaugment.py: SpecAugment masks against a NumPy reference, and their bounds.

The reference draws the same random numbers (the sampling contract in the module docstring) and
builds the masks with Python loops in float64; the property tests read the masks back from the
output alone (a masked value equals the utterance mean; the inputs are continuous, so nothing
else does) and check where they fall, how wide they are and how many there are.

References: Park et al. 2019, "SpecAugment: A Simple Data Augmentation Method for ASR".
"""

from __future__ import annotations

import functools

import jax
import numpy as np
import pytest

from train.specaugment import spec_augment

B, T, F = 6, 50, 24
LENGTHS = [50, 37, 20, 9, 1, 0]  # full, padded, very short and empty utterances


def _inputs(seed: int = 0):
    rng = np.random.default_rng(seed)
    feats = rng.normal(size=(B, T, F)).astype(np.float32) + 3.0
    pads = (np.arange(T)[None] >= np.asarray(LENGTHS)[:, None]).astype(np.float32)
    return feats, pads


@functools.partial(jax.jit, static_argnames=("freq_masks", "freq_width", "time_masks", "ratio"))
def _augment(key, feats, pads, freq_masks, freq_width, time_masks, ratio):
    return spec_augment(
        key,
        feats,
        pads,
        freq_masks=freq_masks,
        freq_width=freq_width,
        time_masks=time_masks,
        time_ratio=ratio,
    )


def np_spec_augment(key, feats, pads, freq_masks, freq_width, time_masks, ratio):
    """Reference: the documented draws, then masks set one utterance, mask and bin at a time."""
    b, t, f = feats.shape
    kf, kt = jax.random.split(key)
    out = feats.astype(np.float64).copy()
    fw = fs = tu1 = tu2 = None
    if freq_masks > 0:
        k1, k2 = jax.random.split(kf)
        fw = np.asarray(jax.random.randint(k1, (b, freq_masks), 0, freq_width + 1))
        fs = np.asarray(jax.random.uniform(k2, (b, freq_masks)))
    if time_masks > 0:
        k1, k2 = jax.random.split(kt)
        tu1 = np.asarray(jax.random.uniform(k1, (b, time_masks)))
        tu2 = np.asarray(jax.random.uniform(k2, (b, time_masks)))
    for i in range(b):
        n = int(np.sum(pads[i] < 0.5))
        mean = feats[i, :n].astype(np.float64).mean() if n else 0.0
        for m in range(freq_masks):
            w = int(fw[i, m])
            start = int(np.float32(fs[i, m]) * np.float32(f - w))
            for k in range(start, start + w):
                out[i, :n, k] = mean
        for m in range(time_masks):
            max_w = int(np.floor(n * ratio))
            w = int(np.floor(np.float32(tu1[i, m]) * np.float32(max_w + 1)))
            start = int(np.float32(tu2[i, m]) * np.float32(n - w))
            for j in range(start, start + w):
                out[i, j, :] = mean
    return out


def _masks(feats, pads, out):
    """(masked bool[B, T, F], time-masked frames bool[B, T], freq-masked bins bool[B, F]),
    read from the output: a frame is time-masked when all its bins were masked, a bin is
    freq-masked when it was masked in every unpadded frame."""
    masked = np.asarray(out) != feats
    valid = pads < 0.5
    frames = masked.all(axis=2) & valid
    bins = np.stack([masked[i, valid[i]].all(axis=0) & valid[i].any() for i in range(B)])
    return masked, frames, bins


def _runs(flags: np.ndarray) -> list[tuple[int, int]]:
    """[(start, width)] of the runs of True in a bool vector."""
    out, start = [], None
    for i, x in enumerate([*flags.tolist(), False]):
        if x and start is None:
            start = i
        elif not x and start is not None:
            out.append((start, i - start))
            start = None
    return out


@pytest.mark.parametrize(
    "freq_masks, freq_width, time_masks, ratio",
    [(2, 7, 3, 0.1), (1, 24, 1, 0.5), (3, 2, 0, 0.2), (0, 5, 4, 0.05)],
)
def test_matches_numpy_reference(freq_masks, freq_width, time_masks, ratio):
    feats, pads = _inputs()
    for seed in range(5):
        key = jax.random.PRNGKey(seed)
        got = _augment(key, feats, pads, freq_masks, freq_width, time_masks, ratio)
        want = np_spec_augment(key, feats, pads, freq_masks, freq_width, time_masks, ratio)
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)
        assert (np.asarray(got) != feats).sum() == (want != feats).sum()  # the same cells


def test_masks_within_bounds_counts_and_padding_untouched():
    feats, pads = _inputs(1)
    valid = pads < 0.5
    freq_masks, freq_width, time_masks, ratio = 2, 5, 3, 0.1
    widest_f = widest_t = 0
    for seed in range(40):
        out = np.asarray(
            _augment(
                jax.random.PRNGKey(seed), feats, pads, freq_masks, freq_width, time_masks, ratio
            )
        )
        masked, frames, bins = _masks(feats, pads, out)
        np.testing.assert_array_equal(out[~valid], feats[~valid])  # padding untouched
        # a masked cell is a time-masked frame or a freq-masked bin, nothing else
        np.testing.assert_array_equal(
            masked, (frames[:, :, None] | bins[:, None, :]) & valid[..., None]
        )
        for i, n in enumerate(LENGTHS):
            if n == 0:
                assert not masked[i].any()
                continue
            mean = feats[i, :n].astype(np.float64).mean()
            np.testing.assert_allclose(out[i][masked[i]], mean, rtol=1e-5)
            f_runs, t_runs = _runs(bins[i]), _runs(frames[i])
            # overlapping masks merge into one run: count and total bound the union
            assert (
                len(f_runs) <= freq_masks and sum(w for _, w in f_runs) <= freq_masks * freq_width
            )
            max_w = int(np.floor(n * ratio))
            assert len(t_runs) <= time_masks and sum(w for _, w in t_runs) <= time_masks * max_w
            assert all(s + w <= n for s, w in t_runs)  # within the unpadded frames
            if len(f_runs) == freq_masks:  # separate masks: each one's own width is bounded
                assert max(w for _, w in f_runs) <= freq_width
                widest_f = max(widest_f, max(w for _, w in f_runs))
            if len(t_runs) == time_masks:
                assert max(w for _, w in t_runs) <= max_w
                widest_t = max(widest_t, max(w for _, w in t_runs) / max(max_w, 1))
    # the widths are drawn up to the bound and reach it (not, say, always 0 or half)
    assert widest_f == freq_width and widest_t == 1.0


def test_time_masks_scale_with_length():
    feats, pads = _inputs(2)
    per_utt = np.zeros(B)
    for seed in range(30):
        out = _augment(jax.random.PRNGKey(seed), feats, pads, 0, 0, 2, 0.2)
        _, frames, _ = _masks(feats, pads, out)
        per_utt += frames.sum(axis=1)
    assert per_utt[0] > per_utt[1] > per_utt[2] > per_utt[3]  # longer: wider masks
    assert per_utt[4] == per_utt[5] == 0  # floor(1 * 0.2) = 0: no frame of a 1-frame utterance


def test_deterministic_for_a_key_and_different_across_keys():
    feats, pads = _inputs(3)
    a = _augment(jax.random.PRNGKey(7), feats, pads, 2, 6, 2, 0.1)
    b = _augment(jax.random.PRNGKey(7), feats, pads, 2, 6, 2, 0.1)
    c = _augment(jax.random.PRNGKey(8), feats, pads, 2, 6, 2, 0.1)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


@pytest.mark.parametrize(
    "freq_masks, freq_width, time_masks, ratio", [(0, 10, 0, 0.1), (2, 0, 3, 0.0), (0, 0, 0, 0.0)]
)
def test_identity_without_masks(freq_masks, freq_width, time_masks, ratio):
    feats, pads = _inputs(4)
    out = _augment(jax.random.PRNGKey(0), feats, pads, freq_masks, freq_width, time_masks, ratio)
    np.testing.assert_array_equal(out, feats)


def test_bad_settings_raise():
    feats, pads = _inputs()
    key = jax.random.PRNGKey(0)
    kw = dict(freq_masks=1, freq_width=4, time_masks=1, time_ratio=0.1)
    with pytest.raises(ValueError, match="freq_width"):
        spec_augment(key, feats, pads, **dict(kw, freq_width=F + 1))
    with pytest.raises(ValueError, match="time_ratio"):
        spec_augment(key, feats, pads, **dict(kw, time_ratio=1.5))
    with pytest.raises(ValueError, match="mask counts"):
        spec_augment(key, feats, pads, **dict(kw, time_masks=-1))
