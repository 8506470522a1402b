"""Predictor (label encoder) of the transducer: summarizes the labels emitted so far.

Two interchangeable modules with one interface:
  `__call__(labels)`: labels int32[B, U+1] (blank-prefixed history) -> f32[B, U+1, pred_dim];
  `initial_state(batch)` -> state pytree; `step(state, tokens int32[B])` -> (state, f32[B, pred_dim]).
Step-by-step outputs equal the full-sequence ones (tested), which decoding relies on.

References: Graves 2012 (LSTM prediction network); Ghodsi et al. 2020, "RNN-Transducer with
Stateless Prediction Network".
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from asr.models.config import ModelConfig
from asr.models.quant import FLOAT, LstmCell, QuantPolicy


class LstmPredictor(nn.Module):
    config: ModelConfig
    quant: QuantPolicy = FLOAT

    def setup(self):
        c = self.config
        self.embed = nn.Embed(c.vocab_size, c.pred_dim)
        self.cells = [
            LstmCell(c.pred_dim, self.quant, name=f"lstm_{i}") for i in range(c.pred_layers)
        ]
        self.norm = nn.LayerNorm()

    def initial_state(self, batch: int):
        """Per layer (c, h): f32[B, pred_dim] zeros."""
        d = self.config.pred_dim
        return tuple((jnp.zeros((batch, d)), jnp.zeros((batch, d))) for _ in self.cells)

    def step(self, state, tokens):
        x = self.embed(tokens)
        new = []
        for cell, s in zip(self.cells, state, strict=True):
            s, x = cell(s, x)
            new.append(s)
        return tuple(new), self.norm(x)

    def __call__(self, labels, train: bool = False):
        state = self.initial_state(labels.shape[0])

        def body(mdl, carry, tok):
            carry, y = mdl.step(carry, tok)
            return carry, y

        # every variable collection is broadcast into the scan: the emulated processor keeps its
        # packed weights in an `edge` collection beside `params` (hw.runtime)
        scan = nn.scan(
            body, variable_broadcast=True, split_rngs={"params": False}, in_axes=1, out_axes=1
        )
        _, ys = scan(self, state, labels)
        return ys


class StatelessPredictor(nn.Module):
    """Embeds the last `context_size` tokens, mixes them with a small depthwise conv."""

    config: ModelConfig
    quant: QuantPolicy = FLOAT

    def setup(self):
        c = self.config
        self.embed = nn.Embed(c.vocab_size, c.pred_dim)
        self.mix = self.quant.dense(c.pred_dim)
        self.norm = nn.LayerNorm()

    def initial_state(self, batch: int):
        """int32[B, context_size] history, filled with blank (the start symbol)."""
        return jnp.full((batch, self.config.context_size), self.config.blank_id, jnp.int32)

    def _out(self, hist):  # hist int32[..., context_size] -> [..., pred_dim]
        e = self.embed(hist)  # -> [..., ctx, pred_dim]
        e = e.reshape(*e.shape[:-2], -1)
        return self.norm(nn.relu(self.mix(e)))

    def step(self, state, tokens):
        hist = jnp.concatenate([state[:, 1:], tokens[:, None].astype(jnp.int32)], axis=1)
        return hist, self._out(hist)

    def __call__(self, labels, train: bool = False):
        c = self.config
        b, n = labels.shape
        padded = jnp.concatenate(
            [jnp.full((b, c.context_size - 1), c.blank_id, labels.dtype), labels], axis=1
        )
        idx = jnp.arange(n)[:, None] + jnp.arange(c.context_size)[None]  # -> [U+1, ctx]
        return self._out(padded[:, idx])  # -> [B, U+1, pred_dim]


PREDICTORS = {"lstm": LstmPredictor, "stateless": StatelessPredictor}


def gather_state(state, index: jax.Array):
    """Reorders a predictor state pytree along its leading axis (beam search reselection)."""
    return jax.tree_util.tree_map(lambda s: s[index], state)
