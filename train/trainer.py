"""The trainer: plain functions over an explicit state; one jitted pure train step.

  state = TrainState(step, params, opt_state, norm)
  train_step(state, batch, rng) -> (state, metrics)     jitted once per batch shape, donated

Killing training at any moment and running the same command again resumes from the newest
orbax checkpoint: the batch of each step is a function of (seed, step) (`train.data`), the
dropout and SpecAugment keys are `fold_in(seed key, step)`, and metric lines past the
checkpoint are dropped on resume, so the resumed run is the run that would have happened
(tests/test_kill_resume.py kills it between checkpoints and while one is written). A checkpoint
cut short by the kill is a temporary folder that orbax never renamed into place: ignored, then
removed. Resuming with another recipe is refused (`train.configs.resume_config`), except for
the fields that only change how the run is observed or fed; those are applied and recorded.

With a biasing network in the recipe (`bias_dim` > 0), batches carry each utterance's list
(`context_tokens`, `context_paddings`; `train.data.ContextSampler`) and the encoder attends over
it. Fine-tuning (`init_from`) a model without one adds it: the starting model's parameters are
copied, the biasing network's are fresh, and its zero-initialized combiner makes the model at
step 0 the starting model (`asr.models.biasing`).

Rows are checked before anything is written (`train.data.check_training_rows`). The dev WER
logged while training is the one `asr eval` reports (`asr.recognizer.evaluate_manifest`, beam
search), from a decode function compiled once per model and batch shape.

References: Loshchilov & Hutter 2019 (AdamW); Park et al. 2019 (SpecAugment);
Graves 2012 (transducer loss, `asr.lattice`).
"""

from __future__ import annotations

import functools
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
from tqdm import tqdm

from asr.features import log_mel
from asr.lattice import rnnt_loss
from asr.model_io import load_model, save_model_folder
from asr.models.branching import init_cheap_branch
from asr.models.config import ModelConfig
from asr.models.quant import (
    FLOAT,
    QuantPolicy,
    is_kernel,
    qmax,
    quantize_params,
    snap_to_levels,
    zero_fraction,
)
from asr.models.transducer import Transducer, build_model, count_params, init_variables
from asr.text import normalize_text
from asr.tokenizer import Tokenizer
from train.configs import TrainConfig, canonical_model_spec, resume_config
from train.data import check_training_rows, training_dataset
from train.distill import collapsed_log_probs, distill_loss, rnnt_loss_from_collapsed
from train.regularizers import (
    acos_penalty,
    eligible_mask,
    find_sparsify_state,
    fit_levels,
    freeze_mask,
    mr_acos_penalty,
    ramp,
    sparsify,
    sparsity_exclude_regex,
    sparsity_penalty,
    sparsity_target,
    zero_shares,
)
from train.specaugment import spec_augment


@flax.struct.dataclass
class TrainState:
    step: jax.Array  # int32[] optimizer steps taken
    params: Any  # model parameters
    opt_state: Any  # optax state
    norm: Any  # {'mean': f32[80], 'istd': f32[80]} feature normalization (not trained)
    # state of the loss terms that is neither a parameter nor the optimizer's: {} for plain
    # recipes (their checkpoints are what they were), {'levels': f32[K, L]} with mr-acos
    extras: Any = flax.struct.field(default_factory=dict)


def make_optimizer(cfg: TrainConfig) -> optax.GradientTransformation:
    """The recipe's chain of optax transforms: global-norm clipping; AdamW with linear warm-up
    and cosine decay, no decay on biases and normalization scales; then, with `sparsity` > 0,
    gradual sparsification (`train.regularizers.sparsify`). With `freeze`, the frozen
    parameters' gradients are zeroed before clipping and their updates after everything (no
    weight decay either). A recipe without sparsity or freeze has the chain (and the optimizer
    state) it always had."""
    sched = make_lr(cfg)
    mask = lambda p: jax.tree_util.tree_map(lambda x: x.ndim > 1, p)  # noqa: E731
    chain = [
        optax.clip_by_global_norm(cfg.clip_norm),
        optax.adamw(sched, b1=0.9, b2=0.98, weight_decay=cfg.weight_decay, mask=mask),
    ]
    if cfg.sparsity > 0:
        start, end = sparsity_steps(cfg)
        chain.append(
            sparsify(
                cfg.sparsity,
                start,
                end,
                every=cfg.sparsity_every,
                method=cfg.sparsity_method,
                scope=cfg.sparsity_scope,
                embeddings=cfg.sparsity_embeddings,
                exclude=sparsity_exclude_regex(cfg.sparsity_exclude),
            )
        )
    if cfg.freeze:
        frozen = lambda p: freeze_mask(p, cfg.freeze)  # noqa: E731
        chain = [
            optax.masked(optax.set_to_zero(), frozen),
            *chain,
            optax.masked(optax.set_to_zero(), frozen),
        ]
    return optax.chain(*chain)


def sparsity_steps(cfg: TrainConfig) -> tuple[int, int]:
    """(first, last) step of the sparsity schedule."""
    return round(cfg.sparsity_start * cfg.steps), round(cfg.sparsity_end * cfg.steps)


def quant_steps(cfg: TrainConfig) -> tuple[int, int]:
    """(start, end) step of the regularizer's ramp."""
    return round(cfg.quant_start * cfg.steps), round(cfg.quant_end * cfg.steps)


def training_policy(cfg: TrainConfig) -> QuantPolicy:
    """How the trained model's products run in training: fake-quantized (STE) with
    quant_method ste, float otherwise (the regularizers act through the loss)."""
    if cfg.quant_method == "ste":
        return QuantPolicy(cfg.quant_bits, cfg.quant_act_bits, small_bits(cfg))
    return FLOAT


def deployed_policy(cfg: TrainConfig) -> QuantPolicy:
    """How the trained model runs once compressed: `quant_bits` weights (uniform levels; the
    non-uniform ones of mr-acos are put in place by `compress_params`) and `quant_act_bits`
    activations; float without quant_method."""
    if cfg.quant_method == "none":
        return FLOAT
    if cfg.quant_method == "mr-acos":
        return QuantPolicy(0, cfg.quant_act_bits)
    return QuantPolicy(cfg.quant_bits, cfg.quant_act_bits, small_bits(cfg))


def small_bits(cfg: TrainConfig) -> int:
    """The small layers' weight bits of the recipe's policy (0: as the others)."""
    b = cfg.quant_small_bits
    return b if b and b != cfg.quant_bits else 0


def compress_params(cfg: TrainConfig, params, extras):
    """The parameters as deployed: weights on their levels (uniform, or mr-acos's), the
    sparsifier's zeros exact already. Float recipes: unchanged."""
    if cfg.quant_method == "mr-acos":
        return snap_to_levels(params, extras["levels"])
    if cfg.quant_method in ("acos", "ste"):
        return quantize_params(params, cfg.quant_bits, small_bits(cfg))
    return params


def initial_extras(cfg: TrainConfig, params) -> dict:
    """The extras of a run starting from `params`: mr-acos's levels fitted to them."""
    if cfg.quant_method == "mr-acos":
        return {"levels": jnp.asarray(fit_levels(jax.device_get(params), cfg.quant_bits))}
    return {}


def regularizer_terms(cfg: TrainConfig, params, step, extras) -> tuple[jax.Array, dict]:
    """(weighted sum of the compression loss terms, their metrics) at `step`: the
    absolute-cosine regularizer (uniform or multi-regional) with its ramp."""
    if cfg.quant_method not in ("acos", "mr-acos"):
        return jnp.float32(0.0), {}
    if cfg.quant_method == "acos":
        reg, near = acos_penalty(params, cfg.quant_bits, small_bits(cfg))
    else:
        reg, near = mr_acos_penalty(params, extras["levels"])
    weight = cfg.quant_weight * ramp(step, *quant_steps(cfg))
    return weight * reg, {"quant_reg": reg, "quant_near": near, "quant_weight": weight}


def ctc_feasible(enc_paddings: jax.Array, labels: jax.Array, label_paddings: jax.Array):
    """bool[B]: CTC can align the labels to the frames: it needs one frame per label plus one
    (a blank) between every two equal adjacent labels ("off" as o-f-f needs 4 frames, not 3).
    An infeasible utterance has infinite CTC loss (optax returns a huge finite number)."""
    n_frames = jnp.sum(1.0 - enc_paddings, axis=1)
    valid = label_paddings < 0.5  # -> [B, U]
    repeats = (labels[:, 1:] == labels[:, :-1]) & valid[:, 1:] & valid[:, :-1]
    needed = jnp.sum(valid, axis=1) + jnp.sum(repeats, axis=1)
    return n_frames >= needed


def blank_prefixed(labels: jax.Array, blank_id: int) -> jax.Array:
    """int32[B, U] labels -> int32[B, U+1] the predictor's input: blank, then the labels."""
    b = labels.shape[0]
    return jnp.concatenate([jnp.full((b, 1), blank_id, jnp.int32), labels], axis=1)


def batch_context(batch) -> tuple[jax.Array, jax.Array] | None:
    """The batch's biasing lists (`context_tokens` int32[B, P, Lp], `context_paddings`
    f32[B, P, Lp]) as `Transducer.encode` takes them, or None when it has none."""
    if "context_tokens" not in batch:
        return None
    return batch["context_tokens"], batch["context_paddings"]


def teacher_collapsed(teacher: Transducer, tvars, batch) -> jax.Array:
    """f32[B, T, U+1, 3] the teacher's collapsed (label, blank, rest) log-probabilities over
    the lattice of the batch's labels (`train.distill.collapsed_log_probs`), inference mode, no
    gradient. A teacher with a biasing network sees the batch's lists; one without, none. It
    hears the batch's `teacher_feats` where there are (`teacher_clean`), else its `feats`."""
    context = batch_context(batch) if teacher.config.bias_dim > 0 else None
    enc, enc_pad = teacher.apply(
        tvars,
        batch.get("teacher_feats", batch["feats"]),  # `teacher_clean`: before the channel
        batch["feat_paddings"],
        False,
        context,
        method=Transducer.encode,
    )
    history = blank_prefixed(batch["labels"], teacher.config.blank_id)
    pred = teacher.apply(tvars, history, False, method=Transducer.predict)
    out = collapsed_log_probs(
        lambda e, p: teacher.apply(tvars, e, p, method=Transducer.joint),
        enc,
        enc_pad,
        pred,
        batch["labels"],
        batch["label_paddings"],
        blank_id=teacher.config.blank_id,
    )
    return jax.lax.stop_gradient(out)


def loss_fn(
    params,
    norm,
    model: Transducer,
    batch,
    rng,
    train: bool,
    ctc_weight: float = 0.0,
    teacher_lattice: jax.Array | None = None,
    distill_weight: float = 0.0,
    distill_temperature: float = 1.0,
    branch_temperature=1.0,
    branch_budget: float = 0.5,
    branch_weight: float = 0.0,
    branch_imitation: float = 0.0,
    branch_noise=1.0,
):
    """Mean per-utterance transducer loss over utterances that have frames, plus `ctc_weight`
    times the mean auxiliary CTC loss when the model has a CTC head, plus `distill_weight` times
    the mean KL divergence of the student's collapsed lattice from `teacher_lattice`
    (f32[B, T, U+1, 3], `teacher_collapsed`) when one is given. The batch's biasing lists
    (`batch_context`), when it has them, go to the encoder (a model without a biasing network
    ignores them). A branching encoder adds `branch_weight` times the squared distance of its
    share of expensive frames (over the batch's frames; the sampled choices, straight through)
    from `branch_budget`; its choices are sampled at `branch_temperature` with logistic noise
    scaled by `branch_noise`, and with `branch_imitation` > 0 that weight
    times its cheap branch's relative error against the expensive one (aux "imitation")."""
    variables = {"params": params, "norm": norm}
    rngs = {"dropout": rng} if train else {}
    enc_p, enc_pad, aux = model.apply(
        variables,
        batch["feats"],
        batch["feat_paddings"],
        train,
        batch_context(batch),
        branch_temperature,
        branch_imitation > 0,
        branch_noise,
        method=Transducer.encode_aux,
        rngs=rngs,
    )
    history = blank_prefixed(batch["labels"], model.config.blank_id)
    pred_p = model.apply(variables, history, train, method=Transducer.predict, rngs=rngs)

    def joint_fn(e, p):
        return model.apply(variables, e, p, method=Transducer.joint)

    valid = (jnp.sum(1.0 - enc_pad, axis=1) > 0).astype(jnp.float32)
    n = jnp.maximum(jnp.sum(valid), 1.0)
    if teacher_lattice is None:
        per_utt = rnnt_loss(
            joint_fn,
            enc_p,
            enc_pad,
            pred_p,
            batch["labels"],
            batch["label_paddings"],
            blank_id=model.config.blank_id,
        )
        loss = jnp.sum(per_utt * valid) / n
        metrics = {"loss": loss, "utterances": jnp.sum(valid)}
    else:
        if teacher_lattice.shape[:2] != enc_p.shape[:2]:
            raise ValueError(
                f"teacher lattice {teacher_lattice.shape} and student encoder output "
                f"{enc_p.shape} differ in batch or frames: teacher and student need the same "
                "frame rate"
            )
        # one chunked joint pass serves both the NLL and the distillation term
        student = collapsed_log_probs(
            joint_fn,
            enc_p,
            enc_pad,
            pred_p,
            batch["labels"],
            batch["label_paddings"],
            blank_id=model.config.blank_id,
        )
        per_utt = rnnt_loss_from_collapsed(student, enc_pad, batch["label_paddings"])
        kl = distill_loss(
            student, teacher_lattice, enc_pad, batch["label_paddings"], distill_temperature
        )
        nll = jnp.sum(per_utt * valid) / n
        kd = jnp.sum(kl * valid) / n
        loss = nll + distill_weight * kd
        metrics = {"loss": loss, "transducer": nll, "distill": kd, "utterances": jnp.sum(valid)}
    if ctc_weight > 0:
        ctc = optax.ctc_loss(
            model.apply(variables, enc_p, method=Transducer.ctc_logits),
            enc_pad,
            batch["labels"],
            batch["label_paddings"],
            blank_id=model.config.blank_id,
        )
        # CTC needs a frame per label and a blank between equal neighbours: skip utterances
        # too short for that (their loss is infinite, not a training signal).
        ok = valid * ctc_feasible(enc_pad, batch["labels"], batch["label_paddings"])
        metrics["ctc"] = jnp.sum(ctc * ok) / jnp.maximum(jnp.sum(ok), 1.0)
        metrics.setdefault("transducer", loss)
        loss = loss + ctc_weight * metrics["ctc"]
        metrics["loss"] = loss
    frames = jnp.maximum(jnp.sum(1.0 - enc_pad), 1.0)
    metrics["encoder_macs_per_frame"] = jnp.sum(aux["macs"]) / frames
    if "expensive" in aux:
        keep = 1.0 - enc_pad
        share = jnp.sum(aux["expensive"] * keep) / frames
        branch = (share - branch_budget) ** 2
        metrics.setdefault("transducer", loss)
        metrics["expensive_share"] = jax.lax.stop_gradient(share)
        metrics["expected_share"] = jnp.sum(aux["expensive_prob"] * keep) / frames
        metrics["branch_penalty"] = branch
        loss = loss + branch_weight * branch
        if "imitation" in aux:
            metrics["imitation"] = aux["imitation"]
            loss = loss + branch_imitation * aux["imitation"]
        metrics["loss"] = loss
    return loss, metrics


def init_state(
    model: Transducer,
    tx: optax.GradientTransformation,
    key: jax.Array,
    cfg: TrainConfig | None = None,
) -> TrainState:
    """Step 0: freshly initialized parameters and optimizer state; the recipe's extras with
    placeholder values (shapes for restoring; `_initial_state` fits them)."""
    variables = init_variables(model, key)
    extras = {}
    if cfg is not None and cfg.quant_method == "mr-acos":
        n_kernels = sum(is_kernel(p) for p, _ in jax.tree_util.tree_leaves_with_path(variables))
        extras = {"levels": jnp.zeros((n_kernels, 2 * qmax(cfg.quant_bits) + 1), jnp.float32)}
    return TrainState(
        step=jnp.array(0, jnp.int32),
        params=variables["params"],
        opt_state=tx.init(variables["params"]),
        norm=variables["norm"],
        extras=extras,
    )


def branch_temperature(cfg: TrainConfig, step) -> jax.Array:
    """The branching encoder's Gumbel temperature at `step`: geometric from `branch_tau` at
    step 0 to `branch_tau_end` at the last step."""
    frac = jnp.clip(jnp.asarray(step, jnp.float32) / max(cfg.steps - 1, 1), 0.0, 1.0)
    return cfg.branch_tau * (cfg.branch_tau_end / cfg.branch_tau) ** frac


def branch_noise(cfg: TrainConfig, step) -> jax.Array:
    """The scale of the branching encoder's choice noise at `step`: linear from `branch_noise`
    at step 0 to `branch_noise_end` at the last step (0: the inference choice, so the model
    finishes training on the choices it will make)."""
    frac = jnp.clip(jnp.asarray(step, jnp.float32) / max(cfg.steps - 1, 1), 0.0, 1.0)
    return cfg.branch_noise + (cfg.branch_noise_end - cfg.branch_noise) * frac


def make_train_step(
    model: Transducer,
    cfg: TrainConfig,
    tx: optax.GradientTransformation,
    teacher: Transducer | None = None,
):
    """The jitted step (state, batch, rng, teacher_vars) -> (state, metrics). With a `teacher`
    model, `teacher_vars` are its variables (not donated; pass None without a teacher): the
    teacher sees the batch without SpecAugment (the waveform augmentation is shared), the
    student the SpecAugmented features (`train.distill` module docstring)."""

    def train_step(state: TrainState, batch, rng, teacher_vars=None):
        rng = jax.random.fold_in(rng, state.step)
        k_spec, k_drop = jax.random.split(rng)
        feats = spec_augment(
            k_spec,
            batch["feats"],
            batch["feat_paddings"],
            freq_masks=cfg.spec_freq_masks,
            freq_width=cfg.spec_freq_width,
            time_masks=cfg.spec_time_masks,
            time_ratio=cfg.spec_time_ratio,
        )
        use_spec = state.step >= cfg.spec_start_step
        lattice = None if teacher is None else teacher_collapsed(teacher, teacher_vars, batch)
        batch = dict(batch, feats=jnp.where(use_spec, feats, batch["feats"]))

        def objective(params):  # the loss is a sum of named terms
            loss, metrics = loss_fn(
                params,
                state.norm,
                model,
                batch,
                k_drop,
                True,
                cfg.ctc_weight,
                lattice,
                cfg.distill_weight,
                cfg.distill_temperature,
                branch_temperature(cfg, state.step),
                cfg.branch_budget,
                cfg.branch_weight,
                cfg.branch_imitation,
                branch_noise(cfg, state.step),
            )
            reg, reg_metrics = regularizer_terms(cfg, params, state.step, state.extras)
            if reg_metrics:
                metrics = dict(metrics, **reg_metrics, task_loss=loss)
                loss = loss + reg
                metrics["loss"] = loss
            return loss, metrics

        grads, metrics = jax.grad(objective, has_aux=True)(state.params)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        metrics["grad_norm"] = optax.tree_utils.tree_norm(grads)
        if cfg.sparsity > 0:
            metrics.update(sparsity_metrics(cfg, params, opt_state, state.step + 1))
        return state.replace(step=state.step + 1, params=params, opt_state=opt_state), metrics

    return jax.jit(train_step, donate_argnums=(0,))


def sparsity_metrics(cfg: TrainConfig, params, opt_state, step) -> dict:
    """Per step: the schedule's target share, the share of exact zeros (all eligible weights
    and per layer, `zeros/<layer>`) and the sparsifier's remaining penalty."""
    eligible = eligible_mask(params, cfg.sparsity_embeddings)
    shares = zero_shares(params, eligible)
    out = {f"zeros/{k}": v for k, v in shares.items() if k != "all"}
    out["zeros"] = shares["all"]
    out["sparsity_target"] = sparsity_target(step, cfg.sparsity, *sparsity_steps(cfg))
    st = find_sparsify_state(opt_state)
    if st is not None:
        out["sparsity_pen"] = sparsity_penalty(params, st.masks)
    return out


def precompile(
    step_fn,
    state: TrainState,
    key,
    buckets,
    n_mels: int,
    teacher_vars=None,
    context_shape: tuple[int, int] | None = None,
    teacher_feats: bool = False,
) -> dict:
    """Compiles `step_fn` for every bucket's batch shape at once, in threads (XLA compiles
    outside the GIL), instead of one by one as each shape first appears. On a GPU this turns
    minutes of staggered compiles into one parallel wait. `context_shape`: (P, Lp) of the
    batches' biasing lists, when they carry them; `teacher_feats`: the batches carry the
    teacher's own features (`teacher_clean`). Returns {(feats shape, labels shape):
    compiled step}."""
    from concurrent.futures import ThreadPoolExecutor

    def one(b):
        f32, i32 = jnp.float32, jnp.int32
        batch = {
            "feats": jax.ShapeDtypeStruct((b.batch, b.frames, n_mels), f32),
            "feat_paddings": jax.ShapeDtypeStruct((b.batch, b.frames), f32),
            "labels": jax.ShapeDtypeStruct((b.batch, b.labels), i32),
            "label_paddings": jax.ShapeDtypeStruct((b.batch, b.labels), f32),
        }
        if teacher_feats:
            batch["teacher_feats"] = batch["feats"]
        if context_shape is not None:
            ctx = (b.batch, *context_shape)
            batch["context_tokens"] = jax.ShapeDtypeStruct(ctx, i32)
            batch["context_paddings"] = jax.ShapeDtypeStruct(ctx, f32)
        shape = ((b.batch, b.frames, n_mels), (b.batch, b.labels))
        return shape, step_fn.lower(state, batch, key, teacher_vars).compile()

    with ThreadPoolExecutor(max(1, len(buckets))) as ex:
        return dict(ex.map(one, buckets))


def feature_stats(rows: list[dict], n: int = 300, seed: int = 0) -> dict[str, np.ndarray]:
    """Mean and inverse std of log-mel features over up to n training utterances."""
    from asr.audio import load_audio

    rng = np.random.default_rng(seed)
    idx = rng.choice(len(rows), size=min(n, len(rows)), replace=False)
    feats = np.concatenate([log_mel(load_audio(rows[i]["audio"])) for i in idx])
    return {
        "mean": feats.mean(0).astype(np.float32),
        "istd": (1.0 / (feats.std(0) + 1e-3)).astype(np.float32),
    }


@dataclass
class Workdir:
    root: Path

    @property
    def ckpt(self) -> Path:
        return self.root / "checkpoints"

    @property
    def metrics(self) -> Path:
        return self.root / "metrics.jsonl"

    @property
    def config(self) -> Path:
        return self.root / "config.json"

    @property
    def tokenizer(self) -> Path:
        return self.root / "tokenizer.model"


def _atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_bytes(data)
    tmp.replace(path)


def split_rows(rows: list[dict], seed: int) -> tuple[list[dict], list[dict]]:
    """Training rows (split train or unset) and dev rows (split dev; else 2% held out)."""
    train = [r for r in rows if r.get("split", "train") == "train"]
    dev = [r for r in rows if r.get("split") == "dev"]
    if not dev:
        rng = np.random.default_rng(seed)
        pick = set(rng.choice(len(train), size=max(1, len(train) // 50), replace=False).tolist())
        dev = [r for i, r in enumerate(train) if i in pick]
        train = [r for i, r in enumerate(train) if i not in pick]
    return train, dev


def _fingerprint(rows: list[dict], with_context: bool = False) -> str:
    """A hash of the training data as the batch plan sees it (order, audio, text, split; and
    the `context` names when the biasing lists are drawn from them)."""
    import hashlib

    keys = [(r["audio"], r["text"], r.get("split")) for r in rows]
    if with_context:
        keys = [(*k, r.get("context")) for k, r in zip(keys, rows, strict=True)]
    return hashlib.sha256(json.dumps(keys).encode()).hexdigest()[:16]


def _recipe_to_run(wd: Workdir, cfg: TrainConfig, start: int | None):
    """(recipe, config.json contents to extend or None, resumable fields changed) for a run of
    `cfg` in `wd`. With a checkpoint (`start`), the run resumes: the saved recipe, with the
    `RESUMABLE_FIELDS` of `cfg`, or ValueError listing the other fields that differ. Without
    one there is nothing to continue (a start that failed or was stopped early, say on an
    out-of-memory first step): `cfg` replaces a saved recipe, and a tokenizer trained for
    another one is trained again."""
    if not wd.config.exists():
        return cfg, None, {}
    meta = json.loads(wd.config.read_text())
    saved = TrainConfig.from_dict(meta["train"])
    if start is not None:
        cfg, changes = resume_config(saved, cfg)
        return cfg, meta, changes
    if saved != cfg:
        tqdm.write(f"{wd.root}: no checkpoint yet, so starting afresh with the recipe given")
        wd.tokenizer.unlink(missing_ok=True)
    return cfg, None, {}


def _tokenizer_and_model(wd: Workdir, cfg: TrainConfig, train_rows: list[dict], init, teacher=None):
    """(tokenizer, model config) of the run: the work folder's tokenizer, else the starting
    model's (fine-tuning), else the teacher's (distillation needs a shared one), else one
    trained on the training transcripts (then saved)."""
    if wd.tokenizer.exists():
        tokenizer = Tokenizer.load(wd.tokenizer)
    elif init is not None:
        tokenizer = init.tokenizer
    elif teacher is not None:
        tokenizer = teacher.tokenizer
    else:
        tokenizer = Tokenizer.train((normalize_text(r["text"]) for r in train_rows), cfg.vocab_size)
    mcfg = cfg.model_config(tokenizer.vocab_size)
    if init is not None and not can_start_from(init.config, mcfg):  # before anything is written
        raise ValueError(
            f"init_from={cfg.init_from!r} is a {init.config.name} model whose config differs "
            f"from recipe {cfg.model!r} (with ctc_weight {cfg.ctc_weight}, bias_dim "
            f"{cfg.bias_dim}, encoder {cfg.encoder}); pick the matching --config and ctc_weight "
            "(a biasing network can be added to a model without one, not removed or resized; "
            "a plain encoder can become a branching one and keep fewer layers)"
        )
    if teacher is not None:
        pieces = [tokenizer.piece(i) for i in range(tokenizer.vocab_size)]
        theirs = [teacher.tokenizer.piece(i) for i in range(teacher.tokenizer.vocab_size)]
        if pieces != theirs or teacher.config.blank_id != mcfg.blank_id:
            raise ValueError(
                f"teacher={cfg.teacher!r} has another tokenizer ({len(theirs)} pieces) than the "
                f"student ({len(pieces)} pieces"
                + (f", from init_from={cfg.init_from!r}" if init is not None else "")
                + "): distillation compares their outputs symbol by symbol; start the student "
                "without init_from (it then takes the teacher's) or from a model that shares it"
            )
    if not wd.tokenizer.exists():
        _atomic_write(wd.tokenizer, tokenizer.model_proto)
    return tokenizer, mcfg


def can_start_from(init: ModelConfig, target: ModelConfig) -> bool:
    """Whether a model of config `target` can be fine-tuned from one of config `init`: the same
    config, except that `target` may add a biasing network to a model that has none, make a
    plain encoder the expensive branch of a branching one, and keep fewer encoder layers."""
    if init.bias_dim == 0:
        target = target.without_biasing()
    if init.encoder == "transformer":
        target = target.without_branching()
    if init.num_layers >= target.num_layers:
        target = target.replace(num_layers=init.num_layers)
    return init == target


def keep_layers(params, num_layers: int):
    """`params` without the encoder layers from `num_layers` on (a shallower model fine-tuned
    from a deeper one keeps its first layers)."""
    enc = {
        k: v
        for k, v in params["encoder"].items()
        if not (k.startswith("layer_") and int(k.split("_")[1]) >= num_layers)
    }
    return dict(params, encoder=enc)


def merge_params(fresh, given):
    """`fresh` parameters with every leaf that `given` has replaced by its value (fine-tuning
    a model with a biasing network added: `given` lacks those). Raises ValueError when `given`
    has a parameter that `fresh` lacks or of another shape."""
    flat = flax.traverse_util.flatten_dict(flax.core.unfreeze(fresh))
    for path, value in flax.traverse_util.flatten_dict(flax.core.unfreeze(given)).items():
        if path not in flat or tuple(flat[path].shape) != tuple(np.shape(value)):
            got = None if path not in flat else tuple(flat[path].shape)
            raise ValueError(
                f"starting model parameter {'/'.join(path)} {tuple(np.shape(value))} has no "
                f"match in the model trained ({got})"
            )
        flat[path] = value
    return flax.traverse_util.unflatten_dict(flat)


def _initial_state(mngr, start, model, tx, cfg: TrainConfig, init, train_rows) -> TrainState:
    """The state to train from: checkpoint `start` when there is one; else fresh parameters
    with the starting model's weights and norm (fine-tuning, `init`; parameters it lacks, those
    of a biasing network added to it, stay fresh) or the feature statistics of the training
    rows."""
    make_state = functools.partial(init_state, model, tx, cfg=cfg)
    key = jax.random.PRNGKey(cfg.seed)
    if start is not None:
        tqdm.write(f"resumed from step {start}")
        return _restore(mngr, start, jax.eval_shape(make_state, key))
    state = jax.jit(make_state)(key)  # one compile, not one per initializer op
    if init is not None:
        tqdm.write(f"initialized from {init.source}")
        v = jax.tree_util.tree_map(jnp.asarray, init.variables)
        given = keep_layers(flax.core.unfreeze(v["params"]), model.config.num_layers)
        params = merge_params(state.params, given)
        if model.config.encoder == "branching" and init.config.encoder != "branching":
            params = init_cheap_branch(params, model.config)
        state = state.replace(params=params, opt_state=tx.init(params), norm=v["norm"])
    else:
        norm = feature_stats(train_rows, seed=cfg.seed)
        state = state.replace(norm=jax.tree_util.tree_map(jnp.asarray, norm))
    return state.replace(extras=initial_extras(cfg, state.params))


def _save(mngr: ocp.CheckpointManager, step: int, state: TrainState) -> None:
    """Checkpoint `step` (asynchronous): {'model': params and norm (what `asr.model_io` loads),
    'train': step, optimizer state and, when the recipe has any, the extras}."""
    train_item = {"step": state.step, "opt_state": state.opt_state}
    if state.extras:
        train_item["extras"] = state.extras
    mngr.save(
        step,
        args=ocp.args.Composite(
            model=ocp.args.StandardSave({"params": state.params, "norm": state.norm}),
            train=ocp.args.StandardSave(train_item),
        ),
    )


def _note_resume(meta: dict, step: int, changes: dict, data: dict) -> None:
    """Appends this resume to config.json's "resumes": the step, the recipe fields changed
    ({field: [before, after]}) and the data counts; warns when the data differ from those the
    run started with (the resumed run then sees other batches than the one that never
    stopped)."""
    before = (meta.get("resumes") or [meta])[-1].get("data", {})
    if before.get("fingerprint") not in (None, data["fingerprint"]):
        tqdm.write(
            f"WARNING: the training data differ from the last session's ({before.get('rows')} "
            f"rows then, {data['rows']} now): the resumed run will not be the run that never "
            "stopped"
        )
    meta.setdefault("resumes", []).append({"step": step, "changes": changes, "data": data})
    for k, (a, b) in changes.items():
        tqdm.write(f"resuming with {k} = {b} (was {a})")


def _restore(mngr: ocp.CheckpointManager, step: int, abstract: TrainState) -> TrainState:
    """The train state of checkpoint `step`; `abstract` gives its structure, shapes and dtypes
    (`jax.ShapeDtypeStruct` leaves)."""
    train_item = {"step": abstract.step, "opt_state": abstract.opt_state}
    if abstract.extras:
        train_item["extras"] = abstract.extras
    r = mngr.restore(
        step,
        args=ocp.args.Composite(
            model=ocp.args.StandardRestore({"params": abstract.params, "norm": abstract.norm}),
            train=ocp.args.StandardRestore(train_item),
        ),
    )
    state = TrainState(
        step=r["train"]["step"],
        params=r["model"]["params"],
        opt_state=r["train"]["opt_state"],
        norm=r["model"]["norm"],
        extras=r["train"].get("extras", {}),
    )
    # orbax gives arrays committed to a device, a fresh state's are not: the jitted step would
    # see other argument shardings and compile again (not reusing the persistent cache's
    # executable). Uncommitted, a resumed run runs the executable a fresh one compiled.
    return jax.tree_util.tree_map(lambda x: jax.device_put(np.asarray(x)), state)


def evaluate(model: Transducer, variables, tokenizer: Tokenizer, rows: list[dict]) -> dict:
    """The dev-set WER as `asr eval` measures it: `asr.recognizer.evaluate_manifest` with the
    default `DecodeSettings` (beam search), the same batching and text normalization. Returns
    {'wer', 'utterances'}.

    The recognizer's jitted decode takes the weights as an argument and is cached per (model,
    settings), so evaluating new weights of the same model compiles nothing new. A dev row
    whose audio cannot be read (checked before training, so deleted or damaged since) is an
    error (`AudioError`), as in training (`train.data`)."""
    from asr.model_io import LoadedModel
    from asr.recognizer import DecodeSettings, Recognizer, evaluate_manifest

    loaded = LoadedModel(model, variables, tokenizer, model.config, "training")
    res = evaluate_manifest(Recognizer(loaded, DecodeSettings()), rows, pairs=0, unreadable="fail")
    return {"wer": res["wer"], "utterances": res["utterances"]}


def train(
    cfg: TrainConfig,
    rows: list[dict],
    workdir: str | Path,
    noise_dir: str | None = None,
    progress: bool = True,
    stop_after: int | None = None,
    time_limit: float | None = None,
    row_names: list[str] | None = None,
    skip_bad_rows: bool = False,
    extra_fields: tuple[str, ...] = (),
) -> dict:
    """Trains (or resumes) in `workdir`; returns the final metrics.

    `rows` are checked before anything else (`train.data.check_training_rows`: audio that
    exists and has a readable header, a transcript, ...); a bad row stops training with one
    report listing them (`row_names`, e.g. "train.jsonl:17", name them), unless `skip_bad_rows`,
    which trains without them and records how many in config.json. `extra_fields`: manifest
    fields of the user's own, accepted besides `asr.manifest.KNOWN_FIELDS`.
    `stop_after`: stop (with a checkpoint) after this many steps of this call, e.g. to share a
    machine in time slices; running again resumes.
    `time_limit`: stop (with a checkpoint) once this call has run this many seconds, and also
    write the model folder of the step reached (its config.json says `"complete": false`), for
    a machine that is lent for a fixed time. Running again resumes.

    Resuming with another recipe is refused, except for `train.configs.RESUMABLE_FIELDS`.

    Writes: config.json (recipe, model config, data counts, and one entry per resume),
    tokenizer.model, checkpoints/ (orbax), metrics.jsonl, and model/ (an inference model
    folder, float16) at the end.
    """
    t_call = time.perf_counter()  # the time limit counts set-up and compiles too
    wd = Workdir(Path(workdir).absolute())
    cfg = cfg.replace(
        init_from=canonical_model_spec(cfg.init_from), teacher=canonical_model_spec(cfg.teacher)
    )
    rows, n_bad = check_training_rows(
        rows, names=row_names, skip_bad=skip_bad_rows, extra_fields=extra_fields
    )
    wd.root.mkdir(parents=True, exist_ok=True)
    mngr = ocp.CheckpointManager(
        wd.ckpt,
        options=ocp.CheckpointManagerOptions(
            max_to_keep=2,
            create=True,
            # a checkpoint being written when the process was killed is left as a temporary
            # folder (orbax renames it into place only when complete): resuming ignores it,
            # and this removes it
            cleanup_tmp_directories=True,
        ),
    )
    start = mngr.latest_step()
    cfg, meta, changes = _recipe_to_run(wd, cfg, start)
    train_rows, dev_rows = split_rows(rows, cfg.seed)
    if not train_rows:
        raise ValueError("no training utterances (all rows are dev/test?)")
    perm = np.random.default_rng(cfg.seed).permutation(len(dev_rows))
    dev_rows = [dev_rows[i] for i in perm[: cfg.eval_utterances]]  # a mix of every dev source
    data = {
        "rows": len(rows),
        "bad_rows_skipped": n_bad,
        "fingerprint": _fingerprint(rows, with_context=cfg.bias_dim > 0),
    }

    # the starting model is read only for a fresh run; a resumed one has it in its checkpoint
    init = load_model(cfg.init_from) if cfg.init_from and start is None else None
    if cfg.teacher_clean and not cfg.teacher:
        raise ValueError("teacher_clean=true needs a teacher (--set teacher=MODEL)")
    teacher = load_model(cfg.teacher) if cfg.teacher else None  # also on resume: it is used
    tokenizer, mcfg = _tokenizer_and_model(wd, cfg, train_rows, init, teacher)
    if meta is None:
        meta = {"train": cfg.to_dict(), "model": mcfg.to_dict(), "data": data}
    else:
        _note_resume(meta, start, changes, data)
        meta["train"] = cfg.to_dict()
    _atomic_write(wd.config, json.dumps(meta, indent=2).encode())
    model = build_model(mcfg, training_policy(cfg))
    eval_model = build_model(mcfg, deployed_policy(cfg))  # what evaluation and model/ run
    tx = make_optimizer(cfg)
    key = jax.random.PRNGKey(cfg.seed)
    # metric lines past the checkpoint (or of a run killed before its first) come again
    _truncate_metrics(wd.metrics, start or 0)
    state = _initial_state(mngr, start, model, tx, cfg, init, train_rows)
    start = start or 0

    noise_bank = _noise_bank(noise_dir)
    ds, info = training_dataset(train_rows, tokenizer, cfg, noise_bank, start_step=start)
    teacher_vars = None
    if teacher is not None:
        teacher_vars = jax.tree_util.tree_map(jnp.asarray, teacher.variables)
        tqdm.write(
            f"distilling from {teacher.source} ({teacher.config.name}, "
            f"{count_params(teacher_vars['params']) / 1e6:.2f} M parameters), weight "
            f"{cfg.distill_weight}, temperature {cfg.distill_temperature}"
        )
    step_fn = make_train_step(model, cfg, tx, None if teacher is None else teacher.model)
    compiled = {}
    if cfg.precompile:
        t = time.perf_counter()
        compiled = precompile(
            step_fn,
            state,
            key,
            info["buckets"],
            mcfg.n_mels,
            teacher_vars,
            context_shape=info["context_shape"],
            teacher_feats=teacher is not None and cfg.teacher_clean,
        )
        tqdm.write(f"compiled {len(compiled)} bucket shapes in {time.perf_counter() - t:.0f} s")
    n_params = count_params(state.params)
    tqdm.write(
        f"model {mcfg.name}: {n_params / 1e6:.2f} M parameters, vocab {mcfg.vocab_size}; "
        f"{info['synthetic']} synthesized + {info['real']} real utterances "
        f"(real x{info['real_repeat']}, {info['real_phrases']} of them composite phrases), "
        f"{info['skipped']} skipped as too long; {info['noise_padded']} with noise padding, "
        f"{info['noise_only']} noise-only utterances; "
        f"{info['per_epoch']} steps per epoch; {len(dev_rows)} dev utterances"
    )
    if info["context_shape"] is not None:
        tqdm.write(
            f"biasing network ({mcfg.bias_encoder}, width {mcfg.bias_dim}): lists of up to "
            f"{cfg.context_phrases} of {info['context_pool']} names, padded to "
            f"{info['context_shape']} (phrases, tokens)"
        )
        if info["context_pool"] == 0:
            tqdm.write(
                "WARNING: no training row has a `context` field, so every list is empty and "
                "the biasing network only learns its no-bias entry (synthesized corpora carry "
                "`context`: asr corpus synth)"
            )

    last = {}
    bar = tqdm(
        total=cfg.steps, initial=start, disable=not progress, unit="step", dynamic_ncols=True
    )
    out_of_time = False  # stopped by time_limit (then the model folder is written anyway)
    t0, frames = time.perf_counter(), 0  # speed is measured over each logging window
    window: list[dict] = []
    log = MetricsLog(wd)
    try:
        for batch in ds:
            step = int(batch.pop("step"))
            frames += int(np.sum(1.0 - batch["feat_paddings"]))
            fn = compiled.get((batch["feats"].shape, batch["labels"].shape), step_fn)
            state, m = fn(state, batch, key, teacher_vars)
            window.append(m)
            done = step + 1
            if done % cfg.log_every == 0 or done == cfg.steps:
                m = _window_metrics(window)
                dt = time.perf_counter() - t0
                m.update(step=done, audio_s_per_s=frames * 0.01 / dt, lr=float(make_lr(cfg)(done)))
                window, t0, frames = [], time.perf_counter(), 0
                if not math.isfinite(m["loss"]):
                    raise FloatingPointError(f"loss became {m['loss']} at step {done}")
                log.write(m)
                bar.set_postfix(loss=f"{m['loss']:.3f}", audio_x=f"{m['audio_s_per_s']:.1f}")
                last = m
            if done % cfg.eval_every == 0 or done == cfg.steps:
                params = compress_params(cfg, state.params, state.extras)
                ev = evaluate(
                    eval_model, {"params": params, "norm": state.norm}, tokenizer, dev_rows
                )
                log.write({"step": done, "dev_wer": ev["wer"]})
                tqdm.write(f"step {done}: dev WER {100 * ev['wer']:.2f}% on {ev['utterances']}")
                last["dev_wer"] = ev["wer"]
                t0 = time.perf_counter()  # evaluation time is not training speed
            stopping = stop_after is not None and done - start >= stop_after
            if (
                time_limit is not None
                and done < cfg.steps
                and time.perf_counter() - t_call > time_limit
            ):
                out_of_time = True
                tqdm.write(f"time limit of {time_limit:.0f} s reached at step {done}")
                stopping = True
            if done % cfg.ckpt_every == 0 or done == cfg.steps or stopping:
                _save(mngr, done, state)
            bar.update(1)
            if stopping:
                break
    finally:
        log.close()
    bar.close()
    mngr.wait_until_finished()
    _plot(wd)
    reached = int(state.step)
    if n_bad:
        last["bad_rows_skipped"] = n_bad
    if reached < cfg.steps and not out_of_time:
        return last
    params = compress_params(cfg, state.params, state.extras)
    variables = {"params": params, "norm": state.norm}
    extra = {"train": cfg.to_dict(), "steps": reached, "complete": reached >= cfg.steps}
    if cfg.quant_method != "none" or cfg.sparsity > 0:
        extra["quant"] = model_quant_meta(cfg, jax.device_get(params))
    save_model_folder(wd.root / "model", mcfg, tokenizer, jax.device_get(variables), extra=extra)
    return dict(last, steps=reached)


def model_quant_meta(cfg: TrainConfig, params) -> dict:
    """The model folder's "quant" entry: how the compressed model runs (`asr.model_io` builds
    its policy from it) and what it is."""
    pol = deployed_policy(cfg)
    return {
        "weight_bits": pol.weight_bits,
        "act_bits": pol.act_bits,
        "small_bits": pol.small_bits,
        "bits": cfg.quant_bits if cfg.quant_method != "none" else 0,
        "levels": "nonuniform" if cfg.quant_method == "mr-acos" else "uniform",
        "method": cfg.quant_method,
        "sparsity": cfg.sparsity,
        "zero_fraction": zero_fraction(params),
    }


def make_lr(cfg: TrainConfig) -> optax.Schedule:
    """Linear warm-up to peak_lr, then cosine decay to end_lr at the last step."""
    return optax.warmup_cosine_decay_schedule(
        0.0, cfg.peak_lr, cfg.warmup_steps, max(cfg.steps, cfg.warmup_steps + 1), cfg.end_lr
    )


class MetricsLog:
    """Appends metric dicts to metrics.jsonl, and to TensorBoard when tensorboardX is installed
    (`pip install tensorboardX`; event files under <workdir>/tensorboard)."""

    def __init__(self, workdir: Workdir):
        self._file = open(workdir.metrics, "a")  # noqa: SIM115 - closed in close()
        try:
            from tensorboardX import SummaryWriter
        except ImportError:
            self._tb = None
        else:
            self._tb = SummaryWriter(str(workdir.root / "tensorboard"))

    def write(self, metrics: dict) -> None:
        self._file.write(json.dumps(metrics) + "\n")
        self._file.flush()
        if self._tb is not None:
            for k, v in metrics.items():
                if k != "step":
                    self._tb.add_scalar(k, v, metrics["step"])
            self._tb.flush()

    def close(self) -> None:
        self._file.close()
        if self._tb is not None:
            self._tb.close()


# metrics that describe the state reached, not a step's sample: logged at the window's end
_STATE_METRICS = ("zeros", "sparsity_target", "quant_weight")


def _window_metrics(window: list[dict]) -> dict:
    """One metric line from a logging window: the mean of each metric over its steps, the last
    value of the state metrics (share of zeros, schedule targets)."""
    out = {}
    for k in window[0]:
        if k.startswith(_STATE_METRICS):
            out[k] = float(window[-1][k])
        else:
            out[k] = float(np.mean([float(w[k]) for w in window]))
    return out


def _plot(wd: Workdir) -> None:
    """curves.png in the work folder, when matplotlib is installed (a dev extra)."""
    from train.plot import plot_curves

    try:
        plot_curves(wd.root)
    except ImportError:
        pass
    except ValueError:  # no metric line yet (stopped before the first log_every steps)
        pass


def _truncate_metrics(path: Path, step: int) -> None:
    """Drops metric lines written after checkpoint `step` (they will be produced again), and
    a last line cut short by a kill during its write."""
    if not path.exists():
        return
    keep = []
    for ln in path.read_text().splitlines():
        try:
            m = json.loads(ln)
        except json.JSONDecodeError:
            continue
        if isinstance(m, dict) and m.get("step", 0) <= step:
            keep.append(ln)
    _atomic_write(path, ("\n".join(keep) + "\n" if keep else "").encode())


def _noise_bank(noise_dir: str | None):
    from train.augment import NoiseBank

    return NoiseBank(noise_dir)


__all__ = [
    "TrainState",
    "batch_context",
    "can_start_from",
    "evaluate",
    "make_optimizer",
    "make_train_step",
    "merge_params",
    "train",
]
