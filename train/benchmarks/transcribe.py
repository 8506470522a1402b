"""Benchmark of transcription: our model (beam and greedy) against PocketSphinx 5 on manifests.

Owns `python -m train.benchmarks.transcribe --model MODEL --manifest M1 [M2 ...] [--limit N]
[--json PATH]`. For each manifest, on the same utterances:

- ours: `asr.recognizer.Recognizer` with beam search (beam 4, 2 symbols per frame) and with
  greedy search, scored by `asr.recognizer.evaluate_manifest`. Its RTF is the recognizer's
  `Timing`: reading and resampling the audio plus batched decoding, excluding each batch
  shape's one-time XLA compilation, which is reported on its own as `compile_s`; log-mel
  features are computed outside the timed region.
- peer: PocketSphinx 5 (`pocketsphinx.Decoder(samprate=16000)` with the default US English
  acoustic model, language model and CMUdict shipped in the wheel), one utterance at a time
  (`start_utt`, `process_raw(int16 bytes, full_utt=True)`, `end_utt`, `hyp().hypstr`) on the
  audio read by `asr.audio.load_audio` (mono, resampled to 16 kHz). Its RTF counts the same
  work as ours (reading the audio and decoding) over the audio seconds; `decode_rtf` leaves the
  reading out; `compile_s` is its model loading.

Both WERs come from `asr.text.word_error_rate` (the same normalization for both). Every number
is from one pass (no repeats), after the warm-up stated above. `--limit N` takes N utterances
spread evenly over the manifest (so manifests sorted by speaker or label are still covered).
PocketSphinx is a dev extra (`pip install -e '.[dev]'`); without it the peer rows are left out
with a message saying so.

References: Graves 2012, "Sequence Transduction with Recurrent Neural Networks" (arXiv:1211.3711);
Huggins-Daines et al. 2006, "PocketSphinx: A Free, Real-Time Continuous Speech Recognition
System for Hand-Held Devices" (ICASSP).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from asr.audio import SAMPLE_RATE, AudioError, load_audio
from asr.manifest import read_manifest
from asr.model_io import LoadedModel, load_model
from asr.recognizer import DecodeSettings, Recognizer, evaluate_manifest
from asr.text import normalize_text, word_error_rate


class PeerUnavailable(RuntimeError):
    """The peer recognizer (PocketSphinx) is not installed."""


class PocketSphinx:
    """PocketSphinx 5 with the default US English models from its wheel."""

    name = "pocketsphinx"

    def __init__(self) -> None:
        try:
            from pocketsphinx import Decoder
        except ImportError:
            raise PeerUnavailable(
                "pocketsphinx is not installed; it is a dev extra: pip install -e '.[dev]' "
                "(or pip install 'pocketsphinx>=5')"
            ) from None
        from importlib.metadata import version

        t0 = time.perf_counter()
        self._decoder = Decoder(samprate=SAMPLE_RATE, loglevel="ERROR")
        self.load_s = time.perf_counter() - t0
        cfg = self._decoder.config
        self.info = {
            "version": version("pocketsphinx"),
            "hmm": Path(cfg["hmm"]).name,
            "lm": Path(cfg["lm"]).name,
            "dict": Path(cfg["dict"]).name,
        }

    def transcribe(self, audio: np.ndarray) -> str:
        """f32[N] mono 16 kHz samples in [-1, 1] -> the best hypothesis ('' for none)."""
        audio = np.asarray(audio)
        if audio.ndim != 1:
            raise ValueError(f"expected mono f32[N] audio, got shape {audio.shape}")
        pcm = (np.clip(audio, -1.0, 1.0) * 32767.0).astype(np.int16).tobytes()
        d = self._decoder
        d.start_utt()
        d.process_raw(pcm, full_utt=True)
        d.end_utt()
        hyp = d.hyp()
        return hyp.hypstr if hyp is not None else ""


def select_rows(rows: list[dict], limit: int | None) -> list[dict]:
    """At most `limit` rows spread evenly over `rows`, in manifest order (all when None)."""
    if limit is None or limit >= len(rows):
        return list(rows)
    if limit < 1:
        raise ValueError(f"--limit must be >= 1, got {limit}")
    idx = np.linspace(0, len(rows) - 1, limit).round().astype(int)
    return [rows[i] for i in idx]


def evaluate_ours(loaded: LoadedModel, rows: list[dict], settings: DecodeSettings) -> dict:
    """One pass of our recognizer over `rows` -> evaluate_manifest's dict (less `pairs` and
    details) plus `system` (a label), `compile_s` and `hyps` (normalized hypotheses in row
    order; "" for a row whose audio could not be read, which is left out of the scores)."""
    rec = Recognizer(loaded, settings)
    res = evaluate_manifest(rec, rows, pairs=0, details=True)
    label = f"ours beam {settings.beam}" if settings.method == "beam" else "ours greedy"
    hyps = [d.get("hyp", "") for d in res.pop("utterances_detail")]
    res.pop("pairs")
    return {**res, "system": label, "compile_s": res["compile_seconds"], "hyps": hyps}


def evaluate_peer(peer: PocketSphinx, rows: list[dict]) -> dict:
    """One pass of PocketSphinx over `rows`, one utterance at a time (see module docstring)."""
    hyps, unreadable = [], 0
    refs, scored = [], []  # unreadable rows are left out of the scores, as ours are
    audio_s = load_s = decode_s = 0.0
    for r in rows:
        t0 = time.perf_counter()
        try:
            audio = load_audio(r["audio"])
        except AudioError:
            unreadable += 1
            hyps.append("")
            continue
        t1 = time.perf_counter()
        hyps.append(peer.transcribe(audio))
        refs.append(r["text"])
        scored.append(hyps[-1])
        t2 = time.perf_counter()
        load_s += t1 - t0
        decode_s += t2 - t1
        audio_s += len(audio) / SAMPLE_RATE
    w = word_error_rate(refs, scored)
    return {
        **w,
        "system": f"pocketsphinx {peer.info['version']}",
        "utterances": len(refs),
        "unreadable": unreadable,
        "rtf": (load_s + decode_s) / max(audio_s, 1e-9),
        "decode_rtf": decode_s / max(audio_s, 1e-9),
        "audio_seconds": audio_s,
        "compute_seconds": load_s + decode_s,
        "compile_s": peer.load_s,
        "model": peer.info,
        "hyps": [normalize_text(h) for h in hyps],
    }


HEADER = (
    f"{'manifest':<22} {'system':<20} {'utts':>5} {'audio s':>8} | {'WER %':>6} "
    f"{'sub':>5} {'del':>5} {'ins':>5} {'words':>6} | {'RTF':>7} {'compile s':>9}"
)


def format_row(manifest: str, r: dict) -> str:
    return (
        f"{manifest[-22:]:<22} {r['system']:<20} {r['utterances']:>5} "
        f"{r['audio_seconds']:>8.1f} | {100 * r['wer']:>6.2f} {r['substitutions']:>5} "
        f"{r['deletions']:>5} {r['insertions']:>5} {r['words']:>6} | {r['rtf']:>7.4f} "
        f"{r['compile_s']:>9.2f}"
    )


def run_manifest(
    path: str,
    loaded: LoadedModel,
    peer: PocketSphinx | None,
    limit: int | None,
    beam: int,
    batch_size: int,
    examples: int = 3,
) -> list[dict]:
    """All systems on one manifest; prints a row per system and a few example transcripts."""
    rows = select_rows(read_manifest(path), limit)
    if any("text" not in r for r in rows):
        raise ValueError(f"{path}: every row needs a 'text' transcript to compare WER")
    results = [
        evaluate_ours(
            loaded, rows, DecodeSettings(method="beam", beam=beam, batch_size=batch_size)
        ),
        evaluate_ours(loaded, rows, DecodeSettings(method="greedy", batch_size=batch_size)),
    ]
    if peer is not None:
        results.append(evaluate_peer(peer, rows))
    name = Path(path).name
    for r in results:
        r["manifest"] = str(path)
        print(format_row(name, r), flush=True)
    for i in sorted(set(np.linspace(0, len(rows) - 1, examples).round().astype(int))):
        print(f"    ref: {normalize_text(rows[i]['text'])}")
        for r in results:
            print(f"    {r['system'][:18]:<18}: {r['hyps'][i]}")
    return results


def main(argv: list[str] | None = None) -> list[dict]:
    from train.benchmarks.train_step import machine_info

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--model", default="default", help="`default`, a model folder or a training work folder"
    )
    parser.add_argument("--manifest", nargs="+", required=True, help="JSONL manifests")
    parser.add_argument(
        "--limit",
        type=int,
        default=None,
        help="utterances per manifest, spread evenly (default: all)",
    )
    parser.add_argument("--beam", type=int, default=4, help="beam of our beam search")
    parser.add_argument("--batch-size", type=int, default=8, help="our decoding batch")
    parser.add_argument("--no-peer", action="store_true", help="leave PocketSphinx out")
    parser.add_argument("--json", type=str, default=None, help="write the rows to this path")
    args = parser.parse_args(argv)

    loaded = load_model(args.model)
    peer = None
    if not args.no_peer:
        try:
            peer = PocketSphinx()
        except PeerUnavailable as e:
            print(f"peer left out: {e}")
    info = machine_info()
    print("machine: " + ", ".join(f"{k}={v}" for k, v in info.items()))
    print(
        f"ours: {loaded.source} ({loaded.config.name}, vocab {loaded.config.vocab_size}); "
        f"beam {args.beam} and greedy, batch {args.batch_size}; RTF = (audio reading + "
        f"decoding) / audio seconds, compilation excluded (compile s)"
    )
    if peer is not None:
        print(
            f"peer: PocketSphinx {peer.info['version']}, default models from the wheel "
            f"(acoustic {peer.info['hmm']}, LM {peer.info['lm']}, dictionary "
            f"{peer.info['dict']}), one utterance at a time; RTF = (audio reading + decoding) "
            f"/ audio seconds; compile s = model loading"
        )
    print(
        f"reference: manifest text; WER via asr.text.word_error_rate (same normalization for "
        f"all); utterances per manifest: {args.limit or 'all'} (evenly spread); 1 pass, no "
        f"repeats"
    )
    print(HEADER, flush=True)
    results = []
    for m in args.manifest:
        results.extend(run_manifest(m, loaded, peer, args.limit, args.beam, args.batch_size))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"machine": info, "rows": results}, f, indent=2)
        print(f"wrote {args.json}")
    return results


if __name__ == "__main__":
    main()
