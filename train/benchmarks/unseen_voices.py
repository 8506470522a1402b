"""Leave-one-family-out benchmark: how a recognizer does on voice families it never heard.

Owns `python -m train.benchmarks.unseen_voices [--real ../shared/data] [--workdir
runs/unseen] [--steps 2000] [--runs all no-espeak no-kokoro no-world no-real teacher] [--teacher
default] [--set KEY=VALUE ...] [--drop FAMILY ...] [--data-dir DIR]
[--json PATH]`.

The task is the demo's (`train.demo`): the 10 digits and Speech Commands' 10 core commands,
the `tiny` recipe (`train.demo.demo_recipe`), trained for minutes on 2 CPU cores, so that one
training run per held-out family fits in a session. Four voice families speak the words:

- espeak: eSpeak NG, the project's own synthesizer (`train.demo.synth_words`): training voices
  for train/dev, the held-out shipped voices for test;
- kokoro: Kokoro-82M (`train.corpus.kokoro`), blends of its styles: training voices for
  train/dev; test by the held-out voices, which are dominated by a style no training voice
  contains;
- world: WORLD-vocoder resyntheses (`train.corpus.world`, one new voice per clip) of the real
  training clips; test: resyntheses of Speech Commands' test speakers (people never heard, in
  voices never heard);
- real: FSDD and Speech Commands as `train.demo.real_data` splits them: test is Speech
  Commands' test speakers (people never heard) and FSDD's official test takes.

Runs: `all` trains on every family; `no-F` on all but F, so F's test sets are out of family;
`no-fsdd-S` on everything but FSDD speaker S (their real clips and the WORLD resyntheses of
them), so S's FSDD test takes are spoken by a person the run never heard (leave one speaker
out; `--runs fsdd-loso` names one such run per FSDD speaker in the data). Every run reports its
FSDD WER per speaker, and `loso_table` sets each speaker's takes decoded by runs that heard
them (`all`, and the other `no-fsdd-S` runs) beside the same takes decoded by the run that
never heard them;
`teacher` is `all` with distillation (`TrainConfig.teacher`, weight 0.5) from `--teacher`, and
`R+teacher` is run R with the same distillation (e.g. `no-kokoro+teacher`: with a teacher that
never heard Kokoro either, such as the stage-8 model, the Kokoro test set is out of family for
teacher and student alike). The default teacher is the shipped model (`small`, trained for
hours on requests, FSDD and Speech Commands, and since stage 9 on Kokoro and WORLD voices).
Every run uses the teacher's tokenizer (distillation needs a shared one; the runs stay
comparable). Each run's model is evaluated on every test set
(beam 4); the table marks out-of-family cells. `results.json` keeps every number, the data
sizes and the times; a run already finished in the work folder is not trained again.

Every number printed is measured by this script on the machine it ran on; the README quotes
one such run.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

FAMILIES = ("espeak", "kokoro", "world", "real")
RUNS = ("all", "no-espeak", "no-kokoro", "no-world", "no-real", "teacher")
TEACHER_SUFFIX = "+teacher"  # any run of RUNS but `teacher` with distillation added
SPEAKER_RUN = "no-fsdd-"  # + an FSDD speaker: that speaker left out of every family
LOSO = "fsdd-loso"  # in --runs: one SPEAKER_RUN per FSDD speaker of the test set
TEST_FAMILY = {
    "espeak_test": "espeak",
    "kokoro_test": "kokoro",
    "world_test": "world",
    "sc_test": "real",
    "fsdd_test": "real",
}


def kokoro_words(out_dir: Path, n: int, split: str, seed: int = 0, workers: int = 2) -> list[dict]:
    """n one-word utterances (the demo's words) by Kokoro voices: training voices for
    train/dev, held-out voices for test; noise as `train.demo.synth_words`. Files that exist are
    reused."""
    from train.demo import run_chunks

    folder = out_dir / split
    folder.mkdir(parents=True, exist_ok=True)
    chunks = [(folder, split, seed, a, min(a + 50, n)) for a in range(0, n, 50)]
    return run_chunks(_kokoro_chunk, chunks, workers)


def _kokoro_chunk(job: tuple) -> list[dict]:
    import numpy as np
    import soundfile as sf

    from train.corpus import kokoro
    from train.demo import WORDS, write_word

    folder, split, seed, start, stop = job
    train_voices, heldout_voices = kokoro.voice_split(seed=0)
    voices = heldout_voices if split == "test" else train_voices
    tts = None
    rows = []
    for i in range(start, stop):
        rng = np.random.default_rng((seed, 7, {"train": 0, "dev": 1, "test": 2}[split], i))
        word = WORDS[int(rng.integers(len(WORDS)))]
        voice = voices[int(rng.integers(len(voices)))]
        path = folder / f"{i:05d}.flac"
        if not path.exists():
            tts = tts or kokoro.KokoroTTS(threads=1)
            x, sr = tts.synthesize(word, voice)
            write_word(path, x, sr, rng, i)
        info = sf.info(str(path))
        rows.append(
            {
                "audio": str(path.resolve()),
                "text": word,
                "speaker": f"kokoro:{voice.name}",
                "duration": info.frames / info.samplerate,
                "split": split,
                "synthetic": True,
                "family": "kokoro",
            }
        )
    return rows


def build_data(real: Path, data_dir: Path, n_synth: int, workers: int = 2) -> dict:
    """{family: {"train": rows, "dev": rows}} and {test name: rows}; manifests are written under
    data_dir and reused when present."""
    import numpy as np

    from asr.manifest import read_manifest, write_manifest
    from train.corpus.world import resynthesize_manifest
    from train.demo import long_enough_for_ctc, real_data, synth_words

    done = data_dir / "sets.json"
    if done.exists():
        names = json.loads(done.read_text())
        load = {k: read_manifest(data_dir / f"{k}.jsonl") for k in names}
        fams = {f: {s: load[f"{f}_{s}"] for s in ("train", "dev")} for f in FAMILIES}
        return fams, {k: load[k] for k in TEST_FAMILY}
    r = real_data(real)
    if r is None or not r["sc_test"]:
        raise SystemExit(f"--real {real}: FSDD and Speech Commands are needed")
    n_small = max(20, n_synth // 8)
    t0 = time.perf_counter()
    fams = {
        "real": {"train": r["train"], "dev": r["dev"]},
        "espeak": {
            "train": synth_words(data_dir / "espeak", n_synth, "train", workers=workers),
            "dev": synth_words(data_dir / "espeak", n_small, "dev", workers=workers),
        },
        "kokoro": {
            "train": kokoro_words(data_dir / "kokoro", n_synth, "train", workers=workers),
            "dev": kokoro_words(data_dir / "kokoro", n_small, "dev", workers=workers),
        },
    }
    tests = {
        "espeak_test": synth_words(data_dir / "espeak", 300, "test", workers=workers),
        "kokoro_test": kokoro_words(data_dir / "kokoro", 300, "test", workers=workers),
        "sc_test": r["sc_test"],
        "fsdd_test": r["fsdd_test"],
    }
    print(f"synthesized eSpeak NG and Kokoro words in {time.perf_counter() - t0:.0f} s")
    t0 = time.perf_counter()
    rng = np.random.default_rng(0)
    src = [r["train"][i] for i in rng.permutation(len(r["train"]))[:n_synth]]
    dev_src = [r["dev"][i] for i in rng.permutation(len(r["dev"]))[:n_small]]
    test_src = [r["sc_test"][i] for i in rng.permutation(len(r["sc_test"]))[:300]]
    world = lambda rows, k: resynthesize_manifest(  # noqa: E731
        rows, data_dir / "world" / k, variants=1, seed=0, workers=workers, progress=True
    )
    fams["world"] = {"train": world(src, "train"), "dev": world(dev_src, "dev")}
    tests["world_test"] = world(test_src, "test")
    print(f"resynthesized with WORLD in {time.perf_counter() - t0:.0f} s")
    for f, parts in fams.items():
        for s, rows in parts.items():
            keep = [dict(x, split=s) for x in rows if long_enough_for_ctc(x)]
            fams[f][s] = keep
            write_manifest(keep, data_dir / f"{f}_{s}.jsonl")
    for k, rows in tests.items():
        write_manifest(rows, data_dir / f"{k}.jsonl")
    done.write_text(json.dumps([f"{f}_{s}" for f in fams for s in ("train", "dev")] + list(tests)))
    return fams, tests


def run_one(
    name: str,
    fams: dict,
    tests: dict,
    wd: Path,
    steps: int,
    teacher: str,
    sets: tuple = (),
    drop: tuple = (),
) -> dict:
    """Trains run `name` (cached in wd/name) and evaluates it on every test set. `sets`:
    recipe overrides (`KEY=VALUE`, as `asr train --set`) on top of the demo recipe; `drop`:
    families no run of this call trains on."""
    from asr.model_io import load_model
    from asr.recognizer import DecodeSettings, Recognizer, evaluate_manifest
    from train.demo import demo_recipe
    from train.trainer import train

    base = name.removesuffix(TEACHER_SUFFIX)
    distilled = name == "teacher" or name.endswith(TEACHER_SUFFIX)
    speaker = base[len(SPEAKER_RUN) :] if base.startswith(SPEAKER_RUN) else None
    held = None if speaker else base[3:] if base.startswith("no-") else None
    keep = [f for f in FAMILIES if f != held and f not in drop]
    rows = [x for f in keep for s in ("train", "dev") for x in fams[f][s]]
    if speaker is not None:
        if speaker not in fsdd_speakers(tests["fsdd_test"]):
            raise SystemExit(f"run {name}: no FSDD speaker {speaker!r} in the test set")
        rows = without_speaker(rows, speaker)
    out_path = wd / name / "benchmark.json"
    if out_path.exists():
        res = json.loads(out_path.read_text())
        if "fsdd_by_speaker" not in res:  # written before per-speaker scores existed
            rec = Recognizer(load_model(wd / name / "model"), DecodeSettings(beam=4))
            ev = evaluate_manifest(rec, tests["fsdd_test"], pairs=0, by=("speaker",))
            res["fsdd_by_speaker"] = speaker_scores(ev)
            out_path.write_text(json.dumps(res, indent=1))
        return res
    cfg = demo_recipe(steps).override(list(sets)) if sets else demo_recipe(steps)
    folder = wd / name
    teacher_model = load_model(teacher)
    if not (folder / "tokenizer.model").exists() and not distilled:
        folder.mkdir(parents=True, exist_ok=True)  # the teacher's tokenizer, as distilled runs get
        (folder / "tokenizer.model").write_bytes(teacher_model.tokenizer.model_proto)
    if distilled:
        cfg = cfg.replace(teacher=teacher, distill_weight=0.5)
    t0 = time.perf_counter()
    train(cfg, rows, folder, progress=False)
    train_s = time.perf_counter() - t0
    rec = Recognizer(load_model(folder / "model"), DecodeSettings(method="beam", beam=4))
    res = {"run": name, "held_out": held, "train_rows": len(rows), "train_seconds": train_s}
    if drop:
        res["dropped_families"] = list(drop)
    if speaker is not None:
        res["held_out_speaker"] = speaker
    if distilled:
        res["teacher"] = str(teacher)
    for k, test_rows in tests.items():
        by = ("speaker",) if k == "fsdd_test" else ()
        ev = evaluate_manifest(rec, test_rows, pairs=0, by=by)
        res[k] = {"wer": ev["wer"], "words": ev["words"], "utterances": ev["utterances"]}
        if by:
            res["fsdd_by_speaker"] = speaker_scores(ev)
    out_path.write_text(json.dumps(res, indent=1))
    return res


def fsdd_speakers(fsdd_rows: list[dict]) -> list[str]:
    """The speakers of FSDD rows, sorted."""
    return sorted({r["speaker"] for r in fsdd_rows})


def without_speaker(rows: list[dict], speaker: str) -> list[dict]:
    """`rows` without those spoken by `speaker`: their own clips and every resynthesis of them
    (WORLD rows name their source in `voice["source_speaker"]`)."""

    def of(r: dict) -> bool:
        voice = r.get("voice") if isinstance(r.get("voice"), dict) else {}
        return r.get("speaker") == speaker or voice.get("source_speaker") == speaker

    return [r for r in rows if not of(r)]


def speaker_scores(ev: dict) -> dict:
    """{speaker: {"wer", "words", "errors"}} from an `evaluate_manifest(..., by=("speaker",))`
    result (errors = WER x words, which is how the WER was made)."""
    return {
        spk: {"wer": g["wer"], "words": g["words"], "errors": round(g["wer"] * g["words"])}
        for spk, g in ev["by"]["speaker"].items()
    }


def loso_table(results: list[dict], heard_run: str = "all") -> str | None:
    """Markdown: per FSDD speaker, WER % on their test takes by `heard_run` (which trained on
    their other takes), by the other leave-one-speaker-out runs (which heard them too; errors
    over words of all those runs, so one run's luck counts less) and by the run that left them
    out; the last row pools the speakers (errors over words). None without any
    leave-one-speaker-out run; the `heard_run` column is left empty when that run is absent."""
    loso = {r["held_out_speaker"]: r for r in results if r.get("held_out_speaker")}
    if not loso:
        return None
    heard = next((r for r in results if r["run"] == heard_run and "fsdd_by_speaker" in r), None)
    lines = [
        f"| FSDD speaker | heard (`{heard_run}`) | heard (the other {SPEAKER_RUN}S runs) | "
        f"never heard (`{SPEAKER_RUN}S`) | words |",
        "|---|---|---|---|---|",
    ]
    tot = {"run": 0, "others": 0, "others_words": 0, "unheard": 0, "words": 0}
    pct = lambda e, w: f"{100 * e / w:.1f}" if w else ""  # noqa: E731
    for spk in sorted(loso):
        u = loso[spk]["fsdd_by_speaker"][spk]
        others = [r["fsdd_by_speaker"][spk] for s, r in loso.items() if s != spk]
        oe, ow = sum(o["errors"] for o in others), sum(o["words"] for o in others)
        h = heard["fsdd_by_speaker"][spk] if heard else None
        cell = pct(h["errors"], h["words"]) if h else ""
        lines.append(
            f"| {spk} | {cell} | {pct(oe, ow)} | {pct(u['errors'], u['words'])} | {u['words']} |"
        )
        tot["run"] += h["errors"] if h else 0
        tot["others"] += oe
        tot["others_words"] += ow
        tot["unheard"] += u["errors"]
        tot["words"] += u["words"]
    lines.append(
        f"| all {len(loso)} pooled | {pct(tot['run'], tot['words']) if heard else ''} | "
        f"{pct(tot['others'], tot['others_words'])} | {pct(tot['unheard'], tot['words'])} | "
        f"{tot['words']} |"
    )
    return "\n".join(lines)


def run_name(name: str) -> str:
    """argparse type of --runs: one of RUNS, or one of them but `teacher` + TEACHER_SUFFIX;
    SPEAKER_RUN + a speaker name (letters, digits, _ or -), optionally + TEACHER_SUFFIX; or
    LOSO."""
    base = name.removesuffix(TEACHER_SUFFIX)
    if name in RUNS or name == LOSO or (name != base and base in RUNS and base != "teacher"):
        return name
    spk = base[len(SPEAKER_RUN) :] if base.startswith(SPEAKER_RUN) else ""
    if spk and all(c.isalnum() or c in "_-" for c in spk):
        return name
    raise argparse.ArgumentTypeError(
        f"unknown run {name!r}: expected one of {RUNS}, R{TEACHER_SUFFIX} for R in them, "
        f"{SPEAKER_RUN}SPEAKER or {LOSO}"
    )


def table(results: list[dict]) -> str:
    """Markdown: one row per run, WER % per test set; * = the set's family was not trained on
    (held out of the run, or dropped from every run)."""
    cols = list(TEST_FAMILY)
    lines = [
        "| run | " + " | ".join(cols) + " | train min |",
        "|---|" + "---|" * (len(cols) + 1),
    ]
    for r in results:
        cells = []
        for c in cols:
            out = {r.get("held_out"), *r.get("dropped_families", ())}
            star = "*" if TEST_FAMILY[c] in out else ""
            cells.append(f"{100 * r[c]['wer']:.1f}{star}")
        lines.append(f"| {r['run']} | " + " | ".join(cells) + f" | {r['train_seconds'] / 60:.1f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--real", default="../shared/data", help="folder with fsdd/, speech_commands/")
    p.add_argument("--workdir", default="runs/unseen")
    p.add_argument(
        "--data-dir", default=None,
        help="where the benchmark's clips and manifests are made or reused (default: "
        "WORKDIR/data; runs with other --set or --drop can share one)",
    )  # fmt: skip
    p.add_argument("--steps", type=int, default=2000, help="training steps per run")
    p.add_argument("--synth", type=int, default=1500, help="training clips per synthetic family")
    p.add_argument(
        "--runs", nargs="+", default=list(RUNS), type=run_name,
        help=f"of {', '.join(RUNS)}; R{TEACHER_SUFFIX} adds distillation to run R; "
        f"{SPEAKER_RUN}S leaves FSDD speaker S out; {LOSO}: one such run per FSDD speaker",
    )  # fmt: skip
    p.add_argument("--teacher", default="default", help="teacher of the `teacher` run")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument(
        "--drop", nargs="*", default=[], choices=FAMILIES,
        help="families no run trains on (their test sets are then out of family for all; "
        "use a --workdir of their own)",
    )  # fmt: skip
    p.add_argument(
        "--set", nargs="*", default=[], metavar="KEY=VALUE", dest="sets",
        help="recipe overrides for every run (as asr train --set; e.g. augment_prob=0.8); "
        "use a --workdir of their own, since finished runs are not trained again",
    )  # fmt: skip
    p.add_argument("--json", default=None, help="write all results here too")
    args = p.parse_args(argv)
    if args.sets:
        from train.demo import demo_recipe

        try:  # bad overrides fail now, not after the data are built
            demo_recipe(args.steps).override(args.sets)
        except ValueError as e:
            p.error(str(e))
    wd = Path(args.workdir)
    t0 = time.perf_counter()
    data_dir = Path(args.data_dir) if args.data_dir else wd / "data"
    fams, tests = build_data(Path(args.real), data_dir, args.synth, args.workers)
    sizes = {f: {s: len(v) for s, v in parts.items()} for f, parts in fams.items()}
    sizes.update({k: len(v) for k, v in tests.items()})
    print("data:", json.dumps(sizes))
    runs = []
    for name in args.runs:
        more = (
            [SPEAKER_RUN + s for s in fsdd_speakers(tests["fsdd_test"])] if name == LOSO else [name]
        )
        runs += [r for r in more if r not in runs]
    results = []
    for name in runs:
        print(f"run {name} ...", flush=True)
        results.append(
            run_one(name, fams, tests, wd, args.steps, args.teacher, args.sets, args.drop)
        )
        print(table(results[-1:]).splitlines()[-1], flush=True)
    print(
        f"\nWER % (beam 4), tiny model, {args.steps} steps per run; * = family held out of "
        f"that run; machine: {platform.machine()}, {os.cpu_count()} CPUs; "
        f"{(time.perf_counter() - t0) / 60:.0f} min in all"
    )
    print(table(results))
    loso = loso_table(results)
    if loso:
        print("\nFSDD, leave one speaker out: WER % on each speaker's test takes (beam 4)")
        print(loso)
    out = {
        "sizes": sizes,
        "steps": args.steps,
        "sets": args.sets,
        "drop": args.drop,
        "results": results,
    }
    (wd / "results.json").write_text(json.dumps(out, indent=1))
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
