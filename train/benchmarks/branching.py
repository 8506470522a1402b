"""The branching-encoder table and curve: WER, share of expensive frames and encoder MACs per
second of audio for branching models against the expensive-only encoder and a static
(non-branching) model of about the same MACs, all fine-tuned the same way from one model.

Owns `python -m train.benchmarks.branching --baseline default --runs runs/branch
--set NAME=MANIFEST ... [--sweep RUN --offsets -1 0 1] [--limit N] [--out results.jsonl]
[--plot curve.png]`.

Rows (each evaluated here, float, beam search with beam 4):
- `expensive-only`: `--baseline` (the plain model every run starts from) and each plain
  fine-tune given with `--control` (the same recipe without branching: the fair reference);
- every finished work folder in `--runs` (a `model/config.json`): branching runs (labelled by
  their recipe's `branch_budget`) and plain ones (static baselines, labelled by their layers);
- `--sweep RUN`: that branching model with its arbiter's logit shifted by each `--offsets`
  value (more or fewer expensive frames from the same weights: an operating curve without
  retraining).

`encoder_macs_per_second` is what `asr eval` reports: the MACs each frame's chosen branch
computes (`asr.models.macs`), over the audio's seconds; `saving` is 1 - that / the
expensive-only baseline's, on the same set, in the same run. Results are appended to `--out`
as JSON lines and reused when the script runs again (delete the file to measure again).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import time
from pathlib import Path

import jax
import numpy as np

from asr.manifest import named_paths


def with_arbiter_offset(loaded, offset: float):
    """A copy of a branching `loaded` model whose arbiter logit is shifted by `offset` (> 0:
    more frames expensive)."""
    if loaded.config.encoder != "branching":
        raise ValueError(
            f"{loaded.source}: not a branching model (encoder {loaded.config.encoder})"
        )
    params = jax.tree_util.tree_map(lambda x: x, dict(loaded.variables["params"]))
    enc = dict(params["encoder"])
    arb = dict(enc["arbiter"])
    out = dict(arb["out"])
    out["bias"] = np.asarray(out["bias"]) + np.float32(offset)
    arb["out"], enc["arbiter"] = out, arb
    params["encoder"] = enc
    variables = dict(loaded.variables, params=params)
    return dataclasses.replace(loaded, variables=variables, source=f"{loaded.source}{offset:+g}")


def describe_run(path: Path) -> dict:
    """{name, path, kind, budget, layers} of a finished work folder."""
    meta = json.loads((path / "model" / "config.json").read_text())
    t, m = meta.get("train", {}), meta["model"]
    branching = m.get("encoder", "transformer") == "branching"
    return {
        "name": path.name,
        "path": str(path / "model"),
        "kind": "branching" if branching else f"static {m['num_layers']} layers",
        "budget": t.get("branch_budget") if branching else None,
        "imitation": t.get("branch_imitation", 0.0) if branching else None,
        "layers": m["num_layers"],
    }


def measure(loaded, rows: list[dict]) -> dict:
    from asr.recognizer import DecodeSettings, Recognizer, evaluate_manifest

    t = time.perf_counter()
    res = evaluate_manifest(Recognizer(loaded, DecodeSettings()), rows, pairs=0, unreadable="fail")
    return {
        "wer": res["wer"],
        "words": res["words"],
        "utterances": res["utterances"],
        "substitutions": res["substitutions"],
        "deletions": res["deletions"],
        "insertions": res["insertions"],
        "encoder_macs_per_second": res["encoder_macs_per_second"],
        "expensive_frame_share": res.get("expensive_frame_share"),
        "seconds": time.perf_counter() - t,
    }


def table(results: list[dict], sets: list[str]) -> str:
    """Markdown: one row per model, WER and MAC saving per set."""
    base = {r["set"]: r for r in results if r["row"] == "expensive-only" and r["offset"] is None}
    keyed: dict[tuple, dict] = {}
    order: list[tuple] = []
    for r in results:
        k = (r["row"], r["source"], r["offset"])
        if k not in keyed:
            keyed[k] = {}
            order.append(k)
        keyed[k][r["set"]] = r
    head = ["model", "source"]
    for n in sets:
        head += [f"{n} WER %", f"{n} expensive share", f"{n} M MACs/s", f"{n} saving"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for k in order:
        row, source, offset = k
        label = row if offset is None else f"{row}, arbiter {offset:+g}"
        cells = [label, source]
        for n in sets:
            r = keyed[k].get(n)
            if r is None:
                cells += ["", "", "", ""]
                continue
            share = r["expensive_frame_share"]
            macs = r["encoder_macs_per_second"]
            saving = ""
            if n in base and base[n]["encoder_macs_per_second"]:
                saving = f"{100 * (1 - macs / base[n]['encoder_macs_per_second']):.0f}%"
            cells += [
                f"{100 * r['wer']:.2f}",
                "" if share is None else f"{100 * share:.0f}%",
                f"{macs / 1e6:.1f}",
                saving,
            ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot(results: list[dict], sets: list[str], out: Path) -> Path:
    """WER against the share of expensive frames, one panel per set: trained budgets, the
    arbiter sweep, the expensive-only and static references."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(sets), figsize=(4.2 * len(sets), 3.6), squeeze=False)
    for ax, n in zip(axes[0], sets, strict=True):
        rs = [r for r in results if r["set"] == n]
        trained = sorted(
            (r for r in rs if r["row"].startswith("branching") and r["offset"] is None),
            key=lambda r: r["expensive_frame_share"],
        )
        sweep = sorted(
            (r for r in rs if r["offset"] is not None), key=lambda r: r["expensive_frame_share"]
        )
        if trained:
            ax.plot([100 * r["expensive_frame_share"] for r in trained],
                    [100 * r["wer"] for r in trained], "o-", label="branching, trained budgets")  # fmt: skip
        if sweep:
            ax.plot([100 * r["expensive_frame_share"] for r in sweep],
                    [100 * r["wer"] for r in sweep], "s--", label="branching, arbiter shifted")  # fmt: skip
        for r in rs:
            if r["row"] == "expensive-only":
                ax.axhline(100 * r["wer"], color="k", lw=0.8, ls=":")
                ax.plot([100], [100 * r["wer"]], "k*", ms=9)
            elif r["row"].startswith("static"):
                base = [b for b in rs if b["row"] == "expensive-only" and b["offset"] is None]
                x = 100 * r["encoder_macs_per_second"] / base[0]["encoder_macs_per_second"]
                ax.plot([x], [100 * r["wer"]], "rx", ms=9, label=f"{r['row']} (x: MAC share)")
        ax.set_title(n)
        ax.set_xlabel("expensive frames (%)")
        ax.set_ylabel("WER (%)")
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--baseline", default="default", help="the plain model the runs start from")
    ap.add_argument("--control", nargs="*", default=[], help="plain fine-tunes (model folders)")
    ap.add_argument("--runs", type=Path, required=True, help="folder of work folders")
    ap.add_argument("--set", action="append", required=True, metavar="NAME=MANIFEST")
    ap.add_argument("--sweep", default="", help="a run name in --runs to shift the arbiter of")
    ap.add_argument("--offsets", type=float, nargs="*", default=[-1.0, -0.5, 0.5, 1.0])
    ap.add_argument("--limit", type=int, default=0, help="first N rows of each set (0: all)")
    ap.add_argument("--out", type=Path, default=None, help="JSON lines (default RUNS/table.jsonl)")
    ap.add_argument("--plot", type=Path, default=None, help="write the WER curve PNG here")
    args = ap.parse_args(argv)

    from asr.manifest import read_manifest
    from asr.model_io import load_model

    sets = named_paths(args.set, "--set")
    rows = {n: read_manifest(p) for n, p in sets.items()}
    if args.limit:
        rows = {n: r[: args.limit] for n, r in rows.items()}
    out = args.out or args.runs / "table.jsonl"
    done = []
    if out.exists():
        done = [json.loads(ln) for ln in out.read_text().splitlines() if ln.strip()]
    have = {(d["row"], d["source"], d["offset"], d["set"]) for d in done}
    runs = [describe_run(p.parent.parent) for p in sorted(args.runs.glob("*/model/config.json"))]
    print(
        f"machine: {platform.node()}, {platform.processor() or platform.machine()}, "
        f"jax {jax.__version__} on {jax.devices()[0].platform}; beam search, beam 4, float; "
        "sets: " + ", ".join(f"{n} ({len(r)} utterances)" for n, r in rows.items())
        + f"; {len(runs)} runs in {args.runs}"
    )  # fmt: skip
    cells = [("expensive-only", args.baseline, None, lambda s=args.baseline: load_model(s))]
    for c in args.control:
        cells.append(("expensive-only fine-tune", c, None, lambda s=c: load_model(s)))
    for r in runs:
        label = r["kind"]
        if r["kind"] == "branching":
            label = f"branching, budget {r['budget']:g}"
            if r["imitation"]:
                label += f", imitation {r['imitation']:g}"
        cells.append((label, r["path"], None, lambda s=r["path"]: load_model(s)))
        if r["name"] == args.sweep:
            for o in args.offsets:
                cells.append(
                    (label, r["path"], o, lambda s=r["path"], o=o: with_arbiter_offset(load_model(s), o))
                )  # fmt: skip
    for row, source, offset, build in cells:
        todo = [n for n in sets if (row, source, offset, n) not in have]
        if not todo:
            continue
        loaded = build()
        for n in todo:
            res = measure(loaded, rows[n])
            rec = {"row": row, "source": source, "offset": offset, "set": n, **res}
            done.append(rec)
            with open(out, "a") as f:
                f.write(json.dumps(rec) + "\n")
            share = res["expensive_frame_share"]
            print(
                f"{row}{'' if offset is None else f' {offset:+g}'} {n}: WER "
                f"{100 * res['wer']:.2f}% (S {res['substitutions']} D {res['deletions']} "
                f"I {res['insertions']} / {res['words']}), "
                + ("" if share is None else f"expensive {100 * share:.1f}%, ")
                + f"{res['encoder_macs_per_second'] / 1e6:.1f} M MACs/s, "
                f"{res['seconds']:.0f} s  [{source}]",
                flush=True,
            )  # fmt: skip
    print()
    print(table(done, list(sets)))
    if args.plot:
        print(f"wrote {plot(done, list(sets), args.plot)}")


if __name__ == "__main__":
    main()
