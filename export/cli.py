"""`asr export`: write an edge artifact, report its size, and make or apply delta updates.

  asr export --model CHECKPOINT --bits 8|4 [--small-bits 8] [--sparsity S] -o model.edge [--json]
  asr export report model.edge [--json]
  asr export diff OLD.edge NEW.edge -o update.patch [--json]
  asr export apply OLD.edge update.patch -o NEW.edge

Registered through the `asr.commands` entry-point group (pyproject.toml): `asr` never imports
`export`. Thin: the work is in `export.exporter`, `export.artifact` and `export.delta`.
"""

from __future__ import annotations

import json
from pathlib import Path


def add_export_command(sub) -> None:
    p = sub.add_parser(
        "export",
        help="write an edge artifact (low-bit, zero-compressed); size reports; delta updates",
        description="Without a subcommand: export --model to -o at --bits. Subcommands: report, "
        "diff, apply, add-phones. A model with a phone head (asr train-phones) takes it into "
        "the artifact (its kernels at --phone-bits).",
    )
    p.add_argument("--model", help="model to export: default, a model folder or a training folder")
    p.add_argument(
        "--bits",
        type=int,
        choices=range(2, 9),
        metavar="{2..8}",
        default=None,
        help="weight bits (8 or 4 for the edge processor's int8 / int4 storage)",
    )
    p.add_argument(
        "--small-bits",
        type=int,
        choices=range(2, 9),
        metavar="{2..8}",
        default=None,
        help="weight bits of the small layers (first convolution, depthwise convolutions, "
        "joiner output: asr.models.quant.SMALL_KERNELS, 3%% of the weights); default: as the "
        "model was trained (quant_small_bits), else --bits",
    )
    p.add_argument(
        "--sparsity",
        type=float,
        default=None,
        metavar="S",
        help="prune every kernel by magnitude to at least this share of zeros first "
        "(0-1; a model trained sparse already has its zeros)",
    )
    p.add_argument(
        "--no-entropy-coding",
        dest="entropy",
        action="store_false",
        help="store no kernel entropy-coded (larger, but a fine-tune's delta update then "
        "carries only the changed codes' blocks)",
    )
    p.add_argument(
        "--phone-bits",
        type=int,
        choices=range(2, 9),
        metavar="{2..8}",
        default=8,
        help="weight bits of the phone head's kernels, for a model that has one (default 8)",
    )
    p.add_argument("-o", "--out", help="artifact file to write (e.g. model.edge)")
    p.add_argument("--json", action="store_true", help="print the size report as one JSON object")
    p.set_defaults(func=cmd_export, export_command=None)
    esub = p.add_subparsers(
        dest="export_command", required=False, metavar="{report,diff,apply,add-phones}"
    )

    r = esub.add_parser("report", help="size report of an artifact")
    r.add_argument("artifact")
    r.add_argument("--json", action="store_true", help="one JSON object")

    d = esub.add_parser("diff", help="delta update from OLD to NEW: only changed blocks")
    d.add_argument("old")
    d.add_argument("new")
    d.add_argument("-o", "--out", required=True, help="patch file to write")
    d.add_argument("--json", action="store_true", help="print the patch statistics as JSON")

    a = esub.add_parser("apply", help="rebuild NEW from OLD and a patch (hashes checked)")
    a.add_argument("old")
    a.add_argument("patch")
    a.add_argument("-o", "--out", required=True, help="artifact file to write")

    h = esub.add_parser(
        "add-phones",
        help="ARTIFACT with the phone head of --phones (a model folder or default) added or "
        "replaced; every other byte kept",
    )
    h.add_argument("artifact")
    h.add_argument("--phones", required=True, help="model whose phone head to take")
    h.add_argument("--bits", type=int, choices=range(2, 9), metavar="{2..8}", default=8)
    h.add_argument("-o", "--out", required=True, help="artifact file to write (.edge)")
    h.add_argument("--json", action="store_true", help="print the size report as one JSON object")


def _print_report(report: dict, as_json: bool) -> None:
    from export.exporter import format_report

    if as_json:
        print(json.dumps({k: v for k, v in report.items()}, sort_keys=True))
    else:
        print(format_report(report))


def cmd_export(args) -> int:
    cmd = args.export_command
    if cmd == "report":
        from export.artifact import read_artifact
        from export.exporter import size_report

        path = Path(args.artifact)
        _print_report(size_report(read_artifact(path), path.stat().st_size), args.json)
        return 0
    if cmd == "diff":
        from export.delta import diff, patch_stats

        old, new = Path(args.old).read_bytes(), Path(args.new).read_bytes()
        patch = diff(old, new)
        _write(args.out, patch)
        stats = patch_stats(old, new, patch)
        if args.json:
            print(json.dumps(stats, sort_keys=True))
        else:
            print(
                f"{args.out}: {len(patch)} bytes, {100 * len(patch) / len(new):.2f}% of the new "
                f"artifact ({len(new)} bytes); {stats}"
            )
        return 0
    if cmd == "apply":
        from export.delta import apply

        new = apply(Path(args.old).read_bytes(), Path(args.patch).read_bytes())
        _write(args.out, new)
        print(f"{args.out}: {len(new)} bytes (hash checked)")
        return 0
    if cmd == "add-phones":
        from asr.model_io import load_model
        from export.artifact import read_artifact, write_artifact
        from export.exporter import size_report, with_phones

        if Path(args.out).suffix != ".edge":
            raise ValueError(f"-o {args.out}: artifact files end in .edge")
        phones = load_model(args.phones).phones
        if phones is None:
            raise ValueError(f"--phones {args.phones}: no phone head (asr train-phones adds one)")
        art = with_phones(read_artifact(args.artifact), phones, args.bits)
        _print_report(size_report(art, write_artifact(args.out, art)), args.json)
        return 0
    missing = [f for f, v in (("--model", args.model), ("--bits", args.bits), ("-o", args.out))
               if v is None]  # fmt: skip
    if missing:
        raise ValueError(
            f"export needs {', '.join(missing)} (or a subcommand: report, diff, apply)"
        )
    from asr.model_io import load_model
    from export.exporter import export_to_file

    if Path(args.out).suffix != ".edge":
        raise ValueError(
            f"-o {args.out}: artifact files end in .edge (how --model finds its loader)"
        )
    report = export_to_file(
        load_model(args.model),
        args.out,
        args.bits,
        args.sparsity,
        entropy=args.entropy,
        small_bits=args.small_bits,
        phone_bits=args.phone_bits,
    )
    _print_report(report, args.json)
    return 0


def _write(path: str, data: bytes) -> None:
    out = Path(path)
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_bytes(data)
    tmp.replace(out)
