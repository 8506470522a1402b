"""Manifests: reading with line names, field types, keyword rows; `check_rows` before training."""

import ast
import json
import re
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from asr.manifest import KNOWN_FIELDS, ManifestError, check_rows, read_manifest, write_manifest

ROOT = Path(__file__).resolve().parents[1]


def _clip(path: Path, seconds: float = 0.5, sr: int = 16000) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    n = int(seconds * sr)
    sf.write(path, (0.1 * np.random.default_rng(0).standard_normal(n)).astype(np.float32), sr)
    return path


def _write(path: Path, lines: list) -> Path:
    path.write_text(
        "".join((ln if isinstance(ln, str) else json.dumps(ln)) + "\n" for ln in lines),
        encoding="utf-8",
    )
    return path


def test_with_lines_names_the_real_line_numbers(tmp_path):
    m = _write(
        tmp_path / "m.jsonl",
        [
            "",
            {"audio": "a.wav", "text": "one"},
            "   ",
            "",
            {"audio": "b.wav", "keywords": ["lights"]},
            {"audio": "c.wav", "text": "three", "keywords": ["three"]},
        ],
    )
    rows, names = read_manifest(m, with_lines=True)
    assert names == [f"{m}:2", f"{m}:5", f"{m}:6"]
    assert [Path(r["audio"]).name for r in rows] == ["a.wav", "b.wav", "c.wav"]
    assert rows[1]["keywords"] == ["lights"] and "text" not in rows[1]
    assert read_manifest(m) == rows  # default: rows only, as before


def test_null_optional_fields_and_loader_fields_load(tmp_path):
    row = {
        "audio": "a.wav",
        "text": "hi",
        "duration": None,
        "speech_start": 0,
        "speech_end": 1.5,
        "speaker": 7,
        "context": [],
        "split": None,
        "domain": "timer",
        "voice": {"name": "en"},
        "room": {"rt60_s": None, "snr_db": 10.0},
        "wake_word_end": 0.4,
        "speech_bounds": "estimated",
        "anything_else": [1, {"x": 2}],  # unknown fields are kept on read (check_rows flags them)
    }
    (got,) = read_manifest(_write(tmp_path / "m.jsonl", [row]))
    assert got["anything_else"] == [1, {"x": 2}] and got["duration"] is None


@pytest.mark.parametrize(
    "row, field",
    [
        ({"text": "x"}, "audio"),
        ({"audio": 3, "text": "x"}, "audio"),
        ({"audio": "", "text": "x"}, "audio"),
        ({"audio": "a\u0000b.wav", "text": "x"}, "audio"),
        ({"audio": "a.wav"}, "text"),
        ({"audio": "a.wav", "text": ["x"]}, "text"),
        ({"audio": "a.wav", "keywords": []}, "keywords"),
        ({"audio": "a.wav", "keywords": "lights"}, "keywords"),
        ({"audio": "a.wav", "keywords": ["lights", " "]}, "keywords"),
        ({"audio": "a.wav", "keywords": [1]}, "keywords"),
        ({"audio": "a.wav", "text": "x", "duration": 0}, "duration"),
        ({"audio": "a.wav", "text": "x", "duration": -1.0}, "duration"),
        ({"audio": "a.wav", "text": "x", "duration": "1.0"}, "duration"),
        ({"audio": "a.wav", "text": "x", "duration": True}, "duration"),
        ({"audio": "a.wav", "text": "x", "speech_start": -0.1}, "speech_start"),
        ({"audio": "a.wav", "text": "x", "speech_end": [1]}, "speech_end"),
        ({"audio": "a.wav", "text": "x", "speech_start": 2.0, "speech_end": 1.0}, "speech_start"),
        ({"audio": "a.wav", "text": "x", "context": "mom"}, "context"),
        ({"audio": "a.wav", "text": "x", "context": ["mom", 2]}, "context"),
        ({"audio": "a.wav", "text": "x", "split": 1}, "split"),
        ({"audio": "a.wav", "text": "x", "speaker": 1.5}, "speaker"),
        ({"audio": "a.wav", "text": "x", "speaker": False}, "speaker"),
        ({"audio": "a.wav", "text": "x", "speaker": ["a"]}, "speaker"),
    ],
)
def test_bad_field_types_name_the_line_and_field(tmp_path, row, field):
    m = _write(tmp_path / "m.jsonl", [{"audio": "ok.wav", "text": "fine"}, "", row])
    with pytest.raises(ManifestError, match=rf"m\.jsonl:3: .*'{field}'"):
        read_manifest(m)


@pytest.mark.parametrize(
    "line, msg",
    [
        ('{"audio": "a.wav", "text": "x", "duration": NaN}', "'duration'"),
        ('{"audio": "a.wav", "text": "x", "duration": Infinity}', "'duration'"),
        ('{"audio": "a.wav", "text": "x", "duration": 1e999}', "'duration'"),
        ("[" * 100000, "not valid JSON"),
        ('"just a string"', "expected a JSON object"),
        ("[1, 2]", "expected a JSON object"),
    ],
)
def test_bad_json_values(tmp_path, line, msg):
    m = _write(tmp_path / "m.jsonl", [line])
    with pytest.raises(ManifestError, match=rf"m\.jsonl:1: .*{msg}"):
        read_manifest(m)


def test_bytes_that_are_not_utf8_and_a_bom(tmp_path):
    m = tmp_path / "m.jsonl"
    m.write_bytes(b'{"audio": "a.wav", "text": "ok"}\n{"audio": "b.wav", "text": "\xff\xfe"}\n')
    with pytest.raises(ManifestError, match=r"m\.jsonl:2: not UTF-8"):
        read_manifest(m)
    m.write_bytes(b'\xef\xbb\xbf{"audio": "a.wav", "text": "ok"}\r\n')  # Windows editors
    assert read_manifest(m)[0]["text"] == "ok"
    with pytest.raises(ManifestError, match="is a folder"):
        read_manifest(tmp_path)


def test_check_rows_names_every_bad_row_once(tmp_path):
    _clip(tmp_path / "good.wav", 0.5)
    (tmp_path / "noise.wav").write_bytes(b"definitely not audio")
    sf.write(tmp_path / "empty.wav", np.zeros(0, np.float32), 16000)
    lines = [
        {"audio": "good.wav", "text": "call mom"},  # 1: good, duration filled in
        {"audio": "good.wav", "text": "call mom", "duration": 0.55},  # 2: good, within 0.1 s
        {"audio": "missing.wav", "text": "call mom"},  # 3
        "",
        {"audio": "noise.wav", "text": "call mom"},  # 5
        {"audio": "good.wav", "text": "   "},  # 6
        {"audio": "good.wav", "keywords": ["mom"]},  # 7: no transcript for training
        {"audio": "good.wav", "text": "call mom", "txet": "typo"},  # 8
        {"audio": "good.wav", "text": "call mom", "duration": 3.0},  # 9: header says 0.5 s
        {"audio": "empty.wav", "text": "call mom"},  # 10
        {"audio": ".", "text": "call mom"},  # 11: a folder
        {"audio": "good.wav", "text": "?!"},  # 12: no words after normalization
    ]
    m = _write(tmp_path / "m.jsonl", lines)
    rows, names = read_manifest(m, with_lines=True)
    ok, problems = check_rows(rows, names=names)
    assert [r["duration"] for r in ok] == [0.5, 0.55]
    assert "duration" not in rows[0]  # the input rows are not changed
    expect = {
        3: ("missing.wav", "no such audio file"),
        5: ("noise.wav", "not readable audio"),
        6: ("good.wav", "empty transcript"),
        7: ("good.wav", "no 'text'"),
        8: ("good.wav", "unknown field 'txet'"),
        9: ("good.wav", "duration 3 s .* 0.5 s"),
        10: ("empty.wav", "no audio frames"),
        11: (str(tmp_path), "not a regular file"),
        12: ("good.wav", "empty transcript"),
    }
    assert len(problems) == len(expect) == 9, problems
    by_line = {int(p.split(":", 2)[1]): p for p in problems}
    for line, (audio, msg) in expect.items():
        p = by_line[line]
        assert p.startswith(f"{m}:{line}: ") and audio in p, p
        assert re.search(msg, p), (msg, p)


def test_check_rows_options(tmp_path, monkeypatch):
    good = str(_clip(tmp_path / "good.wav", 0.25))
    (tmp_path / "noise.wav").write_bytes(b"not audio")
    rows = [
        {"audio": good, "keywords": ["mom"]},
        {"audio": str(tmp_path / "noise.wav"), "text": "x"},
        {"audio": str(tmp_path / "nope.wav"), "text": "x"},
        "not a row",
        {"audio": good, "text": "x", "duration": float("nan")},
    ]
    # headers only, never decoded: reading samples would be far too slow for 100k rows
    monkeypatch.setattr(sf, "read", lambda *a, **k: pytest.fail("decoded audio"))
    monkeypatch.setattr(sf.SoundFile, "read", lambda *a, **k: pytest.fail("decoded audio"))
    ok, problems = check_rows(rows, need_text=False)
    assert ok == [dict(rows[0], duration=0.25)]
    assert [p.split(":")[0] for p in problems] == ["rows[1]", "rows[2]", "rows[3]", "rows[4]"]
    assert good in problems[3] and "'duration'" in problems[3]
    ok, problems = check_rows(rows, need_text=False, probe_audio=False)  # existence only
    assert ok == rows[:2] and len(problems) == 3
    with pytest.raises(ValueError, match="names"):
        check_rows(rows, names=["a"])
    # fields of the user's own are a problem (a misspelling?) unless declared
    mine = [{"audio": good, "text": "x", "accent": "scots"}]
    ok, problems = check_rows(mine)
    assert not ok and "unknown field 'accent'" in problems[0] and "--extra-fields" in problems[0]
    ok, problems = check_rows(mine, extra_fields=["accent"])
    assert ok == [dict(mine[0], duration=0.25)] and not problems


def test_known_fields_cover_what_the_loaders_write(tmp_path):
    """Every field the corpus loaders and the synthesizer write is a known field, so manifests
    the project makes pass `check_rows`."""
    from train.corpus import loaders

    audio = _clip(tmp_path / "a.wav")
    assert set(loaders._row(audio, "hi", "s", "train", vad=True)) <= KNOWN_FIELDS
    # the synthesizer's row: the keys of its dict literal and of later row["..."] assignments
    tree = ast.parse((ROOT / "train" / "corpus" / "synth.py").read_text())
    keys = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Dict) and any(
            isinstance(k, ast.Constant) and k.value == "audio" for k in node.keys
        ):
            keys |= {k.value for k in node.keys if isinstance(k, ast.Constant)}
        if isinstance(node, ast.Subscript) and isinstance(node.ctx, ast.Store):
            if isinstance(node.value, ast.Name) and node.value.id == "row":
                keys.add(node.slice.value)
    assert {"audio", "text", "voice", "room", "wake_word_end"} <= keys
    assert keys <= KNOWN_FIELDS, keys - KNOWN_FIELDS


def test_write_then_read_keeps_keyword_rows(tmp_path):
    clip = _clip(tmp_path / "a" / "x.wav")
    rows = [{"audio": str(clip), "keywords": ["lights", "kitchen"]}]
    back = read_manifest(write_manifest(rows, tmp_path / "m" / "k.jsonl"))
    assert back == [{"audio": str(clip.resolve()), "keywords": ["lights", "kitchen"]}]


def test_named_paths_parses_name_equals_manifest():
    from asr.manifest import named_paths

    assert named_paths(["synth=a/b.jsonl", "sc=c=d.jsonl"]) == {
        "synth": "a/b.jsonl",
        "sc": "c=d.jsonl",
    }
    for bad in ("a.jsonl", "=a.jsonl", "name="):
        with pytest.raises(SystemExit, match="--leadin: expected NAME=MANIFEST"):
            named_paths([bad], "--leadin")
