"""Learned attention biasing (CATT): the encoder output attends over the user's phrases.

Each phrase of the context list (a contact or device name, as subword tokens) is encoded into
one vector by a small phrase encoder: a bidirectional LSTM whose two final states are
concatenated (`bias_encoder="lstm"`, the paper's choice) or one rotary self-attention layer
mean-pooled over the tokens (`"transformer"`). A learned "no-bias" vector is always entry 0 of
the list, so attention has somewhere to go when no listed name is spoken, and an empty list
(or no list at all) still works. Every encoder frame then queries the list with multi-head
attention (keys and values from the phrase vectors; phrase slots that are padding get weight
exactly 0), and a combiner mixes the attended context into the frame:

    biased = enc + Dense_0(LayerNorm(concat(enc, attended)))

where `Dense_0` starts with zero weights and bias. This is a deliberate deviation from the
paper's plain `Dense(concat(enc, attended))`: at initialization the biased frame equals the
unbiased one bit for bit, so the biasing network can be added to a trained model (the shipped
one) and fine-tuned without losing the model's accuracy at step 0 (the zero-initialized residual
branch of ReZero / ControlNet). The attention is per frame, so the encoder stays streaming.

Padding convention: a context is `(tokens int32[B, P, Lp], paddings f32[B, P, Lp])`, 1.0 = pad;
each phrase's tokens are left-aligned (padding after them) and a slot whose tokens are all
padding is absent. `context_arrays` builds these arrays on the host from token lists, padded to
bucket sizes so a new list rarely compiles anything new.

References: Chang et al. 2021, "Context-Aware Transformer Transducer for Speech Recognition"
(ASRU 2021); Pundak et al. 2018, "Deep context: end-to-end contextual speech recognition"
(CLAS: the no-bias entry); Bachlechner et al. 2021, "ReZero is all you need" (zero-initialized
residual branch).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from asr.models.config import ModelConfig
from asr.models.encoder import NEG_INF, SelfAttention
from asr.models.quant import FLOAT, LstmCell, QuantPolicy

# Padded sizes of a context list: phrases per utterance P, and tokens per phrase Lp. A list is
# padded up to the smallest bucket that holds it, so lists of other lengths reuse compiled code.
PHRASE_BUCKETS = (8, 32, 128, 512, 2048)
TOKEN_BUCKETS = (4, 8, 16)


def bucket_size(n: int, buckets: Sequence[int]) -> int:
    """The smallest bucket >= n; past the largest, the next multiple of the largest."""
    for b in buckets:
        if n <= b:
            return b
    return buckets[-1] * math.ceil(n / buckets[-1])


def context_arrays(
    token_lists_per_utt: Sequence[Sequence[Sequence[int]]],
    num_phrases: int | None = None,
    max_tokens: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Token lists of each utterance's phrases -> the padded context arrays `encode` takes.

    Args:
      token_lists_per_utt: per utterance, per phrase, its token ids (non-empty; from
        `asr.context.tokenize_phrases`). An utterance may have no phrases.
      num_phrases: P, phrase slots per utterance; None: the smallest of PHRASE_BUCKETS that
        holds the longest list (past 2048, the next multiple of 2048). A list longer than a
        given P is an error.
      max_tokens: Lp, token slots per phrase; None: the smallest of TOKEN_BUCKETS that holds
        the longest phrase, at most 16. A phrase longer than Lp is truncated to its first Lp
        tokens: the phrase encoder then sees only that prefix (16 subwords hold any name of a
        few words; two long phrases that share their first Lp tokens look alike).

    Returns:
      (tokens int32[B, P, Lp], paddings f32[B, P, Lp]) NumPy arrays, 1.0 = pad; tokens are
      left-aligned in each slot and padding slots hold token 0 with padding 1.0.
    """
    if isinstance(token_lists_per_utt, (str, bytes)) or not isinstance(
        token_lists_per_utt, Sequence
    ):
        raise ValueError(
            "token_lists_per_utt: expected a list (per utterance) of lists (per phrase) of "
            f"token ids, got {type(token_lists_per_utt).__name__}"
        )
    lists = [[[int(t) for t in p] for p in utt] for utt in token_lists_per_utt]
    for b, utt in enumerate(lists):
        for k, p in enumerate(utt):
            if not p:
                raise ValueError(f"utterance {b}, phrase {k}: expected token ids, got none")
    longest_list = max((len(u) for u in lists), default=0)
    longest_phrase = max((len(p) for u in lists for p in u), default=1)
    if num_phrases is None:
        num_phrases = bucket_size(longest_list, PHRASE_BUCKETS)
    elif num_phrases < 1 or longest_list > num_phrases:
        raise ValueError(
            f"num_phrases: expected >= 1 and >= the longest list ({longest_list} phrases), "
            f"got {num_phrases}"
        )
    if max_tokens is None:
        max_tokens = min(bucket_size(longest_phrase, TOKEN_BUCKETS), TOKEN_BUCKETS[-1])
    elif max_tokens < 1:
        raise ValueError(f"max_tokens: expected >= 1, got {max_tokens}")
    tokens = np.zeros((len(lists), num_phrases, max_tokens), np.int32)
    paddings = np.ones((len(lists), num_phrases, max_tokens), np.float32)
    for b, utt in enumerate(lists):
        for k, p in enumerate(utt):
            p = p[:max_tokens]
            tokens[b, k, : len(p)] = p
            paddings[b, k, : len(p)] = 0.0
    return tokens, paddings


class LstmPhraseEncoder(nn.Module):
    """Embedded phrase tokens f32[N, Lp, E], paddings f32[N, Lp] (left-aligned tokens)
    -> f32[N, E]: the final states of a forward and a backward LSTM (E/2 units each),
    concatenated."""

    config: ModelConfig
    quant: QuantPolicy = FLOAT

    @nn.compact
    def __call__(self, x: jax.Array, paddings: jax.Array) -> jax.Array:
        e = self.config.bias_dim
        lengths = jnp.sum(paddings < 0.5, axis=1).astype(jnp.int32)  # -> [N]
        # an absent phrase (length 0) reads one padding token: finite, and masked downstream
        lengths = jnp.maximum(lengths, 1)
        # every variable collection reaches the cells (the emulated processor's packed weights
        # live in an `edge` collection beside `params`: hw.runtime)
        fwd = nn.RNN(
            LstmCell(e // 2, self.quant, name="fwd_cell"),
            return_carry=True,
            variable_broadcast=True,
        )
        bwd = nn.RNN(
            LstmCell(e - e // 2, self.quant, name="bwd_cell"),
            return_carry=True,
            variable_broadcast=True,
            reverse=True,
            keep_order=True,
            name="bwd",
        )
        (_, h_fwd), _ = fwd(x, seq_lengths=lengths)  # state after the last token
        (_, h_bwd), _ = bwd(x, seq_lengths=lengths)  # state after reading back to the first
        return jnp.concatenate([h_fwd, h_bwd], axis=-1)


class TransformerPhraseEncoder(nn.Module):
    """Embedded phrase tokens f32[N, Lp, E], paddings f32[N, Lp] -> f32[N, E]: one pre-norm
    self-attention layer (rotary positions) and feed-forward, mean-pooled over the tokens."""

    config: ModelConfig
    quant: QuantPolicy = FLOAT

    @nn.compact
    def __call__(self, x: jax.Array, paddings: jax.Array) -> jax.Array:
        c = self.config
        valid = paddings < 0.5  # -> [N, Lp]
        mask = valid[:, None, None, :]  # keys that are tokens -> [N, 1, 1, Lp]
        q = self.quant
        x = x + SelfAttention(c.bias_heads, c.bias_dim, q)(nn.LayerNorm()(x), mask)
        h = nn.swish(q.dense(2 * c.bias_dim)(nn.LayerNorm()(x)))
        x = x + q.dense(c.bias_dim)(h)
        w = valid.astype(x.dtype)[..., None]
        return jnp.sum(x * w, axis=1) / jnp.maximum(jnp.sum(w, axis=1), 1.0)


PHRASE_ENCODERS = {"lstm": LstmPhraseEncoder, "transformer": TransformerPhraseEncoder}


class ContextEntries(NamedTuple):
    """A context list through the phrase encoder and the attention's key and value projections:
    what `ContextBiasing` needs of it at every frame. It depends on the list and the weights only,
    so a recognizer computes it once per list (`Transducer.context_entries`) and passes it
    wherever a `(tokens, paddings)` context goes, instead of encoding every phrase again in each
    call or stream step."""

    keys: jax.Array  # f32[B, P+1, H, Dh]; entry 0 the no-bias entry
    values: jax.Array  # f32[B, P+1, H, Dh]
    paddings: jax.Array  # f32[B, P+1], 1.0 = absent


def attention_weights(
    q: jax.Array, k: jax.Array, entry_paddings: jax.Array, quant: QuantPolicy = FLOAT
) -> jax.Array:
    """Scaled dot-product weights over the list entries.

    q: f32[B, T, H, Dh] queries; k: f32[B, P+1, H, Dh] keys; entry_paddings: f32[B, P+1],
    1.0 = absent -> f32[B, H, T, P+1]; absent entries get weight exactly 0."""
    valid = (entry_paddings < 0.5)[:, None, None, :]  # -> [B, 1, 1, P+1]
    logits = quant.einsum("bthd,bphd->bhtp", q, k) / jnp.sqrt(q.shape[-1]).astype(q.dtype)
    w = jax.nn.softmax(jnp.where(valid, logits, NEG_INF), axis=-1)
    return jnp.where(valid, w, 0.0)


class ContextBiasing(nn.Module):
    """The biasing network: phrase encoder, no-bias entry, attention and combiner (see the
    module docstring)."""

    config: ModelConfig
    quant: QuantPolicy = FLOAT

    def setup(self):
        c, q = self.config, self.quant
        dh = c.bias_dim // c.bias_heads
        self.embed = nn.Embed(c.vocab_size, c.bias_dim)
        self.phrase_encoder = PHRASE_ENCODERS[c.bias_encoder](c, q)
        self.phrase_norm = nn.LayerNorm()
        self.no_bias = self.param("no_bias", nn.initializers.normal(1.0), (c.bias_dim,))
        self.query = q.dense_general((c.bias_heads, dh))
        self.key = q.dense_general((c.bias_heads, dh))
        self.value = q.dense_general((c.bias_heads, dh))
        self.out = q.dense_general(c.bias_dim, axis=(-2, -1))
        self.combine_norm = nn.LayerNorm()
        zeros = nn.initializers.zeros
        self.combine = q.dense(c.d_model, kernel_init=zeros, bias_init=zeros)
        self.dropout = nn.Dropout(c.dropout)

    def entries(self, context, batch: int) -> tuple[jax.Array, jax.Array]:
        """The list as the attention sees it: (f32[B, P+1, bias_dim] entry vectors, f32[B, P+1]
        entry paddings, 1.0 = absent); entry 0 is the no-bias vector, never absent. `context`:
        (tokens int32[B, P, Lp], paddings f32[B, P, Lp]) or None (no list: P = 0)."""
        e = self.config.bias_dim
        first = jnp.broadcast_to(self.no_bias, (batch, 1, e))
        if context is None:
            return first, jnp.zeros((batch, 1), jnp.float32)
        tokens, paddings = context
        b, p, lp = tokens.shape
        pad = paddings.reshape(b * p, lp)
        tok = jnp.where(pad < 0.5, tokens.reshape(b * p, lp), 0)  # pad ids never index
        vec = self.phrase_encoder(self.embed(tok), pad)  # -> [B*P, E]
        vec = self.phrase_norm(vec).reshape(b, p, e)
        absent = jnp.all(paddings > 0.5, axis=-1).astype(jnp.float32)  # -> [B, P]
        vec = vec * (1.0 - absent)[..., None]
        return (
            jnp.concatenate([first, vec], axis=1),
            jnp.concatenate([jnp.zeros((b, 1), jnp.float32), absent], axis=1),
        )

    def precompute(self, context, batch: int) -> ContextEntries:
        """The list's keys and values (`ContextEntries`); `context` as for `entries`."""
        entries, entry_paddings = self.entries(context, batch)
        return ContextEntries(self.key(entries), self.value(entries), entry_paddings)

    def __call__(self, enc, enc_paddings, context=None, train: bool = False):
        """Biases encoder frames toward the context list.

        Args:
          enc: f32[B, T, d_model] encoder output; enc_paddings: f32[B, T], 1.0 = pad.
          context: (tokens int32[B, P, Lp], paddings f32[B, P, Lp]), its `ContextEntries`
            (from `precompute`), or None (no list).
          train: dropout on the attended context.

        Returns:
          (f32[B, T, d_model] biased frames, zero at padded frames; attention weights
          f32[B, H, T, P+1], entry 0 the no-bias entry, absent entries 0).
        """
        if not isinstance(context, ContextEntries):
            context = self.precompute(context, enc.shape[0])
        k, v, entry_paddings = context  # -> [B, P+1, H, Dh] twice, [B, P+1]
        q = self.query(enc)  # -> [B, T, H, Dh]
        w = attention_weights(q, k, entry_paddings, self.quant)
        attended = self.out(self.quant.einsum("bhtp,bphd->bthd", w, v))  # -> [B, T, bias_dim]
        attended = self.dropout(attended, deterministic=not train)
        mixed = self.combine(self.combine_norm(jnp.concatenate([enc, attended], axis=-1)))
        return (enc + mixed) * (1.0 - enc_paddings)[..., None], w
