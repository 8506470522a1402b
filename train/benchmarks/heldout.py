"""Models side by side on named test sets, with two noise checks: words written into noise, and
words after a long non-speech lead-in.

Owns `python -m train.benchmarks.heldout --models default runs/ft/model ... --set
NAME=MANIFEST ... [--noise-dir DIR] [--leadin NAME=MANIFEST] [--leadin-seconds 1.3]
[--noise-clips 200] [--beam 4] [--json PATH]`.

- `--set NAME=MANIFEST`: WER on text rows, keyword recall on keyword rows
  (`asr.recognizer.evaluate_manifest`), per model.
- `--noise-dir DIR`: `--noise-clips` clips of background noise with no speech, 1-4 s each
  (deterministic crops of the files in DIR joined end to end, at -50 to -20 dBFS RMS); reports
  the words each model writes per minute of noise (0 is right).
- `--leadin NAME=MANIFEST`: every row's audio with `--leadin-seconds` of noise from DIR put
  before it, at the level of the clip's own quietest 100 ms (room noise going on before the
  speaker talks, as in recordings made by a wake-word device); WER as for `--set`. The gap
  between a set and its lead-in version is what a lead-in costs.

Every number is measured in this run, on this machine; the table says what each cell is.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np

SR = 16000


def noise_clips(noise_dir: Path, n: int, seed: int = 0) -> list[np.ndarray]:
    """n clips of 1-4 s of noise from the files of noise_dir, deterministic in seed."""
    from asr.audio import load_audio

    files = sorted(p for p in noise_dir.iterdir() if p.suffix.lower() in (".flac", ".wav"))
    if not files:
        raise SystemExit(f"--noise-dir {noise_dir}: no .flac or .wav files")
    rng = np.random.default_rng(seed)
    cache: dict[Path, np.ndarray] = {}
    out = []
    for _ in range(n):
        need = int(rng.uniform(1.0, 4.0) * SR)
        parts, have = [], 0
        while have < need:
            f = files[int(rng.integers(len(files)))]
            if f not in cache:
                cache[f] = load_audio(f)
            parts.append(cache[f])
            have += len(cache[f])
        x = np.concatenate(parts)[:need].astype(np.float32)
        x = x - x.mean()
        rms = float(np.sqrt(np.mean(x**2))) or 1.0
        x = x * (10 ** (rng.uniform(-50, -20) / 20) / rms)
        out.append(np.clip(x, -1, 1).astype(np.float32))
    return out


def with_leadin(x: np.ndarray, noise: np.ndarray, seconds: float) -> np.ndarray:
    """x with `seconds` of `noise` before it, scaled to x's quietest 100 ms RMS."""
    n = int(seconds * SR)
    noise = np.resize(noise, n).astype(np.float32)
    hop = SR // 10
    frames = [x[i : i + hop] for i in range(0, max(1, len(x) - hop + 1), hop)]
    floor = min(float(np.sqrt(np.mean(f**2))) for f in frames if len(f)) or 1e-4
    rms = float(np.sqrt(np.mean(noise**2))) or 1.0
    lead = noise * (max(floor, 1e-4) / rms)
    ramp = np.linspace(1.0, 0.0, min(160, n), dtype=np.float32)  # 10 ms into the clip's noise
    lead[n - len(ramp) :] *= ramp
    return np.concatenate([lead, x]).astype(np.float32)


def leadin_rows(rows: list[dict], noise: list[np.ndarray], seconds: float, folder: Path):
    import soundfile as sf

    from asr.audio import load_audio

    out = []
    for i, r in enumerate(rows):
        p = folder / f"{i:05d}.flac"
        x = with_leadin(load_audio(r["audio"]), noise[i % len(noise)], seconds)
        sf.write(str(p), x, SR, subtype="PCM_16", format="FLAC")
        out.append(dict(r, audio=str(p), duration=len(x) / SR))
    return out


def main(argv: list[str] | None = None) -> int:
    from asr.manifest import named_paths, read_manifest
    from asr.model_io import load_model
    from asr.recognizer import DecodeSettings, Recognizer, evaluate_manifest

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", nargs="+", required=True)
    p.add_argument("--set", action="append", default=[], metavar="NAME=MANIFEST")
    p.add_argument("--leadin", action="append", default=[], metavar="NAME=MANIFEST")
    p.add_argument("--leadin-seconds", type=float, default=1.3)
    p.add_argument("--noise-dir", default=None)
    p.add_argument("--noise-clips", type=int, default=200)
    p.add_argument("--beam", type=int, default=4)
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    sets = {k: read_manifest(v) for k, v in named_paths(args.set, "--set").items()}
    noise = None
    if args.noise_dir:
        noise = noise_clips(Path(args.noise_dir), args.noise_clips)
    tmp = tempfile.TemporaryDirectory()
    leadins = named_paths(args.leadin, "--leadin")
    if leadins and noise is None:
        raise SystemExit("--leadin needs --noise-dir")
    for name, path in leadins.items():
        folder = Path(tmp.name) / name
        folder.mkdir()
        sets[f"{name}+lead{args.leadin_seconds:g}s"] = leadin_rows(
            read_manifest(path), noise, args.leadin_seconds, folder
        )
    results: dict[str, dict] = {}
    t0 = time.perf_counter()
    for spec in args.models:
        rec = Recognizer(load_model(spec), DecodeSettings(method="beam", beam=args.beam))
        res = results.setdefault(spec, {})
        for name, rows in sets.items():
            ev = evaluate_manifest(rec, rows, pairs=0)
            res[name] = {
                k: ev[k] for k in ("wer", "words", "keyword_recall", "keywords", "utterances")
            }
        if noise is not None:
            hyps = rec.recognize(noise)
            words = sum(len(h[0].text.split()) if h else 0 for h in hyps)
            minutes = sum(len(x) for x in noise) / SR / 60
            res["noise"] = {"words_per_minute": words / minutes, "minutes": minutes}
        print(f"{spec}: done ({time.perf_counter() - t0:.0f} s)", flush=True)
    cols = list(sets) + (["noise"] if noise is not None else [])
    print("\n| model | " + " | ".join(cols) + " |")
    print("|---|" + "---|" * len(cols))
    for spec, res in results.items():
        cells = []
        for c in cols:
            r = res[c]
            if c == "noise":
                cells.append(f"{r['words_per_minute']:.1f} words/min")
            elif r["wer"] is not None:
                cells.append(f"{100 * r['wer']:.1f}% WER")
            else:
                cells.append(f"{100 * r['keyword_recall']:.1f}% recall")
        print(f"| {spec} | " + " | ".join(cells) + " |")
    sizes = {k: len(v) for k, v in sets.items()}
    print(f"\nrows per set: {sizes}; beam {args.beam}")
    if args.json:
        Path(args.json).write_text(json.dumps({"sizes": sizes, "results": results}, indent=1))
    tmp.cleanup()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
