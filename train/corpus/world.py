"""New voices from recorded or synthesized speech by WORLD-vocoder resynthesis (pyworld).

Owns :class:`WorldVoice` (the voice change: pitch, intonation range, vocal-tract length,
breathiness, spectral tilt), :func:`random_voice` (its sampling), :func:`analyze` /
:func:`convert` / :func:`resynthesize` (one utterance), and :func:`resynthesize_manifest` /
:func:`world_corpus` (K new voices for every row of a manifest, written as FLAC files and a
manifest, resumable, in worker processes).

Each utterance is analysed once (WORLD: F0 by Harvest, spectral envelope by CheapTrick,
band aperiodicity by D4C, 5 ms frames, float64) and re-synthesized per voice after changing:

- F0 on voiced frames, in the log domain around the utterance's mean log-F0 ``mu``:
  ``log f0' = mu + f0_range * (log f0 - mu) + log f0_scale`` (pitch and intonation range);
- the frequency axis of the spectral envelope and of the aperiodicity by the piecewise-linear
  VTLP warp (:func:`train.augment.vtlp_warp`, ``f -> formant_warp * f`` below ~4.8 kHz, Nyquist
  kept): ``formant_warp`` > 1 is a shorter vocal tract (formants up), < 1 a longer one;
- the aperiodicity of voiced frames: its dB scaled by ``1 - breath`` (> 0 breathier: a -40 dB
  band at ``breath`` 0.5 becomes -20 dB; < 0 buzzier);
- the envelope's slope by ``tilt_db`` per octave around 1 kHz.

:func:`random_voice` draws these with pitch and vocal-tract length correlated (higher voices
mostly get shorter vocal tracts) and, given the source's mean F0, only pitches whose new mean
lies in :data:`PLAUSIBLE_F0` (70-400 Hz).

The output has the input's length and RMS level (peak kept under full scale), so the source
row's ``speech_start``/``speech_end`` and transcript stay valid. Unvoiced frames keep F0 = 0
(noise excitation), so all-unvoiced input only has its envelope changed; silent input and input
shorter than :data:`MIN_SAMPLES` are returned unchanged (nothing to analyse).

Harvest rather than DIO + StoneMask (``f0_method="dio"`` picks the latter): on one core of this
2-core machine, unloaded, Harvest takes 0.20 s per second of audio, DIO + StoneMask 0.017,
CheapTrick + D4C 0.036, modification and synthesis ~0.015 per voice, so one
:func:`resynthesize` call costs ~0.25 s/s with Harvest, ~0.07 with DIO (0.38 and 0.07 measured
with other jobs on the cores). DIO loses voicing in noise: on a vowel with vibrato at 5 dB SNR
it called 16-51% of frames voiced (F0 90-220 Hz), Harvest 100%, and every missed frame becomes
a whispered stretch in every voice; on clean eSpeak NG speech 81% against 88%. The corpus
rows carry noise at 5-35 dB SNR, so Harvest is the default. :func:`resynthesize_manifest`
analyses a row once for all its K voices, which shares Harvest's cost: 100 eSpeak NG corpus
rows (219 s) x 4 voices took 70 CPU-seconds with Harvest, 25 with DIO (2 workers, FLAC
writing included), i.e. ~0.12 and ~0.04 CPU-seconds per 1.5 s voice.

Rows keep their source's ``split`` (so a speaker-disjoint split stays disjoint) and are named
``world{k}:{source speaker}``, with the source speaker also in ``voice["source_speaker"]``; voice
``k`` is drawn per row (from seed, audio path and k), so ``world3:george`` is not one voice
across george's rows: K new voices per utterance, not per speaker.

Resynthesized rows are marked by their ``voice`` field, so :func:`train.data.is_real` counts
them as synthetic speech, even when made from real recordings: a vocoder voice has WORLD's
artefacts (buzzy excitation, smeared transients), and real-speech oversampling and the
real-phrase builder are for the recordings themselves.

References:
    Morise, Yokomori & Ozawa, "WORLD: a vocoder-based high-quality speech synthesis system for
    real-time applications", IEICE Trans. Inf. & Syst. E99-D(7), 2016.
    Morise, "Harvest: a high-performance fundamental frequency estimator from speech signals",
    Interspeech 2017.
    Morise, "D4C, a band-aperiodicity estimator for high-quality speech synthesis", Speech
    Communication 84, 2016.
    Jaitly & Hinton, "Vocal Tract Length Perturbation (VTLP) improves speech recognition", 2013.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import multiprocessing as mp
import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from train.augment import vtlp_warp

SAMPLE_RATE = 16000
FRAME_PERIOD_MS = 5.0  # WORLD analysis/synthesis frame period
F0_FLOOR, F0_CEIL = 60.0, 800.0  # Harvest / DIO search range in Hz
F0_OUT_RANGE = (40.0, 1000.0)  # changed F0 is clipped to this range (Hz)
SPLITS = ("train", "dev", "test")  # world_corpus writes one manifest per split present
MIN_SAMPLES = 800  # 50 ms at 16 kHz: shorter input is returned unchanged
PEAK_LIMIT = 0.99  # the output's peak is kept at or below this (FLAC PCM_16 must not clip)
_ONE_THREAD = {
    k: "1"
    for k in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS")
}

# Hard limits of WorldVoice's fields (checked on construction); random_voice samples inside
# narrower, plausible ranges (RANDOM_RANGES).
LIMITS = {
    "f0_scale": (0.4, 2.5),
    "f0_range": (0.0, 2.5),
    "formant_warp": (0.75, 1.3),
    "breath": (-1.0, 0.8),
    "tilt_db": (-6.0, 6.0),
}
RANDOM_RANGES = {
    "f0_scale": (0.6, 1.7),  # log-uniform
    "f0_range": (0.5, 1.6),  # log-uniform
    "formant_warp": (0.82, 1.2),  # exp(FORMANT_PER_LOG_F0 * log f0_scale + noise), clipped
    "breath": (-0.3, 0.5),  # uniform
    "tilt_db": (-2.0, 2.0),  # uniform
}
FORMANT_PER_LOG_F0 = 0.25  # log formant_warp follows 0.25 log f0_scale (x1.7 F0 -> x1.14)
FORMANT_LOG_SD = 0.04  # spread of log formant_warp around that line
PLAUSIBLE_F0 = (70.0, 400.0)  # Hz: random_voice keeps a known source's new mean F0 in here


@dataclass(frozen=True)
class WorldVoice:
    """A voice change; the default (all 1.0 / 0.0) is the identity (plain resynthesis)."""

    f0_scale: float = 1.0  # multiplies F0 (0.6 ~ a lower voice, 1.7 ~ male to female/child)
    f0_range: float = 1.0  # scales log-F0 deviations from the mean: < 1 flatter, > 1 livelier
    formant_warp: float = 1.0  # envelope frequency warp: > 1 shorter vocal tract, formants up
    breath: float = 0.0  # voiced aperiodicity ap -> ap ** (1 - breath): > 0 breathier
    tilt_db: float = 0.0  # envelope slope change in dB per octave around 1 kHz

    def __post_init__(self):
        for name, (lo, hi) in LIMITS.items():
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float, np.floating, np.integer)):
                raise ValueError(f"WorldVoice.{name}: expected a number, got {v!r}")
            if not (np.isfinite(v) and lo <= v <= hi):
                raise ValueError(f"WorldVoice.{name}: expected in [{lo}, {hi}], got {v}")
            object.__setattr__(self, name, float(v))

    def to_dict(self) -> dict[str, float]:
        return dataclasses.asdict(self)


def random_voice(rng: np.random.Generator, source_f0: float | None = None) -> WorldVoice:
    """A random plausible voice (:data:`RANDOM_RANGES`).

    Pitch and vocal-tract length are correlated as across speakers: log ``formant_warp`` is
    ``FORMANT_PER_LOG_F0 * log f0_scale`` plus Gaussian spread, so raising F0 by 1.7 mostly
    comes with formants ~14% higher (male to female-like), not with a longer vocal tract.

    Args:
        rng: the random generator (the only source of randomness).
        source_f0: the source utterance's mean F0 in Hz (:func:`mean_f0`), when known:
            ``f0_scale`` is then drawn only where the new mean F0 lies in :data:`PLAUSIBLE_F0`
            (a 90 Hz voice is not lowered to 54 Hz, nor a 250 Hz one raised to 425 Hz).
    """
    lo, hi = np.log(RANDOM_RANGES["f0_scale"])
    if source_f0 is not None and np.isfinite(source_f0) and source_f0 > 0:
        lo_t, hi_t = np.log(np.array(PLAUSIBLE_F0) / source_f0)
        lo, hi = np.clip(max(lo, lo_t), lo, hi), np.clip(min(hi, hi_t), lo, hi)
        lo = min(lo, hi)  # no overlap (a source outside ~40-670 Hz): the nearest bound
    log_f0 = rng.uniform(lo, hi)
    lo_r, hi_r = RANDOM_RANGES["f0_range"]
    f0_range = float(np.exp(rng.uniform(np.log(lo_r), np.log(hi_r))))
    lo_w, hi_w = RANDOM_RANGES["formant_warp"]
    warp = np.exp(FORMANT_PER_LOG_F0 * log_f0 + FORMANT_LOG_SD * rng.standard_normal())
    return WorldVoice(
        f0_scale=float(np.exp(log_f0)),
        f0_range=f0_range,
        formant_warp=float(np.clip(warp, lo_w, hi_w)),
        breath=float(rng.uniform(*RANDOM_RANGES["breath"])),
        tilt_db=float(rng.uniform(*RANDOM_RANGES["tilt_db"])),
    )


@dataclass(frozen=True)
class WorldFeatures:
    """WORLD analysis of one utterance (T frames of FRAME_PERIOD_MS, F = fft_size/2 + 1 bins)."""

    x: np.ndarray  # f32[N] the input
    sr: int  # sample rate in Hz
    f0: np.ndarray | None  # f64[T] Hz, 0 = unvoiced; None: input silent or too short
    sp: np.ndarray | None  # f64[T, F] spectral envelope (power)
    ap: np.ndarray | None  # f64[T, F] band aperiodicity in [0, 1] (amplitude ratio)


def _check_input(x, sr) -> tuple[np.ndarray, int]:
    x = np.asarray(x)
    if x.ndim != 1:
        raise ValueError(f"x: expected a 1-D waveform f32[N], got shape {x.shape}")
    if x.size == 0:
        raise ValueError("x: expected at least one sample, got an empty array")
    if not np.issubdtype(x.dtype, np.floating):
        raise ValueError(f"x: expected a float waveform, got dtype {x.dtype}")
    if not np.all(np.isfinite(x)):
        raise ValueError("x: expected finite samples, got NaN or inf")
    if isinstance(sr, bool) or not isinstance(sr, (int, np.integer)) or not 4000 <= sr <= 384000:
        raise ValueError(f"sr: expected a whole number of Hz in 4000..384000, got {sr!r}")
    return x.astype(np.float32, copy=False), int(sr)


def mean_f0(feats: WorldFeatures) -> float | None:
    """Geometric mean F0 (Hz) of the voiced frames; None when there are none."""
    if feats.f0 is None or not np.any(feats.f0 > 0):
        return None
    return float(np.exp(np.mean(np.log(feats.f0[feats.f0 > 0]))))


def analyze(x: np.ndarray, sr: int = SAMPLE_RATE, f0_method: str = "harvest") -> WorldFeatures:
    """WORLD analysis of ``x`` (f32[N] mono): F0, spectral envelope, aperiodicity.

    Args:
        x: f32[N] waveform, finite.
        sr: its sample rate in Hz.
        f0_method: "harvest" (default: fewer voicing misses) or "dio" (DIO + StoneMask, ~12x
            faster F0, see the module docstring).

    Returns:
        The features; ``f0``/``sp``/``ap`` are None when ``x`` is silent or shorter than
        :data:`MIN_SAMPLES` (:func:`convert` then returns ``x`` unchanged).
    """
    import pyworld as pw

    x, sr = _check_input(x, sr)
    if f0_method not in ("harvest", "dio"):
        raise ValueError(f"f0_method: expected 'harvest' or 'dio', got {f0_method!r}")
    if x.size < MIN_SAMPLES or not np.any(x):
        return WorldFeatures(x, sr, None, None, None)
    x64 = x.astype(np.float64)  # pyworld needs float64
    kw = dict(f0_floor=F0_FLOOR, f0_ceil=F0_CEIL, frame_period=FRAME_PERIOD_MS)
    if f0_method == "harvest":
        f0, t = pw.harvest(x64, sr, **kw)
    else:
        f0, t = pw.dio(x64, sr, **kw)
        f0 = pw.stonemask(x64, f0, t, sr)
    sp = pw.cheaptrick(x64, f0, t, sr)  # -> [T, F]
    ap = pw.d4c(x64, f0, t, sr)  # -> [T, F]
    return WorldFeatures(x, sr, f0, sp, ap)


def _warp_bins(m: np.ndarray, alpha: float, sr: int) -> np.ndarray:
    """m: f64[T, F] over 0..sr/2 -> the same read at warp^-1(f) (linear interpolation)."""
    n_bins = m.shape[1]
    freqs = np.linspace(0.0, sr / 2.0, n_bins)
    warped = vtlp_warp(freqs, alpha, sr / 2.0)  # where each source bin lands
    src = np.interp(freqs, warped, freqs)  # inverse warp: source frequency of each output bin
    pos = src / (sr / 2.0) * (n_bins - 1)
    lo = np.clip(np.floor(pos).astype(np.int64), 0, n_bins - 1)
    hi = np.minimum(lo + 1, n_bins - 1)
    w = pos - lo  # -> [F]
    return (1.0 - w) * m[:, lo] + w * m[:, hi]


def modify(feats: WorldFeatures, voice: WorldVoice) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The changed (f0 f64[T], sp f64[T, F], ap f64[T, F]) of analysed features."""
    assert feats.f0 is not None, "modify needs analysed features (f0 is None)"
    f0, sp, ap = feats.f0, feats.sp, feats.ap
    voiced = f0 > 0  # -> bool[T]
    f0_new = np.zeros_like(f0)
    if voiced.any():
        log_f0 = np.log(f0[voiced])
        mu = log_f0.mean()
        log_new = mu + voice.f0_range * (log_f0 - mu) + np.log(voice.f0_scale)
        f0_new[voiced] = np.clip(np.exp(log_new), *F0_OUT_RANGE)
    log_sp = np.log(np.maximum(sp, 1e-30))
    if voice.formant_warp != 1.0:
        log_sp = _warp_bins(log_sp, voice.formant_warp, feats.sr)
        ap = _warp_bins(ap, voice.formant_warp, feats.sr)
    if voice.tilt_db != 0.0:
        freqs = np.linspace(0.0, feats.sr / 2.0, sp.shape[1])
        octaves = np.log2(np.maximum(freqs, 200.0) / 1000.0)  # flat below 200 Hz
        log_sp = log_sp + (voice.tilt_db * octaves / 10.0 * np.log(10.0))[None, :]  # power dB
    if voice.breath != 0.0 and voiced.any():
        ap = ap.copy()  # its dB (< 0) scaled by 1 - breath: towards 0 dB (noise) when > 0
        ap[voiced] = np.maximum(ap[voiced], 1e-6) ** (1.0 - voice.breath)
    ap = np.clip(ap, 0.0, 1.0 - 1e-9)
    return f0_new, np.ascontiguousarray(np.exp(log_sp)), np.ascontiguousarray(ap)  # pyworld: C


def _match_level(y: np.ndarray, x: np.ndarray) -> np.ndarray:
    """y (NaN-free) scaled to x's RMS, then down where needed so its peak is <= PEAK_LIMIT."""
    y = np.nan_to_num(y, nan=0.0, posinf=0.0, neginf=0.0)
    rms_x = float(np.sqrt(np.mean(np.square(x, dtype=np.float64))))
    rms_y = float(np.sqrt(np.mean(np.square(y, dtype=np.float64))))
    if rms_y <= 0.0 or rms_x <= 0.0:
        return np.zeros(x.size, np.float32)
    y = y * (rms_x / rms_y)
    peak = float(np.max(np.abs(y)))
    if peak > PEAK_LIMIT:
        y = y * (PEAK_LIMIT / peak)
    return y.astype(np.float32)


def convert(feats: WorldFeatures, voice: WorldVoice) -> np.ndarray:
    """Synthesize analysed speech with ``voice``: f32[N], the input's length and RMS level."""
    import pyworld as pw

    if feats.f0 is None:  # silent or too short: nothing to change
        return feats.x.copy()
    f0, sp, ap = modify(feats, voice)
    y = pw.synthesize(f0, sp, ap, feats.sr, FRAME_PERIOD_MS)
    n = feats.x.size
    y = y[:n] if y.size >= n else np.pad(y, (0, n - y.size))
    return _match_level(y, feats.x)


def resynthesize(
    x: np.ndarray, voice: WorldVoice, sr: int = SAMPLE_RATE, f0_method: str = "harvest"
) -> np.ndarray:
    """``x`` (f32[N] mono, finite) spoken with ``voice``: f32[N], same length and RMS level.

    Silent input and input shorter than :data:`MIN_SAMPLES` come back unchanged; all-unvoiced
    input gets only its envelope changed (warp, tilt). The output is finite, peak <= 0.99.
    """
    if not isinstance(voice, WorldVoice):
        raise ValueError(f"voice: expected a WorldVoice, got {type(voice).__name__}")
    return convert(analyze(x, sr, f0_method), voice)


# --------------------------------------------------------------------------------------------
# Manifests


def _path_key(audio: str) -> bytes:
    return hashlib.sha256(str(audio).encode("utf-8", "surrogatepass")).digest()


def variant_voice(seed: int, audio: str, k: int, source_f0: float | None = None) -> WorldVoice:
    """Voice ``k`` of the row whose audio is ``audio``: a function of (seed, audio path, k) and
    the source's mean F0 (:func:`random_voice`)."""
    key = int.from_bytes(_path_key(audio)[:8], "little")
    return random_voice(np.random.default_rng([int(seed), key, int(k)]), source_f0)


def _out_path(out_dir: Path, audio: str, k: int) -> Path:
    h = _path_key(audio).hex()
    stem = re.sub(r"[^A-Za-z0-9_.-]", "_", Path(audio).stem)[:40]
    return out_dir / "audio" / h[:2] / f"{stem}-{h[2:12]}-w{k}.flac"


def _variant_row(src: dict, audio_path: Path, k: int, voice: WorldVoice, n: int) -> dict:
    speaker = src.get("speaker")
    source_speaker = str(speaker) if speaker is not None else Path(src["audio"]).stem
    row = {
        key: v
        for key, v in src.items()
        if key not in ("audio", "speaker", "voice", "family", "source_audio", "synthetic")
    }
    row.update(
        audio=str(audio_path),
        speaker=f"world{k}:{source_speaker}",
        duration=n / SAMPLE_RATE,
        family="world",
        source_audio=str(src["audio"]),
        voice={
            **voice.to_dict(),
            "engine": "world",
            "source_speaker": source_speaker,  # speaker-disjoint splits group by this
            "source_family": src.get("family"),
            "source_voice": src.get("voice"),  # the eSpeak NG settings of a synthetic source
        },
    )
    return row


def _write_atomic_flac(path: Path, y: np.ndarray) -> None:
    import soundfile as sf

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.stem}.tmp{os.getpid()}.flac")
    sf.write(str(tmp), y, SAMPLE_RATE, subtype="PCM_16", format="FLAC")
    os.replace(tmp, path)


def _write_atomic_json(path: Path, row: dict) -> None:
    tmp = path.with_name(f"{path.name}.tmp{os.getpid()}")
    tmp.write_text(json.dumps(row, ensure_ascii=False))
    os.replace(tmp, path)


def _done(path: Path) -> bool:
    return path.exists() and path.with_suffix(".json").exists()


def _load_done(path: Path) -> dict:
    row = json.loads(path.with_suffix(".json").read_text())
    row["audio"] = str(path)  # the folder may have moved since
    return row


def _work_row(task: tuple[dict, str, int, int, str]) -> tuple[list[dict], str | None]:
    """(rows of the K voices of one source row, None) or ([], why) for unreadable audio."""
    from asr.audio import AudioError, load_audio

    src, out_dir, seed, variants, f0_method = task
    paths = [_out_path(Path(out_dir), src["audio"], k) for k in range(variants)]
    if all(_done(p) for p in paths):
        return [_load_done(p) for p in paths], None
    try:
        x = load_audio(src["audio"])
    except AudioError as e:
        return [], str(e)
    feats = analyze(x, SAMPLE_RATE, f0_method)
    rows = []
    for k, path in enumerate(paths):
        if _done(path):
            rows.append(_load_done(path))
            continue
        voice = variant_voice(seed, src["audio"], k, mean_f0(feats))
        y = convert(feats, voice)
        row = _variant_row(src, path, k, voice, y.size)
        _write_atomic_flac(path, y)
        _write_atomic_json(path.with_suffix(".json"), row)
        rows.append(row)
    return rows, None


def _worker_init() -> None:
    os.environ.update(_ONE_THREAD)
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        return
    threadpool_limits(1)


def resynthesize_manifest(
    rows: list[dict],
    out_dir: str | Path,
    variants: int = 4,
    seed: int = 0,
    workers: int = 2,
    progress: bool = True,
    f0_method: str = "harvest",
) -> list[dict]:
    """``variants`` WORLD voices of every row, written as FLAC (PCM_16, 16 kHz) under
    ``out_dir/audio/``.

    Voice ``k`` of a row is :func:`variant_voice` (seed, the row's ``audio`` path, k), so the
    same rows and seed give the same files. Each file is written atomically with a JSON sidecar
    of its row; a rerun (after an interruption, say) keeps the files that exist and makes only
    the missing ones. Rows whose audio cannot be read (:class:`asr.audio.AudioError`) are left
    out, listed on stderr.

    Args:
        rows: manifest rows (``audio`` paths as :func:`asr.manifest.read_manifest` gives them:
            absolute); any sample rate (read by :func:`asr.audio.load_audio`, so 8 kHz FSDD
            comes upsampled to 16 kHz).
        out_dir: output folder.
        variants: voices per row (K >= 1).
        seed: base seed (>= 0).
        workers: processes (spawned, one BLAS thread each); 1 works in this process.
        progress: show a tqdm progress bar (rows).
        f0_method: "harvest" or "dio" (:func:`analyze`).

    Returns:
        K rows per input row, in input order (k inner): the source row's fields (text,
        speech_start/speech_end, split, context, domain, room, ...) with ``audio`` the new file,
        ``speaker`` "world{k}:{source speaker}", ``family`` "world", ``source_audio`` the source
        file and ``voice`` the WorldVoice fields plus ``engine``, ``source_speaker``,
        ``source_family`` and ``source_voice``.
    """
    from tqdm import tqdm

    if isinstance(variants, bool) or not isinstance(variants, (int, np.integer)) or variants < 1:
        raise ValueError(f"variants: expected an integer >= 1, got {variants!r}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed: expected an integer >= 0, got {seed!r}")
    if isinstance(workers, bool) or not isinstance(workers, (int, np.integer)) or workers < 1:
        raise ValueError(f"workers: expected an integer >= 1, got {workers!r}")
    if f0_method not in ("harvest", "dio"):
        raise ValueError(f"f0_method: expected 'harvest' or 'dio', got {f0_method!r}")
    for i, r in enumerate(rows):
        if not isinstance(r, dict) or not isinstance(r.get("audio"), str) or not r["audio"]:
            raise ValueError(f"rows[{i}]: expected a row with an 'audio' path, got {r!r:.200}")
    out = Path(out_dir).resolve()
    out.mkdir(parents=True, exist_ok=True)
    tasks = [(r, str(out), int(seed), int(variants), f0_method) for r in rows]
    results: list[dict] = []
    skipped: list[str] = []

    def collect(out_rows: list[dict], problem: str | None) -> None:
        results.extend(out_rows)
        if problem is not None:
            skipped.append(problem)
        bar.update(1)

    bar = tqdm(total=len(tasks), unit="row", desc="world", disable=not progress)
    if workers == 1 or len(tasks) <= 1:
        from threadpoolctl import threadpool_limits

        with threadpool_limits(1):
            for t in tasks:
                collect(*_work_row(t))
    else:
        ctx = mp.get_context("spawn")
        saved = {k: os.environ.get(k) for k in _ONE_THREAD}
        os.environ.update(_ONE_THREAD)  # spawned children read it before importing numpy
        try:
            with ctx.Pool(min(int(workers), len(tasks)), initializer=_worker_init) as pool:
                for out_rows, problem in pool.imap(_work_row, tasks, chunksize=4):
                    collect(out_rows, problem)
        finally:
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v
    bar.close()
    if skipped:
        listed = "".join(f"\n  {p}" for p in skipped[:10])
        more = f"\n  ... and {len(skipped) - 10} more" if len(skipped) > 10 else ""
        print(
            f"world: skipped {len(skipped)} rows with unreadable audio:{listed}{more}",
            file=sys.stderr,
        )
    return results


def world_corpus(
    manifest: str | Path,
    out_dir: str | Path,
    variants: int = 4,
    seed: int = 0,
    workers: int = 2,
    limit: int | None = None,
    progress: bool = True,
    f0_method: str = "harvest",
) -> Path:
    """:func:`resynthesize_manifest` of a manifest file (its first ``limit`` rows when given):
    writes ``out_dir/all.jsonl`` and ``{split}.jsonl`` for each of :data:`SPLITS` present;
    returns the path of ``all.jsonl``."""
    from asr.manifest import read_manifest, write_manifest

    rows = read_manifest(manifest)
    if limit is not None:
        if limit < 1:
            raise ValueError(f"limit: expected >= 1, got {limit}")
        rows = rows[:limit]
    out = Path(out_dir)
    made = resynthesize_manifest(rows, out, variants, seed, workers, progress, f0_method)
    if not made:
        raise ValueError(f"{manifest}: no row with readable audio")
    for split in SPLITS:
        if not any(r.get("split") == split for r in made):
            continue
        write_manifest([r for r in made if r.get("split") == split], out / f"{split}.jsonl")
    return write_manifest(made, out / "all.jsonl")
