"""Training the phone head of phonetic name matching (`asr.phonetic`) on a frozen transducer.

Owns `asr train-phones --model M --data MANIFEST... --out FOLDER [--steps 2000]`: every row's
audio goes once through the model's encoder (its states before the joiner's projection,
`Transducer.encode_states`, with the recognizer's tail silence); its transcript becomes phones by eSpeak NG in the row's accent
(`row_accent`); the head learns them by CTC (AdamW, warm-up then cosine decay, batches of similar
lengths). The transducer is not changed: the output folder is a copy of the model folder plus
`phones.json` and `phones.msgpack`, and decodes without a list exactly as the model did.

For the edge artifact's size budget: `--conv separable` (a depthwise convolution and a pointwise
product), `--weight-bits B` (training through the B-bit levels the exporter stores, so nothing
is lost at export), `--teacher M` (the head also learns the per-frame phone posteriors of M's
head, a larger one on the same encoder). With `--model X.edge` the head learns on the
artifact's fake-quant encoder (`export.exporter.reference_model`, what the emulated processor
computes up to activation rounding) and `--out` is the artifact with the head, every other
tensor kept byte for byte.
"""

from __future__ import annotations

import math
import shutil
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
from tqdm import tqdm

from asr.audio import SAMPLE_RATE, load_audio
from asr.features import log_mel
from asr.model_io import LoadedModel, load_model
from asr.models.quant import quantize_params
from asr.phonetic import CONVS, PhoneHead, PhoneModel, in_dim, text_phones
from asr.recognizer import DecodeSettings
from train.corpus.espeak import ACCENTS

TAIL_SECONDS = DecodeSettings().tail_padding_seconds  # the recognizer's tail silence


def row_accent(row: dict) -> str:
    """The eSpeak NG accent a row's words were spoken in: the accent part ("en-gb-x-rp") of an
    eSpeak NG speaker or voice name ("en-gb-x-rp+Andrea"), a Kokoro row's `voice.accent`, else
    "en-us" (real speakers: their accent is not known)."""
    voice = row.get("voice")
    if isinstance(voice, dict) and voice.get("accent") in ACCENTS:
        return str(voice["accent"])
    for name in (voice.get("name") if isinstance(voice, dict) else None, row.get("speaker")):
        if isinstance(name, str) and name.split("+")[0] in ACCENTS:
            return name.split("+")[0]
    return "en-us"


def encoder_states(
    loaded: LoadedModel, rows: list[dict], batch: int = 32, progress: bool = True
) -> list[np.ndarray]:
    """Each row's encoder states before the joiner's projection (`Transducer.encode_states`):
    f16[T', d_model] (unpadded)."""
    model, variables = loaded.model, loaded.variables

    def states_of(x, p):
        _, paddings, _, states = model.apply(variables, x, p, method="encode_states")
        return states, paddings

    encode = jax.jit(states_of)
    tail = np.zeros(round(TAIL_SECONDS * SAMPLE_RATE), np.float32)
    feats = [
        log_mel(np.concatenate([load_audio(r["audio"]), tail]))
        for r in tqdm(rows, desc="features", unit="utt", disable=not progress, leave=False)
    ]
    order = sorted(range(len(rows)), key=lambda i: len(feats[i]))
    out: list[np.ndarray] = [np.zeros((0, 0), np.float16)] * len(rows)
    starts = range(0, len(order), batch)
    for s in tqdm(starts, desc="encoder", unit="batch", disable=not progress, leave=False):
        idx = order[s : s + batch]
        t = 64 * math.ceil(max(len(feats[i]) for i in idx) / 64)
        x = np.zeros((batch, t, feats[idx[0]].shape[1]), np.float32)
        pad = np.ones((batch, t), np.float32)
        for k, i in enumerate(idx):
            x[k, : len(feats[i])] = feats[i]
            pad[k, : len(feats[i])] = 0.0
        enc, enc_pad = jax.device_get(encode(x, pad))
        for k, i in enumerate(idx):
            out[i] = enc[k, : int(np.sum(enc_pad[k] < 0.5))].astype(np.float16)
    return out


def _batches(lengths: list[int], batch: int) -> list[list[int]]:
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    return [order[i : i + batch] for i in range(0, len(order), batch)]


def train_phone_head(
    loaded: LoadedModel,
    rows: list[dict],
    steps: int = 2000,
    batch: int = 48,
    peak_lr: float = 2e-3,
    hidden: int = 256,
    kernel: int = 5,
    accents: tuple[str, ...] = ("en-us", "en-gb"),
    seed: int = 0,
    progress: bool = True,
    log_every: int = 100,
    conv: str = "full",
    weight_bits: int = 0,
    teacher: PhoneModel | None = None,
    distill_weight: float = 1.0,
    states: list[np.ndarray] | None = None,
) -> tuple[PhoneModel, list[dict]]:
    """A `PhoneModel` trained by CTC on `rows` (manifest rows with `text`) through `loaded`'s
    frozen encoder, and its log ([{"step", "loss"}], loss per phone averaged over
    `log_every` steps). Rows whose phones outnumber their frames are left out.

    `conv`: the head's convolution (`asr.phonetic.CONVS`). `weight_bits` > 0 trains through the
    kernels rounded to the levels the exporter stores (`quantize_params`, straight through), so
    the head keeps its accuracy at that precision on the edge processor. `teacher`: a phone head
    on the same encoder and phone inventory whose per-frame posteriors the head also learns
    (`distill_weight` x their KL divergence per frame, added to the CTC loss per phone).
    `states`: `encoder_states(loaded, rows)` when the caller has them already."""
    if min(steps, batch, hidden, kernel) < 1:
        raise ValueError(
            f"steps, batch, hidden and kernel must be >= 1, got {steps}, {batch}, {hidden}, {kernel}"
        )
    if conv not in CONVS:
        raise ValueError(f"conv must be one of {CONVS}, got {conv!r}")
    if weight_bits and not 2 <= weight_bits <= 8:
        raise ValueError(f"weight_bits must be 0 (float) or in [2, 8], got {weight_bits}")
    if not (math.isfinite(distill_weight) and distill_weight >= 0):
        raise ValueError(f"distill_weight must be a finite number >= 0, got {distill_weight}")
    if states is not None and len(states) != len(rows):
        raise ValueError(f"{len(states)} encoder states for {len(rows)} rows")
    texts = [r.get("text") for r in rows]
    keep = [i for i, t in enumerate(texts) if isinstance(t, str) and t.strip()]
    if not keep:
        raise ValueError("no row with a transcript (`text`) to learn phones from")
    rows = [rows[i] for i in keep]
    labels = [text_phones(r["text"].lower(), row_accent(r)) for r in rows]
    if states is None:
        states = encoder_states(loaded, rows, progress=progress)
    else:
        states = [states[i] for i in keep]
    inventory = tuple(sorted({p for seq in labels for p in seq}))
    if teacher is not None:
        if not set(inventory) <= set(teacher.inventory):
            extra = sorted(set(inventory) - set(teacher.inventory))
            raise ValueError(f"the teacher's phone inventory lacks {extra}")
        inventory = teacher.inventory  # the same output units, so posteriors compare
    ids = {p: i + 1 for i, p in enumerate(inventory)}
    data = [
        (e, np.array([ids[p] for p in seq], np.int32))
        for e, seq in zip(states, labels, strict=True)
        if 0 < len(seq) and len(seq) + 2 <= len(e)
    ]
    if not data:
        raise ValueError("no row has more encoder frames than phones")
    head = PhoneHead(len(inventory), hidden, kernel, conv=conv)
    dim = data[0][0].shape[1]
    if teacher is not None and in_dim(teacher.params) != dim:
        raise ValueError(f"the teacher reads {in_dim(teacher.params)}-wide states, not {dim}")

    params = head.init(jax.random.PRNGKey(seed), jnp.zeros((1, 8, dim)), jnp.zeros((1, 8)))
    sched = optax.warmup_cosine_decay_schedule(0.0, peak_lr, min(200, steps // 10 + 1), steps)
    opt = optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(sched, weight_decay=1e-4))
    opt_state = opt.init(params)

    @jax.jit
    def step(params, opt_state, x, xp, y, yp, key):
        def loss_fn(p):
            lp = head.apply(quantize_params(p, weight_bits), x, xp, True, rngs={"dropout": key})
            loss = optax.ctc_loss(lp, xp, y, yp, blank_id=0)
            loss = jnp.sum(loss) / jnp.maximum(jnp.sum(1.0 - yp), 1.0)
            if teacher is None:
                return loss
            t = teacher.head.apply(teacher.params, x, xp)  # log-probs, no dropout
            kl = jnp.sum(jnp.exp(t) * (t - lp), axis=-1)
            keep = 1.0 - xp
            return loss + distill_weight * jnp.sum(kl * keep) / jnp.maximum(jnp.sum(keep), 1.0)

        loss, grads = jax.value_and_grad(loss_fn)(params)
        updates, opt_state = opt.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    groups = _batches([len(e) for e, _ in data], batch)
    rng = np.random.default_rng(seed)
    log, recent = [], []
    t0 = time.perf_counter()
    bar = tqdm(range(steps), desc="phone head", unit="step", disable=not progress)
    for s in bar:
        b = groups[int(rng.integers(len(groups)))]
        t = 32 * math.ceil(max(len(data[i][0]) for i in b) / 32)
        n = 16 * math.ceil(max(len(data[i][1]) for i in b) / 16)
        x = np.zeros((batch, t, dim), np.float32)
        xp = np.ones((batch, t), np.float32)
        y = np.zeros((batch, n), np.int32)
        yp = np.ones((batch, n), np.float32)
        for k, i in enumerate(b):
            e, q = data[i]
            x[k, : len(e)], xp[k, : len(e)] = e, 0.0
            y[k, : len(q)], yp[k, : len(q)] = q, 0.0
        params, opt_state, loss = step(params, opt_state, x, xp, y, yp, jax.random.PRNGKey(s))
        recent.append(float(loss))
        if (s + 1) % log_every == 0 or s + 1 == steps:
            log.append(
                {"step": s + 1, "loss": float(np.mean(recent)), "seconds": time.perf_counter() - t0}
            )
            bar.set_postfix(loss=f"{log[-1]['loss']:.3f}")
            recent = []
    params = jax.device_get(params)
    pm = PhoneModel(params, inventory, hidden, kernel, tuple(accents), conv)
    return pm, log


def save_with_phones(loaded: LoadedModel, pm: PhoneModel, out: str | Path) -> Path:
    """A copy of `loaded`'s model folder with the phone head added (the folder must be a model
    folder: config.json, tokenizer.model, params.msgpack)."""
    src, out = Path(loaded.source), Path(out)
    if not (src / "params.msgpack").exists():
        raise ValueError(f"{src}: not a model folder (no params.msgpack); pass its model/ folder")
    if out.resolve() == src.resolve():
        raise ValueError(f"--out {out} is the model folder itself; choose a new folder")
    out.mkdir(parents=True, exist_ok=True)
    for f in src.iterdir():
        if f.is_file() and not f.name.startswith("phones."):
            shutil.copy2(f, out / f.name)
    pm.save(out)
    return out


def cmd_train_phones(args) -> int:
    import json

    from asr.manifest import read_manifest

    artifact = None
    if Path(args.model).suffix == ".edge":  # learn on the artifact's fake-quant encoder
        from export.artifact import read_artifact
        from export.exporter import reference_model

        if Path(args.out).suffix != ".edge":
            raise SystemExit(f"--out {args.out}: a head for an artifact goes into an .edge file")
        artifact = read_artifact(args.model)
        loaded = reference_model(artifact, args.model)
    else:
        loaded = load_model(args.model)
    teacher = None
    if args.teacher:
        t = load_model(args.teacher)
        if t.phones is None:
            raise SystemExit(f"--teacher {args.teacher}: the model has no phone head")
        teacher = t.phones
    rows = [r for m in args.data for r in read_manifest(m)]
    pm, log = train_phone_head(
        loaded,
        rows,
        steps=args.steps,
        batch=args.batch,
        hidden=args.hidden,
        kernel=args.kernel,
        seed=args.seed,
        progress=not args.no_progress,
        conv=args.conv,
        weight_bits=args.weight_bits,
        teacher=teacher,
        distill_weight=args.distill_weight,
    )
    summary = {"phones": len(pm.inventory), "rows": len(rows), "final_loss": log[-1]["loss"]}
    if artifact is not None:
        from export.artifact import write_artifact
        from export.exporter import with_phones

        bits = args.weight_bits or 8
        size = write_artifact(args.out, with_phones(artifact, pm, bits))
        Path(args.out).with_suffix(".phones_log.jsonl").write_text(
            "".join(json.dumps(x) + "\n" for x in log)
        )
        print(json.dumps({"out": args.out, "bytes": size, "phone_bits": bits, **summary}))
        return 0
    out = save_with_phones(loaded, pm, args.out)
    (out / "phones_log.jsonl").write_text("".join(json.dumps(x) + "\n" for x in log))
    print(json.dumps({"out": str(out), **summary}))
    return 0


def add_train_phones_parser(sub) -> None:
    p = sub.add_parser(
        "train-phones",
        help="add a phone head for phonetic name matching to a model (the model stays frozen)",
    )
    p.add_argument(
        "--model",
        required=True,
        help="a model folder or `default`; or an edge artifact (.edge): the head learns on its "
        "fake-quant encoder and --out is that artifact with the head (at --weight-bits, else 8)",
    )
    p.add_argument("--data", nargs="+", required=True, help="manifests (JSONL) with transcripts")
    p.add_argument(
        "--out",
        required=True,
        help="the new model folder (the model plus its phone head), or .edge file",
    )
    p.add_argument("--steps", type=int, default=2000)
    p.add_argument("--batch", type=int, default=48)
    p.add_argument(
        "--hidden", type=int, default=256, help="the head's width (64: a head of 0.03 M weights)"
    )
    p.add_argument("--kernel", type=int, default=5, help="its convolution's width in frames")
    p.add_argument(
        "--conv",
        choices=CONVS,
        default="full",
        help="separable: a depthwise convolution and a pointwise product (a head small enough "
        "for the edge artifact)",
    )
    p.add_argument(
        "--weight-bits",
        type=int,
        default=0,
        help="train through kernels on the levels the exporter stores at these bits "
        "(asr export --phone-bits); 0: float",
    )
    p.add_argument(
        "--teacher",
        help="a model with a phone head on the same encoder (or `default`) whose per-frame "
        "phone posteriors the new head also learns",
    )
    p.add_argument(
        "--distill-weight", type=float, default=1.0, help="the teacher's KL term per frame"
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=cmd_train_phones)
