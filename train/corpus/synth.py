"""Synthetic request corpus: grammar text spoken by eSpeak NG voices, with silence, reverb, noise.

Owns :func:`synthesize_corpus`, which writes 16 kHz 16-bit FLAC files and the manifests
``train.jsonl``, ``dev.jsonl`` (training voices and names), ``test.jsonl`` (held-out voices AND
held-out names only) and ``all.jsonl`` (format: :mod:`train.corpus.loaders`).

Each utterance ``i`` is made from its own ``np.random.default_rng((seed, i))``, so the corpus is
deterministic. eSpeak NG's samples also depend on its earlier calls in the same process (wave
generator state), so utterances are made in blocks of :data:`BLOCK`, each synthesized in order by
a fresh ``spawn`` process: the same seed gives the same bytes whatever the worker count. Files
are written atomically (temporary name, then rename) with a JSON sidecar holding the manifest
row, so a killed run restarted with the same arguments skips finished blocks, redoes a block with
any file missing, and rewrites the manifests at the end.

Labels are exact, not estimated: ``speech_start``/``speech_end`` are the first and last samples of
the clean synthesized signal above 1% of its peak, shifted by the leading silence;
``wake_word_end`` is the start of the word after "computer", from eSpeak's word events (in the
same synthesis, so it is exact up to eSpeak's 1 ms event resolution). Each row also records its
voice settings (``voice``) and acoustic condition (``room``: reverberation time ``rt60_s`` and
signal-to-noise ratio ``snr_db``, None where not applied), for error analysis.

Measured on the 2-core machine (``workers=2``, Speech Commands noise, other jobs sharing the
CPUs): 944 utterances (0.56 h of audio) in 18-29 s, i.e. 32-53 utterances/s or 1.2-1.9 hours of
audio per minute; most of the time is FLAC encoding, noise and process start-up, not eSpeak NG
(~2 ms per utterance).
"""

from __future__ import annotations

import json
import math
import multiprocessing as mp
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf

from train import augment
from train.corpus import espeak, grammar, loaders
from train.corpus import names as name_pool

SAMPLE_RATE = 16000
AVERAGE_SECONDS = 2.1
"""Mean utterance length (with silences) used to turn hours into an utterance count."""


@dataclass(frozen=True)
class SynthConfig:
    """Everything an utterance depends on besides its index (shared with worker processes)."""

    out_dir: str  # corpus folder (absolute)
    seed: int  # base seed; utterance i uses default_rng((seed, i))
    n_train_dev: int  # utterances 0..n_train_dev-1 are train/dev
    n_total: int  # utterances n_train_dev..n_total-1 are test
    wake_word_prob: float  # share of requests starting with "computer"
    dev_fraction: float  # share of train/dev utterances in dev
    noise_dir: str | None  # folder of noise clips, None = synthetic noise
    rate_wpm: tuple[int, int] = (120, 210)  # speaking rate range
    pitch: tuple[int, int] = (25, 75)  # eSpeak base pitch range
    pitch_range: tuple[int, int] = (20, 90)  # eSpeak pitch range range
    lead_s: tuple[float, float] = (0.1, 0.5)  # leading silence
    trail_s: tuple[float, float] = (0.2, 0.8)  # trailing silence
    p_reverb: float = 0.3  # probability of reverberation
    rt60: tuple[float, float] = (0.2, 0.8)  # seconds
    p_noise: float = 0.8  # probability of added noise
    snr_db: tuple[float, float] = (5.0, 35.0)
    floor_noise_db: float = -70.0  # faint noise everywhere else, relative to the speech peak
    random_voices: float = 0.0  # share of train/dev utterances spoken by generated variants
    random_variants: int = 0  # how many generated variants (rnd<seed>v<k>)
    espeak_data: str | None = None  # espeak-ng-data tree holding them (make_variant_tree)
    wide_names: float = 0.0  # share of train/dev contact/device names from wide_names()
    free_sentences: float = 0.0  # share of train/dev utterances outside the templates


def _audio_path(out_dir: Path, index: int) -> Path:
    return out_dir / "audio" / f"{index // 1000:04d}" / f"{index:07d}.flac"


_VOICES: tuple[list[str], list[str]] | None = None
_BANK: dict[str | None, augment.NoiseBank] = {}


def _voice_split() -> tuple[list[str], list[str]]:
    global _VOICES
    if _VOICES is None:
        _VOICES = espeak.default_voice_split(seed=0)
    return _VOICES


def _noise_bank(noise_dir: str | None) -> augment.NoiseBank:
    if noise_dir not in _BANK:
        _BANK[noise_dir] = augment.NoiseBank(noise_dir)
    return _BANK[noise_dir]


def make_utterance(cfg: SynthConfig, index: int) -> dict:
    """Build utterance ``index``, write its FLAC and sidecar JSON; returns its manifest row.

    The samples depend on the eSpeak NG state left by earlier syntheses in this process (its
    wave generator keeps phase and flutter state), so bit-exact output needs the same sequence
    of calls from a fresh process: :func:`_work_block` provides that.
    """
    out_dir = Path(cfg.out_dir)
    audio_path = _audio_path(out_dir, index)
    sidecar = audio_path.with_suffix(".json")
    rng = np.random.default_rng((cfg.seed, index))
    if index >= cfg.n_train_dev:
        split = "test"
    else:
        split = "dev" if rng.random() < cfg.dev_fraction else "train"
    train_voices, heldout_voices = _voice_split()
    voices = heldout_voices if split == "test" else train_voices
    names = name_pool.HELDOUT_NAMES if split == "test" else name_pool.TRAIN_NAMES
    wide = cfg.wide_names if split != "test" else 0.0
    # No draw at all when the share is 0: corpora without free sentences stay as they were.
    if split != "test" and cfg.free_sentences > 0 and rng.random() < cfg.free_sentences:
        req = grammar.sample_free_sentence(rng, names, cfg.wake_word_prob, wide)
    else:
        req = grammar.sample_request(rng, names, cfg.wake_word_prob, wide)
    voice = voices[int(rng.integers(len(voices)))]
    if split != "test" and cfg.random_voices > 0 and rng.random() < cfg.random_voices:
        accent = espeak.ACCENTS[int(rng.integers(len(espeak.ACCENTS)))]
        voice = f"{accent}+{random_variant_name(cfg.seed, int(rng.integers(cfg.random_variants)))}"
    rate = int(rng.integers(cfg.rate_wpm[0], cfg.rate_wpm[1] + 1))
    pitch = int(rng.integers(cfg.pitch[0], cfg.pitch[1] + 1))
    prange = int(rng.integers(cfg.pitch_range[0], cfg.pitch_range[1] + 1))
    clean, sr, words = espeak.synthesize_words(req.text, voice, rate, pitch, prange)
    x, lead, loud, rt60, snr = apply_channel(
        cfg, rng, clean, sr, f"eSpeak NG gave silence for {req.text!r} with voice {voice}"
    )
    row = {
        "audio": str(audio_path.resolve()),
        "text": req.text,
        "speaker": voice,
        "duration": x.size / sr,
        "speech_start": (lead + int(loud[0])) / sr,
        "speech_end": (lead + int(loud[-1]) + 1) / sr,
        "context": req.context,
        "split": split,
        "domain": req.domain,
        "voice": {"name": voice, "rate_wpm": rate, "pitch": pitch, "pitch_range": prange},
        "room": {"rt60_s": rt60, "snr_db": snr},  # None: no reverberation / no added noise
    }
    if req.wake_word and len(words) >= 2:
        row["wake_word_end"] = lead / sr + words[1][1]
    audio_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = audio_path.with_name(audio_path.stem + ".tmp.flac")
    sf.write(str(tmp), x, sr, subtype="PCM_16", format="FLAC")
    os.replace(tmp, audio_path)
    tmp_json = sidecar.with_name(sidecar.name + ".tmp")
    tmp_json.write_text(json.dumps(row))
    os.replace(tmp_json, sidecar)
    return row


def apply_channel(cfg, rng: np.random.Generator, clean: np.ndarray, sr: int, silent: str):
    """The recording channel of a synthesized utterance, in this order of random draws: leading
    and trailing silence, reverberation, a faint floor noise, noise at an SNR, peak level.

    Args:
      cfg: a `SynthConfig` or any config with its channel fields (lead_s, trail_s, p_reverb,
        rt60, floor_noise_db, p_noise, noise_dir, snr_db), e.g. `train.corpus.kokoro`'s.
      rng: the utterance's random source.
      clean: f32[N] the synthesizer's output at `sr`.
      silent: the RuntimeError message when `clean` has no signal.

    Returns:
      (x f32[lead + N + trail], lead samples, loud: indices of clean's samples above 1% of its
      peak, rt60 seconds or None, snr dB or None).
    """
    peak = float(np.max(np.abs(clean))) if clean.size else 0.0
    if peak <= 0:
        raise RuntimeError(silent)
    loud = np.nonzero(np.abs(clean) > 0.01 * peak)[0]
    lead = int(rng.uniform(*cfg.lead_s) * sr)
    trail = int(rng.uniform(*cfg.trail_s) * sr)
    x = np.concatenate([np.zeros(lead, np.float32), clean, np.zeros(trail, np.float32)])
    # x: f32[lead + len(clean) + trail], speech between the first and last loud samples
    rt60 = snr = None
    if rng.random() < cfg.p_reverb:
        rt60 = float(rng.uniform(*cfg.rt60))
        x = augment.reverberate(x, rng, rt60)
    floor = augment.synthetic_noise(rng, x.size, "white") * peak * 10 ** (cfg.floor_noise_db / 20)
    x = x + floor
    if rng.random() < cfg.p_noise:
        noise = _noise_bank(cfg.noise_dir).crop(rng, x.size)
        snr = float(rng.uniform(*cfg.snr_db))
        x = augment.add_noise(x, noise, snr)
    x = augment.peak_normalize(x, float(rng.uniform(0.3, 0.95)))
    return x, lead, loud, rt60, snr


BLOCK = 256
"""Utterances per block: a block is always synthesized in order, by a fresh process."""


def random_variant_name(seed: int, k: int) -> str:
    return f"{espeak.RANDOM_VARIANT_PREFIX}{seed}v{k}"


def random_variants(seed: int, count: int) -> dict[str, str]:
    """The generated voice variants of a corpus: name -> variant file text (deterministic)."""
    return {
        random_variant_name(seed, k): espeak.random_variant(
            np.random.default_rng([seed, 0x5EED, k]), random_variant_name(seed, k)
        )
        for k in range(count)
    }


def _block_done(cfg: SynthConfig, start: int, stop: int) -> bool:
    for i in range(start, stop):
        path = _audio_path(Path(cfg.out_dir), i)
        if not (path.exists() and path.with_suffix(".json").exists()):
            return False
    return True


def _work_block(args: tuple[SynthConfig, int, int]) -> list[dict]:
    """Rows of utterances ``start..stop-1``: reloaded from their sidecars when all exist, else
    all re-synthesized in order (so a resumed block is bit-identical to an uninterrupted one)."""
    cfg, start, stop = args
    if _block_done(cfg, start, stop):
        return [
            json.loads(_audio_path(Path(cfg.out_dir), i).with_suffix(".json").read_text())
            for i in range(start, stop)
        ]
    if cfg.espeak_data:
        espeak.use_data_path(cfg.espeak_data)
    return [make_utterance(cfg, i) for i in range(start, stop)]


def plan_counts(hours: float, heldout_test_hours: float | None = None) -> tuple[int, int]:
    """Number of (train + dev, test) utterances for ``hours`` of train/dev audio.

    The test split gets ``heldout_test_hours`` (default 10% of ``hours``) and at least 50
    utterances; counts use the mean utterance length :data:`AVERAGE_SECONDS`.
    """
    if not (math.isfinite(hours) and hours > 0):
        raise ValueError(f"hours: expected a positive number, got {hours}")
    test_hours = 0.1 * hours if heldout_test_hours is None else heldout_test_hours
    if not (math.isfinite(test_hours) and test_hours >= 0):
        raise ValueError(f"heldout_test_hours: expected >= 0, got {heldout_test_hours}")
    n_train_dev = max(1, math.ceil(hours * 3600 / AVERAGE_SECONDS))
    n_test = max(50, math.ceil(test_hours * 3600 / AVERAGE_SECONDS))
    return n_train_dev, n_test


def synthesize_corpus(
    out_dir: str | Path,
    hours: float,
    seed: int = 0,
    wake_word_prob: float = 0.3,
    noise_dir: str | Path | None = None,
    workers: int = 2,
    dev_fraction: float = 0.05,
    heldout_test_hours: float | None = None,
    progress: bool = True,
    random_voices: float = 0.0,
    random_variants_count: int = 200,
    wide_names: float = 0.0,
    test_only: bool = False,
    free_sentences: float = 0.0,
) -> Path:
    """Synthesize a request corpus into ``out_dir``.

    Args:
        out_dir: corpus folder (``audio/`` and the manifests go here).
        hours: approximate hours of train + dev audio.
        seed: base seed; the same arguments give the same corpus, file for file.
        wake_word_prob: share of (non-isolated) requests starting with "computer".
        noise_dir: folder of noise clips (e.g. Speech Commands ``_silence_``); None = synthetic.
        workers: processes (``spawn``, one fresh process per block of :data:`BLOCK` utterances).
        dev_fraction: share of train/dev utterances put in dev.
        heldout_test_hours: hours of the test split (held-out voices and names); default 10% of
            ``hours``, at least 50 utterances.
        progress: show a tqdm progress bar.
        random_voices: share of train/dev utterances spoken by generated voice variants
            (:func:`train.corpus.espeak.random_variant`, written under ``out_dir/espeak/``) in
            place of shipped ones; the test split always keeps the held-out shipped variants.
        random_variants_count: how many variants to generate (when ``random_voices`` > 0).
        wide_names: share of spoken contact and device names in train/dev utterances drawn
            from the wide list of :func:`train.corpus.names.wide_names` (22,133 names, none
            held out or sounding like one), to show the model many more spellings of names.
        free_sentences: share of train/dev utterances that say a sentence outside the
            templates (:func:`train.corpus.grammar.sample_free_sentence`: random word strings,
            edited requests, names and numbers anywhere, paraphrases), so that the model's
            predictor does not learn the templates as its language model; the test split is
            unaffected. 0 (the default) draws nothing extra: the corpus of a seed is unchanged.
        test_only: synthesize only the blocks that hold test utterances and write only
            ``test.jsonl``: the same test split, file for file, as the whole corpus of these
            arguments has, in a fraction of the time (to rebuild a test set without its
            training part). A later call without it completes the corpus.

    Returns:
        The path of ``all.jsonl``; ``train.jsonl``, ``dev.jsonl`` and ``test.jsonl`` lie beside it.
        With ``test_only``, the path of ``test.jsonl``.
    """
    if not 0.0 <= wake_word_prob <= 1.0:
        raise ValueError(f"wake_word_prob: expected in [0, 1], got {wake_word_prob}")
    if not 0.0 <= dev_fraction < 1.0:
        raise ValueError(f"dev_fraction: expected in [0, 1), got {dev_fraction}")
    if int(workers) < 1:
        raise ValueError(f"workers: expected >= 1, got {workers}")
    if not 0.0 <= random_voices <= 1.0:
        raise ValueError(f"random_voices: expected in [0, 1], got {random_voices}")
    if random_voices > 0 and not 1 <= int(random_variants_count) <= espeak.MAX_EXTRA_VARIANTS:
        raise ValueError(
            f"random_variants_count: expected 1..{espeak.MAX_EXTRA_VARIANTS}, "
            f"got {random_variants_count}"
        )
    if not 0.0 <= wide_names <= 1.0:
        raise ValueError(f"wide_names: expected in [0, 1], got {wide_names}")
    if not 0.0 <= free_sentences <= 1.0:
        raise ValueError(f"free_sentences: expected in [0, 1], got {free_sentences}")
    if wide_names > 0:
        name_pool.wide_names()  # a damaged list fails here, not in a worker
    if noise_dir is not None and not Path(noise_dir).is_dir():
        raise ValueError(f"noise_dir: expected a folder of noise clips, got {noise_dir}")
    n_train_dev, n_test = plan_counts(hours, heldout_test_hours)
    out = Path(out_dir).resolve()
    out.mkdir(parents=True, exist_ok=True)
    extra = {}
    if random_voices > 0:
        tree = espeak.make_variant_tree(
            out / "espeak", random_variants(int(seed), int(random_variants_count))
        )
        extra = dict(
            random_voices=float(random_voices),
            random_variants=int(random_variants_count),
            espeak_data=str(tree),
        )
    cfg = SynthConfig(
        out_dir=str(out),
        seed=int(seed),
        n_train_dev=n_train_dev,
        n_total=n_train_dev + n_test,
        wake_word_prob=float(wake_word_prob),
        dev_fraction=float(dev_fraction),
        noise_dir=None if noise_dir is None else str(Path(noise_dir).resolve()),
        wide_names=float(wide_names),
        free_sentences=float(free_sentences),
        **extra,
    )
    (out / "config.json").write_text(json.dumps(cfg.__dict__, indent=1))
    blocks = [(cfg, a, min(a + BLOCK, cfg.n_total)) for a in range(0, cfg.n_total, BLOCK)]
    if test_only:  # a block straddling the boundary is made whole: its utterances depend on it
        blocks = [b for b in blocks if b[2] > cfg.n_train_dev]
    from tqdm import tqdm

    bar = tqdm(total=cfg.n_total, desc="synthesize", unit="utt", disable=not progress)
    rows: list[dict] = []
    todo = [b for b in blocks if not _block_done(*b)]
    # Every block that needs synthesis runs in a fresh spawned process (maxtasksperchild=1),
    # since eSpeak NG's output depends on its earlier calls in the same process.
    results: dict[int, list[dict]] = {}
    if todo:
        ctx = mp.get_context("spawn")
        with ctx.Pool(min(int(workers), len(todo)), maxtasksperchild=1) as pool:
            for block, block_rows in zip(todo, pool.imap(_work_block, todo), strict=True):
                results[block[1]] = block_rows
                bar.update(len(block_rows))
    for block in blocks:
        if block[1] not in results:
            results[block[1]] = _work_block(block)
            bar.update(len(results[block[1]]))
        rows.extend(results[block[1]])
    bar.close()
    if test_only:
        return loaders.write_manifest([r for r in rows if r["split"] == "test"], out / "test.jsonl")
    for split in loaders.SPLITS:
        loaders.write_manifest([r for r in rows if r["split"] == split], out / f"{split}.jsonl")
    return loaders.write_manifest(rows, out / "all.jsonl")
