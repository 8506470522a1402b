"""Training recipes: one frozen dataclass, one instance per model size.

`asr train --config NAME` picks one; fields can be overridden with `--set key=value`. The
recipe is written into the work folder next to the checkpoints, so a run resumes with the
settings it started with.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from asr.models.config import ModelConfig, get_config


@dataclass(frozen=True)
class TrainConfig:
    model: str = "small"  # model size in asr.models.config.CONFIGS
    vocab_size: int = 128  # sentencepiece vocabulary incl. blank and unk
    seed: int = 0  # everything random derives from it (init, data order, augmentation)
    steps: int = 20000  # optimizer steps in all
    frames_per_batch: int = 24000  # feature frames (10 ms) per batch, padding included
    max_batch: int = 64  # cap on utterances per batch
    bucket_frames: tuple[int, ...] = (64, 128, 192, 256, 384, 512, 768, 1024, 1536)  # padded
    peak_lr: float = 1.5e-3  # AdamW peak learning rate
    warmup_steps: int = 1000  # linear warm-up, then cosine decay to end_lr
    end_lr: float = 3e-5
    weight_decay: float = 1e-3
    clip_norm: float = 1.0  # global gradient-norm clipping
    ctc_weight: float = 0.0  # weight of an auxiliary CTC loss on the encoder (0 = none)
    spec_freq_masks: int = 2  # SpecAugment (Park et al. 2019): masks of up to F mel bins
    spec_freq_width: int = 15
    spec_time_masks: int = 4  # masks of up to `spec_time_ratio` of the frames each
    spec_time_ratio: float = 0.04
    spec_start_step: int = 500  # SpecAugment off until the model has started to align
    augment_prob: float = 0.8  # share of utterances that get waveform augmentation
    narrowband_prob: float = 0.2  # share simulated as 8 kHz (telephone / FSDD-like) audio
    real_share: float = 0.35  # minimum share of real speech in the training stream
    real_phrases: float = 0.0  # composite real utterances (2-6 clips joined) per real clip
    eval_every: int = 1000  # steps between dev-set WER evaluations
    eval_utterances: int = 200  # dev utterances decoded at each evaluation
    ckpt_every: int = 250  # steps between checkpoints
    log_every: int = 25  # steps between metric lines
    data_threads: int = 2  # grain reader threads (in the training process)
    data_workers: int = 0  # grain worker processes (0: threads only); use them on a GPU
    precompile: bool = False  # compile the step for every bucket up front, in parallel threads
    init_from: str = ""  # start from this model's weights, norm and tokenizer (fine-tuning)
    max_seconds: float = 16.0  # longer utterances are skipped (with a count in the log)

    def model_config(self, vocab_size: int | None = None) -> ModelConfig:
        """The model this recipe trains, with the tokenizer's vocabulary size."""
        return get_config(self.model).replace(
            vocab_size=vocab_size or self.vocab_size, ctc_head=self.ctc_weight > 0
        )

    def replace(self, **kw) -> TrainConfig:
        return dataclasses.replace(self, **kw)

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["bucket_frames"] = list(self.bucket_frames)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> TrainConfig:
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - names
        if unknown:
            raise ValueError(f"unknown train config fields {sorted(unknown)}")
        d = dict(d)
        if "bucket_frames" in d:
            d["bucket_frames"] = tuple(d["bucket_frames"])
        return cls(**d)

    def override(self, assignments: list[str]) -> TrainConfig:
        """Applies `key=value` strings, parsing values with the field's type."""
        fields = {f.name: f for f in dataclasses.fields(self)}
        kw = {}
        for a in assignments:
            if "=" not in a:
                raise ValueError(f"--set expects key=value, got {a!r}")
            k, v = a.split("=", 1)
            if k not in fields:
                raise ValueError(f"unknown train config field {k!r}; known: {sorted(fields)}")
            cur = getattr(self, k)
            if isinstance(cur, bool):
                kw[k] = v.lower() in ("1", "true", "yes")
            elif isinstance(cur, tuple):
                kw[k] = tuple(int(x) for x in v.split(","))
            else:
                kw[k] = type(cur)(v)
        return self.replace(**kw)


RECIPES: dict[str, TrainConfig] = {
    # The CPU demo: a few hundred steps of the tiny model, minutes on 2 cores.
    "tiny": TrainConfig(
        model="tiny",
        vocab_size=64,
        steps=300,
        frames_per_batch=6000,
        max_batch=24,
        peak_lr=2e-3,
        warmup_steps=60,
        spec_start_step=100,
        eval_every=100,
        eval_utterances=40,
        ckpt_every=50,
        log_every=10,
    ),
    # The shipped on-device default, sized for the 2-core CPU it was trained on (about 65 min;
    # README "Training the shipped model"). On a GPU raise steps and frames_per_batch.
    "small": TrainConfig(
        model="small",
        steps=4000,
        frames_per_batch=10000,
        max_batch=48,
        peak_lr=2e-3,
        warmup_steps=300,
        spec_start_step=400,
        ctc_weight=0.3,  # without it the encoder had not started to align by step 900
        eval_every=300,
        ckpt_every=100,
    ),
    # The server-side teacher.
    "large": TrainConfig(
        model="large", vocab_size=256, peak_lr=8e-4, warmup_steps=3000, steps=60000
    ),
}


def get_recipe(name: str) -> TrainConfig:
    if name not in RECIPES:
        raise ValueError(f"unknown training recipe {name!r}; expected one of {sorted(RECIPES)}")
    return RECIPES[name]
