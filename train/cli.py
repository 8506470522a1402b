"""`asr corpus`, `asr train` and `asr demo`: the training side of the command line.

Registered into the `asr` command through the `asr.commands` entry-point group (pyproject.toml).
Each function parses arguments and calls library code that tests import directly.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

LOADERS = ("fsdd", "speech_commands", "librispeech", "kaldi", "jsonl")


def add_corpus_command(sub) -> None:
    p = sub.add_parser("corpus", help="synthesize the default corpus or import real speech")
    csub = p.add_subparsers(dest="corpus_command", required=True)

    s = csub.add_parser("synth", help="synthesize voice-assistant requests with eSpeak NG")
    s.add_argument("--out", required=True, help="output folder (audio/ and *.jsonl manifests)")
    s.add_argument("--hours", type=float, default=1.0, help="hours of audio (default 1)")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument(
        "--wake-word-prob",
        type=float,
        default=0.3,
        help="share of utterances starting with the wake word 'computer'",
    )
    s.add_argument(
        "--noise-dir",
        default=None,
        help="folder of noise clips (e.g. speech_commands/_silence_); else synthetic",
    )
    s.add_argument("--workers", type=int, default=2)
    s.add_argument(
        "--random-voices",
        type=float,
        default=0.0,
        metavar="SHARE",
        help="share of train/dev utterances spoken by generated voice variants (default 0; "
        "the test split keeps the held-out shipped voices)",
    )
    s.add_argument(
        "--random-variants", type=int, default=200, help="how many variants to generate (1-200)"
    )
    s.add_argument(
        "--wide-names",
        type=float,
        default=0.0,
        metavar="SHARE",
        help="share of spoken contact and device names (train/dev) drawn from a list of 22,133 "
        "names from 23 locales instead of the 273 core training names (default 0)",
    )
    s.set_defaults(func=cmd_synth)

    i = csub.add_parser("import", help="turn a real-speech folder into a manifest")
    i.add_argument("kind", choices=LOADERS)
    i.add_argument("src", help="corpus folder (or manifest file for jsonl)")
    i.add_argument("--out", required=True, help="manifest to write (JSONL)")
    i.add_argument("--split", default=None, help="keep only this split (train, dev, test)")
    i.set_defaults(func=cmd_import)


def cmd_synth(args) -> int:
    from train.corpus.synth import synthesize_corpus

    t0 = time.perf_counter()
    manifest = synthesize_corpus(
        args.out,
        hours=args.hours,
        seed=args.seed,
        wake_word_prob=args.wake_word_prob,
        noise_dir=args.noise_dir,
        workers=args.workers,
        random_voices=args.random_voices,
        random_variants_count=args.random_variants,
        wide_names=args.wide_names,
    )
    print(f"wrote {manifest} in {time.perf_counter() - t0:.0f} s")
    return 0


def load_real(kind: str, src: str) -> list[dict]:
    from train.corpus import loaders

    fn = {
        "fsdd": loaders.load_fsdd,
        "speech_commands": loaders.load_speech_commands,
        "librispeech": loaders.load_librispeech,
        "kaldi": loaders.load_kaldi,
        "jsonl": loaders.load_jsonl,
    }[kind]
    return fn(src)


def cmd_import(args) -> int:
    from asr.manifest import write_manifest

    rows = load_real(args.kind, args.src)
    if args.split:
        rows = [r for r in rows if r.get("split") == args.split]
    if not rows:
        raise ValueError(
            f"no utterances in {args.src}" + (f" for split {args.split}" if args.split else "")
        )
    write_manifest(rows, args.out)
    splits = {}
    for r in rows:
        splits[r.get("split")] = splits.get(r.get("split"), 0) + 1
    print(f"wrote {len(rows)} utterances to {args.out} {splits}")
    return 0


def add_train_command(sub) -> None:
    p = sub.add_parser("train", help="train a transducer (resumes in an existing work folder)")
    p.add_argument("--config", default="small", help="recipe: tiny, small or large")
    p.add_argument("--data", nargs="+", required=True, help="manifests (JSONL)")
    p.add_argument("--workdir", required=True, help="checkpoints, metrics and the final model")
    p.add_argument(
        "--set",
        nargs="*",
        default=[],
        metavar="KEY=VALUE",
        help="override recipe fields, e.g. --set steps=500 peak_lr=1e-3",
    )
    p.add_argument("--noise-dir", default=None, help="noise clips for augmentation")
    p.add_argument(
        "--time-limit",
        type=float,
        default=None,
        metavar="MINUTES",
        help="stop with a checkpoint and a model folder after this many minutes (resumable)",
    )
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=cmd_train)

    d = sub.add_parser("demo", help="synthesize, train tiny briefly, transcribe held-out speech")
    d.add_argument("--workdir", default="runs/demo")
    d.add_argument("--hours", type=float, default=0.12)
    d.add_argument("--steps", type=int, default=200)
    d.add_argument("--utterances", type=int, default=12, help="held-out utterances to show")
    d.add_argument(
        "--real",
        default="../shared/data",
        help="folder with fsdd/ and speech_commands/ to also show real speech (skipped if absent)",
    )
    d.set_defaults(func=cmd_demo)


def cmd_train(args) -> int:
    from asr.manifest import read_manifest
    from train.configs import get_recipe
    from train.trainer import train

    cfg = get_recipe(args.config).override(args.set)
    rows = [r for m in args.data for r in read_manifest(m)]
    res = train(
        cfg,
        rows,
        args.workdir,
        noise_dir=args.noise_dir,
        progress=not args.no_progress,
        time_limit=None if args.time_limit is None else 60.0 * args.time_limit,
    )
    print(json.dumps({"workdir": args.workdir, **res}))
    return 0


def cmd_demo(args) -> int:
    """The README's first command: everything a newcomer needs to see it work."""
    from asr.manifest import read_manifest
    from asr.model_io import load_model
    from asr.recognizer import DecodeSettings, Recognizer, evaluate_manifest
    from train.configs import get_recipe
    from train.corpus.synth import synthesize_corpus
    from train.trainer import train

    wd = Path(args.workdir)
    print(f"[1/3] synthesizing {args.hours} h of voice-assistant requests with eSpeak NG")
    synthesize_corpus(wd / "corpus", hours=args.hours, seed=0, workers=2)
    rows = read_manifest(wd / "corpus" / "train.jsonl") + read_manifest(wd / "corpus" / "dev.jsonl")
    print(
        f"[2/3] training the tiny model for {args.steps} steps on {len(rows)} utterances "
        f"(a short demonstration run; the shipped model trained far longer)"
    )
    cfg = get_recipe("tiny").replace(steps=args.steps)
    res = train(cfg, rows, wd / "tiny")
    print(
        f"      tiny model after {args.steps} steps: loss {res.get('loss', float('nan')):.2f}, "
        f"dev WER {100 * res.get('dev_wer', float('nan')):.1f}%"
    )
    test = read_manifest(wd / "corpus" / "test.jsonl")[: args.utterances]
    print(
        f"[3/3] the shipped default model on {len(test)} held-out utterances "
        "(voices and names never seen in training)"
    )
    rec = Recognizer(load_model("default"), DecodeSettings(method="beam", beam=4))
    _show(evaluate_manifest(rec, test, pairs=len(test)))
    real = _real_samples(Path(args.real), args.utterances)
    if real:
        print(f"      and on {len(real)} recordings of real people (FSDD and Speech Commands test)")
        _show(evaluate_manifest(rec, real, pairs=len(real)))
    return 0


def _show(out: dict) -> None:
    for s in out["pairs"]:
        print(f"  REF: {s['ref']}\n  HYP: {s['hyp']}")
    print(
        f"WER {100 * out['wer']:.2f}% ({out['words']} words), real-time factor "
        f"{out['rtf']:.3f} on {out['device']}"
    )


def _real_samples(root: Path, n: int) -> list[dict]:
    """n test recordings spread over FSDD's official test split and Speech Commands' speaker-
    disjoint test split, when the folders exist."""
    from train.corpus.loaders import load_fsdd, load_speech_commands

    rows = []
    if (root / "fsdd").is_dir():
        test = [r for r in load_fsdd(root / "fsdd", vad=False) if r["split"] == "test"]
        rows += test[:: max(1, len(test) // (n // 2 or 1))][: n // 2]
    if (root / "speech_commands").is_dir():
        sc = load_speech_commands(root / "speech_commands", vad=False)
        test = [r for r in sc if r["split"] == "test"]
        rows += test[:: max(1, len(test) // (n - n // 2 or 1))][: n - n // 2]
    return rows
