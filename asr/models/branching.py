"""The branching encoder: an arbiter sends each encoder frame through a cheap or an expensive
network (Amortized Neural Networks: Macoskey, Strimel, Su and Rastrow, Interspeech 2021).

Both branches have the plain encoder's shape: a subsampling front end, then `num_layers` layers
of width `d_model`, so that at every layer each frame has one state, produced by whichever
branch the arbiter chose for it, and the other frames read that state:

- expensive branch: exactly the plain encoder (`asr.models.encoder`), same parameter names, so
  a trained plain model is the expensive branch of a branching one (`init_cheap_branch` then
  fits the cheap branch to it);
- cheap branch, per frame: the second subsampling convolution becomes depthwise and the
  projection low-rank (`branch_rank`); in each layer the frame computes only its attention keys
  and values through a rank-`branch_rank` factorization (so expensive frames can attend to it:
  the attention cache holds whichever branch produced each frame), skips its own attention
  query and the convolution module (it feeds zeros to the depthwise convolution of its
  neighbours), and runs a feed-forward block `branch_ff` wide instead of `ff_dim`; with
  `branch_attend` it also attends, through rank-`branch_rank` query and output projections,
  over the same keys and values as the expensive frames (without it, a cheap frame's state
  never sees another frame's);
- shared by both: the first subsampling convolution (cheap: 1 input channel), the layer norms,
  the final norm;
- arbiter: a two-layer network (`arbiter_dim` hidden units) over the frame's normalized log-mel
  features and the previous frame's (their means over the 4 input frames each encoder frame
  covers). It sees only features, never encoder states of its own chunk, so the choices of a
  chunk are known before the chunk runs (an encoder state of the same chunk would make the
  choice depend on itself through the chunk's attention).

Granularity: one choice per encoder frame (40 ms). The device runs a chunk at once; a chunk's
expensive frames form the rows of one product per expensive weight matrix and its cheap frames
the rows of one per cheap matrix, so both weight streams are read at most once per chunk
whatever the mix (and not at all by a chunk with no frame of that branch); a coarser choice
(per chunk) would only lose the frames a mixed chunk could send the cheap way.

Training: the choice is a hard straight-through Gumbel-sigmoid sample (binary Gumbel-softmax,
Jang et al. 2017; Maddison et al. 2017) at a temperature the trainer anneals; the trainer adds a
penalty pulling the batch's share of expensive frames toward a budget. Inference: hard
choices (logit > 0), no noise.

Every frame's multiply-accumulates are counted (`frame_macs`): only what its chosen branch
computes, with the attention products over the keys the chunked mask lets it see. The plain
encoder reports the same count (every frame expensive, no arbiter), so `asr eval` compares them.

Streaming: the stream step (`asr.models.encoder` module docstring) runs the same modules with
the plain encoder's caches, which hold whatever branch produced each frame: the attention cache
the keys and values each frame's branch computed (the cheap ones are mixed in before the
rotary positions), the convolution cache the gated GLU outputs (zeros for cheap frames), the
subsampling cache the shared first convolution's rows. The arbiter, which reads features only,
keeps the last 3 input frames and the last encoder frame's mean of its 4 (`EncoderState.arbiter`),
so the step's choices are the whole utterance's.

On the emulated processor (`hw.runtime`) the branch's products run inside `only_rows(mask)`:
the runtime then computes (and the cost model counts) only the rows of the chosen frames.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from asr.models.config import ModelConfig
from asr.models.encoder import (
    CausalConvModule,
    EncoderState,
    SelfAttention,
    attention_inputs,
    causal_context,
    layer_caches,
    next_state,
    stream_state,
    subsample_paddings,
)
from asr.models.macs import count_macs, frame_macs  # noqa: F401 - re-exported
from asr.models.quant import FLOAT, QuantPolicy
from asr.models.rows import ROWS_SCOPE, active_rows, only_rows  # noqa: F401 - re-exported

# --------------------------------------------------------------------------- modules


class Arbiter(nn.Module):
    """Frame features f32[B, T, F] (normalized log-mels, 10 ms; padded frames read as 0) and
    their paddings f32[B, T] -> expensive-branch logit
    f32[B, T'] per encoder frame: a tiny MLP over the mean of the frame's 4 input frames and
    of the previous encoder frame's. Encoder frame t's input frames are 4t-3 .. 4t, the last of
    which its causal convolutions read, so the choice waits for no later audio than the frame."""

    hidden: int
    budget_init: float = 0.5
    quant: QuantPolicy = FLOAT

    @nn.compact
    def __call__(self, feats: jax.Array, feat_paddings: jax.Array, num_frames: int, cache=None):
        """-> f32[B, T']. Stream step (T = 4 T'): `cache` (f32[B, 3, F] the last 3 masked input
        frames, f32[B, 1, F] the last encoder frame's mean) -> (logits, the next step's cache)."""
        b, t, f = feats.shape
        feats = feats * (1.0 - feat_paddings)[..., None]  # padding reads as zeros, batched or not
        tail, prev_ctx = (None, None) if cache is None else cache
        x, tail = causal_context(feats, tail, 3)  # frame t's inputs are 4t-3 .. 4t
        x = jnp.pad(x, ((0, 0), (0, max(0, 4 * num_frames - 3 - t)), (0, 0)))
        x = x[:, : 4 * num_frames]
        cur = jnp.mean(x.reshape(b, num_frames, 4, f), axis=2)  # -> [B, T', F]
        prev, prev_ctx = causal_context(cur, prev_ctx, 1)
        prev = prev[:, :-1]  # the previous frame's -> [B, T', F]
        h = nn.relu(self.quant.dense(self.hidden, name="hidden")(jnp.concatenate([cur, prev], -1)))
        b0 = float(np.log(self.budget_init / (1.0 - self.budget_init)))
        out = self.quant.dense(1, bias_init=nn.initializers.constant(b0), name="out")(h)
        return out[..., 0] if cache is None else (out[..., 0], (tail, prev_ctx))


def choose(logits: jax.Array, train: bool, temperature, rng: jax.Array | None, noise=1.0):
    """(choice f32[B, T'] in {0, 1} (1: expensive), probability f32[B, T']). Training: a hard
    Gumbel-sigmoid sample (logistic noise scaled by `noise`) at `temperature` whose gradient is
    the soft sample's (straight through); `noise` 0 is the inference choice with that gradient.
    Inference: logit > 0."""
    prob = jax.nn.sigmoid(logits)
    if not train:
        return (logits > 0).astype(jnp.float32), prob
    u = jax.random.uniform(rng, logits.shape, minval=1e-6, maxval=1.0 - 1e-6)
    soft = jax.nn.sigmoid((logits + noise * (jnp.log(u) - jnp.log1p(-u))) / temperature)
    hard = (soft > 0.5).astype(jnp.float32)
    return hard + (soft - jax.lax.stop_gradient(soft)), prob  # exactly 0 or 1 forward


class BranchingSubsampling(nn.Module):
    """`ConvSubsampling` (same parameter names) with a cheap second half per frame: a depthwise
    stride-2 convolution and a rank-`rank` projection."""

    channels: int
    d_model: int
    rank: int
    quant: QuantPolicy = FLOAT

    @nn.compact
    def __call__(
        self, feats: jax.Array, gate: jax.Array, valid: jax.Array, imitate: bool = False,
        cache=None,
    ):  # fmt: skip
        """gate f32[B, T'] (1: expensive; 0 on padding), valid f32[B, T'] (1: not padding) ->
        (f32[B, T', d_model], the cheap half's relative squared error against the expensive
        one on the valid frames when `imitate`, else None). Padded frames run neither half on
        the device. Stream step: `cache` as `ConvSubsampling`'s (both halves read the shared
        first convolution's rows) -> (states, error, the next step's cache)."""
        q, ch = self.quant, self.channels
        freq = ((0, 0), (0, 0), (1, 1), (0, 0))
        ctx = (None, None) if cache is None else (cache[0][..., None], cache[1])
        x, feats_next = causal_context(feats[..., None], ctx[0], 2)
        x = nn.relu(
            q.small().conv_module(ch, (3, 3), strides=(2, 2), padding="VALID", name="Conv_0")(
                jnp.pad(x, freq)
            )
        )
        x, rows_next = causal_context(x, ctx[1], 2)
        x = jnp.pad(x, freq)
        with only_rows(gate):
            e = nn.relu(
                q.conv_module(ch, (3, 3), strides=(2, 2), padding="VALID", name="Conv_1")(x)
            )
            b, t, f, _ = e.shape
            e = q.dense(self.d_model, name="Dense_0")(e.reshape(b, t, f * ch))
        with only_rows((1.0 - gate) * valid):
            c = q.conv_module(
                ch,
                (3, 3),
                strides=(2, 2),
                padding="VALID",
                feature_group_count=ch,
                name="cheap_conv",
            )(x)
            c = nn.relu(c).reshape(b, t, f * ch)
            c = q.dense(self.rank, use_bias=False, name="cheap_down")(c)
            c = q.dense(self.d_model, name="cheap_up")(c)
        g = gate[..., None]
        err = relative_error(c, e, valid) if imitate else None
        if cache is None:
            return g * e + (1.0 - g) * c, err
        return g * e + (1.0 - g) * c, err, (feats_next[..., 0], rows_next)


def relative_error(approx: jax.Array, target: jax.Array, valid: jax.Array) -> jax.Array:
    """sum ||approx - target||^2 / sum ||target||^2 over the valid frames (f32[B, T'] 1.0 =
    valid) of f32[B, T', D] states; no gradient through `target`."""
    target = jax.lax.stop_gradient(target)
    err = jnp.sum(jnp.sum((approx - target) ** 2, axis=-1) * valid)
    return err / jnp.maximum(jnp.sum(jnp.sum(target**2, axis=-1) * valid), 1e-6)


class BranchingLayer(nn.Module):
    """`EncoderLayer` (same parameter names) whose frames take the expensive path where `gate`
    is 1 and the cheap one where it is 0 (module docstring). Returns (states f32[B, T', D],
    imitation error or None): with `imitate`, the cheap path's relative squared error against
    the expensive layer's output on every valid frame, from the same (gradient-stopped) input
    (training only: it costs a second pass of the expensive convolution and feed-forward)."""

    config: ModelConfig
    quant: QuantPolicy = FLOAT

    @nn.compact
    def __call__(
        self, x, paddings, mask, gate, train: bool, imitate: bool = False, positions=None,
        cache=None,
    ):  # fmt: skip
        """Stream step: `positions` and `cache` as `EncoderLayer`'s -> (states, error, the next
        step's cache)."""
        c, q = self.config, self.quant
        d, h = c.d_model, c.num_heads
        drop = nn.Dropout(c.dropout, deterministic=not train)
        g = gate[..., None]
        ln_att = nn.LayerNorm(name="LayerNorm_0")
        ln_ff = nn.LayerNorm(name=f"LayerNorm_{2 if c.conv_kernel > 0 else 1}")
        ff_in, ff_out = q.dense(c.ff_dim, name="Dense_0"), q.dense(d, name="Dense_1")
        cheap_in, cheap_out = (
            q.dense(c.branch_ff, name="cheap_ff_in"),
            q.dense(d, name="cheap_ff_out"),
        )
        x0 = x
        cheap_rows = (1.0 - gate) * (1.0 - paddings)  # padded frames run neither branch
        a = ln_att(x)
        with only_rows(cheap_rows):
            kv = q.dense(c.branch_rank, use_bias=False, name="cheap_kv_down")(a)
            kv = q.dense_general((2, h, d // h), name="cheap_kv_up")(kv)
        att_cache = None if cache is None else cache[:2]
        conv_cache = None if cache is None else cache[2]
        cheap_q = None
        if c.branch_attend:  # the cheap frames' own rank-r queries
            with only_rows(cheap_rows):
                cheap_q = q.dense(c.branch_rank, use_bias=False, name="cheap_q_down")(a)
                cheap_q = q.dense_general((h, d // h), name="cheap_q_up")(cheap_q)
        with only_rows(gate):
            att = SelfAttention(h, d, q, name="SelfAttention_0")(
                a, mask, kv=kv, gate=gate, positions=positions, cache=att_cache,
                cheap_q=cheap_q, cheap_rows=cheap_rows,
            )  # fmt: skip
        if cache is not None:
            att, att_cache = att
        cheap_att = None
        if c.branch_attend:
            att, cheap_att = att
            with only_rows(cheap_rows):
                b_, t_ = cheap_att.shape[:2]
                cheap_att = q.dense(c.branch_rank, use_bias=False, name="cheap_out_down")(
                    cheap_att.reshape(b_, t_, d)
                )
                cheap_att = q.dense(d, name="cheap_out_up")(cheap_att)
            x = x + (1.0 - g) * drop(cheap_att)
        x = x + g * drop(att)
        if c.conv_kernel > 0:
            ln_conv = nn.LayerNorm(name="LayerNorm_1")
            conv_mod = CausalConvModule(d, c.conv_kernel, q, name="CausalConvModule_0")
            with only_rows(gate):
                conv = conv_mod(ln_conv(x), paddings, gate=gate, cache=conv_cache)
            if cache is not None:
                conv, conv_cache = conv
            x = x + g * drop(conv)
        y = ln_ff(x)
        with only_rows(gate):
            fe = ff_out(drop(nn.swish(ff_in(y))))
        with only_rows(cheap_rows):
            fc = cheap_out(drop(nn.swish(cheap_in(y))))
        out = x + g * drop(fe) + (1.0 - g) * drop(fc)
        if cache is not None:
            assert not imitate, "imitation is a training output; the stream step has none"
            return out, None, (*att_cache, conv_cache)
        if not imitate:
            return out, None
        # every frame through both paths from the same input: the expensive one is the target
        xs = jax.lax.stop_gradient(x0)
        full = xs + att
        if c.conv_kernel > 0:
            full = full + conv_mod(ln_conv(full), paddings)
        full = full + ff_out(nn.swish(ff_in(ln_ff(full))))
        cheap = xs if cheap_att is None else xs + cheap_att
        cheap = cheap + cheap_out(nn.swish(cheap_in(ln_ff(cheap))))
        return out, relative_error(cheap, full, 1.0 - paddings)


class BranchingEncoder(nn.Module):
    """The `Encoder` interface with per-frame branch choices: feats f32[B, T, n_mels] (already
    normalized), feat_paddings f32[B, T] -> (f32[B, T', d_model], paddings f32[B, T'], aux) with
    aux = {"expensive": f32[B, T'] choices (1: expensive), "expensive_prob": f32[B, T'] the
    arbiter's probabilities, "macs": f32[B, T'] MACs per frame (`count_macs`)}.

    Stream step: with `state` (`initial_state`), as `Encoder`'s (inference only: the choices
    are the hard ones) -> (x, paddings, aux, state)."""

    config: ModelConfig
    quant: QuantPolicy = FLOAT

    def initial_state(self, batch: int) -> EncoderState:
        f = self.config.n_mels
        arbiter = (jnp.zeros((batch, 3, f), jnp.float32), jnp.zeros((batch, 1, f), jnp.float32))
        return stream_state(self.config, batch)._replace(arbiter=arbiter)

    @nn.compact
    def __call__(
        self,
        feats,
        feat_paddings,
        train: bool = False,
        temperature=1.0,
        imitate: bool = False,
        noise=1.0,
        state: EncoderState | None = None,
    ):
        """With `imitate` (training), aux also has "imitation": the cheap branch's relative
        squared error against the expensive one, summed over the front end and the layers
        (each from the same input; `BranchingLayer`). `temperature` and `noise`: the training
        choices' (`choose`)."""
        c = self.config
        if state is not None and (train or imitate):
            raise ValueError("the stream step is inference only (train and imitate False)")
        paddings = subsample_paddings(feat_paddings)
        n = paddings.shape[1]
        arbiter = Arbiter(c.arbiter_dim, c.branch_budget_init, self.quant, name="arbiter")
        if state is None:
            logits = arbiter(feats, feat_paddings, n)
        else:
            logits, arbiter_cache = arbiter(feats, feat_paddings, n, cache=state.arbiter)
        rng = self.make_rng("dropout") if train else None
        gate, prob = choose(logits, train, temperature, rng, noise)
        gate = gate * (1.0 - paddings)  # padded frames: cheap (and counted as nothing)
        sub = BranchingSubsampling(
            c.subsample_channels, c.d_model, c.branch_rank, self.quant, name="ConvSubsampling_0"
        )
        if state is None:
            x, imitation = sub(feats, gate, 1.0 - paddings, imitate)
        else:
            x, imitation, sub_cache = sub(
                feats, gate, 1.0 - paddings, cache=(state.feats, state.sub)
            )
        x = nn.Dropout(c.dropout, deterministic=not train)(x)
        mask, positions = attention_inputs(c, paddings, state)
        caches = []
        for i in range(c.num_layers):
            layer = BranchingLayer(c, self.quant, name=f"layer_{i}")
            if state is None:
                x, err = layer(x, paddings, mask, gate, train, imitate)
            else:
                x, err, cache = layer(
                    x, paddings, mask, gate, train, positions=positions,
                    cache=layer_caches(state, i),
                )  # fmt: skip
                caches.append(cache)
            if imitate:
                imitation = imitation + err
        x = nn.LayerNorm(name="LayerNorm_0")(x)
        aux = {
            "expensive": jax.lax.stop_gradient(gate) if not train else gate,
            "expensive_prob": prob,
            "macs": count_macs(c, mask, paddings, jax.lax.stop_gradient(gate)),
        }
        if imitate:
            aux["imitation"] = imitation
        x = x * (1.0 - paddings)[..., None]
        if state is None:
            return x, paddings, aux
        return x, paddings, aux, next_state(state, paddings, sub_cache, caches, arbiter_cache)


# --------------------------------------------------------------------------- initialization


def init_cheap_branch(params: dict, config: ModelConfig) -> dict:
    """`params` of a branching model whose expensive branch holds a trained plain model's
    weights, with the cheap branch fitted to them: the low-rank key/value projections by a
    truncated SVD of the expensive keys and values (their best rank-`branch_rank`
    approximation), the narrow feed-forward blocks by the `branch_ff` hidden units of largest
    |input weights| * |output weights| (their biases too), the depthwise convolution by the
    expensive convolution's same-channel taps and the low-rank projection by an SVD of the
    expensive one; with `branch_attend`, the low-rank query and output projections by SVDs of
    the expensive ones. The arbiter keeps its initialization."""
    p = jax.tree_util.tree_map(np.asarray, params)
    enc = dict(p["encoder"])
    r, w = config.branch_rank, config.branch_ff

    def svd(kernel: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        u, s, vt = np.linalg.svd(kernel.astype(np.float64), full_matrices=False)
        root = np.sqrt(s[:r])
        return (u[:, :r] * root).astype(np.float32), (root[:, None] * vt[:r]).astype(np.float32)

    sub = dict(enc["ConvSubsampling_0"])
    k2 = sub["Conv_1"]["kernel"]  # [3, 3, C, C]
    ch = k2.shape[-1]
    diag = k2[:, :, np.arange(ch), np.arange(ch)][:, :, None, :]  # -> [3, 3, 1, C]
    sub["cheap_conv"] = {"kernel": diag.astype(np.float32), "bias": sub["Conv_1"]["bias"]}
    down, up = svd(sub["Dense_0"]["kernel"])
    sub["cheap_down"] = {"kernel": down}
    sub["cheap_up"] = {"kernel": up, "bias": sub["Dense_0"]["bias"]}
    enc["ConvSubsampling_0"] = sub
    for i in range(config.num_layers):
        lay = dict(enc[f"layer_{i}"])
        qkv = lay["SelfAttention_0"]["qkv"]
        kern = qkv["kernel"][:, 1:]  # [D, 2, H, Dh]
        d = kern.shape[0]
        down, up = svd(kern.reshape(d, -1))
        lay["cheap_kv_down"] = {"kernel": down}
        lay["cheap_kv_up"] = {"kernel": up.reshape(r, *kern.shape[1:]), "bias": qkv["bias"][1:]}
        if config.branch_attend:  # rank-r queries and output projection
            down, up = svd(qkv["kernel"][:, 0].reshape(d, -1))
            lay["cheap_q_down"] = {"kernel": down}
            lay["cheap_q_up"] = {"kernel": up.reshape(r, *kern.shape[2:]), "bias": qkv["bias"][0]}
            out_k = lay["SelfAttention_0"]["out"]["kernel"]  # [H, Dh, D]
            down, up = svd(out_k.reshape(-1, out_k.shape[-1]))
            lay["cheap_out_down"] = {"kernel": down}
            lay["cheap_out_up"] = {"kernel": up, "bias": lay["SelfAttention_0"]["out"]["bias"]}
        w1, b1 = lay["Dense_0"]["kernel"], lay["Dense_0"]["bias"]
        w2, b2 = lay["Dense_1"]["kernel"], lay["Dense_1"]["bias"]
        score = np.linalg.norm(w1, axis=0) * np.linalg.norm(w2, axis=1)
        keep = np.sort(np.argsort(-score)[:w])
        lay["cheap_ff_in"] = {"kernel": w1[:, keep], "bias": b1[keep]}
        lay["cheap_ff_out"] = {"kernel": w2[keep], "bias": b2}
        enc[f"layer_{i}"] = lay
    out = dict(p)
    out["encoder"] = enc
    return jax.tree_util.tree_map(jnp.asarray, out)
