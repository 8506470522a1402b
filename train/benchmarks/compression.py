"""The compression table: WER of compressed models on named test sets, for post-training
quantization (PTQ), straight-through fake-quantization training (STE-QAT) and the absolute-
cosine regularizer, at weight bits x sparsity, all from one float starting point.

Owns `python -m train.benchmarks.compression --float default --runs runs/comp
--set NAME=MANIFEST ... [--bits 8 6 4] [--limit N] [--out results.jsonl]
[--small-bits B] [--leadin NAME=MANIFEST --noise-dir DIR]`.

Cells (each one evaluated here, with 8-bit activations at every matrix-product input):
- `float`: the float model itself, and every float fine-tune in `--runs` (a control: the same
  data and steps as the compression runs, no compression);
- `PTQ` at bits b, sparsity 0: the float model's kernels rounded to b bits per output channel
  (`--bits 0`: float weights, only the activations at 8 bits: what the activations alone cost);
  at sparsity s: the run in `--runs` trained with hard gradual magnitude pruning to s
  (`sparsity_method=hard`, no quantization: the pruning baseline given the same budget), then
  rounded; `PTQ one-shot` prunes the float model by magnitude (per layer, or as
  `--one-shot-scope` / `--one-shot-exclude` say) without training;
  `sparsifier + PTQ`: the run trained with the gradual sparsification penalty (no
  quantization), then rounded;
- `STE-QAT`, `regularizer` (acos) and `regularizer-mr` (mr-acos): each run of that method in
  `--runs` at the bits and sparsity it was trained for, its model folder as written (weights on
  their levels, zeros exact).
- with `--small-bits B`, every PTQ cell again with the small layers (first convolution,
  depthwise convolutions, vocabulary outputs) at B bits (`mixed_ptq`).

A run pruned globally or with layers kept dense (`sparsity_scope`, `sparsity_exclude`) gets its
own row, its label saying so. A run is a work folder with `model/config.json`; its recipe
(`train` entry) says its method, bits and sparsity. `--leadin NAME=MANIFEST` adds that set
with noise from `--noise-dir` before every clip (`train.benchmarks.heldout`: what a long
non-speech lead-in costs each cell).

Results are appended to `--out` as JSON lines (one per cell and set) and reused when the
script runs again (delete the file to measure again); the table is printed as Markdown with
the machine, the set sizes and the decoding used.
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path

import jax
import numpy as np

from asr.manifest import named_paths


def one_shot_prune(params, share: float, scope: str = "layer", exclude: str = ""):
    """The float model with `share` of its kernel weights zeroed at once, the smallest in
    magnitude of every kernel (scope 'layer') or of all together ('global'); kernels matching
    `exclude` ('small': `train.regularizers.SMALL_LAYERS`) stay dense and the others give up
    their share (the same rule as training's `sparsity_exclude`)."""
    from train.regularizers import eligible_mask, eligible_share, prune_masks
    from train.regularizers import sparsity_exclude_regex as regex

    ex = regex(exclude)
    masks = prune_masks(
        params, eligible_mask(params, exclude=ex), eligible_share(params, share, exclude=ex), scope
    )
    return jax.tree_util.tree_map(lambda w, m: np.where(np.asarray(m), 0.0, w), params, masks)


def mixed_ptq(loaded, bits: int, small_bits: int):
    """`loaded` rounded to `bits` per output channel, the small layers
    (`asr.models.quant.SMALL_KERNELS`: the first convolution, the depthwise convolutions and
    the vocabulary outputs) to `small_bits`, run so (`QuantPolicy.small_bits`) with 8-bit
    activations."""
    from asr.model_io import quantized
    from asr.models.quant import QuantPolicy

    return quantized(loaded, QuantPolicy(bits, 8, small_bits))


def prune_label(scope: str, exclude: str) -> str:
    """'' for per-layer pruning of every kernel, else ' (global, small layers dense)' etc."""
    parts = (["global"] if scope == "global" else []) + (
        ["small layers dense"] if exclude == "small" else [f"dense: {exclude}"] if exclude else []
    )
    return f" ({', '.join(parts)})" if parts else ""


def discover_runs(root: Path) -> list[dict]:
    """[{name, path, method, bits, sparsity, sparsity_method}] of the finished runs in root."""
    runs = []
    for cfg in sorted(root.glob("*/model/config.json")):
        meta = json.loads(cfg.read_text())
        t = meta.get("train", {})
        runs.append(
            {
                "name": cfg.parent.parent.name,
                "path": str(cfg.parent),
                "method": t.get("quant_method", "none"),
                "bits": t.get("quant_bits", 0) if t.get("quant_method", "none") != "none" else 0,
                "sparsity": float(t.get("sparsity", 0.0)),
                "sparsity_method": t.get("sparsity_method", "penalty"),
                "prune": prune_label(
                    t.get("sparsity_scope", "layer"), t.get("sparsity_exclude", "")
                ),
                "quant_weight": t.get("quant_weight", 100.0),
                "small_bits": t.get("quant_small_bits", 0),
                "steps": meta.get("steps"),
            }
        )
    return runs


LABELS = {"acos": "regularizer", "mr-acos": "regularizer-mr", "ste": "STE-QAT"}
DEFAULT_QUANT_WEIGHT = 100.0  # TrainConfig.quant_weight


def cells(
    float_spec: str,
    runs: list[dict],
    bits: list[int],
    one_shot: list[float],
    one_shot_scope: str = "layer",
    one_shot_exclude: str = "",
    small_bits: int = 0,
):
    """[(method label, bits, sparsity, source, how to build the loaded model)]; with
    `small_bits`, every PTQ cell (of the float model and of the pruned runs) also with the small
    layers at `small_bits` (`mixed_ptq`)."""
    from asr.model_io import load_model, quantized
    from asr.models.quant import QuantPolicy

    out = [("float", 0, 0.0, float_spec, lambda: load_model(float_spec))]

    def ptq(label, sparsity, source, base):
        """The PTQ cells of one unrounded model `base()`: at every bits (b 0: float weights,
        8-bit activations), and with the small layers at `small_bits`."""
        for b in bits:
            out.append(
                (label, b, sparsity, source, lambda b=b: quantized(base(), QuantPolicy(b, 8)))
            )
        for b in bits:
            if small_bits and b and b != small_bits:
                mixed = f"{label}, small layers {small_bits}-bit"
                out.append(
                    (mixed, b, sparsity, source, lambda b=b: mixed_ptq(base(), b, small_bits))
                )

    ptq("PTQ", 0.0, float_spec, lambda: load_model(float_spec))
    for s in one_shot:

        def pruned(s=s):
            m = load_model(float_spec)
            p = one_shot_prune(m.variables["params"], s, one_shot_scope, one_shot_exclude)
            m.variables = {**m.variables, "params": p}
            return m

        ptq("PTQ one-shot" + prune_label(one_shot_scope, one_shot_exclude), s, float_spec, pruned)
    for r in runs:
        if r["method"] == "none" and r["sparsity"] == 0:
            out.append(("float fine-tune", 0, 0.0, r["path"], lambda p=r["path"]: load_model(p)))
        elif r["method"] == "none":  # pruned in training only: quantized afterwards
            label = "PTQ" if r["sparsity_method"] == "hard" else "sparsifier + PTQ"
            ptq(label + r["prune"], r["sparsity"], r["path"], lambda p=r["path"]: load_model(p))
        elif r["method"] in LABELS:
            label = LABELS[r["method"]]
            if r["method"] != "ste":  # the regularizer's weight, when not the recipe default
                w = r["quant_weight"]
                label += "" if w == DEFAULT_QUANT_WEIGHT else f" (weight {w:g})"
            label += r["prune"] if r["sparsity"] > 0 else ""
            if r.get("small_bits") and r["small_bits"] != r["bits"]:
                label += f", small layers {r['small_bits']}-bit"
            out.append(
                (label, r["bits"], r["sparsity"], r["path"], lambda p=r["path"]: load_model(p))
            )
    # two runs of one method, bits and sparsity (other data, steps...): each row names its run
    seen: dict = {}
    for c in out:
        seen[c[:3]] = seen.get(c[:3], 0) + 1
    return [c if seen[c[:3]] == 1 else (f"{c[0]} [{Path(c[3]).parent.name}]", *c[1:]) for c in out]


def measure(loaded, rows: list[dict]) -> dict:
    from asr.models.quant import zero_fraction
    from asr.recognizer import DecodeSettings, Recognizer, evaluate_manifest

    t = time.perf_counter()
    res = evaluate_manifest(Recognizer(loaded, DecodeSettings()), rows, pairs=0, unreadable="fail")
    return {
        "wer": res["wer"],
        "words": res["words"],
        "utterances": res["utterances"],
        "errors": res["substitutions"] + res["deletions"] + res["insertions"],
        "seconds": time.perf_counter() - t,
        "zero_fraction": zero_fraction(loaded.variables["params"]),
        "policy": loaded.model.quant.describe(),
    }


def table(results: list[dict], sets: list[str]) -> str:
    """Markdown: one row per (method, bits), one column per (sparsity, set)."""
    sps = sorted({r["sparsity"] for r in results})
    keyed = {(r["method"], r["bits"], r["sparsity"], r["set"]): r for r in results}
    order = ["float", "float fine-tune", "PTQ", "PTQ one-shot", "sparsifier + PTQ", "STE-QAT",
             "regularizer", "regularizer-mr"]  # fmt: skip
    rank = lambda m: next((i for i, o in enumerate(order) if m.startswith(o)), 99)  # noqa: E731
    rows = sorted(
        {(r["method"], r["bits"]) for r in results}, key=lambda mb: (rank(mb[0]), mb[0], -mb[1])
    )
    head = ["method", "bits"] + [f"s={int(100 * s)}% {n}" for s in sps for n in sets]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for m, b in rows:
        cellv = []
        for s in sps:
            for n in sets:
                r = keyed.get((m, b, s, n))
                cellv.append("" if r is None else f"{100 * r['wer']:.2f}")
        bl = b or ("float" if m.startswith("float") else "float (8-bit activations)")
        lines.append(f"| {m} | {bl} | " + " | ".join(cellv) + " |")
    return "\n".join(lines)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--float", default="default", help="the float starting model")
    ap.add_argument("--runs", type=Path, required=True, help="folder of compression work folders")
    ap.add_argument("--set", action="append", required=True, metavar="NAME=MANIFEST")
    ap.add_argument(
        "--bits", type=int, nargs="+", default=[8, 6, 4], help="0: float weights (activations only)"
    )
    ap.add_argument("--one-shot", type=float, nargs="*", default=[0.5])
    ap.add_argument("--one-shot-scope", choices=["layer", "global"], default="layer")
    ap.add_argument(
        "--one-shot-exclude", default="", help="kernels kept dense in one-shot pruning ('small')"
    )
    ap.add_argument("--limit", type=int, default=0, help="first N rows of each set (0: all)")
    ap.add_argument("--out", type=Path, default=None, help="JSON lines (default RUNS/table.jsonl)")
    ap.add_argument("--only", default="", help="evaluate only cells whose method contains this")
    ap.add_argument(
        "--small-bits",
        type=int,
        default=0,
        help="also every PTQ cell with the small layers (first convolution, depthwise "
        "convolutions, vocabulary outputs) at these bits",
    )
    ap.add_argument("--leadin", action="append", default=[], metavar="NAME=MANIFEST")
    ap.add_argument("--noise-dir", type=Path, default=None, help="noise for --leadin")
    ap.add_argument("--leadin-seconds", type=float, default=1.3)
    args = ap.parse_args(argv)
    if args.leadin and args.noise_dir is None:
        ap.error("--leadin needs --noise-dir")

    from asr.manifest import read_manifest

    sets = named_paths(args.set, "--set")
    rows = {n: read_manifest(p) for n, p in sets.items()}
    if args.limit:
        rows = {n: r[: args.limit] for n, r in rows.items()}
    tmp = tempfile.TemporaryDirectory()
    if args.leadin:
        from train.benchmarks.heldout import leadin_rows, noise_clips

        noise = noise_clips(args.noise_dir, 200)
        for n, path in named_paths(args.leadin, "--leadin").items():
            name = f"{n}+lead{args.leadin_seconds:g}s"
            folder = Path(tmp.name) / name
            folder.mkdir()
            base = read_manifest(path)[: args.limit or None]
            rows[name] = leadin_rows(base, noise, args.leadin_seconds, folder)
            sets[name] = path
    out = args.out or args.runs / "table.jsonl"
    done = []
    if out.exists():
        done = [json.loads(ln) for ln in out.read_text().splitlines() if ln.strip()]
    have = {(d["method"], d["bits"], d["sparsity"], d["source"], d["set"]) for d in done}
    runs = discover_runs(args.runs)
    print(
        f"machine: {platform.node()}, {platform.processor() or platform.machine()}, "
        f"jax {jax.__version__} on {jax.devices()[0].platform}; beam search, beam 4; "
        f"8-bit activations in every quantized cell; sets: "
        + ", ".join(f"{n} ({len(r)} utterances)" for n, r in rows.items())
        + f"; {len(runs)} runs in {args.runs}"
    )
    for method, bits, sparsity, source, build in cells(
        args.float,
        runs,
        args.bits,
        args.one_shot,
        args.one_shot_scope,
        args.one_shot_exclude,
        args.small_bits,
    ):
        if args.only and args.only not in method:
            continue
        todo = [n for n in sets if (method, bits, sparsity, source, n) not in have]
        if not todo:
            continue
        loaded = build()
        for n in todo:
            res = measure(loaded, rows[n])
            rec = {"method": method, "bits": bits, "sparsity": sparsity, "source": source,
                   "set": n, **res}  # fmt: skip
            done.append(rec)
            with open(out, "a") as f:
                f.write(json.dumps(rec) + "\n")
            print(
                f"{method:>15} bits {bits or 'float':>5} sparsity {sparsity:.0%} {n}: "
                f"WER {100 * res['wer']:.2f}% ({res['errors']}/{res['words']}), zeros "
                f"{res['zero_fraction']:.1%}, {res['seconds']:.0f} s  [{source}]",
                flush=True,
            )
    print()
    print(table(done, list(sets)))
    tmp.cleanup()


if __name__ == "__main__":
    main()
