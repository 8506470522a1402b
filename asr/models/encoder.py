"""Streaming transformer encoder: causal 4x conv subsampling, then pre-norm transformer layers
whose self-attention sees only its own chunk and a bounded number of chunks to the left.

Streaming by construction: every encoder frame depends on input frames up to the end of its
chunk, never later ones, so decoding chunk by chunk on the device gives the full-utterance
result. Positions enter through rotary embeddings (relative, so long streams never leave the
trained range). Each layer also has a causal depthwise convolution for local context.

References: Zhang et al. 2020, "Transformer Transducer: A Streamable Speech Recognition Model
with Transformer Encoders and RNN-T Loss"; Su et al. 2021, "RoFormer" (rotary positions);
Gulati et al. 2020, "Conformer" (convolution module).
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from asr.models.config import ModelConfig
from asr.models.macs import count_macs
from asr.models.quant import FLOAT, QuantPolicy

NEG_INF = -1e9


def subsample_paddings(paddings: jax.Array, factor: int = 4) -> jax.Array:
    """f32[B, T] input paddings -> f32[B, ceil(T / factor)]: output frame k is valid iff input
    frame factor * k is (the causal convolutions' last input)."""
    return paddings[:, ::factor]


def chunk_attention_mask(paddings: jax.Array, chunk_size: int, left_chunks: int) -> jax.Array:
    """bool[B, 1, T, T]: query i may attend key j iff j is not padded, chunk(j) <= chunk(i) and
    chunk(j) >= chunk(i) - left_chunks (no left limit when left_chunks < 0)."""
    t = paddings.shape[1]
    chunk = jnp.arange(t) // chunk_size
    ci, cj = chunk[:, None], chunk[None, :]
    allowed = cj <= ci
    if left_chunks >= 0:
        allowed = allowed & (cj >= ci - left_chunks)
    valid_key = paddings < 0.5  # [B, T]
    return allowed[None, None] & valid_key[:, None, None, :]


def rotary(x: jax.Array, positions: jax.Array) -> jax.Array:
    """Applies rotary position embedding to f32[B, T, H, Dh] at int[T] positions."""
    dh = x.shape[-1]
    half = dh // 2
    freqs = 1.0 / (10000.0 ** (jnp.arange(half, dtype=jnp.float32) / half))
    ang = positions[:, None].astype(jnp.float32) * freqs[None]  # -> [T, half]
    cos, sin = jnp.cos(ang)[None, :, None], jnp.sin(ang)[None, :, None]
    x1, x2 = x[..., :half], x[..., half:]
    return jnp.concatenate([x1 * cos - x2 * sin, x1 * sin + x2 * cos], axis=-1)


class ConvSubsampling(nn.Module):
    """Two 3x3 stride-2 conv layers, causal in time (left padding only) -> 4x fewer frames."""

    channels: int
    d_model: int
    quant: QuantPolicy = FLOAT

    @nn.compact
    def __call__(self, feats: jax.Array) -> jax.Array:
        """feats: f32[B, T, F] -> f32[B, ceil(T/4), d_model]."""
        x = feats[..., None]  # -> [B, T, F, 1]
        for _ in range(2):
            x = jnp.pad(x, ((0, 0), (2, 0), (1, 1), (0, 0)))  # causal in time, same in freq
            x = self.quant.conv_module(self.channels, (3, 3), strides=(2, 2), padding="VALID")(x)
            x = nn.relu(x)
        b, t, f, c = x.shape
        return self.quant.dense(self.d_model)(x.reshape(b, t, f * c))


class SelfAttention(nn.Module):
    num_heads: int
    d_model: int
    quant: QuantPolicy = FLOAT

    @nn.compact
    def __call__(self, x: jax.Array, mask: jax.Array, kv=None, gate=None) -> jax.Array:
        """x: f32[B, T, D]; mask: bool[B, 1, T, T] -> f32[B, T, D].

        Branching encoder (`asr.models.branching`): `kv` f32[B, T, 2, H, Dh] are keys and values
        another branch produced, used on the frames where `gate` f32[B, T] is 0 (1: this
        module's own); the attention cache holds whichever branch produced each frame."""
        b, t, _ = x.shape
        dh = self.d_model // self.num_heads
        qkv = self.quant.dense_general((3, self.num_heads, dh), name="qkv")(
            x
        )  # -> [B, T, 3, H, Dh]
        q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]
        if kv is not None:
            g = gate[:, :, None, None]
            k = g * k + (1.0 - g) * kv[:, :, 0]
            v = g * v + (1.0 - g) * kv[:, :, 1]
        pos = jnp.arange(t)
        q, k = rotary(q, pos), rotary(k, pos)
        logits = self.quant.einsum("bqhd,bkhd->bhqk", q, k) / jnp.sqrt(dh).astype(x.dtype)
        logits = jnp.where(mask, logits, NEG_INF)
        w = jax.nn.softmax(logits, axis=-1)
        w = jnp.where(mask, w, 0.0)  # fully masked rows (padded queries) give zeros, not NaN
        out = self.quant.einsum("bhqk,bkhd->bqhd", w, v)
        return self.quant.dense_general(self.d_model, axis=(-2, -1), name="out")(out)


class CausalConvModule(nn.Module):
    """Pointwise GLU, causal depthwise conv, LayerNorm, swish, pointwise (Conformer-lite)."""

    d_model: int
    kernel: int
    quant: QuantPolicy = FLOAT

    @nn.compact
    def __call__(self, x: jax.Array, paddings: jax.Array, gate=None) -> jax.Array:
        """x f32[B, T, D] -> f32[B, T, D]. With `gate` f32[B, T] (branching encoder), frames
        where it is 0 feed zeros to the depthwise convolution (they skip this module)."""
        x = x * (1.0 - paddings)[..., None]
        q = self.quant
        x = q.dense(2 * self.d_model)(x)
        x = nn.glu(x, axis=-1)
        if gate is not None:
            x = x * gate[..., None]
        x = jnp.pad(x, ((0, 0), (self.kernel - 1, 0), (0, 0)))
        x = q.conv_module(
            self.d_model, (self.kernel,), feature_group_count=self.d_model, padding="VALID"
        )(x)
        x = nn.LayerNorm()(x)
        x = nn.swish(x)
        return q.dense(self.d_model)(x)


class EncoderLayer(nn.Module):
    config: ModelConfig
    quant: QuantPolicy = FLOAT

    @nn.compact
    def __call__(self, x, paddings, mask, train: bool):
        c, q = self.config, self.quant
        drop = nn.Dropout(c.dropout, deterministic=not train)
        x = x + drop(SelfAttention(c.num_heads, c.d_model, q)(nn.LayerNorm()(x), mask))
        if c.conv_kernel > 0:
            x = x + drop(CausalConvModule(c.d_model, c.conv_kernel, q)(nn.LayerNorm()(x), paddings))
        h = q.dense(c.ff_dim)(nn.LayerNorm()(x))
        h = drop(nn.swish(h))
        x = x + drop(q.dense(c.d_model)(h))
        return x


class Encoder(nn.Module):
    """feats f32[B, T, n_mels], feat_paddings f32[B, T] (1.0 = pad)
    -> (f32[B, T', d_model], f32[B, T'] paddings, aux), T' = ceil(T / 4); aux = {"macs":
    f32[B, T'] multiply-accumulates per frame (`asr.models.macs`)}. `temperature`,
    `imitate` and `noise` are the branching encoder's (`asr.models.branching`); this one ignores them."""

    config: ModelConfig
    quant: QuantPolicy = FLOAT

    @nn.compact
    def __call__(
        self, feats, feat_paddings, train: bool = False, temperature=1.0, imitate=False, noise=1.0
    ):
        del temperature, imitate, noise
        c = self.config
        x = ConvSubsampling(c.subsample_channels, c.d_model, self.quant)(feats)
        paddings = subsample_paddings(feat_paddings)
        assert x.shape[1] == paddings.shape[1], (x.shape, paddings.shape)
        x = nn.Dropout(c.dropout, deterministic=not train)(x)
        mask = chunk_attention_mask(paddings, c.chunk_size, c.left_chunks)
        for i in range(c.num_layers):
            x = EncoderLayer(c, self.quant, name=f"layer_{i}")(x, paddings, mask, train)
        x = nn.LayerNorm()(x)
        aux = {"macs": count_macs(c, mask, paddings, jnp.ones_like(paddings))}
        return x * (1.0 - paddings)[..., None], paddings, aux
