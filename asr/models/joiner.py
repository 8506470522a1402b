"""Joiner: combines an encoder frame and a predictor output into token logits.

Projections are applied once per frame and once per label (`project_encoder`,
`project_predictor`); the per-(t, u) work is only `tanh(e + p) @ W_out`, which is what the loss
evaluates in chunks.
"""

from __future__ import annotations

import flax.linen as nn
import jax

from asr.models.config import ModelConfig
from asr.models.quant import FLOAT, QuantPolicy


class Joiner(nn.Module):
    config: ModelConfig
    quant: QuantPolicy = FLOAT

    def setup(self):
        c, q = self.config, self.quant
        self.enc_proj = q.dense(c.joint_dim)
        self.pred_proj = q.dense(c.joint_dim, use_bias=False)
        self.out = q.small().dense(c.vocab_size)  # a small layer (asr.models.quant)

    def project_encoder(self, enc: jax.Array) -> jax.Array:
        """f32[..., d_model] -> f32[..., joint_dim]."""
        return self.enc_proj(enc)

    def project_predictor(self, pred: jax.Array) -> jax.Array:
        """f32[..., pred_dim] -> f32[..., joint_dim]."""
        return self.pred_proj(pred)

    def __call__(self, enc_p: jax.Array, pred_p: jax.Array) -> jax.Array:
        """Projected, broadcastable f32[..., joint_dim] pair -> logits f32[..., vocab_size]."""
        return self.out(nn.tanh(enc_p + pred_p))
