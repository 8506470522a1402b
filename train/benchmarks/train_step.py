"""Benchmark of the jitted train step, per model size, on a synthetic batch.

Owns `python -m train.benchmarks.train_step [--sizes tiny small large] [--repeats N] [--json PATH]`.
For each size it builds the model, optimizer and jitted step exactly as `train.trainer.train`
does (`make_optimizer` and `make_train_step` with the size's recipe from `train.configs.RECIPES`,
the model config from `asr.models.config.CONFIGS` with the recipe's vocabulary size), feeds a
random batch of `frames` feature frames (10 ms each; no padding) and `labels` tokens per
utterance, with `min(frames_per_batch // frames, max_batch)` utterances (the recipe's budget at
that bucket length), and reports:

- `compile_s`: lowering and XLA compilation, timed on its own;
- `first_s`: the first execution after compilation (allocation, warm caches), not in the stats;
- `median_ms`, `min_ms`: over `repeats` steps, each timed to `block_until_ready`; the state is
  donated and threaded through, as in training;
- `audio_s_per_s`: audio seconds of the batch (B * frames * 10 ms) per second of median step;
- memory: XLA's compiled `memory_analysis()` (temporary, argument and output bytes, and their
  sum; `None` where the backend reports nothing) and, where the device reports it (GPUs),
  `device.memory_stats()["peak_bytes_in_use"]`, a process-wide high-water mark: with several
  sizes in one process only a growth means something, so run one size per process on a GPU
  for a clean number.

References: Graves 2012, "Sequence Transduction with Recurrent Neural Networks" (the loss the
step computes, `asr.lattice`); Loshchilov & Hutter 2019 (AdamW, `train.trainer.make_optimizer`).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time

import jax
import numpy as np

from asr.models.transducer import build_model, count_params
from train.configs import get_recipe
from train.trainer import init_state, make_optimizer, make_train_step

FRAME_S = 0.01  # one feature frame
MB = 2**20


def _cpu_name() -> str:
    """The CPU model (from /proc/cpuinfo on Linux), else what `platform` knows."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_info() -> dict:
    """The host and accelerator a measurement ran on."""
    device = jax.devices()[0]
    return {
        "processor": _cpu_name(),
        "cpu_count": os.cpu_count(),
        "platform": device.platform,
        "device_kind": device.device_kind,
        "jax": jax.__version__,
        "python": platform.python_version(),
    }


def synthetic_batch(
    batch: int, frames: int, labels: int, vocab: int, n_mels: int, seed: int = 0
) -> dict[str, np.ndarray]:
    """A training batch of random values: feats f32[B, frames, n_mels], feat_paddings
    f32[B, frames] (all 0.0 = no padding), labels int32[B, labels] in [2, vocab) (no blank,
    no unk), label_paddings f32[B, labels] (all 0.0)."""
    rng = np.random.default_rng(seed)
    return {
        "feats": rng.normal(size=(batch, frames, n_mels)).astype(np.float32),
        "feat_paddings": np.zeros((batch, frames), np.float32),
        "labels": rng.integers(2, vocab, size=(batch, labels)).astype(np.int32),
        "label_paddings": np.zeros((batch, labels), np.float32),
    }


def _compiled_memory(compiled) -> dict[str, float | None]:
    """Temporary / argument / output bytes of a compiled step, in MB (None where unreported)."""
    try:
        analysis = compiled.memory_analysis()
    except (NotImplementedError, RuntimeError):
        analysis = None
    out: dict[str, float | None] = {}
    for key, attr in (
        ("temp", "temp_size_in_bytes"),
        ("argument", "argument_size_in_bytes"),
        ("output", "output_size_in_bytes"),
    ):
        value = getattr(analysis, attr, None) if analysis is not None else None
        out[f"xla_{key}_MB"] = None if value is None else value / MB
    parts = [out[f"xla_{k}_MB"] for k in ("temp", "argument", "output")]
    out["xla_total_MB"] = None if any(p is None for p in parts) else sum(parts)
    return out


def device_peak_mb() -> float | None:
    """`peak_bytes_in_use` of the first device in MB, or None where it is not reported (CPU)."""
    stats = jax.devices()[0].memory_stats()
    if not stats or "peak_bytes_in_use" not in stats:
        return None
    return stats["peak_bytes_in_use"] / MB


def bench_size(
    size: str,
    repeats: int,
    frames: int = 512,
    labels: int = 32,
    batch: int | None = None,
    seed: int = 0,
) -> dict:
    """Builds and times the train step of recipe `size`; returns one result row (see module
    docstring). `batch` overrides the recipe's `min(frames_per_batch // frames, max_batch)`."""
    if repeats < 1 or frames < 1 or labels < 1:
        raise ValueError(
            f"repeats, frames and labels must be >= 1, got {repeats}, {frames}, {labels}"
        )
    cfg = get_recipe(size)
    mcfg = cfg.model_config()
    b = batch if batch is not None else max(1, min(cfg.frames_per_batch // frames, cfg.max_batch))
    model = build_model(mcfg)
    tx = make_optimizer(cfg)
    key = jax.random.PRNGKey(seed)
    state = init_state(model, tx, key)
    data = jax.device_put(synthetic_batch(b, frames, labels, mcfg.vocab_size, mcfg.n_mels, seed))
    step_fn = make_train_step(model, cfg, tx)

    t0 = time.perf_counter()
    compiled = step_fn.lower(state, data, key).compile()
    compile_s = time.perf_counter() - t0
    memory = _compiled_memory(compiled)

    t0 = time.perf_counter()
    state, metrics = compiled(state, data, key)
    jax.block_until_ready((state, metrics))
    first_s = time.perf_counter() - t0
    loss = float(metrics["loss"])

    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        state, metrics = compiled(state, data, key)
        jax.block_until_ready((state, metrics))
        times.append(time.perf_counter() - t0)
    median = statistics.median(times)
    return {
        "size": size,
        "params_M": count_params(state.params) / 1e6,
        "batch": b,
        "frames": frames,
        "labels": labels,
        "vocab": mcfg.vocab_size,
        "audio_s_per_batch": b * frames * FRAME_S,
        "repeats": repeats,
        "compile_s": compile_s,
        "first_s": first_s,
        "median_ms": median * 1e3,
        "min_ms": min(times) * 1e3,
        "audio_s_per_s": b * frames * FRAME_S / median,
        **memory,
        "device_peak_MB": device_peak_mb(),
        "loss": loss,
    }


def _fmt(x, spec: str) -> str:
    return "-" if x is None else format(x, spec)


HEADER = (
    f"{'size':<6} {'params':>7} {'B':>3} {'T':>5} {'U':>3} {'V':>4} | {'compile s':>9} "
    f"{'first s':>8} | {'median ms':>10} {'min ms':>9} {'audio s/s':>9} | "
    f"{'XLA temp':>9} {'arg':>7} {'out':>7} {'total MB':>9} {'dev peak':>9}"
)


def format_row(r: dict) -> str:
    return (
        f"{r['size']:<6} {r['params_M']:>6.2f}M {r['batch']:>3} {r['frames']:>5} "
        f"{r['labels']:>3} {r['vocab']:>4} | {r['compile_s']:>9.1f} {r['first_s']:>8.2f} | "
        f"{r['median_ms']:>10.1f} {r['min_ms']:>9.1f} {r['audio_s_per_s']:>9.1f} | "
        f"{_fmt(r['xla_temp_MB'], '9.1f')} {_fmt(r['xla_argument_MB'], '7.1f')} "
        f"{_fmt(r['xla_output_MB'], '7.1f')} {_fmt(r['xla_total_MB'], '9.1f')} "
        f"{_fmt(r['device_peak_MB'], '9.1f')}"
    )


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--sizes",
        nargs="+",
        default=["tiny", "small"],
        help="recipes in train.configs.RECIPES (default: tiny small)",
    )
    parser.add_argument("--repeats", type=int, default=3, help="timed steps per size")
    parser.add_argument("--frames", type=int, default=512, help="frames per utterance (10 ms)")
    parser.add_argument("--labels", type=int, default=32, help="tokens per utterance")
    parser.add_argument(
        "--batch",
        type=int,
        default=None,
        help="utterances per batch (default: the recipe's frame budget)",
    )
    parser.add_argument("--json", type=str, default=None, help="write the rows to this path")
    args = parser.parse_args(argv)

    info = machine_info()
    print("machine: " + ", ".join(f"{k}={v}" for k, v in info.items()))
    print(
        f"sizes: {' '.join(args.sizes)}; {args.frames} frames ({args.frames * FRAME_S:.2f} s) "
        f"and {args.labels} labels per utterance, no padding; batch = "
        f"{args.batch or 'min(frames_per_batch // frames, max_batch)'}; median/min of "
        f"{args.repeats} steps after compile and 1 warm-up step; memory in MB"
    )
    print(HEADER, flush=True)
    rows = []
    for size in args.sizes:
        row = bench_size(size, args.repeats, args.frames, args.labels, args.batch)
        rows.append(row)
        print(format_row(row), flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"machine": info, "rows": rows}, f, indent=2)
        print(f"wrote {args.json}")
    return rows


if __name__ == "__main__":
    main()
