"""Benchmark of the transducer loss: time-chunked joint (asr/lattice.py) vs. the naive full joint.

Owns `python -m train.benchmarks.loss [--quick] [--json PATH]`. For each (B, T, U, V) of a grid it
times a jitted forward + backward pass (after a warm-up call, median of N repeats) of
`sum(loss)` with respect to the encoder output, predictor output and joint weights, through a
joint with one hidden layer (tanh(enc + pred) @ W, hidden 256), for:

- `naive`: the whole [B, T, U+1, V] logits and log-softmax materialized, then the two columns
  gathered and `rnnt_loss_from_logprobs` applied;
- `chunked(auto)` and `chunked(N)`: `rnnt_loss` with `time_chunk=None` (automatic) and N frames.

Peak memory is read from XLA's compiled memory analysis (temporary buffers, the part that depends
on the loss implementation; arguments and outputs are the same for every variant) and, on a GPU,
from `device.memory_stats()["peak_bytes_in_use"]` (a process-wide high-water mark, so only its
growth between variants says something). It prints the machine, sizes, repeats, median ms and
MB per variant, and chunked/naive ratios.

References:
  Graves 2012, "Sequence Transduction with Recurrent Neural Networks", arXiv:1211.3711.
  Li et al. 2019, "Improving RNN Transducer Modeling for End-to-End Speech Recognition"
    (function merging: never keep the 4-D log-softmax; here combined with chunking over time).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from asr.lattice import auto_time_chunk, rnnt_loss, rnnt_loss_from_logprobs

HIDDEN = 256
FULL_GRID = [(8, t, u, v) for t in (100, 200, 400) for u in (20, 50, 100) for v in (128, 256, 512)]
QUICK_GRID = [(4, 50, 10, 64), (8, 100, 20, 128), (8, 200, 50, 256)]


def joint(w: jax.Array, enc: jax.Array, pred: jax.Array) -> jax.Array:
    """enc f32[B, t, 1, H], pred f32[B, 1, U+1, H], w f32[H, V] -> logits f32[B, t, U+1, V]."""
    return jnp.tanh(enc + pred) @ w


def naive_loss(w, enc, enc_pad, pred, labels, label_pad):
    """The full-joint baseline: materializes [B, T, U+1, V] logits and log-softmax."""
    u = labels.shape[1]
    logp = jax.nn.log_softmax(joint(w, enc[:, :, None], pred[:, None]), axis=-1)
    blank = logp[..., 0]  # -> [B, T, U+1]
    label = jnp.take_along_axis(logp[:, :, :u], labels[:, None, :, None], axis=-1)[..., 0]
    return rnnt_loss_from_logprobs(blank, label, enc_pad, label_pad)


def chunked_loss(time_chunk: int | None) -> Callable:
    def loss(w, enc, enc_pad, pred, labels, label_pad):
        joint_fn = lambda e, p: joint(w, e, p)  # noqa: E731
        return rnnt_loss(joint_fn, enc, enc_pad, pred, labels, label_pad, time_chunk=time_chunk)

    return loss


def make_step(loss_fn: Callable) -> Callable:
    def step(w, enc, enc_pad, pred, labels, label_pad):
        def total(w, enc, pred):
            return loss_fn(w, enc, enc_pad, pred, labels, label_pad).sum()

        return jax.value_and_grad(total, argnums=(0, 1, 2))(w, enc, pred)

    return jax.jit(step)


def make_inputs(b: int, t: int, u: int, v: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    t_lens = rng.integers(t // 2, t + 1, size=b)
    u_lens = rng.integers(u // 2, u + 1, size=b)
    return (
        jnp.asarray(rng.normal(size=(HIDDEN, v)) / np.sqrt(HIDDEN), jnp.float32),
        jnp.asarray(rng.normal(size=(b, t, HIDDEN)), jnp.float32),
        jnp.asarray(np.arange(t)[None] >= t_lens[:, None], jnp.float32),
        jnp.asarray(rng.normal(size=(b, u + 1, HIDDEN)), jnp.float32),
        jnp.asarray(rng.integers(1, v, size=(b, u)), jnp.int32),
        jnp.asarray(np.arange(u)[None] >= u_lens[:, None], jnp.float32),
    )


def compiled_temp_mb(step: Callable, args) -> float | None:
    """XLA's temporary-buffer bytes for the compiled step, in MB (None if not reported)."""
    analysis = step.lower(*args).compile().memory_analysis()
    if analysis is None:
        return None
    temp = getattr(analysis, "temp_size_in_bytes", None)
    return None if temp is None else temp / 2**20


def device_peak_mb() -> float | None:
    stats = jax.devices()[0].memory_stats()
    if not stats or "peak_bytes_in_use" not in stats:
        return None
    return stats["peak_bytes_in_use"] / 2**20


def time_step(step: Callable, args, repeats: int) -> tuple[float, float]:
    """(median ms over `repeats` runs after a warm-up, the summed loss)."""
    loss, _ = jax.block_until_ready(step(*args))  # compile and warm up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(step(*args))
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times), float(loss)


def machine_info() -> dict:
    device = jax.devices()[0]
    return {
        "platform": device.platform,
        "device_kind": device.device_kind,
        "jax": jax.__version__,
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
    }


def run(grid, repeats: int, fixed_chunk: int) -> list[dict]:
    rows = []
    for b, t, u, v in grid:
        args = make_inputs(b, t, u, v)
        variants = {
            "naive": naive_loss,
            "chunked(auto)": chunked_loss(None),
            f"chunked({fixed_chunk})": chunked_loss(fixed_chunk),
        }
        row = {"B": b, "T": t, "U": u, "V": v, "auto_chunk": auto_time_chunk(b, t, u, v)}
        losses = []
        for name, loss_fn in variants.items():
            step = make_step(loss_fn)
            row[f"{name} MB"] = compiled_temp_mb(step, args)
            row[f"{name} ms"], loss = time_step(step, args, repeats)
            row[f"{name} dev_peak_MB"] = device_peak_mb()
            losses.append(loss)
        row["max_rel_diff"] = max(abs(x - losses[0]) / abs(losses[0]) for x in losses[1:])
        rows.append(row)
        print_row(row, fixed_chunk)
    return rows


def fmt(x, spec: str) -> str:
    return "-" if x is None else format(x, spec)


def ratio(a, b) -> str:
    return "-" if a is None or b is None or b == 0 else f"{a / b:.2f}"


def print_header(fixed_chunk: int) -> None:
    c = f"c{fixed_chunk}"
    print(
        f"{'B':>3} {'T':>4} {'U':>4} {'V':>4} {'auto':>4} | {'naive ms':>9} {'auto ms':>9} "
        f"{c + ' ms':>9} | {'naive MB':>9} {'auto MB':>9} {c + ' MB':>9} | "
        f"{'auto/naive':>10} {c + '/naive':>10} (ms, MB) | loss rel diff"
    )


def print_row(row: dict, fixed_chunk: int) -> None:
    fixed = f"chunked({fixed_chunk})"
    print(
        f"{row['B']:>3} {row['T']:>4} {row['U']:>4} {row['V']:>4} {row['auto_chunk']:>4} | "
        f"{fmt(row['naive ms'], '9.1f')} {fmt(row['chunked(auto) ms'], '9.1f')} "
        f"{fmt(row[fixed + ' ms'], '9.1f')} | {fmt(row['naive MB'], '9.1f')} "
        f"{fmt(row['chunked(auto) MB'], '9.1f')} {fmt(row[fixed + ' MB'], '9.1f')} | "
        f"{ratio(row['chunked(auto) ms'], row['naive ms']):>4},"
        f"{ratio(row['chunked(auto) MB'], row['naive MB']):>5} "
        f"{ratio(row[fixed + ' ms'], row['naive ms']):>4},"
        f"{ratio(row[fixed + ' MB'], row['naive MB']):>5}          | "
        f"{row['max_rel_diff']:.1e}",
        flush=True,
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small grid (seconds on a CPU)")
    parser.add_argument("--repeats", type=int, default=None, help="timed runs (default 5/3)")
    parser.add_argument("--time-chunk", type=int, default=16, help="fixed-chunk variant")
    parser.add_argument("--json", type=str, default=None, help="write results to this path")
    args = parser.parse_args(argv)

    grid = QUICK_GRID if args.quick else FULL_GRID
    repeats = args.repeats or (5 if args.quick else 3)
    info = machine_info()
    print("machine: " + ", ".join(f"{k}={v}" for k, v in info.items()))
    print(
        f"joint: tanh(enc + pred) @ W, hidden {HIDDEN}; step: jit(value_and_grad) w.r.t. enc, "
        f"pred, W; median of {repeats} runs after 1 warm-up; MB = XLA compiled temp buffers; "
        f"auto = automatic time_chunk; c{args.time_chunk} = time_chunk {args.time_chunk}"
    )
    print_header(args.time_chunk)
    rows = run(grid, repeats, args.time_chunk)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"machine": info, "repeats": repeats, "rows": rows}, f, indent=1)
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
