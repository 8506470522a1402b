"""Training recipes: one frozen dataclass, one instance per model size.

`asr train --config NAME` picks one; fields can be overridden with `--set key=value`, parsed
strictly by each field's declared type (`parse_value`) and checked against its range
(`TrainConfig.__post_init__`): a typo is an error that names the field, never a silent default.
Each field carries a one-line description and its range in its metadata (`_f`); `asr train
--help` lists them (`describe_fields`).

The recipe is written into the work folder next to the checkpoints. Resuming a work folder with
another recipe is refused (`resume_config`), except for the fields in `RESUMABLE_FIELDS`, which
change how a run is observed or fed, never which updates it makes.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
import re
import typing
from dataclasses import dataclass
from pathlib import Path

from asr.models.config import BIAS_ENCODERS, CONFIGS, ENCODERS, ModelConfig, get_config

INT_MAX = 2**31 - 1  # the step counter is int32 on the device; every integer field stays below


def _f(default, help: str, *, min=None, above=None, max=None, below=None):
    """A recipe field: its default, a one-line description, and its allowed range (`min`, `max`
    inclusive; `above`, `below` exclusive), checked in `TrainConfig.__post_init__`."""
    bounds = {"min": min, "above": above, "max": max, "below": below}
    return dataclasses.field(default=default, metadata={"help": help, **bounds})


@dataclass(frozen=True)
class TrainConfig:
    model: str = _f("small", "model size in asr.models.config.CONFIGS")
    vocab_size: int = _f(128, "sentencepiece vocabulary incl. blank and unk", min=3)
    seed: int = _f(0, "everything random derives from it (init, data order, augmentation)", min=0)
    steps: int = _f(20000, "optimizer steps in all", min=1)
    frames_per_batch: int = _f(24000, "feature frames (10 ms) per batch, padding included", min=1)
    max_batch: int = _f(64, "cap on utterances per batch", min=1)
    bucket_frames: tuple[int, ...] = _f(
        (64, 128, 192, 256, 384, 512, 768, 1024, 1536),
        "padded lengths of the length buckets, increasing",
        min=1,
    )
    peak_lr: float = _f(1.5e-3, "AdamW peak learning rate", min=0.0)
    warmup_steps: int = _f(
        1000, "linear warm-up, then cosine decay to end_lr (>= steps: warm-up only)", min=0
    )
    end_lr: float = _f(3e-5, "learning rate at the last step", min=0.0)
    weight_decay: float = _f(1e-3, "AdamW decoupled weight decay", min=0.0)
    clip_norm: float = _f(1.0, "global gradient-norm clipping", above=0.0)
    ctc_weight: float = _f(0.0, "weight of an auxiliary CTC loss on the encoder (0: none)", min=0.0)
    # SpecAugment (Park et al. 2019)
    spec_freq_masks: int = _f(2, "SpecAugment: frequency masks per utterance", min=0)
    spec_freq_width: int = _f(
        15, "SpecAugment: mel bins per frequency mask, at most", min=0, max=80
    )
    spec_time_masks: int = _f(4, "SpecAugment: time masks per utterance", min=0)
    spec_time_ratio: float = _f(
        0.04, "SpecAugment: share of the frames per time mask, at most", min=0.0, max=1.0
    )
    spec_start_step: int = _f(500, "SpecAugment off until this step (alignment first)", min=0)
    # the training stream
    augment_prob: float = _f(
        0.8, "share of utterances that get waveform augmentation", min=0.0, max=1.0
    )
    narrowband_prob: float = _f(
        0.2, "share simulated as 8 kHz (telephone / FSDD-like) audio", min=0.0, max=1.0
    )
    channel_prob: float = _f(
        0.0,
        "share passed through a random channel: microphone response, clipping, lossy codec "
        "(Opus, Vorbis, MP3, GSM, G.711; train.augment.random_channel)",
        min=0.0,
        max=1.0,
    )
    real_share: float = _f(
        0.35, "minimum share of real speech in the training stream", min=0.0, below=1.0
    )
    real_phrases: float = _f(0.0, "composite real utterances (2-6 clips) per real clip", min=0.0)
    max_seconds: float = _f(16.0, "longer utterances are skipped (counted in the log)", above=0.0)
    noise_pad_prob: float = _f(
        0.0, "share of utterances given background noise before/after the speech", min=0.0, max=1.0
    )
    noise_pad_max_s: float = _f(
        2.0, "seconds of noise padding at the start and at the end, at most", min=0.0, max=30.0
    )
    noise_only: float = _f(
        0.0, "pure-noise utterances with no words, per speech utterance", min=0.0, max=10.0
    )
    # observing and feeding the run (RESUMABLE_FIELDS: may change when resuming)
    eval_every: int = _f(1000, "steps between dev-set WER evaluations", min=1)
    eval_utterances: int = _f(200, "dev utterances decoded at each evaluation", min=1)
    ckpt_every: int = _f(250, "steps between checkpoints", min=1)
    log_every: int = _f(25, "steps between metric lines", min=1)
    data_threads: int = _f(2, "grain reader threads (in the training process)", min=0)
    data_workers: int = _f(0, "grain worker processes (0: threads only); use on a GPU", min=0)
    precompile: bool = _f(False, "compile the step for every bucket up front, in threads")
    init_from: str = _f("", "start from this model's weights, norm and tokenizer ('': none)")
    # teacher-student distillation (train.distill; Panchapagesan et al. 2021)
    teacher: str = _f(
        "",
        "distil from this model (path or 'default'; '': none); it must share the student's "
        "tokenizer and frame rate, and the student takes its tokenizer when not fine-tuning",
    )
    distill_weight: float = _f(
        0.5, "with a teacher: loss = transducer NLL + this x KL of the collapsed lattices", min=0.0
    )
    distill_temperature: float = _f(
        1.0, "with a teacher: temperature of the collapsed distributions", above=0.0
    )
    teacher_clean: bool = _f(
        False,
        "with a teacher: it hears each utterance before the room and the channel (reverberation, "
        "noise, band limit, microphone, codec), the student after them",
    )
    # learned attention biasing (asr.models.biasing; Chang et al. 2021), trained jointly; the
    # lists are drawn per utterance from the names in the training rows' `context` fields
    bias_dim: int = _f(
        0,
        "width of the attention biasing network (0: none); with init_from a model without one, "
        "it is added (zero-initialized combiner) and the rest starts from that model",
        min=0,
    )
    bias_heads: int = _f(4, "attention heads of the biasing network (divides bias_dim)", min=1)
    bias_encoder: str = _f(
        "lstm", "phrase encoder of the biasing network: lstm (BLSTM) or transformer"
    )
    context_phrases: int = _f(
        32, "with biasing: phrase slots per training utterance (list sizes 0 to this)", min=1,
        max=2048,
    )  # fmt: skip
    context_spoken_prob: float = _f(
        0.8, "with biasing: chance each spoken name is put in its utterance's list", min=0.0,
        max=1.0,
    )  # fmt: skip
    context_none_prob: float = _f(
        0.1, "with biasing: share of batches with no list at all", min=0.0, max=1.0
    )

    # compression-aware training (train.regularizers; Nguyen et al. 2020, Zhu & Gupta 2017)
    quant_method: str = _f(
        "none",
        "weight quantization in training: none, acos (absolute-cosine regularizer), mr-acos "
        "(non-uniform levels), ste (straight-through fake quantization, the baseline)",
    )
    quant_bits: int = _f(4, "with quant_method: weight bits", min=2, max=8)
    quant_small_bits: int = _f(
        0,
        "with quant_method acos or ste: weight bits of the small layers (first convolution, "
        "depthwise convolutions, vocabulary outputs: asr.models.quant.SMALL_KERNELS; 0: quant_bits)",
        min=0,
        max=8,
    )
    quant_act_bits: int = _f(
        8, "with quant_method: activation bits at matrix-product inputs (0: float)", min=0, max=16
    )
    quant_weight: float = _f(
        100.0, "acos/mr-acos: weight of the regularizer at the end of its ramp", min=0.0
    )
    quant_start: float = _f(
        0.0, "acos/mr-acos: ramp starts at this share of the steps", min=0.0, max=1.0
    )
    quant_end: float = _f(
        0.5, "acos/mr-acos: ramp reaches full weight at this share", min=0.0, max=1.0
    )
    sparsity: float = _f(
        0.0, "share of kernel weights that are zero at the end (0: none)", min=0.0, below=1.0
    )
    sparsity_method: str = _f(
        "penalty", "penalty (gradual, decoupled shrink) or hard (magnitude pruning, baseline)"
    )
    sparsity_scope: str = _f("layer", "the share holds per layer or global (over all layers)")
    sparsity_start: float = _f(
        0.0, "sparsification starts at this share of the steps", min=0.0, max=1.0
    )
    sparsity_end: float = _f(
        1.0, "target share reached at this share of the steps", min=0.0, max=1.0
    )
    sparsity_every: int = _f(10, "steps between mask updates (and every step at the end)", min=1)
    sparsity_embeddings: bool = _f(False, "also sparsify embedding tables")
    sparsity_exclude: str = _f(
        "",
        "regex over layer names kept dense (e.g. 'small': the layers in SMALL_LAYERS); the share "
        "still counts all kernels, so the others give up more",
    )

    # branching encoder (asr.models.branching; Macoskey et al. 2021): a cheap branch and an
    # arbiter choosing per frame, trained jointly (straight-through Gumbel-sigmoid choices)
    encoder: str = _f(
        "transformer",
        "encoder: transformer (plain) or branching; with init_from a plain model, it becomes "
        "the expensive branch and the cheap branch is fitted to it",
    )
    encoder_layers: int = _f(
        0,
        "encoder layers (0: the model size's); with init_from a deeper model, its first "
        "layers are kept (a static shallower baseline)",
        min=0,
    )
    branch_budget: float = _f(
        0.5, "branching: target share of frames through the expensive branch", above=0.0,
        below=1.0,
    )  # fmt: skip
    branch_weight: float = _f(
        50.0, "branching: loss += this x (share of expensive frames - budget)^2", min=0.0
    )
    branch_imitation: float = _f(
        0.0,
        "branching: loss += this x the cheap branch's relative squared error against the "
        "expensive one, per layer from the same input (teaches the cheap branch on every frame)",
        min=0.0,
    )
    branch_noise: float = _f(
        1.0, "branching: scale of the choices' logistic noise at the first step", min=0.0
    )
    branch_noise_end: float = _f(
        0.0,
        "branching: ... at the last step, linearly (0: training ends on the inference choices)",
        min=0.0,
    )
    branch_tau: float = _f(2.0, "branching: Gumbel temperature at the first step", above=0.0)
    branch_tau_end: float = _f(
        0.3, "branching: Gumbel temperature at the last step (geometric anneal)", above=0.0
    )
    branch_rank: int = _f(16, "branching: rank of the cheap projections", min=1)
    branch_ff: int = _f(32, "branching: hidden width of the cheap feed-forward blocks", min=1)
    arbiter_dim: int = _f(32, "branching: hidden units of the arbiter", min=1)
    branch_attend: bool = _f(
        False,
        "branching: cheap frames also attend (rank-branch_rank query and output projections "
        "over the same keys and values)",
    )
    freeze: str = _f(
        "",
        "regex over parameter paths (e.g. encoder/layer_0/Dense_0/kernel) left as they are: no "
        "update, no weight decay; 'expensive': all but the cheap branch and the arbiter of a "
        "branching encoder (so all-expensive stays the initial model)",
    )

    def __post_init__(self):
        problems = []
        for f in dataclasses.fields(self):
            try:
                value = _check_field(f, getattr(self, f.name))
            except ValueError as e:
                problems.append(str(e))
            else:
                object.__setattr__(self, f.name, value)  # e.g. an int given for a float
        if not problems:
            if self.model not in CONFIGS:
                problems.append(f"model: expected one of {sorted(CONFIGS)}, got {self.model!r}")
            b = self.bucket_frames
            if any(x >= y for x, y in zip(b, b[1:], strict=False)):
                problems.append(f"bucket_frames: expected increasing lengths, got {_fmt(b)}")
            if self.bias_encoder not in BIAS_ENCODERS:
                expected = list(BIAS_ENCODERS)
                problems.append(
                    f"bias_encoder: expected one of {expected}, got {self.bias_encoder!r}"
                )
            for name, allowed in (
                ("encoder", ENCODERS),
                ("quant_method", ("none", "acos", "mr-acos", "ste")),
                ("sparsity_method", ("penalty", "hard")),
                ("sparsity_scope", ("layer", "global")),
            ):
                if getattr(self, name) not in allowed:
                    problems.append(
                        f"{name}: expected one of {list(allowed)}, got {getattr(self, name)!r}"
                    )
            if self.quant_end < self.quant_start:
                problems.append("quant_end: expected >= quant_start")
            if self.quant_small_bits == 1:
                problems.append("quant_small_bits: expected 0 (as quant_bits) or 2..8, got 1")
            if self.quant_small_bits and self.quant_method == "mr-acos":
                problems.append("quant_small_bits: mr-acos fits its own levels; use acos or ste")
            if self.sparsity_end < self.sparsity_start:
                problems.append("sparsity_end: expected >= sparsity_start")
            if self.sparsity_exclude and self.sparsity_exclude != "small":
                try:
                    re.compile(self.sparsity_exclude)
                except re.error as e:
                    problems.append(f"sparsity_exclude: not a regular expression ({e})")
            if self.freeze and self.freeze != "expensive":
                try:
                    re.compile(self.freeze)
                except re.error as e:
                    problems.append(f"freeze: not a regular expression ({e})")
            if self.bias_dim % self.bias_heads:
                problems.append(
                    f"bias_dim: expected a multiple of bias_heads ({self.bias_heads}), "
                    f"got {self.bias_dim}"
                )
        if problems:
            raise ValueError("invalid train config: " + "; ".join(problems))

    def model_config(self, vocab_size: int | None = None) -> ModelConfig:
        """The model this recipe trains, with the tokenizer's vocabulary size."""
        base = get_config(self.model)
        branch = {}
        if self.encoder == "branching":
            branch = {
                "branch_rank": self.branch_rank,
                "branch_ff": self.branch_ff,
                "arbiter_dim": self.arbiter_dim,
                "branch_attend": self.branch_attend,
                "branch_budget_init": self.branch_budget,
            }
        return base.replace(
            vocab_size=vocab_size or self.vocab_size,
            ctc_head=self.ctc_weight > 0,
            bias_dim=self.bias_dim,
            bias_heads=self.bias_heads,
            bias_encoder=self.bias_encoder,
            encoder=self.encoder,
            num_layers=self.encoder_layers or base.num_layers,
            **branch,
        )

    def replace(self, **kw) -> TrainConfig:
        return dataclasses.replace(self, **kw)

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["bucket_frames"] = list(self.bucket_frames)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> TrainConfig:
        """The inverse of `to_dict` (a config.json's "train"); missing fields get defaults."""
        if not isinstance(d, dict):
            raise ValueError(f"train config: expected a JSON object, got {type(d).__name__}")
        unknown = set(d) - set(_FIELDS)
        if unknown:
            raise ValueError(f"unknown train config fields {sorted(unknown)}; known: {_FIELDS}")
        return cls(**d)

    def override(self, assignments: list[str]) -> TrainConfig:
        """Applies `key=value` strings (`asr train --set`), each value parsed strictly by the
        field's type (`parse_value`); raises ValueError naming the field on any problem."""
        kw = {}
        for a in assignments:
            if "=" not in a:
                raise ValueError(f"--set expects key=value, got {a!r}")
            k, v = (s.strip() for s in a.split("=", 1))
            if k not in _FIELDS:
                raise ValueError(f"--set: unknown train config field {k!r}; known: {_FIELDS}")
            kw[k] = parse_value(k, v)
        return self.replace(**kw)


_FIELDS = [f.name for f in dataclasses.fields(TrainConfig)]
_TYPES = typing.get_type_hints(TrainConfig)
_EXPECTED = {
    bool: "true or false",
    int: "an integer",
    float: "a number",
    str: "text",
    tuple[int, ...]: "comma-separated integers",
}
_TRUE, _FALSE = ("true", "yes", "1"), ("false", "no", "0")
_INT = re.compile(r"[+-]?[0-9]+")
_NUMBER = re.compile(r"[+-]?([0-9]+\.?[0-9]*|\.[0-9]+)(e[+-]?[0-9]+)?", re.IGNORECASE)


def parse_value(name: str, text: str):
    """The value of field `name` written as `text` on the command line: bool true/false/yes/no/
    1/0 (any case); int a decimal integer (or an integral number such as 1e4); float a finite
    number; str as given; tuple of ints comma-separated. Raises ValueError saying the field,
    the expected form and the text given."""
    kind = _TYPES[name]
    t = text.strip()
    shown = repr(text if len(text) <= 60 else text[:60] + "...")
    err = ValueError(f"{name}: expected {_EXPECTED[kind]}, got {shown}")
    if kind is bool:
        if t.lower() in _TRUE + _FALSE:
            return t.lower() in _TRUE
        raise err
    if kind is int:
        return _parse_int(t, err)
    if kind is float:
        if not _NUMBER.fullmatch(t) or not math.isfinite(float(t)):
            raise err
        return float(t)
    if kind is str:
        return t
    return tuple(_parse_int(x.strip(), err) for x in t.split(","))


def _parse_int(t: str, err: ValueError) -> int:
    if len(t) > 40:  # far beyond any field's range (and Python's limit on digits to convert)
        raise err
    if _INT.fullmatch(t):
        return int(t)
    if _NUMBER.fullmatch(t):  # 1e4, 2000.0: integral numbers are integers
        x = float(t)
        if math.isfinite(x) and x.is_integer():
            return int(x)
    raise err


def _check_field(f: dataclasses.Field, v):
    """`v` as field `f`'s type (ints accepted for floats, lists for tuples), in its range."""
    kind = _TYPES[f.name]
    integral = isinstance(v, numbers.Integral) and not isinstance(v, bool)
    err = ValueError(f"{f.name}: expected {_EXPECTED[kind]}{_range(f)}, got {v!r}")
    if kind is bool:
        if not isinstance(v, bool):
            raise err
        return v
    if kind is str:
        if not isinstance(v, str):
            raise err
        return v
    if kind is int:
        if not integral:
            raise err
        items = [int(v)]
    elif kind is float:
        if not (integral or isinstance(v, numbers.Real)) or isinstance(v, bool):
            raise err
        items = [float(v)]
        if not math.isfinite(items[0]):
            raise err
    else:  # tuple[int, ...]
        if not isinstance(v, tuple | list) or not v:
            raise err
        if not all(isinstance(x, numbers.Integral) and not isinstance(x, bool) for x in v):
            raise err
        items = [int(x) for x in v]
    m = f.metadata
    for x in items:
        if (
            (m["min"] is not None and x < m["min"])
            or (m["above"] is not None and x <= m["above"])
            or (m["max"] is not None and x > m["max"])
            or (m["below"] is not None and x >= m["below"])
            or (kind is not float and abs(x) > INT_MAX)
        ):
            raise err
    return tuple(items) if kind not in (int, float) else items[0]


def _range(f: dataclasses.Field, full: bool = True) -> str:
    """' in [1, 2147483647]', ' >= 0', ...: field `f`'s allowed range (`full`: with the integer
    limit)."""
    m = f.metadata
    lo = ("[", m["min"]) if m["min"] is not None else ("(", m["above"])
    hi = ("]", m["max"]) if m["max"] is not None else (")", m["below"])
    if full and hi[1] is None and _TYPES[f.name] in (int, tuple[int, ...]):
        hi = ("]", INT_MAX)
    if lo[1] is not None and hi[1] is not None:
        return f" in {lo[0]}{_fmt(lo[1])}, {_fmt(hi[1])}{hi[0]}"
    if lo[1] is not None:
        return f" {'>=' if lo[0] == '[' else '>'} {_fmt(lo[1])}"
    if hi[1] is not None:
        return f" {'<=' if hi[0] == ']' else '<'} {_fmt(hi[1])}"
    return ""


def _fmt(v) -> str:
    """A value as `--set` writes it."""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, tuple | list):
        return ",".join(str(x) for x in v)
    return str(v) if not isinstance(v, str) else (v or "''")


# Fields that may differ when a work folder is resumed; the new values are applied and
# recorded. They change when the run is observed (eval_every, eval_utterances: which dev
# utterances are decoded, log_every, ckpt_every), how its batches are produced (data_threads,
# data_workers: the same batches, data_workers up to float rounding of the features) or when
# its step is compiled (precompile), never the batches or the updates. Everything else changes
# the run itself: `steps` sets the learning-rate schedule (cosine decay to end_lr at the last
# step), so a longer run is a new run; start it in a new work folder with
# init_from=<this work folder>. `init_from` matters only at step 0 and may be spelled
# differently (a relative or an absolute path to the same folder), but not name another model.
RESUMABLE_FIELDS = (
    "eval_every",
    "eval_utterances",
    "ckpt_every",
    "log_every",
    "data_threads",
    "data_workers",
    "precompile",
)


def resume_config(saved: TrainConfig, given: TrainConfig) -> tuple[TrainConfig, dict]:
    """The recipe a resumed run continues with: `saved` (from the work folder) with the
    `RESUMABLE_FIELDS` of `given`. Returns it and {field: [saved value, given value]} of the
    changes applied. Raises ValueError listing every other field that differs."""
    refused = []
    for name in _FIELDS:
        a, b = getattr(saved, name), getattr(given, name)
        if a == b or name in RESUMABLE_FIELDS:
            continue
        if name == "init_from" and a and b and same_model_spec(a, b):
            continue
        refused.append(f"  {name}: saved {_fmt(a)}, given {_fmt(b)}")
    if refused:
        raise ValueError(
            "this work folder was started with another recipe; resuming would not continue "
            "that run. Fields that differ:\n"
            + "\n".join(refused)
            + "\nRun again with the saved settings (config.json in the work folder), or train "
            "in a new work folder (to continue training with another schedule, start one with "
            "--set init_from=<this work folder>). Fields that may change on resume: "
            + ", ".join(RESUMABLE_FIELDS)
        )
    changes = {
        n: [getattr(saved, n), getattr(given, n)]
        for n in RESUMABLE_FIELDS
        if getattr(saved, n) != getattr(given, n)
    }
    return saved.replace(**{n: v[1] for n, v in changes.items()}), changes


def canonical_model_spec(spec: str) -> str:
    """`init_from` as recorded in a work folder: '' and 'default' as they are, a path
    made absolute (so that resuming from another folder still compares equal)."""
    if spec in ("", "default"):
        return spec
    return str(Path(spec).absolute())


def same_model_spec(a: str, b: str) -> bool:
    """Whether two `init_from` values name the same model (the same folder, however spelled)."""
    if a == b:
        return True
    if "default" in (a, b) or "" in (a, b):
        return False
    return Path(a).resolve() == Path(b).resolve()


def describe_fields() -> str:
    """The `--set` keys for `asr train --help`: name, type and range, description, and the
    value in each recipe."""
    lines = [f"keys for --set KEY=VALUE (value in the recipes {' / '.join(RECIPES)}):"]
    for f in dataclasses.fields(TrainConfig):
        values = [_fmt(getattr(r, f.name)) for r in RECIPES.values()]
        shown = values[0] if len(set(values)) == 1 else " / ".join(values)
        kind = {bool: "bool", int: "int", float: "float", str: "str"}.get(_TYPES[f.name], "ints")
        lines.append(
            f"  {f.name:<17} {kind + _range(f, full=False):<21} {f.metadata['help']} [{shown}]"
        )
    return "\n".join(lines)


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
