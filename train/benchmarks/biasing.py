"""Context biasing measured: name-word error rate with lists of 20, 100 and 1,000 names, no harm
on utterances whose names are not listed and on real speech, and the search's speed cost.

Owns `python -m train.benchmarks.biasing --model M [--model M2 ...] --names MANIFEST...
[--other MANIFEST] [--real NAME=MANIFEST ...] [--sizes 20 100 1000] [--boost 0.5]
[--lm-weight L] [--phonetic-margin 4.0] [--speed-utterances 16] [--repeats 10] [--speed-only]
[--json PATH]`.

- `--names`: test manifests (synthesized, held-out voices and held-out names); the rows whose
  text speaks one of their `context` names are the name rows. Each gets a list of N names: the
  spoken ones plus N - k distractors drawn (seeded, per row) from every name the project knows
  (the 326 core names and the 22,133 wide names) except the spoken ones. `context_wer` is the
  error rate over the spoken name words (`asr eval`'s definition).
- Conditions: `none` (decoded without a list; the name words are still scored), `fusion`
  (shallow fusion, `--boost`), and, for a model with an attention biasing network, `attention`
  (lists fed to the network, no fusion) and `both`; with `--lm-weight` L > 0 also `fusion_ilm`
  (shallow fusion with the internal-LM discount, `DecodeSettings.context_lm_weight`); for a
  model with a phone head, `phonetic` (the phonetic second pass alone, `asr.phonetic`, margin
  `--phonetic-margin`) and `fusion_phonetic` (shallow fusion, then the second pass). The other
  conditions run with the second pass off.
- No harm: `--other` rows (the same manifests' rows without names, or any manifest) with 100
  distractors and no name of theirs, and every `--real` set with 100 distractors, against no list.
- Speed: `--speed-utterances` name rows decoded in one batch with 1,000-name lists and without
  lists, `--repeats` times each after a compile run; median seconds and their ratio, for the
  whole recognizer (features, encoder with its attention biasing, search) and for the beam
  search alone on the batch's encoder output (with `--lm-weight`, also with the discounted
  graphs; with a phone head, also the whole recognizer with the second pass).
  `--speed-only` skips the accuracy runs.

Every number is measured in this run; the printed table says what each cell is.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import numpy as np

from asr.recognizer import DecodeSettings

_DEFAULT = DecodeSettings()


def name_pool() -> list[str]:
    """Every name the project knows: core (training and held-out) and wide names, distinct."""
    from train.corpus.names import HELDOUT_NAMES, TRAIN_NAMES, wide_names

    given, surnames = wide_names()
    return sorted(set(TRAIN_NAMES) | set(HELDOUT_NAMES) | set(given) | set(surnames))


def spoken_names(row: dict) -> list[str]:
    """The row's `context` names that its text speaks (whole words)."""
    from asr.context import make_context, phrase_occurrences

    out = []
    for p in make_context(row.get("context") or []).phrases:
        if any(phrase_occurrences(row["text"], make_context([p]))):
            out.append(p)
    return out


def with_lists(rows: list[dict], size: int, pool: list[str], seed: int, spoken: bool) -> list[dict]:
    """Rows with a `context` of `size` names: the spoken ones (when `spoken`) plus distractors
    not spoken in the row, in a seeded random order."""
    out = []
    for i, r in enumerate(rows):
        rng = np.random.default_rng((seed, size, i))
        said = spoken_names(r) if spoken else []
        text = f" {r['text'].lower()} "
        names = list(said)
        while len(names) < size:
            n = pool[int(rng.integers(len(pool)))]
            if n not in names and f" {n} " not in text:
                names.append(n)
        rng.shuffle(names)
        out.append({**r, "context": names})
    return out


def _eval(
    loaded,
    rows,
    boost: float,
    attention: bool,
    use: bool,
    lm_weight: float = 0.0,
    phonetic: tuple[float, float, float | None] | None = None,
) -> dict:
    from asr.recognizer import DecodeSettings, Recognizer, evaluate_manifest

    settings = DecodeSettings(
        context_boost=boost,
        context_attention=attention,
        context_lm_weight=lm_weight,
        phonetic_margin=None if phonetic is None else phonetic[0],
        **(
            {}
            if phonetic is None
            else {"phonetic_transducer_weight": phonetic[1], "phonetic_min_spot": phonetic[2]}
        ),
    )
    res = evaluate_manifest(Recognizer(loaded, settings), rows, use_context=use)
    keep = ("wer", "words", "context_wer", "context_words", "utterances", "rtf")
    return {k: res[k] for k in keep}


CONDITIONS = ("none", "fusion", "fusion_ilm", "attention", "both", "phonetic", "fusion_phonetic")


def conditions(
    loaded,
    boost: float,
    lm_weight: float = 0.0,
    margin: float = _DEFAULT.phonetic_margin,
    weight: float = _DEFAULT.phonetic_transducer_weight,
    min_spot: float | None = _DEFAULT.phonetic_min_spot,
) -> dict[str, tuple[float, bool, bool, float, tuple[float, float, float | None] | None]]:
    """name -> (boost, attention on, lists used, internal-LM discount, the phonetic pass's
    (margin, transducer weight, least spot score) or None for off). The phonetic conditions are
    there for a model with a phone head (`margin`, `weight`, `min_spot`: the recognizer's
    `phonetic_margin`, `phonetic_transducer_weight` and `phonetic_min_spot`)."""
    out = {"none": (boost, False, False, 0.0, None), "fusion": (boost, False, True, 0.0, None)}
    if lm_weight > 0:
        out["fusion_ilm"] = (boost, False, True, lm_weight, None)
    if getattr(loaded.model.config, "bias_dim", 0) > 0:
        out["attention"] = (0.0, True, True, 0.0, None)
        out["both"] = (boost, True, True, 0.0, None)
    if getattr(loaded, "phones", None) is not None:
        out["phonetic"] = (0.0, False, True, 0.0, (margin, weight, min_spot))
        out["fusion_phonetic"] = (boost, False, True, 0.0, (margin, weight, min_spot))
    return out


def speed(loaded, rows, pool, boost: float, n: int, repeats: int, lm_weight: float = 0.0) -> dict:
    """Median decode seconds of one batch of n name rows, 1,000-name lists vs none."""
    from asr.audio import load_audio
    from asr.recognizer import DecodeSettings, Recognizer

    rows = rows[:n]
    audios = [load_audio(r["audio"]) for r in rows]
    lists = [r["context"] for r in with_lists(rows, 1000, pool, 7, True)]
    rec = Recognizer(
        loaded, DecodeSettings(context_boost=boost, batch_size=n, phonetic_margin=None)
    )
    runs = [("no_list", rec, None), ("list_1000", rec, lists)]
    if getattr(loaded, "phones", None) is not None:  # the same with the phonetic second pass
        ph = Recognizer(loaded, DecodeSettings(context_boost=boost, batch_size=n))
        runs.append(("list_1000_phonetic", ph, lists))
    out = {}
    for name, r, ctx in runs:
        r.recognize(audios, context=ctx)  # compile
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            r.recognize(audios, context=ctx)
            times.append(time.perf_counter() - t0)
        out[name] = statistics.median(times)
    out["ratio"] = out["list_1000"] / out["no_list"]
    if "list_1000_phonetic" in out:
        out["ratio_phonetic"] = out["list_1000_phonetic"] / out["no_list"]
    out.update(search_speed(loaded, audios, lists, boost, repeats, lm_weight))
    out["utterances"] = n
    out["audio_seconds"] = float(sum(len(a) for a in audios) / 16000)
    out["repeats"] = repeats
    return out


def search_speed(loaded, audios, lists, boost: float, repeats: int, lm_weight: float = 0.0) -> dict:
    """The beam search alone (beam 4, 2 symbols per frame, on the encoder output of the batch),
    with 1,000-name context graphs and without (and, with lm_weight > 0, with the discounted
    graphs): median seconds and their ratios."""
    import jax

    from asr.context import make_context, tokenize_phrases
    from asr.decoding import (
        beam_search,
        build_context_graph,
        context_fusion,
        decoder_fns,
        stack_graphs,
    )
    from asr.features import log_mel

    feats = [log_mel(a) for a in audios]
    t = max(len(f) for f in feats)
    x = np.zeros((len(feats), t, feats[0].shape[1]), np.float32)
    pad = np.ones((len(feats), t), np.float32)
    for i, f in enumerate(feats):
        x[i, : len(f)], pad[i, : len(f)] = f, 0.0
    model, variables = loaded.model, loaded.variables
    # by name, so a subclass's encode runs (the emulated processor's for an .edge model)
    enc_p, enc_pad = jax.jit(lambda v, a, b: model.apply(v, a, b, method="encode"))(
        variables, x, pad
    )
    cfg = loaded.model.config

    def stacked(lm):
        graphs = [
            build_context_graph(
                tokenize_phrases(loaded.tokenizer, make_context(c)),
                cfg.vocab_size,
                boost=boost,
                lm_weight=lm,
            )
            for c in lists
        ]
        return jax.device_put(stack_graphs(graphs, cfg.vocab_size))

    graph = stacked(0.0)
    fns = decoder_fns(model, variables)

    def run(fusion):
        return jax.block_until_ready(beam_search(fns, enc_p, enc_pad, 4, None, 2, fusion=fusion))

    out = {"search_states": int(graph.goto.shape[1]), "search_frames": int(enc_p.shape[1])}
    runs = [("search_no_list", None), ("search_list_1000", context_fusion(graph))]
    if lm_weight > 0:
        runs.append(("search_list_1000_ilm", context_fusion(stacked(lm_weight))))
    for name, fusion in runs:
        run(fusion)  # compile
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            run(fusion)
            times.append(time.perf_counter() - t0)
        out[name] = statistics.median(times)
    out["search_ratio"] = out["search_list_1000"] / out["search_no_list"]
    if lm_weight > 0:
        out["search_ratio_ilm"] = out["search_list_1000_ilm"] / out["search_no_list"]
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--model", action="append", required=True)
    ap.add_argument("--names", nargs="+", required=True, help="test manifests with context rows")
    ap.add_argument(
        "--other",
        nargs="*",
        default=None,
        help="rows without names (default: the --names manifests' rows without names, first 300)",
    )
    ap.add_argument("--real", action="append", default=[], metavar="NAME=MANIFEST")
    ap.add_argument("--sizes", type=int, nargs="+", default=[20, 100, 1000])
    ap.add_argument("--boost", type=float, default=0.5)
    ap.add_argument(
        "--lm-weight",
        type=float,
        default=0.0,
        help="> 0: also the fusion_ilm condition (shallow fusion with this internal-LM discount)",
    )
    ap.add_argument(
        "--phonetic-margin",
        type=float,
        default=_DEFAULT.phonetic_margin,
        help="the phonetic conditions' margin in nats (models with a phone head; default: the "
        "recognizer's)",
    )
    ap.add_argument(
        "--phonetic-transducer-weight",
        type=float,
        default=_DEFAULT.phonetic_transducer_weight,
        help="the phonetic conditions' transducer weight (default: the recognizer's)",
    )
    ap.add_argument(
        "--phonetic-min-spot",
        type=float,
        default=_DEFAULT.phonetic_min_spot,
        help="the phonetic conditions' least spot score per phone (default: the recognizer's, "
        "any name)",
    )
    ap.add_argument("--limit", type=int, default=0, help="name rows at most (0: all)")
    ap.add_argument("--speed-utterances", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--speed-only", action="store_true")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)

    import jax

    from asr.manifest import read_manifest
    from asr.model_io import load_model

    rows = [r for m in args.names for r in read_manifest(m) if "text" in r]
    name_rows = [r for r in rows if spoken_names(r)]
    if args.limit:
        name_rows = name_rows[: args.limit]
    if args.other is None:
        other = [r for r in rows if not spoken_names(r)][:300]
    else:
        other = [r for m in args.other for r in read_manifest(m) if "text" in r]
    real = {}
    for item in args.real:
        name, _, path = item.partition("=")
        real[name] = read_manifest(path)
    pool = name_pool()
    print(
        f"{len(name_rows)} name rows ({sum(len(spoken_names(r)) for r in name_rows)} spoken "
        f"names), {len(other)} rows without names, real sets {list(real)}; pool of {len(pool)} "
        f"names; {platform.node()}, {jax.devices()[0].device_kind}",
        flush=True,
    )
    report = {"machine": platform.node(), "device": jax.devices()[0].device_kind, "models": {}}
    for model in args.model:
        loaded = load_model(model)
        conds = conditions(
            loaded,
            args.boost,
            args.lm_weight,
            args.phonetic_margin,
            args.phonetic_transducer_weight,
            args.phonetic_min_spot,
        )
        res: dict = {"names": {}, "no_harm": {}}
        for size in [] if args.speed_only else args.sizes:
            listed = with_lists(name_rows, size, pool, args.seed, True)
            for cname, (boost, att, use, lm, ph) in conds.items():
                if cname == "none" and size != args.sizes[0]:
                    res["names"][f"{size}/none"] = res["names"][f"{args.sizes[0]}/none"]
                    continue
                t0 = time.perf_counter()
                r = _eval(loaded, listed, boost, att, use, lm, ph)
                res["names"][f"{size}/{cname}"] = r
                print(
                    f"{model} names list {size:5d} {cname:9s}: context WER "
                    f"{100 * r['context_wer']:5.1f}% WER {100 * r['wer']:5.2f}% "
                    f"({time.perf_counter() - t0:.0f} s)",
                    flush=True,
                )
        sets = {} if args.speed_only else {"synth_no_names": other, **real}
        for sname, srows in sets.items():
            distract = with_lists(srows, 100, pool, args.seed + 1, False)
            for cname, (boost, att, use, lm, ph) in conds.items():
                r = _eval(loaded, distract, boost, att, use, lm, ph)
                res["no_harm"][f"{sname}/{cname}"] = r
                print(f"{model} no-harm {sname} {cname:9s}: WER {100 * r['wer']:5.2f}%", flush=True)
        res["speed"] = speed(
            loaded,
            name_rows,
            pool,
            args.boost,
            args.speed_utterances,
            args.repeats,
            args.lm_weight,
        )
        print(f"{model} speed: {json.dumps(res['speed'])}", flush=True)
        report["models"][model] = res
    print(markdown(report, args.sizes))
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
    return 0


def markdown(report: dict, sizes: list[int]) -> str:
    lines = []
    for model, res in report["models"].items():
        if not res["names"]:
            lines.append(f"\n{model}: " + _speed_line(res["speed"]))
            continue
        conds = sorted(
            {k.split("/")[1] for k in res["names"]},
            key=CONDITIONS.index,
        )
        lines.append(f"\n{model}: name-word error rate (context WER) / WER, by list size")
        lines.append("| list size | " + " | ".join(conds) + " |")
        lines.append("|---" * (len(conds) + 1) + "|")
        for size in sizes:
            cells = []
            for c in conds:
                r = res["names"][f"{size}/{c}"]
                cells.append(f"{100 * r['context_wer']:.1f}% / {100 * r['wer']:.2f}%")
            lines.append(f"| {size} | " + " | ".join(cells) + " |")
        lines.append(f"\n{model}: WER with 100 distractors (none = no list)")
        sets = sorted({k.split("/")[0] for k in res["no_harm"]})
        lines.append("| set | " + " | ".join(conds) + " |")
        lines.append("|---" * (len(conds) + 1) + "|")
        for s in sets:
            cells = [f"{100 * res['no_harm'][f'{s}/{c}']['wer']:.2f}%" for c in conds]
            lines.append(f"| {s} | " + " | ".join(cells) + " |")
        lines.append("\n" + _speed_line(res["speed"]))
    return "\n".join(lines)


def _speed_line(sp: dict) -> str:
    return (
        f"speed: {sp['utterances']} utterances ({sp['audio_seconds']:.1f} s audio) in one "
        f"batch, median of {sp['repeats']}: {sp['no_list']:.3f} s without lists, "
        f"{sp['list_1000']:.3f} s with 1,000-name lists ({sp['ratio']:.2f}x) for the whole "
        f"recognizer; the beam search alone (beam 4, {sp['search_frames']} frames, graphs of "
        f"{sp['search_states']} states): {sp['search_no_list']:.3f} s and "
        f"{sp['search_list_1000']:.3f} s ({sp['search_ratio']:.2f}x)"
        + (
            f"; with the internal-LM discount {sp['search_list_1000_ilm']:.3f} s "
            f"({sp['search_ratio_ilm']:.2f}x)"
            if "search_ratio_ilm" in sp
            else ""
        )
        + (
            f"; the whole recognizer with the phonetic second pass and 1,000-name lists "
            f"{sp['list_1000_phonetic']:.3f} s ({sp['ratio_phonetic']:.2f}x)"
            if "ratio_phonetic" in sp
            else ""
        )
    )


if __name__ == "__main__":
    raise SystemExit(main())
