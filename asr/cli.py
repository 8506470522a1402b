"""The `asr` command: thin argument parsing over library functions.

  asr transcribe --model MODEL AUDIO...     one line of text per file (--nbest K, --json,
                                            --context NAMES.txt to bias toward the user's names)
  asr eval --model MODEL --manifest FILE    WER (text rows) and keyword recall (keyword rows),
                                            RTF (--by FIELD: per speaker/domain/...; --details F;
                                            unreadable audio is left out and reported, or an
                                            error with --fail-on-unreadable; rows' `context`
                                            lists bias decoding and give context_wer;
                                            encoder MACs per second of audio, and a
                                            branching encoder's share of expensive frames)
  asr transcribe|eval ... --bits B [--act-bits A] [--small-bits S]
                                            run with B-bit weights and A-bit activations
                                            (post-training quantization; asr.models.quant)
  asr plot attention --model M --audio F --context NAMES.txt -o out.png
                                            the biasing network's attention map (PNG)
  asr plot branches --model M --audio F -o out.png
                                            a branching encoder's choice per frame (PNG)
  asr plot sparsity --workdir W -o out.png  share of zero weights per layer over training
  asr plot weights --before M --after M --bits B -o out.png
                                            weight histograms in units of the level step
  asr corpus ... / asr train ... / asr demo  contributed by the `train` package

Subcommands of other packages are found through the `asr.commands` entry-point group, so this
package never imports `train` (ARCHITECTURE.md: dependencies point train -> asr); one that fails
to load is skipped with a warning.

Errors, for every subcommand: bad arguments exit 2 with argparse's usage message naming the flag,
the value and the rule; bad input (a ValueError: missing files, damaged manifests) exits 2 with
`asr CMD: error: message`; anything else exits 1 with one line `asr CMD: error: Type: message
(input: ...)`; `asr --debug ...` (or `--debug` after the command) prints the traceback too;
Ctrl-C exits 130.
"""

from __future__ import annotations

import argparse
import json
import sys
import traceback
from importlib.metadata import entry_points
from pathlib import Path


def _at_least(low, kind: type = int):
    """argparse type: a finite int (or float) >= `low`; errors read "argument --beam: must be
    >= 1, got 0"."""
    what = "an integer" if kind is int else "a number"

    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be {what}, got {text!r}") from None
        if not (value >= low and abs(value) < float("inf")):
            finite = "" if kind is int else "a finite number "
            raise argparse.ArgumentTypeError(f"must be {finite}>= {low}, got {text.strip()}")
        return value

    parse.__name__ = f"{kind.__name__} >= {low}"
    return parse


def _context_list(args):
    """The --context file as a ContextList (None without the flag); ContextError is a
    ValueError, so a bad file exits 2 naming the file and line."""
    if not getattr(args, "context", None):
        return None
    from asr.context import read_context_file

    return read_context_file(args.context)


def _add_decode_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--model",
        default="default",
        help="'default' (shipped), a model folder, or a training work folder",
    )
    p.add_argument("--method", choices=["beam", "greedy"], default="beam")
    p.add_argument("--beam", type=_at_least(1), default=4, help="beam width (default 4)")
    p.add_argument(
        "--beam-symbols",
        type=_at_least(1),
        default=2,
        metavar="N",
        help="beam search: at most N tokens per audio frame (default 2; 1 is modified beam "
        "search, cheaper, but fast speech loses letters)",
    )
    p.add_argument(
        "--batch-size", type=_at_least(1), default=8, help="utterances per batch (default 8)"
    )
    g = p.add_mutually_exclusive_group()
    g.add_argument(
        "--context",
        metavar="FILE",
        help="names to bias recognition toward (contacts, devices): one phrase a line, "
        "optionally 'phrase<TAB>weight'"
        + ("; replaces each manifest row's 'context' list" if p.prog.endswith("eval") else ""),
    )
    g.add_argument(
        "--no-context",
        action="store_true",
        help="no biasing: ignore context lists"
        + (
            " (rows' 'context' lists still mark the words context_wer scores)"
            if p.prog.endswith("eval")
            else ""
        ),
    )
    p.add_argument(
        "--bits",
        type=int,
        choices=range(2, 17),
        metavar="B",
        help="run with B-bit weights: post-training quantization of a float model, one step per "
        "output channel (a compressed model runs at the bits it was trained for without it)",
    )
    p.add_argument(
        "--act-bits",
        type=int,
        choices=[0, *range(2, 17)],
        metavar="A",
        help="with --bits: activation bits at every matrix-product input (default 8; 0 float)",
    )
    p.add_argument(
        "--small-bits",
        type=int,
        choices=range(2, 17),
        metavar="S",
        help="with --bits: weight bits of the small layers (first convolution, depthwise "
        "convolutions, vocabulary outputs: asr.models.quant.SMALL_KERNELS; default: as --bits)",
    )
    p.add_argument(
        "--context-boost",
        type=_at_least(0.0, float),
        default=0.5,
        metavar="B",
        help="shallow fusion: log-score per token of a partly matched phrase, taken back if the "
        "match fails (default 0.5; 0 turns shallow fusion off, leaving the model's attention "
        "biasing network, if it has one)",
    )
    p.add_argument(
        "--context-lm-weight",
        type=_at_least(0.0, float),
        default=None,
        metavar="L",
        help="shallow fusion: share of the internal LM's cost of a listed phrase's tokens given "
        "back (default: DecodeSettings, asr.recognizer: 0, off; the README measures what it "
        "does to names the model never heard, and its harm)",
    )
    g = p.add_mutually_exclusive_group()
    g.add_argument(
        "--phonetic-margin",
        type=float,
        default=None,
        metavar="M",
        help="a model with a phone head (asr train-phones): a listed name the phones hear "
        "replaces words of the best hypothesis when it fits the audio better by more than M "
        "nats, counting --phonetic-transducer-weight times the transducer's own log-likelihood "
        "change (default: DecodeSettings, asr.recognizer: 1; lower finds more names and changes "
        "more requests without one)",
    )
    g.add_argument(
        "--no-phonetic", action="store_true", help="no phonetic second pass (phone head unused)"
    )
    p.add_argument(
        "--phonetic-transducer-weight",
        type=_at_least(0.0, float),
        default=None,
        metavar="W",
        help="the phonetic second pass: weight of the transducer's log-likelihood change from "
        "the best hypothesis to the name's (default: DecodeSettings, asr.recognizer: 0.2; 0: the "
        "phones alone decide)",
    )
    p.add_argument(
        "--phonetic-min-spot",
        type=float,
        default=None,
        metavar="S",
        help="the phonetic second pass tries only names whose phones match their best span to "
        "within S nats per phone of the frame-best phones (default: any name)",
    )


def _check_args(p: argparse.ArgumentParser, args) -> None:
    """Rules between flags, as argument errors (exit 2) before anything is loaded."""
    nbest = getattr(args, "nbest", 1)
    if nbest > 1 and getattr(args, "method", "beam") == "greedy":
        p.error(
            f"argument --nbest: {nbest} needs --method beam (greedy search gives one hypothesis)"
        )
    if nbest > 1 and nbest > args.beam:
        p.error(
            f"argument --nbest: {nbest} is more than --beam {args.beam} (beam search keeps at "
            "most --beam hypotheses: raise --beam or lower --nbest)"
        )


def _recognizer(args):
    from asr.model_io import load_model
    from asr.recognizer import DecodeSettings, Recognizer

    settings = DecodeSettings(
        method=args.method,
        beam=args.beam,
        beam_symbols_per_frame=args.beam_symbols,
        batch_size=args.batch_size,
        context_boost=args.context_boost,
        context_attention=not args.no_context,
        **({} if args.context_lm_weight is None else {"context_lm_weight": args.context_lm_weight}),
        **({"phonetic_margin": None} if args.no_phonetic else {}),
        **({} if args.phonetic_margin is None else {"phonetic_margin": args.phonetic_margin}),
        **(
            {}
            if args.phonetic_transducer_weight is None
            else {"phonetic_transducer_weight": args.phonetic_transducer_weight}
        ),
        **({} if args.phonetic_min_spot is None else {"phonetic_min_spot": args.phonetic_min_spot}),
    )
    loaded = load_model(args.model)
    for flag, value in (
        ("--phonetic-margin", args.phonetic_margin),
        ("--phonetic-transducer-weight", args.phonetic_transducer_weight),
        ("--phonetic-min-spot", args.phonetic_min_spot),
    ):
        if value is not None and loaded.phones is None:
            raise ValueError(f"{flag}: {args.model} has no phone head (asr train-phones adds one)")
    for flag, value in (
        ("--phonetic-transducer-weight", args.phonetic_transducer_weight),
        ("--phonetic-min-spot", args.phonetic_min_spot),
    ):
        if args.no_phonetic and value is not None:
            raise ValueError(f"{flag}: goes with the phonetic pass, not --no-phonetic")
    small = getattr(args, "small_bits", None)
    if small is not None and args.bits is None:
        raise ValueError("--small-bits: goes with --bits (the other layers' weight bits)")
    if (
        args.bits is not None or args.act_bits is not None
    ) and loaded.model.quant.describe().startswith("edge"):
        raise ValueError(
            f"--bits/--act-bits: {args.model} is an edge artifact; its bits are fixed at export "
            f"({loaded.model.quant.describe()}): export again with other --bits"
        )
    if args.bits is not None or args.act_bits is not None:
        from asr.model_io import quantized
        from asr.models.quant import QuantPolicy

        act = 8 if args.act_bits is None else args.act_bits
        bits = args.bits if args.bits is not None else loaded.model.quant.weight_bits
        if small is None and args.bits is None:  # --act-bits alone keeps the trained mix
            small = loaded.model.quant.small_bits
        loaded = quantized(loaded, QuantPolicy(bits, act, small or 0))
    return Recognizer(loaded, settings)


def cmd_transcribe(args) -> int:
    context = _context_list(args)
    rec = _recognizer(args)
    status = 0
    for path, res in rec.transcribe_files(args.audio, nbest=args.nbest, context=context):
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


def _details_path(path: str) -> Path:
    """The --details file, its folders made; checked before the (long) evaluation runs."""
    p = Path(path)
    if p.is_dir():
        raise ValueError(f"--details {p}: is a folder, expected a file to write (JSONL)")
    try:
        p.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ValueError(f"--details {p}: cannot make its folder ({e.strerror or e})") from None
    return p


def cmd_eval(args) -> int:
    from asr.manifest import read_manifest
    from asr.recognizer import evaluate_manifest

    rows = read_manifest(args.manifest)
    if args.limit:
        rows = rows[: args.limit]
    for field in args.by:
        if not any(field in r for r in rows):
            raise ValueError(f"--by {field}: no row of {args.manifest} has that field")
    details = _details_path(args.details) if args.details else None
    context = _context_list(args)
    recognizer = _recognizer(args)
    res = evaluate_manifest(
        recognizer,
        rows,
        progress=sys.stderr.isatty(),
        by=tuple(args.by),
        details=details is not None,
        unreadable="fail" if args.fail_on_unreadable else "skip",
        use_context=not args.no_context,
        context=context,
    )
    res["manifest"] = str(args.manifest)
    res["quant"] = recognizer.loaded.model.quant.describe()  # "float", "w4a8", ...
    if details is not None:
        with open(details, "w") as f:
            for row in res.pop("utterances_detail"):
                f.write(json.dumps(row) + "\n")
        res["details"] = str(details)
    n_bad = res.get("unreadable", 0)
    if n_bad:  # left out of every number: say so, whatever the output format
        bad = [r["audio"] for r in res.get("unreadable_rows", [])]
        listed = ", ".join(bad[:3]) + (", ..." if len(bad) > 3 else "")
        print(
            f"asr eval: warning: {n_bad} of {res['utterances'] + n_bad} rows unreadable, left out "
            f"of the scores: {listed} (--json lists them all with their errors; "
            "--fail-on-unreadable makes this an error)",
            file=sys.stderr,
        )
    if args.json:
        print(json.dumps(res))
        return 0
    lines = []
    if res.get("wer") is not None:
        n_text = res["utterances"] - res.get("keyword_rows", 0)
        lines.append(f"WER {100 * res['wer']:.2f}% over {n_text} utterances ({res['words']} words)")
    if res.get("keyword_recall") is not None:
        found = ""
        if "keywords" in res and "keywords_found" in res:
            found = f" ({res['keywords_found']} of {res['keywords']} keywords)"
        lines.append(
            f"keyword recall {100 * res['keyword_recall']:.1f}% over "
            f"{res.get('keyword_rows', res['utterances'])} utterances{found}"
        )
    if res.get("context_wer") is not None:
        how = "with" if res.get("context_used", True) else "without"
        lines.append(
            f"context WER {100 * res['context_wer']:.2f}% over {res['context_words']} words of "
            f"listed names ({res['context_rows']} rows with a list, decoded {how} biasing)"
        )
    if not lines:
        lines.append(f"nothing scored over {res['utterances']} utterances")
    lines[-1] += f", RTF {res['rtf']:.3f} on {res['device']}"
    if res["quant"].startswith("edge"):
        lines[-1] += f" ({res['quant']}: integer execution on the emulated edge processor)"
    elif res["quant"] != "float":
        lines[-1] += f" ({res['quant']}: fake-quantized weights and activations)"
    if res.get("encoder_macs_per_second") is not None:
        line = f"encoder {res['encoder_macs_per_second'] / 1e6:.2f} M MACs per second of audio"
        if res.get("expensive_frame_share") is not None:
            line += (
                f", expensive branch on {100 * res['expensive_frame_share']:.1f}% of encoder frames"
            )
        lines.append(line)
    print("\n".join(lines))
    for field, groups in res.get("by", {}).items():
        print(f"\nWER by {field} (worst first):")
        width = max(len(str(k)) for k in groups)
        recall = any(g.get("keyword_recall") is not None for g in groups.values())
        for k, g in groups.items():
            wer = "   n/a" if g.get("wer") is None else f"{100 * g['wer']:5.1f}%"
            line = (
                f"  {k!s:<{width}}  {wer}  {g.get('words', 0):6d} words  {g['utterances']:5d} utts"
            )
            if recall:
                kr = g.get("keyword_recall")
                line += "  keyword recall " + ("  n/a" if kr is None else f"{100 * kr:5.1f}%")
            print(line)
    if details is not None:
        print(f"\nper-utterance results: {details}")
    return 0


def cmd_plot_attention(args) -> int:
    from asr.model_io import load_model
    from asr.plot import plot_attention

    context = _context_list(args)
    loaded = load_model(args.model)
    if getattr(loaded.model.config, "bias_dim", 0) <= 0:
        raise ValueError(
            f"--model {args.model}: this model has no attention biasing network (its config "
            "has bias_dim 0); train one with --set bias_dim=... to plot its attention"
        )
    print(plot_attention(loaded, args.audio, list(context.phrases), args.out))
    return 0


def cmd_plot_branches(args) -> int:
    from asr.model_io import load_model
    from asr.plot import is_branching, plot_branches

    loaded = load_model(args.model)
    if not is_branching(loaded.model.config):
        raise ValueError(
            f"--model {args.model}: this model has no branching encoder (its config has encoder "
            f"{getattr(loaded.model.config, 'encoder', 'transformer')!r}); train one with "
            "--set encoder=branching to plot its branch choices"
        )
    print(plot_branches(loaded, args.audio, args.out))
    return 0


def cmd_plot_sparsity(args) -> int:
    from asr.plot import plot_sparsity

    print(plot_sparsity(args.workdir, args.out))
    return 0


def cmd_plot_weights(args) -> int:
    from asr.model_io import load_model
    from asr.plot import plot_weight_histograms

    before, after = load_model(args.before), load_model(args.after)
    labels = (f"before ({Path(args.before).name})", f"after ({Path(args.after).name})")
    print(
        plot_weight_histograms(
            before.variables["params"],
            after.variables["params"],
            args.bits,
            args.out,
            layers=args.layer or None,
            labels=labels,
        )
    )
    return 0


def _subparsers(parser: argparse.ArgumentParser):
    """Every parser below `parser` (subcommands, and theirs: `asr corpus synth`)."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for p in action.choices.values():
                yield p
                yield from _subparsers(p)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="asr", description="On-device speech recognition.")
    parser.add_argument(
        "--debug", action="store_true", help="on an error, print the full traceback"
    )
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("transcribe", help="print the text of audio files")
    _add_decode_args(p)
    p.add_argument("audio", nargs="+", help="audio files (wav, flac, ...; any rate)")
    p.add_argument(
        "--nbest",
        type=_at_least(1),
        default=1,
        metavar="K",
        help="hypotheses per file, best first (default 1; at most --beam; beam search only)",
    )
    p.add_argument("--json", action="store_true", help="one JSON object per file")
    p.set_defaults(func=cmd_transcribe)

    p = sub.add_parser("eval", help="word error rate on a manifest")
    _add_decode_args(p)
    p.add_argument(
        "--manifest",
        required=True,
        help="JSONL manifest: audio and text (WER) or keywords (keyword recall)",
    )
    p.add_argument(
        "--limit", type=_at_least(0), default=0, help="first N utterances only (default 0: all)"
    )
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
        help="write each utterance (manifest row, normalized ref and hyp, edit counts) to this "
        "JSONL (folders are made as needed)",
    )
    p.add_argument(
        "--fail-on-unreadable",
        action="store_true",
        help="rows whose audio cannot be read are an error (default: left out of the scores, "
        "counted and listed with a warning)",
    )
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("plot", help="pictures of what a model does")
    plots = p.add_subparsers(dest="plot", required=True)
    q = plots.add_parser(
        "attention",
        help="the biasing network's attention over a context list, frame by frame (PNG)",
    )
    q.add_argument("--model", default="default", help="a model with an attention biasing network")
    q.add_argument("--audio", required=True, help="an audio file")
    q.add_argument("--context", required=True, metavar="FILE", help="names, one a line")
    q.add_argument("-o", "--out", required=True, help="PNG file to write")
    q.set_defaults(func=cmd_plot_attention)
    q = plots.add_parser(
        "branches",
        help="a branching encoder's choice of branch, frame by frame, over the spectrogram (PNG)",
    )
    q.add_argument("--model", default="default", help="a model with a branching encoder")
    q.add_argument("--audio", required=True, help="an audio file")
    q.add_argument("-o", "--out", required=True, help="PNG file to write")
    q.set_defaults(func=cmd_plot_branches)
    q = plots.add_parser(
        "sparsity",
        help="a sparsified training run: share of zero weights per layer against step (PNG)",
    )
    q.add_argument(
        "--workdir",
        required=True,
        help="a training work folder (trained with --set sparsity=...) or its metrics.jsonl",
    )
    q.add_argument("-o", "--out", required=True, help="PNG file to write")
    q.set_defaults(func=cmd_plot_sparsity)
    q = plots.add_parser(
        "weights",
        help="two models' weights in units of their quantization step, per kernel (PNG)",
    )
    q.add_argument("--before", required=True, help="a model (default, a model or work folder)")
    q.add_argument("--after", required=True, help="a model of the same architecture")
    q.add_argument(
        "--bits",
        type=_at_least(2),
        default=4,
        help="quantizer width whose levels are drawn (default 4; at most 16)",
    )
    q.add_argument(
        "--layer",
        action="append",
        default=[],
        metavar="NAME",
        help="a kernel to show, e.g. joiner/out; repeatable (default: up to 4 representative "
        "ones: an attention qkv, a feed-forward, a convolution, the joiner out)",
    )
    q.add_argument("-o", "--out", required=True, help="PNG file to write")
    q.set_defaults(func=cmd_plot_weights)

    for ep in entry_points(group="asr.commands"):
        try:
            ep.load()(sub)
        except Exception as e:  # a broken plug-in must not take `asr transcribe` down with it
            print(
                f"asr: warning: subcommand {ep.name!r} ({ep.value}) not available: "
                f"{type(e).__name__}: {_one_line(e)}",
                file=sys.stderr,
            )
    for p in _subparsers(parser):  # `asr eval --debug` works too
        try:
            p.add_argument(
                "--debug",
                action="store_true",
                default=argparse.SUPPRESS,
                help="on an error, print the full traceback",
            )
        except argparse.ArgumentError:  # a subcommand with its own --debug keeps it
            pass
    return parser


def _one_line(e: BaseException) -> str:
    return " ".join(ln.strip() for ln in str(e).splitlines() if ln.strip())


def _input_of(args) -> str | None:
    """What the command was reading, for error messages: its manifest, audio or data."""
    for attr in ("manifest", "audio", "data", "src"):
        value = getattr(args, attr, None)
        if value:
            if isinstance(value, (list, tuple)):
                value = " ".join(map(str, value[:3])) + (" ..." if len(value) > 3 else "")
            return str(value)
    return None


def main(argv: list[str] | None = None) -> int:
    """Runs `asr ...`; returns the exit status.

    0 success; 1 an unexpected error (one line `asr CMD: error: Type: message (input: ...)`, or
    the traceback with `--debug`) or files that could not be read; 2 bad arguments or bad input
    (a ValueError: message without traceback); 130 interrupted.
    """
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
        _check_args(_subparsers_by_name(parser)[args.command], args)
    except SystemExit as e:  # argparse: --help (0) and argument errors (2), message printed
        return e.code if isinstance(e.code, int) else (0 if e.code is None else 2)
    try:
        return args.func(args) or 0
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as e:
        if args.debug:
            traceback.print_exc()
        if isinstance(e, ValueError):  # bad input: a clear message, no traceback
            print(f"asr {args.command}: error: {e}", file=sys.stderr)
            return 2
        if not args.debug:
            msg = _one_line(e)
            where = _input_of(args)
            hint = (f"input: {where}; " if where else "") + "asr --debug shows the traceback"
            print(
                f"asr {args.command}: error: {type(e).__name__}{': ' + msg if msg else ''} ({hint})",
                file=sys.stderr,
            )
        return 1


def _subparsers_by_name(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


if __name__ == "__main__":
    sys.exit(main())
