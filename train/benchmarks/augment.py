"""Benchmark of the waveform augmentations of `train/augment.py`, one utterance at a time.

Owns `python -m train.benchmarks.augment [--seconds S] [--repeats N] [--json PATH]`. On a
synthetic S-second 16 kHz signal (an amplitude-modulated tone plus faint noise) it times each
augmentation on its own at a mid-range setting (speed 1.1, pitch +1 semitone, VTLP 1.05,
reverberation rt60 0.5 s, noise at 15 dB SNR from the synthetic bank) and `random_augment` with
its default probabilities (a fresh seed per repeat, so the median is over the mix of steps a
training utterance gets). Each row is the median, minimum and maximum of N repeats after one
warm-up call, in milliseconds, and the real-time factor of the median (ms per second of audio).
It prints the machine (CPU count, load average, Python and NumPy versions) so numbers from a busy
machine can be told apart.

This replaces a wall-clock assertion that used to sit in `tests/test_augment.py` (the median of
`random_augment` on 3 s under 50 ms): timings depend on the machine and its load, so they are
measured here and the test checks only what the function returns.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from collections.abc import Callable

import numpy as np

from train import augment

SR = augment.SAMPLE_RATE


def signal(seconds: float, seed: int = 0) -> np.ndarray:
    """f32[seconds * 16000]: a 220 Hz tone modulated at 3 Hz, plus noise at -34 dB."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * SR)) / SR
    x = 0.5 * np.sin(2 * np.pi * 220 * t) * (1 + 0.5 * np.sin(2 * np.pi * 3 * t))
    return (x + 0.01 * rng.standard_normal(t.size)).astype(np.float32)


def variants(x: np.ndarray) -> dict[str, Callable[[int], np.ndarray]]:
    """name -> fn(repeat index) -> augmented x."""
    bank = augment.NoiseBank(None)
    return {
        "speed_perturb(1.1)": lambda i: augment.speed_perturb(x, 1.1),
        "pitch_shift(+1)": lambda i: augment.pitch_shift(x, 1.0),
        "vtlp(1.05)": lambda i: augment.vtlp(x, 1.05),
        "reverberate(0.5 s)": lambda i: augment.reverberate(x, np.random.default_rng(i), 0.5),
        "add_noise(15 dB)": lambda i: augment.add_noise(
            x, bank.crop(np.random.default_rng(i), x.size), 15.0
        ),
        "random_augment": lambda i: augment.random_augment(x, np.random.default_rng(i), bank),
    }


def time_fn(fn: Callable[[int], np.ndarray], repeats: int) -> list[float]:
    fn(repeats)  # warm-up (FFT plans, caches), with a seed the timed calls do not use
    times = []
    for i in range(repeats):
        start = time.perf_counter()
        fn(i)
        times.append((time.perf_counter() - start) * 1e3)
    return times


def machine_info() -> dict:
    return {
        "cpu_count": os.cpu_count(),
        "load_avg_1min": round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None,
        "processor": platform.processor() or platform.machine(),
        "python": platform.python_version(),
        "numpy": np.__version__,
    }


def run(seconds: float, repeats: int) -> list[dict]:
    x = signal(seconds)
    rows = []
    for name, fn in variants(x).items():
        times = time_fn(fn, repeats)
        median = statistics.median(times)
        row = {
            "step": name,
            "seconds": seconds,
            "repeats": repeats,
            "median_ms": median,
            "min_ms": min(times),
            "max_ms": max(times),
            "ms_per_audio_s": median / seconds,
        }
        rows.append(row)
        print(
            f"{name:<20} {median:9.2f} {row['min_ms']:9.2f} {row['max_ms']:9.2f} "
            f"{row['ms_per_audio_s']:9.2f}",
            flush=True,
        )
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=3.0, help="signal length (default 3)")
    parser.add_argument("--repeats", type=int, default=30, help="timed calls per row (default 30)")
    parser.add_argument("--json", type=str, default=None, help="write results to this path")
    args = parser.parse_args(argv)
    if args.seconds <= 0 or args.repeats < 1:
        raise SystemExit(f"expected --seconds > 0 and --repeats >= 1, got {args}")
    info = machine_info()
    print("machine: " + ", ".join(f"{k}={v}" for k, v in info.items()))
    print(
        f"signal: {args.seconds:g} s at {SR} Hz; median / min / max of {args.repeats} calls "
        "after 1 warm-up; ms/audio s = median per second of signal"
    )
    print(f"{'step':<20} {'median ms':>9} {'min ms':>9} {'max ms':>9} {'ms/audio s':>9}")
    rows = run(args.seconds, args.repeats)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"machine": info, "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
