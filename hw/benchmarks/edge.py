"""The edge benchmark: artifact size, the emulator against the fake-quant model, modeled cost on
the edge processor, and the emulator's speed here.

Owns `python -m hw.benchmarks.edge --model default --set NAME=MANIFEST ... [--what size equiv
cost speed] [--bits 8 4] [--sparsity 0 0.5 0.7] [--limit N] [--out results.jsonl]`.

- size: each (bits, sparsity) artifact's bytes against float32 and the `large` model (sparsity
  applied at export by one-shot magnitude pruning, unless the model already has the zeros);
- equiv: each set decoded by the artifact's fake-quant model (`export.exporter.
  artifact_variables` under `QuantPolicy(bits, 8)`, plain JAX) and by the emulated processor
  (`hw.runtime`): both WERs and the share of utterances with identical hypotheses;
- cost: the recognizer's whole program (encoder and beam search) on the first utterances of the
  first set, interpreted by `hw.cost` on the default processor: MACs done and skipped, bytes
  read, cycles and time per 10 ms of audio, and the MAC-cycle ratio against the dense artifact
  of the same bits. `--cost-part encoder`: the encoder alone on the same batch; `--cost-part
  stream`: the encoder step by step as `asr.streaming` runs it (each utterance alone, every
  chunk one `encode_step`, all its steps interpreted), next to the whole-utterance encoder on
  the same utterances one at a time (part "whole");
- speed: real-time factor of the emulator and of the float JAX model on the same utterances
  (median of repeats, compile time excluded), this machine.

Every result is one JSON line in `--out`; the tables print as Markdown with the machine.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import platform
import statistics
import time
from pathlib import Path

import jax
import numpy as np


def machine() -> str:
    return (
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
        f"{jax.devices()[0].platform}, jax {jax.__version__}"
    )


def first_audios(sets: dict[str, str], n: int) -> tuple[list[np.ndarray], float]:
    """The first `n` utterances of the first set, and their seconds of audio."""
    from asr.audio import load_audio
    from asr.manifest import read_manifest

    path = next(iter(sets.values()))
    audios = [load_audio(r["audio"]) for r in read_manifest(path)[:n]]
    return audios, sum(len(a) for a in audios) / 16000


def artifacts(loaded, bits_list, sparsities):
    """{(bits, sparsity): Artifact} exported in memory."""
    from export.exporter import export_model

    return {(b, s): export_model(loaded, b, s or None) for b in bits_list for s in sparsities}


def run_size(arts, model_name):
    from export.artifact import to_bytes
    from export.exporter import size_report

    rows = []
    for (b, s), art in arts.items():
        rep = size_report(art, len(to_bytes(art)))
        rows.append(
            {
                "what": "size",
                "model": model_name,
                "bits": b,
                "sparsity": s,
                **{k: rep[k] for k in ("bytes", "float32_bytes", "large_float32_bytes")},
                "share_of_large": rep["share_of_large"],
                "zero_fraction": rep["zero_fraction"],
                "encodings": rep["encodings"],
            }
        )
    return rows


def run_equiv(arts, sets, limit, model_name, beam):
    from asr.manifest import read_manifest
    from asr.recognizer import DecodeSettings, Recognizer, evaluate_manifest
    from export.exporter import reference_model
    from hw.runtime import compile_artifact

    settings = DecodeSettings(beam=beam)
    rows = []
    for (b, s), art in arts.items():
        models = {
            "fake-quant": reference_model(art, f"{model_name} w{b} s{s} fake-quant"),
            "emulator": compile_artifact(art, f"{model_name} w{b} s{s} edge"),
        }
        for set_name, path in sets.items():
            manifest = read_manifest(path)[:limit]
            res = {}
            for kind, lm in models.items():
                t0 = time.perf_counter()
                r = evaluate_manifest(Recognizer(lm, settings), manifest, details=True)
                res[kind] = (r, time.perf_counter() - t0)
            hyps = {k: [u.get("hyp") for u in r["utterances_detail"]] for k, (r, _) in res.items()}
            pairs = list(zip(hyps["fake-quant"], hyps["emulator"], strict=True))
            same = sum(a == e for a, e in pairs)
            refs = [
                u.get("ref", u.get("keywords")) for u in res["fake-quant"][0]["utterances_detail"]
            ]
            differ = [
                {"ref": r, "fake_quant": a, "emulator": e}
                for r, (a, e) in zip(refs, pairs, strict=True)
                if a != e
            ]
            rows.append(
                {
                    "what": "equiv",
                    "model": model_name,
                    "bits": b,
                    "sparsity": s,
                    "set": set_name,
                    "utterances": len(manifest),
                    "wer_fake_quant": res["fake-quant"][0]["wer"],
                    "wer_emulator": res["emulator"][0]["wer"],
                    "identical": same / len(manifest),
                    "differing": differ[:20],
                    "seconds_fake_quant": res["fake-quant"][1],
                    "seconds_emulator": res["emulator"][1],
                }
            )
            print(json.dumps(rows[-1]), flush=True)
    return rows


def program_inputs(loaded, audios, trace_key):
    """(run, feats, paddings) of the recognizer's jitted program on `audios` as one batch."""
    from asr.features import log_mel
    from asr.recognizer import FRAME_BUCKET, DecodeSettings, _decoder

    tail = np.zeros(round(DecodeSettings().tail_padding_seconds * 16000), np.float32)
    feats = [log_mel(np.concatenate([a, tail])) for a in audios]
    t = -(-max(len(f) for f in feats) // FRAME_BUCKET) * FRAME_BUCKET
    x = np.zeros((len(feats), t, feats[0].shape[1]), np.float32)
    pads = np.ones((len(feats), t), np.float32)
    for i, f in enumerate(feats):
        x[i, : len(f)], pads[i, : len(f)] = f, 0.0
    return _decoder(loaded.model, trace_key).run, x, pads


def stream_inputs(config, audio: np.ndarray):
    """One request's features as `asr.streaming.StreamingRecognizer` steps them: the audio and
    the recognizer's tail silence (`log_mel` of the whole equals the feature stream's frames),
    the last chunk padded -> (f32[n, 1, 4C, n_mels] chunks, f32[n, 1, 4C] paddings)."""
    from asr.features import log_mel
    from asr.models.encoder import SUBSAMPLING
    from asr.recognizer import DecodeSettings

    tail = np.zeros(round(DecodeSettings().tail_padding_seconds * 16000), np.float32)
    f = log_mel(np.concatenate([audio, tail]))
    per = SUBSAMPLING * config.chunk_size
    n = -(-len(f) // per)
    x = np.zeros((n * per, f.shape[1]), np.float32)
    pads = np.ones(n * per, np.float32)
    x[: len(f)], pads[: len(f)] = f, 0.0
    return x.reshape(n, 1, per, f.shape[1]), pads.reshape(n, 1, per)


def stream_encoder(model, variables, state, chunks, paddings):
    """The encoder step by step: `encode_step` on each chunk in turn from `state` (a scan, so
    the cost model charges every step) -> (enc_p f32[n, 1, C, J], paddings f32[n, 1, C])."""

    def step(s, xp):
        enc, pads, _, s = model.apply(variables, xp[0], xp[1], s, method="encode_step")
        return s, (enc, pads)

    return jax.lax.scan(step, state, (chunks, paddings))[1]


def run_cost(arts, sets, n_utts, model_name, beam, part="program"):
    """Cost rows per artifact: of the recognizer's whole program (`part` "program": encoder,
    search, predictor and joiner) or of the encoder alone ("encoder": `encode_aux`, so a
    branching encoder's saving is seen apart from the search's cost), both on the utterances
    as one batch; "stream": two rows, the encoder step by step ("stream", `stream_encoder`,
    the initial state an input, not charged) and whole ("whole": `encode_aux` as the
    recognizer pads one request), each utterance alone, costs summed."""
    from asr.recognizer import DecodeSettings
    from hw.cost import EDGE_NPU, cost
    from hw.runtime import compile_artifact

    audios, seconds = first_audios(sets, n_utts)
    trace_key = DecodeSettings(beam=beam).trace_key()
    rows = []
    for (b, s), art in arts.items():
        lm = compile_artifact(art, "cost")
        encode = functools.partial(lm.model.apply, method="encode_aux")
        jobs = {}  # row part -> [(fn, args)], one per program run
        if part == "stream":
            state = lm.model.apply(lm.variables, 1, method="init_stream")
            run = functools.partial(stream_encoder, lm.model)
            jobs["stream"] = [
                (run, (lm.variables, state, *stream_inputs(lm.config, a))) for a in audios
            ]
            jobs["whole"] = [
                (encode, (lm.variables, *program_inputs(lm, [a], trace_key)[1:])) for a in audios
            ]
        else:
            run, x, pads = program_inputs(lm, audios, trace_key)
            jobs[part] = [(encode if part == "encoder" else run, (lm.variables, x, pads))]
        for name, runs in jobs.items():
            t0 = time.perf_counter()
            per = sum(cost(fn, *args, processor=EDGE_NPU) for fn, args in runs).per_audio(seconds)
            rows.append(
                {
                    "what": "cost",
                    "part": name,
                    "model": model_name,
                    "bits": b,
                    "sparsity": s,
                    "audio_seconds": seconds,
                    "utterances": len(audios),
                    "processor": EDGE_NPU.name,
                    "interpret_seconds": time.perf_counter() - t0,
                    **{f"per10ms_{k}": v for k, v in per.items()},
                }
            )
            print(json.dumps(rows[-1]), flush=True)
    return rows


def run_speed(loaded, art, sets, n_utts, repeats, beam):
    from asr.recognizer import DecodeSettings, Recognizer
    from hw.runtime import compile_artifact

    audios, seconds = first_audios(sets, n_utts)
    rows = []
    for name, lm in (("float JAX", loaded), ("emulator", compile_artifact(art, "speed"))):
        rec = Recognizer(lm, DecodeSettings(beam=beam))
        rec.recognize(audios)  # compiles every shape once
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            rec.recognize(audios)
            times.append(time.perf_counter() - t0)
        med = statistics.median(times)
        rows.append(
            {
                "what": "speed",
                "model": name,
                "audio_seconds": seconds,
                "utterances": len(audios),
                "repeats": repeats,
                "median_seconds": med,
                "rtf": med / seconds,
                "machine": machine(),
            }
        )
        print(json.dumps(rows[-1]), flush=True)
    return rows


def tables(rows: list[dict]) -> str:
    out = [f"machine: {machine()}"]
    size = [r for r in rows if r["what"] == "size"]
    if size:
        out += [
            "",
            "| bits | sparsity | bytes | zeros | % of large float32 |",
            "|---|---|---|---|---|",
        ]
        out += [
            f"| {r['bits']} | {r['sparsity']:.0%} | {r['bytes']:,} | {r['zero_fraction']:.1%} | "
            f"{100 * r['share_of_large']:.2f}% |"
            for r in size
        ]
    eq = [r for r in rows if r["what"] == "equiv"]
    if eq:
        out += ["", "| bits | sparsity | set | utts | WER fake-quant | WER emulator | identical |",
                "|---|---|---|---|---|---|---|"]  # fmt: skip
        out += [
            f"| {r['bits']} | {r['sparsity']:.0%} | {r['set']} | {r['utterances']} | "
            f"{100 * r['wer_fake_quant']:.2f}% | {100 * r['wer_emulator']:.2f}% | "
            f"{100 * r['identical']:.1f}% |"
            for r in eq
        ]
    co = [r for r in rows if r["what"] == "cost"]
    if co:
        dense = {
            (r["model"], r.get("part", "program"), r["bits"]): r for r in co if r["sparsity"] == 0
        }
        out += ["", "per 10 ms of audio, processor " + co[0]["processor"], "",
                "| model | part | bits | sparsity | MACs done | MACs skipped (zeros) | MACs not "
                "run (branch) | MAC cycles | vs dense | bytes read | NPU cycles | DSP cycles "
                "| cycles | time (us) |", "|" + "---|" * 14]  # fmt: skip
        for r in co:
            part = r.get("part", "program")
            d = dense.get((r["model"], part, r["bits"]))
            ratio = d["per10ms_mac_cycles"] / r["per10ms_mac_cycles"] if d else float("nan")
            out.append(
                f"| {r['model']} | {part} | {r['bits']} | {r['sparsity']:.0%} | "
                f"{r['per10ms_macs_done']:,.0f} | {r['per10ms_macs_skipped']:,.0f} | "
                f"{r.get('per10ms_macs_skipped_rows', 0):,.0f} | {r['per10ms_mac_cycles']:,.0f} | "
                f"{ratio:.2f}x | {r['per10ms_bytes_read']:,.0f} | {r['per10ms_npu_cycles']:,.0f} | "
                f"{r['per10ms_dsp_cycles']:,.0f} | {r['per10ms_cycles']:,.0f} | "
                f"{1e6 * r['per10ms_seconds']:.1f} |"
            )
    sp = [r for r in rows if r["what"] == "speed"]
    if sp:
        out += [
            "",
            "| model | utts | audio s | repeats | median s | RTF |",
            "|---|---|---|---|---|---|",
        ]
        out += [
            f"| {r['model']} | {r['utterances']} | {r['audio_seconds']:.1f} | {r['repeats']} | "
            f"{r['median_seconds']:.2f} | {r['rtf']:.3f} |"
            for r in sp
        ]
    return "\n".join(out)


def plot_cost(rows: list[dict], out: str) -> None:
    """Stacked bars per (bits, zeros): MAC, memory-only and DSP cycles per 10 ms of audio."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    co = [r for r in rows if r["what"] == "cost"]
    labels = [f"{r['bits']}-bit\n{r['sparsity']:.0%} zeros" for r in co]
    mac = np.array([r["per10ms_mac_cycles"] for r in co])
    npu = np.array([r["per10ms_npu_cycles"] for r in co])
    dsp = np.array([r["per10ms_dsp_cycles"] for r in co])
    fig, ax = plt.subplots(figsize=(7.5, 3.6))
    x = np.arange(len(co))
    ax.bar(x, mac, label="NPU: MAC-bound cycles")
    ax.bar(x, npu - mac, bottom=mac, label="NPU: memory time beyond the MACs (bytes / bandwidth)")
    ax.bar(x, dsp, bottom=npu, label="DSP: float work (softmax, norms, search)")
    ax.set_xticks(x, labels)
    ax.set_ylabel("cycles per 10 ms of audio")
    ax.set_title(f"modeled cost of the recognizer on {co[0]['processor']}", fontsize=9)
    ax.set_ylim(0, 1.45 * float(np.max(npu + dsp)))
    ax.legend(fontsize=8, loc="upper right", ncol=1)
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="default")
    ap.add_argument("--set", action="append", default=[], metavar="NAME=MANIFEST")
    ap.add_argument("--what", nargs="+", default=["size", "equiv", "cost", "speed"],
                    choices=["size", "equiv", "cost", "speed"])  # fmt: skip
    ap.add_argument("--bits", nargs="+", type=int, default=[8, 4])
    ap.add_argument("--sparsity", nargs="+", type=float, default=[0.0, 0.5, 0.7])
    ap.add_argument("--equiv-sparsity", nargs="+", type=float, default=[0.0],
                    help="sparsities of the equivalence runs (default 0)")  # fmt: skip
    ap.add_argument("--limit", type=int, default=None, help="utterances per set (equiv)")
    ap.add_argument("--cost-utterances", type=int, default=4)
    ap.add_argument("--cost-part", choices=["program", "encoder", "stream"], default="program",
                    help="cost of the whole recognizer program, of the encoder alone, or of the "
                    "encoder step by step against whole, one utterance at a time")  # fmt: skip
    ap.add_argument("--speed-utterances", type=int, default=24)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--beam", type=int, default=4)
    ap.add_argument("--out", default=None, help="append results as JSON lines")
    ap.add_argument("--plot", default=None, metavar="PNG", help="with cost: the cycles as bars")
    ap.add_argument("--from-results", default=None, metavar="JSONL",
                    help="measure nothing: print the tables (and --plot) of earlier results")  # fmt: skip
    args = ap.parse_args(argv)
    from asr.manifest import named_paths
    from asr.model_io import load_model

    if args.from_results:
        rows = [json.loads(line) for line in Path(args.from_results).read_text().splitlines()]
        if args.plot:
            plot_cost(rows, args.plot)
        print(tables(rows))
        return 0
    sets = named_paths(args.set)
    if set(args.what) - {"size"} and not sets:
        raise SystemExit("--set NAME=MANIFEST is needed for equiv, cost and speed")
    loaded = load_model(args.model)
    rows: list[dict] = []
    if "size" in args.what or "cost" in args.what:
        arts = artifacts(loaded, args.bits, args.sparsity)
    if "size" in args.what:
        rows += run_size(arts, args.model)
    if "equiv" in args.what:
        eq_arts = artifacts(loaded, args.bits, args.equiv_sparsity)
        rows += run_equiv(eq_arts, sets, args.limit, args.model, args.beam)
    if "cost" in args.what:
        rows += run_cost(arts, sets, args.cost_utterances, args.model, args.beam, args.cost_part)
    if "speed" in args.what:
        art = artifacts(loaded, [min(args.bits)], [0.0])[(min(args.bits), 0.0)]
        rows += run_speed(loaded, art, sets, args.speed_utterances, args.repeats, args.beam)
    if args.out:
        with Path(args.out).open("a") as f:
            for r in rows:
                f.write(json.dumps(r) + "\n")
    if args.plot and any(r["what"] == "cost" for r in rows):
        plot_cost(rows, args.plot)
    print(tables(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
