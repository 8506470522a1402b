"""The transducer: encoder + predictor + joiner, with one method per use.

  encode(feats, feat_paddings, train, context=None)
                                           -> (enc_p f32[B, T', J], enc_paddings f32[B, T'])
  encode_aux(feats, feat_paddings, train, context=None, temperature=1.0)
                                           -> (enc_p, enc_paddings, aux): aux is the encoder's
                                              auxiliary outputs (per-frame "macs"; a branching
                                              encoder's "expensive" choices and probabilities)
  init_stream(batch)                       -> the encoder's stream state (`EncoderState`)
  encode_step(feats, feat_paddings, state, context=None)
                                           -> (enc_p, enc_paddings, aux, state): `encode_aux`
                                              of whole chunks of a stream (4 * chunk_size
                                              feature frames each), caches in `state`
  context_entries(context, batch)          -> the list's keys and values (ContextEntries), to
                                              pass as `context` (phrases encoded once)
  bias_attention(feats, feat_paddings, context=None)
                                           -> f32[B, H, T', P+1] biasing attention weights
  predict(labels int32[B, U+1], train)     -> pred_p f32[B, U+1, J]   (blank-prefixed history)
  predictor_init(batch)                    -> predictor state pytree
  predict_step(state, tokens int32[B])     -> (state, pred_p f32[B, J])
  joint(enc_p[..., J], pred_p[..., J])     -> logits f32[..., V]
  ctc_logits(enc_p)                        -> f32[B, T', V]  (only with config.ctc_head)

Call them with `model.apply(variables, ..., method=Transducer.encode)`, or by name
(`method="encode"`) where the model may be a subclass that overrides them (the emulated
processor's `hw.runtime.EdgeTransducer`: the recognizer calls them by name). Variables hold
`params` and `norm` (feature mean and inverse std, set from training data, not trained).

With `config.bias_dim` > 0 the encoder output goes through the learned attention biasing
network (`asr.models.biasing`) before `joiner.project_encoder`, so decoders see biased frames
without any change. `context` is `(tokens int32[B, P, Lp], paddings f32[B, P, Lp])`, 1.0 = pad
(`asr.models.biasing.context_arrays` builds it); None means no list, i.e. the no-bias entry
alone (what training shows in its batches without lists). A model without biasing ignores
`context`: its encode is what it was before biasing existed, bit for bit. The biasing attention
is per frame (each frame queries the list), so a stream step biases its chunk's frames with no
state of its own (the phrase vectors are recomputed each step from `context`, unless it is the
list's `ContextEntries`, computed once by `context_entries`).

Streaming (`asr.models.encoder` module docstring): `init_stream` then `encode_step` chunk by
chunk gives `encode_aux`'s outputs of the whole utterance on its valid frames (float rounding
apart); `asr.streaming` decodes on top of it.

References: Graves 2012, "Sequence Transduction with Recurrent Neural Networks"; the auxiliary
CTC head follows the joint CTC/transducer training of icefall's recipes (Graves et al. 2006, CTC).
Chang et al. 2021, "Context-Aware Transformer Transducer" (the biasing network).
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from asr.models.biasing import PHRASE_ENCODERS, ContextBiasing, ContextEntries
from asr.models.branching import BranchingEncoder
from asr.models.config import BIAS_ENCODERS, ENCODERS, ModelConfig
from asr.models.encoder import Encoder, EncoderState, check_step_inputs
from asr.models.joiner import Joiner
from asr.models.predictor import PREDICTORS
from asr.models.quant import FLOAT, QuantPolicy

ENCODER_CLASSES = {"transformer": Encoder, "branching": BranchingEncoder}


class Transducer(nn.Module):
    config: ModelConfig
    predictor_cls: type[nn.Module]
    quant: QuantPolicy = FLOAT  # how every matrix product runs (asr.models.quant)
    # feats, feat_paddings, train, temperature -> (states, paddings, aux dict)
    encoder_cls: type[nn.Module] = Encoder

    def setup(self):
        c, q = self.config, self.quant
        self.encoder = self.encoder_cls(c, q)
        self.predictor = self.predictor_cls(c, q)
        self.joiner = Joiner(c, q)
        if c.ctc_head:
            self.ctc_out = q.small().dense(c.vocab_size)  # a small layer
        if c.bias_dim > 0:
            self.biasing = ContextBiasing(c, q)
        self.feat_mean = self.variable("norm", "mean", jnp.zeros, (c.n_mels,))
        self.feat_istd = self.variable("norm", "istd", jnp.ones, (c.n_mels,))

    def _encode(
        self, feats, feat_paddings, train: bool, context, temperature=1.0, imitate=False,
        noise=1.0, state: EncoderState | None = None,
    ):  # fmt: skip
        """(biased encoder output f32[B, T', d_model], paddings f32[B, T'], biasing attention
        weights f32[B, H, T', P+1] or None without a biasing network, encoder aux dict, the
        next stream state or None without `state`)."""
        c = self.config
        if feats.ndim != 3 or feats.shape[-1] != c.n_mels:
            raise ValueError(f"feats must be [B, T, {c.n_mels}], got {feats.shape}")
        if feat_paddings.shape != feats.shape[:2]:
            raise ValueError(f"feat_paddings must be {feats.shape[:2]}, got {feat_paddings.shape}")
        x = (feats - self.feat_mean.value) * self.feat_istd.value
        kw = {} if state is None else {"state": state}
        enc, paddings, aux, *new_state = self.encoder(
            x, feat_paddings, train=train, temperature=temperature, imitate=imitate, noise=noise,
            **kw,
        )  # fmt: skip
        new_state = new_state[0] if new_state else None
        if c.bias_dim <= 0:
            return enc, paddings, None, aux, new_state
        if isinstance(context, ContextEntries):
            if context.keys.ndim != 4 or context.keys.shape[0] != feats.shape[0]:
                raise ValueError(
                    f"context entries must be [B={feats.shape[0]}, P+1, H, Dh], "
                    f"got {context.keys.shape}"
                )
        elif context is not None:
            tokens, cpads = context
            if tokens.ndim != 3 or tokens.shape[0] != feats.shape[0]:
                raise ValueError(
                    f"context tokens must be [B={feats.shape[0]}, P, Lp], got {tokens.shape}"
                )
            if cpads.shape != tokens.shape:
                raise ValueError(f"context paddings must be {tokens.shape}, got {cpads.shape}")
        enc, weights = self.biasing(enc, paddings, context, train)
        return enc, paddings, weights, aux, new_state

    def encode(self, feats, feat_paddings, train: bool = False, context=None):
        """feats f32[B, T, n_mels], feat_paddings f32[B, T] (1.0 = pad), context (see the
        module docstring) -> (enc_p f32[B, T', joint_dim], enc_paddings f32[B, T'])."""
        enc, paddings, _, _, _ = self._encode(feats, feat_paddings, train, context)
        return self.joiner.project_encoder(enc), paddings

    def encode_aux(
        self, feats, feat_paddings, train: bool = False, context=None, temperature=1.0,
        imitate: bool = False, noise=1.0,
    ):  # fmt: skip
        """`encode` plus the encoder's auxiliary outputs: (enc_p, enc_paddings, aux), aux =
        {"macs": f32[B, T'] multiply-accumulates per frame} and, for a branching encoder,
        "expensive" (choices, 1: expensive) and "expensive_prob" f32[B, T']. `temperature`:
        the branching encoder's Gumbel temperature in training; `imitate`: also its cheap
        branch's error against the expensive one (aux["imitation"], `asr.models.branching`);
        `noise`: the scale of the training choices' logistic noise."""
        enc, paddings, _, aux, _ = self._encode(
            feats, feat_paddings, train, context, temperature, imitate, noise
        )
        return self.joiner.project_encoder(enc), paddings, aux

    def encode_states(self, feats, feat_paddings, context=None):
        """`encode_aux` in inference mode, plus the encoder states before the joiner's projection
        (what a phone head reads, `asr.phonetic`): (enc_p, enc_paddings, aux, states f32[B, T',
        d_model])."""
        enc, paddings, _, aux, _ = self._encode(feats, feat_paddings, False, context)
        return self.joiner.project_encoder(enc), paddings, aux, enc

    def init_stream(self, batch: int) -> EncoderState:
        """The encoder's stream state before the first chunk of `batch` streams (zeros, no
        cached frame). Raises ValueError for a config with unlimited left context
        (left_chunks < 0): its step would need an unbounded cache."""
        return self.encoder.initial_state(batch)

    def encode_step(self, feats, feat_paddings, state: EncoderState, context=None):
        """One step of a stream (inference mode): feats f32[B, T, n_mels] whole chunks (T a
        multiple of 4 * chunk_size; only the stream's last step may hold padding, trailing:
        feat_paddings f32[B, T], 1.0 = pad), state from `init_stream` or the previous step,
        context as for `encode` -> (enc_p f32[B, T/4, joint_dim], enc_paddings f32[B, T/4],
        aux (as `encode_aux`'s, for these frames), the next state)."""
        check_step_inputs(self.config, feats, feat_paddings, state, self.encoder.initial_state)
        enc, paddings, _, aux, state = self._encode(
            feats, feat_paddings, False, context, state=state
        )
        return self.joiner.project_encoder(enc), paddings, aux, state

    def encode_step_states(self, feats, feat_paddings, state: EncoderState, context=None):
        """`encode_step` plus the chunk's encoder states before the joiner's projection (what a
        phone head reads, as `encode_states`): (enc_p, enc_paddings, aux, the next state, states
        f32[B, T/4, d_model])."""
        check_step_inputs(self.config, feats, feat_paddings, state, self.encoder.initial_state)
        enc, paddings, _, aux, state = self._encode(
            feats, feat_paddings, False, context, state=state
        )
        return self.joiner.project_encoder(enc), paddings, aux, state, enc

    def context_entries(self, context, batch: int) -> ContextEntries:
        """A context list through the biasing network's phrase encoder and key and value
        projections (`asr.models.biasing.ContextEntries`): pass it as `context` to `encode`,
        `encode_aux`, `encode_step` or `bias_attention` to skip encoding the phrases there
        (same result). `context`: (tokens int32[B, P, Lp], paddings f32[B, P, Lp]) or None."""
        if self.config.bias_dim <= 0:
            raise ValueError("context_entries: this model has no biasing network (bias_dim 0)")
        return self.biasing.precompute(context, batch)

    def bias_attention(self, feats, feat_paddings, context=None):
        """The biasing network's attention weights f32[B, H, T', P+1] (inference mode): for each
        head and encoder frame, a distribution over the no-bias entry (index 0) and the P
        phrase slots (absent slots 0; padded frames have weights too, ignore them)."""
        if self.config.bias_dim <= 0:
            raise ValueError("bias_attention: this model has no biasing network (bias_dim 0)")
        return self._encode(feats, feat_paddings, False, context)[2]

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

    def __call__(self, feats, feat_paddings, labels, train: bool = False, context=None):
        """Full forward for initialization: logits f32[B, T', U+1, V]."""
        enc_p, _ = self.encode(feats, feat_paddings, train, context)
        if self.config.ctc_head:
            self.ctc_logits(enc_p)  # creates its parameters
        pred_p = self.predict(labels, train)
        return self.joint(enc_p[:, :, None], pred_p[:, None])


def build_model(config: ModelConfig, quant: QuantPolicy = FLOAT) -> Transducer:
    """The transducer of `config`; `quant` sets how its matrix products run (float, or fake-
    quantized weights and activations: `asr.models.quant`). The parameters are the same."""
    if config.predictor not in PREDICTORS:
        raise ValueError(f"predictor must be one of {sorted(PREDICTORS)}, got {config.predictor!r}")
    if config.bias_dim < 0:
        raise ValueError(f"bias_dim must be >= 0 (0: no biasing), got {config.bias_dim}")
    if config.bias_dim > 0:
        if config.bias_encoder not in BIAS_ENCODERS:
            raise ValueError(
                f"bias_encoder must be one of {list(BIAS_ENCODERS)}, got {config.bias_encoder!r}"
            )
        assert set(BIAS_ENCODERS) == set(PHRASE_ENCODERS), PHRASE_ENCODERS
        if config.bias_heads < 1 or config.bias_dim % config.bias_heads:
            raise ValueError(
                f"bias_dim ({config.bias_dim}) must be a multiple of bias_heads "
                f"({config.bias_heads}), which must be >= 1"
            )
    if config.encoder not in ENCODERS:
        raise ValueError(f"encoder must be one of {list(ENCODERS)}, got {config.encoder!r}")
    assert set(ENCODERS) == set(ENCODER_CLASSES), ENCODER_CLASSES
    if config.encoder == "branching":
        for name in ("branch_rank", "branch_ff", "arbiter_dim"):
            if getattr(config, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(config, name)}")
        if not 0.0 < config.branch_budget_init < 1.0:
            raise ValueError(
                f"branch_budget_init must be in (0, 1), got {config.branch_budget_init}"
            )
    return Transducer(
        config=config,
        predictor_cls=PREDICTORS[config.predictor],
        quant=quant,
        encoder_cls=ENCODER_CLASSES[config.encoder],
    )


def init_variables(model: Transducer, rng: jax.Array, num_frames: int = 64, num_labels: int = 4):
    """Initial variables {'params', 'norm'} from dummy shapes (the biasing network's too, from a
    one-phrase context, when the config has one)."""
    c = model.config
    feats = jnp.zeros((1, num_frames, c.n_mels))
    pads = jnp.zeros((1, num_frames))
    labels = jnp.zeros((1, num_labels + 1), jnp.int32)
    context = None
    if c.bias_dim > 0:
        context = (jnp.zeros((1, 1, 1), jnp.int32), jnp.zeros((1, 1, 1), jnp.float32))
    return model.init({"params": rng, "dropout": rng}, feats, pads, labels, context=context)


def count_params(params) -> int:
    return int(sum(x.size for x in jax.tree_util.tree_leaves(params)))
