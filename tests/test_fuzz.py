"""Fuzzing the input boundaries: audio files and arrays, manifests.

Each example must end in a correct result or the module's own error (`AudioError`,
`ManifestError`: ValueError subclasses naming the input), never another exception and never a
hang: every call runs in a daemon thread with a time limit, so a hang fails the example instead
of the test run. Derandomized (the same examples on every run, so CI is reproducible) and sized
to finish in well under 30 s on two cores.
"""

from __future__ import annotations

import io
import json
import struct
import threading
from functools import cache
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from asr.audio import SAMPLE_RATE, AudioError, load_audio, validate_audio
from asr.features import log_mel
from asr.manifest import KNOWN_FIELDS, ManifestError, check_rows, read_manifest

TIME_LIMIT_S = 10.0  # per call; the slowest legitimate one takes milliseconds
FUZZ = settings(
    max_examples=100,
    deadline=None,  # the thread time limit below fails hangs; no flaky timing on a busy machine
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)


def _within_time_limit(fn, *args):
    """Runs fn(*args) in a daemon thread: (value, None) or (None, exception); fails on a hang."""
    out: dict = {}

    def run():
        try:
            out["value"] = fn(*args)
        except BaseException as e:  # reported to the test below, whatever it is
            out["error"] = e

    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(TIME_LIMIT_S)
    if t.is_alive():
        pytest.fail(f"{getattr(fn, '__name__', fn)} hung for {TIME_LIMIT_S} s on {args!r:.200}")
    return out.get("value"), out.get("error")


def _check_audio_result(y, err, name: str) -> None:
    if err is not None:
        assert isinstance(err, AudioError), f"{type(err).__name__}: {err}"
        assert name in str(err), str(err)
        return
    assert isinstance(y, np.ndarray) and y.dtype == np.float32 and y.ndim == 1 and y.size > 0
    assert np.all(np.isfinite(y))
    assert np.all(np.isfinite(log_mel(y)))  # what the model sees stays finite


@pytest.fixture(scope="module")
def tmp(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("fuzz")


def _file(folder: Path, data: bytes, suffix: str = ".wav") -> Path:
    p = folder / f"x{suffix}"
    p.write_bytes(data)
    return p


@cache
def _valid(fmt: str) -> bytes:
    """A 0.25 s noise clip encoded as `fmt` ("wav16", "wavf", "flac", "ogg")."""
    x = (0.3 * np.random.default_rng(0).standard_normal(4000)).astype(np.float32)
    fmt_kw = {
        "wav16": ("WAV", "PCM_16"),
        "wavf": ("WAV", "FLOAT"),
        "flac": ("FLAC", "PCM_16"),
        "ogg": ("OGG", "VORBIS"),
    }[fmt]
    buf = io.BytesIO()
    sf.write(buf, x, SAMPLE_RATE, format=fmt_kw[0], subtype=fmt_kw[1])
    return buf.getvalue()


MAGIC = [
    b"",
    b"RIFF\x24\x00\x00\x00WAVEfmt ",
    b"fLaC",
    b"OggS\x00\x02",
    b"FORM\x00\x00\x00\x00AIFF",
]


@FUZZ
@given(prefix=st.sampled_from(MAGIC), body=st.binary(max_size=600))
def test_random_bytes(tmp, prefix, body):
    p = _file(tmp, prefix + body)
    _check_audio_result(*_within_time_limit(load_audio, p), str(p))


@FUZZ
@given(
    fmt=st.sampled_from(["wav16", "wavf", "flac", "ogg"]),
    cut=st.floats(0, 1),
    flips=st.lists(st.tuples(st.floats(0, 1), st.integers(0, 255)), max_size=4),
)
def test_valid_files_truncated_and_damaged(tmp, fmt, cut, flips):
    data = bytearray(_valid(fmt))
    data = data[: int(cut * len(data))]
    for where, value in flips:  # mostly in the header, where the lies hurt
        if data:
            data[int(where * min(len(data) - 1, 120))] = value
    p = _file(tmp, bytes(data), ".flac" if fmt == "flac" else ".wav")
    _check_audio_result(*_within_time_limit(load_audio, p), str(p))


@FUZZ
@given(
    tag=st.sampled_from([1, 3, 0xFFFE, 0]) | st.integers(0, 0xFFFF),
    channels=st.sampled_from([0, 1, 2, 7]) | st.integers(0, 0xFFFF),
    rate=st.sampled_from([0, 1, 8000, 16000, 44100, 2**31 - 1, 2**32 - 1])
    | st.integers(0, 2**32 - 1),
    bits=st.sampled_from([0, 1, 8, 16, 24, 32, 64, 7]) | st.integers(0, 0xFFFF),
    data_size=st.sampled_from([0, 1, 100, 2**31, 2**32 - 1]) | st.integers(0, 2**32 - 1),
    body=st.binary(max_size=400),
)
def test_wav_headers_with_random_fields(tmp, tag, channels, rate, bits, data_size, body):
    align = (channels * bits // 8) & 0xFFFF
    fmt = struct.pack("<HHIIHH", tag, channels, rate, (rate * align) & 0xFFFFFFFF, align, bits)
    data = b"data" + struct.pack("<I", data_size) + body
    riff = b"WAVE" + b"fmt " + struct.pack("<I", len(fmt)) + fmt + data
    p = _file(tmp, b"RIFF" + struct.pack("<I", len(riff)) + riff)
    _check_audio_result(*_within_time_limit(load_audio, p), str(p))


SPECIAL = [0.0, -0.0, 1.0, -1.0, 1e-45, 1e-300, 100.0, 1e5, 1e30, 3.4e38, 1e300, np.nan, np.inf]
DTYPES = ["float16", "float32", "float64", "int8", "int16", "int32", "int64", "uint8", "uint16"]
ODD = ["bool", "complex64", "object", "U3", "datetime64[s]"]


@st.composite
def arrays(draw):
    dtype = draw(st.sampled_from(DTYPES + ODD))
    shape = draw(
        st.sampled_from([(0,), (1,), (7,), (400,), (1000,), (0, 1), (5, 0), (300, 2), (2, 300)])
        | st.lists(st.integers(0, 4), max_size=3).map(tuple)
    )
    n = int(np.prod(shape))
    values = draw(
        st.lists(st.sampled_from(SPECIAL) | st.floats(allow_nan=True), min_size=1, max_size=8)
    )
    base = np.resize(np.array(values, np.float64), n).reshape(shape)
    with np.errstate(all="ignore"):
        if dtype in ("bool", "object", "U3", "datetime64[s]", "complex64"):
            return base.astype(dtype) if dtype != "datetime64[s]" else np.zeros(shape, dtype)
        if dtype.startswith(("int", "uint")):
            info = np.iinfo(dtype)
            return np.clip(np.nan_to_num(base), info.min, info.max).astype(dtype)
        return base.astype(dtype)


RATES = st.sampled_from(
    [16000, 8000, 44100, 4000, 384000, 16001, 0, -1, 3999, 384001, 16000.0, 22050.5, True, None]
) | st.sampled_from(
    [np.int32(16000), np.float64(8000.0), np.uint8(200), "16000", float("nan"), 10**400]
)


@FUZZ
@given(x=arrays(), rate=RATES)
def test_arrays_through_validate_audio(x, rate):
    _check_audio_result(*_within_time_limit(lambda: validate_audio(x, rate, name="mic")), "mic")


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=10),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3)
    ),
    max_leaves=8,
)
FIELDS = sorted(KNOWN_FIELDS) + ["txet", "", "audio "]
ROWS = st.dictionaries(st.sampled_from(FIELDS), JSON, max_size=6) | st.fixed_dictionaries(
    {"audio": st.text(max_size=12) | JSON, "text": st.text(max_size=12) | JSON},
    optional={f: JSON for f in ("keywords", "duration", "speech_start", "speech_end", "speaker")},
)
LINES = st.lists(
    ROWS.map(lambda r: json.dumps(r).encode())
    | JSON.map(lambda v: json.dumps(v).encode())
    | st.binary(max_size=30).filter(lambda b: b"\n" not in b)
    | st.sampled_from([b"", b"   ", b"{", b"NaN", b'{"audio": "a.wav", "text": "x"}', b"[" * 5000]),
    max_size=6,
)


@FUZZ
@given(lines=LINES)
def test_manifest_reader(tmp, lines):
    p = _file(tmp, b"\n".join(lines), ".jsonl")
    got, err = _within_time_limit(lambda: read_manifest(p, with_lines=True))
    if err is not None:
        assert isinstance(err, ManifestError), f"{type(err).__name__}: {err}"
        assert str(p) in str(err)
        return
    rows, names = got
    assert rows and len(rows) == len(names)
    for row, name in zip(rows, names, strict=True):
        assert name.startswith(f"{p}:") and isinstance(row["audio"], str)
        assert isinstance(row.get("text", ""), str)
        assert "text" in row or row["keywords"]
    # what the reader accepts, the deeper check takes without crashing, row by row
    (good, problems), err = _within_time_limit(lambda: check_rows(rows, names=names))
    assert err is None and len(good) + len(problems) == len(rows)


@FUZZ
@given(rows=st.lists(ROWS | JSON, max_size=6), need_text=st.booleans(), probe=st.booleans())
def test_check_rows_on_anything(rows, need_text, probe):
    got, err = _within_time_limit(lambda: check_rows(rows, need_text=need_text, probe_audio=probe))
    assert err is None, f"{type(err).__name__}: {err}"
    good, problems = got
    assert len(good) + len(problems) == len(rows)
    assert all(p.startswith("rows[") for p in problems)
