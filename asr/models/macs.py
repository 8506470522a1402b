"""Multiply-accumulates of the encoder, per encoder frame: what each frame's chosen branch
computes (`asr.models.branching`), or the plain encoder's (every frame expensive, no arbiter).
Counted from the config and the attention mask, so `asr eval` reports them for every model."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from asr.models.config import ModelConfig


def _freq_dims(n_mels: int) -> tuple[int, int]:
    """Frequency bins after the first and the second stride-2 3x3 convolution (padded 1 each
    side in frequency)."""
    f1 = (n_mels + 2 - 3) // 2 + 1
    f2 = (f1 + 2 - 3) // 2 + 1
    return f1, f2


def frame_macs(c: ModelConfig) -> dict[str, int]:
    """Multiply-accumulates per encoder frame of each part, attention over keys excluded
    (`attention_per_key` per key the frame attends, per layer): `shared` (both branches: the
    first convolution), `expensive` (the plain encoder's rest), `cheap` (the cheap branch),
    `arbiter`. Biases, norms and activations are not MACs."""
    f1, f2 = _freq_dims(c.n_mels)
    ch, d = c.subsample_channels, c.d_model
    conv1 = 2 * f1 * ch * 9  # two input rows per encoder frame, one input channel
    front_e = f2 * ch * ch * 9 + f2 * ch * d
    layer_e = d * 3 * d + d * d + d * c.ff_dim * 2
    if c.conv_kernel > 0:
        layer_e += d * 2 * d + c.conv_kernel * d + d * d
    r, w = c.branch_rank, c.branch_ff
    front_c = f2 * ch * 9 + f2 * ch * r + r * d
    layer_c = d * r + r * 2 * d + 2 * d * w
    if c.branch_attend:  # rank-r query and output projections (+ attention over the keys)
        layer_c += 4 * d * r
    arbiter = 2 * c.n_mels * c.arbiter_dim + c.arbiter_dim
    return {
        "shared": conv1,
        "expensive": front_e + c.num_layers * layer_e,
        "cheap": front_c + c.num_layers * layer_c,
        "arbiter": arbiter if c.encoder == "branching" else 0,
        "attention_per_key": c.num_layers * 2 * d,
    }


def count_macs(c: ModelConfig, mask: jax.Array, paddings: jax.Array, expensive: jax.Array):
    """f32[B, T'] MACs of each encoder frame (0 on padded frames): shared + arbiter + the chosen
    branch, plus the attention over the keys `mask` (bool[B, 1, T', T']) lets them see of the
    expensive frames (and of the cheap ones with `branch_attend`)."""
    m = frame_macs(c)
    keys = jnp.sum(mask[:, 0], axis=-1).astype(jnp.float32)  # -> [B, T']
    e = expensive.astype(jnp.float32)
    per = (
        m["shared"]
        + m["arbiter"]
        + e * (m["expensive"] + m["attention_per_key"] * keys)
        + (1.0 - e) * (m["cheap"] + (m["attention_per_key"] * keys if c.branch_attend else 0.0))
    )
    return per * (1.0 - paddings)
