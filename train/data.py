"""Training data pipeline: manifests -> length-bucketed, fixed-shape batches, via grain.

Each training step's batch is a pure function of (seed, step): the step's utterance indices
come from a per-epoch plan (utterances grouped by length into buckets, shuffled, cut into
batches whose size keeps the frame count near `frames_per_batch`), and each utterance's
augmentation uses `np.random.default_rng((seed, step, slot))`. So a resumed run sees exactly the
batches it would have seen, with no data-iterator state to checkpoint.

Real speech is oversampled until it is at least `real_share` of the stream. Buckets are by
length and real clips (digits, commands) are short, so on their own they mix only into the
batches of the short buckets. With `real_phrases` > 0, composite real utterances (2 to 6 clips,
of one speaker where the speaker has that many, trimmed to their speech and joined with short
pauses: "seven two nine", "left go yes") fill the long buckets too, so real speech is mixed
into every batch.

Waveform augmentation (speed, pitch, vocal-tract length, reverberation, noise, gain, simulated
8 kHz band) runs on the host in grain's reader threads, or in worker processes when
`data_workers` > 0 (a GPU outruns a few threads); SpecAugment runs on the device inside
the train step (`train.specaugment`).

Every row is checked before training (`check_training_rows`: audio present with a readable
header, a transcript); a file that becomes unreadable during training is an error naming the
row, never a silently padded batch row.

References: grain (github.com/google/grain), Ko et al. 2015 "Audio augmentation for speech
recognition" (speed perturbation).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass

import grain
import numpy as np

from asr.audio import AudioError, load_audio, resample
from asr.features import HOP_LENGTH, SAMPLE_RATE, log_mel
from asr.text import normalize_text
from asr.tokenizer import Tokenizer
from train.configs import TrainConfig

LABEL_ROUND = 8  # label buffers are padded to a multiple of this
SPEED_MARGIN = 1.12  # speed perturbation can lengthen audio by up to 1/0.9


MAX_REPORTED = 20  # bad manifest rows listed one by one in the report before training


def check_training_rows(
    rows: list[dict],
    names: list[str] | None = None,
    skip_bad: bool = False,
    extra_fields: Sequence[str] = (),
) -> tuple[list[dict], int]:
    """Checks every row before training (`asr.manifest.check_rows`: the audio exists and its
    header reads, the transcript is not empty, the fields and duration make sense) and fills
    in missing durations from the audio headers. Returns (good rows, number of bad rows).

    A bad row is an error, raised before anything is trained or written: one ValueError
    listing the bad rows (`names[i]` names row i, e.g. "train.jsonl:17"), the first
    MAX_REPORTED of them one by one. With `skip_bad`, training goes on without them and the
    count is reported (and recorded by the trainer). `extra_fields` are the user's own fields,
    accepted besides the known ones. Rows of other splits than train and dev
    (test) are not used in training, so neither checked nor returned."""
    from asr.manifest import check_rows

    if names is not None and len(names) != len(rows):
        raise ValueError(f"expected one name per row, got {len(names)} for {len(rows)} rows")
    used = [i for i, r in enumerate(rows) if r.get("split", "train") in ("train", "dev")]
    rows = [rows[i] for i in used]
    names = None if names is None else [names[i] for i in used]
    good, problems = check_rows(
        rows, names=names, need_text=True, probe_audio=True, extra_fields=extra_fields
    )
    n_bad = len(rows) - len(good)
    if not n_bad:
        return good, 0
    listed = "\n".join(f"  {p}" for p in problems[:MAX_REPORTED])
    more = (
        f"\n  ... and {len(problems) - MAX_REPORTED} more" if len(problems) > MAX_REPORTED else ""
    )
    if not skip_bad:
        raise ValueError(
            f"{n_bad} of {len(rows)} manifest rows cannot be used for training:\n{listed}{more}"
            "\nfix or remove them, or train without them (asr train --skip-bad-rows; "
            "train(..., skip_bad_rows=True))"
        )
    print(f"skipping {n_bad} of {len(rows)} manifest rows (--skip-bad-rows):\n{listed}{more}")
    return good, n_bad


def is_real(row: dict) -> bool:
    """Synthesized utterances carry a `voice` (eSpeak voice) field; real speech does not."""
    return "voice" not in row and not row.get("synthetic", False)


@dataclass(frozen=True)
class Bucket:
    frames: int  # padded feature frames
    labels: int  # padded label length
    batch: int  # utterances per batch
    rows: tuple[int, ...]  # indices into the row list


def make_buckets(
    durations: Sequence[float], label_lens: Sequence[int], cfg: TrainConfig, margin: float
) -> tuple[list[Bucket], int]:
    """Groups utterances by padded length. Returns (buckets, number skipped as too long)."""
    members: dict[int, list[int]] = {f: [] for f in cfg.bucket_frames}
    skipped = 0
    for i, d in enumerate(durations):
        need = math.ceil(d * margin * SAMPLE_RATE / HOP_LENGTH) + 1
        fit = [f for f in cfg.bucket_frames if f >= need]
        if not fit or d > cfg.max_seconds:
            skipped += 1
            continue
        members[fit[0]].append(i)
    buckets = []
    for f, rows in members.items():
        if not rows:
            continue
        max_lab = max(max(label_lens[i] for i in rows), 1)
        labels = LABEL_ROUND * math.ceil(max_lab / LABEL_ROUND)
        batch = int(max(1, min(cfg.max_batch, cfg.frames_per_batch // f)))
        buckets.append(Bucket(f, labels, batch, tuple(rows)))
    return buckets, skipped


class StepPlan(Sequence):
    """plan[step] -> (step, bucket index, utterance indices): a grain MapDataset source."""

    def __init__(self, buckets: list[Bucket], steps: int, seed: int, weights: np.ndarray):
        self.buckets = buckets
        self.steps = steps
        self.seed = seed
        self.weights = weights  # per-row repeat count (real-speech oversampling)
        self.per_epoch = sum(
            math.ceil(sum(int(weights[i]) for i in b.rows) / b.batch) for b in buckets
        )
        if self.per_epoch == 0:
            raise ValueError(
                "no training batches: every utterance was skipped or the data is empty"
            )

    def __len__(self) -> int:
        return self.steps

    @functools.lru_cache(maxsize=2)  # noqa: B019 - two epochs are live at an epoch boundary
    def _epoch(self, epoch: int) -> list[tuple[int, tuple[int, ...]]]:
        rng = np.random.default_rng((self.seed, epoch, 7))
        batches = []
        for bi, b in enumerate(self.buckets):
            rows = np.repeat(np.asarray(b.rows), [int(self.weights[i]) for i in b.rows])
            rows = rng.permutation(rows)
            n = math.ceil(len(rows) / b.batch)
            rows = np.resize(rows, n * b.batch)  # wrap around to fill the last batch
            batches += [
                (bi, tuple(int(r) for r in rows[k * b.batch : (k + 1) * b.batch])) for k in range(n)
            ]
        order = rng.permutation(len(batches))
        return [batches[i] for i in order]

    def __getitem__(self, step: int):
        if not 0 <= step < self.steps:
            raise IndexError(step)
        bi, rows = self._epoch(step // self.per_epoch)[step % self.per_epoch]
        return step, bi, rows


class UtteranceLoader:
    """Loads, augments and featurizes utterances; builds fixed-shape padded batches."""

    def __init__(
        self,
        rows: list[dict],
        tokenizer: Tokenizer,
        cfg: TrainConfig,
        noise_bank=None,
        augment: bool = True,
    ):
        self.rows = rows
        self.tokenizer = tokenizer
        self.cfg = cfg
        self.noise_bank = noise_bank
        self.augment = augment
        self.labels = [tokenizer.encode(normalize_text(r["text"])) for r in rows]

    def features(self, i: int, rng: np.random.Generator | None) -> np.ndarray:
        """f32[T, 80] features of row i, augmented when rng is given."""
        row = self.rows[i]
        x = join_phrase(self.rows, row) if "parts" in row else load_audio(row["audio"])
        if rng is not None and self.augment:
            x = self._augment(x, rng)
        return log_mel(x)

    def _augment(self, x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        from train.augment import random_augment

        if rng.random() < self.cfg.augment_prob:
            x = random_augment(x, rng, self.noise_bank)
        if rng.random() < self.cfg.narrowband_prob:
            x = resample(resample(x, SAMPLE_RATE, 8000), 8000, SAMPLE_RATE)[: len(x)]
        x = x * np.float32(10 ** (rng.uniform(-15, 10) / 20))  # gain, -15..+10 dB
        return np.clip(x, -1.0, 1.0).astype(np.float32)

    def batch(
        self,
        rows: Sequence[int],
        frames: int,
        labels: int,
        rngs: Sequence[np.random.Generator | None],
    ) -> dict[str, np.ndarray]:
        """Padded batch: feats f32[B, frames, 80], feat_paddings f32[B, frames] (1.0 = pad),
        labels int32[B, labels], label_paddings f32[B, labels]."""
        b = len(rows)
        feats = np.zeros((b, frames, 80), np.float32)
        fpad = np.ones((b, frames), np.float32)
        lab = np.zeros((b, labels), np.int32)
        lpad = np.ones((b, labels), np.float32)
        for k, (i, rng) in enumerate(zip(rows, rngs, strict=True)):
            try:
                f = self.features(i, rng)[:frames]
            except AudioError as e:
                # An error, not a padding row: every row passed `check_training_rows` before
                # training, so the file changed under the run (deleted, truncated, replaced).
                # Padding would silently train on less data than the recipe says, and the run
                # would no longer be a function of (seed, step), which resuming relies on;
                # stopping keeps the last checkpoint, and the same command resumes once the
                # data are fixed (or rerun with --skip-bad-rows: a new data set, a new run).
                raise AudioError(
                    f"training utterance {i} ({self.rows[i].get('audio', 'composite phrase')}, "
                    f"text {self.rows[i]['text']!r}) could not be read during training, after "
                    f"passing the check before it: {e}"
                ) from None
            feats[k, : len(f)] = f
            fpad[k, : len(f)] = 0.0
            y = self.labels[i][:labels]
            lab[k, : len(y)] = y
            lpad[k, : len(y)] = 0.0
        return {"feats": feats, "feat_paddings": fpad, "labels": lab, "label_paddings": lpad}


PHRASE_EDGE = 0.08  # seconds kept around each clip's speech bounds in a composite phrase


def _trimmed_duration(row: dict) -> float:
    d = float(row.get("duration") or 0.0)
    if row.get("speech_start") is None or row.get("speech_end") is None:
        return d
    return min(d, float(row["speech_end"]) - float(row["speech_start"]) + 2 * PHRASE_EDGE)


def real_phrases(rows: list[dict], count: int, seed: int, max_clips: int = 6) -> list[dict]:
    """`count` composite utterances of real clips (see module docstring), deterministic in
    `seed`. Each is {"parts": [row indices], "gaps": [seconds between parts], "text",
    "duration", "speaker"}; `rows` are the real rows, and indices point into the row list the
    phrases are appended to, which must start with `rows`."""
    if count <= 0 or len(rows) < 2:
        return []
    rng = np.random.default_rng((seed, 11))
    by_speaker: dict[str, list[int]] = {}
    for i, r in enumerate(rows):
        by_speaker.setdefault(str(r.get("speaker", "")), []).append(i)
    out = []
    for _ in range(count):
        k = int(rng.integers(2, max_clips + 1))
        first = int(rng.integers(len(rows)))
        same = by_speaker[str(rows[first].get("speaker", ""))]
        pool = same if len(same) >= k else range(len(rows))
        parts = [first] + [int(x) for x in rng.choice(pool, size=k - 1)]
        gaps = [float(g) for g in rng.uniform(0.05, 0.4, size=k - 1)]
        dur = sum(_trimmed_duration(rows[p]) for p in parts) + sum(gaps)
        text = " ".join(normalize_text(rows[p]["text"]) for p in parts)
        speaker = str(rows[first].get("speaker", "")) if pool is same else "mixed"
        out.append(
            {"parts": parts, "gaps": gaps, "text": text, "duration": dur, "speaker": speaker}
        )
    return out


def join_phrase(rows: list[dict], phrase: dict) -> np.ndarray:
    """The waveform of a composite phrase: each part trimmed to its speech bounds (with
    PHRASE_EDGE on each side), joined by low-level noise pauses."""
    pieces = []
    for n, p in enumerate(phrase["parts"]):
        r = rows[p]
        x = load_audio(r["audio"])
        if r.get("speech_start") is not None and r.get("speech_end") is not None:
            a = max(0, int((float(r["speech_start"]) - PHRASE_EDGE) * SAMPLE_RATE))
            b = min(len(x), int((float(r["speech_end"]) + PHRASE_EDGE) * SAMPLE_RATE))
            x = x[a:b] if b > a else x
        if n:
            gap = int(phrase["gaps"][n - 1] * SAMPLE_RATE)
            # a quiet noise floor (about -70 dBFS), not digital silence
            noise = np.random.default_rng((p, n)).normal(0.0, 3e-4, gap)
            pieces.append(noise.astype(np.float32))
        pieces.append(x)
    return np.concatenate(pieces)


# One thread per data worker: N workers that each start a BLAS/OpenMP pool of all cores
# oversubscribe the machine. Measured on a 16-core GPU host: 14 workers featurized 356 s of
# audio per second with default pools and 4629 with one thread each (one worker alone: 345).
_ONE_THREAD = {
    k: "1"
    for k in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS")
}


def _worker_init(index: int, count: int) -> None:
    """Data workers featurize with NumPy on one thread each; any JAX they import stays off
    the accelerator."""
    import os

    os.environ["JAX_PLATFORMS"] = "cpu"
    os.environ.update(_ONE_THREAD)
    try:
        from threadpoolctl import threadpool_limits  # pools of libraries already loaded
    except ImportError:
        return
    threadpool_limits(1)


def training_dataset(
    rows: list[dict], tokenizer: Tokenizer, cfg: TrainConfig, noise_bank, start_step: int = 0
):
    """grain IterDataset of batches for steps start_step..cfg.steps-1, and the bucket list."""
    n_phrases = 0
    if cfg.real_phrases > 0:
        real_rows = [r for r in rows if is_real(r)]
        if real_rows and len(real_rows) < len(rows):
            rows = real_rows + [r for r in rows if not is_real(r)]  # phrases index real_rows
        phrases = real_phrases(real_rows, int(cfg.real_phrases * len(real_rows)), cfg.seed)
        rows = rows + phrases
        n_phrases = len(phrases)
    loader = UtteranceLoader(rows, tokenizer, cfg, noise_bank, augment=True)
    durations = [float(r.get("duration") or 0.0) for r in rows]
    buckets, skipped = make_buckets(durations, [len(y) for y in loader.labels], cfg, SPEED_MARGIN)
    real = np.array([is_real(r) for r in rows])
    weights = np.ones(len(rows), np.int64)
    n_real, n_syn = int(real.sum()), int((~real).sum())
    if n_real and n_syn and n_real / len(rows) < cfg.real_share:
        rep = math.ceil(cfg.real_share * n_syn / ((1 - cfg.real_share) * n_real))
        weights[real] = rep
    plan = StepPlan(buckets, cfg.steps, cfg.seed, weights)

    def load(item):
        step, bi, idx = item
        b = buckets[bi]
        rngs = [np.random.default_rng((cfg.seed, step, k)) for k in range(len(idx))]
        out = loader.batch(idx, b.frames, b.labels, rngs)
        out["step"] = np.int64(step)
        return out

    ds = grain.MapDataset.source(plan)[start_step:].map(load)
    opts = grain.ReadOptions(num_threads=cfg.data_threads, prefetch_buffer_size=4)
    info = {
        "buckets": buckets,
        "skipped": skipped,
        "per_epoch": plan.per_epoch,
        "real_repeat": int(weights.max()),
        "real": n_real,
        "synthetic": n_syn,
        "real_phrases": n_phrases,
    }
    it = ds.to_iter_dataset(opts)
    if cfg.data_workers > 0:
        from absl import flags  # grain's worker processes read absl flags: use their defaults

        if not flags.FLAGS.is_parsed():
            flags.FLAGS.mark_as_parsed()
        # Workers are spawned later, on first iteration, and inherit the environment then:
        # this process's pools are already sized, so only the workers get one thread.
        import os

        os.environ.update(_ONE_THREAD)
        # Worker processes each featurize a slice of the steps; grain interleaves them back in
        # step order, so the batches are those of threads (features to float rounding: BLAS
        # sums in another order on one thread).
        it = it.mp_prefetch(
            grain.MultiprocessingOptions(num_workers=cfg.data_workers, per_worker_buffer_size=2),
            worker_init_fn=_worker_init,
        )
    return it, info
