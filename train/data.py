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

Background noise around the speech (`noise_pad_prob`, `noise_pad_max_s`): real users' clips
start with a second or more of room noise before the first word, which the synthetic corpus
(0.1-0.5 s of near silence) never shows. A share of the utterances get a bed of background noise
(the NoiseBank: Speech Commands `_silence_` clips, or synthetic noise) that starts before and/or
runs on after the speech, at a level relative to the utterance (its own noise floor, or 3-40 dB
below its speech); the transcript is unchanged. Pure-noise utterances with an empty transcript
(`noise_only`) teach the model that noise alone is no words (their loss is -log P(all blanks)).

Waveform augmentation (speed, pitch, vocal-tract length, reverberation, noise, gain, simulated
8 kHz band) runs on the host in grain's reader threads, or in worker processes when
`data_workers` > 0 (a GPU outruns a few threads); SpecAugment runs on the device inside
the train step (`train.specaugment`).

Biasing lists (`ContextSampler`, when the recipe has a biasing network, `bias_dim` > 0): each
utterance gets a list of up to `context_phrases` names, drawn from the pool of every name in the
training rows' `context` fields: each name spoken in the utterance (a name of its `context` that
occurs in its transcript as whole words) with probability `context_spoken_prob`, the rest
distractors (names not in the transcript), the list size uniform from 0 to `context_phrases`;
rows without `context` (real speech, composite phrases, noise) get distractors only, and a
share `context_none_prob` of the batches gets no list at all. The draws come from their own
per-(seed, step, slot) streams, so the audio augmentation is that of the same recipe without
biasing, and runs stay a function of (seed, step).

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
from asr.features import HOP_LENGTH, SAMPLE_RATE, WIN_LENGTH, log_mel
from asr.models.biasing import TOKEN_BUCKETS, bucket_size, context_arrays
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


def _frames_needed(seconds: float, margin: float) -> int:
    return math.ceil(seconds * margin * SAMPLE_RATE / HOP_LENGTH) + 1


def make_buckets(
    durations: Sequence[float],
    label_lens: Sequence[int],
    cfg: TrainConfig,
    margin: float,
    pad_s: Sequence[float] | None = None,
) -> tuple[list[Bucket], int]:
    """Groups utterances by padded length. Returns (buckets, number skipped as too long).

    `pad_s[i]` > 0 reserves that many seconds of noise padding for row i (`noise_pad_budgets`):
    the row goes to the first bucket that holds its duration plus the padding (times `margin`),
    or, where none does, to the largest bucket that holds its speech (it then gets less noise).
    Whether a row is skipped depends on its duration alone, never on the padding."""
    members: dict[int, list[int]] = {f: [] for f in cfg.bucket_frames}
    skipped = 0
    for i, d in enumerate(durations):
        fit = [f for f in cfg.bucket_frames if f >= _frames_needed(d, margin)]
        if not fit or d > cfg.max_seconds:
            skipped += 1
            continue
        if pad_s is not None and pad_s[i] > 0:
            need = _frames_needed(d + float(pad_s[i]), margin)
            fit = [f for f in fit if f >= need] or fit[-1:]
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
        pad_s: Sequence[float] | None = None,
    ):
        """`pad_s[i]` > 0: row i gets background noise before and/or after its speech, within
        the room its batch's frames leave (`noise_pad_budgets`, `make_buckets`)."""
        self.rows = rows
        self.tokenizer = tokenizer
        self.cfg = cfg
        self.noise_bank = noise_bank
        self.augment = augment
        self.pad_s = np.zeros(len(rows)) if pad_s is None else np.asarray(pad_s, np.float64)
        if self.pad_s.shape != (len(rows),):
            raise ValueError(f"pad_s: expected {len(rows)} values, got {self.pad_s.shape}")
        self.labels = [tokenizer.encode(normalize_text(r["text"])) for r in rows]
        # distillation with a teacher that hears the utterance before the room and channel
        self.teacher_clean = bool(cfg.teacher) and cfg.teacher_clean

    def features(
        self, i: int, rng: np.random.Generator | None, max_frames: int | None = None
    ) -> np.ndarray:
        """f32[T, 80] features of row i, augmented when rng is given. Noise padding (rows with
        pad_s > 0) needs `max_frames`, the batch's frames: it only fills the room left there,
        so T <= max_frames unless the speech alone is longer."""
        return self.features_pair(i, rng, max_frames)[0]

    def features_pair(
        self, i: int, rng: np.random.Generator | None, max_frames: int | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """(student, teacher) f32[T, 80] features of row i: the same array twice unless the
        loader has `teacher_clean` and augments, then the teacher's are of the utterance before
        the room and the channel (same length, so the same frames)."""
        row = self.rows[i]
        if "noise_only" in row:
            x = noise_only_audio(row, self.cfg.seed, self.noise_bank)
        elif "parts" in row:
            x = join_phrase(self.rows, row)
        else:
            x = load_audio(row["audio"])
        if rng is None or not self.augment:
            f = log_mel(x)
            return f, f
        limit = None
        if self.pad_s[i] > 0 and max_frames is not None:
            limit = max_samples(max_frames)
        x, clean = self._augment(x, rng, speech="noise_only" not in row, pad_limit=limit)
        f = log_mel(x)
        return f, (f if clean is None else log_mel(clean))

    def _augment(
        self,
        x: np.ndarray,
        rng: np.random.Generator,
        speech: bool = True,
        pad_limit: int | None = None,
    ) -> tuple[np.ndarray, np.ndarray | None]:
        """Waveform augmentation of speech (`speech`) or of a noise-only clip (channel and gain
        only: `random_augment` normalizes to a speech peak). `pad_limit`: add a noise bed
        around the speech, the result at most that many samples (`pad_with_noise`). No random
        number is drawn for padding when `pad_limit` is None, nor for the channel when
        `channel_prob` is 0, so the streams of recipes without them are unchanged.

        Returns (the student's waveform, the teacher's or None): with `teacher_clean`, the
        teacher's is the same utterance with the talker's changes (speed, pitch, VTLP), the
        noise bed of the padding (the same crop and place, drawn from a copy of the stream)
        and the gain, but without reverberation, added noise, band limit and channel."""
        import copy

        from train.augment import random_augment, random_channel

        clean = x if self.teacher_clean else None
        if speech and rng.random() < self.cfg.augment_prob:
            if clean is None:
                x = random_augment(x, rng, self.noise_bank)
            else:
                x, clean = random_augment(x, rng, self.noise_bank, return_voice=True)
        if pad_limit is not None:
            if clean is not None:
                twin = copy.deepcopy(rng)
                padded, _ = pad_with_noise(
                    clean, twin, pad_limit, self.cfg.noise_pad_max_s, self.noise_bank
                )
            x, _ = pad_with_noise(x, rng, pad_limit, self.cfg.noise_pad_max_s, self.noise_bank)
            if clean is not None:
                clean = padded if len(padded) == len(x) else x  # equal lengths by construction
        if rng.random() < self.cfg.narrowband_prob:
            x = resample(resample(x, SAMPLE_RATE, 8000), 8000, SAMPLE_RATE)[: len(x)]
        if self.cfg.channel_prob > 0 and rng.random() < self.cfg.channel_prob:
            x = random_channel(x, rng)
        gain = np.float32(10 ** (rng.uniform(-15, 10) / 20))  # gain, -15..+10 dB
        x = np.clip(x * gain, -1.0, 1.0).astype(np.float32)
        if clean is not None:
            clean = np.clip(clean * gain, -1.0, 1.0).astype(np.float32)
        return x, clean

    def batch(
        self,
        rows: Sequence[int],
        frames: int,
        labels: int,
        rngs: Sequence[np.random.Generator | None],
    ) -> dict[str, np.ndarray]:
        """Padded batch: feats f32[B, frames, 80], feat_paddings f32[B, frames] (1.0 = pad),
        labels int32[B, labels], label_paddings f32[B, labels]; with `teacher_clean`, also
        teacher_feats f32[B, frames, 80]."""
        b = len(rows)
        feats = np.zeros((b, frames, 80), np.float32)
        fpad = np.ones((b, frames), np.float32)
        lab = np.zeros((b, labels), np.int32)
        lpad = np.ones((b, labels), np.float32)
        tfeats = np.zeros_like(feats) if self.teacher_clean else None
        for k, (i, rng) in enumerate(zip(rows, rngs, strict=True)):
            try:
                f, ft = self.features_pair(i, rng, frames)
                f = f[:frames]
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
            if tfeats is not None:
                tfeats[k, : len(f)] = ft[: len(f)]
            fpad[k, : len(f)] = 0.0
            y = self.labels[i][:labels]
            lab[k, : len(y)] = y
            lpad[k, : len(y)] = 0.0
        out = {"feats": feats, "feat_paddings": fpad, "labels": lab, "label_paddings": lpad}
        if tfeats is not None:
            out["teacher_feats"] = tfeats  # what the teacher hears (`teacher_clean`)
        return out


CONTEXT_STREAM = 23  # random streams of the biasing lists: (seed, step, slot, 23), (seed, step, 23)


class ContextSampler:
    """Draws the biasing list of each training utterance (module docstring, "Biasing lists").

    `batch(rows, step)` -> {"context_tokens": int32[B, P, Lp], "context_paddings": f32[B, P, Lp]}
    (1.0 = pad; `asr.models.biasing.context_arrays`), P = `cfg.context_phrases` and Lp the
    token bucket of the longest name in the pool (at most 16; longer names are truncated), so
    every batch of a run has the same context shape."""

    def __init__(self, rows: list[dict], tokenizer: Tokenizer, cfg: TrainConfig):
        self.rows = rows
        self.seed = cfg.seed
        self.phrases = cfg.context_phrases
        self.spoken_prob = cfg.context_spoken_prob
        self.none_prob = cfg.context_none_prob
        names = {normalize_text(n) for r in rows for n in (r.get("context") or [])}
        tokens = {n: [int(t) for t in tokenizer.encode(n)] for n in sorted(names) if n}
        self.pool = [n for n, t in tokens.items() if t]  # sorted: independent of row order
        self.pool_tokens = [tokens[n] for n in self.pool]
        self.index = {n: i for i, n in enumerate(self.pool)}
        self._by_first: dict[str, list[int]] = {}
        for i, n in enumerate(self.pool):
            self._by_first.setdefault(n.split()[0], []).append(i)
        longest = max((len(t) for t in self.pool_tokens), default=1)
        self.max_tokens = min(bucket_size(longest, TOKEN_BUCKETS), TOKEN_BUCKETS[-1])

    def names_in(self, text: str) -> set[int]:
        """Pool indices of the names that occur in `text` as whole words (normalized)."""
        words = normalize_text(text).split()
        found = set()
        for k, w in enumerate(words):
            for i in self._by_first.get(w, ()):
                n = self.pool[i].split()
                if words[k : k + len(n)] == n:
                    found.add(i)
        return found

    def spoken(self, i: int) -> list[int]:
        """Pool indices of row i's `context` names that its transcript speaks (none for rows
        without `context`), in the order of its `context`."""
        row = self.rows[i]
        text = f" {normalize_text(row['text'])} "
        out = []
        for n in row.get("context") or []:
            n = normalize_text(n)
            if n in self.index and f" {n} " in text and self.index[n] not in out:
                out.append(self.index[n])
        return out

    def draw(self, i: int, rng: np.random.Generator) -> list[int]:
        """The list of row i (pool indices, shuffled): its spoken names each with probability
        `context_spoken_prob`, and distractors (pool names not in its transcript) up to a size
        drawn uniformly from 0 to `context_phrases`."""
        size = int(rng.integers(0, self.phrases + 1))
        chosen = [j for j in self.spoken(i) if rng.random() < self.spoken_prob]
        excluded = self.names_in(self.rows[i]["text"])
        n_dis = min(max(0, size - len(chosen)), len(self.pool) - len(excluded | set(chosen)))
        if n_dis > 0:
            n_cand = min(len(self.pool), n_dis + len(excluded))
            cand = rng.choice(len(self.pool), size=n_cand, replace=False)
            chosen += [int(c) for c in cand if int(c) not in excluded][:n_dis]
        return [chosen[k] for k in rng.permutation(len(chosen))][: self.phrases]

    def batch(self, rows: Sequence[int], step: int) -> dict[str, np.ndarray]:
        none = np.random.default_rng((self.seed, step, CONTEXT_STREAM)).random() < self.none_prob
        lists = []
        for k, i in enumerate(rows):
            if none:
                lists.append([])
                continue
            rng = np.random.default_rng((self.seed, step, k, CONTEXT_STREAM))
            lists.append([self.pool_tokens[j] for j in self.draw(i, rng)])
        tokens, paddings = context_arrays(lists, self.phrases, self.max_tokens)
        return {"context_tokens": tokens, "context_paddings": paddings}


def max_samples(frames: int) -> int:
    """The most samples whose `log_mel` has at most `frames` frames (frames >= 1)."""
    return frames * HOP_LENGTH + WIN_LENGTH - 1


NOISE_PAD_FADE_S = 0.02  # fade-in/out of the speech clip laid onto the noise bed
NOISE_PAD_OWN_FLOOR = 0.4  # share of padded utterances whose bed matches their own noise floor
NOISE_PAD_SNR_DB = (3.0, 40.0)  # otherwise: bed level below the speech level
NOISE_ONLY_SECONDS = (1.0, 4.0)  # length of the pure-noise utterances
NOISE_ONLY_DBFS = (-65.0, -15.0)  # their RMS level, before the training gain (-15..+10 dB)


def noise_pad_budgets(n_rows: int, cfg: TrainConfig) -> np.ndarray:
    """f64[n_rows] seconds of noise padding reserved for each training row (0: none).

    A row is padded with probability `noise_pad_prob`, and then reserves a quarter to all of
    2 x `noise_pad_max_s` (lead-in plus tail) in its bucket. Row i's value depends only on
    (seed, i) (two fixed streams, one value per row), not on the number of rows."""
    out = np.zeros(n_rows)
    if cfg.noise_pad_prob <= 0 or cfg.noise_pad_max_s <= 0 or n_rows == 0:
        return out
    padded = np.random.default_rng((cfg.seed, 13, 0)).random(n_rows) < cfg.noise_pad_prob
    share = np.random.default_rng((cfg.seed, 13, 1)).uniform(0.25, 1.0, n_rows)
    out[padded] = share[padded] * 2 * cfg.noise_pad_max_s
    return out


def _unit_rms(x: np.ndarray) -> np.ndarray:
    rms = float(np.sqrt(np.mean(np.square(x, dtype=np.float64))))
    return x / rms if rms > 0 else x


def _bank_crop(noise_bank, rng: np.random.Generator, n: int) -> np.ndarray:
    from train.augment import NoiseBank

    bank = noise_bank if noise_bank is not None else _synthetic_bank()
    assert isinstance(bank, NoiseBank), type(bank)
    return _unit_rms(bank.crop(rng, n).astype(np.float64))


@functools.cache
def _synthetic_bank():
    from train.augment import NoiseBank

    return NoiseBank(None)


def _frame_rms(x: np.ndarray, frame: int = 320) -> np.ndarray:
    """RMS of each 20 ms frame of x (at least one frame)."""
    n = max(1, len(x) // frame)
    y = np.resize(x.astype(np.float64), n * frame) if len(x) < frame else x[: n * frame]
    return np.sqrt(np.mean(np.square(y.reshape(n, -1)), axis=1))


def pad_with_noise(
    x: np.ndarray, rng: np.random.Generator, limit: int, max_s: float, noise_bank=None
) -> tuple[np.ndarray, int]:
    """Lays speech x onto a bed of background noise that starts before and/or ends after it.

    Args:
      x: f32[N] speech (already augmented).
      rng: the utterance's random source (the only one used).
      limit: the result has at most max(limit, N) samples: the speech is never cut, the noise
        only fills the room that is left (none when N >= limit).
      max_s: seconds of noise before the speech, and after it, at most.
      noise_bank: `train.augment.NoiseBank` (None: synthetic noise).

    Returns:
      (f32[lead + N + tail], lead): x starts at sample `lead`. A third of the time the noise
      comes before the speech only, a third after it only, a third on both sides; each side is
      10-100% of what is left for it. The bed is one continuous noise crop under the whole
      utterance (speech included, as in a room), at the utterance's own noise floor
      (NOISE_PAD_OWN_FLOOR of the time, +-3 dB) or NOISE_PAD_SNR_DB below its speech level,
      never less than NOISE_PAD_SNR_DB[0] below it; the speech clip fades in and out over
      NOISE_PAD_FADE_S so that its own edges make no click.
    """
    n = len(x)
    cap = int(max_s * SAMPLE_RATE)
    room = min(int(limit) - n, 2 * cap)
    if room <= 0 or cap <= 0:
        return x, 0
    mode = rng.random()  # < 1/3: lead only; < 2/3: both; else tail only
    lead = int(rng.uniform(0.1, 1.0) * min(cap, room)) if mode < 2 / 3 else 0
    tail = int(rng.uniform(0.1, 1.0) * min(cap, room - lead)) if mode >= 1 / 3 else 0
    if lead + tail == 0:
        return x, 0
    frames = np.sort(_frame_rms(x))
    speech_level = float(np.sqrt(np.mean(np.square(frames[-max(1, len(frames) // 3) :]))))
    if rng.random() < NOISE_PAD_OWN_FLOOR:
        level = float(frames[len(frames) // 10]) * 10 ** (rng.uniform(-3.0, 3.0) / 20)
    else:
        level = speech_level * 10 ** (-rng.uniform(*NOISE_PAD_SNR_DB) / 20)
    # never louder than NOISE_PAD_SNR_DB[0] below the speech (a clip that is speech throughout
    # has no floor of its own to match)
    level = min(level, speech_level * 10 ** (-NOISE_PAD_SNR_DB[0] / 20))
    bed = _bank_crop(noise_bank, rng, lead + n + tail) * level
    fade = np.ones(n)
    k = min(n // 2, int(NOISE_PAD_FADE_S * SAMPLE_RATE))
    if k > 0:
        ramp = np.linspace(0.0, 1.0, k + 2)[1:-1]
        fade[:k], fade[n - k :] = ramp, ramp[::-1]
    bed[lead : lead + n] += x * fade
    return np.clip(bed, -1.0, 1.0).astype(np.float32), lead


def noise_only_rows(count: int, seed: int, max_seconds: float = math.inf) -> list[dict]:
    """`count` pure-noise training utterances with an empty transcript (not manifest rows):
    {"noise_only": k, "text": "", "duration", "synthetic": True}, lengths in NOISE_ONLY_SECONDS
    (at most `max_seconds`, so that none is skipped as too long), row k's length a function of
    (seed, k) alone. The audio is `noise_only_audio`."""
    if count <= 0:
        return []
    lengths = np.random.default_rng((seed, 17)).uniform(*NOISE_ONLY_SECONDS, count)
    lengths = np.minimum(lengths, max_seconds)
    return [
        {"noise_only": k, "text": "", "duration": int(d * SAMPLE_RATE) / SAMPLE_RATE,
         "synthetic": True}
        for k, d in enumerate(lengths)
    ]  # fmt: skip


def noise_only_audio(row: dict, seed: int, noise_bank=None) -> np.ndarray:
    """f32[duration * 16 kHz] audio of a `noise_only_rows` row: a crop of the noise bank at a
    random level in NOISE_ONLY_DBFS, a function of (seed, row["noise_only"])."""
    rng = np.random.default_rng((seed, 17, int(row["noise_only"])))
    n = round(float(row["duration"]) * SAMPLE_RATE)
    level = 10 ** (rng.uniform(*NOISE_ONLY_DBFS) / 20)
    return np.clip(_bank_crop(noise_bank, rng, n) * level, -1.0, 1.0).astype(np.float32)


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
    n_speech = len(rows)
    # Noise padding is reserved when bucketing, not fitted into the slack buckets happen to
    # leave: that slack is often a fraction of a second (a 1 s clip needs 113 of its bucket's
    # 128 frames), too little for the 1-2 s lead-ins of real recordings. So each padded row
    # (chosen by (seed, row)) is bucketed by its duration plus its reserved padding, and at
    # load time `pad_with_noise` fills only the room the batch's frames leave after the
    # (augmented) speech: the speech is never cut. The reservation is per row for the run
    # (the plan is fixed), the padding itself drawn per (seed, step, slot) like all augmentation.
    pad_s = noise_pad_budgets(n_speech, cfg)
    longest = min(
        cfg.max_seconds, (max(cfg.bucket_frames) - 1) * HOP_LENGTH / SAMPLE_RATE / SPEED_MARGIN
    )
    noise_rows = noise_only_rows(int(cfg.noise_only * n_speech), cfg.seed, 0.99 * longest)
    rows = rows + noise_rows
    pad_s = np.concatenate([pad_s, np.zeros(len(noise_rows))])
    loader = UtteranceLoader(rows, tokenizer, cfg, noise_bank, augment=True, pad_s=pad_s)
    durations = [float(r.get("duration") or 0.0) for r in rows]
    label_lens = [len(y) for y in loader.labels]
    buckets, skipped = make_buckets(durations, label_lens, cfg, SPEED_MARGIN, pad_s=pad_s)
    # Real-speech oversampling counts speech rows only; noise-only rows are seen once an epoch.
    real = np.array([is_real(r) for r in rows[:n_speech]] + [False] * len(noise_rows), bool)
    weights = np.ones(len(rows), np.int64)
    n_real = int(real.sum())
    n_syn = n_speech - n_real
    if n_real and n_syn and n_real / n_speech < cfg.real_share:
        rep = math.ceil(cfg.real_share * n_syn / ((1 - cfg.real_share) * n_real))
        weights[real] = rep
    plan = StepPlan(buckets, cfg.steps, cfg.seed, weights)
    sampler = ContextSampler(rows, tokenizer, cfg) if cfg.bias_dim > 0 else None

    def load(item):
        step, bi, idx = item
        b = buckets[bi]
        rngs = [np.random.default_rng((cfg.seed, step, k)) for k in range(len(idx))]
        out = loader.batch(idx, b.frames, b.labels, rngs)
        if sampler is not None:
            out.update(sampler.batch(idx, step))
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
        "noise_padded": int(np.count_nonzero(pad_s)),
        "noise_only": len(noise_rows),
        # biasing lists: the name pool, and the context shape [P, Lp] of every batch
        "context_pool": 0 if sampler is None else len(sampler.pool),
        "context_shape": None if sampler is None else (cfg.context_phrases, sampler.max_tokens),
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
