"""SpecAugment on batched log-mel features, inside the jitted train step.

Fixed numbers of frequency and time masks (fixed shapes, no recompiles); mask widths are drawn
uniformly up to a maximum; time-mask widths scale with each utterance's true length. Masked
values are set to the utterance's mean feature value (zero after normalization is applied in the
model would be equivalent; the mean keeps it independent of the normalization).

Sampling, per utterance b and mask m (the contract `tests/test_specaugment.py` checks against a
NumPy reference): frequency width w ~ U{0..freq_width}, start floor(u * (F - w)) with
u ~ U[0, 1), so the band [start, start + w) lies in [0, F); time width
w = floor(u1 * (floor(L * time_ratio) + 1)), start floor(u2 * (L - w)) with L the utterance's
unpadded length, so the band lies within its unpadded frames. Padded frames are returned
unchanged.

References: Park et al. 2019, "SpecAugment: A Simple Data Augmentation Method for ASR".
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def spec_augment(
    rng: jax.Array,
    feats: jax.Array,
    feat_paddings: jax.Array,
    *,
    freq_masks: int,
    freq_width: int,
    time_masks: int,
    time_ratio: float,
) -> jax.Array:
    """Masks `freq_masks` bands of up to `freq_width` bins and `time_masks` bands of up to
    `time_ratio` of each utterance's unpadded frames.

    Args:
      rng: PRNG key; the same key gives the same masks.
      feats: f32[B, T, F] log-mel features.
      feat_paddings: f32[B, T], 1.0 = padded frame (suffix padding); padded frames come back
        unchanged and count neither in the mean nor in the length.

    Returns:
      f32[B, T, F]: feats with masked values set to the utterance's mean over its unpadded frames.
    """
    b, t, f = feats.shape
    if freq_masks < 0 or time_masks < 0:
        raise ValueError(f"mask counts must be >= 0, got {freq_masks}, {time_masks}")
    if not 0 <= freq_width <= f:
        raise ValueError(f"freq_width must be in [0, {f}] (the feature bins), got {freq_width}")
    if not 0.0 <= time_ratio <= 1.0:
        raise ValueError(f"time_ratio must be in [0, 1], got {time_ratio}")
    kf, kt = jax.random.split(rng)
    valid = (1.0 - feat_paddings)[..., None]
    mean = jnp.sum(feats * valid, axis=(1, 2), keepdims=True) / jnp.maximum(
        jnp.sum(valid, axis=(1, 2), keepdims=True) * f, 1.0
    )
    keep = jnp.ones((b, t, f), bool)
    if freq_masks > 0:
        k1, k2 = jax.random.split(kf)
        width = jax.random.randint(k1, (b, freq_masks), 0, freq_width + 1)
        start = (jax.random.uniform(k2, (b, freq_masks)) * (f - width)).astype(jnp.int32)
        fi = jnp.arange(f)[None, None]  # -> [1, 1, F]
        hit = (fi >= start[..., None]) & (fi < (start + width)[..., None])  # -> [B, M, F]
        keep = keep & ~jnp.any(hit, axis=1)[:, None, :]
    if time_masks > 0:
        k1, k2 = jax.random.split(kt)
        length = jnp.sum(1.0 - feat_paddings, axis=1)  # -> [B]
        max_w = jnp.floor(length * time_ratio)[:, None]
        width = jnp.floor(jax.random.uniform(k1, (b, time_masks)) * (max_w + 1)).astype(jnp.int32)
        start = (jax.random.uniform(k2, (b, time_masks)) * (length[:, None] - width)).astype(
            jnp.int32
        )
        ti = jnp.arange(t)[None, None]
        hit = (ti >= start[..., None]) & (ti < (start + width)[..., None])  # -> [B, M, T]
        keep = keep & ~jnp.any(hit, axis=1)[:, :, None]
    keep = keep | (feat_paddings > 0.5)[..., None]  # padding untouched
    return jnp.where(keep, feats, mean)
