"""Manifests (JSONL, one utterance a line) and loaders that turn speech folders into manifest rows.

Owns the manifest format shared by the corpus synthesizer, the data pipeline and evaluation:

    {"audio": path, "text": str, "speaker": str, "duration": s, "speech_start": s,
     "speech_end": s, "context": [names] (optional), "split": "train" | "dev" | "test", ...}

``audio`` is written relative to the manifest's folder and resolved to an absolute path on read.
Text is lower case words separated by single spaces, apostrophes kept inside words.

Loaders for real speech: Free Spoken Digit Dataset, Speech Commands, LibriSpeech, Kaldi data
folders, JSONL manifests, and the Picovoice speech-to-intent recordings, which have no
transcripts: their rows carry ``keywords`` (slot values the speaker said) instead of ``text``. Durations come from the file header (no decoding); for real speech
``speech_start``/``speech_end`` are *estimated* by a simple energy detector
(:func:`estimate_speech_bounds`), unlike the synthetic corpus where they are exact.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import soundfile as sf

from asr.manifest import read_manifest, write_manifest
from asr.text import normalize_text

SPLITS = ("train", "dev", "test")
AUDIO_SUFFIXES = (".flac", ".wav")
DIGIT_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")


load_jsonl = read_manifest
# read_manifest, write_manifest (asr.manifest) and normalize_text (asr.text) are re-exported
# here so that corpus code has one import for manifests.
__all__ = [
    "load_fsdd",
    "load_jsonl",
    "load_kaldi",
    "load_librispeech",
    "load_speech_commands",
    "load_speech_to_intent",
    "normalize_text",
    "read_manifest",
    "split_by_speaker",
    "write_manifest",
]


def estimate_speech_bounds(
    x: np.ndarray, sr: int, frame_s: float = 0.02, threshold_db: float = -35.0
) -> tuple[float, float]:
    """Estimate where speech starts and ends with a frame-energy detector.

    Frames whose RMS is within ``threshold_db`` of the loudest frame and above the noise floor
    (the 10th percentile frame) by 6 dB count as speech.

    Args:
        x: f[N] waveform.
        sr: sample rate in Hz.
        frame_s: frame length in seconds (non-overlapping).
        threshold_db: level relative to the loudest frame.

    Returns:
        ``(start, end)`` in seconds, ``0 <= start < end <= N / sr``; the whole clip when no
        frame qualifies.
    """
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 1 or x.size == 0:
        raise ValueError(f"x: expected a non-empty 1-D waveform, got shape {x.shape}")
    if sr <= 0:
        raise ValueError(f"sr: expected a positive sample rate, got {sr}")
    hop = max(1, int(frame_s * sr))
    n = x.size // hop
    duration = x.size / sr
    if n < 2:
        return 0.0, duration
    rms = np.sqrt(np.mean(x[: n * hop].reshape(n, hop) ** 2, axis=1) + 1e-20)
    db = 20 * np.log10(rms)
    floor = np.percentile(db, 10)
    active = (db >= db.max() + threshold_db) & (db >= floor + 6.0)
    idx = np.nonzero(active)[0]
    if idx.size == 0:
        return 0.0, duration
    return float(idx[0] * hop / sr), float(min(duration, (idx[-1] + 1) * hop / sr))


def _row(audio: Path, text: str, speaker: str, split: str, vad: bool = True, **extra) -> dict:
    info = sf.info(str(audio))
    duration = info.frames / info.samplerate
    row = {
        "audio": str(audio.resolve()),
        "text": normalize_text(text),
        "speaker": speaker,
        "duration": duration,
        "speech_start": 0.0,
        "speech_end": duration,
        "split": split,
    }
    if vad:
        x, sr = sf.read(str(audio), dtype="float32", always_2d=True)
        row["speech_start"], row["speech_end"] = estimate_speech_bounds(x.mean(axis=1), sr)
        row["speech_bounds"] = "estimated"
    row.update(extra)
    return row


def _check_dir(root: str | Path, what: str) -> Path:
    root = Path(root)
    if not root.is_dir():
        raise ValueError(f"root: expected the {what} folder, got {root} (not a directory)")
    return root


def _stable_unit(key: str, seed: int) -> float:
    digest = hashlib.sha256(f"{seed}:{key}".encode()).digest()
    return int.from_bytes(digest[:8], "little") / 2.0**64


def split_by_speaker(
    rows: Sequence[dict], fractions: dict[str, float], seed: int = 0
) -> list[dict]:
    """Assign each row a ``split`` so that no speaker is in two splits.

    Each speaker goes to a split by a stable hash (sha256 of seed and speaker id, not Python's
    salted ``hash``), so the assignment does not depend on row order or on other speakers.

    Args:
        rows: rows with a ``speaker`` key.
        fractions: share of speakers per split name, e.g. ``{"train": 0.7, "dev": 0.1,
            "test": 0.2}``; positive, summing to 1.
        seed: changes the assignment.

    Returns:
        New rows (copies) with ``split`` set.
    """
    if not fractions or any(v < 0 for v in fractions.values()):
        raise ValueError(f"fractions: expected non-negative shares per split, got {fractions}")
    if abs(sum(fractions.values()) - 1.0) > 1e-6:
        raise ValueError(f"fractions: expected shares summing to 1, got {sum(fractions.values())}")
    names = list(fractions)
    edges = np.cumsum([fractions[k] for k in names])
    out = []
    for i, row in enumerate(rows):
        if "speaker" not in row:
            raise ValueError(f"rows[{i}]: expected a 'speaker' key, got {sorted(row)}")
        u = _stable_unit(str(row["speaker"]), seed)
        k = min(int(np.searchsorted(edges, u, side="right")), len(names) - 1)
        out.append({**row, "split": names[k]})
    return out


def load_fsdd(root: str | Path, split: str = "official", vad: bool = True) -> list[dict]:
    """Free Spoken Digit Dataset: ``recordings/{digit}_{speaker}_{index}.flac|.wav``.

    Args:
        root: the folder holding ``recordings/`` (or the recordings folder itself).
        split: ``"official"`` (index 0-4 test, 5-49 train) or ``"all"`` (everything "test").
        vad: estimate speech bounds (reads the audio); else the whole clip.

    Returns:
        Rows with text the digit word (``"7"`` -> ``"seven"``), speaker the recorder's name.
    """
    if split not in ("official", "all"):
        raise ValueError(f"split: expected 'official' or 'all', got {split!r}")
    root = _check_dir(root, "FSDD")
    rec = root / "recordings" if (root / "recordings").is_dir() else root
    rows = []
    pattern = re.compile(r"^(\d)_([A-Za-z0-9-]+)_(\d+)$")
    for path in sorted(p for p in rec.iterdir() if p.suffix.lower() in AUDIO_SUFFIXES):
        m = pattern.match(path.stem)
        if not m:
            continue
        digit, speaker, index = int(m.group(1)), m.group(2), int(m.group(3))
        part = "test" if split == "all" or index < 5 else "train"
        rows.append(_row(path, DIGIT_WORDS[digit], speaker, part, vad))
    if not rows:
        raise ValueError(f"root: expected FSDD files like 7_george_12.flac under {rec}, got none")
    return rows


def load_speech_commands(
    root: str | Path,
    split: str = "speaker",
    dev_fraction: float = 0.1,
    test_fraction: float = 0.2,
    seed: int = 0,
    vad: bool = True,
) -> list[dict]:
    """Speech Commands: ``{word}/{speaker}_nohash_{n}`` and ``_unknown_/{word}_{speaker}_nohash_{n}``.

    ``_silence_`` and ``_background_noise_`` are skipped (noise, no speech).

    Args:
        root: the corpus folder.
        split: ``"speaker"`` (speaker-disjoint split by a stable hash of the speaker id) or
            ``"all"`` (every row "test").
        dev_fraction, test_fraction: share of speakers in dev and test.
        seed: changes the speaker assignment.
        vad: estimate speech bounds (reads the audio); else the whole clip.
    """
    if split not in ("speaker", "all"):
        raise ValueError(f"split: expected 'speaker' or 'all', got {split!r}")
    if not (0 <= dev_fraction and 0 <= test_fraction and dev_fraction + test_fraction < 1):
        raise ValueError(
            f"dev_fraction, test_fraction: expected >= 0 with sum < 1, got "
            f"{dev_fraction}, {test_fraction}"
        )
    root = _check_dir(root, "Speech Commands")
    rows = []
    for folder in sorted(p for p in root.iterdir() if p.is_dir()):
        if folder.name in ("_silence_", "_background_noise_"):
            continue
        for path in sorted(p for p in folder.iterdir() if p.suffix.lower() in AUDIO_SUFFIXES):
            parts = path.stem.split("_nohash_")[0].split("_")
            if folder.name == "_unknown_":
                if len(parts) < 2:
                    continue
                word, speaker = parts[0], "_".join(parts[1:])
            else:
                word, speaker = folder.name, "_".join(parts)
            rows.append(_row(path, word, speaker, "test", vad))
    if not rows:
        raise ValueError(f"root: expected word folders of audio clips under {root}, got none")
    if split == "speaker":
        train = 1.0 - dev_fraction - test_fraction
        rows = split_by_speaker(
            rows, {"train": train, "dev": dev_fraction, "test": test_fraction}, seed
        )
    return rows


def load_speech_to_intent(
    root: str | Path, vocabulary: str | Path | None = None, vad: bool = False
) -> list[dict]:
    """Picovoice speech-to-intent: ``clean/{uuid}.flac|.wav`` and ``labels.json``.

    The recordings have no word-for-word transcripts; ``labels.json`` maps ``{uuid}.wav`` to
    ``{"intent": ..., "slots": {name: value}}``, and each slot value is words the speaker said
    ("light roast", "twelve ounce"). Each row gets those values as ``keywords`` (normalized,
    in slot-name order) and no ``text``: `asr eval` scores such rows by keyword recall.

    Args:
        root: the folder holding ``labels.json`` and ``clean/``.
        vocabulary: a word list (one word a line, e.g. ``shared/data/requests/vocabulary.txt``):
            keep only keywords all of whose words are in it, and only rows left with one. The
            coffee-order words ("latte", "roast", "ounce") are outside the request domain, so
            this separates "new voice" from "new word".
        vad: estimate speech bounds (reads the audio); else the whole clip.

    Returns:
        Rows ``{"audio", "keywords", "intent", "duration", "split": "test", ...}`` (no
        ``speaker``: the release has no speaker ids); labels without audio are skipped (six in the public release).
    """
    import json

    root = _check_dir(root, "speech-to-intent")
    labels_path = root / "labels.json"
    if not labels_path.is_file():
        raise ValueError(f"root: expected {labels_path}, not found")
    try:
        labels = json.loads(labels_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{labels_path}: not valid JSON ({e})") from None
    if not isinstance(labels, dict):
        raise ValueError(f"{labels_path}: expected an object of file name -> label")
    vocab = None
    if vocabulary is not None:
        vocab = set(Path(vocabulary).read_text(encoding="utf-8").split())
    clean = root / "clean" if (root / "clean").is_dir() else root
    audio_by_stem = {p.stem: p for p in clean.iterdir() if p.suffix.lower() in AUDIO_SUFFIXES}
    rows = []
    for name in sorted(labels):
        label = labels[name]
        path = audio_by_stem.get(Path(name).stem)
        if path is None:
            continue
        slots = label.get("slots", {}) if isinstance(label, dict) else {}
        if not isinstance(slots, dict):
            raise ValueError(f"{labels_path}: {name}: expected slots as an object, got {slots!r}")
        keywords = [normalize_text(str(slots[k])) for k in sorted(slots)]
        keywords = [k for k in keywords if k]
        if vocab is not None:
            keywords = [k for k in keywords if all(w in vocab for w in k.split())]
        if not keywords:
            continue
        row = _row(path, "", "", "test", vad, intent=str(label.get("intent", "")))
        del row["text"], row["speaker"]  # no transcript; the release has no speaker ids
        row["keywords"] = keywords
        rows.append(row)
    if not rows:
        raise ValueError(f"root: expected labelled recordings under {clean}, got none")
    return rows


def load_librispeech(root: str | Path, split: str = "train", vad: bool = False) -> list[dict]:
    """LibriSpeech-style folders: ``*.trans.txt`` lines ``ID TEXT``, audio ``ID.flac`` beside it.

    Args:
        root: a folder searched recursively for ``*.trans.txt``.
        split: the split written in every row.
        vad: estimate speech bounds (reads the audio; off by default: read speech is trimmed).
    """
    if split not in SPLITS:
        raise ValueError(f"split: expected one of {SPLITS}, got {split!r}")
    root = _check_dir(root, "LibriSpeech")
    rows = []
    for trans in sorted(root.rglob("*.trans.txt")):
        for lineno, line in enumerate(trans.read_text(encoding="utf-8").splitlines(), 1):
            if not line.strip():
                continue
            utt, _, text = line.strip().partition(" ")
            audio = next(
                (
                    trans.parent / (utt + s)
                    for s in AUDIO_SUFFIXES
                    if (trans.parent / (utt + s)).exists()
                ),
                None,
            )
            if audio is None:
                raise ValueError(
                    f"{trans}:{lineno}: expected audio {utt}.flac beside it, not found"
                )
            rows.append(_row(audio, text, utt.split("-")[0], split, vad))
    if not rows:
        raise ValueError(f"root: expected *.trans.txt files under {root}, got none")
    return rows


def _read_kaldi_table(path: Path) -> dict[str, str]:
    table = {}
    for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        key, _, value = line.strip().partition(" ")
        if not value.strip() and path.name != "text":
            raise ValueError(f"{path}:{lineno}: expected 'key value', got {line!r}")
        table[key] = value.strip()
    return table


def load_kaldi(root: str | Path, split: str = "train", vad: bool = False) -> list[dict]:
    """A Kaldi data folder: ``wav.scp`` (``utt path``), ``text`` (``utt words``), ``utt2spk``.

    Only plain paths are accepted in ``wav.scp``; piped commands (``... |``) and archive offsets
    raise ValueError. Relative paths are resolved against ``root``. Without ``utt2spk`` the
    speaker is the utterance id.
    """
    if split not in SPLITS:
        raise ValueError(f"split: expected one of {SPLITS}, got {split!r}")
    root = _check_dir(root, "Kaldi data")
    for name in ("wav.scp", "text"):
        if not (root / name).is_file():
            raise ValueError(f"root: expected {root / name}, not found")
    wavs = _read_kaldi_table(root / "wav.scp")
    texts = _read_kaldi_table(root / "text")
    spk = _read_kaldi_table(root / "utt2spk") if (root / "utt2spk").is_file() else {}
    rows = []
    for utt, value in wavs.items():
        if (
            value.endswith("|")
            or value.startswith("|")
            or " " in value
            or re.search(r":\d+$", value)
        ):
            raise ValueError(
                f"wav.scp: expected a plain audio path for {utt}, got {value!r} "
                "(piped commands and ark offsets are not supported; extract the audio first)"
            )
        if utt not in texts:
            raise ValueError(f"text: expected a transcript for {utt}, not found")
        audio = Path(value) if os.path.isabs(value) else root / value
        if not audio.is_file():
            raise ValueError(f"wav.scp: expected an audio file for {utt}, got {audio} (not found)")
        rows.append(_row(audio, texts[utt], spk.get(utt, utt), split, vad))
    if not rows:
        raise ValueError(f"root: expected utterances in {root / 'wav.scp'}, got none")
    return rows
