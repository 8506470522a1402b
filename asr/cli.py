"""The `asr` command: thin argument parsing over library functions.

  asr transcribe --model MODEL AUDIO...     one line of text per file (--nbest K, --json)
  asr eval --model MODEL --manifest FILE    one JSON object: wer, utterances, rtf, settings
                                            (--by FIELD: WER per speaker/domain/...; --details F)
  asr corpus ... / asr train ... / asr demo  contributed by the `train` package

Subcommands of other packages are found through the `asr.commands` entry-point group, so this
package never imports `train` (ARCHITECTURE.md: dependencies point train -> asr).
"""

from __future__ import annotations

import argparse
import json
import sys
from importlib.metadata import entry_points


def _add_decode_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--model",
        default="default",
        help="'default' (shipped), a model folder, or a training work folder",
    )
    p.add_argument("--method", choices=["beam", "greedy"], default="beam")
    p.add_argument("--beam", type=int, default=4, help="beam width (default 4)")
    p.add_argument(
        "--beam-symbols",
        type=int,
        default=2,
        metavar="N",
        help="beam search: at most N tokens per audio frame (default 2; 1 is modified beam "
        "search, cheaper, but fast speech loses letters)",
    )
    p.add_argument("--batch-size", type=int, default=8)


def _recognizer(args):
    from asr.model_io import load_model
    from asr.recognizer import DecodeSettings, Recognizer

    settings = DecodeSettings(
        method=args.method,
        beam=args.beam,
        beam_symbols_per_frame=args.beam_symbols,
        batch_size=args.batch_size,
    )
    return Recognizer(load_model(args.model), settings)


def cmd_transcribe(args) -> int:
    rec = _recognizer(args)
    status = 0
    for path, res in rec.transcribe_files(args.audio, nbest=args.nbest):
        if isinstance(res, Exception):
            print(f"error: {res}", file=sys.stderr)
            status = 1
            continue
        if args.json:
            print(
                json.dumps(
                    {
                        "audio": path,
                        "text": res[0].text if res else "",
                        "nbest": [{"text": h.text, "score": h.score} for h in res],
                    }
                )
            )
        elif args.nbest > 1:
            for rank, h in enumerate(res, 1):
                print(f"{path}\t{rank}\t{h.score:.3f}\t{h.text}")
        else:
            print(res[0].text if res else "")
    return status


def cmd_eval(args) -> int:
    from asr.manifest import read_manifest
    from asr.recognizer import evaluate_manifest

    rows = read_manifest(args.manifest)
    if args.limit:
        rows = rows[: args.limit]
    for field in args.by:
        if not any(field in r for r in rows):
            raise ValueError(f"--by {field}: no row of {args.manifest} has that field")
    res = evaluate_manifest(
        _recognizer(args),
        rows,
        progress=sys.stderr.isatty(),
        by=tuple(args.by),
        details=bool(args.details),
    )
    res["manifest"] = str(args.manifest)
    if args.details:
        with open(args.details, "w") as f:
            for row in res.pop("utterances_detail"):
                f.write(json.dumps(row) + "\n")
        res["details"] = str(args.details)
    if args.json:
        print(json.dumps(res))
        return 0
    print(
        f"WER {100 * res['wer']:.2f}% over {res['utterances']} utterances "
        f"({res['words']} words), RTF {res['rtf']:.3f} on {res['device']}"
    )
    for field, groups in res.get("by", {}).items():
        print(f"\nWER by {field} (worst first):")
        width = max(len(k) for k in groups)
        for k, g in groups.items():
            wer = "   n/a" if g["wer"] is None else f"{100 * g['wer']:5.1f}%"
            print(f"  {k:<{width}}  {wer}  {g['words']:6d} words  {g['utterances']:5d} utts")
    if args.details:
        print(f"\nper-utterance results: {args.details}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="asr", description="On-device speech recognition.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("transcribe", help="print the text of audio files")
    _add_decode_args(p)
    p.add_argument("audio", nargs="+", help="audio files (wav, flac, ...; any rate)")
    p.add_argument("--nbest", type=int, default=1, help="hypotheses per file")
    p.add_argument("--json", action="store_true", help="one JSON object per file")
    p.set_defaults(func=cmd_transcribe)

    p = sub.add_parser("eval", help="word error rate on a manifest")
    _add_decode_args(p)
    p.add_argument("--manifest", required=True, help="JSONL manifest with audio and text")
    p.add_argument("--limit", type=int, default=0, help="first N utterances only")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument(
        "--by",
        action="append",
        default=[],
        metavar="FIELD",
        help="also break the WER down by this manifest field (speaker, domain, ...); repeatable",
    )
    p.add_argument(
        "--details",
        metavar="FILE",
        help="write each utterance (manifest row, normalized ref and hyp, edit counts) to this JSONL",
    )
    p.set_defaults(func=cmd_eval)

    for ep in entry_points(group="asr.commands"):
        ep.load()(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args) or 0
    except ValueError as e:  # bad input: a clear message, no traceback
        print(f"asr {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
