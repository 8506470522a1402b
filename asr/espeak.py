"""The eSpeak NG binding: one process-wide engine (synthesis for the corpus, phonemes for the
recognizer's phonetic name matching).

Owns the ctypes binding to the shared library shipped by the PyPI package ``espeakng-loader`` (no
apt, no subprocess) and text -> phonemes (:func:`phonemes`, ASCII mnemonics; :func:`espeak_ipa`,
tied IPA). Speech synthesis, voices and the voice split are `train.corpus.espeak`'s, on this
engine.

The C library keeps global state, so the engine is initialised lazily once per process
(``_engine()``); worker processes of a ``spawn`` pool each initialise their own copy.

Header semantics (``speak_lib.h``): ``espeak_Initialize(output, buflength, path, options)`` returns
the sample rate (22050 Hz); with ``AUDIO_OUTPUT_SYNCHRONOUS`` every call to ``espeak_Synth``
returns after the whole text is synthesised, delivering int16 samples to the callback registered
with ``espeak_SetSynthCallback``; the callback returns 0 to continue.

References:
    eSpeak NG, https://github.com/espeak-ng/espeak-ng (``src/include/espeak-ng/speak_lib.h``).
"""

from __future__ import annotations

import ctypes
import threading
from pathlib import Path

import numpy as np

# Accent names that eSpeak NG knows under another name ("en-gb" is the language file "en").
_ACCENT_ALIASES = {"en-gb": "en"}

_AUDIO_OUTPUT_SYNCHRONOUS = 2
_CHARS_UTF8 = 1

_EVENT_WORD = 1
_EVENT_LIST_TERMINATED = 0


class _Event(ctypes.Structure):
    """``espeak_EVENT`` of speak_lib.h (the ``id`` union is 8 bytes)."""

    _fields_ = [
        ("type", ctypes.c_int),
        ("unique_identifier", ctypes.c_uint),
        ("text_position", ctypes.c_int),
        ("length", ctypes.c_int),
        ("audio_position", ctypes.c_int),  # milliseconds from the start of the text
        ("sample", ctypes.c_int),
        ("user_data", ctypes.c_void_p),
        ("id", ctypes.c_char * 8),
    ]


_SYNTH_CALLBACK = ctypes.CFUNCTYPE(
    ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.POINTER(_Event)
)


def package_data_path() -> Path:
    """The ``espeak-ng-data`` folder shipped by ``espeakng-loader``."""
    import espeakng_loader

    return Path(espeakng_loader.get_data_path())


_DATA_PATH: Path | None = None  # espeak-ng-data folder to use instead of the package's


def use_data_path(path: str | Path) -> None:
    """Make this process's engine read its data from ``path`` (an ``espeak-ng-data`` folder, e.g.
    one made by :func:`make_variant_tree`). Call before the first synthesis in the process."""
    global _DATA_PATH
    path = Path(path).resolve()
    if path.name != "espeak-ng-data" or not (path / "phontab").exists():
        raise ValueError(f"not an espeak-ng-data folder: {path}")
    if _ENGINE is not None and _ENGINE.data_path != path:
        raise RuntimeError(
            f"eSpeak NG is already running on {_ENGINE.data_path} in this process; "
            f"use_data_path({str(path)!r}) must come first"
        )
    _DATA_PATH = path


class _Engine:
    """The process-wide eSpeak NG state: library handle, native rate, sample collector."""

    def __init__(self) -> None:
        import espeakng_loader

        self.data_path = _DATA_PATH or package_data_path()
        lib = ctypes.CDLL(espeakng_loader.get_library_path())
        lib.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
        lib.espeak_Initialize.restype = ctypes.c_int
        lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
        lib.espeak_SetVoiceByName.restype = ctypes.c_int
        lib.espeak_SetParameter.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int]
        lib.espeak_SetParameter.restype = ctypes.c_int
        lib.espeak_Synth.argtypes = [
            ctypes.c_void_p,
            ctypes.c_size_t,
            ctypes.c_uint,
            ctypes.c_int,
            ctypes.c_uint,
            ctypes.c_uint,
            ctypes.c_void_p,
            ctypes.c_void_p,
        ]
        lib.espeak_Synth.restype = ctypes.c_int
        lib.espeak_Synchronize.restype = ctypes.c_int
        lib.espeak_SetSynthCallback.argtypes = [_SYNTH_CALLBACK]
        lib.espeak_ng_SetRandSeed.argtypes = [ctypes.c_long]
        lib.espeak_TextToPhonemes.argtypes = [
            ctypes.POINTER(ctypes.c_char_p),
            ctypes.c_int,
            ctypes.c_int,
        ]
        lib.espeak_TextToPhonemes.restype = ctypes.c_char_p
        self.libc = ctypes.CDLL(None)  # eSpeak NG also draws from the C library's rand()
        self.libc.srand.argtypes = [ctypes.c_uint]
        path = str(self.data_path.parent).encode()  # the parent of espeak-ng-data
        rate = lib.espeak_Initialize(_AUDIO_OUTPUT_SYNCHRONOUS, 0, path, 0)
        if rate <= 0:
            raise RuntimeError(f"espeak_Initialize failed (returned {rate}) with data at {path!r}")
        self.native_rate = int(rate)
        self.lib = lib
        self.chunks: list[np.ndarray] = []
        self.words: list[tuple[int, int]] = []  # (text_position 1-based, audio_position ms)
        self.callback = _SYNTH_CALLBACK(self._collect)  # keep a reference: C holds the pointer
        lib.espeak_SetSynthCallback(self.callback)
        self.lock = threading.Lock()

    def _collect(self, wav, numsamples, events) -> int:
        if numsamples > 0 and wav:
            self.chunks.append(np.ctypeslib.as_array(wav, shape=(numsamples,)).copy())
        i = 0
        while events and events[i].type != _EVENT_LIST_TERMINATED:
            if events[i].type == _EVENT_WORD:
                self.words.append((events[i].text_position, events[i].audio_position))
            i += 1
        return 0


_ENGINE: _Engine | None = None


def _engine() -> _Engine:
    global _ENGINE
    if _ENGINE is None:
        _ENGINE = _Engine()
    return _ENGINE


def _text_to_phonemes(text: str, accent: str, mode: int) -> str:
    """``espeak_TextToPhonemes`` over every clause of ``text`` in ``accent`` with ``mode`` (its
    phoneme-mode bits), clauses joined by a space."""
    if not isinstance(text, str) or not text.strip():
        raise ValueError(f"text: expected a non-empty string, got {text!r}")
    eng = _engine()
    with eng.lock:
        name = _ACCENT_ALIASES.get(accent, accent)
        if eng.lib.espeak_SetVoiceByName(name.encode()) != 0:
            raise ValueError(f"accent: eSpeak NG does not know {accent!r}")
        buf = ctypes.create_string_buffer(text.encode("utf-8"))
        ptr = ctypes.c_char_p(ctypes.addressof(buf))
        out = []
        # Each call converts one clause and advances the pointer; it becomes NULL at the end.
        while ptr.value:
            res = eng.lib.espeak_TextToPhonemes(ctypes.byref(ptr), _CHARS_UTF8, mode)
            if res:
                out.append(res.decode("utf-8", "replace").strip())
    return " ".join(p for p in out if p)


def phonemes(text: str, accent: str = "en-us") -> str:
    """eSpeak NG's phoneme mnemonics for ``text`` in ``accent`` (what it would speak).

    Stress and length marks are kept (e.g. ``"h'an@"`` for "hannah"); clauses are joined by a
    space. Used to tell names that sound alike apart from names that are only spelled alike.
    """
    return _text_to_phonemes(text, accent, 0)


def espeak_ipa(text: str, accent: str = "en-us") -> str:
    """eSpeak NG's IPA for ``text``, multi-letter phonemes tied with ``^`` (``"t^ʃ"``, ``"a^ɪ"``).

    Clauses are joined by a space; punctuation is not returned. (:func:`phonemes` gives the
    ASCII mnemonics; this is the same call with the IPA bit and a tie character, as misaki's
    phonemizer backend makes it.)
    """
    return _text_to_phonemes(text, accent, 0x02 | 0x80 | (ord("^") << 8))  # IPA; tie with "^"
