"""Model hyperparameters: one frozen dataclass, one instance per size.

`tiny` is the CPU demo, `small` the shipped on-device default, `large` the server-side teacher.
Variants come from `dataclasses.replace`; the config is written into every checkpoint.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass


@dataclass(frozen=True)
class ModelConfig:
    name: str = "small"
    n_mels: int = 80  # input feature dimension
    subsample_channels: int = 64  # channels of the two stride-2 conv layers (4x in time)
    d_model: int = 144  # encoder width
    num_layers: int = 6  # transformer encoder layers
    num_heads: int = 4  # attention heads
    ff_dim: int = 576  # feed-forward hidden width
    conv_kernel: int = 15  # depthwise causal conv in each layer (0 = none)
    chunk_size: int = 8  # attention chunk, in encoder frames (40 ms each): 320 ms
    left_chunks: int = 8  # chunks of left context each chunk sees (-1 = all)
    dropout: float = 0.1  # dropout rate in training
    predictor: str = "lstm"  # "lstm" or "stateless"
    pred_dim: int = 192  # predictor embedding / hidden width
    pred_layers: int = 1  # LSTM layers
    context_size: int = 2  # tokens of history for the stateless predictor
    joint_dim: int = 256  # joiner hidden width
    vocab_size: int = 128  # tokens incl. blank (id 0) and unk (id 1)
    blank_id: int = 0
    ctc_head: bool = False  # auxiliary CTC output on the encoder (a training aid, see TrainConfig)
    # learned attention biasing network (asr.models.biasing); off by default, so every config
    # and checkpoint written before it loads unchanged
    bias_dim: int = 0  # width of the phrase embeddings and attention (0 = no biasing network)
    bias_heads: int = 4  # attention heads (bias_dim must be a multiple)
    bias_encoder: str = "lstm"  # phrase encoder: "lstm" (BLSTM final states) or "transformer"
    # branching encoder (asr.models.branching): "transformer" is the plain encoder; "branching"
    # adds a cheap branch and a per-frame arbiter (the fields below matter only then)
    encoder: str = "transformer"
    branch_rank: int = 16  # rank of the cheap branch's key/value and front-end projections
    branch_ff: int = 32  # hidden width of the cheap branch's feed-forward blocks
    arbiter_dim: int = 32  # hidden units of the arbiter
    # cheap frames also attend: rank-`branch_rank` query and output projections over the same
    # keys and values (False: they skip attention and see no other frame)
    branch_attend: bool = False
    branch_budget_init: float = 0.5  # the arbiter's initial share of expensive frames

    def replace(self, **kw) -> ModelConfig:
        return dataclasses.replace(self, **kw)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> ModelConfig:
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - names
        if unknown:
            raise ValueError(f"unknown model config fields {sorted(unknown)}")
        return cls(**d)

    def without_biasing(self) -> ModelConfig:
        """This config with the biasing fields at their defaults (no biasing network): what a
        model fine-tuned with a biasing network added must match of its starting model."""
        defaults = {f.name: f.default for f in dataclasses.fields(self) if f.name in BIAS_FIELDS}
        return self.replace(**defaults)

    def without_branching(self) -> ModelConfig:
        """This config with the branching fields at their defaults (the plain encoder): what a
        plain model must match to become a branching model's expensive branch."""
        defaults = {f.name: f.default for f in dataclasses.fields(self) if f.name in BRANCH_FIELDS}
        return self.replace(**defaults)


BIAS_FIELDS = ("bias_dim", "bias_heads", "bias_encoder")
BRANCH_FIELDS = (
    "encoder",
    "branch_rank",
    "branch_ff",
    "arbiter_dim",
    "branch_attend",
    "branch_budget_init",
)
ENCODERS = ("transformer", "branching")
BIAS_ENCODERS = ("lstm", "transformer")


CONFIGS: dict[str, ModelConfig] = {
    "tiny": ModelConfig(
        name="tiny",
        subsample_channels=32,
        d_model=96,
        num_layers=2,
        num_heads=2,
        ff_dim=256,
        conv_kernel=7,
        predictor="stateless",
        pred_dim=96,
        joint_dim=128,
        vocab_size=64,
    ),
    "small": ModelConfig(name="small"),
    "large": ModelConfig(
        name="large",
        subsample_channels=128,
        d_model=384,
        num_layers=12,
        num_heads=6,
        ff_dim=1536,
        conv_kernel=31,
        left_chunks=-1,
        pred_dim=512,
        pred_layers=2,
        joint_dim=512,
        vocab_size=256,
    ),
}


def get_config(name: str) -> ModelConfig:
    if name not in CONFIGS:
        raise ValueError(f"unknown model size {name!r}; expected one of {sorted(CONFIGS)}")
    return CONFIGS[name]
