"""Streaming transformer encoder: causal 4x conv subsampling, then pre-norm transformer layers
whose self-attention sees only its own chunk and a bounded number of chunks to the left.

Streaming by construction: every encoder frame depends on input frames up to the end of its
chunk, never later ones, so decoding chunk by chunk on the device gives the full-utterance
result. Positions enter through rotary embeddings (relative, so long streams never leave the
trained range). Each layer also has a causal depthwise convolution for local context.

Two ways to run the same modules and parameters:

- whole utterance, `Encoder(feats, feat_paddings)`: every frame at once, the chunked attention
  mask (`chunk_attention_mask`) keeping each chunk to its own and `left_chunks` earlier chunks;
- chunk step, `Encoder(feats, feat_paddings, state=state)` (`Transducer.encode_step`): whole
  chunks of input (4 * chunk_size feature frames each) with an `EncoderState` that holds what
  the chunk needs from the past, at fixed shapes (a jitted step compiles once):
  * the subsampling convolutions' left context (`ConvSubsampling`): stride 2 twice with a
    3-frame kernel reads 2 rows before each input, so the last 2 input feature frames and the
    last 2 rows of the first convolution's output. A chunk starts on an encoder frame (a multiple
    of 4 input frames), so the stride phase is the whole-utterance one;
  * per layer, the keys and values of the last L = left_chunks * chunk_size frames, after the
    layer's projection and with rotary positions already applied: positions are absolute
    stream positions (`frames`, the encoder frames consumed), as in the whole-utterance path
    where position = frame index; `key_paddings` marks the slots that hold no frame (before
    the start, or padding);
  * per layer, the last conv_kernel - 1 frames its depthwise convolution reads (the GLU
    output).
  The step's attention mask (`stream_attention_mask`) is the chunk mask restricted to the
  chunk's queries and the cached + new keys, so every frame sees exactly the keys it sees in
  the whole utterance: outputs are equal up to float rounding (tests/test_streaming.py, 1e-5).
  Zero caches are the zero padding of the whole-utterance path. Only a stream's last chunk may
  hold padding (trailing: pad the final partial chunk to a whole one); after it that row's
  state is spent (in a batch the other rows go on). Unlimited left context (`left_chunks` < 0)
  has no bounded cache: the step refuses it (`stream_state` raises). Float execution only is
  equal: a fake-quantized convolution scales its input per call (`QuantPolicy.conv`), and the
  attention-weighted values take one step per head and channel over the call's keys
  (`QuantPolicy.einsum`), so per step (chunk and cache) and per utterance whole; the emulated
  processor (`hw.runtime`) does the same (about 3% of the largest output on a tiny random
  model, tests/test_hw_streaming.py).

References: Zhang et al. 2020, "Transformer Transducer: A Streamable Speech Recognition Model
with Transformer Encoders and RNN-T Loss"; Su et al. 2021, "RoFormer" (rotary positions);
Gulati et al. 2020, "Conformer" (convolution module).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from asr.models.config import ModelConfig
from asr.models.macs import _freq_dims, count_macs
from asr.models.quant import FLOAT, QuantPolicy
from asr.models.rows import only_rows

NEG_INF = -1e9
SUBSAMPLING = 4  # input feature frames per encoder frame


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


def stream_attention_mask(
    key_paddings: jax.Array, paddings: jax.Array, frames: jax.Array, chunk_size: int,
    left_chunks: int,
) -> jax.Array:  # fmt: skip
    """The chunk mask of a step: bool[B, 1, T, L + T] for the T new frames (whole chunks,
    stream positions frames .. frames + T - 1, `frames` a multiple of chunk_size) over the L
    cached keys (positions frames - L ..) and the new ones: query i may attend key j iff j is
    not padded (`key_paddings` f32[B, L], `paddings` f32[B, T], 1.0 = pad) and its chunk is
    the query's or one of the `left_chunks` before (`chunk_attention_mask` on stream
    positions)."""
    length, t = key_paddings.shape[1], paddings.shape[1]
    cq = (frames + jnp.arange(t)) // chunk_size
    ck = (frames - length + jnp.arange(length + t)) // chunk_size
    ci, cj = cq[:, None], ck[None, :]
    allowed = (cj <= ci) & (cj >= ci - left_chunks)
    valid_key = jnp.concatenate([key_paddings, paddings], axis=1) < 0.5  # -> [B, L + T]
    return allowed[None, None] & valid_key[:, None, None, :]


def attention_inputs(config: ModelConfig, paddings: jax.Array, state=None):
    """(mask, positions) of the encoder layers' attention: the whole utterance's chunk mask and
    default positions without `state`; a step's mask (`stream_attention_mask`) and its frames'
    stream positions int32[T] with an `EncoderState`."""
    c = config
    if state is None:
        return chunk_attention_mask(paddings, c.chunk_size, c.left_chunks), None
    mask = stream_attention_mask(
        state.key_paddings, paddings, state.frames, c.chunk_size, c.left_chunks
    )
    return mask, state.frames + jnp.arange(paddings.shape[1])


def causal_context(x: jax.Array, ctx: jax.Array | None, width: int):
    """x f32[B, T, ...] with `width` frames of left context before it: zeros (ctx None, the
    whole-utterance path) or ctx f32[B, width, ...] (a stream step) -> (f32[B, width + T, ...],
    the next step's context: its last `width` frames, None when ctx is None)."""
    if ctx is None:
        pad = [(0, 0)] * x.ndim
        pad[1] = (width, 0)
        return jnp.pad(x, pad), None
    assert ctx.shape[1] == width and ctx.shape[2:] == x.shape[2:], (ctx.shape, x.shape, width)
    full = jnp.concatenate([ctx.astype(x.dtype), x], axis=1)
    return full, full[:, full.shape[1] - width :]


def rotary(x: jax.Array, positions: jax.Array) -> jax.Array:
    """Applies rotary position embedding to f32[B, T, H, Dh] at int[T] positions."""
    dh = x.shape[-1]
    half = dh // 2
    freqs = 1.0 / (10000.0 ** (jnp.arange(half, dtype=jnp.float32) / half))
    ang = positions[:, None].astype(jnp.float32) * freqs[None]  # -> [T, half]
    cos, sin = jnp.cos(ang)[None, :, None], jnp.sin(ang)[None, :, None]
    x1, x2 = x[..., :half], x[..., half:]
    return jnp.concatenate([x1 * cos - x2 * sin, x1 * sin + x2 * cos], axis=-1)


class EncoderState(NamedTuple):
    """What a chunk step needs from the past (module docstring); fixed shapes, so a jitted step
    compiles once. N layers, L = left_chunks * chunk_size, H heads of Dh, K = conv_kernel,
    F1 = frequency rows after the first subsampling convolution. Zeros and all-padding at the
    start (`stream_state`)."""

    frames: jax.Array  # int32[]: encoder frames consumed (the stream position of the next one)
    feats: jax.Array  # f32[B, 2, n_mels]: the last 2 (normalized) input feature frames
    sub: jax.Array  # f32[B, 2, F1, subsample_channels]: the first convolution's last 2 rows
    key_paddings: jax.Array  # f32[B, L]: 1.0 = the cache slot holds no frame
    keys: jax.Array  # f32[N, B, L, H, Dh]: each layer's keys of the last L frames (rotated)
    values: jax.Array  # f32[N, B, L, H, Dh]: their values
    conv: jax.Array  # f32[N, B, max(K - 1, 0), d_model]: each layer's last GLU outputs
    # branching encoder only (`asr.models.branching.Arbiter`), else None: (f32[B, 3, n_mels]
    # the last 3 masked input frames, f32[B, 1, n_mels] the last encoder frame's mean of them)
    arbiter: tuple | None = None


def stream_state(config: ModelConfig, batch: int) -> EncoderState:
    """The state of a stream before its first chunk (plain encoder's fields). Raises ValueError
    for unlimited left context (left_chunks < 0: no bounded cache)."""
    c = config
    if c.left_chunks < 0:
        raise ValueError(
            f"the encoder step needs a bounded left context (left_chunks >= 0), got "
            f"left_chunks={c.left_chunks} (config {c.name!r} attends to the whole past: decode "
            "it whole)"
        )
    if batch < 1:
        raise ValueError(f"batch must be >= 1, got {batch}")
    length, dh = c.left_chunks * c.chunk_size, c.d_model // c.num_heads
    f1, _ = _freq_dims(c.n_mels)
    kv = jnp.zeros((c.num_layers, batch, length, c.num_heads, dh), jnp.float32)
    return EncoderState(
        frames=jnp.zeros((), jnp.int32),
        feats=jnp.zeros((batch, 2, c.n_mels), jnp.float32),
        sub=jnp.zeros((batch, 2, f1, c.subsample_channels), jnp.float32),
        key_paddings=jnp.ones((batch, length), jnp.float32),
        keys=kv,
        values=kv,
        conv=jnp.zeros((c.num_layers, batch, max(c.conv_kernel - 1, 0), c.d_model), jnp.float32),
    )


def check_step_inputs(
    config: ModelConfig, feats, feat_paddings, state: EncoderState, initial: Callable
) -> None:
    """Raises ValueError unless feats f32[B, T, n_mels] is whole chunks (T a positive multiple of
    4 * chunk_size), feat_paddings f32[B, T] and `state` shaped as `initial(B)` (the encoder's
    `initial_state`)."""
    c = config
    per_chunk = SUBSAMPLING * c.chunk_size
    if feats.ndim != 3 or feats.shape[-1] != c.n_mels:
        raise ValueError(f"feats must be [B, T, {c.n_mels}], got {feats.shape}")
    if feats.shape[1] < 1 or feats.shape[1] % per_chunk:
        raise ValueError(
            f"a step takes whole chunks: T a positive multiple of 4 * chunk_size = {per_chunk} "
            f"feature frames (pad the last chunk, paddings 1.0), got T = {feats.shape[1]}"
        )
    if feat_paddings.shape != feats.shape[:2]:
        raise ValueError(f"feat_paddings must be {feats.shape[:2]}, got {feat_paddings.shape}")
    if not isinstance(state, EncoderState):
        raise ValueError(f"state must be an EncoderState (init_stream), got {type(state).__name__}")
    got_shapes = [jnp.shape(x) for x in jax.tree_util.tree_leaves(state)]
    want_shapes = [jnp.shape(x) for x in jax.tree_util.tree_leaves(initial(feats.shape[0]))]
    if got_shapes != want_shapes:
        raise ValueError(
            f"state shapes {got_shapes} do not match this config and batch {feats.shape[0]}: "
            f"expected {want_shapes} (init_stream with the same batch)"
        )


class ConvSubsampling(nn.Module):
    """Two 3x3 stride-2 conv layers, causal in time (left padding only) -> 4x fewer frames."""

    channels: int
    d_model: int
    quant: QuantPolicy = FLOAT

    @nn.compact
    def __call__(self, feats: jax.Array, cache=None):
        """feats: f32[B, T, F] -> f32[B, ceil(T/4), d_model]. Stream step: `cache` (f32[B, 2, F]
        input frames, f32[B, 2, F1, channels] first convolution rows) before feats (T a multiple
        of 4) -> (f32[B, T/4, d_model], the next step's cache)."""
        x = feats[..., None]  # -> [B, T, F, 1]
        ctx = (None, None) if cache is None else (cache[0][..., None], cache[1])
        new = []
        for i in range(2):
            x, nxt = causal_context(x, ctx[i], 2)  # causal in time
            new.append(nxt)
            x = jnp.pad(x, ((0, 0), (0, 0), (1, 1), (0, 0)))  # same in frequency
            q = self.quant.small() if i == 0 else self.quant  # the first: a small layer
            x = q.conv_module(self.channels, (3, 3), strides=(2, 2), padding="VALID")(x)
            x = nn.relu(x)
        b, t, f, c = x.shape
        out = self.quant.dense(self.d_model)(x.reshape(b, t, f * c))
        return out if cache is None else (out, (new[0][..., 0], new[1]))


class SelfAttention(nn.Module):
    num_heads: int
    d_model: int
    quant: QuantPolicy = FLOAT

    @nn.compact
    def __call__(self, x: jax.Array, mask: jax.Array, kv=None, gate=None, positions=None,
                 cache=None, cheap_q=None, cheap_rows=None):  # fmt: skip
        """x: f32[B, T, D]; mask: bool[B, 1, T, T] -> f32[B, T, D].

        Branching encoder (`asr.models.branching`): `kv` f32[B, T, 2, H, Dh] are keys and values
        another branch produced, used on the frames where `gate` f32[B, T] is 0 (1: this
        module's own); the attention cache holds whichever branch produced each frame. With
        `cheap_q` f32[B, T, H, Dh] (the cheap branch's queries, before rotation), the output is
        a pair: this module's output and the cheap queries' attention over the same keys and
        values f32[B, T, H, Dh] (before any output projection), whose products are needed only
        on `cheap_rows` f32[B, T] (`asr.models.rows.only_rows`).

        Stream step: `positions` int[T] the frames' stream positions (default 0 .. T-1) and
        `cache` (keys, values) f32[B, L, H, Dh] of the L frames before (rotated): the frames
        attend to those and their own, mask bool[B, 1, T, L + T]; returns (f32[B, T, D], the
        next step's cache: the last L keys and values)."""
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
        pos = jnp.arange(t) if positions is None else positions
        q, k = rotary(q, pos), rotary(k, pos)
        if cache is not None:
            length = cache[0].shape[1]
            k, k_next = causal_context(k, cache[0], length)  # -> [B, L + T, H, Dh]
            v, v_next = causal_context(v, cache[1], length)

        def attend(q):  # rotated queries f32[B, T, H, Dh] -> f32[B, T, H, Dh]
            logits = self.quant.einsum("bqhd,bkhd->bhqk", q, k) / jnp.sqrt(dh).astype(x.dtype)
            logits = jnp.where(mask, logits, NEG_INF)
            w = jax.nn.softmax(logits, axis=-1)
            w = jnp.where(mask, w, 0.0)  # fully masked rows (padded queries) give zeros, not NaN
            return self.quant.einsum("bhqk,bkhd->bqhd", w, v)

        out = self.quant.dense_general(self.d_model, axis=(-2, -1), name="out")(attend(q))
        if cheap_q is not None:
            with only_rows(cheap_rows):
                out = (out, attend(rotary(cheap_q, pos)))
        return out if cache is None else (out, (k_next, v_next))


class CausalConvModule(nn.Module):
    """Pointwise GLU, causal depthwise conv, LayerNorm, swish, pointwise (Conformer-lite)."""

    d_model: int
    kernel: int
    quant: QuantPolicy = FLOAT

    @nn.compact
    def __call__(self, x: jax.Array, paddings: jax.Array, gate=None, cache=None):
        """x f32[B, T, D] -> f32[B, T, D]. With `gate` f32[B, T] (branching encoder), frames
        where it is 0 feed zeros to the depthwise convolution (they skip this module). Stream
        step: `cache` f32[B, kernel - 1, D] the GLU outputs before x -> (f32[B, T, D], the next
        step's cache)."""
        x = x * (1.0 - paddings)[..., None]
        q = self.quant
        x = q.dense(2 * self.d_model)(x)
        x = nn.glu(x, axis=-1)
        if gate is not None:
            x = x * gate[..., None]
        x, nxt = causal_context(x, cache, self.kernel - 1)
        x = q.small().conv_module(  # depthwise: a small layer
            self.d_model, (self.kernel,), feature_group_count=self.d_model, padding="VALID"
        )(x)
        x = nn.LayerNorm()(x)
        x = nn.swish(x)
        out = q.dense(self.d_model)(x)
        return out if cache is None else (out, nxt)


class EncoderLayer(nn.Module):
    config: ModelConfig
    quant: QuantPolicy = FLOAT

    @nn.compact
    def __call__(self, x, paddings, mask, train: bool, positions=None, cache=None):
        """x f32[B, T, D] -> f32[B, T, D]. Stream step: `positions` int[T] and `cache` (keys,
        values, conv) of this layer (`EncoderState`) -> (x, the next step's cache)."""
        c, q = self.config, self.quant
        drop = nn.Dropout(c.dropout, deterministic=not train)
        att_cache = None if cache is None else cache[:2]
        att = SelfAttention(c.num_heads, c.d_model, q)(
            nn.LayerNorm()(x), mask, positions=positions, cache=att_cache
        )
        if cache is not None:
            att, att_cache = att
        x = x + drop(att)
        conv_cache = None if cache is None else cache[2]
        if c.conv_kernel > 0:
            conv = CausalConvModule(c.d_model, c.conv_kernel, q)(
                nn.LayerNorm()(x), paddings, cache=conv_cache
            )
            if cache is not None:
                conv, conv_cache = conv
            x = x + drop(conv)
        h = q.dense(c.ff_dim)(nn.LayerNorm()(x))
        h = drop(nn.swish(h))
        x = x + drop(q.dense(c.d_model)(h))
        return x if cache is None else (x, (*att_cache, conv_cache))


def layer_caches(state: EncoderState, i: int):
    """Layer i's cache (keys, values, conv) in `state`."""
    return state.keys[i], state.values[i], state.conv[i]


def next_state(state: EncoderState, paddings: jax.Array, sub, caches, arbiter=None):
    """The state after a step of f32[B, T'] encoder frame paddings: its subsampling cache `sub`
    (feats, rows), the layers' new caches [(keys, values, conv)] and the arbiter's (or None)."""
    length = state.key_paddings.shape[1]
    key_paddings = jnp.concatenate([state.key_paddings, paddings], axis=1)
    keys, values, conv = (jnp.stack(parts) for parts in zip(*caches, strict=True))
    return EncoderState(
        frames=state.frames + paddings.shape[1],
        feats=sub[0],
        sub=sub[1],
        key_paddings=key_paddings[:, key_paddings.shape[1] - length :],
        keys=keys,
        values=values,
        conv=conv,
        arbiter=arbiter,
    )


class Encoder(nn.Module):
    """feats f32[B, T, n_mels], feat_paddings f32[B, T] (1.0 = pad)
    -> (f32[B, T', d_model], f32[B, T'] paddings, aux), T' = ceil(T / 4); aux = {"macs":
    f32[B, T'] multiply-accumulates per frame (`asr.models.macs`)}. `temperature`,
    `imitate` and `noise` are the branching encoder's (`asr.models.branching`); this one ignores them.

    Stream step (module docstring): with `state` (`EncoderState`, `initial_state`), feats are
    whole chunks (T a multiple of 4 * chunk_size) following the state's, and the result has the
    next state appended: (x, paddings, aux, state)."""

    config: ModelConfig
    quant: QuantPolicy = FLOAT

    def initial_state(self, batch: int) -> EncoderState:
        return stream_state(self.config, batch)

    @nn.compact
    def __call__(
        self, feats, feat_paddings, train: bool = False, temperature=1.0, imitate=False, noise=1.0,
        state: EncoderState | None = None,
    ):  # fmt: skip
        del temperature, imitate, noise
        c = self.config
        sub_cache = None if state is None else (state.feats, state.sub)
        x = ConvSubsampling(c.subsample_channels, c.d_model, self.quant)(feats, cache=sub_cache)
        if state is not None:
            x, sub_cache = x
        paddings = subsample_paddings(feat_paddings)
        assert x.shape[1] == paddings.shape[1], (x.shape, paddings.shape)
        x = nn.Dropout(c.dropout, deterministic=not train)(x)
        mask, positions = attention_inputs(c, paddings, state)
        caches = []
        for i in range(c.num_layers):
            layer = EncoderLayer(c, self.quant, name=f"layer_{i}")
            if state is None:
                x = layer(x, paddings, mask, train)
            else:
                x, cache = layer(x, paddings, mask, train, positions, layer_caches(state, i))
                caches.append(cache)
        x = nn.LayerNorm()(x)
        aux = {"macs": count_macs(c, mask, paddings, jnp.ones_like(paddings))}
        x = x * (1.0 - paddings)[..., None]
        if state is None:
            return x, paddings, aux
        return x, paddings, aux, next_state(state, paddings, sub_cache, caches)
