"""`asr corpus`, `asr train` and `asr demo`: the training side of the command line.

Registered into the `asr` command through the `asr.commands` entry-point group (pyproject.toml).
Each function parses arguments and calls library code that tests import directly.
"""

from __future__ import annotations

import argparse
import json
import time

from train.demo import add_demo_parser

LOADERS = ("fsdd", "speech_commands", "librispeech", "kaldi", "jsonl", "speech_to_intent")


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
    s.add_argument(
        "--free-sentences",
        type=float,
        default=0.0,
        metavar="SHARE",
        help="share of train/dev utterances that say sentences outside the grammar's templates "
        "(random word strings, edited requests, names and numbers anywhere, paraphrases), so "
        "the predictor does not learn the templates (default 0; the test split is unaffected)",
    )
    s.add_argument(
        "--test-only",
        action="store_true",
        help="synthesize only the test split (held-out voices and names) of the corpus these "
        "arguments make, file for file, and write test.jsonl alone: a test set in minutes",
    )
    s.set_defaults(func=cmd_synth)

    _add_world_parser(csub)
    i = csub.add_parser("import", help="turn a real-speech folder into a manifest")
    i.add_argument("kind", choices=LOADERS)
    i.add_argument("src", help="corpus folder (or manifest file for jsonl)")
    i.add_argument("--out", required=True, help="manifest to write (JSONL)")
    i.add_argument("--split", default=None, help="keep only this split (train, dev, test)")
    i.add_argument(
        "--vocabulary",
        default=None,
        metavar="FILE",
        help="speech_to_intent only: keep the keywords all of whose words are in this word list "
        "(e.g. shared/data/requests/vocabulary.txt), and the rows left with one",
    )
    i.set_defaults(func=cmd_import)
    _add_kokoro_parser(csub)
    _add_pseudo_parser(csub)


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
        test_only=args.test_only,
        free_sentences=args.free_sentences,
    )
    print(f"wrote {manifest} in {time.perf_counter() - t0:.0f} s")
    return 0


def _add_world_parser(csub) -> None:
    w = csub.add_parser(
        "world",
        help="new voices for every row of a manifest by WORLD-vocoder resynthesis (pitch, "
        "intonation, vocal-tract length, breathiness)",
    )
    w.add_argument("manifest", help="source manifest (JSONL): real or synthesized speech")
    w.add_argument("--out", required=True, help="output folder (audio/, all.jsonl, {split}.jsonl)")
    w.add_argument("--variants", type=int, default=4, help="voices per row (default 4)")
    w.add_argument("--seed", type=int, default=0)
    w.add_argument("--workers", type=int, default=2)
    w.add_argument("--limit", type=int, default=None, metavar="N", help="only the first N rows")
    w.add_argument(
        "--f0-method",
        choices=("harvest", "dio"),
        default="harvest",
        help="F0 analysis: harvest (default; keeps voicing in noise) or dio (~3x faster at 4 "
        "voices per row; loses voicing in strong noise, e.g. at 5 dB SNR)",
    )
    w.add_argument("--no-progress", action="store_true")
    w.set_defaults(func=cmd_world)


def cmd_world(args) -> int:
    from train.corpus.world import world_corpus

    t0 = time.perf_counter()
    manifest = world_corpus(
        args.manifest,
        args.out,
        variants=args.variants,
        seed=args.seed,
        workers=args.workers,
        limit=args.limit,
        progress=not args.no_progress,
        f0_method=args.f0_method,
    )
    print(f"wrote {manifest} in {time.perf_counter() - t0:.0f} s")
    return 0


def _add_kokoro_parser(csub) -> None:
    k = csub.add_parser(
        "kokoro",
        help="synthesize requests in English with Kokoro-82M and blends of its voices (a second "
        "voice family; the test split holds out a whole base voice)",
    )
    k.add_argument("--out", required=True, help="output folder (audio/ and *.jsonl manifests)")
    k.add_argument("--utterances", type=int, required=True, help="how many utterances")
    k.add_argument("--seed", type=int, default=0)
    k.add_argument(
        "--split",
        choices=("train", "test"),
        default="train",
        help="train: training voices and names (train.jsonl, dev.jsonl); test: held-out voices "
        "and names (test.jsonl)",
    )
    k.add_argument(
        "--noise-dir",
        default=None,
        help="folder of noise clips (e.g. speech_commands/_silence_); else synthetic",
    )
    k.add_argument("--workers", type=int, default=2)
    k.add_argument("--no-progress", action="store_true")
    k.set_defaults(func=cmd_kokoro)


def cmd_kokoro(args) -> int:
    from train.corpus.kokoro import synthesize_kokoro_corpus

    t0 = time.perf_counter()
    manifest = synthesize_kokoro_corpus(
        args.out,
        utterances=args.utterances,
        seed=args.seed,
        split=args.split,
        noise_dir=args.noise_dir,
        workers=args.workers,
        progress=not args.no_progress,
    )
    print(f"wrote {manifest} in {time.perf_counter() - t0:.0f} s")
    return 0


def _add_pseudo_parser(csub) -> None:
    q = csub.add_parser(
        "pseudo-label",
        help="transcribe untranscribed audio with a teacher model, for teacher-student training "
        "(rows with keywords keep only a hypothesis that contains them all)",
    )
    q.add_argument(
        "source",
        help="a folder of untranscribed audio (.flac/.wav, searched recursively), or a manifest "
        "(JSONL) whose rows carry keywords (kept only with a hypothesis containing them) or a "
        "text (replaced)",
    )
    q.add_argument("--model", default="default", help="the teacher (path or 'default')")
    q.add_argument("--out", required=True, help="manifest to write (JSONL)")
    q.add_argument("--nbest", type=int, default=8, help="hypotheses searched for the keywords")
    q.add_argument("--beam", type=int, default=8)
    q.add_argument(
        "--min-score-per-second",
        type=float,
        default=None,
        metavar="LOGP",
        help="leave out rows without keywords whose best hypothesis scores below this "
        "log-probability per second of audio (default: keep all)",
    )
    q.set_defaults(func=cmd_pseudo)


def cmd_pseudo(args) -> int:
    from pathlib import Path

    from asr.manifest import read_manifest, write_manifest
    from asr.model_io import load_model
    from train.corpus.loaders import AUDIO_SUFFIXES
    from train.pseudo import pseudo_label

    src = Path(args.source)
    if src.is_dir():
        files = sorted(p for p in src.rglob("*") if p.suffix.lower() in AUDIO_SUFFIXES)
        if not files:
            raise ValueError(f"{src}: no .flac or .wav files in this folder")
        rows = [{"audio": str(p.resolve())} for p in files]
    else:
        rows = read_manifest(src)
    out, counts = pseudo_label(
        load_model(args.model),
        rows,
        nbest=args.nbest,
        beam=args.beam,
        min_score_per_second=args.min_score_per_second,
        progress=True,
    )
    write_manifest(out, args.out)
    print(f"wrote {args.out}: " + ", ".join(f"{k} {v}" for k, v in counts.items()))
    return 0


def load_real(kind: str, src: str, vocabulary: str | None = None) -> list[dict]:
    from train.corpus import loaders

    if vocabulary is not None:
        if kind != "speech_to_intent":
            raise ValueError(f"--vocabulary: only for speech_to_intent, not {kind}")
        return loaders.load_speech_to_intent(src, vocabulary=vocabulary)
    fn = {
        "fsdd": loaders.load_fsdd,
        "speech_commands": loaders.load_speech_commands,
        "librispeech": loaders.load_librispeech,
        "kaldi": loaders.load_kaldi,
        "jsonl": loaders.load_jsonl,
        "speech_to_intent": loaders.load_speech_to_intent,
    }[kind]
    return fn(src)


def cmd_import(args) -> int:
    from asr.manifest import write_manifest

    rows = load_real(args.kind, args.src, args.vocabulary)
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


class _HelpWithKeys(argparse.Action):
    """`asr train --help`: the usual help, then every `--set` key with its type, range,
    description and value in each recipe (imported only when asked: the recipes import flax)."""

    def __init__(
        self, option_strings, dest=argparse.SUPPRESS, default=argparse.SUPPRESS, help=None
    ):
        super().__init__(option_strings, dest=dest, default=default, nargs=0, help=help)

    def __call__(self, parser, namespace, values, option_string=None):
        from train.configs import describe_fields

        parser.epilog = describe_fields()
        parser.print_help()
        parser.exit()


def add_train_command(sub) -> None:
    p = sub.add_parser(
        "train",
        help="train a transducer (resumes in an existing work folder)",
        add_help=False,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("-h", "--help", action=_HelpWithKeys, help="show this help and the --set keys")
    p.add_argument("--config", default="small", help="recipe: tiny, small or large")
    p.add_argument("--data", nargs="+", required=True, help="manifests (JSONL)")
    p.add_argument("--workdir", required=True, help="checkpoints, metrics and the final model")
    p.add_argument(
        "--set",
        nargs="*",
        default=[],
        metavar="KEY=VALUE",
        help="override recipe fields, e.g. --set steps=500 peak_lr=1e-3 (keys listed below); "
        "resuming a work folder refuses a changed recipe, except for the fields that only "
        "change logging, evaluation, checkpoints and data loading",
    )
    p.add_argument("--noise-dir", default=None, help="noise clips for augmentation")
    p.add_argument(
        "--time-limit",
        type=float,
        default=None,
        metavar="MINUTES",
        help="stop with a checkpoint and a model folder after this many minutes (resumable)",
    )
    p.add_argument(
        "--skip-bad-rows",
        action="store_true",
        help="train without the manifest rows that fail the check made before training "
        "(missing or unreadable audio, empty text, ...) instead of stopping with the list",
    )
    p.add_argument(
        "--extra-fields",
        nargs="+",
        default=[],
        metavar="NAME",
        help="manifest fields of your own to accept (e.g. accent); other fields that are not "
        "the documented ones are reported as problems, since a misspelt one would be unused",
    )
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=cmd_train)

    add_demo_parser(sub)
    from train.phone_head import add_train_phones_parser

    add_train_phones_parser(sub)


def cmd_train(args) -> int:
    from asr.manifest import read_manifest
    from train.configs import get_recipe
    from train.trainer import train

    cfg = get_recipe(args.config).override(args.set)
    rows, names = [], []
    for m in args.data:
        r, n = read_manifest(m, with_lines=True)
        rows += r
        names += n
    res = train(
        cfg,
        rows,
        args.workdir,
        noise_dir=args.noise_dir,
        progress=not args.no_progress,
        time_limit=None if args.time_limit is None else 60.0 * args.time_limit,
        row_names=names,
        skip_bad_rows=args.skip_bad_rows,
        extra_fields=tuple(args.extra_fields),
    )
    print(json.dumps({"workdir": args.workdir, **res}))
    return 0
