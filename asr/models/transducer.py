"""The transducer: encoder + predictor + joiner, with one method per use.

  encode(feats, feat_paddings, train)      -> (enc_p f32[B, T', J], enc_paddings f32[B, T'])
  predict(labels int32[B, U+1], train)     -> pred_p f32[B, U+1, J]   (blank-prefixed history)
  predictor_init(batch)                    -> predictor state pytree
  predict_step(state, tokens int32[B])     -> (state, pred_p f32[B, J])
  joint(enc_p[..., J], pred_p[..., J])     -> logits f32[..., V]
  ctc_logits(enc_p)                        -> f32[B, T', V]  (only with config.ctc_head)

Call them with `model.apply(variables, ..., method=Transducer.encode)`. Variables hold
`params` and `norm` (feature mean and inverse std, set from training data, not trained).

References: Graves 2012, "Sequence Transduction with Recurrent Neural Networks"; the auxiliary
CTC head follows the joint CTC/transducer training of icefall's recipes (Graves et al. 2006, CTC).
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from asr.models.config import ModelConfig
from asr.models.encoder import Encoder
from asr.models.joiner import Joiner
from asr.models.predictor import PREDICTORS


class Transducer(nn.Module):
    config: ModelConfig
    predictor_cls: type[nn.Module]

    def setup(self):
        c = self.config
        self.encoder = Encoder(c)
        self.predictor = self.predictor_cls(c)
        self.joiner = Joiner(c)
        if c.ctc_head:
            self.ctc_out = nn.Dense(c.vocab_size)
        self.feat_mean = self.variable("norm", "mean", jnp.zeros, (c.n_mels,))
        self.feat_istd = self.variable("norm", "istd", jnp.ones, (c.n_mels,))

    def encode(self, feats, feat_paddings, train: bool = False):
        c = self.config
        if feats.ndim != 3 or feats.shape[-1] != c.n_mels:
            raise ValueError(f"feats must be [B, T, {c.n_mels}], got {feats.shape}")
        if feat_paddings.shape != feats.shape[:2]:
            raise ValueError(f"feat_paddings must be {feats.shape[:2]}, got {feat_paddings.shape}")
        x = (feats - self.feat_mean.value) * self.feat_istd.value
        enc, paddings = self.encoder(x, feat_paddings, train=train)
        return self.joiner.project_encoder(enc), paddings

    def predict(self, labels, train: bool = False):
        return self.joiner.project_predictor(self.predictor(labels, train=train))

    def predictor_init(self, batch: int):
        return self.predictor.initial_state(batch)

    def predict_step(self, state, tokens):
        state, out = self.predictor.step(state, tokens)
        return state, self.joiner.project_predictor(out)

    def joint(self, enc_p, pred_p):
        return self.joiner(enc_p, pred_p)

    def ctc_logits(self, enc_p):
        """f32[B, T', J] projected encoder output -> f32[B, T', V] CTC logits (needs ctc_head)."""
        return self.ctc_out(nn.tanh(enc_p))

    def __call__(self, feats, feat_paddings, labels, train: bool = False):
        """Full forward for initialization: logits f32[B, T', U+1, V]."""
        enc_p, _ = self.encode(feats, feat_paddings, train)
        if self.config.ctc_head:
            self.ctc_logits(enc_p)  # creates its parameters
        pred_p = self.predict(labels, train)
        return self.joint(enc_p[:, :, None], pred_p[:, None])


def build_model(config: ModelConfig) -> Transducer:
    if config.predictor not in PREDICTORS:
        raise ValueError(f"predictor must be one of {sorted(PREDICTORS)}, got {config.predictor!r}")
    return Transducer(config=config, predictor_cls=PREDICTORS[config.predictor])


def init_variables(model: Transducer, rng: jax.Array, num_frames: int = 64, num_labels: int = 4):
    """Initial variables {'params', 'norm'} from dummy shapes."""
    c = model.config
    feats = jnp.zeros((1, num_frames, c.n_mels))
    pads = jnp.zeros((1, num_frames))
    labels = jnp.zeros((1, num_labels + 1), jnp.int32)
    return model.init({"params": rng, "dropout": rng}, feats, pads, labels)


def count_params(params) -> int:
    return int(sum(x.size for x in jax.tree_util.tree_leaves(params)))
