"""eSpeak NG speech synthesis, the English voices and the voice split, on the process-wide engine
of `asr.espeak` (the ctypes binding, which this module re-exports with its phonemes).

Owns synthesis (:func:`synthesize`, :func:`synthesize_words`), the list of English voices
``"accent+variant"``, random variants and the deterministic split of those voices into training
and held-out sets (whole variants are held out).
"""

from __future__ import annotations

import ctypes
import hashlib
from pathlib import Path

import numpy as np
from scipy.signal import resample_poly

from asr.espeak import (  # noqa: F401  (re-exported: the binding's public names)
    _ACCENT_ALIASES,
    _CHARS_UTF8,
    _engine,
    espeak_ipa,
    package_data_path,
    phonemes,
    use_data_path,
)

SAMPLE_RATE = 16000
"""Output sample rate of :func:`synthesize` in Hz."""

ACCENTS = (
    "en-us",
    "en-gb",
    "en-gb-scotland",
    "en-gb-x-rp",
    "en-gb-x-gbclan",
    "en-gb-x-gbcwmd",
    "en-029",
    "en-us-nyc",
)
"""English accents (language files under ``espeak-ng-data/lang/gmw``)."""

# Variants left out. Every variant was measured on a phrase (duration, RMS, zero-crossing rate):
# none is silent; these are left out as effect voices (heavy echo, robotic monotone) whose sound is
# far from human speech, and "Mr serious" because its file name holds a space.
_BAD_VARIANTS = frozenset({"Mr serious", "Demonic", "UniRobot", "anikaRobot"})

_POS_CHARACTER = 1
_RATE, _PITCH, _RANGE = 1, 3, 4


def synthesize(
    text: str,
    voice: str = "en-us",
    rate_wpm: int = 160,
    pitch: int = 50,
    pitch_range: int = 50,
    seed: int = 0,
) -> tuple[np.ndarray, int]:
    """Speak ``text`` with an eSpeak NG voice: :func:`synthesize_words` without word times."""
    audio, sr, _ = synthesize_words(text, voice, rate_wpm, pitch, pitch_range, seed)
    return audio, sr


def synthesize_words(
    text: str,
    voice: str = "en-us",
    rate_wpm: int = 160,
    pitch: int = 50,
    pitch_range: int = 50,
    seed: int = 0,
) -> tuple[np.ndarray, int, list[tuple[int, float]]]:
    """Speak ``text`` with an eSpeak NG voice, with the start time of each word.

    Args:
        text: words to speak (plain text, UTF-8).
        voice: ``"accent"`` or ``"accent+variant"``, e.g. ``"en-us+m3"`` (see :func:`list_voices`).
        rate_wpm: speaking rate in words per minute, 80..450.
        pitch: base pitch 0..100 (eSpeak's default 50).
        pitch_range: pitch range 0..100 (0 = monotone, default 50).
        seed: seed of eSpeak NG's random noise sources; the same arguments give the same samples.

    Returns:
        ``(audio, 16000, words)``: ``audio`` is f32[N] in [-1, 1] at 16 kHz (resampled from the
        native 22050 Hz with a 320/441 polyphase filter), including eSpeak's own short silences;
        ``words`` lists ``(character offset in text, start in seconds)`` of each word, from
        eSpeak's word events.
    """
    if not isinstance(text, str) or not text.strip():
        raise ValueError(f"text: expected a non-empty string, got {text!r}")
    if not isinstance(voice, str) or not voice:
        raise ValueError(f"voice: expected a name like 'en-us+m3', got {voice!r}")
    if not 80 <= int(rate_wpm) <= 450:
        raise ValueError(f"rate_wpm: expected 80..450, got {rate_wpm}")
    for name, value in (("pitch", pitch), ("pitch_range", pitch_range)):
        if not 0 <= int(value) <= 100:
            raise ValueError(f"{name}: expected 0..100, got {value}")
    eng = _engine()
    with eng.lock:
        accent, plus, variant = voice.partition("+")
        name = _ACCENT_ALIASES.get(accent, accent) + plus + variant
        if eng.lib.espeak_SetVoiceByName(name.encode()) != 0:
            raise ValueError(f"voice: eSpeak NG does not know {voice!r}")
        eng.lib.espeak_SetParameter(_RATE, int(rate_wpm), 0)
        eng.lib.espeak_SetParameter(_PITCH, int(pitch), 0)
        eng.lib.espeak_SetParameter(_RANGE, int(pitch_range), 0)
        # eSpeak NG's noise sources draw random numbers: seed them so the output depends only on
        # the arguments, not on what was synthesized before in this process.
        eng.lib.espeak_ng_SetRandSeed(int(seed))
        eng.libc.srand(int(seed) & 0xFFFFFFFF)
        data = text.encode("utf-8")
        buf = ctypes.create_string_buffer(data)
        eng.chunks, eng.words = [], []
        err = eng.lib.espeak_Synth(
            buf, len(data) + 1, 0, _POS_CHARACTER, 0, _CHARS_UTF8, None, None
        )
        eng.lib.espeak_Synchronize()
        if err != 0:
            raise RuntimeError(f"espeak_Synth failed with code {err} for {text!r}")
        chunks, eng.chunks = eng.chunks, []
        words = [(pos - 1, ms / 1000.0) for pos, ms in eng.words]
        eng.words = []
    pcm = np.concatenate(chunks) if chunks else np.zeros(0, np.int16)
    x = pcm.astype(np.float32) / 32768.0
    if eng.native_rate != SAMPLE_RATE:
        g = np.gcd(SAMPLE_RATE, eng.native_rate)
        x = resample_poly(x, SAMPLE_RATE // g, eng.native_rate // g).astype(np.float32)
    return np.clip(x, -1.0, 1.0), SAMPLE_RATE, words


def _variants(data_path: Path) -> list[str]:
    folder = data_path / "voices" / "!v"
    names = sorted(p.name for p in folder.iterdir() if p.is_file()) if folder.is_dir() else []
    return [n for n in names if " " not in n and n not in _BAD_VARIANTS]


def list_voices(include_plain: bool = False) -> list[str]:
    """All English voices ``"accent+variant"``: 8 accents x the usable variants of ``voices/!v``.

    Args:
        include_plain: also list the 8 accents without a variant.

    Returns:
        Sorted voice names (about 800).
    """
    variants = _variants(package_data_path())  # never the generated ones of a variant tree
    voices = [f"{a}+{v}" for a in ACCENTS for v in variants]
    if include_plain:
        voices += list(ACCENTS)
    return sorted(voices)


RANDOM_VARIANT_PREFIX = "rnd"
"""Generated variants are named ``rnd<seed>v<k>``; :func:`list_voices` never lists them."""


def random_variant(rng: np.random.Generator, name: str) -> str:
    """The text of a random eSpeak NG voice variant file (``voices/!v`` format, docs/voices.md).

    A vocal-tract-length factor ``s`` in [0.82, 1.5] (adult male-like 40%, female-like 35%,
    child-like 25%) scales every
    formant frequency, each jittered on its own; the base pitch follows ``s`` loosely (about
    90 Hz at 0.95, 320 Hz at 1.45, each x0.75-1.3); formant strengths and widths, spectral tone,
    flutter, roughness, consonant strength and the Klatt glottal source vary at random, with a
    whispered voice (breath noise, weak voicing) in 10% and a breathy one in 20%. These are
    plausible speakers, not copies of any shipped variant: the held-out variants stay unseen,
    and training covers the space around and between the shipped ones.
    """
    u = rng.uniform
    kind = u()  # adult male-like, female-like, child-like vocal tracts: 40/35/25%
    s = u(0.82, 1.02) if kind < 0.4 else u(1.02, 1.25) if kind < 0.75 else u(1.25, 1.5)
    lines = ["language variant", f"name {name}"]
    base = float(np.clip(90 * (s / 0.95) ** 3 * u(0.75, 1.3), 50, 380))
    lines.append(f"pitch {int(base)} {int(base * u(1.1, 1.8))}")
    for k in range(9):
        jitter = {0: 0.25, 1: 0.08, 2: 0.08, 3: 0.08, 4: 0.15, 5: 0.15}.get(k, 0.25)
        freq = 100 * s * u(1 - jitter, 1 + jitter)
        strength = u(70, 130) if 1 <= k <= 3 else u(30, 150) if k in (0, 4, 5) else u(10, 150)
        lines.append(f"formant {k} {int(freq)} {int(strength)} {int(u(70, 150))}")
    lines.append(
        f"tone 600 {int(u(120, 255))} 1200 {int(u(90, 200))} 2000 {int(u(60, 180))} "
        f"5000 {int(u(40, 200))}"
    )
    style = u()
    if style < 0.1:  # whisper
        lines += [
            "breath " + " ".join(str(int(u(40, 80))) for _ in range(6)),
            f"voicing {int(u(12, 40))}",
            f"flutter {int(u(10, 25))}",
        ]
    else:
        if style < 0.3:  # breathy
            lines.append("breath " + " ".join(str(int(u(0, 12))) for _ in range(6)))
        lines.append(f"voicing {int(u(60, 115))}")
        lines.append(f"flutter {int(u(0, 12)) if u() < 0.85 else int(u(12, 30))}")
    if u() < 0.3:
        lines.append(f"roughness {int(rng.integers(1, 5))}")
    lines.append(f"consonants {int(u(70, 130))} {int(u(70, 130))}")
    if u() < 0.25:
        lines.append(f"klatt {int(rng.integers(1, 7))}")
    return "\n".join(lines) + "\n"


MAX_EXTRA_VARIANTS = 200
"""Generated variants one tree can hold (eSpeak NG's voice list has 349 slots)."""


def make_variant_tree(root: str | Path, variants: dict[str, str]) -> Path:
    """``root/espeak-ng-data``: the package's data linked in, plus extra ``voices/!v`` files.

    Every entry of the package's ``espeak-ng-data`` is a symbolic link, except ``lang``, which
    keeps only the English language files (eSpeak NG lists at most 349 voice and language files,
    and the package has 141 language files and 104 variants), and ``voices/!v``, a real folder
    holding links to the shipped variants and the files of ``variants``
    (name -> text, e.g. from :func:`random_variant`). Pass the result to :func:`use_data_path`.
    Calling it again with the same arguments rewrites nothing.
    """
    if len(variants) > MAX_EXTRA_VARIANTS:
        raise ValueError(
            f"{len(variants)} generated variants: eSpeak NG lists at most 349 voice files, "
            f"so a tree holds at most {MAX_EXTRA_VARIANTS} besides the shipped ones"
        )
    pkg = package_data_path()
    shipped = {p.name for p in (pkg / "voices" / "!v").iterdir()}
    for name in variants:
        if not name or "/" in name or name in shipped:
            raise ValueError(f"variant name {name!r}: empty, a path, or a shipped variant's name")
    data = Path(root).resolve() / "espeak-ng-data"
    vdir = data / "voices" / "!v"
    vdir.mkdir(parents=True, exist_ok=True)
    (data / "lang" / "gmw").mkdir(parents=True, exist_ok=True)
    for parent, src, keep in (
        (data, pkg, lambda n: n not in ("voices", "lang")),
        (data / "voices", pkg / "voices", lambda n: n != "!v"),
        (data / "lang" / "gmw", pkg / "lang" / "gmw", lambda n: n.startswith("en")),
    ):
        for entry in src.iterdir():
            link = parent / entry.name
            if keep(entry.name) and not link.is_symlink():
                link.symlink_to(entry)
    for entry in (pkg / "voices" / "!v").iterdir():
        link = vdir / entry.name
        if not link.is_symlink():
            link.symlink_to(entry)
    for name, text in variants.items():
        f = vdir / name
        if not f.exists() or f.read_text() != text:
            tmp = f.with_name(f".{name}.tmp")
            tmp.write_text(text)
            tmp.replace(f)
    return data


def _stable_unit(key: str, seed: int) -> float:
    digest = hashlib.sha256(f"{seed}:{key}".encode()).digest()
    return int.from_bytes(digest[:8], "little") / 2.0**64


def voice_variant(voice: str) -> str:
    """The variant part of ``"accent+variant"`` (``""`` for a plain accent)."""
    return voice.split("+", 1)[1] if "+" in voice else ""


def variant_family(variant: str) -> str:
    """Group near-identical variants: ``"iven3"``, ``"Mike"`` -> ``"iven"``, ``"mike"``; ``"m3"`` stays."""
    stem = variant.lower().rstrip("0123456789")
    return stem if len(stem) > 2 else variant.lower()


def split_voices(
    voices: list[str], heldout_fraction: float = 0.15, seed: int = 0
) -> tuple[list[str], list[str]]:
    """Split voices into (train, held-out), holding out whole variants.

    A variant is held out with all its accents, so a held-out variant never appears in training;
    numbered copies of one variant (``klatt``..``klatt6``, ``iven``..``iven4``) are held out
    together (:func:`variant_family`). The choice depends only on the names and ``seed``
    (sha256), not on the list order. Plain accents (no variant) always go to training.

    Args:
        voices: names ``"accent+variant"``.
        heldout_fraction: share of distinct variants held out, in (0, 1).
        seed: changes which variants are held out.

    Returns:
        ``(train_voices, heldout_voices)``, each sorted, disjoint, together equal to ``voices``.
    """
    if not 0.0 < heldout_fraction < 1.0:
        raise ValueError(f"heldout_fraction: expected in (0, 1), got {heldout_fraction}")
    variants = sorted({voice_variant(v) for v in voices} - {""})
    families: dict[str, list[str]] = {}
    for v in variants:
        families.setdefault(variant_family(v), []).append(v)
    if len(families) < 2:
        raise ValueError(f"voices: expected at least 2 distinct variant families, got {variants}")
    target = max(1, round(heldout_fraction * len(variants)))
    held: set[str] = set()
    for fam in sorted(families, key=lambda f: _stable_unit(f, seed)):
        if len(held) >= target or len(held) + len(families[fam]) >= len(variants):
            break
        held.update(families[fam])
    train = sorted(v for v in voices if voice_variant(v) not in held)
    heldout = sorted(v for v in voices if voice_variant(v) in held)
    return train, heldout


def default_voice_split(seed: int = 0) -> tuple[list[str], list[str]]:
    """:func:`split_voices` of :func:`list_voices` with the default fraction."""
    return split_voices(list_voices(), 0.15, seed)
