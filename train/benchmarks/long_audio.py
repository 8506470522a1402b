"""Benchmark of long inputs: peak memory and real-time factor against audio length.

Owns `python -m train.benchmarks.long_audio [--model MODEL] [--seconds 10 60 180 600]
[--kinds speech noise silence] [--repeats 3] [--budget 60] [--api transcribe_files|recognize]
[--json PATH]`.

For each kind and length it writes one 16 kHz float WAV file and measures it in a fresh
subprocess (so each peak is that case's alone):

- speech: requests sampled by `train.corpus.grammar.sample_request` (seed 0, held-out names)
  spoken by `train.corpus.espeak.synthesize(text, voice="en-us", rate_wpm=170)`, each followed
  by 0.25 s of digital silence, concatenated until the length is reached (so a case ends at an
  utterance boundary and its reference text is known);
- noise: white Gaussian noise, standard deviation 0.05 (-26 dBFS), seed 0;
- silence: zeros.

In the child: the model is loaded (`asr.model_io.load_model`), a `Recognizer` built with the
default `DecodeSettings` (beam 4, 2 symbols per frame, batch 8; inputs over 20 s cut into
segments of at most 20 s, and at every pause of 0.2 s or more; shorter inputs decoded whole),
and the file decoded `repeats` times through `Recognizer.transcribe_files` (reading, checking,
segmentation, features and batched decoding; `evaluate_manifest` adds only scoring on top) or,
with `--api recognize`, `Recognizer.recognize` on the samples read once. Each repeat's RTF
is the recognizer's `Timing` (compute seconds over audio seconds, each shape's one-time
compilation excluded and reported as `compile_s`); the median is reported. Repeats stop early
once `budget` seconds of compute are spent (at least one). Memory is the child's peak resident
set size at the end: `VmHWM` of /proc/self/status (its own peak since exec) and
`resource.getrusage(RUSAGE_SELF).ru_maxrss` (which on Linux also keeps the launching process's
resident size at the fork: an upper bound), and VmHWM after loading the model and reading the
audio (before any decoding) for reference. WER (speech) is against
the concatenated request texts, via `asr.text.word_error_rate`; for noise and silence the
number of hypothesized words is reported (0 is right).

References: Graves 2012, "Sequence Transduction with Recurrent Neural Networks" (the model);
Rabiner & Sambur 1975 (energy-based endpointing, which `asr.segment` adapts to place cuts).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

SR = 16000
GAP_S = 0.25  # silence after each spoken request
KB = 1024


def speech(seconds: float, seed: int = 0) -> tuple[np.ndarray, str]:
    """Spoken requests concatenated up to `seconds` -> (f32[N] 16 kHz, reference text)."""
    from asr.audio import resample
    from train.corpus.espeak import synthesize
    from train.corpus.grammar import sample_request
    from train.corpus.names import HELDOUT_NAMES

    rng = np.random.default_rng(seed)
    parts, texts, n = [], [], 0
    while n < seconds * SR:
        text = sample_request(rng, names=HELDOUT_NAMES).text
        x, sr = synthesize(text, voice="en-us", rate_wpm=170)
        x = resample(np.asarray(x, np.float32), sr, SR)
        parts += [x, np.zeros(int(GAP_S * SR), np.float32)]
        texts.append(text)
        n += len(x) + int(GAP_S * SR)
    return np.concatenate(parts), " ".join(texts)


def make_case(kind: str, seconds: float, folder: Path) -> tuple[Path, str | None]:
    """Writes the case's audio to `folder` -> (wav path, reference text for speech)."""
    import soundfile as sf

    ref = None
    if kind == "speech":
        x, ref = speech(seconds)
    elif kind == "noise":
        x = (0.05 * np.random.default_rng(0).standard_normal(int(seconds * SR))).astype(np.float32)
    elif kind == "silence":
        x = np.zeros(int(seconds * SR), np.float32)
    else:
        raise ValueError(f"kind must be speech, noise or silence, got {kind!r}")
    path = folder / f"{kind}_{seconds:g}s.wav"
    sf.write(path, x, SR, subtype="FLOAT")
    return path, ref


def peak_rss_mb() -> float:
    """This process's `ru_maxrss` in MiB (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / KB


def own_peak_rss_mb() -> float | None:
    """VmHWM of /proc/self/status in MiB: the peak of this program's own memory since exec
    (Linux; None elsewhere). `ru_maxrss` also keeps the launching process's resident size at the
    fork, which the kernel carries across exec."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / KB
    except OSError:
        pass
    return None


def child(args) -> dict:
    """One case in this process (see module docstring) -> one JSON-able dict."""
    from asr.audio import load_audio
    from asr.model_io import load_model
    from asr.recognizer import DecodeSettings, Recognizer, Timing

    rec = Recognizer(load_model(args.model), DecodeSettings())
    x = load_audio(args.child) if args.api == "recognize" else None
    rss_loaded = own_peak_rss_mb()
    rtfs, hyp, compile_s, compute = [], "", 0.0, 0.0
    for _ in range(args.repeats):
        rec.timing = Timing(seen=rec.timing.seen)
        if args.api == "recognize":
            (res,) = rec.recognize([x])
        else:
            ((_, res),) = list(rec.transcribe_files([args.child]))
        hyp = res[0].text if res else ""
        rtfs.append(rec.timing.rtf)
        compile_s += rec.timing.compile_s
        compute += rec.timing.compute_s
        if compute > args.budget:
            break
    audio = load_audio(args.child)
    return {
        "audio_s": len(audio) / SR,
        "segments": len(rec.segment(audio)),
        "rss_loaded_mb": rss_loaded,
        "peak_rss_mb": peak_rss_mb(),
        "own_peak_rss_mb": own_peak_rss_mb(),
        "rtf": statistics.median(rtfs),
        "rtfs": rtfs,
        "repeats": len(rtfs),
        "compile_s": compile_s,
        "hyp": hyp,
    }


def _mb(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.0f}"


def run_case(path: Path, args) -> dict:
    cmd = [sys.executable, "-m", "train.benchmarks.long_audio", "--child", str(path)]
    cmd += ["--model", args.model, "--repeats", str(args.repeats), "--budget", str(args.budget)]
    cmd += ["--api", args.api]
    out = subprocess.run(cmd, capture_output=True, text=True)
    if out.returncode != 0:
        return {"error": (out.stderr.strip().splitlines() or ["(no output)"])[-1]}
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="default", help="model spec for asr.model_io")
    parser.add_argument("--seconds", type=float, nargs="+", default=[10, 60, 180, 600])
    parser.add_argument("--kinds", nargs="+", default=["speech", "noise", "silence"])
    parser.add_argument("--repeats", type=int, default=3, help="decodes per case at most")
    parser.add_argument("--budget", type=float, default=60.0, help="compute seconds per case")
    parser.add_argument(
        "--api", choices=["transcribe_files", "recognize"], default="transcribe_files"
    )
    parser.add_argument("--json", default=None, help="also write the rows to this path")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(child(args)))
        return []

    from asr.text import normalize_text, word_error_rate
    from train.benchmarks.train_step import machine_info

    info = machine_info()
    print("machine: " + ", ".join(f"{k}={v}" for k, v in info.items()))
    print(
        f"load: os.getloadavg()={tuple(round(v, 1) for v in os.getloadavg())} at the start "
        f"(the CPU may be shared with other jobs)"
    )
    from asr.recognizer import DecodeSettings

    print(
        f"model {args.model}, DecodeSettings() = {DecodeSettings().to_dict()}; api {args.api}; "
        f"one fresh subprocess per case; RTF = median over up to {args.repeats} decodes "
        f"(stopping after {args.budget:g} s of compute), compile excluded; memory of the child: "
        f"peak MB = VmHWM of /proc/self/status at the end (its own peak resident set), "
        f"loaded MB = the same after model load and audio read, maxrss MB = "
        f"getrusage(RUSAGE_SELF).ru_maxrss at the end (also counts this launcher's resident "
        f"size at the fork, carried across exec by Linux)"
    )
    head = (
        f"{'kind':<8} {'target s':>8} {'audio s':>8} {'segs':>5} | {'loaded MB':>9} "
        f"{'peak MB':>8} {'maxrss MB':>9} | {'RTF':>7} {'reps':>4} {'x 10 s':>6} {'compile s':>9} | result"
    )
    print(head, flush=True)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for kind in args.kinds:
            base = None
            for seconds in args.seconds:
                path, ref = make_case(kind, seconds, Path(tmp))
                r = {"kind": kind, "target_s": seconds, **run_case(path, args)}
                path.unlink()
                rows.append(r)
                if "error" in r:
                    print(f"{kind:<8} {seconds:>8g}  error: {r['error']}", flush=True)
                    continue
                base = r["rtf"] if base is None else base
                r["rtf_vs_first"] = r["rtf"] / base
                if ref is not None:
                    r["wer"] = word_error_rate([ref], [r["hyp"]])["wer"]
                    result = f"WER {100 * r['wer']:.1f}% ({len(normalize_text(ref).split())} words)"
                else:
                    r["hyp_words"] = len(normalize_text(r["hyp"]).split())
                    result = f"{r['hyp_words']} words hypothesized"
                print(
                    f"{kind:<8} {seconds:>8g} {r['audio_s']:>8.1f} {r['segments']:>5} | "
                    f"{_mb(r['rss_loaded_mb']):>9} {_mb(r['own_peak_rss_mb']):>8} "
                    f"{r['peak_rss_mb']:>9.0f} | {r['rtf']:>7.4f} "
                    f"{r['repeats']:>4} {r['rtf_vs_first']:>6.2f} {r['compile_s']:>9.1f} | {result}",
                    flush=True,
                )
    print(f"x 10 s: RTF over the RTF of the first length ({args.seconds[0]:g} s) of the same kind")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"machine": info, "rows": rows}, f, indent=2)
        print(f"wrote {args.json}")
    return rows


if __name__ == "__main__":
    main()
